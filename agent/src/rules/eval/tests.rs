//! Evaluator tests: kubeadm defaults per version, version guards, defaults of absent flags,
//! and each case kube-bench or Checkov are known to get wrong.

use proptest::prelude::*;

use super::*;
use crate::manifest::{self, Manifest};

fn manifest(src: &str) -> Manifest {
    let cat = Catalogue::builtin();
    manifest::parse(src.as_bytes(), &|c, f| cat.kind(c, f)).unwrap()
}

fn eval_src(src: &str) -> Vec<Finding> {
    eval_with(src, None)
}

fn eval_with(src: &str, authn: Option<&AuthnConfig>) -> Vec<Finding> {
    let m = manifest(src);
    let cp = m.control_plane.expect("a control-plane manifest");
    evaluate_manifest(
        Catalogue::builtin(),
        ManifestFacts {
            cp: &cp,
            authn,
            authz: None,
            certs: None,
        },
    )
}

fn eval_authz(src: &str, authz: &AuthzConfig) -> Vec<Finding> {
    let m = manifest(src);
    let cp = m.control_plane.expect("a control-plane manifest");
    evaluate_manifest(
        Catalogue::builtin(),
        ManifestFacts {
            cp: &cp,
            authn: None,
            authz: Some(authz),
            certs: None,
        },
    )
}

fn one<'a>(fs: &'a [Finding], id: &str) -> &'a Finding {
    let hits: Vec<&Finding> = fs.iter().filter(|f| &*f.id == id).collect();
    assert_eq!(hits.len(), 1, "{id}: {hits:?}");
    hits[0]
}

fn all<'a>(fs: &'a [Finding], id: &str) -> Vec<&'a Finding> {
    fs.iter().filter(|f| &*f.id == id).collect()
}

/// A kube-apiserver manifest of a version with extra arguments.
fn api(version: &str, extra: &[&str]) -> String {
    let mut s = String::from(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: kube-apiserver\nspec:\n  containers:\n  - command:\n    - kube-apiserver\n",
    );
    for a in extra {
        s.push_str(&format!("    - {a}\n"));
    }
    s.push_str(&format!(
        "    image: registry.k8s.io/kube-apiserver:{version}\n    name: kube-apiserver\n"
    ));
    s
}

fn component(name: &str, image: &str, extra: &[&str]) -> String {
    let mut s = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  containers:\n  - command:\n    - {name}\n"
    );
    for a in extra {
        s.push_str(&format!("    - {a}\n"));
    }
    s.push_str(&format!("    image: {image}\n    name: {name}\n"));
    s
}

const KUBEADM: [(&str, &str); 3] = [
    (
        "1.24",
        include_str!("../../../../tests/data/kubeadm/v1.24/kube-apiserver.yaml"),
    ),
    (
        "1.28",
        include_str!("../../../../tests/data/kubeadm/v1.28/kube-apiserver.yaml"),
    ),
    (
        "1.31",
        include_str!("../../../../tests/data/kubeadm/v1.31/kube-apiserver.yaml"),
    ),
];

#[test]
fn kubeadm_defaults_pass_tls_authz_and_fail_the_known_gaps() {
    for (v, src) in KUBEADM {
        let fs = eval_src(src);
        for id in [
            "apiserver-tls-cert",
            "apiserver-client-ca",
            "apiserver-authorization-not-always-allow",
            "apiserver-authorization-node",
            "apiserver-authorization-rbac",
            "apiserver-node-restriction-plugin",
            "apiserver-etcd-client-cert",
            "apiserver-service-account-lookup",
            "unsupported-flag",
            "stray-argument",
        ] {
            assert_eq!(one(&fs, id).status, Status::Pass, "{v} {id}");
        }
        for id in [
            "apiserver-anonymous-auth",
            "apiserver-profiling",
            "apiserver-audit-log-path",
        ] {
            assert_eq!(one(&fs, id).status, Status::Fail, "{v} {id}");
        }
        // Flags removed before these versions: their rules do not apply, and nothing demands them.
        for id in [
            "apiserver-insecure-port",
            "apiserver-kubelet-https",
            "apiserver-basic-auth-file",
            "apiserver-repair-malformed-updates",
        ] {
            let f = one(&fs, id);
            assert_eq!(f.status, Status::Skip, "{v} {id}");
            assert!(
                f.reason.as_deref().unwrap().contains("removed in"),
                "{v} {id}: {f:?}"
            );
        }
    }
}

#[test]
fn kubeadm_defaults_of_the_other_components() {
    for v in ["1.24", "1.28", "1.31"] {
        let dir = format!("{}/../tests/data/kubeadm/v{v}", env!("CARGO_MANIFEST_DIR"));
        let etcd = eval_src(&std::fs::read_to_string(format!("{dir}/etcd.yaml")).unwrap());
        for id in [
            "etcd-tls",
            "etcd-client-cert-auth",
            "etcd-auto-tls",
            "etcd-peer-tls",
            "etcd-peer-client-cert-auth",
            "etcd-peer-auto-tls",
            "etcd-unique-ca",
        ] {
            assert_eq!(one(&etcd, id).status, Status::Pass, "{v} {id}");
        }
        let kcm = eval_src(
            &std::fs::read_to_string(format!("{dir}/kube-controller-manager.yaml")).unwrap(),
        );
        assert_eq!(
            one(&kcm, "controller-manager-bind-address").status,
            Status::Pass
        );
        assert_eq!(
            one(&kcm, "controller-manager-profiling").status,
            Status::Fail
        );
        assert_eq!(
            one(&kcm, "controller-manager-insecure-port").status,
            Status::Skip,
            "--port removed in 1.24"
        );
        let sched =
            eval_src(&std::fs::read_to_string(format!("{dir}/kube-scheduler.yaml")).unwrap());
        assert_eq!(one(&sched, "scheduler-bind-address").status, Status::Pass);
    }
}

#[test]
fn hardened_apiserver_passes() {
    let fs = eval_src(&api(
        "v1.31.4",
        &[
            "--anonymous-auth=false",
            "--profiling=false",
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction,EventRateLimit,AlwaysPullImages,DenyServiceExternalIPs",
            "--audit-log-path=/var/log/audit.log",
            "--audit-log-maxage=30",
            "--audit-log-maxbackup=10",
            "--audit-log-maxsize=100",
            "--tls-cert-file=/a.crt",
            "--tls-private-key-file=/a.key",
            "--client-ca-file=/ca.crt",
        ],
    ));
    for id in [
        "apiserver-anonymous-auth",
        "apiserver-profiling",
        "apiserver-audit-log-maxage",
        "apiserver-event-rate-limit",
        "apiserver-deny-service-external-ips",
    ] {
        assert_eq!(one(&fs, id).status, Status::Pass, "{id}");
    }
}

#[test]
fn insecure_variants_fail_with_the_right_severity() {
    let fs = eval_src(&api(
        "v1.18.20",
        &[
            "--authorization-mode=AlwaysAllow",
            "--basic-auth-file=/etc/users.csv",
            "--insecure-port=8080",
            "--insecure-bind-address=0.0.0.0",
            "--kubelet-https=false",
            "--enable-admission-plugins=AlwaysAdmit",
            "--token-auth-file=/t.csv",
        ],
    ));
    for (id, sev) in [
        (
            "apiserver-authorization-not-always-allow",
            Severity::Critical,
        ),
        ("apiserver-basic-auth-file", Severity::Critical),
        ("apiserver-insecure-port", Severity::Critical),
        ("apiserver-insecure-bind-address", Severity::High),
        ("apiserver-kubelet-https", Severity::High),
        ("apiserver-always-admit", Severity::High),
        ("apiserver-token-auth-file", Severity::High),
    ] {
        let f = one(&fs, id);
        assert_eq!((f.status, f.severity), (Status::Fail, sev), "{id}");
    }
    // The fixes remove or change what is there: allowed on this version.
    assert_eq!(
        one(&fs, "apiserver-kubelet-https").fix,
        Some(Fix::Remove(FlagRef {
            flag: "kubelet-https".into()
        }))
    );
    assert!(one(&fs, "apiserver-insecure-port").autofix);
}

#[test]
fn absent_insecure_port_is_judged_by_the_default_of_the_version() {
    // Before 1.20 an absent --insecure-port serves plain HTTP on 8080.
    let f = eval_src(&api("v1.19.16", &[]));
    let f = one(&f, "apiserver-insecure-port");
    assert_eq!(f.status, Status::Fail);
    assert_eq!(f.observed.as_deref(), Some("absent (default 8080)"));
    assert_eq!(
        f.fix,
        Some(Fix::Set(FlagValue {
            flag: "insecure-port".into(),
            value: "0".into()
        }))
    );
    let f = eval_src(&api("v1.21.14", &[]));
    assert_eq!(one(&f, "apiserver-insecure-port").status, Status::Pass);
}

#[test]
fn removed_flags_present_are_critical_and_never_demanded() {
    let fs = eval_src(&api(
        "v1.24.17",
        &["--insecure-port=0", "--kubelet-https=true"],
    ));
    let bad = all(&fs, "unsupported-flag");
    let flags: Vec<&str> = bad.iter().map(|f| f.flag.as_deref().unwrap()).collect();
    assert_eq!(flags, ["--insecure-port", "--kubelet-https"]);
    assert!(
        bad.iter()
            .all(|f| f.status == Status::Fail && f.severity == Severity::Critical && f.autofix)
    );
    assert_eq!(one(&fs, "apiserver-insecure-port").status, Status::Skip);
}

#[test]
fn flags_not_yet_known_are_critical_too() {
    let fs = eval_src(&api(
        "v1.28.15",
        &["--authentication-config=/etc/kubernetes/authn.yaml"],
    ));
    let f = one(&fs, "unsupported-flag");
    assert_eq!(f.status, Status::Fail);
    assert!(
        f.expected
            .as_deref()
            .unwrap()
            .contains("introduced in 1.29")
    );
}

#[test]
fn removed_admission_plugins_and_gates() {
    let fs = eval_src(&api(
        "v1.25.16",
        &["--enable-admission-plugins=NodeRestriction,PodSecurityPolicy"],
    ));
    let f = one(&fs, "unsupported-admission-plugin");
    assert_eq!(
        (f.status, f.observed.as_deref()),
        (Status::Fail, Some("PodSecurityPolicy"))
    );
    let fs = eval_src(&api(
        "v1.30.1",
        &["--enable-admission-plugins=SecurityContextDeny"],
    ));
    assert_eq!(
        one(&fs, "unsupported-admission-plugin").status,
        Status::Fail
    );
    let fs = eval_src(&api(
        "v1.29.1",
        &["--enable-admission-plugins=SecurityContextDeny"],
    ));
    assert_eq!(
        one(&fs, "unsupported-admission-plugin").status,
        Status::Pass
    );
    let fs = eval_src(&api("v1.28.1", &["--feature-gates=PodSecurity=true"]));
    assert_eq!(one(&fs, "unsupported-feature-gate").status, Status::Fail);
    let fs = eval_src(&api(
        "v1.34.1",
        &["--feature-gates=AnonymousAuthConfigurableEndpoints=false"],
    ));
    assert!(
        one(&fs, "unsupported-feature-gate")
            .expected
            .as_deref()
            .unwrap()
            .contains("locked")
    );
}

#[test]
fn deny_service_external_ips_is_not_demanded_before_it_exists() {
    let fs = eval_src(&api("v1.20.15", &[]));
    let f = one(&fs, "apiserver-deny-service-external-ips");
    assert_eq!(f.status, Status::Skip);
    let fs = eval_src(&api("v1.21.14", &[]));
    let f = one(&fs, "apiserver-deny-service-external-ips");
    assert_eq!(f.status, Status::Warn);
    assert!(
        f.fix.is_some(),
        "1.21 has the plugin, so adding it is a valid (review-only) fix"
    );
    assert!(!f.autofix);
}

#[test]
fn unknown_version_gets_no_additions() {
    let fs = eval_src(&api("latest", &[]));
    let f = one(&fs, "apiserver-profiling");
    assert_eq!(
        f.status,
        Status::Fail,
        "profiling defaults to true on every version"
    );
    assert_eq!(f.fix, None);
    assert!(!f.autofix);
    assert!(f.reason.as_deref().unwrap().contains("version is unknown"));
    assert_eq!(one(&fs, "version-unknown").status, Status::Warn);
    // Removing or changing what is there is still fine.
    let fs = eval_src(&api("latest", &["--profiling=true"]));
    assert!(one(&fs, "apiserver-profiling").autofix);
    // Rules about flags that exist only in some versions are skipped, not guessed.
    assert_eq!(one(&fs, "apiserver-kubelet-https").status, Status::Skip);
}

#[test]
fn bind_address_absent_fails_because_the_default_is_all_interfaces() {
    // kube-bench passes 1.3.7 / 1.4.2 when the flag is absent.
    let fs = eval_src(&component(
        "kube-scheduler",
        "registry.k8s.io/kube-scheduler:v1.31.4",
        &[],
    ));
    let f = one(&fs, "scheduler-bind-address");
    assert_eq!(f.status, Status::Fail);
    assert_eq!(f.observed.as_deref(), Some("absent (default 0.0.0.0)"));
    let fs = eval_src(&component(
        "kube-controller-manager",
        "registry.k8s.io/kube-controller-manager:v1.31.4",
        &[],
    ));
    assert_eq!(
        one(&fs, "controller-manager-bind-address").status,
        Status::Fail
    );
}

#[test]
fn audit_log_maxage_with_a_unit_does_not_crash_and_is_reported() {
    // kube-bench crashes on --audit-log-maxage=30d; kube-apiserver refuses the value.
    let fs = eval_src(&api("v1.31.4", &["--audit-log-maxage=30d"]));
    let f = one(&fs, "apiserver-audit-log-maxage");
    assert_eq!(f.status, Status::Fail);
    assert!(
        f.observed
            .as_deref()
            .unwrap()
            .contains("not a whole number")
    );
    let f = one(&fs, "invalid-flag-value");
    assert_eq!(
        (f.status, f.flag.as_deref()),
        (Status::Fail, Some("--audit-log-maxage"))
    );
}

#[test]
fn bare_booleans_are_true_and_separate_values_are_stray() {
    let fs = eval_src(&component(
        "etcd",
        "registry.k8s.io/etcd:3.5.15-0",
        &["--client-cert-auth", "--peer-client-cert-auth", "false"],
    ));
    assert_eq!(one(&fs, "etcd-client-cert-auth").status, Status::Pass);
    // `--peer-client-cert-auth false` sets true and leaves "false" as a stray argument.
    assert_eq!(one(&fs, "etcd-peer-client-cert-auth").status, Status::Pass);
    let f = one(&fs, "stray-argument");
    assert_eq!(f.status, Status::Fail);
    assert_eq!(f.expected.as_deref(), Some("--peer-client-cert-auth=false"));
}

#[test]
fn etcd_environment_counts() {
    let src = "apiVersion: v1\nkind: Pod\nmetadata: {name: etcd}\nspec:\n  containers:\n  - name: etcd\n    image: registry.k8s.io/etcd:3.5.15-0\n    command: [etcd]\n    env:\n    - {name: ETCD_CLIENT_CERT_AUTH, value: \"true\"}\n";
    assert_eq!(
        one(&eval_src(src), "etcd-client-cert-auth").status,
        Status::Pass
    );
}

#[test]
fn scheduler_profiling_with_config_file_is_a_warn_not_a_guess() {
    let fs = eval_src(&component(
        "kube-scheduler",
        "registry.k8s.io/kube-scheduler:v1.31.4",
        &["--config=/etc/kubernetes/sched.yaml"],
    ));
    let f = one(&fs, "scheduler-profiling");
    assert_eq!(f.status, Status::Warn);
    assert!(f.reason.as_deref().unwrap().contains("--config"));
}

#[test]
fn authorization_config_defers_the_mode_checks() {
    let src = api(
        "v1.31.4",
        &["--authorization-config=/etc/kubernetes/authz.yaml"],
    );
    let fs = eval_src(&src);
    assert_eq!(
        one(&fs, "apiserver-authorization-not-always-allow").status,
        Status::Warn
    );
    // Not read: a warn, and no fix editing --authorization-mode (kube-apiserver would refuse
    // it beside --authorization-config). On the commit before, Node and RBAC fixes were offered.
    for id in [
        "apiserver-authorization-node",
        "apiserver-authorization-rbac",
    ] {
        let f = one(&fs, id);
        assert_eq!(f.status, Status::Warn);
        assert_eq!(f.fix, None, "{id}");
    }
    // Read: the file's authorizers decide, and the fix is still not a flag edit (issue 13).
    let types = |t: &[&str]| AuthzConfig::Authorizers(t.iter().map(|s| s.to_string()).collect());
    let fs = eval_authz(&src, &types(&["Node", "RBAC", "Webhook"]));
    for id in [
        "apiserver-authorization-not-always-allow",
        "apiserver-authorization-node",
        "apiserver-authorization-rbac",
    ] {
        assert_eq!(one(&fs, id).status, Status::Pass, "{id}");
    }
    let fs = eval_authz(&src, &types(&["Webhook", "AlwaysAllow"]));
    let f = one(&fs, "apiserver-authorization-not-always-allow");
    assert_eq!(f.status, Status::Fail);
    assert!(
        f.observed
            .as_deref()
            .unwrap()
            .contains("authorizers in /etc/kubernetes/authz.yaml")
    );
    let f = one(&fs, "apiserver-authorization-node");
    assert_eq!(f.status, Status::Fail);
    assert_eq!(f.fix, None);
    assert!(f.reason.as_deref().unwrap().contains("change them there"));
    let fs = eval_authz(&src, &AuthzConfig::Unreadable("no such file".into()));
    let f = one(&fs, "apiserver-authorization-rbac");
    assert_eq!(f.status, Status::Warn);
    assert!(f.reason.as_deref().unwrap().contains("no such file"));
    // Together with --authorization-mode or a webhook flag, kube-apiserver does not start.
    assert_eq!(
        one(&eval_src(&src), "authorization-flags-mixed").status,
        Status::Pass
    );
    let mixed = api(
        "v1.31.4",
        &[
            "--authorization-mode=Node,RBAC",
            "--authorization-config=/etc/kubernetes/authz.yaml",
        ],
    );
    let fs = eval_src(&mixed);
    let f = one(&fs, "authorization-flags-mixed");
    assert_eq!((f.status, f.severity), (Status::Fail, Severity::Critical));
}

#[test]
fn anonymous_auth_through_an_authentication_config() {
    let src = api(
        "v1.32.3",
        &["--authentication-config=/etc/kubernetes/pki/authn.yaml"],
    );
    let restricted = AuthnConfig::Anonymous {
        enabled: true,
        paths: vec!["/livez".into(), "/readyz".into(), "/healthz".into()],
    };
    assert_eq!(
        one(
            &eval_with(&src, Some(&restricted)),
            "apiserver-anonymous-auth"
        )
        .status,
        Status::Pass
    );
    let open = AuthnConfig::Anonymous {
        enabled: true,
        paths: vec![],
    };
    assert_eq!(
        one(&eval_with(&src, Some(&open)), "apiserver-anonymous-auth").status,
        Status::Fail
    );
    let wide = AuthnConfig::Anonymous {
        enabled: true,
        paths: vec!["/livez".into(), "/api".into()],
    };
    let f = eval_with(&src, Some(&wide));
    assert!(
        one(&f, "apiserver-anonymous-auth")
            .observed
            .as_deref()
            .unwrap()
            .contains("/api")
    );
    let unreadable = AuthnConfig::Unreadable("no such file".into());
    assert_eq!(
        one(
            &eval_with(&src, Some(&unreadable)),
            "apiserver-anonymous-auth"
        )
        .status,
        Status::Warn
    );
    // Both the flag and an anonymous block: kube-apiserver refuses to start.
    let both = api(
        "v1.32.3",
        &[
            "--anonymous-auth=true",
            "--authentication-config=/etc/kubernetes/pki/authn.yaml",
        ],
    );
    let f = eval_with(&both, Some(&restricted));
    let f = one(&f, "apiserver-anonymous-auth");
    assert_eq!(f.status, Status::Fail);
    assert!(f.observed.as_deref().unwrap().contains("refuses to start"));
}

#[test]
fn anonymous_auth_fix_is_never_safe_unattended() {
    let fs = eval_src(&api("v1.31.4", &[]));
    let f = one(&fs, "apiserver-anonymous-auth");
    assert!(
        !f.autofix,
        "kubeadm probes are unauthenticated: --anonymous-auth=false would crash-loop"
    );
}

#[test]
fn stay_updated() {
    let fs = eval_src(&api("v1.24.17", &[]));
    assert_eq!(one(&fs, "version-supported").status, Status::Fail);
    let cves: Vec<&str> = all(&fs, "known-cve")
        .iter()
        .map(|f| f.title.split(':').next().unwrap())
        .collect();
    assert!(
        cves.contains(&"CVE-2024-3177") && cves.contains(&"CVE-2025-5187"),
        "{cves:?}"
    );
    assert!(
        !cves.contains(&"CVE-2023-2728"),
        "1.24.17 has the 1.24.15 fix"
    );
    assert!(!cves.contains(&"CVE-2025-4563"), "introduced in 1.32");
    let fs = eval_src(&api("v1.33.4", &[]));
    assert_eq!(one(&fs, "known-cve").status, Status::Pass);
    let etcd = eval_src(&component("etcd", "registry.k8s.io/etcd:3.5.6-0", &[]));
    let cves: Vec<String> = all(&etcd, "known-cve")
        .iter()
        .map(|f| f.title.to_string())
        .collect();
    assert!(
        cves.iter().any(|t| t.starts_with("CVE-2021-28235")),
        "{cves:?}"
    );
    assert_eq!(one(&etcd, "version-supported").status, Status::Pass);
    let old = eval_src(&component("etcd", "registry.k8s.io/etcd:3.4.13-0", &[]));
    assert_eq!(one(&old, "version-supported").status, Status::Fail);
}

#[test]
fn vulnerable_ranges() {
    let v = |s| Version::parse(s).unwrap();
    let fixed = [v("1.31.12"), v("1.32.8"), v("1.33.4")];
    assert_eq!(vulnerable(v("1.32.7"), None, &fixed), Some(true));
    assert_eq!(vulnerable(v("1.32.8"), None, &fixed), Some(false));
    assert_eq!(vulnerable(v("1.30.14"), None, &fixed), Some(true));
    assert_eq!(vulnerable(v("1.34.0"), None, &fixed), Some(false));
    assert_eq!(
        vulnerable(v("1.31.0"), Some(Minor(1, 32)), &fixed),
        Some(false)
    );
    assert_eq!(vulnerable(v("1.32"), None, &fixed), None);
}

#[test]
fn file_modes_and_owners() {
    let cat = Catalogue::builtin();
    let facts = FileFacts {
        roles: vec![FileRole::PkiKey, FileRole::Pki],
        mode: 0o644,
        uid: 0,
        gid: 0,
        user: Some("root".into()),
        group: Some("root".into()),
        tls: Vec::new(),
        kubeconfig: None,
    };
    let fs = evaluate_file(cat, &facts);
    // CIS 1.1.21 is Manual in CIS 1.12 (kube-bench scored: false): a warning (issue 13).
    assert_eq!(one(&fs, "file-pki-key-mode").status, Status::Warn);
    assert_eq!(one(&fs, "file-pki-owner").status, Status::Pass);
    let facts = FileFacts {
        roles: vec![FileRole::EtcdDataDir],
        mode: 0o700,
        uid: 0,
        gid: 0,
        user: Some("root".into()),
        group: Some("root".into()),
        tls: Vec::new(),
        kubeconfig: None,
    };
    let fs = evaluate_file(cat, &facts);
    assert_eq!(one(&fs, "file-etcd-data-dir-mode").status, Status::Pass);
    assert_eq!(one(&fs, "file-etcd-data-dir-owner").status, Status::Fail);
    let facts = FileFacts {
        roles: vec![FileRole::ManifestKubeApiserver],
        mode: 0o400,
        uid: 1000,
        gid: 1000,
        user: None,
        group: None,
        tls: Vec::new(),
        kubeconfig: None,
    };
    let fs = evaluate_file(cat, &facts);
    assert_eq!(
        one(&fs, "file-apiserver-manifest-mode").status,
        Status::Pass
    );
    assert_eq!(
        one(&fs, "file-apiserver-manifest-owner")
            .observed
            .as_deref(),
        Some("1000:1000")
    );
}

fn arb_arg() -> impl Strategy<Value = String> {
    let names = prop::sample::select(vec![
        "profiling",
        "anonymous-auth",
        "insecure-port",
        "kubelet-https",
        "authorization-mode",
        "enable-admission-plugins",
        "feature-gates",
        "audit-log-maxage",
        "basic-auth-file",
        "authentication-config",
        "bind-address",
        "tls-cipher-suites",
    ]);
    let values = prop::sample::select(vec![
        "",
        "=true",
        "=false",
        "=0",
        "=8080",
        "=30d",
        "=AlwaysAllow",
        "=Node,RBAC",
        "=PodSecurityPolicy,NodeRestriction",
        "=PodSecurity=true",
        "=x",
        " false",
    ]);
    (names, values).prop_map(|(n, v)| format!("--{n}{v}"))
}

proptest! {
    /// Whatever the flags and version, no finding offers a fix that adds a flag or plugin the
    /// version does not accept, and the evaluator never panics.
    #[test]
    fn no_fix_adds_what_the_version_refuses(args in prop::collection::vec(arb_arg(), 0..8), minor in 7u32..38) {
        let words: Vec<String> = args.iter().flat_map(|a| a.split(' ').map(str::to_string).collect::<Vec<_>>()).collect();
        let refs: Vec<&str> = words.iter().map(String::as_str).collect();
        let fs = eval_src(&api(&format!("v1.{minor}.3"), &refs));
        let cat = Catalogue::builtin();
        let v = Some(Version::new(1, minor, 3));
        let c = Component::KubeApiserver;
        for f in &fs {
            match &f.fix {
                Some(Fix::Set(FlagValue { flag, .. })) => {
                    prop_assert_eq!(cat.flag_exists(c, flag, v), Existence::Accepted, "{}", f.id);
                }
                Some(Fix::AddToList(FlagItem { flag, item })) => {
                    prop_assert_eq!(cat.flag_exists(c, flag, v), Existence::Accepted, "{}", f.id);
                    prop_assert_eq!(cat.item_exists(c, flag, item, v), Existence::Accepted, "{}", f.id);
                }
                _ => {}
            }
            prop_assert!(f.status != Status::Fail || f.observed.is_some() || &*f.id == "apiserver-encryption-providers", "{:?}", f);
        }
    }
}

#[test]
fn etcd_config_file_makes_flag_checks_warn_not_fail() {
    // With --config-file etcd ignores its other flags and ETCD_* variables.
    let fs = eval_src(&component(
        "etcd",
        "registry.k8s.io/etcd:3.5.15-0",
        &["--config-file=/etc/etcd/etcd.yaml"],
    ));
    for id in ["etcd-tls", "etcd-client-cert-auth", "etcd-peer-auto-tls"] {
        let f = one(&fs, id);
        assert_eq!(f.status, Status::Warn, "{id}");
        assert!(
            f.reason.as_deref().unwrap().contains("--config-file"),
            "{id}"
        );
    }
}

#[test]
fn the_legacy_admission_control_list_is_the_enabled_list() {
    // Issue 13: `--admission-control=AlwaysAdmit` passed CIS 1.2.10 and NodeRestriction
    // enabled through it failed 1.2.14. On the commit before the fix both were wrong.
    let f = eval_src(&api("v1.31.4", &["--admission-control=AlwaysAdmit"]));
    assert_eq!(one(&f, "apiserver-always-admit").status, Status::Fail);
    let f = eval_src(&api(
        "v1.31.4",
        &["--admission-control=NamespaceLifecycle,NodeRestriction"],
    ));
    assert_eq!(
        one(&f, "apiserver-node-restriction-plugin").status,
        Status::Pass
    );
    // What the legacy list does not name is not enabled: ServiceAccount is off here.
    assert_eq!(
        one(&f, "apiserver-service-account-plugin").status,
        Status::Fail
    );
    assert_eq!(
        one(&f, "apiserver-namespace-lifecycle-plugin").status,
        Status::Pass
    );
    assert_eq!(one(&f, "admission-flags-mixed").status, Status::Pass);
}

#[test]
fn the_legacy_and_new_admission_flags_together_stop_kube_apiserver() {
    let f = eval_src(&api(
        "v1.31.4",
        &[
            "--admission-control=NodeRestriction",
            "--enable-admission-plugins=NodeRestriction",
        ],
    ));
    let mixed = one(&f, "admission-flags-mixed");
    assert_eq!(mixed.status, Status::Fail);
    assert_eq!(mixed.severity, Severity::Critical);
}

#[test]
fn extend_token_expiration_exists_from_1_19_and_defaults_true_from_1_20() {
    // Issue 13: the catalogue had the flag from 1.20, so on 1.19 it was called unsupported
    // (and its removal planned). kubernetes#89549 added it in 1.19 (default false), #96273
    // made the default true in 1.20.
    let f = eval_src(&api(
        "v1.19.16",
        &["--service-account-extend-token-expiration=false"],
    ));
    assert!(
        all(&f, "unsupported-flag")
            .iter()
            .all(|u| u.status == Status::Pass),
        "{f:?}"
    );
    let f = eval_src(&api("v1.19.16", &[]));
    assert_eq!(
        one(&f, "apiserver-service-account-extend-token-expiration").status,
        Status::Pass
    );
    let f = eval_src(&api("v1.20.15", &[]));
    assert_eq!(
        one(&f, "apiserver-service-account-extend-token-expiration").status,
        Status::Fail
    );
}

#[test]
fn event_rate_limit_exists_from_1_8() {
    // Issue 13: the catalogue had EventRateLimit from 1.9; it is alpha in 1.8
    // (kubernetes#50925). On the commit before the fix 1.8 called it unsupported.
    let f = eval_src(&api("v1.8.15", &["--admission-control=EventRateLimit"]));
    assert!(
        all(&f, "unsupported-admission-plugin")
            .iter()
            .all(|u| u.status == Status::Pass),
        "{:?}",
        all(&f, "unsupported-admission-plugin")
    );
    let f = eval_src(&api("v1.7.16", &["--admission-control=EventRateLimit"]));
    assert!(
        all(&f, "unsupported-admission-plugin")
            .iter()
            .any(|u| u.status == Status::Fail)
    );
}

#[test]
fn structured_config_pod_security_and_auditing_gates_follow_their_lifecycle() {
    // Issue 13: these gates were missing their removal (and some their locking): setting them
    // there stops kube-apiserver and was not reported. On the commit before the fix every
    // failing case below passed.
    let gate = |version: &str, g: &str| {
        let f = eval_src(&api(version, &[&format!("--feature-gates={g}")]));
        all(&f, "unsupported-feature-gate")
            .iter()
            .any(|u| u.status == Status::Fail)
    };
    assert!(gate("v1.36.0", "StructuredAuthorizationConfiguration=true"));
    assert!(!gate(
        "v1.35.0",
        "StructuredAuthorizationConfiguration=true"
    ));
    assert!(gate(
        "v1.37.0",
        "StructuredAuthenticationConfiguration=true"
    ));
    assert!(
        gate("v1.34.0", "StructuredAuthenticationConfiguration=false"),
        "locked"
    );
    assert!(!gate(
        "v1.33.0",
        "StructuredAuthenticationConfiguration=false"
    ));
    assert!(gate("v1.26.0", "PodSecurity=false"), "locked 1.25-1.27");
    assert!(!gate("v1.24.0", "PodSecurity=false"));
    assert!(gate("v1.27.0", "AdvancedAuditing=false"), "locked in 1.27");
    assert!(!gate("v1.26.0", "AdvancedAuditing=false"));
}

#[test]
fn flags_that_have_no_effect_on_a_version_are_not_failures_there() {
    // Issue 13: --kubelet-https=false on 1.19-1.21 and --insecure-bind-address on 1.20-1.23
    // had no effect on those versions, yet failed. On the commit before the fix both failed.
    let f = eval_src(&api("v1.20.15", &["--kubelet-https=false"]));
    let k = one(&f, "apiserver-kubelet-https");
    assert_eq!(k.status, Status::Skip);
    assert!(
        k.reason.as_deref().unwrap_or("").contains("no effect"),
        "{k:?}"
    );
    let f = eval_src(&api("v1.18.20", &["--kubelet-https=false"]));
    assert_eq!(one(&f, "apiserver-kubelet-https").status, Status::Fail);
    let f = eval_src(&api("v1.22.17", &["--insecure-bind-address=0.0.0.0"]));
    let b = one(&f, "apiserver-insecure-bind-address");
    assert_eq!(b.status, Status::Skip);
    assert!(
        b.reason.as_deref().unwrap_or("").contains("no effect"),
        "{b:?}"
    );
    let f = eval_src(&api("v1.19.16", &["--insecure-bind-address=0.0.0.0"]));
    assert_eq!(
        one(&f, "apiserver-insecure-bind-address").status,
        Status::Fail
    );
}

#[test]
fn etcd_3_7_refuses_every_experimental_flag() {
    // Issue 13: etcd 3.7 removed all 23 --experimental-* flags 3.6 registers (v3.6.9
    // server/embed/config.go); the catalogue knew two. Also one the table does not list.
    let etcd = |v: &str, flag: &str| {
        eval_src(&component(
            "etcd",
            &format!("registry.k8s.io/etcd:{v}-0"),
            &[flag],
        ))
    };
    for flag in [
        "--experimental-compact-hash-check-enabled=true",
        "--experimental-snapshot-catchup-entries=5000",
        "--experimental-warning-unary-request-duration=300ms",
        "--experimental-not-in-the-table=1",
    ] {
        let name = flag[2..].split('=').next().unwrap();
        let fs = etcd("3.7.1", flag);
        let f = one(&fs, "unsupported-flag");
        assert_eq!(f.status, Status::Fail, "{flag}");
        assert_eq!(f.flag.as_deref(), Some(format!("--{name}").as_str()));
        assert_eq!(f.fix, Some(Fix::Remove(FlagRef { flag: name.into() })));
        if name != "experimental-not-in-the-table" {
            assert_eq!(
                one(&etcd("3.6.9", flag), "unsupported-flag").status,
                Status::Pass
            );
        }
    }
    // Added in 3.6: etcd 3.5 refuses it.
    let fs = etcd(
        "3.5.21",
        "--experimental-warning-unary-request-duration=300ms",
    );
    assert_eq!(one(&fs, "unsupported-flag").status, Status::Fail);
    // Removed in 3.6.
    let fs = etcd("3.6.9", "--experimental-enable-v2v3=/v3");
    assert_eq!(one(&fs, "unsupported-flag").status, Status::Fail);
}

#[test]
fn etcd_advisories_of_2026_are_known() {
    // Issue 13: the etcd table stopped at CVE-2023-32082.
    let cves = |v: &str| -> Vec<String> {
        let fs = eval_src(&component(
            "etcd",
            &format!("registry.k8s.io/etcd:{v}-0"),
            &[],
        ));
        all(&fs, "known-cve")
            .iter()
            .filter(|f| f.status == Status::Fail)
            .map(|f| f.title.split(':').next().unwrap().to_string())
            .collect()
    };
    let v368 = cves("3.6.8");
    for id in [
        "CVE-2026-33413",
        "CVE-2026-33343",
        "CVE-2026-44283",
        "GHSA-3wh4-j44w-pg92",
        "GHSA-xg4h-6gfc-h4m8",
    ] {
        assert!(v368.iter().any(|c| c == id), "3.6.8 lacks {id}: {v368:?}");
    }
    let v3611 = cves("3.6.11");
    assert!(!v3611.iter().any(|c| c == "CVE-2026-33343"), "{v3611:?}");
    assert!(!v3611.iter().any(|c| c == "CVE-2026-44283"), "{v3611:?}");
    assert!(
        v3611.iter().any(|c| c == "GHSA-xg4h-6gfc-h4m8"),
        "{v3611:?}"
    );
    let v370 = cves("3.7.0");
    assert_eq!(v370, ["GHSA-xg4h-6gfc-h4m8", "GHSA-6vch-q96h-7gc3"]);
    assert!(cves("3.7.1").is_empty());
    // 3.4 is past its end of life: its last release has no fix for the 3.5.32+ ones.
    assert!(cves("3.4.45").iter().any(|c| c == "GHSA-xg4h-6gfc-h4m8"));
}

#[test]
fn an_authorization_configuration_is_read_for_its_authorizer_types() {
    let cfg = "apiVersion: apiserver.config.k8s.io/v1\nkind: AuthorizationConfiguration\nauthorizers:\n- type: Node\n  name: node\n- {type: RBAC, name: rbac}\n";
    assert_eq!(
        crate::rules::eval::parse_authz(cfg.as_bytes()),
        Ok(AuthzConfig::Authorizers(vec!["Node".into(), "RBAC".into()]))
    );
    assert!(crate::rules::eval::parse_authz(b"kind: AuthenticationConfiguration\n").is_err());
    assert!(
        crate::rules::eval::parse_authz(
            b"kind: AuthorizationConfiguration\nauthorizers:\n- name: x\n"
        )
        .is_err()
    );
}

#[test]
fn flags_are_judged_after_the_kubelet_expands_env_variables() {
    // Issue 13: `--authorization-mode=$(MODE)` with MODE=AlwaysAllow is AlwaysAllow. On the
    // commit before it was read literally (and passed the AlwaysAllow check).
    let with_env = |arg: &str, env: &str| {
        api("v1.31.4", &[arg]).replace(
            "    name: kube-apiserver\n",
            &format!("    name: kube-apiserver\n    env:\n{env}"),
        )
    };
    let src = with_env(
        "--authorization-mode=$(MODE)",
        "    - {name: MODE, value: AlwaysAllow}\n",
    );
    let f = one(&eval_src(&src), "apiserver-authorization-not-always-allow").clone();
    assert_eq!(f.status, Status::Fail);
    assert_eq!(f.observed.as_deref(), Some("AlwaysAllow"));
    // A variable defined from another one, earlier in the list.
    let src = with_env(
        "--authorization-mode=$(MODES)",
        "    - {name: A, value: Node}\n    - {name: MODES, value: \"$(A),RBAC\"}\n",
    );
    let fs = eval_src(&src);
    assert_eq!(
        one(&fs, "apiserver-authorization-node").status,
        Status::Pass
    );
    assert_eq!(
        one(&fs, "apiserver-authorization-rbac").status,
        Status::Pass
    );
    // `$$(MODE)` is the literal `$(MODE)`; an undefined variable stays as written.
    for arg in [
        "--authorization-mode=$$(MODE)",
        "--authorization-mode=$(NOPE)",
    ] {
        let src = with_env(arg, "    - {name: MODE, value: \"Node,RBAC\"}\n");
        let fs = eval_src(&src);
        assert_eq!(
            one(&fs, "apiserver-authorization-node").status,
            Status::Fail,
            "{arg}"
        );
    }
    // A value set at run time (valueFrom) is judged as written, and said so.
    let src = with_env(
        "--authorization-mode=$(MODE)",
        "    - name: MODE\n      valueFrom: {configMapKeyRef: {name: x, key: y}}\n",
    );
    let m = manifest(&src);
    assert!(
        m.notes
            .iter()
            .any(|n| n.contains("$(MODE)") && n.contains("run time")),
        "{:?}",
        m.notes
    );
    // etcd's ETCD_* variables are expanded too.
    let etcd = "apiVersion: v1\nkind: Pod\nmetadata: {name: etcd}\nspec:\n  containers:\n  - name: etcd\n    image: registry.k8s.io/etcd:3.5.15-0\n    command: [etcd]\n    env:\n    - {name: ON, value: \"true\"}\n    - {name: ETCD_CLIENT_CERT_AUTH, value: $(ON)}\n";
    assert_eq!(
        one(&eval_src(etcd), "etcd-client-cert-auth").status,
        Status::Pass
    );
}

#[test]
fn a_sh_c_script_gets_its_parameters_from_the_container_env() {
    let pod = |script: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: kube-apiserver}}\nspec:\n  containers:\n  - name: kube-apiserver\n    image: registry.k8s.io/kube-apiserver:v1.31.4\n    command: [sh, -c, '{script}']\n    env:\n    - {{name: MODE, value: AlwaysAllow}}\n"
        )
    };
    let fs = eval_src(&pod("exec kube-apiserver --authorization-mode=$MODE"));
    let f = one(&fs, "apiserver-authorization-not-always-allow");
    assert_eq!(f.status, Status::Fail);
    assert_eq!(f.observed.as_deref(), Some("AlwaysAllow"));
    let fs = eval_src(&pod("exec kube-apiserver --authorization-mode=\"${MODE}\""));
    assert_eq!(
        one(&fs, "apiserver-authorization-not-always-allow").status,
        Status::Fail
    );
    // A variable not in the env is unknown: judged as written, and said so.
    let m = manifest(&pod("exec kube-apiserver --authorization-mode=$OTHER"));
    assert!(
        m.notes
            .iter()
            .any(|n| n.contains("$OTHER") && n.contains("judged as written")),
        "{:?}",
        m.notes
    );
}

/// A certificate as the checks see it.
fn cert(not_after_days: i64) -> crate::tls::Cert {
    crate::tls::Cert {
        subject: "CN=kube-apiserver".into(),
        not_before: 0,
        not_after: NOW + not_after_days * 86_400,
        is_ca: false,
        key: crate::tls::KeyInfo::Rsa { bits: 2048 },
        signature: "sha256WithRSAEncryption".into(),
        weak_signature: false,
        dns_names: vec!["kubernetes".into()],
        ips: Vec::new(),
        public_key: vec![1, 2, 3],
        sha256: "00".into(),
    }
}

const NOW: i64 = 1_796_000_000;

fn tls_facts(
    label: Option<&str>,
    certs: Vec<crate::tls::Cert>,
    key: Option<Result<Vec<u8>, String>>,
    meant_ca: Option<bool>,
) -> TlsFacts {
    TlsFacts {
        label: label.map(str::to_string),
        certs: Ok(certs),
        key,
        meant_ca,
        now: NOW,
        expiry_high_days: 7,
        expiry_medium_days: 30,
    }
}

fn cert_file_findings(roles: Vec<FileRole>, tls: Vec<TlsFacts>) -> Vec<Finding> {
    let facts = FileFacts {
        roles,
        mode: 0o644,
        uid: 0,
        gid: 0,
        user: Some("root".into()),
        group: Some("root".into()),
        tls,
        kubeconfig: None,
    };
    evaluate_file(Catalogue::builtin(), &facts)
}

fn cert_findings(
    certs: Vec<crate::tls::Cert>,
    key: Option<Result<Vec<u8>, String>>,
    meant_ca: Option<bool>,
) -> Vec<Finding> {
    let roles = vec![FileRole::PkiCert, FileRole::Certificate];
    cert_file_findings(roles, vec![tls_facts(None, certs, key, meant_ca)])
}

#[test]
fn a_kubeconfigs_client_certificates_are_judged_together_naming_the_failing_user() {
    let fs = cert_file_findings(
        vec![FileRole::Kubeconfig, FileRole::Certificate],
        vec![
            tls_facts(
                Some("user a"),
                vec![cert(365)],
                Some(Ok(vec![1, 2, 3])),
                Some(false),
            ),
            tls_facts(
                Some("user b"),
                vec![cert(-1)],
                Some(Ok(vec![7])),
                Some(false),
            ),
        ],
    );
    let expired = one(&fs, "cert-expired");
    assert_eq!(expired.status, Status::Fail);
    let observed = expired.observed.as_deref().unwrap();
    assert!(
        observed.starts_with("user b: ") && !observed.contains("user a"),
        "{observed}"
    );
    assert_eq!(one(&fs, "cert-key-mismatch").status, Status::Fail);
    assert_eq!(one(&fs, "cert-expiring-soon").status, Status::Pass);
    // One user without a key: the key check is judged on the other.
    let fs = cert_file_findings(
        vec![FileRole::Kubeconfig, FileRole::Certificate],
        vec![
            tls_facts(Some("user a"), vec![cert(365)], None, Some(false)),
            tls_facts(
                Some("user b"),
                vec![cert(365)],
                Some(Ok(vec![1, 2, 3])),
                Some(false),
            ),
        ],
    );
    assert_eq!(one(&fs, "cert-key-mismatch").status, Status::Pass);
    // The evidence of an open expiry finding is the date: the same from one day to the next.
    let day = |now: i64| {
        let mut t = tls_facts(None, vec![cert(20)], None, None);
        t.now = now;
        let fs = cert_file_findings(vec![FileRole::Certificate], vec![t]);
        one(&fs, "cert-expiring-soon").clone()
    };
    assert_eq!(day(NOW), day(NOW + 86_400));
}

#[test]
fn certificates_are_judged_by_expiry_key_signature_role_and_key_pair() {
    let status = |fs: &[Finding], id: &str| one(fs, id).status;
    // A year left, a matching key, a leaf that is not a CA: everything passes.
    let fs = cert_findings(vec![cert(365)], Some(Ok(vec![1, 2, 3])), Some(false));
    for id in [
        "cert-expired",
        "cert-expiring",
        "cert-expiring-soon",
        "cert-weak-key",
        "cert-weak-signature",
        "cert-leaf-is-ca",
        "cert-key-mismatch",
    ] {
        assert_eq!(status(&fs, id), Status::Pass, "{id}: {:?}", one(&fs, id));
    }
    // Each threshold raises exactly one rule.
    for (days, failing) in [
        (-1, "cert-expired"),
        (3, "cert-expiring"),
        (20, "cert-expiring-soon"),
    ] {
        let fs = cert_findings(vec![cert(days)], None, None);
        for id in ["cert-expired", "cert-expiring", "cert-expiring-soon"] {
            let want = if id == failing {
                Status::Fail
            } else {
                Status::Pass
            };
            assert_eq!(
                status(&fs, id),
                want,
                "{days} days, {id}: {:?}",
                one(&fs, id)
            );
        }
    }
    let expired = cert_findings(vec![cert(-1)], None, None);
    assert!(
        one(&expired, "cert-expired")
            .observed
            .as_deref()
            .unwrap()
            .contains("expired 20")
    );
    assert_eq!(one(&expired, "cert-expired").severity, Severity::Critical);
    // The soonest of a bundle counts.
    let fs = cert_findings(vec![cert(365), cert(2)], None, None);
    assert_eq!(status(&fs, "cert-expiring"), Status::Fail);
    // Weak key, weak signature, a leaf that is a CA, a key that is another.
    let mut weak = cert(365);
    weak.key = crate::tls::KeyInfo::Rsa { bits: 1024 };
    weak.weak_signature = true;
    weak.signature = "sha1WithRSAEncryption".into();
    weak.is_ca = true;
    let fs = cert_findings(vec![weak], Some(Ok(vec![9])), Some(false));
    for id in [
        "cert-weak-key",
        "cert-weak-signature",
        "cert-leaf-is-ca",
        "cert-key-mismatch",
    ] {
        assert_eq!(status(&fs, id), Status::Fail, "{id}: {:?}", one(&fs, id));
    }
    assert!(
        one(&fs, "cert-weak-key")
            .observed
            .as_deref()
            .unwrap()
            .contains("1024")
    );
    // What does not apply is a skip with its reason; a key that cannot be read is a warn.
    let fs = cert_findings(vec![cert(365)], None, None);
    assert_eq!(status(&fs, "cert-leaf-is-ca"), Status::Skip);
    assert_eq!(status(&fs, "cert-key-mismatch"), Status::Skip);
    let fs = cert_findings(vec![cert(365)], Some(Err("garbled".into())), Some(true));
    assert_eq!(status(&fs, "cert-key-mismatch"), Status::Warn);
    assert_eq!(
        status(&fs, "cert-leaf-is-ca"),
        Status::Skip,
        "a CA file may be a CA"
    );
    // Not read at all: skipped, not passed.
    let facts = FileFacts {
        roles: vec![FileRole::PkiCert, FileRole::Certificate],
        mode: 0o644,
        uid: 0,
        gid: 0,
        user: None,
        group: None,
        tls: Vec::new(),
        kubeconfig: None,
    };
    let fs = evaluate_file(Catalogue::builtin(), &facts);
    assert_eq!(status(&fs, "cert-expired"), Status::Skip);
}

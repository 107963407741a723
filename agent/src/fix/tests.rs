use proptest::prelude::*;

use super::plan::{AUTHN_CONFIG_NAME, Choice, Plan, plan};
use crate::config::{FixConfig, Mode};
use crate::rules::eval::AuthnConfig;
use crate::rules::{Catalogue, Finding, Fix};

const API_131: &str = include_str!("../../../tests/data/kubeadm/v1.31/kube-apiserver.yaml");
const API_128: &str = include_str!("../../../tests/data/kubeadm/v1.28/kube-apiserver.yaml");
const KCM_131: &str =
    include_str!("../../../tests/data/kubeadm/v1.31/kube-controller-manager.yaml");
const SCHED_131: &str = include_str!("../../../tests/data/kubeadm/v1.31/kube-scheduler.yaml");
const ETCD_131: &str = include_str!("../../../tests/data/kubeadm/v1.31/etcd.yaml");

fn cfg(mode: Mode) -> FixConfig {
    FixConfig {
        mode,
        ..FixConfig::default()
    }
}

/// The plan `lockdown-agent fix` makes: safe fixes plus `extra`.
fn plan_with(src: &str, extra: &[&str]) -> Plan {
    let c = cfg(Mode::Enforce);
    let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    plan(
        Catalogue::builtin(),
        src.as_bytes(),
        None,
        &|f: &Finding| super::choose(&c, f, Mode::Enforce, &extra),
    )
    .expect("plans")
}

fn safe(src: &str) -> Plan {
    plan_with(src, &[])
}

/// Lines removed and added, in order.
fn changed_lines(a: &str, b: &str) -> (Vec<String>, Vec<String>) {
    let diff = similar::TextDiff::from_lines(a, b);
    let mut removed = Vec::new();
    let mut added = Vec::new();
    for c in diff.iter_all_changes() {
        match c.tag() {
            similar::ChangeTag::Delete => removed.push(c.value().trim_end().to_string()),
            similar::ChangeTag::Insert => added.push(c.value().trim_end().to_string()),
            similar::ChangeTag::Equal => {}
        }
    }
    (removed, added)
}

fn with_line_after(src: &str, after: &str, line: &str) -> String {
    let at = src.find(after).expect("anchor") + after.len();
    format!("{}\n{line}{}", &src[..at], &src[at..])
}

#[test]
fn a_changed_value_is_edited_in_place() {
    let src = with_line_after(
        API_131,
        "    - --secure-port=6443",
        "    - --profiling=true",
    );
    let p = safe(&src);
    let (removed, added) = changed_lines(&src, &p.text);
    assert!(removed == ["    - --profiling=true"], "{removed:?}");
    assert!(
        added.contains(&"    - --profiling=false".to_string()),
        "{added:?}"
    );
    // The value is replaced where it was, not moved to its sorted place.
    let at = p.text.find("--profiling=false").unwrap();
    assert_eq!(&p.text[at - 31..at - 6], "    - --secure-port=6443\n");
}

#[test]
fn an_added_flag_goes_where_kubeadm_would_put_it() {
    let p = safe(KCM_131);
    assert_eq!(p.steps.len(), 1, "{:?}", p.steps);
    assert_eq!(p.steps[0].rule_id, "controller-manager-profiling");
    let expected = KCM_131.replace(
        "    - --leader-elect=true\n",
        "    - --leader-elect=true\n    - --profiling=false\n",
    );
    assert_eq!(p.text, expected);
}

#[test]
fn scheduler_flag_added_after_the_last_one() {
    let p = safe(SCHED_131);
    let expected = SCHED_131.replace(
        "    - --leader-elect=true\n",
        "    - --leader-elect=true\n    - --profiling=false\n",
    );
    assert_eq!(p.text, expected);
}

#[test]
fn list_items_are_removed_and_an_emptied_flag_goes() {
    let src = API_131.replace(
        "--enable-admission-plugins=NodeRestriction",
        "--enable-admission-plugins=NodeRestriction,AlwaysAdmit",
    );
    let src = with_line_after(
        &src,
        "    - --client-ca-file=/etc/kubernetes/pki/ca.crt",
        "    - --disable-admission-plugins=ServiceAccount",
    );
    let p = safe(&src);
    let (removed, added) = changed_lines(&src, &p.text);
    assert!(
        removed.contains(&"    - --enable-admission-plugins=NodeRestriction,AlwaysAdmit".into())
    );
    assert!(added.contains(&"    - --enable-admission-plugins=NodeRestriction".into()));
    assert!(removed.contains(&"    - --disable-admission-plugins=ServiceAccount".into()));
    assert!(!p.text.contains("disable-admission-plugins"));
}

#[test]
fn a_flag_the_version_removed_is_removed() {
    // --insecure-port is gone in 1.24; kube-apiserver refuses to start with it.
    let src = with_line_after(
        API_131,
        "    - --secure-port=6443",
        "    - --insecure-port=0",
    );
    let p = safe(&src);
    assert!(
        p.steps.iter().any(|s| s.rule_id == "unsupported-flag"
            && s.fix
                == Fix::Remove(crate::rules::catalogue::FlagRef {
                    flag: "insecure-port".into()
                })),
        "{:?}",
        p.steps
    );
    assert!(!p.text.contains("insecure-port"));
}

#[test]
fn nothing_is_added_on_an_unknown_version() {
    let src = KCM_131.replace(":v1.31.4", ":latest");
    let p = safe(&src);
    assert!(p.is_empty(), "{:?}", p.steps);
    assert_eq!(p.text, src);
    let why = p
        .skipped
        .iter()
        .find(|s| s.rule_id == "controller-manager-profiling")
        .expect("profiling reported as skipped");
    assert!(why.reason.contains("version is unknown"), "{}", why.reason);
}

#[test]
fn an_existing_value_is_still_changed_on_an_unknown_version() {
    let src = with_line_after(
        &KCM_131.replace(":v1.31.4", ":latest"),
        "    - --leader-elect=true",
        "    - --profiling=true",
    );
    let p = safe(&src);
    assert_eq!(p.steps.len(), 1);
    assert!(p.text.contains("    - --profiling=false\n"));
}

#[test]
fn anonymous_auth_is_review_only_before_1_32() {
    let p = plan_with(API_131, &["apiserver-anonymous-auth"]);
    assert!(!p.text.contains("anonymous-auth"));
    let s = p
        .skipped
        .iter()
        .find(|s| s.rule_id == "apiserver-anonymous-auth")
        .expect("skipped");
    assert!(s.reason.contains("401"), "{}", s.reason);
    // Without being named, it is not applied either: not safe unattended.
    let p = safe(API_128);
    assert!(
        p.steps
            .iter()
            .all(|s| s.rule_id != "apiserver-anonymous-auth")
    );
}

#[test]
fn anonymous_auth_on_1_32_becomes_an_authentication_config() {
    let src = with_line_after(
        &API_131.replace(":v1.31.4", ":v1.33.1"),
        "    - --allow-privileged=true",
        "    - --anonymous-auth=true",
    );
    let p = plan_with(&src, &["apiserver-anonymous-auth"]);
    let step = p
        .steps
        .iter()
        .find(|s| s.rule_id == "apiserver-anonymous-auth")
        .expect("applied");
    assert_eq!(step.fix, Fix::AnonymousHealthOnly);
    assert!(!p.text.contains("--anonymous-auth"));
    let inner = format!("/etc/kubernetes/pki/{AUTHN_CONFIG_NAME}");
    assert!(
        p.text
            .contains(&format!("    - --authentication-config={inner}\n"))
    );
    assert_eq!(p.files.len(), 1);
    assert_eq!(p.files[0].host_path, std::path::Path::new(&inner));
    assert!(
        p.files[0]
            .contents
            .contains("apiserver.config.k8s.io/v1beta1")
    );
    // Planning the result with that file in place finds nothing more to do for the rule.
    let authn = crate::rules::eval::parse_authn(p.files[0].contents.as_bytes()).unwrap();
    assert!(matches!(
        authn,
        AuthnConfig::Anonymous { enabled: true, .. }
    ));
    let again = plan(
        Catalogue::builtin(),
        p.text.as_bytes(),
        Some(&authn),
        &|f: &Finding| {
            super::choose(
                &cfg(Mode::Enforce),
                f,
                Mode::Enforce,
                &["apiserver-anonymous-auth".into()],
            )
        },
    )
    .unwrap();
    assert!(again.is_empty(), "{:?}", again.steps);
    // 1.34 and later: the v1 API.
    let p = plan_with(
        &src.replace(":v1.33.1", ":v1.34.0"),
        &["apiserver-anonymous-auth"],
    );
    assert!(p.files[0].contents.contains("apiserver.config.k8s.io/v1\n"));
}

#[test]
fn bind_address_is_not_changed_under_the_probes() {
    let src = KCM_131.replace("--bind-address=127.0.0.1", "--bind-address=0.0.0.0");
    let p = plan_with(&src, &["controller-manager-bind-address"]);
    // The probes use 127.0.0.1, so moving the bind address there keeps them working.
    assert!(p.text.contains("--bind-address=127.0.0.1"));
    let src = src.replace("host: 127.0.0.1", "host: 10.0.0.10");
    let p = plan_with(&src, &["controller-manager-bind-address"]);
    assert!(p.text.contains("--bind-address=0.0.0.0"));
    let s = p
        .skipped
        .iter()
        .find(|s| s.rule_id == "controller-manager-bind-address")
        .unwrap();
    assert!(s.reason.contains("probe"), "{}", s.reason);
}

#[test]
fn shell_wrapped_flags_are_changed_but_never_added() {
    let src = r#"apiVersion: v1
kind: Pod
metadata:
  name: kube-scheduler
spec:
  containers:
  - name: kube-scheduler
    image: registry.k8s.io/kube-scheduler:v1.31.4
    command:
    - /bin/sh
    - -c
    - "exec kube-scheduler --kubeconfig=/etc/kubernetes/scheduler.conf --profiling=true --leader-elect=true"
    livenessProbe:
      httpGet: {host: 127.0.0.1, path: /healthz, port: 10259, scheme: HTTPS}
"#;
    let p = safe(src);
    assert!(
        p.text.contains("--profiling=false --leader-elect=true\""),
        "{}",
        p.text
    );
    let src = src.replace(" --profiling=true", "");
    let p = safe(&src);
    assert!(p.is_empty());
    assert!(
        p.skipped.iter().any(|s| s.reason.contains("sh -c")),
        "{:?}",
        p.skipped
    );
}

#[test]
fn quoting_and_separate_values_are_kept_valid() {
    let src = with_line_after(
        API_131,
        "    - --allow-privileged=true",
        "    - \"--audit-log-maxage\"\n    - '5'",
    );
    let p = safe(&src);
    assert!(
        p.text
            .contains("    - \"--audit-log-maxage\"\n    - '30'\n"),
        "{}",
        p.text
    );
    let p2 = safe(&p.text);
    assert!(p2.is_empty());
}

#[test]
fn crlf_files_stay_crlf() {
    let src = KCM_131.replace('\n', "\r\n");
    let p = safe(&src);
    assert_eq!(p.steps.len(), 1);
    assert!(p.text.contains("    - --profiling=false\r\n"));
    assert!(!p.text.replace("\r\n", "").contains('\n'));
}

#[test]
fn off_rules_are_ignored_and_unsafe_ones_reported() {
    let c = FixConfig {
        mode: Mode::Off,
        rules: [("controller-manager-profiling".to_string(), Mode::DryRun)].into(),
        ..FixConfig::default()
    };
    let p = plan(
        Catalogue::builtin(),
        KCM_131.as_bytes(),
        None,
        &|f: &Finding| super::choose(&c, f, c.mode_of(&f.id), &[]),
    )
    .unwrap();
    assert_eq!(p.steps.len(), 1);
    let c = cfg(Mode::Enforce);
    let p = plan(
        Catalogue::builtin(),
        KCM_131.as_bytes(),
        None,
        &|f: &Finding| match super::choose(&c, f, Mode::Enforce, &[]) {
            Choice::Fix if &*f.id == "controller-manager-profiling" => Choice::Ignore,
            other => other,
        },
    )
    .unwrap();
    assert!(p.is_empty());
}

// Property tests: random kubeadm-like manifests.

/// Insecure or unusual arguments to scatter into a manifest: (flag line(s), component).
const MUTATIONS: &[&str] = &[
    "--profiling=true",
    "--profiling",
    "--audit-log-maxage=5",
    "--enable-admission-plugins=AlwaysAdmit",
    "--enable-admission-plugins=NodeRestriction,AlwaysAdmit,DefaultStorageClass",
    "--disable-admission-plugins=ServiceAccount,NamespaceLifecycle",
    "--insecure-port=8080",
    "--kubelet-https=false",
    "--repair-malformed-updates=true",
    "--insecure-allow-any-token=true",
    "--service-account-lookup=false",
    "--feature-gates=PodSecurity=true,RotateKubeletServerCertificate=false",
    "--insecure-bind-address=0.0.0.0",
];

fn manifest() -> impl Strategy<Value = String> {
    let base = prop_oneof![
        Just(API_131.to_string()),
        Just(API_128.to_string()),
        Just(KCM_131.to_string()),
        Just(SCHED_131.to_string()),
        Just(ETCD_131.to_string()),
    ];
    let muts = proptest::collection::vec((0..MUTATIONS.len(), any::<u8>(), 0usize..3), 0..6);
    (base, muts, any::<bool>(), any::<bool>()).prop_map(|(base, muts, crlf, comment)| {
        let mut lines: Vec<String> = base.lines().map(str::to_string).collect();
        let args: Vec<usize> = lines
            .iter()
            .enumerate()
            .filter(|(_, l)| l.starts_with("    - --"))
            .map(|(i, _)| i)
            .collect();
        let mut inserts: Vec<(usize, String)> = Vec::new();
        for (m, pos, style) in muts {
            let at = args[pos as usize % args.len()];
            let word = MUTATIONS[m];
            let rendered = match style {
                0 => word.to_string(),
                1 => format!("\"{word}\""),
                _ => format!("'{word}'"),
            };
            inserts.push((at, format!("    - {rendered}")));
        }
        inserts.sort_by_key(|(at, _)| std::cmp::Reverse(*at));
        for (at, line) in inserts {
            lines.insert(at + 1, line);
        }
        if comment {
            lines.insert(1, "# managed by hand".into());
        }
        let nl = if crlf { "\r\n" } else { "\n" };
        let mut text = lines.join(nl);
        text.push_str(nl);
        text
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn fixes_touch_only_their_arguments_parse_and_are_idempotent(src in manifest()) {
        let p = safe(&src);
        // It parses, to a control-plane component.
        let m = crate::rules::parse_manifest(Catalogue::builtin(), p.text.as_bytes()).unwrap();
        prop_assert!(m.control_plane.is_some());
        // Only argument lines changed: every removed or added line is a `- <word>` item of the
        // component's command, and the rest of the file is byte for byte the same.
        let (removed, added) = changed_lines(&src, &p.text);
        for l in removed.iter().chain(&added) {
            prop_assert!(l.starts_with("    - "), "changed a line that is not an argument: {l:?}");
        }
        let strip = |t: &str| t.split_inclusive('\n').filter(|l| !l.starts_with("    - ")).collect::<String>();
        prop_assert_eq!(strip(&src), strip(&p.text));
        // Every fix done is gone when evaluated again.
        let cp = m.control_plane.unwrap();
        let after = crate::rules::eval::evaluate_manifest(
            Catalogue::builtin(),
            crate::rules::eval::ManifestFacts {
                cp: &cp,
                authn: None,
                authz: None,
 certs: None,
            },
        );
        for step in &p.steps {
            prop_assert!(
                !after.iter().any(|f| *f.id == *step.rule_id && f.fix.as_ref() == Some(&step.fix)
                    && matches!(f.status, crate::rules::Status::Fail)),
                "{} still fails", step.rule_id
            );
        }
        // Fixing twice equals fixing once.
        let again = safe(&p.text);
        prop_assert!(again.is_empty(), "second plan did {:?}", again.steps);
        prop_assert_eq!(again.text, p.text);
    }
}

const SCHED_124: &str = include_str!("../../../tests/data/kubeadm/v1.24/kube-scheduler.yaml");

#[test]
fn port_0_is_not_added_where_the_probes_use_the_insecure_port() {
    // Issue 13: kubeadm before 1.17 probed kube-scheduler over HTTP on 10251
    // (kubernetes#85043). The safe fix --port=0 closed that port and the kubelet restarted the
    // scheduler forever. On the commit before the fix this plan added --port=0.
    let old = SCHED_124
        .replace("kube-scheduler:v1.24.17", "kube-scheduler:v1.16.15")
        .replace("port: 10259", "port: 10251")
        .replace("scheme: HTTPS", "scheme: HTTP");
    let p = safe(&old);
    assert!(!p.text.contains("--port=0"), "{}", p.text);
    let skipped = p
        .skipped
        .iter()
        .find(|s| s.rule_id == "scheduler-insecure-port")
        .unwrap_or_else(|| panic!("{:?}", p.skipped));
    assert!(
        skipped.reason.contains("probes port 10251"),
        "{}",
        skipped.reason
    );
    // Probes on the secure port: --port=0 is added.
    let secure = SCHED_124.replace("kube-scheduler:v1.24.17", "kube-scheduler:v1.20.15");
    assert!(safe(&secure).text.contains("--port=0"));
    // An explicit insecure port the probes use is kept open too.
    let explicit = old.replace(
        "    - --bind-address",
        "    - --port=10251\n    - --bind-address",
    );
    assert!(safe(&explicit).text.contains("--port=10251"));
}

#[test]
fn no_fix_mixes_the_legacy_admission_list_with_the_new_flags() {
    // Issue 13: fixes adding to --enable-admission-plugins were planned on a manifest that
    // uses --admission-control, which kube-apiserver then refuses.
    let src = API_131.replace(
        "    - --enable-admission-plugins=NodeRestriction\n",
        "    - --admission-control=NamespaceLifecycle,ServiceAccount\n",
    );
    assert!(src.contains("--admission-control"), "fixture changed");
    let p = plan_with(&src, &["apiserver-node-restriction-plugin"]);
    assert!(!p.text.contains("--enable-admission-plugins"), "{}", p.text);
    let s = p
        .skipped
        .iter()
        .find(|s| s.rule_id == "apiserver-node-restriction-plugin")
        .unwrap_or_else(|| panic!("{:?}", p.skipped));
    assert!(
        s.reason.contains("--admission-control is set"),
        "{}",
        s.reason
    );
}

#[test]
fn the_anonymous_auth_fix_says_what_it_costs_kubeadm_join() {
    // Issue 13: the fix also stops kubeadm join's anonymous read of cluster-info; when it is
    // not applied (not named), its reason says so. On the commit before, it did not.
    let src = with_line_after(
        &API_131.replace(":v1.31.4", ":v1.33.1"),
        "    - --allow-privileged=true",
        "    - --anonymous-auth=true",
    );
    let p = safe(&src);
    let s = p
        .skipped
        .iter()
        .find(|s| s.rule_id == "apiserver-anonymous-auth")
        .unwrap_or_else(|| panic!("{:?}", p.skipped));
    assert!(s.reason.contains("cluster-info"), "{}", s.reason);
    assert!(s.reason.contains("kubeadm join"), "{}", s.reason);
}

#[test]
fn the_anonymous_auth_fix_has_a_form_that_keeps_kubeadm_join_discovery() {
    // Issue 13: with fix.keep_cluster_info the written config also allows anonymous reads of
    // kube-public/cluster-info, and nothing else; the rule passes on the result.
    let src = with_line_after(
        &API_131.replace(":v1.31.4", ":v1.34.2"),
        "    - --allow-privileged=true",
        "    - --anonymous-auth=true",
    );
    let c = FixConfig {
        mode: Mode::Enforce,
        keep_cluster_info: true,
        ..FixConfig::default()
    };
    let extra = vec!["apiserver-anonymous-auth".to_string()];
    let p = plan(
        Catalogue::builtin(),
        src.as_bytes(),
        None,
        &|f: &Finding| super::choose(&c, f, Mode::Enforce, &extra),
    )
    .unwrap();
    let step = p
        .steps
        .iter()
        .find(|s| s.rule_id == "apiserver-anonymous-auth")
        .unwrap_or_else(|| panic!("{:?}", p.skipped));
    assert_eq!(step.fix, Fix::AnonymousHealthAndDiscovery);
    let authn = crate::rules::eval::parse_authn(p.files[0].contents.as_bytes()).unwrap();
    let AuthnConfig::Anonymous { enabled, paths } = &authn else {
        panic!("{authn:?}")
    };
    assert!(enabled);
    assert_eq!(
        paths,
        &[
            "/livez",
            "/readyz",
            "/healthz",
            "/api/v1/namespaces/kube-public/configmaps/cluster-info"
        ]
    );
    assert!(p.files[0].contents.contains("apiserver.config.k8s.io/v1\n"));
    let again = plan(
        Catalogue::builtin(),
        p.text.as_bytes(),
        Some(&authn),
        &|f: &Finding| super::choose(&c, f, Mode::Enforce, &extra),
    )
    .unwrap();
    assert!(again.is_empty(), "{:?}", again.steps);
}

#[test]
fn a_flag_whose_value_comes_from_an_env_variable_is_not_edited() {
    // Issue 13: the fix edits the bytes that are written. `--profiling=$(P)` is what the
    // component gets as --profiling=true, but the edit would have to change the env value:
    // review only, nothing written.
    let src = with_line_after(
        API_131,
        "    - --secure-port=6443",
        "    - --profiling=$(P)",
    )
    .replace(
        "    name: kube-apiserver\n",
        "    name: kube-apiserver\n    env:\n    - {name: P, value: \"true\"}\n",
    );
    let p = safe(&src);
    assert!(
        !p.steps.iter().any(|s| s.rule_id == "apiserver-profiling"),
        "{:?}",
        p.steps
    );
    let s = p
        .skipped
        .iter()
        .find(|s| s.rule_id == "apiserver-profiling")
        .unwrap_or_else(|| panic!("{:?}", p.skipped));
    assert!(s.reason.contains("$(VAR) expansion"), "{}", s.reason);
    assert!(p.text.contains("--profiling=$(P)"));
}

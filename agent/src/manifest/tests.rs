//! Unit and property tests for the manifest model.

use proptest::prelude::*;

use super::flags::FlagKind;
use super::*;

fn kinds(c: Component, f: &str) -> FlagKind {
    crate::rules::Catalogue::builtin().kind(c, f)
}

fn parse_str(s: &str) -> Result<Manifest, ManifestError> {
    parse(s.as_bytes(), &kinds)
}

const API_128: &str = include_str!("../../../tests/data/kubeadm/v1.28/kube-apiserver.yaml");
const ETCD_131: &str = include_str!("../../../tests/data/kubeadm/v1.31/etcd.yaml");

#[test]
fn kubeadm_apiserver_is_recognised_with_version_flags_and_spans() {
    let m = parse_str(API_128).unwrap();
    let cp = m.control_plane.unwrap();
    assert_eq!(cp.component, Component::KubeApiserver);
    assert_eq!(cp.identified_by, IdentifiedBy::Executable);
    assert_eq!(cp.version, Some(Version::new(1, 28, 15)));
    assert_eq!(cp.flags.value("secure-port").as_deref(), Some("6443"));
    assert_eq!(
        cp.flags.list("authorization-mode").unwrap(),
        ["Node", "RBAC"]
    );
    for u in &cp.flags.uses {
        let arg = &cp.flags.args[u.arg];
        let span = arg.span.clone().expect("plain scalars have spans");
        assert_eq!(&API_128[span], arg.text);
    }
    assert!(m.notes.is_empty(), "{:?}", m.notes);
}

#[test]
fn apiserver_is_not_mistaken_for_etcd() {
    // kube-bench's `ps | grep etcd` matches kube-apiserver through --etcd-servers.
    let m = parse_str(API_128).unwrap();
    assert_eq!(m.control_plane.unwrap().component, Component::KubeApiserver);
    let m = parse_str(ETCD_131).unwrap();
    let cp = m.control_plane.unwrap();
    assert_eq!(cp.component, Component::Etcd);
    assert_eq!(cp.version, Some(Version::new(3, 5, 15)));
}

#[test]
fn full_path_binaries_and_flags_in_args() {
    let src = "apiVersion: v1\nkind: Pod\nmetadata: {name: kube-apiserver}\nspec:\n  containers:\n  - name: kube-apiserver\n    image: rancher/hardened-kubernetes:v1.30.2-rke2r1-build20240614\n    command: [/usr/local/bin/kube-apiserver]\n    args:\n    - --profiling=false\n    - --anonymous-auth=false\n";
    let cp = parse_str(src).unwrap().control_plane.unwrap();
    assert_eq!(cp.component, Component::KubeApiserver);
    assert_eq!(cp.version, Some(Version::new(1, 30, 2)));
    assert_eq!(cp.flags.value("profiling").as_deref(), Some("false"));
    assert_eq!(cp.flags.args[0].source, flags::ArgSource::Args);
}

#[test]
fn shell_wrapper_flags_keep_spans_when_written_verbatim() {
    let src = "apiVersion: v1\nkind: Pod\nmetadata: {name: etcd}\nspec:\n  containers:\n  - name: etcd\n    image: quay.io/coreos/etcd:v3.5.9\n    command: [\"/bin/sh\", \"-c\", \"exec etcd --client-cert-auth --data-dir=/var/lib/etcd 2>&1 | tee /log\"]\n";
    let cp = parse_str(src).unwrap().control_plane.unwrap();
    assert_eq!(cp.component, Component::Etcd);
    assert_eq!(cp.identified_by, IdentifiedBy::ShellWrapper);
    assert_eq!(cp.flags.value("client-cert-auth").as_deref(), Some("true"));
    assert_eq!(cp.flags.value("data-dir").as_deref(), Some("/var/lib/etcd"));
    let u = cp.flags.uses_of("data-dir").next().unwrap();
    let span = cp.flags.args[u.arg].span.clone().unwrap();
    assert_eq!(&src[span], "--data-dir=/var/lib/etcd");
    assert!(cp.flags.stray.is_empty(), "the pipe ends the etcd command");
}

#[test]
fn hyperkube_and_image_fallback() {
    let src = "{\"apiVersion\":\"v1\",\"kind\":\"Pod\",\"metadata\":{\"name\":\"s\"},\"spec\":{\"containers\":[{\"name\":\"x\",\"image\":\"k8s.gcr.io/hyperkube:v1.15.3\",\"command\":[\"/hyperkube\",\"scheduler\",\"--address=0.0.0.0\"]}]}}";
    let cp = parse_str(src).unwrap().control_plane.unwrap();
    assert_eq!(cp.component, Component::KubeScheduler);
    assert_eq!(cp.identified_by, IdentifiedBy::Hyperkube);
    assert_eq!(cp.flags.value("address").as_deref(), Some("0.0.0.0"));
    let span = cp.flags.args[0].span.clone().unwrap();
    assert_eq!(
        &src[span], "\"--address=0.0.0.0\"",
        "JSON strings keep their quotes in the span"
    );

    let src = "apiVersion: v1\nkind: Pod\nmetadata: {name: c}\nspec:\n  containers:\n  - name: main\n    image: my.reg:5000/k8s/kube-controller-manager:v1.30.2@sha256:0123\n    args: [--profiling=false]\n";
    let cp = parse_str(src).unwrap().control_plane.unwrap();
    assert_eq!(cp.component, Component::KubeControllerManager);
    assert_eq!(cp.identified_by, IdentifiedBy::Image);
    assert_eq!(cp.flags.value("profiling").as_deref(), Some("false"));
}

#[test]
fn other_pods_are_reported_as_such_not_as_errors() {
    let src = "apiVersion: v1\nkind: Pod\nmetadata: {name: haproxy}\nspec:\n  containers:\n  - name: haproxy\n    image: haproxy:2.8\n    command: [haproxy, -f, /etc/haproxy/haproxy.cfg]\n";
    let m = parse_str(src).unwrap();
    assert!(m.control_plane.is_none());
}

#[test]
fn unknown_version_is_noted() {
    let src = "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec:\n  containers:\n  - name: a\n    image: registry.k8s.io/kube-apiserver:latest\n    command: [kube-apiserver]\n";
    let m = parse_str(src).unwrap();
    assert_eq!(m.control_plane.unwrap().version, None);
    assert!(
        m.notes
            .iter()
            .any(|n| n.contains("cannot tell the kube-apiserver version"))
    );
}

#[test]
fn more_documents_are_noted() {
    let src = format!("{API_128}---\napiVersion: v1\nkind: ConfigMap\n");
    let m = parse_str(&src).unwrap();
    assert!(
        m.notes
            .iter()
            .any(|n| n.contains("more than one YAML document"))
    );
}

#[test]
fn each_bad_input_kind_is_a_named_error() {
    assert_eq!(parse_str("").unwrap_err(), ManifestError::Empty);
    assert_eq!(parse_str("  \n\t\n").unwrap_err(), ManifestError::Empty);
    assert_eq!(
        parse(b"ab\0cd", &kinds).unwrap_err(),
        ManifestError::Binary { offset: 2 }
    );
    assert_eq!(
        parse(b"kind: Pod\xff", &kinds).unwrap_err(),
        ManifestError::NotUtf8 { offset: 9 }
    );
    let big = vec![b'#'; MAX_MANIFEST_BYTES + 1];
    assert!(matches!(
        parse(&big, &kinds).unwrap_err(),
        ManifestError::TooLarge { .. }
    ));
    assert!(matches!(
        parse_str("a: [1, 2\n").unwrap_err(),
        ManifestError::Yaml(yaml::YamlError::Syntax { .. })
    ));
    assert_eq!(
        parse_str("apiVersion: v1\nkind: ConfigMap\n")
            .unwrap_err()
            .to_string(),
        "not a Pod: kind \"ConfigMap\""
    );
    assert_eq!(
        parse_str("- a\n- b\n").unwrap_err().to_string(),
        "not a Pod: a YAML sequence"
    );
    assert!(
        parse_str("kind: Pod\nspec:\n  containers: {a: 1}\n")
            .unwrap_err()
            .to_string()
            .contains("spec.containers must be a sequence")
    );
    assert!(
        parse_str("kind: Pod\nspec:\n  containers:\n  - name: a\n    command: [[x]]\n")
            .unwrap_err()
            .to_string()
            .contains("spec.containers[0].command[0] must be a string")
    );
    let deep = format!("kind: Pod\nspec: {}{}", "[".repeat(5000), "]".repeat(5000));
    assert_eq!(
        parse_str(&deep).unwrap_err(),
        ManifestError::Yaml(yaml::YamlError::TooDeep)
    );
}

fn arb_flag() -> impl Strategy<Value = String> {
    let names = prop::sample::select(vec![
        "profiling",
        "anonymous-auth",
        "secure-port",
        "enable-admission-plugins",
        "feature-gates",
        "audit-log-maxage",
        "v",
    ]);
    let values = "[A-Za-z0-9_./:=,-]{0,12}";
    (names, prop::option::of(values)).prop_map(|(n, v)| match v {
        Some(v) => format!("--{n}={v}"),
        None => format!("--{n}"),
    })
}

proptest! {
    /// Every parsed argument maps back to its exact bytes in the source, whatever the quoting.
    #[test]
    fn spans_point_at_the_argument_text(args in prop::collection::vec(arb_flag(), 0..12), quote in 0u8..3) {
        let mut src = String::from("apiVersion: v1\nkind: Pod\nmetadata:\n  name: kube-apiserver\nspec:\n  containers:\n  - command:\n    - kube-apiserver\n");
        for a in &args {
            match quote {
                // a plain scalar cannot hold ": " or end in ':'; such args are quoted
                0 if !a.contains(':') => src.push_str(&format!("    - {a}\n")),
                0 => src.push_str(&format!("    - \"{a}\"\n")),
                1 => src.push_str(&format!("    - \"{a}\"\n")),
                _ => src.push_str(&format!("    - '{a}'\n")),
            }
        }
        src.push_str("    image: registry.k8s.io/kube-apiserver:v1.31.4\n    name: kube-apiserver\n");
        let m = parse_str(&src).unwrap();
        let cp = m.control_plane.unwrap();
        prop_assert_eq!(cp.flags.args.len(), args.len());
        for (arg, want) in cp.flags.args.iter().zip(&args) {
            prop_assert_eq!(&arg.text, want);
            let raw = &src[arg.span.clone().unwrap()];
            let inner = raw.trim_matches(|c| c == '"' || c == '\'');
            prop_assert_eq!(inner, want.as_str());
        }
    }

    /// Arbitrary text never panics the parser; it is a manifest or a named error.
    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,200}") {
        let _ = parse_str(&text);
    }

    /// Arbitrary YAML-ish structure never panics either.
    #[test]
    fn arbitrary_yamlish_never_panics(text in "[-\\[\\]{}:,&*!|>'\"#\\n a-z0-9]{0,300}") {
        let _ = parse_str(&text);
    }
}

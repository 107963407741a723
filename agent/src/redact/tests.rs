//! Redaction is tested on whole pods: every form the parser reads a sensitive value in.
//! Issue 11 (2): the line-based redactor this replaced leaked 10 of the 14 secrets in
//! `thirteen_ways_to_write_a_secret_leak_none` (02, 05, 07-14; checked by running that
//! manifest through it before it was removed).

use proptest::prelude::*;

use super::*;

fn s(name: &str) -> bool {
    name == "initial-cluster-token" || sensitive_by_name(name)
}

fn pod(containers: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: etcd\n  namespace: kube-system\nspec:\n  containers:\n{containers}"
    )
}

/// Asserts that none of `secrets` survive and that `kept` does.
fn assert_redacted(src: &str, secrets: &[&str], kept: &[&str]) -> String {
    let out = manifest_text(src, &s).unwrap_or_else(|e| panic!("{e}\n{src}"));
    for secret in secrets {
        assert!(!out.contains(secret), "{secret} leaked:\n{out}");
    }
    for k in kept {
        assert!(out.contains(k), "{k} lost:\n{out}");
    }
    out
}

#[test]
fn thirteen_ways_to_write_a_secret_leak_none() {
    let src = pod(r#"  - name: etcd
    image: registry.k8s.io/etcd:3.5.15-0
    command:
    - etcd
    - --initial-cluster-token=SECRET01
    - -initial-cluster-token=SECRET02
    - --initial-cluster-token
    - SECRET03
    - "--oidc-client-secret=SECRET04"
    - --initial-cluster-token
    -
      SECRET05
    - --name=etcd-0
    env:
    - name: ETCD_INITIAL_CLUSTER_TOKEN
      value: SECRET06
    - {name: X, value: SECRET07}
    - value: SECRET08
      name: Y
    - name: Z
      value: |
        SECRET09
        SECRET09b
    - name: W
      value:
        SECRET10
  - name: helper
    image: busybox
    command: ["sh", "-c", "exec etcd --initial-cluster-token='SECRET11' --initial-cluster-token SECRET12 --name=x"]
    args: ["--initial-cluster-token", "SECRET13"]
    env: [{name: V, value: SECRET14}]
"#);
    let secrets: Vec<String> = (1..=14).map(|i| format!("SECRET{i:02}")).collect();
    let secrets: Vec<&str> = secrets.iter().map(String::as_str).collect();
    assert_redacted(
        &src,
        &secrets,
        &[
            "--name=etcd-0",
            "--initial-cluster-token=<redacted>",
            "-initial-cluster-token=<redacted>",
            "name: ETCD_INITIAL_CLUSTER_TOKEN",
            "--name=x",
            "image: busybox",
        ],
    );
}

#[test]
fn scripts_in_block_scalars_and_escaped_strings_are_hidden_whole() {
    let src = pod(r#"  - name: etcd
    image: registry.k8s.io/etcd:3.5.15-0
    command:
    - sh
    - -c
    - |
      exec etcd \
        --initial-cluster-token=SECRETA \
        --name=x
  - name: b
    image: busybox
    command: ["sh", "-c", "exec etcd --name=\"y\" --initial-cluster-token SECRETB"]
"#);
    assert_redacted(&src, &["SECRETA", "SECRETB"], &["- sh", "- -c"]);
}

#[test]
fn script_assignments_and_probe_headers_are_hidden() {
    let src = pod(r#"  - name: etcd
    image: registry.k8s.io/etcd:3.5.15-0
    command: ["sh", "-c", "ETCD_INITIAL_CLUSTER_TOKEN=SECRETC exec etcd --name=x"]
    livenessProbe:
      httpGet:
        path: /health
        port: 2381
        httpHeaders:
        - name: Authorization
          value: Bearer SECRETD
      exec:
        command: [probe, --password, SECRETE]
"#);
    assert_redacted(
        &src,
        &["SECRETC", "SECRETD", "SECRETE"],
        &["name: Authorization", "path: /health", "--name=x"],
    );
}

#[test]
fn flags_that_only_name_a_file_are_kept() {
    let src = pod(
        "  - name: a\n    image: k8s/kube-apiserver:v1.31.0\n    command:\n    - kube-apiserver\n    - --secret-store-file=/etc/x\n    - --insecure-allow-any-token=true\n",
    );
    assert_eq!(manifest_text(&src, &s).unwrap(), src);
}

#[test]
fn an_alias_at_a_sensitive_place_withholds_the_text() {
    let src = pod(
        "  - name: etcd\n    image: etcd:3.5.0\n    command: [etcd, &t SECRETF]\n    env:\n    - name: A\n      value: *t\n",
    );
    // the anchor is on a plain word, the copy lands in an env value: no bytes to replace
    assert!(matches!(
        manifest_text(&src, &s),
        Err(Withheld::Unplaced(at)) if at.contains("env[0].value")
    ));
}

#[test]
fn files_that_are_not_pods_have_no_text() {
    for src in [
        "root:$6$abc:19000:0:99999:7:::\n",
        "apiVersion: v1\nkind: Config\nusers:\n- name: a\n  user: {token: SECRET}\n",
        "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n",
        "",
    ] {
        assert!(
            matches!(manifest_text(src, &s), Err(Withheld::NotAManifest(_))),
            "{src}"
        );
    }
}

#[test]
fn later_documents_are_not_shown() {
    let src = pod("  - name: a\n    image: etcd:3.5.0\n    command: [etcd]\n")
        + "---\napiVersion: v1\nkind: Secret\ndata: {k: SECRETG}\n";
    let out = assert_redacted(&src, &["SECRETG", "kind: Secret"], &["command: [etcd]"]);
    assert!(out.ends_with(REDACTED), "{out}");
}

#[test]
fn diff_shows_the_change_with_labels() {
    let d = unified_diff("/m/a.yaml", Some("a\nb\n"), Some("a\nc\n"));
    assert!(d.contains("--- a/m/a.yaml"), "{d}");
    assert!(d.contains("-b\n+c\n"), "{d}");
    let d = unified_diff("/m/a.yaml", None, Some("x\n"));
    assert!(d.contains("--- /dev/null"), "{d}");
}

#[test]
fn relative_paths_get_a_slash_after_the_prefix() {
    // issue 11: `--- aetc/...` broke `patch -p1`
    let d = unified_diff("etc/m/a.yaml", Some("a\n"), Some("b\n"));
    assert!(
        d.starts_with("--- a/etc/m/a.yaml\n+++ b/etc/m/a.yaml\n"),
        "{d}"
    );
}

#[test]
fn long_diffs_are_cut_with_a_note() {
    let big: String = (0..20_000).map(|i| format!("line {i}\n")).collect();
    let d = unified_diff("/a", None, Some(&big));
    assert!(d.len() < MAX_DIFF_BYTES + 100);
    assert!(d.contains("[diff cut:"));
}

/// One way of writing the secret `v` into a pod, as a container's YAML.
fn form(i: usize, v: &str) -> String {
    let c = |cmd: &str| format!("  - name: c\n    image: etcd:3.5.0\n{cmd}");
    match i {
        0 => c(&format!(
            "    command:\n    - etcd\n    - --initial-cluster-token={v}\n"
        )),
        1 => c(&format!(
            "    command:\n    - etcd\n    - -initial-cluster-token={v}\n"
        )),
        2 => c(&format!(
            "    command: [etcd, \"--initial-cluster-token\", \"{v}\"]\n"
        )),
        3 => c(&format!(
            "    command: [etcd]\n    args: ['--initial-cluster-token', '{v}']\n"
        )),
        4 => c(&format!("    env:\n    - {{name: X, value: \"{v}\"}}\n")),
        5 => c(&format!("    env: [{{value: {v}, name: X}}]\n")),
        6 => c(&format!(
            "    env:\n    - name: X\n      value: >-\n        {v}\n"
        )),
        7 => c(&format!(
            "    command: [sh, -c, \"exec etcd --initial-cluster-token '{v}'\"]\n"
        )),
        8 => c(&format!(
            "    command:\n    - sh\n    - -c\n    - exec etcd --initial-cluster-token={v} --x=1\n"
        )),
        9 => c(&format!(
            "    command:\n    - etcd\n    - \"--oidc-client-secret=\\\n      {v}\"\n"
        )),
        _ => c(&format!(
            "    command:\n    - etcd\n    - --etcd-password\n    - '{v}'\n"
        )),
    }
}

proptest! {
    #[test]
    fn no_form_leaks(forms in proptest::collection::vec((0usize..11, "[A-Za-z0-9]{12}"), 1..6)) {
        let containers: String = forms.iter().map(|(i, v)| form(*i, &format!("Z{v}"))).collect();
        let src = pod(&containers);
        let out = manifest_text(&src, &s).map_err(|e| TestCaseError::fail(format!("{e}\n{src}")))?;
        for (_, v) in &forms {
            prop_assert!(!out.contains(&format!("Z{v}")), "leaked {v}:\n{out}");
        }
        prop_assert!(out.contains("image: etcd:3.5.0"));
    }
}

//! `lockdown-agent check` on certificate files, as a user runs it: certificates made by the
//! test (rcgen; openssl for what ring refuses to make: a 1024-bit RSA key, a SHA-1
//! signature), real files, the real process, its JSON.

use std::fs;
use std::path::Path;
use std::process::Command;

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_lockdown-agent");

/// An EC P-256 certificate valid from a day ago until `days` from now (negative: expired),
/// self-signed, a CA when `ca`: (certificate PEM, key PEM).
fn cert(name: &str, days: i64, ca: bool) -> (String, String) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(400);
    params.not_after = now + time::Duration::days(days);
    if ca {
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    }
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// `check --format json` with `config`: the entry of each file by its name.
fn check(config: &str, args: &[&Path]) -> Vec<Value> {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("agent.yaml");
    fs::write(&cfg, config).unwrap();
    let out = Command::new(BIN)
        .arg("check")
        .args(["--format", "json", "--config"])
        .arg(&cfg)
        .args(args)
        .output()
        .unwrap();
    // 2: a file could not be checked (an error entry), which one test makes on purpose.
    assert!(
        matches!(out.status.code(), Some(0..=2)),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["files"].as_array().unwrap().clone()
}

/// A config for a node laid out under `root` (kubeconfigs in it, `pki/`, no manifests).
fn node_config(root: &Path) -> String {
    let manifests = root.join("manifests");
    fs::create_dir_all(&manifests).unwrap();
    format!(
        "manifests_dir: {}\nkubernetes_dir: {}\npki_dir: {}\netcd_data_dir: {}\ncni_dirs: []\n",
        manifests.display(),
        root.display(),
        root.join("pki").display(),
        root.join("etcd-data").display()
    )
}

fn status<'a>(entry: &'a Value, id: &str) -> &'a str {
    entry["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["id"] == id)
        .unwrap_or_else(|| panic!("no {id} in {entry}"))["status"]
        .as_str()
        .unwrap()
}

fn entry<'a>(files: &'a [Value], name: &str) -> &'a Value {
    files
        .iter()
        .find(|f| f["path"].as_str().unwrap().ends_with(name))
        .unwrap_or_else(|| panic!("no {name} in {files:?}"))
}

#[test]
fn a_pem_named_on_the_command_line_is_checked_as_a_certificate_whatever_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let (pem, key) = cert("kubernetes", 3, false);
    let path = dir.path().join("serving.pem");
    fs::write(&path, &pem).unwrap();
    fs::write(dir.path().join("serving.key"), &key).unwrap();
    let files = check("", &[&path]);
    let e = entry(&files, "serving.pem");
    assert!(e["error"].is_null(), "{e}");
    assert_eq!(status(e, "cert-expired"), "pass");
    assert_eq!(status(e, "cert-expiring"), "fail", "3 days left is under 7");
    assert_eq!(status(e, "cert-expiring-soon"), "pass");
    assert_eq!(status(e, "cert-weak-key"), "pass");
    assert_eq!(status(e, "cert-key-mismatch"), "pass");
    // Whether a file named by the user should be a CA is not known.
    assert_eq!(status(e, "cert-leaf-is-ca"), "skip");
    // The thresholds come from the config.
    let files = check(
        "tls:\n  expiry_high_days: 2\n  expiry_medium_days: 10\n",
        &[&path],
    );
    let e = entry(&files, "serving.pem");
    assert_eq!(status(e, "cert-expiring"), "pass");
    assert_eq!(status(e, "cert-expiring-soon"), "fail");
}

#[test]
fn the_node_pki_is_read_expired_mismatched_and_ca_leaves_found() {
    let root = tempfile::tempdir().unwrap();
    let pki = root.path().join("pki");
    fs::create_dir_all(pki.join("etcd")).unwrap();
    let (ca, ca_key) = cert("kubernetes-ca", 3650, true);
    fs::write(pki.join("ca.crt"), ca).unwrap();
    fs::write(pki.join("ca.key"), ca_key).unwrap();
    // apiserver.crt is a CA and its key file holds another key.
    let (leaf, _) = cert("kube-apiserver", 300, true);
    let (_, other_key) = cert("other", 300, false);
    fs::write(pki.join("apiserver.crt"), leaf).unwrap();
    fs::write(pki.join("apiserver.key"), other_key).unwrap();
    // etcd's server certificate expired yesterday.
    let (old, old_key) = cert("etcd-server", -1, false);
    fs::write(pki.join("etcd/server.crt"), old).unwrap();
    fs::write(pki.join("etcd/server.key"), old_key).unwrap();
    let config = node_config(root.path());
    // A certificate in the manifests directory is what the kubelet would read there: a file
    // that is not a manifest (an error), not a certificate to judge.
    let (stray, _) = cert("stray", 300, false);
    fs::write(root.path().join("manifests/stray.crt"), stray).unwrap();
    let files = check(&config, &[]);
    let stray = entry(&files, "/manifests/stray.crt");
    assert!(!stray["error"].is_null(), "{stray}");
    let ca = entry(&files, "/pki/ca.crt");
    assert_eq!(
        status(ca, "cert-leaf-is-ca"),
        "skip",
        "a CA file may hold a CA"
    );
    assert_eq!(status(ca, "cert-key-mismatch"), "pass");
    let apiserver = entry(&files, "/pki/apiserver.crt");
    assert_eq!(status(apiserver, "cert-leaf-is-ca"), "fail");
    assert_eq!(status(apiserver, "cert-key-mismatch"), "fail");
    let etcd = entry(&files, "/pki/etcd/server.crt");
    assert_eq!(status(etcd, "cert-expired"), "fail");
    assert_eq!(status(etcd, "cert-key-mismatch"), "pass");
    // Keys are not certificates: only their mode is checked.
    let key = entry(&files, "/pki/apiserver.key");
    assert!(
        key["findings"]
            .as_array()
            .unwrap()
            .iter()
            .all(|f| !f["id"].as_str().unwrap().starts_with("cert-")),
        "{key}"
    );
}

#[test]
fn weak_keys_and_sha1_signatures_made_by_openssl_are_found() {
    let dir = tempfile::tempdir().unwrap();
    let (crt, key) = (dir.path().join("weak.crt"), dir.path().join("weak.key"));
    let out = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:1024", "-sha1", "-nodes", "-days", "90",
        ])
        .args(["-subj", "/CN=weak"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&crt)
        .output()
        .expect("openssl (CI installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let files = check("", &[&crt]);
    let e = entry(&files, "weak.crt");
    assert_eq!(status(e, "cert-weak-key"), "fail");
    assert_eq!(status(e, "cert-weak-signature"), "fail");
    let finding = e["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["id"] == "cert-weak-key")
        .unwrap();
    assert!(
        finding["observed"].as_str().unwrap().contains("1024"),
        "{finding}"
    );
    // ring refuses a 1024-bit key: whether it matches cannot be told, and says so.
    assert_eq!(status(e, "cert-key-mismatch"), "warn");
}

fn kubeconfig(server: &str, ca_pem: Option<&str>, extra_cluster: &str, user: &str) -> String {
    use base64::Engine as _;
    let ca = ca_pem.map_or(String::new(), |p| {
        format!(
            "    certificate-authority-data: {}\n",
            base64::engine::general_purpose::STANDARD.encode(p)
        )
    });
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: kubernetes\n  cluster:\n    server: {server}\n{ca}{extra_cluster}contexts: []\nusers:\n- name: u\n  user:\n{user}"
    )
}

#[test]
fn kubeconfigs_on_the_node_and_on_a_workstation_are_judged_without_leaking_secrets() {
    let root = tempfile::tempdir().unwrap();
    let pki = root.path().join("pki");
    fs::create_dir_all(&pki).unwrap();
    let (ca, ca_key) = cert("kubernetes-ca", 3650, true);
    fs::write(pki.join("ca.crt"), &ca).unwrap();
    fs::write(pki.join("ca.key"), ca_key).unwrap();
    let (other_ca, _) = cert("another-ca", 3650, true);
    // admin.conf embeds its client certificate and key; scheduler.conf names files, an
    // expired certificate and a key that others can read.
    use base64::Engine as _;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let (admin_cert, admin_key) = cert("kubernetes-admin", 300, false);
    let client = format!(
        "    client-certificate-data: {}\n    client-key-data: {}\n",
        b64(&admin_cert),
        b64(&admin_key)
    );
    let (old_cert, old_key) = cert("system:kube-scheduler", -2, false);
    fs::write(root.path().join("scheduler.crt"), old_cert).unwrap();
    fs::write(root.path().join("scheduler-client.key"), old_key).unwrap();
    let mode = std::os::unix::fs::PermissionsExt::from_mode(0o644);
    fs::set_permissions(root.path().join("scheduler-client.key"), mode).unwrap();
    let by_file = "    client-certificate: scheduler.crt\n    client-key: scheduler-client.key\n";
    // admin.conf as kubeadm writes it; scheduler.conf trusts another CA; controller-manager.conf
    // is everything a kubeconfig should not be.
    fs::write(
        root.path().join("admin.conf"),
        kubeconfig("https://10.0.0.10:6443", Some(&ca), "", &client),
    )
    .unwrap();
    fs::write(
        root.path().join("scheduler.conf"),
        kubeconfig("https://10.0.0.10:6443", Some(&other_ca), "", by_file),
    )
    .unwrap();
    fs::write(
        root.path().join("controller-manager.conf"),
        kubeconfig(
            "http://10.0.0.10:8080",
            None,
            "    insecure-skip-tls-verify: true\n",
            "    username: admin\n    password: hunter2-secret\n",
        ),
    )
    .unwrap();
    let config = node_config(root.path());
    let files = check(&config, &[]);
    let admin = entry(&files, "/admin.conf");
    for id in [
        "kubeconfig-https",
        "kubeconfig-ca",
        "kubeconfig-verifies-server",
        "kubeconfig-cluster-ca",
        "kubeconfig-no-basic-auth",
        "kubeconfig-no-static-token",
        "cert-expired",
        "cert-key-mismatch",
        "cert-leaf-is-ca",
    ] {
        assert_eq!(status(admin, id), "pass", "{id}: {admin}");
    }
    // Embedded: no key file to judge.
    assert_eq!(status(admin, "kubeconfig-client-key-mode"), "skip");
    let scheduler = entry(&files, "/scheduler.conf");
    assert_eq!(status(scheduler, "kubeconfig-cluster-ca"), "fail");
    assert_eq!(status(scheduler, "kubeconfig-ca"), "pass");
    assert_eq!(status(scheduler, "kubeconfig-client-key-mode"), "fail");
    assert_eq!(status(scheduler, "cert-expired"), "fail");
    assert_eq!(status(scheduler, "cert-key-mismatch"), "pass");
    let finding = |e: &Value, id: &str| {
        e["findings"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["id"] == id)
            .unwrap()["observed"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let observed = finding(scheduler, "cert-expired");
    assert!(
        observed.starts_with("user u: ") && observed.contains(" expired "),
        "{observed}"
    );
    assert!(finding(scheduler, "kubeconfig-client-key-mode").contains("0644"));
    let cm = entry(&files, "/controller-manager.conf");
    for id in [
        "kubeconfig-https",
        "kubeconfig-ca",
        "kubeconfig-verifies-server",
        "kubeconfig-no-basic-auth",
    ] {
        assert_eq!(status(cm, id), "fail", "{id}: {cm}");
    }
    let all = serde_json::to_string(&files).unwrap();
    assert!(!all.contains("hunter2"), "a password left the node");
    assert!(!all.contains("PRIVATE KEY") && !all.contains(&b64(&admin_key)[..40]));

    // A workstation's kubeconfig, named `config`: recognised by its content; no node CA to
    // compare with; a static token is a warning, and its value is not shown.
    let home = tempfile::tempdir().unwrap();
    let path = home.path().join("config");
    fs::write(
        &path,
        kubeconfig(
            "https://k8s.example.com",
            Some(&ca),
            "",
            "    token: abc.secret-token\n",
        ),
    )
    .unwrap();
    let files = check("", &[&path]);
    let e = entry(&files, "/config");
    assert!(e["error"].is_null(), "{e}");
    assert_eq!(status(e, "kubeconfig-no-static-token"), "warn");
    assert_eq!(status(e, "kubeconfig-cluster-ca"), "skip");
    assert_eq!(status(e, "kubeconfig-https"), "pass");
    assert!(
        !serde_json::to_string(&files)
            .unwrap()
            .contains("secret-token")
    );
}

/// A certificate for `names` signed by nobody (self-signed), as a file pair under `pki`.
fn write_pair(pki: &Path, name: &str, names: &[&str]) -> String {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let params =
        rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap();
    let cert = params.self_signed(&key).unwrap();
    fs::write(pki.join(format!("{name}.crt")), cert.pem()).unwrap();
    fs::write(pki.join(format!("{name}.key")), key.serialize_pem()).unwrap();
    cert.pem()
}

#[test]
fn the_serving_certificate_names_and_etcds_own_ca_are_read_where_the_pods_mount_them() {
    let root = tempfile::tempdir().unwrap();
    let pki = root.path().join("pki");
    fs::create_dir_all(pki.join("etcd")).unwrap();
    let config = node_config(root.path());
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/kubeadm/v1.31");
    for name in ["kube-apiserver.yaml", "etcd.yaml"] {
        let text = fs::read_to_string(fixtures.join(name))
            .unwrap()
            .replace("/etc/kubernetes/pki", pki.to_str().unwrap());
        fs::write(root.path().join("manifests").join(name), text).unwrap();
    }
    let (ca, ca_key) = cert("kubernetes-ca", 3650, true);
    fs::write(pki.join("ca.crt"), &ca).unwrap();
    fs::write(pki.join("ca.key"), ca_key).unwrap();
    let status_of =
        |files: &[Value], file: &str, id: &str| status(entry(files, file), id).to_string();

    // The serving certificate lacks kubernetes.default.svc; etcd trusts the cluster CA.
    write_pair(
        &pki,
        "apiserver",
        &["kubernetes", "kubernetes.default", "10.0.0.10"],
    );
    fs::write(pki.join("etcd/ca.crt"), &ca).unwrap();
    let files = check(&config, &[]);
    assert_eq!(
        status_of(&files, "kube-apiserver.yaml", "apiserver-cert-names"),
        "fail"
    );
    let names = entry(&files, "kube-apiserver.yaml")["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["id"] == "apiserver-cert-names")
        .unwrap()["observed"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        names.contains("does not cover kubernetes.default.svc"),
        "{names}"
    );
    // CIS 2.7 is Manual (warn): the same certificate as ca.crt is a warn, not a pass.
    assert_eq!(status_of(&files, "etcd.yaml", "etcd-unique-ca"), "warn");

    // Fixed: every name and the advertise address; etcd has a CA of its own.
    write_pair(
        &pki,
        "apiserver",
        &[
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "10.0.0.10",
        ],
    );
    let (etcd_ca, _) = cert("etcd-ca", 3650, true);
    fs::write(pki.join("etcd/ca.crt"), etcd_ca).unwrap();
    let files = check(&config, &[]);
    assert_eq!(
        status_of(&files, "kube-apiserver.yaml", "apiserver-cert-names"),
        "pass"
    );
    assert_eq!(status_of(&files, "etcd.yaml", "etcd-unique-ca"), "pass");

    // Off the node (files named on the command line) the certificates are not read: the
    // names rule is skipped, and CIS 2.7 judges the flag alone.
    let manifests = root.path().join("manifests");
    let files = check("", &[&manifests]);
    assert_eq!(
        status_of(&files, "kube-apiserver.yaml", "apiserver-cert-names"),
        "skip"
    );
    assert_eq!(status_of(&files, "etcd.yaml", "etcd-unique-ca"), "pass");
}

#[test]
fn certificates_the_manifests_name_outside_the_pki_directory_are_judged_too() {
    let root = tempfile::tempdir().unwrap();
    let pki = root.path().join("pki");
    let elsewhere = root.path().join("etcd-tls");
    fs::create_dir_all(&pki).unwrap();
    fs::create_dir_all(&elsewhere).unwrap();
    let config = node_config(root.path());
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/kubeadm/v1.31");
    // etcd's certificates live in a directory of their own, mounted into its pod.
    let text = fs::read_to_string(fixtures.join("etcd.yaml"))
        .unwrap()
        .replace("/etc/kubernetes/pki/etcd", elsewhere.to_str().unwrap());
    fs::write(root.path().join("manifests/etcd.yaml"), text).unwrap();
    let (old, old_key) = cert("etcd-server", -3, false);
    fs::write(elsewhere.join("server.crt"), old).unwrap();
    fs::write(elsewhere.join("server.key"), old_key).unwrap();
    let files = check(&config, &[]);
    let server = entry(&files, "/etcd-tls/server.crt");
    assert_eq!(status(server, "cert-expired"), "fail", "{server}");
    assert_eq!(status(server, "cert-key-mismatch"), "pass");
    // Only the PKI directory's files get the CIS 1.1 PKI mode rules.
    assert!(
        !server["findings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["id"] == "file-pki-cert-mode"),
        "{server}"
    );
    // Named, but not there: nothing to judge, and no entry.
    assert!(
        !files
            .iter()
            .any(|f| f["path"].as_str().unwrap().ends_with("/etcd-tls/peer.crt"))
    );
}

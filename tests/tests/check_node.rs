//! End to end on a sandbox node: a kubeadm-style /etc/kubernetes laid out in a temp
//! directory, scanned by the real `lockdown-agent check` with no path (the node scope).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use lockdown_e2e::bin;
use serde_json::Value;

fn fixtures(v: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("data/kubeadm")
        .join(v)
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        fs::copy(e.path(), to.join(e.file_name())).unwrap();
        fs::set_permissions(to.join(e.file_name()), fs::Permissions::from_mode(0o600)).unwrap();
    }
}

fn json(out: &std::process::Output) -> Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

#[test]
fn node_scan_covers_the_cis_file_set_with_host_path_mapping() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let manifests = r.join("manifests");
    copy_dir(&fixtures("v1.31"), &manifests);
    // Point etcd's data volume at our sandbox so that --data-dir maps to it.
    let etcd = fs::read_to_string(manifests.join("etcd.yaml")).unwrap();
    let data = r.join("etcd-data");
    fs::create_dir(&data).unwrap();
    fs::set_permissions(&data, fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(
        manifests.join("etcd.yaml"),
        etcd.replace(
            "      path: /var/lib/etcd\n",
            &format!("      path: {}\n", data.display()),
        ),
    )
    .unwrap();
    fs::write(r.join("admin.conf"), "x").unwrap();
    fs::set_permissions(r.join("admin.conf"), fs::Permissions::from_mode(0o644)).unwrap();
    fs::write(r.join("scheduler.conf"), "x").unwrap();
    fs::set_permissions(r.join("scheduler.conf"), fs::Permissions::from_mode(0o600)).unwrap();
    let pki = r.join("pki");
    fs::create_dir_all(pki.join("etcd")).unwrap();
    fs::write(pki.join("ca.crt"), "c").unwrap();
    fs::set_permissions(pki.join("ca.crt"), fs::Permissions::from_mode(0o644)).unwrap();
    fs::write(pki.join("etcd/ca.key"), "k").unwrap();
    fs::set_permissions(pki.join("etcd/ca.key"), fs::Permissions::from_mode(0o644)).unwrap();
    let cfg = r.join("agent.yaml");
    fs::write(
        &cfg,
        format!(
            "manifests_dir: {m}\nkubernetes_dir: {k}\npki_dir: {p}\netcd_data_dir: /nonexistent\ncni_dirs: []\n",
            m = manifests.display(),
            k = r.display(),
            p = pki.display()
        ),
    )
    .unwrap();
    let out = Command::new(bin("lockdown-agent"))
        .args([
            "--config",
            cfg.to_str().unwrap(),
            "check",
            "--format",
            "json",
        ])
        .output()
        .unwrap();
    let v = json(&out);
    let files = v["files"].as_array().unwrap();
    let status = |suffix: &str, id: &str| -> String {
        let f = files
            .iter()
            .find(|f| f["path"].as_str().unwrap().ends_with(suffix))
            .unwrap_or_else(|| panic!("no {suffix}"));
        let x = f["findings"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["id"] == id)
            .unwrap_or_else(|| panic!("{suffix}: no {id}"));
        x["status"].as_str().unwrap().to_string()
    };
    assert_eq!(status("/admin.conf", "file-admin-kubeconfig-mode"), "fail");
    assert_eq!(
        status("/scheduler.conf", "file-scheduler-kubeconfig-mode"),
        "pass"
    );
    assert_eq!(status("/pki/ca.crt", "file-pki-cert-mode"), "pass");
    assert_eq!(status("/pki/etcd/ca.key", "file-pki-key-mode"), "warn"); // Manual in CIS 1.12
    assert_eq!(status("/etcd-data", "file-etcd-data-dir-mode"), "fail");
    assert_eq!(
        status(
            "/manifests/kube-apiserver.yaml",
            "file-apiserver-manifest-mode"
        ),
        "pass"
    );
}

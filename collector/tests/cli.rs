//! `lockdown-collector` as an operator runs it: refusals that must happen before anything
//! listens, and the development CA. (These tests also make cargo build the binary that the
//! end-to-end tests in tests/ run.)

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_lockdown-collector");

fn empty_config() -> (tempfile::TempDir, std::path::PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("c.yaml");
    std::fs::write(&p, "").unwrap();
    (d, p)
}

#[test]
fn plaintext_on_a_non_loopback_address_is_refused() {
    let (_d, cfg) = empty_config();
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&cfg)
        .args(["--insecure-listen-loopback", "0.0.0.0:7443"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("loopback addresses only"), "{err}");
}

#[test]
fn serving_without_tls_files_is_refused_with_the_reason() {
    let (_d, cfg) = empty_config();
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("tls is required"), "{err}");
}

#[test]
fn dev_ca_writes_a_ca_and_one_pair_per_name_with_private_keys() {
    use std::os::unix::fs::PermissionsExt;
    let d = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["dev-ca", "--out"])
        .arg(d.path())
        .args(["--node", "cp-1", "--reader", "ops"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for f in ["ca.crt", "collector.crt", "cp-1.crt", "ops.crt"] {
        let pem = std::fs::read_to_string(d.path().join(f)).unwrap();
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{f}");
    }
    for f in ["collector.key", "cp-1.key", "ops.key"] {
        let mode = std::fs::metadata(d.path().join(f))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{f}");
    }
    assert!(!d.path().join("ca.key").exists(), "the CA key is not kept");
}

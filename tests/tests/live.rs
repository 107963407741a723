//! `check --live`: what the API server really serves, probed on loopback against servers the
//! test controls: `fake-component` serving the manifest's certificate or another one, over
//! TLS or in plaintext, answering `/api` as kube-apiserver does; `openssl s_server` speaking
//! TLS 1.1 only; and nothing at all.

use std::fs;
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lockdown_e2e::bin;
use lockdown_e2e::node::Node;
use serde_json::Value;

/// A port nothing listens on now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A server process, killed when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Server {
    /// Waits until `port` accepts connections.
    fn listening(mut self, port: u16) -> Server {
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(self.0.try_wait().unwrap().is_none(), "the server exited");
            assert!(Instant::now() < deadline, "nothing listens on {port}");
            std::thread::sleep(Duration::from_millis(10));
        }
        self
    }
}

/// `fake-component` as kube-apiserver on `port`: `scheme` https or http, with `cert` and
/// `key` (PEM files), and these flags.
fn fake(port: u16, scheme: &str, cert: Option<(&Path, &Path)>, flags: &[&str]) -> Server {
    let mut cmd = Command::new(bin("fake-component"));
    cmd.env("FAKE_COMPONENT", "kube-apiserver")
        .env("FAKE_VERSION", "1.31.4")
        .env("FAKE_SERVE", format!("{scheme}:{port}"))
        .env("FAKE_PATHS", "/livez,/readyz")
        .args(flags)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some((c, k)) = cert {
        cmd.env("FAKE_CERT", c).env("FAKE_KEY", k);
    }
    Server(cmd.spawn().expect("fake-component")).listening(port)
}

/// A kubeadm node whose kube-apiserver manifest serves on `port`, with `extra` flags.
fn node(port: u16, extra: &str) -> Node {
    node_with(port, extra, "live:\n  timeout: 2s")
}

/// [`node`] with an agent config whose `live:` section is `live`.
fn node_with(port: u16, extra: &str, live: &str) -> Node {
    let node = Node::kubeadm_full(live);
    let path = node.manifest("kube-apiserver.yaml");
    let text = fs::read_to_string(&path).unwrap().replace(
        "    - --secure-port=6443\n",
        &format!("    - --secure-port={port}\n{extra}"),
    );
    fs::write(&path, text).unwrap();
    node
}

/// `check --live --format json`: the kube-apiserver manifest's live findings, by rule id:
/// (status, observed or reason).
fn live(node: &Node) -> Vec<(String, String, String)> {
    let out = Command::new(bin("lockdown-agent"))
        .args(["check", "--live", "--format", "json", "--config"])
        .arg(&node.config)
        .output()
        .unwrap();
    assert!(
        matches!(out.status.code(), Some(0 | 1)),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let api = v["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| {
            f["path"]
                .as_str()
                .unwrap()
                .ends_with("/kube-apiserver.yaml")
        })
        .unwrap()
        .clone();
    api["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["id"].as_str().unwrap().starts_with("live-"))
        .map(|f| {
            let text = f["observed"]
                .as_str()
                .or(f["reason"].as_str())
                .unwrap_or_default();
            (
                f["id"].as_str().unwrap().to_string(),
                f["status"].as_str().unwrap().to_string(),
                text.to_string(),
            )
        })
        .collect()
}

/// The sandbox's serving certificate and key.
fn pair(node: &Node) -> (std::path::PathBuf, std::path::PathBuf) {
    (
        node.pki.join("apiserver.crt"),
        node.pki.join("apiserver.key"),
    )
}

fn status<'a>(found: &'a [(String, String, String)], id: &str) -> (&'a str, &'a str) {
    let f = found
        .iter()
        .find(|f| f.0 == id)
        .unwrap_or_else(|| panic!("no {id} in {found:#?}"));
    (f.1.as_str(), f.2.as_str())
}

#[test]
fn the_certificate_in_the_file_served_over_modern_tls_passes_everything() {
    let port = free_port();
    let node = node(port, "    - --anonymous-auth=false\n");
    let (crt, key) = pair(&node);
    let _server = fake(
        port,
        "https",
        Some((&crt, &key)),
        &["--anonymous-auth=false"],
    );
    let found = live(&node);
    for id in [
        "live-apiserver-answers",
        "live-tls-version",
        "live-chain-verifies",
        "live-serves-cert-file",
        "live-no-plaintext",
        "live-anonymous-refused",
    ] {
        assert_eq!(status(&found, id).0, "pass", "{id}: {found:#?}");
    }
    assert!(status(&found, "live-anonymous-refused").1.contains("401"));
    assert!(
        status(&found, "live-tls-version")
            .1
            .contains("TLS 1.1 refused")
    );
}

#[test]
fn another_certificate_served_is_found_and_a_self_signed_one_does_not_verify() {
    let port = free_port();
    let node = node(port, "");
    // Signed by the cluster CA, for the same names: a renewed file the process has not read.
    let dir = tempfile::tempdir().unwrap();
    let other = node.ca.issue(
        "kube-apiserver",
        &[
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "10.0.0.10",
        ],
    );
    let (crt, key) = (dir.path().join("other.crt"), dir.path().join("other.key"));
    fs::write(&crt, &other.cert).unwrap();
    fs::write(&key, &other.key).unwrap();
    let server = fake(port, "https", Some((&crt, &key)), &[]);
    let found = live(&node);
    let (s, observed) = status(&found, "live-serves-cert-file");
    assert_eq!(s, "fail", "{found:#?}");
    assert!(
        observed.starts_with("serves CN=kube-apiserver"),
        "{observed}"
    );
    assert_eq!(status(&found, "live-chain-verifies").0, "pass");
    // The manifest leaves anonymous access on: nothing to compare /api with.
    assert_eq!(status(&found, "live-anonymous-refused").0, "skip");
    drop(server);

    // A throwaway self-signed certificate for localhost: neither the file's nor the CA's.
    let _server = fake(port, "https", None, &[]);
    let found = live(&node);
    assert_eq!(
        status(&found, "live-chain-verifies").0,
        "fail",
        "{found:#?}"
    );
    assert_eq!(status(&found, "live-serves-cert-file").0, "fail");
}

#[test]
fn anonymous_access_the_manifest_turns_off_but_the_process_allows_is_found() {
    let port = free_port();
    let node = node(port, "    - --anonymous-auth=false\n");
    let (crt, key) = pair(&node);
    // The process still runs without the flag: it predates the manifest.
    let _server = fake(port, "https", Some((&crt, &key)), &[]);
    let found = live(&node);
    let (s, observed) = status(&found, "live-anonymous-refused");
    assert_eq!(s, "fail", "{found:#?}");
    assert!(observed.contains("answered 200"), "{observed}");
}

#[test]
fn tls_11_only_is_found() {
    let port = free_port();
    let node = node(port, "");
    let (crt, key) = pair(&node);
    let server = Command::new("openssl")
        .args(["s_server", "-accept"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("-cert")
        .arg(&crt)
        .arg("-key")
        .arg(&key)
        .args([
            "-tls1_1",
            "-cipher",
            "DEFAULT:@SECLEVEL=0",
            "-www",
            "-quiet",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl (installed by .ci/run)");
    let _server = Server(server).listening(port);
    let found = live(&node);
    let (s, observed) = status(&found, "live-tls-version");
    assert_eq!(s, "fail", "{found:#?}");
    assert!(observed.starts_with("TLSv1.1 accepted"), "{observed}");
    // No TLS 1.2 handshake: what it serves cannot be judged, and says why.
    let (s, why) = status(&found, "live-chain-verifies");
    assert_eq!(s, "skip", "{found:#?}");
    assert!(why.contains("handshake"), "{why}");
}

#[test]
fn plaintext_on_the_secure_port_is_found() {
    let port = free_port();
    let node = node(port, "");
    let _server = fake(port, "http", None, &[]);
    let found = live(&node);
    let (s, observed) = status(&found, "live-no-plaintext");
    assert_eq!(s, "fail", "{found:#?}");
    assert!(observed.contains(&format!("127.0.0.1:{port} answered GET /api in plaintext")));
}

#[test]
fn a_server_that_is_down_is_reported_down_not_insecure() {
    let port = free_port();
    let node = node(port, "");
    let found = live(&node);
    let (s, observed) = status(&found, "live-apiserver-answers");
    assert_eq!(s, "warn", "{found:#?}");
    assert!(observed.contains("nothing answers"), "{observed}");
    for (id, s, _) in &found {
        if id != "live-apiserver-answers" {
            assert_eq!(s, "skip", "{id}: {found:#?}");
        }
    }
    // Without --live, nothing is probed and no live finding is listed.
    let out = Command::new(bin("lockdown-agent"))
        .args(["check", "--format", "json", "--config"])
        .arg(&node.config)
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&out.stdout).contains("live-"));
}

/// Whether `rule` was raised among `events`.
fn raised(events: &[lockdown_agent::event::Event], rule: &str) -> bool {
    events.iter().any(|e| {
        matches!(&e.body, lockdown_agent::event::EventBody::FindingRaised { finding, .. }
            if finding.rule_id == rule)
    })
}

#[test]
fn the_daemon_probes_on_its_interval_and_after_a_manifest_change() {
    let port = free_port();
    let live = "live:\n  interval: 1s\n  after_change: 1s\n  timeout: 2s";
    let node = node_with(port, "", live);
    let path = node.manifest("kube-apiserver.yaml");
    let text = fs::read_to_string(&path).unwrap();
    let (crt, key) = pair(&node);
    let server = fake(port, "https", Some((&crt, &key)), &[]);
    let agent = node.start();
    let started = agent.last_seq();

    // Another certificate comes to be served without any file changing: the interval's probe
    // finds it.
    drop(server);
    let dir = tempfile::tempdir().unwrap();
    let other = node.ca.issue("kube-apiserver", &["10.0.0.10"]);
    let (ocrt, okey) = (dir.path().join("o.crt"), dir.path().join("o.key"));
    fs::write(&ocrt, &other.cert).unwrap();
    fs::write(&okey, &other.key).unwrap();
    let _server = fake(port, "https", Some((&ocrt, &okey)), &[]);
    let events = agent.wait_for(started, |ev| raised(ev, "live-serves-cert-file"));
    assert!(
        !events.iter().any(|e| e.body.kind() == "file_modified"),
        "{events:#?}"
    );
    let seq = events.last().unwrap().seq;

    // The manifest turns anonymous access off; the running process still allows it.
    let off = text.replace(
        &format!("    - --secure-port={port}\n"),
        &format!("    - --secure-port={port}\n    - --anonymous-auth=false\n"),
    );
    fs::write(&path, off).unwrap();
    agent.wait_for(seq, |ev| raised(ev, "live-anonymous-refused"));
    assert!(agent.stop().success());
}

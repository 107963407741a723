//! The fixer against a real etcd (Debian's `etcd-server`, etcd 3.4.23), run as a static pod
//! by the kubelet double: the health gate judges the real process through its own metrics
//! port, a fix it accepts is verified, a fix that makes it refuse to start is rolled back to
//! identical bytes with etcd healthy again. etcd 3.4 is past its end of life for the
//! catalogue (the oldest supported etcd is newer), so the agent reports that too: the rules
//! apply to it by version, as to any.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use lockdown_agent::event::EventBody;
use lockdown_e2e::kubelet::{Kubelet, write_manifest};
use lockdown_e2e::node::{Node, about, has};

const GATE_WAIT: Duration = Duration::from_secs(90);
const ETCD: &str = "etcd.yaml";

/// Whether a real etcd is installed; says why not otherwise (CI installs it).
fn etcd_installed() -> bool {
    let ok = Command::new("etcd")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains("3.4"));
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "etcd 3.4 is missing; .ci/run installs etcd-server"
        );
        eprintln!("skipped: no etcd 3.4 here (apt-get install etcd-server)");
    }
    ok
}

/// A serving certificate and key for 127.0.0.1, written into `dir`.
fn server_cert(dir: &Path) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    fs::write(dir.join("server.crt"), cert.pem()).unwrap();
    fs::write(dir.join("server.key"), key.serialize_pem()).unwrap();
}

/// A kubeadm-shaped etcd manifest for this sandbox: its client URL over TLS on loopback,
/// peers on loopback, its health on the metrics port the probes use (1 s periods), with
/// `--auto-tls=true` (CIS 2.3 fails), and the serving certificate only when `with_cert`.
/// The manifest, and the port etcd serves `/health` on.
fn manifest(node: &Node, with_cert: bool) -> (String, u16) {
    let port = || lockdown_e2e::collector::free_addr().port();
    let (client, peer, metrics) = (port(), port(), port());
    let pki = node.root.path().join("etcd-pki");
    fs::create_dir_all(&pki).unwrap();
    server_cert(&pki);
    let data = node.root.path().join("etcd-data");
    let certs = if with_cert {
        format!(
            "    - --cert-file={0}/server.crt\n    - --key-file={0}/server.key\n",
            pki.display()
        )
    } else {
        String::new()
    };
    let text = format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  labels:
    component: etcd
    tier: control-plane
  name: etcd
  namespace: kube-system
spec:
  containers:
  - command:
    - etcd
    - --advertise-client-urls=https://127.0.0.1:{client}
    - --auto-tls=true
{certs}    - --data-dir={data}
    - --initial-advertise-peer-urls=http://127.0.0.1:{peer}
    - --initial-cluster=cp-1=http://127.0.0.1:{peer}
    - --listen-client-urls=https://127.0.0.1:{client}
    - --listen-metrics-urls=http://127.0.0.1:{metrics}
    - --listen-peer-urls=http://127.0.0.1:{peer}
    - --name=cp-1
    image: registry.k8s.io/etcd:3.4.23-0
    livenessProbe:
      failureThreshold: 3
      httpGet:
        host: 127.0.0.1
        path: /health
        port: {metrics}
        scheme: HTTP
      initialDelaySeconds: 1
      periodSeconds: 1
      timeoutSeconds: 2
    name: etcd
    startupProbe:
      failureThreshold: 10
      httpGet:
        host: 127.0.0.1
        path: /health
        port: {metrics}
        scheme: HTTP
      initialDelaySeconds: 1
      periodSeconds: 1
      timeoutSeconds: 2
    volumeMounts:
    - mountPath: {data}
      name: etcd-data
  hostNetwork: true
  volumes:
  - hostPath:
      path: {data}
      type: DirectoryOrCreate
    name: etcd-data
"#,
        data = data.display()
    );
    (text, metrics)
}

/// Waits until etcd answers `/health` with 200: a member restarted before it has committed
/// its own bootstrap never elects itself, and the tests are about fixing a running etcd.
fn wait_healthy(port: u16) {
    use std::io::{Read, Write};
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let answer = std::net::TcpStream::connect(("127.0.0.1", port)).and_then(|mut s| {
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            s.write_all(b"GET /health HTTP/1.0\r\n\r\n")?;
            let mut out = String::new();
            s.read_to_string(&mut out)?;
            Ok(out)
        });
        if answer.is_ok_and(|a| a.starts_with("HTTP/1.0 200") || a.starts_with("HTTP/1.1 200")) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "etcd not healthy within 60 s"
        );
        // etcd offers nothing to wait on but its endpoint: poll it.
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A node whose only manifest is a real etcd's, with the auto-tls fix enforced by name.
fn etcd_node(with_cert: bool) -> (Node, Kubelet, String) {
    let node = Node::new(
        "rescan_interval: 0s\nfix:\n  mode: enforce\n  health_timeout: 10s\n  rules:\n    etcd-auto-tls: enforce",
    );
    for e in fs::read_dir(&node.manifests).unwrap() {
        fs::remove_file(e.unwrap().path()).unwrap();
    }
    let (text, health) = manifest(&node, with_cert);
    write_manifest(&node, ETCD, &text);
    let k = Kubelet::start_real(&node.manifests, &node.root.path().join("etcd.log"));
    wait_healthy(health);
    (node, k, text)
}

#[test]
fn a_fix_the_real_etcd_accepts_is_verified_on_the_real_process() {
    if !etcd_installed() {
        return;
    }
    let (node, _k, original) = etcd_node(true);
    let path = node.manifest(ETCD);
    let agent = node.start();
    let events = agent.wait_for_within(GATE_WAIT, 0, |ev| {
        has(ev, "fix_verified", &path) || has(ev, "fix_rolled_back", &path)
    });
    assert!(
        has(&events, "fix_verified", &path),
        "{:?}\netcd log:\n{}",
        events.iter().map(|e| e.body.kind()).collect::<Vec<_>>(),
        fs::read_to_string(node.root.path().join("etcd.log")).unwrap_or_default()
    );
    let fixed = fs::read_to_string(&path).unwrap();
    assert_eq!(fixed, original.replace("    - --auto-tls=true\n", ""));
    // The version is judged as any: 3.4 is past its end of life for the catalogue.
    assert!(
        events.iter().any(|e| matches!(&e.body,
            EventBody::FindingRaised { finding, .. } if finding.rule_id == "version-supported")),
        "etcd 3.4 is reported as out of support"
    );
    // The gate credited the new process: the one running without --auto-tls.
    let verified = about(&events, "fix_verified", &path)[0];
    let EventBody::FixVerified { attempts, .. } = &verified.body else {
        unreachable!()
    };
    assert!(
        attempts.iter().any(|a| a.ok && a.result == "200"),
        "{attempts:?}"
    );
    let running = fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .find(|c| c.starts_with("etcd ") && c.contains(&node.root.path().display().to_string()))
        .expect("etcd runs");
    assert!(!running.contains("--auto-tls"), "{running}");
}

#[test]
fn a_fix_the_real_etcd_refuses_is_rolled_back_and_etcd_is_healthy_again() {
    if !etcd_installed() {
        return;
    }
    // Without --cert-file, removing --auto-tls leaves an https client URL with no certificate:
    // etcd refuses to start ("TLS key/cert ... must be provided").
    let (node, _k, original) = etcd_node(false);
    let path = node.manifest(ETCD);
    let agent = node.start();
    let events = agent.wait_for_within(GATE_WAIT, 0, |ev| {
        has(ev, "fix_rolled_back", &path) || has(ev, "fix_verified", &path)
    });
    let log = fs::read_to_string(node.root.path().join("etcd.log")).unwrap_or_default();
    let rolled = about(&events, "fix_rolled_back", &path);
    assert!(!rolled.is_empty(), "{events:?}\netcd log:\n{log}");
    assert_eq!(
        fs::read_to_string(&path).unwrap(),
        original,
        "identical bytes"
    );
    let EventBody::FixRolledBack {
        restored_healthy, ..
    } = &rolled[0].body
    else {
        unreachable!()
    };
    assert!(restored_healthy, "etcd healthy again on the original");
    assert!(
        log.contains("must be provided"),
        "the real etcd refused the fix:\n{log}"
    );
}

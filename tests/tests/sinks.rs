//! Sinks end to end: a real collector delivers what a real agent sends to a webhook receiver
//! on loopback that is down for a while and then up. Every event arrives once, in order,
//! with a valid signature.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hmac::{KeyInit, Mac};
use lockdown_e2e::collector::{Collector, Pki, free_addr};
use lockdown_e2e::node::Node;
use lockdown_e2e::wait_until_within;

const WAIT: Duration = Duration::from_secs(90);
const SECRET: &str = "a shared secret";

/// One delivery as the receiver took it.
#[derive(Debug, Clone)]
struct Delivery {
    signed: bool,
    /// (node, seq) of its events, in the order sent.
    events: Vec<(String, u64)>,
}

/// A webhook receiver: answers every POST with 200 and keeps what it got.
fn receive(listener: TcpListener, got: Arc<Mutex<Vec<Delivery>>>) {
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            take(conn, &got);
        }
    });
}

/// Reads one POST from `conn`, keeps it, answers 200.
fn take<S: Read + Write>(mut conn: S, got: &Mutex<Vec<Delivery>>) {
    let mut reader = BufReader::new(&mut conn);
    let mut line = String::new();
    let (mut length, mut signature) = (0usize, String::new());
    reader.read_line(&mut line).unwrap();
    assert!(line.starts_with("POST /hook "), "{line}");
    loop {
        line.clear();
        reader.read_line(&mut line).unwrap();
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (k, v) = l.split_once(':').unwrap();
        match k.to_ascii_lowercase().as_str() {
            "content-length" => length = v.trim().parse().unwrap(),
            "x-lockdown-signature" => signature = v.trim().to_string(),
            _ => {}
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).unwrap();
    drop(reader);
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(&body);
    let want: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let events = v["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let id = e["id"].as_str().unwrap();
            let node = e["node"].as_str().unwrap();
            assert_eq!(id, format!("{node}/{}/{}", e["epoch"], e["seq"]));
            (node.to_string(), e["seq"].as_u64().unwrap())
        })
        .collect();
    got.lock().unwrap().push(Delivery {
        signed: signature == format!("sha256={want}"),
        events,
    });
    let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    let _ = conn.flush();
}

/// Toggles the scheduler's profiling flag: a file change and a finding raised or resolved.
fn edit(node: &Node, round: usize) {
    node.scheduler_flag("--profiling", round.is_multiple_of(2).then_some("false"));
}

#[test]
fn a_webhook_down_for_a_while_gets_every_event_once_in_order_and_signed() {
    let pki = Pki::new(&["cp-1"]);
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("hook-secret");
    std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
    let hook = free_addr();
    let col = Collector::new(
        &pki,
        &format!(
            "sinks:\n- name: hook\n  type: webhook\n  url: http://127.0.0.1:{}/hook\n  secret_file: {}\n  max_batch_events: 7\n",
            hook.port(),
            secret.display()
        ),
    );
    let node = Node::new(&pki.agent_config(col.addr, "cp-1"));
    let agent = node.start();
    for round in 0..6 {
        edit(&node, round);
    }
    // Everything is stored while the receiver is down, and the sink has tried and failed.
    wait_until_within(
        "the agent's events stored",
        WAIT,
        || {
            let last = agent.status().spool.last_seq;
            last > 6 && col.keys().len() as u64 >= last
        },
        || col.log(),
    );
    wait_until_within(
        "the sink tried the receiver while it was down",
        WAIT,
        || col.log().contains("delivery failed"),
        || col.log(),
    );
    let got = Arc::new(Mutex::new(Vec::new()));
    receive(TcpListener::bind(hook).unwrap(), Arc::clone(&got));
    let delivered = |got: &Arc<Mutex<Vec<Delivery>>>| -> Vec<(String, u64)> {
        got.lock()
            .unwrap()
            .iter()
            .flat_map(|d| d.events.clone())
            .collect()
    };
    let stored = || col.keys();
    wait_until_within(
        "the receiver got what was stored while it was down",
        WAIT,
        || delivered(&got).len() >= stored().len(),
        || format!("{:?}\n{}", delivered(&got), col.log()),
    );
    // While it is up, new events flow as they are committed.
    for round in 6..10 {
        edit(&node, round);
    }
    wait_until_within(
        "the receiver got the events committed while it was up",
        WAIT,
        || {
            let last = agent.status().spool.last_seq;
            col.keys().len() as u64 >= last && delivered(&got).len() >= col.keys().len()
        },
        || format!("{:?}\n{}", delivered(&got), col.log()),
    );
    let got = got.lock().unwrap().clone();
    assert!(got.iter().all(|d| d.signed), "every body is signed");
    assert!(
        got.iter().all(|d| d.events.len() <= 7),
        "batches keep their bound"
    );
    let events: Vec<(String, u64)> = got.iter().flat_map(|d| d.events.clone()).collect();
    assert_eq!(events, col.keys(), "every stored event once, in order");
}

/// A real Alertmanager (the Debian package's) on a free loopback port.
struct Alertmanager {
    child: std::process::Child,
    addr: std::net::SocketAddr,
    _dir: tempfile::TempDir,
}

impl Alertmanager {
    fn start() -> Alertmanager {
        let bin = ["prometheus-alertmanager", "alertmanager"]
            .into_iter()
            .find(|b| {
                std::process::Command::new(b)
                    .arg("--version")
                    .output()
                    .is_ok()
            })
            .expect("Alertmanager: install the Debian package prometheus-alertmanager");
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("alertmanager.yml");
        std::fs::write(
            &config,
            "route: {receiver: discard, group_wait: 1s}\nreceivers: [{name: discard}]\n",
        )
        .unwrap();
        let addr = free_addr();
        let child = std::process::Command::new(bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--cluster.listen-address=")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let am = Alertmanager {
            child,
            addr,
            _dir: dir,
        };
        wait_until_within(
            "Alertmanager ready",
            WAIT,
            || am.get("/-/ready").is_some_and(|(status, _)| status == 200),
            String::new,
        );
        am
    }

    fn get(&self, path: &str) -> Option<(u16, String)> {
        lockdown_e2e::http::get(self.addr, path)
    }

    /// The label sets of the alerts firing now, each as (rule, node, severity).
    fn firing(&self) -> Vec<(String, String, String)> {
        let Some((200, body)) = self.get("/api/v2/alerts?active=true") else {
            return Vec::new();
        };
        let alerts: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        let mut out: Vec<(String, String, String)> = alerts
            .as_array()
            .into_iter()
            .flatten()
            .filter(|a| a["status"]["state"] == "active")
            .map(|a| {
                let l = &a["labels"];
                let s = |k: &str| l[k].as_str().unwrap_or_default().to_string();
                assert_eq!(s("alertname"), "KubeLockdownFinding");
                (s("rule"), s("node"), s("severity"))
            })
            .collect();
        out.sort();
        out
    }
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn an_open_finding_fires_in_alertmanager_and_clears_when_resolved_or_excepted() {
    let am = Alertmanager::start();
    let pki = Pki::new(&["cp-1"]);
    let col = Collector::new(
        &pki,
        &format!(
            // An hour between resends, so an alert ends for nothing but the endsAt sent
            // when its finding stops firing (it would otherwise stay for four hours).
            "sinks:\n- name: alerts\n  type: alertmanager\n  url: http://{}\n  resend: 1h\n  filter: {{rules: [scheduler-profiling, apiserver-profiling]}}\n",
            am.addr
        ),
    );
    let node = Node::new(&pki.agent_config(col.addr, "cp-1"));
    let _agent = node.start();
    let fires = |rule: &str| {
        am.firing()
            .contains(&(rule.to_string(), "cp-1".to_string(), "low".to_string()))
    };
    // kubeadm's defaults leave profiling on in both.
    wait_until_within(
        "both profiling findings fire",
        WAIT,
        || fires("scheduler-profiling") && fires("apiserver-profiling"),
        || format!("{:?}\n{}", am.firing(), col.log()),
    );
    // Resolved on the node: its alert clears, the other stays.
    edit(&node, 0);
    wait_until_within(
        "the resolved finding's alert clears",
        WAIT,
        || !fires("scheduler-profiling") && fires("apiserver-profiling"),
        || format!("{:?}\n{}", am.firing(), col.log()),
    );
    // Accepted as a risk: its alert clears too, though the finding stays open.
    let out = pki
        .admin_command(
            col.addr,
            &[
                "exceptions",
                "add",
                "--rule",
                "apiserver-profiling",
                "--node",
                "cp-1",
                "--reason",
                "profiling kept for a tracing study",
                "--expires",
                "7d",
            ],
        )
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    wait_until_within(
        "the excepted finding's alert clears",
        WAIT,
        || am.firing().is_empty(),
        || format!("{:?}\n{}", am.firing(), col.log()),
    );
    // Raised again: it fires again.
    edit(&node, 1);
    wait_until_within(
        "the raised finding fires again",
        WAIT,
        || fires("scheduler-profiling"),
        || format!("{:?}\n{}", am.firing(), col.log()),
    );
}

/// One message as a syslog parser read it: (hostname, msgid, severity, the SD `id`).
type Parsed = (String, String, String, String);

/// A syslog receiver over TCP with octet-counting framing; each message parsed exactly as
/// RFC 5424 by syslog_loose (Vector's parser).
fn receive_syslog(listener: TcpListener, got: Arc<Mutex<Vec<Parsed>>>) {
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let got = Arc::clone(&got);
            std::thread::spawn(move || {
                let mut reader = BufReader::new(conn);
                loop {
                    let mut len = Vec::new();
                    if reader.read_until(b' ', &mut len).unwrap_or(0) == 0 {
                        return;
                    }
                    let n: usize = std::str::from_utf8(&len).unwrap().trim().parse().unwrap();
                    let mut msg = vec![0; n];
                    reader.read_exact(&mut msg).unwrap();
                    let text = String::from_utf8(msg).unwrap();
                    let m = syslog_loose::parse_message_with_year_exact(
                        &text,
                        |_| 2026,
                        syslog_loose::Variant::RFC5424,
                    )
                    .unwrap_or_else(|e| panic!("{e}: {text}"));
                    assert!(
                        matches!(m.protocol, syslog_loose::Protocol::RFC5424(1)),
                        "{text}"
                    );
                    assert_eq!(m.appname, Some("kube-lockdown"));
                    let sd = m
                        .structured_data
                        .iter()
                        .find(|e| e.id == "lockdown@32473")
                        .unwrap_or_else(|| panic!("no structured data: {text}"));
                    let id = sd.params.iter().find(|(k, _)| *k == "id").unwrap().1;
                    got.lock().unwrap().push((
                        m.hostname.unwrap_or_default().to_string(),
                        m.msgid.unwrap_or_default().to_string(),
                        format!("{:?}", m.severity),
                        id.to_string(),
                    ));
                }
            });
        }
    });
}

#[test]
fn syslog_gets_every_event_as_rfc5424_a_parser_reads() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let got = Arc::new(Mutex::new(Vec::new()));
    receive_syslog(listener, Arc::clone(&got));
    let pki = Pki::new(&["cp-1"]);
    let col = Collector::new(
        &pki,
        &format!(
            "sinks:\n- {{name: siem, type: syslog, url: 'tcp://127.0.0.1:{port}', facility: audit}}\n"
        ),
    );
    let node = Node::new(&pki.agent_config(col.addr, "cp-1"));
    let agent = node.start();
    for round in 0..4 {
        edit(&node, round);
    }
    wait_until_within(
        "every stored event read by the parser",
        WAIT,
        || {
            let last = agent.status().spool.last_seq;
            let stored = col.keys().len();
            last > 4 && stored as u64 >= last && got.lock().unwrap().len() >= stored
        },
        || format!("{:?}\n{}", got.lock().unwrap(), col.log()),
    );
    let got = got.lock().unwrap().clone();
    let ids: Vec<(String, u64)> = got
        .iter()
        .map(|(_, _, _, id)| {
            let mut parts = id.split('/');
            let node = parts.next().unwrap().to_string();
            (node, parts.nth(1).unwrap().parse().unwrap())
        })
        .collect();
    assert_eq!(ids, col.keys(), "every stored event once, in order");
    assert!(got.iter().all(|(host, ..)| host == "cp-1"));
    assert!(got.iter().any(|(_, kind, ..)| kind == "finding_raised"));
    assert!(got.iter().any(|(_, kind, ..)| kind == "agent_started"));
    // A finding of low severity is a notice; an agent's start is info.
    assert!(
        got.iter()
            .any(|(_, kind, sev, _)| kind == "finding_raised" && sev.contains("NOTICE"))
    );
}

/// A webhook over HTTPS with a client certificate: the receiver verifies the collector's
/// certificate against its CA, the collector the receiver's.
#[test]
fn a_webhook_over_mutual_tls_gets_its_events() {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let pki = Pki::new(&["cp-1"]);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(pki.path("ca.crt")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .unwrap();
    let chain: Vec<_> = CertificateDer::pem_file_iter(pki.path("collector.crt"))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_file(pki.path("collector.key")).unwrap();
    let config = Arc::new(
        rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .unwrap(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let got = Arc::new(Mutex::new(Vec::new()));
    let clients = Arc::new(Mutex::new(Vec::new()));
    {
        let (got, clients) = (Arc::clone(&got), Arc::clone(&clients));
        std::thread::spawn(move || {
            for tcp in listener.incoming() {
                let Ok(tcp) = tcp else { continue };
                let conn = rustls::ServerConnection::new(Arc::clone(&config)).unwrap();
                let mut tls = rustls::StreamOwned::new(conn, tcp);
                if tls.conn.complete_io(&mut tls.sock).is_err() {
                    continue; // a refused handshake
                }
                let peer = tls.conn.peer_certificates().map(<[_]>::len).unwrap_or(0);
                clients.lock().unwrap().push(peer);
                take(tls, &got);
            }
        });
    }
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("hook-secret");
    std::fs::write(&secret, SECRET).unwrap();
    let col = Collector::new(
        &pki,
        &format!(
            "sinks:\n- {{name: hook, type: webhook, url: 'https://localhost:{port}/hook', ca: {}, cert: {}, key: {}, secret_file: {}}}\n",
            pki.path("ca.crt").display(),
            pki.path("cp-1.crt").display(),
            pki.path("cp-1.key").display(),
            secret.display()
        ),
    );
    let node = Node::new(&pki.agent_config(col.addr, "cp-1"));
    let _agent = node.start();
    edit(&node, 0);
    wait_until_within(
        "deliveries over mutual TLS",
        WAIT,
        || {
            let n: usize = got.lock().unwrap().iter().map(|d| d.events.len()).sum();
            n > 0 && n >= col.keys().len()
        },
        || col.log(),
    );
    assert!(
        clients.lock().unwrap().iter().all(|n| *n >= 1),
        "a client certificate each time"
    );
    assert!(got.lock().unwrap().iter().all(|d| d.signed));
}

/// Two collectors on one PostgreSQL, both configured with the same webhook: one runs it, so
/// the receiver gets each event once, whichever replica stored it.
#[test]
fn replicas_sharing_a_database_deliver_each_event_once() {
    let pg = lockdown_collector::testing::PgServer::start();
    let url = pg.database();
    let hook = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = hook.local_addr().unwrap().port();
    let got = Arc::new(Mutex::new(Vec::new()));
    receive(hook, Arc::clone(&got));
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("hook-secret");
    std::fs::write(&secret, SECRET).unwrap();
    let sinks = format!(
        "sinks:\n- {{name: hook, type: webhook, url: 'http://127.0.0.1:{port}/hook', secret_file: {}}}\n",
        secret.display()
    );
    let pki = Pki::new(&["cp-1", "cp-2"]);
    let a = Collector::on_postgres(&pki, &url, &sinks);
    let b = Collector::on_postgres(&pki, &url, &sinks);
    let nodes = [
        Node::named("cp-1", &pki.agent_config(a.addr, "cp-1")),
        Node::named("cp-2", &pki.agent_config(b.addr, "cp-2")),
    ];
    let agents: Vec<_> = nodes.iter().map(Node::start).collect();
    for round in 0..4 {
        for n in &nodes {
            edit(n, round);
        }
    }
    let delivered = || -> Vec<(String, u64)> {
        got.lock()
            .unwrap()
            .iter()
            .flat_map(|d| d.events.clone())
            .collect()
    };
    wait_until_within(
        "every stored event delivered",
        WAIT,
        || {
            let spooled: u64 = agents.iter().map(|x| x.status().spool.last_seq).sum();
            let stored = a.keys();
            stored.len() as u64 >= spooled && delivered().len() >= stored.len()
        },
        || format!("{}\n{}", a.log(), b.log()),
    );
    let mut seen = delivered();
    let n = seen.len();
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), n, "an event delivered twice");
    assert_eq!(seen, a.keys());
}

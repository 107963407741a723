//! Several collectors on one real PostgreSQL: agents that move to another replica when
//! theirs dies, a database that restarts under load, readers tailing through either replica.
//! Real agents, real collectors over mutual TLS, a real PostgreSQL of the test's own.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::net::SocketAddr;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use lockdown_collector::testing::PgServer;
use lockdown_e2e::collector::{Collector, Pki, postgres};
use lockdown_e2e::node::{Agent, Node};

/// Long enough for every agent to get everything acked through a failover on a busy
/// two-core machine; a wait ends as soon as it is satisfied.
const WAIT: Duration = Duration::from_secs(120);

fn names(n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("cp-{i}")).collect()
}

/// Waits until every agent has had everything it spooled acknowledged: at least what it had
/// spooled when called, and at least `at_least` events.
fn wait_all_acked(agents: &[Agent], at_least: u64, why: impl Fn() -> String) {
    let deadline = Instant::now() + WAIT;
    let floor: Vec<u64> = agents
        .iter()
        .map(|a| a.status().spool.last_seq.max(at_least))
        .collect();
    loop {
        let behind: Vec<String> = agents
            .iter()
            .zip(&floor)
            .map(|(a, floor)| (a.status(), *floor))
            .filter(|(s, floor)| s.spool.last_seq < *floor || s.spool.acked < s.spool.last_seq)
            .map(|(s, _)| s)
            .map(|s| format!("{} acked {}/{}", s.node, s.spool.acked, s.spool.last_seq))
            .collect();
        if behind.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not everything acked: {behind:?}\n{}",
            why()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The database holds exactly each agent's events, 1 to its last sequence number, of one
/// epoch, each once.
fn assert_stored_exactly(url: &str, agents: &[Agent]) {
    let mut stored: BTreeMap<String, Vec<(u64, u64)>> = BTreeMap::new();
    for (node, epoch, seq) in postgres(url).agent_keys().unwrap() {
        stored.entry(node).or_default().push((epoch, seq));
    }
    for a in agents {
        let s = a.status();
        let keys = stored.remove(&s.node).unwrap_or_default();
        let epochs: BTreeSet<u64> = keys.iter().map(|k| k.0).collect();
        assert_eq!(
            epochs.len(),
            1,
            "{}: one spool, one epoch: {epochs:?}",
            s.node
        );
        let seqs: Vec<u64> = keys.iter().map(|k| k.1).collect();
        assert_eq!(
            seqs,
            (1..=s.spool.last_seq).collect::<Vec<_>>(),
            "{}: every event once",
            s.node
        );
    }
    assert!(stored.is_empty(), "events of unknown nodes: {stored:?}");
}

/// The standard gRPC health of `addr` (the whole server), asked with the reader's
/// certificate: `Some(true)` serving, `Some(false)` not serving, `None` no answer.
fn serving(pki: &Pki, addr: SocketAddr) -> Option<bool> {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    let tls = lockdown_proto::ClientTls {
        ca: pki.path("ca.crt"),
        cert: pki.path("reader.crt"),
        key: pki.path("reader.key"),
        server_name: None,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let ep =
            lockdown_proto::endpoint(&format!("https://localhost:{}", addr.port()), Some(&tls))
                .ok()?;
        let channel = ep.connect().await.ok()?;
        let status = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .ok()?
            .into_inner()
            .status;
        Some(status == tonic_health::pb::health_check_response::ServingStatus::Serving as i32)
    })
}

fn wait_serving(pki: &Pki, col: &Collector, want: bool) {
    let deadline = Instant::now() + WAIT;
    while serving(pki, col.addr) != Some(want) {
        assert!(
            Instant::now() < deadline,
            "{} never reported serving={want}:\n{}",
            col.addr,
            col.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `lockdown-collector events --follow --format json` against `addr`, printing to a file.
struct Follower {
    child: Child,
    out: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Follower {
    fn start(pki: &Pki, addr: SocketAddr) -> Follower {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("events.json");
        let child = pki
            .reader_command(addr, pki, &["events", "--follow", "--format", "json"])
            .stdout(Stdio::from(fs::File::create(&out).unwrap()))
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Follower {
            child,
            out,
            _dir: dir,
        }
    }

    /// The agents' events printed so far, as (node, seq), in the order printed (the JSON
    /// is the event as the agent wrote it; every agent here keeps one spool, one epoch).
    fn seen(&self) -> Vec<(String, u64)> {
        const COLLECTORS_OWN: [&str; 5] = [
            "findings_reconciled",
            "acked_by_earlier_store",
            "exception_added",
            "exception_removed",
            "exception_expired",
        ];
        fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| !COLLECTORS_OWN.contains(&v["kind"].as_str().unwrap_or_default()))
            .map(|v| {
                (
                    v["node"].as_str().unwrap_or_default().to_string(),
                    v["seq"].as_u64().unwrap_or(0),
                )
            })
            .collect()
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every agent's event printed once by the follower, none twice.
fn assert_followed_once(f: &Follower, url: &str, name: &str) {
    let stored: BTreeSet<(String, u64)> = postgres(url)
        .agent_keys()
        .unwrap()
        .into_iter()
        .map(|(node, _, seq)| (node, seq))
        .collect();
    let deadline = Instant::now() + WAIT;
    loop {
        let seen = f.seen();
        let unique: BTreeSet<_> = seen.iter().cloned().collect();
        assert_eq!(unique.len(), seen.len(), "{name} printed an event twice");
        if unique == stored {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} saw {} of {} events; missing e.g. {:?}",
            unique.len(),
            stored.len(),
            stored.difference(&unique).next()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Turns the scheduler's profiling off on even rounds and back to its default on odd ones.
fn edit_all(nodes: &[Node], round: usize) {
    for node in nodes {
        node.scheduler_flag("--profiling", round.is_multiple_of(2).then_some("false"));
    }
}

#[test]
fn agents_move_to_the_other_replica_when_theirs_dies_and_each_event_is_stored_once() {
    let pg = PgServer::start();
    let url = pg.database();
    let names = names(20);
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let pki = Pki::new(&refs);
    let mut a = Collector::on_postgres(&pki, &url, "");
    let b = Collector::on_postgres(&pki, &url, "");
    let nodes: Vec<Node> = names
        .iter()
        .map(|n| Node::named(n, &pki.agent_config_to(&[a.addr, b.addr], n)))
        .collect();
    let agents: Vec<Agent> = nodes.iter().map(Node::start).collect();
    // Every agent is on `a` (the first address) before the burst starts.
    wait_all_acked(&agents, 1, || a.log());
    let follower = Follower::start(&pki, b.addr);
    for round in 0..6 {
        edit_all(&nodes, round);
    }
    a.kill9();
    for round in 6..12 {
        edit_all(&nodes, round);
    }
    wait_all_acked(&agents, 0, || b.log());
    assert_stored_exactly(&url, &agents);
    // Through the query API of the replica that lived, each once too.
    assert_followed_once(&follower, &url, "a follower on the surviving replica");
    // Nothing was acked by `a` after it died: every agent now streams to `b`.
    for x in &agents {
        let c = x.status().collector.expect("a collector is configured");
        assert!(c.connected, "{c:?}");
        assert!(c.address.contains(&format!(":{}", b.addr.port())), "{c:?}");
    }
}

#[test]
fn a_database_restart_under_load_loses_nothing_and_the_replicas_recover_on_their_own() {
    let mut pg = PgServer::start();
    let url = pg.database();
    let names = names(6);
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let pki = Pki::new(&refs);
    let a = Collector::on_postgres(&pki, &url, "");
    let b = Collector::on_postgres(&pki, &url, "");
    // Half the agents prefer each replica, so that both commit all along.
    let nodes: Vec<Node> = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let order = if i.is_multiple_of(2) {
                [a.addr, b.addr]
            } else {
                [b.addr, a.addr]
            };
            Node::named(n, &pki.agent_config_to(&order, n))
        })
        .collect();
    let agents: Vec<Agent> = nodes.iter().map(Node::start).collect();
    let followers = [Follower::start(&pki, a.addr), Follower::start(&pki, b.addr)];
    wait_serving(&pki, &a, true);
    for round in 0..4 {
        edit_all(&nodes, round);
    }
    pg.kill();
    // Neither replica can reach the store: both say so, and ack nothing.
    wait_serving(&pki, &a, false);
    wait_serving(&pki, &b, false);
    edit_all(&nodes, 4);
    // Every agent now holds events no replica can get acked.
    let deadline = Instant::now() + WAIT;
    while !agents.iter().all(|x| {
        let s = x.status().spool;
        s.last_seq > s.acked
    }) {
        assert!(
            Instant::now() < deadline,
            "no agent spooled while the database was down"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    pg.restart();
    wait_serving(&pki, &a, true);
    wait_serving(&pki, &b, true);
    for round in 5..9 {
        edit_all(&nodes, round);
    }
    wait_all_acked(&agents, 0, || format!("{}\n{}", a.log(), b.log()));
    assert_stored_exactly(&url, &agents);
    // Readers on both replicas, through the outage, see every event once.
    assert_followed_once(&followers[0], &url, "a follower on the first replica");
    assert_followed_once(&followers[1], &url, "a follower on the second replica");
    // The replicas were never restarted.
    let mut a = a;
    let mut b = b;
    for c in [&mut a, &mut b] {
        assert!(c.child.as_mut().unwrap().try_wait().unwrap().is_none());
    }
}

//! Fleet posture end to end: real agents streaming to a real collector over mutual TLS, the
//! collector's set of open findings per node compared with what each agent says
//! (`lockdown-agent status`), through kills and restarts of both, and the readers' answers
//! (`findings`, `summary`, `nodes`).

use std::collections::BTreeMap;
use std::fs;
use std::time::{Duration, Instant};

use lockdown_e2e::collector::{Collector, Pki};
use lockdown_e2e::node::{Agent, Node, WAIT};
use lockdown_e2e::wait_until;

/// A finding as both sides can name it: (path, rule id, severity, status).
type Key = (String, String, String, String);

/// The agent's open findings, counted (one rule can be open several times in a file).
fn agent_set(agent: &Agent) -> BTreeMap<Key, usize> {
    let mut out = BTreeMap::new();
    for f in agent.status().open_findings {
        let r = f.finding;
        let key = (
            f.path,
            r.rule_id,
            r.severity.as_str().to_string(),
            r.status.as_str().to_string(),
        );
        *out.entry(key).or_default() += 1;
    }
    out
}

/// What a reader gets from `lockdown-collector <args> --format json`.
fn read(pki: &Pki, col: &Collector, args: &[&str]) -> serde_json::Value {
    let out = pki
        .reader_command(col.addr, pki, args)
        .args(["--format", "json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    if args[0] == "nodes" {
        // One object a line.
        let nodes: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        return serde_json::Value::Array(nodes);
    }
    serde_json::from_str(text.trim()).unwrap()
}

/// The collector's open findings of `node`, counted.
fn collector_set(pki: &Pki, col: &Collector, node: &str) -> BTreeMap<Key, usize> {
    let mut out = BTreeMap::new();
    for f in read(pki, col, &["findings", "--node", node])
        .as_array()
        .unwrap()
    {
        assert_eq!(f["node"], node);
        assert_eq!(f["excepted"], false);
        let s = |k: &str| f[k].as_str().unwrap().to_string();
        *out.entry((s("path"), s("rule_id"), s("severity"), s("status")))
            .or_default() += 1;
    }
    out
}

/// Waits until the collector's set for `node` is the agent's.
fn wait_same(pki: &Pki, col: &Collector, node: &str, agent: &Agent) {
    let deadline = Instant::now() + WAIT;
    loop {
        let (want, got) = (agent_set(agent), collector_set(pki, col, node));
        if want == got {
            assert!(!want.is_empty(), "a kubeadm node has open findings");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{node}: the collector's open findings differ from the agent's\nagent: {want:#?}\ncollector: {got:#?}\ncollector log:\n{}\nagent log:\n{}",
            col.log(),
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn node_state(pki: &Pki, col: &Collector, node: &str) -> String {
    let nodes = read(pki, col, &["nodes"]);
    nodes
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["node"] == node)
        .map(|n| n["state"].as_str().unwrap().to_string())
        .unwrap_or_default()
}

fn wait_state(pki: &Pki, col: &Collector, node: &str, state: &str) {
    let deadline = Instant::now() + WAIT;
    while node_state(pki, col, node) != state {
        assert!(
            Instant::now() < deadline,
            "{node} never became {state}: {}",
            read(pki, col, &["nodes"])
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

const COLLECTOR: &str = "nodes: {stale_after: 4s, expected: [cp-1, cp-2, cp-3]}";

#[test]
fn the_collector_knows_what_is_open_on_every_node_now_and_sums_it_up() {
    let pki = Pki::new(&["cp-1", "cp-2"]);
    let col = Collector::new(&pki, COLLECTOR);
    let nodes: Vec<Node> = ["cp-1", "cp-2"]
        .iter()
        .map(|n| {
            Node::named(
                n,
                &format!("{}  cluster: prod\n", pki.agent_config(col.addr, n)),
            )
        })
        .collect();
    let agents: Vec<Agent> = nodes.iter().map(Node::start).collect();
    for (name, agent) in ["cp-1", "cp-2"].iter().zip(&agents) {
        wait_same(&pki, &col, name, agent);
    }
    // A finding resolved on one node goes from the collector's set; raised again, it comes
    // back.
    let profiling = |set: &BTreeMap<Key, usize>| set.keys().any(|k| k.1 == "scheduler-profiling");
    assert!(profiling(&agent_set(&agents[0])));
    nodes[0].scheduler_flag("--profiling", true.then_some("false"));
    wait_same(&pki, &col, "cp-1", &agents[0]);
    assert!(!profiling(&collector_set(&pki, &col, "cp-1")));
    assert!(profiling(&collector_set(&pki, &col, "cp-2")));

    // Filters: a CIS section, a severity floor, a cluster.
    let scheduler = read(&pki, &col, &["findings", "--cis", "1.4"]);
    let on: Vec<&str> = scheduler
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["node"].as_str().unwrap())
        .collect();
    assert_eq!(on, ["cp-2"], "{scheduler}");
    for f in read(&pki, &col, &["findings", "--min-severity", "high"])
        .as_array()
        .unwrap()
    {
        assert!(["high", "critical"].contains(&f["severity"].as_str().unwrap()));
    }
    assert_eq!(
        read(&pki, &col, &["findings", "--cluster", "dev"]),
        serde_json::json!([])
    );

    // The summary: two connected, cp-3 expected and never heard from; 1.4.1 passes on cp-1
    // and fails on cp-2, and the missing node is unknown, not passing.
    let summary = read(&pki, &col, &["summary"]);
    let fleet = &summary["fleet"];
    assert_eq!(fleet["nodes_by_state"]["connected"], 2, "{summary}");
    assert_eq!(fleet["nodes_by_state"]["missing"], 1, "{summary}");
    let check = |p: &serde_json::Value, cis: &str| {
        let c = p["cis"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["cis"] == cis)
            .unwrap_or_else(|| panic!("no {cis} in {p}"))
            .clone();
        (c["pass"].clone(), c["fail"].clone(), c["unknown"].clone())
    };
    assert_eq!(check(fleet, "1.4.1"), (1.into(), 1.into(), 1.into()));
    let prod = &summary["clusters"][0];
    assert_eq!(prod["cluster"], "prod");
    assert_eq!(check(prod, "1.4.1"), (1.into(), 1.into(), 0.into()));
    let open: u64 = fleet["open_by_severity"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    let by_agents: usize = agents
        .iter()
        .map(|a| agent_set(a).values().sum::<usize>())
        .sum();
    assert_eq!(open as usize, by_agents);

    // A node gone quiet is stale, and its checks are unknown, never passing.
    assert_eq!(node_state(&pki, &col, "cp-3"), "missing");
    let mut agents = agents;
    let quiet = agents.remove(0);
    quiet.stop();
    wait_state(&pki, &col, "cp-1", "stale");
    let summary = read(&pki, &col, &["summary"]);
    assert_eq!(
        check(&summary["fleet"], "1.4.1"),
        (0.into(), 1.into(), 2.into())
    );
    // It comes back: connected, and reconciled from its hello.
    nodes[0].scheduler_flag("--profiling", false.then_some("false"));
    let back = nodes[0].start();
    wait_state(&pki, &col, "cp-1", "connected");
    wait_same(&pki, &col, "cp-1", &back);
    assert!(profiling(&collector_set(&pki, &col, "cp-1")));
}

/// A small deterministic generator (xorshift), seeded from the clock and printed, so that a
/// failing sequence can be replayed with `POSTURE_SEED`.
struct Dice(u64);

impl Dice {
    fn new() -> Dice {
        let seed = std::env::var("POSTURE_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
                    | 1
            });
        eprintln!("POSTURE_SEED={seed}");
        Dice(seed)
    }

    fn roll(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[test]
fn kills_and_restarts_at_random_never_leave_the_collector_differing_from_an_agent() {
    let names = ["cp-1", "cp-2", "cp-3"];
    let pki = Pki::new(&names);
    let mut col = Collector::new(&pki, COLLECTOR);
    let nodes: Vec<Node> = names
        .iter()
        .map(|n| Node::named(n, &pki.agent_config(col.addr, n)))
        .collect();
    let mut agents: Vec<Option<Agent>> = nodes.iter().map(|n| Some(n.start())).collect();
    let mut dice = Dice::new();
    let mut off = [false; 3];
    for _ in 0..30 {
        let i = dice.roll(3) as usize;
        match dice.roll(5) {
            // A finding resolved or raised, on a running agent or one that is down (the
            // agent finds it at its next start).
            0 | 1 => {
                off[i] = !off[i];
                nodes[i].scheduler_flag("--profiling", off[i].then_some("false"));
            }
            2 => {
                if let Some(a) = agents[i].take() {
                    a.kill9();
                }
            }
            3 => {
                col.kill9();
                // Sometimes its database is gone with it (a new disk, a restore from
                // nothing): only the agents' hellos can tell it what is open.
                if dice.roll(3) == 0 {
                    for suffix in ["", "-wal", "-shm"] {
                        let _ = fs::remove_file(format!("{}{suffix}", col.db.display()));
                    }
                }
                // Sometimes it stays down while the agents change things.
                if dice.roll(2) == 0 {
                    let j = dice.roll(3) as usize;
                    off[j] = !off[j];
                    nodes[j].scheduler_flag("--profiling", off[j].then_some("false"));
                }
                col.restart();
            }
            _ => {}
        }
        // Let some of it reach the collector, or not, before the next blow.
        std::thread::sleep(Duration::from_millis(dice.roll(300)));
        if agents[i].is_none() && dice.roll(2) == 0 {
            agents[i] = Some(nodes[i].start());
        }
    }
    for (i, name) in names.iter().enumerate() {
        let agent = agents[i].take().unwrap_or_else(|| nodes[i].start());
        wait_same(&pki, &col, name, &agent);
        let profiling = collector_set(&pki, &col, name)
            .keys()
            .any(|k| k.1 == "scheduler-profiling");
        assert_eq!(profiling, !off[i], "{name}");
        agents[i] = Some(agent);
    }
}

/// Runs `lockdown-collector <args> --format json` as the admin; the JSON, or the error text.
fn admin(pki: &Pki, col: &Collector, args: &[&str]) -> Result<serde_json::Value, String> {
    let out = pki
        .admin_command(col.addr, args)
        .args(["--format", "json"])
        .output()
        .unwrap();
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(serde_json::from_slice(&out.stdout).unwrap())
}

/// The findings of `rule` on `node` as a reader lists them.
fn findings_of(pki: &Pki, col: &Collector, node: &str, rule: &str) -> Vec<serde_json::Value> {
    read(pki, col, &["findings", "--node", node, "--rule", rule])
        .as_array()
        .unwrap()
        .clone()
}

/// The collector's own events of `kind` (JSON bodies).
fn events_of(pki: &Pki, col: &Collector, kind: &str) -> Vec<serde_json::Value> {
    let out = pki
        .reader_command(
            col.addr,
            pki,
            &["events", "--kind", kind, "--format", "json"],
        )
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn exceptions_mark_findings_expire_while_running_and_across_a_restart() {
    let pki = Pki::new(&["cp-1"]);
    let mut col = Collector::new(&pki, COLLECTOR);
    let node = Node::new(&pki.agent_config(col.addr, "cp-1"));
    let agent = node.start();
    wait_same(&pki, &col, "cp-1", &agent);
    let rule = "scheduler-profiling";
    let path = node.manifest("kube-scheduler.yaml").display().to_string();
    assert_eq!(findings_of(&pki, &col, "cp-1", rule)[0]["severity"], "low");

    // A reader that is not an admin cannot accept a risk.
    let out = pki
        .reader_command(
            col.addr,
            &pki,
            &[
                "exceptions",
                "add",
                "--rule",
                rule,
                "--reason",
                "r",
                "--expires",
                "1d",
            ],
        )
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("admin"),
        "{out:?}"
    );
    // One that covers nothing open is refused, unless it says how severe it may be.
    let err = admin(
        &pki,
        &col,
        &[
            "exceptions",
            "add",
            "--rule",
            "no-such-rule",
            "--reason",
            "r",
            "--expires",
            "1d",
        ],
    )
    .unwrap_err();
    assert!(err.contains("--max-severity"), "{err}");

    // Exceptions that do not cover it: another file, a lower severity than it has.
    let other_file = admin(
        &pki,
        &col,
        &[
            "exceptions",
            "add",
            "--rule",
            rule,
            "--node",
            "cp-1",
            "--path",
            "/etc/other.yaml",
            "--max-severity",
            "critical",
            "--reason",
            "not this file",
            "--expires",
            "1d",
        ],
    )
    .unwrap();
    assert_eq!(other_file[0]["author"], "admin");
    admin(
        &pki,
        &col,
        &[
            "exceptions",
            "add",
            "--rule",
            rule,
            "--max-severity",
            "info",
            "--reason",
            "covers info only",
            "--expires",
            "1d",
        ],
    )
    .unwrap();
    assert_eq!(findings_of(&pki, &col, "cp-1", rule)[0]["excepted"], false);

    // One that covers it, for a few seconds: excepted, still listed.
    let short = admin(
        &pki,
        &col,
        &[
            "exceptions",
            "add",
            "--rule",
            rule,
            "--node",
            "cp-1",
            "--path",
            &path,
            "--reason",
            "profiling needed for a week",
            "--expires",
            "4s",
        ],
    )
    .unwrap();
    let id = short[0]["id"].as_u64().unwrap();
    assert_eq!(short[0]["max_severity"], "low");
    let f = &findings_of(&pki, &col, "cp-1", rule)[0];
    assert_eq!(
        (f["excepted"].clone(), f["exception_id"].clone()),
        (true.into(), id.into())
    );
    assert_eq!(
        read(&pki, &col, &["findings", "--excepted", "yes"])
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let summary = read(&pki, &col, &["summary"]);
    assert_eq!(summary["fleet"]["excepted"], 1, "{summary}");
    // Its expiry, while the collector runs, is an event, and the finding is no longer covered.
    wait_until("the exception's expiry is announced", || {
        events_of(&pki, &col, "exception_expired")
            .iter()
            .any(|e| e["id"] == id)
    });
    assert_eq!(findings_of(&pki, &col, "cp-1", rule)[0]["excepted"], false);

    // Another expires while the collector is down: announced once it is back, once.
    let across = admin(
        &pki,
        &col,
        &[
            "exceptions",
            "add",
            "--rule",
            rule,
            "--reason",
            "across a restart",
            "--expires",
            "2s",
        ],
    )
    .unwrap();
    let across_id = across[0]["id"].as_u64().unwrap();
    let expires = humantime::parse_rfc3339(across[0]["expires"].as_str().unwrap()).unwrap();
    col.kill9();
    while std::time::SystemTime::now() <= expires {
        std::thread::sleep(Duration::from_millis(100));
    }
    col.restart();
    let announced = |col: &Collector| {
        events_of(&pki, col, "exception_expired")
            .iter()
            .filter(|e| e["id"] == across_id)
            .count()
    };
    wait_until("an expiry while down is announced at start", || {
        announced(&col) == 1
    });
    col.stop();
    col.restart();
    assert_eq!(announced(&col), 1, "announced once, not at every start");

    // Removing one is an event too, with who did it.
    admin(
        &pki,
        &col,
        &["exceptions", "remove", &other_file[0]["id"].to_string()],
    )
    .unwrap();
    let removed = events_of(&pki, &col, "exception_removed");
    assert_eq!(removed.len(), 1);
    assert_eq!(removed[0]["by"], "admin");
    let added = events_of(&pki, &col, "exception_added");
    assert_eq!(added.len(), 4);
    let in_force = admin(&pki, &col, &["exceptions", "list"]).unwrap();
    assert_eq!(in_force.as_array().unwrap().len(), 1, "{in_force}");
    let all = admin(&pki, &col, &["exceptions", "list", "--all"]).unwrap();
    let states: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["expired", "expired", "active", "removed"]);
}

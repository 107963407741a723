//! The collector's Prometheus metrics end to end: what it serves passes `promtool check
//! metrics`, and a real Prometheus scraping it sees the gauges move when a node's findings
//! change.

use std::io::Write;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use lockdown_e2e::collector::{Collector, Pki, free_addr};
use lockdown_e2e::http::get;
use lockdown_e2e::node::Node;
use lockdown_e2e::wait_until_within;

const WAIT: Duration = Duration::from_secs(90);

/// `promtool check metrics` on `text`: passes, with nothing to say.
fn promtool_passes(text: &str) {
    let mut check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool: install the Debian package prometheus");
    check
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A real Prometheus (the Debian package's) scraping `target` every second.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(target: SocketAddr) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global: {{scrape_interval: 1s}}\nscrape_configs:\n- job_name: lockdown\n  static_configs: [{{targets: ['{target}']}}]\n"
            ),
        )
        .unwrap();
        let addr = free_addr();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("Prometheus: install the Debian package prometheus");
        let p = Prometheus {
            child,
            addr,
            _dir: dir,
        };
        wait_until_within(
            "Prometheus ready",
            WAIT,
            || get(p.addr, "/-/ready").is_some_and(|(s, _)| s == 200),
            String::new,
        );
        p
    }

    /// The value of an instant query's single sample, if it has one.
    fn value(&self, query: &str) -> Option<f64> {
        let q: String = query
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'-' | b'.' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        let (200, body) = get(self.addr, &format!("/api/v1/query?query={q}"))? else {
            return None;
        };
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        let result = v["data"]["result"].as_array()?;
        match result.as_slice() {
            [one] => one["value"][1].as_str()?.parse().ok(),
            _ => None,
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_metrics_pass_promtool_and_prometheus_sees_the_gauges_move() {
    let pki = Pki::new(&["cp-1"]);
    let metrics = free_addr();
    let dead = free_addr();
    let col = Collector::new(
        &pki,
        &format!(
            "metrics: {{listen: {metrics}, per_rule: true}}\nsinks:\n- {{name: hook, type: webhook, url: 'http://{dead}/x'}}\n"
        ),
    );
    let node = Node::new(&pki.agent_config(col.addr, "cp-1"));
    let _agent = node.start();
    wait_until_within(
        "the node's profiling finding in the metrics",
        WAIT,
        || {
            get(metrics, "/metrics").is_some_and(|(s, b)| {
                s == 200
                    && b.contains(
                        "lockdown_collector_rule_failing_nodes{rule=\"scheduler-profiling\"} 1",
                    )
            })
        },
        || col.log(),
    );
    let (_, text) = get(metrics, "/metrics").unwrap();
    for needle in [
        "lockdown_collector_nodes{state=\"connected\"} 1",
        "lockdown_collector_events_ingested_total{kind=\"finding_raised\"}",
        "lockdown_collector_commit_duration_seconds_bucket{le=\"+Inf\"}",
        "lockdown_collector_sink_backlog_events{sink=\"hook\"}",
        "lockdown_collector_streams_refused_total{reason=\"identity\"} 0",
    ] {
        assert!(text.contains(needle), "{needle} in\n{text}");
    }
    promtool_passes(&text);

    let prom = Prometheus::start(metrics);
    let failing = "lockdown_collector_rule_failing_nodes{rule=\"scheduler-profiling\"}";
    wait_until_within(
        "Prometheus sees the failing node",
        WAIT,
        || prom.value(failing) == Some(1.0),
        || format!("{:?}", prom.value(failing)),
    );
    let open_before = prom.value("sum(lockdown_collector_open_findings)").unwrap();
    // The finding is resolved on the node: the gauge goes, and the open findings drop.
    let path = node.manifest("kube-scheduler.yaml");
    let text = std::fs::read_to_string(&path).unwrap().replace(
        "    - kube-scheduler\n",
        "    - kube-scheduler\n    - --profiling=false\n",
    );
    std::fs::write(&path, text).unwrap();
    wait_until_within(
        "Prometheus sees the finding resolved",
        WAIT,
        || {
            prom.value(failing).is_none()
                && prom
                    .value("sum(lockdown_collector_open_findings)")
                    .is_some_and(|v| v == open_before - 1.0)
        },
        || {
            format!(
                "{:?} {:?}",
                prom.value(failing),
                prom.value("sum(lockdown_collector_open_findings)")
            )
        },
    );
    // The sink's receiver is down: its failures count.
    wait_until_within(
        "the dead sink's failures counted",
        WAIT,
        || {
            prom.value("lockdown_collector_sink_delivery_failures_total{sink=\"hook\"}")
                .is_some_and(|v| v >= 1.0)
        },
        || col.log(),
    );
}

#[test]
fn the_agent_serves_its_metrics_on_loopback_and_they_pass_promtool() {
    let pki = Pki::new(&["cp-1"]);
    let col = Collector::new(&pki, "");
    let port = free_addr().port();
    let node = Node::new(&format!(
        "{}metrics: {{port: {port}}}\n",
        pki.agent_config(col.addr, "cp-1")
    ));
    let agent = node.start();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    wait_until_within(
        "the agent's metrics, connected to the collector",
        WAIT,
        || {
            get(addr, "/metrics").is_some_and(|(s, b)| {
                s == 200 && b.contains("lockdown_agent_collector_connected 1")
            })
        },
        || agent.log(),
    );
    let (_, text) = get(addr, "/metrics").unwrap();
    let own_cert = pki.path("cp-1.crt").display().to_string();
    for needle in [
        "lockdown_agent_spool_events ".to_string(),
        "lockdown_agent_events_total{kind=\"agent_started\"} 1".to_string(),
        "lockdown_agent_scan_duration_seconds_count ".to_string(),
        "lockdown_agent_fixes_total{outcome=\"rolled_back\"} 0".to_string(),
        "lockdown_agent_open_findings{severity=\"low\"}".to_string(),
        format!("lockdown_agent_certificate_expiry_seconds{{path=\"{own_cert}\"}} "),
    ] {
        assert!(text.contains(&needle), "{needle} in\n{text}");
    }
    // The development certificate is valid for a year or so: days of seconds left.
    let left: i64 = text
        .lines()
        .find(|l| l.contains(&own_cert))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap();
    assert!(left > 86_400, "{left}");
    promtool_passes(&text);
    assert_eq!(get(addr, "/").map(|(s, _)| s), Some(404));
}

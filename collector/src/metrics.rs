//! The collector's Prometheus metrics, served on a listener of their own (`metrics.listen`,
//! off by default) in the text exposition format.
//!
//! Counters and the commit histogram are kept in memory as things happen; the fleet's gauges
//! (nodes by state, open findings, sinks' backlogs) are read from the store at each scrape,
//! so every replica on one database reports the same fleet. Label values are bounded: event
//! kinds outside the known set count as `other`, refusal reasons are a fixed set, clusters
//! and rules come from the fleet (per-rule gauges are opt-in).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

/// Event kinds counted by name; any other counts as `other`.
pub const KINDS: [&str; 26] = [
    "agent_started",
    "agent_stopping",
    "config_reloaded",
    "config_rejected",
    "rescan",
    "file_created",
    "file_modified",
    "file_deleted",
    "permission_drift",
    "file_invalid",
    "finding_raised",
    "finding_resolved",
    "fix_planned",
    "fix_applied",
    "fix_verified",
    "fix_rolled_back",
    "fix_skipped",
    "fix_quarantined",
    "spool_overflow",
    "event_withheld",
    "acked_by_earlier_store",
    "findings_reconciled",
    "exception_added",
    "exception_removed",
    "exception_expired",
    "other",
];

/// Why a stream was refused.
pub const REFUSALS: [&str; 6] = [
    "stopping",
    "too_many_streams",
    "no_hello",
    "malformed",
    "identity",
    "other",
];

/// Commit latency buckets, in seconds.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// What the collector counts as it runs.
#[derive(Debug, Default)]
pub struct Metrics {
    events: [AtomicU64; KINDS.len()],
    acks: AtomicU64,
    refused: [AtomicU64; REFUSALS.len()],
    commit_buckets: [AtomicU64; BUCKETS.len()],
    commit_count: AtomicU64,
    commit_sum_ns: AtomicU64,
    /// Failed deliveries by sink.
    sink_failures: Mutex<BTreeMap<String, u64>>,
}

impl Metrics {
    /// `n` events of `kind` stored and acknowledged.
    pub fn ingested(&self, kind: &str, n: u64) {
        let i = KINDS
            .iter()
            .position(|k| *k == kind)
            .unwrap_or(KINDS.len() - 1);
        self.events[i].fetch_add(n, Ordering::Relaxed);
    }

    /// An ack sent to an agent.
    pub fn acked(&self) {
        self.acks.fetch_add(1, Ordering::Relaxed);
    }

    /// A stream refused, for `reason` (one of [`REFUSALS`]; anything else is `other`).
    pub fn refused(&self, reason: &str) {
        let i = REFUSALS
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(REFUSALS.len() - 1);
        self.refused[i].fetch_add(1, Ordering::Relaxed);
    }

    /// A commit of the writer that took `d`.
    pub fn committed(&self, d: Duration) {
        let s = d.as_secs_f64();
        for (b, le) in self.commit_buckets.iter().zip(BUCKETS) {
            if s <= le {
                b.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.commit_count.fetch_add(1, Ordering::Relaxed);
        self.commit_sum_ns
            .fetch_add(d.as_nanos().min(u64::MAX as u128) as u64, Ordering::Relaxed);
    }

    /// A delivery of sink `name` failed.
    pub fn delivery_failed(&self, name: &str) {
        *self
            .sink_failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(name.to_string())
            .or_default() += 1;
    }

    /// The exposition of these and of the fleet's `gauges`.
    pub fn render(&self, g: &Gauges) -> String {
        let mut out = String::with_capacity(8192);
        let family = |out: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            name.to_string()
        };
        let n = family(
            &mut out,
            "lockdown_collector_events_ingested_total",
            "counter",
            "Events stored and acknowledged, by kind.",
        );
        for (k, c) in KINDS.iter().zip(&self.events) {
            line(
                &mut out,
                format!("{n}{{kind=\"{k}\"}} {}", c.load(Ordering::Relaxed)),
            );
        }
        let n = family(
            &mut out,
            "lockdown_collector_acks_total",
            "counter",
            "Acks sent to agents.",
        );
        let _ = writeln!(out, "{n} {}", self.acks.load(Ordering::Relaxed));
        let n = family(
            &mut out,
            "lockdown_collector_streams_refused_total",
            "counter",
            "Agent streams refused, by reason.",
        );
        for (r, c) in REFUSALS.iter().zip(&self.refused) {
            line(
                &mut out,
                format!("{n}{{reason=\"{r}\"}} {}", c.load(Ordering::Relaxed)),
            );
        }
        let n = family(
            &mut out,
            "lockdown_collector_commit_duration_seconds",
            "histogram",
            "Time the store writer took to commit a group of batches durably.",
        );
        for (b, le) in self.commit_buckets.iter().zip(BUCKETS) {
            line(
                &mut out,
                format!("{n}_bucket{{le=\"{le}\"}} {}", b.load(Ordering::Relaxed)),
            );
        }
        let count = self.commit_count.load(Ordering::Relaxed);
        line(&mut out, format!("{n}_bucket{{le=\"+Inf\"}} {count}"));
        line(
            &mut out,
            format!(
                "{n}_sum {}",
                self.commit_sum_ns.load(Ordering::Relaxed) as f64 / 1e9
            ),
        );
        line(&mut out, format!("{n}_count {count}"));

        let n = family(
            &mut out,
            "lockdown_collector_nodes",
            "gauge",
            "Nodes by state: connected (heard from within nodes.stale_after), stale, missing (expected, never heard from).",
        );
        for (state, c) in &g.nodes {
            line(&mut out, format!("{n}{{state=\"{state}\"}} {c}"));
        }
        let n = family(
            &mut out,
            "lockdown_collector_open_findings",
            "gauge",
            "Open findings by cluster, severity, and whether an active exception covers them.",
        );
        for ((cluster, severity, excepted), c) in &g.open {
            line(
                &mut out,
                format!(
                    "{n}{{cluster=\"{}\",severity=\"{}\",excepted=\"{excepted}\"}} {c}",
                    escape(cluster),
                    escape(severity)
                ),
            );
        }
        if let Some(rules) = &g.rules {
            let n = family(
                &mut out,
                "lockdown_collector_rule_failing_nodes",
                "gauge",
                "Nodes with an open finding of a rule that no exception covers.",
            );
            for (rule, c) in rules {
                line(&mut out, format!("{n}{{rule=\"{}\"}} {c}", escape(rule)));
            }
        }
        let n = family(
            &mut out,
            "lockdown_collector_sink_backlog_events",
            "gauge",
            "Events committed after a sink's delivery cursor.",
        );
        for s in &g.sinks {
            line(
                &mut out,
                format!("{n}{{sink=\"{}\"}} {}", s.name, s.backlog),
            );
        }
        let n = family(
            &mut out,
            "lockdown_collector_sink_oldest_undelivered_seconds",
            "gauge",
            "Age of the oldest event a sink has not delivered (0 when it is caught up).",
        );
        for s in &g.sinks {
            line(
                &mut out,
                format!("{n}{{sink=\"{}\"}} {:.3}", s.name, s.oldest_age),
            );
        }
        let n = family(
            &mut out,
            "lockdown_collector_sink_delivery_failures_total",
            "counter",
            "Failed deliveries of each sink (each is tried again).",
        );
        let failures = self
            .sink_failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for s in &g.sinks {
            let c = failures.get(&s.name).copied().unwrap_or(0);
            line(&mut out, format!("{n}{{sink=\"{}\"}} {c}", s.name));
        }
        out
    }
}

fn line(out: &mut String, l: String) {
    out.push_str(&l);
    out.push('\n');
}

/// A label value as the exposition format wants it.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The fleet as read from the store at a scrape.
#[derive(Debug, Default)]
pub struct Gauges {
    /// Nodes by state.
    pub nodes: Vec<(&'static str, u64)>,
    /// Open findings by (cluster, severity, excepted).
    pub open: BTreeMap<(String, String, bool), u64>,
    /// Failing nodes by rule, when asked for.
    pub rules: Option<BTreeMap<String, u64>>,
    /// Each sink's backlog.
    pub sinks: Vec<SinkGauge>,
}

/// One sink's backlog.
#[derive(Debug)]
pub struct SinkGauge {
    /// Its name.
    pub name: String,
    /// Events committed after its cursor.
    pub backlog: u64,
    /// Seconds since the oldest of them.
    pub oldest_age: f64,
}

/// What the fleet's gauges cover.
#[derive(Debug, Clone)]
pub struct Scope {
    /// Nodes that should report (missing when never heard from).
    pub expected: Vec<String>,
    /// When a node counts as stale.
    pub stale_after: Duration,
    /// Whether to count failing nodes per rule.
    pub per_rule: bool,
    /// The configured sinks' names.
    pub sinks: Vec<String>,
}

/// Reads the fleet's gauges from `store`.
pub fn gauges(
    store: &dyn crate::store::EventStore,
    scope: &Scope,
) -> Result<Gauges, crate::store::StoreError> {
    use crate::posture::{NodeState, members};
    let now = SystemTime::now();
    let at = humantime::format_rfc3339_millis(now).to_string();
    let nodes = store.nodes()?;
    let counts = store.finding_counts(&at)?;
    let members = members(nodes, &scope.expected, now, scope.stale_after);
    let mut g = Gauges::default();
    for state in [NodeState::Connected, NodeState::Stale, NodeState::Missing] {
        let n = members.iter().filter(|m| m.state == state).count() as u64;
        g.nodes.push((state.as_str(), n));
    }
    let cluster: std::collections::HashMap<&str, &str> = members
        .iter()
        .map(|m| (m.node.as_str(), m.cluster.as_str()))
        .collect();
    for c in &counts {
        let key = (
            cluster.get(&*c.node).copied().unwrap_or("").to_string(),
            c.severity.to_string(),
            c.excepted,
        );
        *g.open.entry(key).or_default() += u64::from(c.count);
    }
    if scope.per_rule {
        let mut by_rule: BTreeMap<String, std::collections::BTreeSet<String>> = BTreeMap::new();
        let q = crate::store::FindingQuery {
            excepted: Some(false),
            now: at.clone(),
            ..Default::default()
        };
        for f in crate::store::all_findings(store, &q)? {
            by_rule.entry(f.finding.rule_id).or_default().insert(f.node);
        }
        g.rules = Some(
            by_rule
                .into_iter()
                .map(|(r, nodes)| (r, nodes.len() as u64))
                .collect(),
        );
    }
    let max = store.max_cursor()?;
    for name in &scope.sinks {
        let cursor = store.sink_cursor(name)?;
        let oldest = store.list(&crate::store::Filter::default(), cursor, 1)?;
        let oldest_age = oldest
            .first()
            .and_then(|e| humantime::parse_rfc3339(&e.event.time).ok())
            .map_or(0.0, |t| {
                now.duration_since(t).unwrap_or_default().as_secs_f64()
            });
        g.sinks.push(SinkGauge {
            name: name.clone(),
            backlog: max.saturating_sub(cursor),
            oldest_age,
        });
    }
    Ok(g)
}

/// Serves `GET /metrics` on `listen` until the process ends; `gauges` reads the fleet's
/// (or says why it cannot).
pub async fn serve<F, G>(
    listen: std::net::SocketAddr,
    metrics: std::sync::Arc<Metrics>,
    gauges: G,
) -> std::io::Result<()>
where
    G: Fn() -> F + Clone + Send + Sync + 'static,
    F: std::future::Future<Output = Result<Gauges, String>> + Send,
{
    use hyper::service::service_fn;
    let listener = tokio::net::TcpListener::bind(listen).await?;
    tracing::info!(%listen, "metrics serving");
    loop {
        let (conn, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "metrics: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (metrics, gauges) = (std::sync::Arc::clone(&metrics), gauges.clone());
        tokio::spawn(async move {
            let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let (metrics, gauges) = (std::sync::Arc::clone(&metrics), gauges.clone());
                async move {
                    let (status, body) = if req.uri().path() != "/metrics" {
                        (404, "not found: the metrics are at /metrics\n".to_string())
                    } else {
                        match gauges().await {
                            Ok(g) => (200, metrics.render(&g)),
                            Err(e) => (503, format!("the store cannot be read: {e}\n")),
                        }
                    };
                    hyper::Response::builder()
                        .status(status)
                        .header(
                            hyper::header::CONTENT_TYPE,
                            "text/plain; version=0.0.4; charset=utf-8",
                        )
                        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(conn), service)
                .await;
        });
    }
}

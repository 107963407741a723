//! The agent's Prometheus metrics, on loopback only (`metrics.port`, off by default): what
//! `lockdown-agent status` says, as numbers, and how long scans and spool commits take.
//!
//! The daemon's loop owns every value, so a scrape is answered there, like a status request:
//! no lock, no second copy of the state. The answer is one HTTP/1.0 response; the request is
//! read with a bound and a deadline, so a client that sends nothing holds nothing.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::status::Status;

/// Latency buckets, in seconds.
const BUCKETS: [f64; 11] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5,
];

/// A latency histogram.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    /// One observation.
    pub fn observe(&mut self, d: Duration) {
        let s = d.as_secs_f64();
        for (b, le) in self.buckets.iter_mut().zip(BUCKETS) {
            if s <= le {
                *b += 1;
            }
        }
        self.count += 1;
        self.sum += s;
    }

    fn render(&self, out: &mut String, name: &str) {
        for (b, le) in self.buckets.iter().zip(BUCKETS) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {b}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum {}", self.sum);
        let _ = writeln!(out, "{name}_count {}", self.count);
    }
}

/// What the daemon counts as it runs.
#[derive(Debug, Default)]
pub struct Counters {
    /// Events spooled, by kind (the agent's own kinds: a bounded set).
    pub events: BTreeMap<&'static str, u64>,
    /// From a change to the events it makes (detection, not the commit).
    pub scan: Histogram,
    /// A spool commit (fsync included).
    pub commit: Histogram,
}

/// A certificate's remaining validity: the file, and seconds until it expires (negative
/// once it has).
pub type Expiry = (String, i64);

/// The exposition of `status`, `counters` and the certificates' expiry.
pub fn render(status: &Status, counters: &Counters, certs: &[Expiry]) -> String {
    let mut out = String::with_capacity(4096);
    let family = |out: &mut String, name: &str, kind: &str, help: &str| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    };
    family(
        &mut out,
        "lockdown_agent_spool_events",
        "gauge",
        "Events spooled and not yet acknowledged by the collector.",
    );
    let _ = writeln!(out, "lockdown_agent_spool_events {}", status.spool.events);
    family(
        &mut out,
        "lockdown_agent_spool_bytes",
        "gauge",
        "Bytes of the events spooled and not yet acknowledged.",
    );
    let _ = writeln!(out, "lockdown_agent_spool_bytes {}", status.spool.bytes);
    family(
        &mut out,
        "lockdown_agent_spool_max_bytes",
        "gauge",
        "The spool's bound; at it, the oldest events are dropped (and said so).",
    );
    let _ = writeln!(
        out,
        "lockdown_agent_spool_max_bytes {}",
        status.spool.max_bytes
    );
    family(
        &mut out,
        "lockdown_agent_spool_dropped_events_total",
        "counter",
        "Events the spool ever dropped because it was full.",
    );
    let _ = writeln!(
        out,
        "lockdown_agent_spool_dropped_events_total {}",
        status.spool.dropped_total
    );
    family(
        &mut out,
        "lockdown_agent_events_total",
        "counter",
        "Events spooled since start, by kind.",
    );
    for (kind, n) in &counters.events {
        let _ = writeln!(out, "lockdown_agent_events_total{{kind=\"{kind}\"}} {n}");
    }
    family(
        &mut out,
        "lockdown_agent_scan_duration_seconds",
        "histogram",
        "Time from a change to the events it makes.",
    );
    counters
        .scan
        .render(&mut out, "lockdown_agent_scan_duration_seconds");
    family(
        &mut out,
        "lockdown_agent_spool_commit_duration_seconds",
        "histogram",
        "Time of a spool commit, fsync included.",
    );
    counters
        .commit
        .render(&mut out, "lockdown_agent_spool_commit_duration_seconds");
    family(
        &mut out,
        "lockdown_agent_watched_directories",
        "gauge",
        "Directories under inotify watch.",
    );
    let _ = writeln!(
        out,
        "lockdown_agent_watched_directories {}",
        status.watched_dirs.len()
    );
    family(
        &mut out,
        "lockdown_agent_rescans_total",
        "counter",
        "Full rescans since start (periodic, overflow, retries, reloads).",
    );
    let _ = writeln!(out, "lockdown_agent_rescans_total {}", status.rescans);
    family(
        &mut out,
        "lockdown_agent_open_findings",
        "gauge",
        "Findings open on this node, by severity.",
    );
    let mut by_severity: BTreeMap<&str, u64> = BTreeMap::new();
    for f in &status.open_findings {
        *by_severity.entry(f.finding.severity.as_str()).or_default() += 1;
    }
    for (s, n) in by_severity {
        let _ = writeln!(out, "lockdown_agent_open_findings{{severity=\"{s}\"}} {n}");
    }
    family(
        &mut out,
        "lockdown_agent_fixes_total",
        "counter",
        "Fix outcomes since start (applied, verified, rolled_back, skipped, quarantined).",
    );
    for outcome in [
        "applied",
        "verified",
        "rolled_back",
        "skipped",
        "quarantined",
    ] {
        let kind = format!("fix_{outcome}");
        let n = counters
            .events
            .iter()
            .find(|(k, _)| **k == kind)
            .map_or(0, |(_, n)| *n);
        let _ = writeln!(
            out,
            "lockdown_agent_fixes_total{{outcome=\"{outcome}\"}} {n}"
        );
    }
    if let Some(c) = &status.collector {
        family(
            &mut out,
            "lockdown_agent_collector_connected",
            "gauge",
            "1 while a stream to the collector is open.",
        );
        let _ = writeln!(
            out,
            "lockdown_agent_collector_connected {}",
            u8::from(c.connected)
        );
        family(
            &mut out,
            "lockdown_agent_collector_acked_seq",
            "gauge",
            "The highest sequence number the collector acknowledged.",
        );
        let _ = writeln!(out, "lockdown_agent_collector_acked_seq {}", c.acked);
    }
    family(
        &mut out,
        "lockdown_agent_certificate_expiry_seconds",
        "gauge",
        "Seconds until the first certificate of each tracked certificate file expires (negative once it has).",
    );
    for (path, left) in certs {
        let _ = writeln!(
            out,
            "lockdown_agent_certificate_expiry_seconds{{path=\"{}\"}} {left}",
            path.replace('\\', "\\\\").replace('"', "\\\"")
        );
    }
    out
}

/// The expiry of the first certificate in each of `paths` that holds one, at `now` (Unix
/// seconds).
pub fn expiries<'a>(paths: impl IntoIterator<Item = &'a str>, now: i64) -> Vec<Expiry> {
    paths
        .into_iter()
        .filter_map(|p| {
            let bytes =
                crate::io::read_bounded(std::path::Path::new(p), crate::io::MAX_AUX_BYTES).ok()?;
            if !crate::tls::has_pem_certificate(&bytes) {
                return None;
            }
            let cert = crate::tls::certs_from_pem(&bytes)
                .ok()?
                .into_iter()
                .next()?;
            Some((p.to_string(), cert.not_after - now))
        })
        .collect()
}

/// Answers one connection: `GET /metrics` gets `body`, anything else 404.
pub async fn answer(mut conn: tokio::net::TcpStream, body: String) {
    let mut head = Vec::with_capacity(512);
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        let mut buf = [0u8; 512];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    if read.is_err() {
        return;
    }
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let ok = line.starts_with(b"GET /metrics ") || line.starts_with(b"GET /metrics?");
    let (status, body) = if ok {
        ("200 OK", body)
    } else {
        ("404 Not Found", "the metrics are at /metrics\n".to_string())
    };
    let response = format!(
        "HTTP/1.0 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = conn.write_all(response.as_bytes()).await;
    let _ = conn.shutdown().await;
}

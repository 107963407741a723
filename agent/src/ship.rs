//! The shipper: sends spooled events to the collector and hands acks back to the daemon,
//! which trims the spool.
//!
//! It reads the spool through its own read-only connection, so it only ever sees committed
//! (fsynced) events, and it never deletes anything itself: only the daemon trims, and only up
//! to an ack. After any break it reconnects with capped exponential backoff and jitter and
//! resends from the first unacknowledged event; the collector stores each (node, seq) once.
//! While the collector is away the daemon goes on detecting and spooling.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lockdown_proto::ClientTls;
use lockdown_proto::v1::agent_service_client::AgentServiceClient;
use lockdown_proto::v1::{
    AgentMessage, EventBatch, Heartbeat, Hello, agent_message, collector_message,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

use crate::event::{Event, EventBody, FindingRecord};
use crate::spool::SpoolReader;

/// Events per batch message.
const BATCH: usize = 500;
/// Most events sent and not yet acknowledged.
const WINDOW: u64 = 5_000;

/// Where and how to ship.
#[derive(Debug, Clone, PartialEq)]
pub struct ShipConfig {
    /// `https://host:port` of each collector replica (or `http://` for a loopback
    /// development collector), tried in turn.
    pub addresses: Vec<String>,
    /// Mutual TLS files; `None` only for `http://` loopback.
    pub tls: Option<ClientTls>,
    /// Cluster label sent in the hello.
    pub cluster: String,
    /// First reconnect delay.
    pub backoff_initial: Duration,
    /// Longest reconnect delay.
    pub backoff_max: Duration,
    /// Heartbeat interval.
    pub heartbeat: Duration,
    /// How long unacknowledged events may wait for any answer before the stream is reopened.
    pub ack_timeout: Duration,
    /// Most encoded bytes of events in one batch message.
    pub max_batch_bytes: usize,
}

/// Why a session with the collector ended, and whether trying again as before can help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShipError {
    /// The collector cannot be reached, went away or is stopping: retrying helps.
    #[error("{0} (retrying)")]
    Unreachable(String),
    /// The local spool could not be read: retrying may help.
    #[error("spool: {0} (retrying)")]
    Spool(String),
    /// The collector refused the agent itself (certificate, node name): retrying helps only
    /// once that is fixed.
    #[error(
        "the collector refused this agent: {code}: {message} (fix the certificate or node_name; retrying meanwhile)"
    )]
    Identity {
        /// gRPC status code.
        code: String,
        /// The collector's message.
        message: String,
    },
    /// The collector refused a batch as malformed or too large: resending it as is cannot
    /// help, so the next try sends its events one by one, and an event refused alone is
    /// replaced by a placeholder with its sequence number.
    #[error(
        "the collector refused the batch of seq {first}..={last} ({events} events): {code}: {message} (not resent as is)"
    )]
    Refused {
        /// First sequence number of the batch.
        first: u64,
        /// Last sequence number of the batch.
        last: u64,
        /// How many events it held.
        events: usize,
        /// gRPC status code.
        code: String,
        /// The collector's message.
        message: String,
    },
}

impl ShipError {
    /// Whether sending the same thing again can succeed.
    pub fn retry_helps(&self) -> bool {
        matches!(self, ShipError::Unreachable(_) | ShipError::Spool(_))
    }

    /// Classifies a status from the collector; `oldest` is the oldest batch in flight.
    fn from_status(s: &tonic::Status, oldest: Option<(u64, u64, usize)>) -> ShipError {
        use tonic::Code;
        let (code, message) = (code(s), s.message().to_string());
        match (s.code(), oldest) {
            (Code::PermissionDenied | Code::Unauthenticated, _) => {
                ShipError::Identity { code, message }
            }
            (
                Code::InvalidArgument
                | Code::OutOfRange
                | Code::FailedPrecondition
                | Code::DataLoss,
                Some((first, last, events)),
            ) => ShipError::Refused {
                first,
                last,
                events,
                code,
                message,
            },
            (Code::InvalidArgument | Code::OutOfRange, None) => {
                ShipError::Identity { code, message }
            }
            // "transport error" alone says nothing: its causes say which side refused what.
            _ => {
                let mut text = format!("{code}: {message}");
                if let Some(source) = std::error::Error::source(s) {
                    text.push_str(": ");
                    text.push_str(&error_chain(source));
                }
                if text.contains("transport error") {
                    text.push_str(
                        " (the connection failed underneath; if the collector refused this agent's certificate, its log says why after \"tls accept error\")",
                    );
                }
                ShipError::Unreachable(text)
            }
        }
    }
}

/// What earlier refusals taught: send one event at a time up to a sequence number, and
/// events the collector refused alone go as placeholders.
#[derive(Debug, Default)]
struct Recovery {
    one_by_one_until: u64,
    withhold: std::collections::BTreeSet<u64>,
}

impl Recovery {
    fn learn(&mut self, e: &ShipError) {
        if let ShipError::Refused {
            first,
            last,
            events,
            ..
        } = *e
        {
            if events > 1 {
                self.one_by_one_until = self.one_by_one_until.max(last);
            } else {
                self.withhold.insert(first);
            }
        }
    }
}

/// The placeholder sent instead of an event the collector cannot take: the same sequence
/// number, kind `event_withheld`, what the event was about (kind, path, file metadata with
/// hashes) and why; the event itself stays on the node until the ack.
pub fn placeholder(e: &lockdown_proto::v1::Event, reason: &str) -> lockdown_proto::v1::Event {
    let original: serde_json::Value = serde_json::from_slice(&e.body).unwrap_or_default();
    let mut body = serde_json::json!({
        "seq": e.seq,
        "node": e.node,
        "time": e.time,
        "kind": "event_withheld",
        "original_kind": e.kind,
        "path": e.path,
        "bytes": e.body.len(),
        "sha256": crate::integrity::sha256_hex(&e.body),
        "reason": reason,
    });
    for key in ["before", "after"] {
        if let Some(meta) = original.get(key) {
            body[key] = meta.clone();
        }
    }
    lockdown_proto::v1::Event {
        kind: "event_withheld".into(),
        body: body.to_string().into_bytes(),
        severity: String::new(),
        rule_id: String::new(),
        ..e.clone()
    }
}

/// What the node looks like now, for the collector's node list (hello and heartbeats).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeSummary {
    /// Component name -> version ("unknown" when the image tag says nothing).
    pub component_versions: std::collections::HashMap<String, String>,
    /// Open findings by severity.
    pub open_findings: std::collections::HashMap<String, u32>,
    /// Every open finding (the hello carries them, so the collector's set cannot drift).
    pub findings: Vec<lockdown_proto::v1::OpenFinding>,
    /// The last sequence number committed when `findings` was taken.
    pub as_of_seq: u64,
    /// The CIS ids of the checks the agent evaluates.
    pub checked_cis: Vec<String>,
}

/// Keeps a hello within `max_bytes` (a batch's bound, under the collector's message limit):
/// a set of open findings too large to send goes without, and the collector keeps the set
/// the events built. A hello the collector cannot take would hold every event back.
fn fit_findings(hello: &mut Hello, max_bytes: usize) {
    use prost::Message as _;
    if hello.encoded_len() > max_bytes {
        tracing::warn!(
            findings = hello.findings.len(),
            max_bytes,
            "the open findings do not fit in a hello; the collector keeps what the events tell it"
        );
        hello.findings.clear();
        hello.findings_as_of_seq = 0;
    }
}

/// An open finding as the hello carries it.
pub fn open_finding(path: &str, key: &str, f: &FindingRecord) -> lockdown_proto::v1::OpenFinding {
    lockdown_proto::v1::OpenFinding {
        path: path.into(),
        key: key.into(),
        rule_id: f.rule_id.clone(),
        cis: f.cis.clone().unwrap_or_default(),
        title: f.title.clone(),
        severity: f.severity.as_str().into(),
        status: f.status.as_str().into(),
        component: f.component.clone().unwrap_or_default(),
        flag: f.flag.clone().unwrap_or_default(),
        observed: f.observed.clone().unwrap_or_default(),
        expected: f.expected.clone().unwrap_or_default(),
    }
}

/// What the shipper reports about itself (`lockdown-agent status`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ShipStatus {
    /// Collector address.
    pub address: String,
    /// Whether a stream is open.
    pub connected: bool,
    /// Highest sequence number acknowledged.
    pub acked: u64,
    /// The last connection error.
    pub last_error: Option<String>,
}

/// The shipper's side of the daemon: what it reads and where it reports.
#[derive(Debug)]
pub struct Link {
    /// The highest committed sequence number.
    pub last_seq: watch::Receiver<u64>,
    /// The node's summary for hellos and heartbeats.
    pub summary: watch::Receiver<NodeSummary>,
    /// Acknowledged sequence numbers, for the daemon to trim.
    pub acks: mpsc::Sender<u64>,
    /// The shipper's own status.
    pub status: Arc<Mutex<ShipStatus>>,
}

/// Runs forever: connect, stream, reconnect. `acked` is the spool's acknowledged sequence
/// number at start.
pub async fn run(
    cfg: ShipConfig,
    state_dir: PathBuf,
    node: String,
    mut acked: u64,
    mut link: Link,
) {
    let mut backoff = cfg.backoff_initial;
    let mut recovery = Recovery::default();
    let mut targets = std::collections::VecDeque::new();
    // Failures since a session last got going: a round of them over every target waits
    // the backoff; until then the next target is tried at once.
    let mut failed_in_round = 0usize;
    loop {
        if targets.is_empty() {
            targets = resolve(&cfg.addresses).await.into();
        }
        let round = targets.len();
        let target = targets.pop_front().expect("at least one address");
        link.status.lock().expect("status lock").address = target.shown.clone();
        let mut started = false;
        let result = session(
            &cfg,
            &target,
            &state_dir,
            &node,
            &mut link,
            &mut acked,
            &mut started,
            &mut recovery,
        )
        .await;
        if started {
            backoff = cfg.backoff_initial;
            failed_in_round = 0;
        }
        {
            let mut s = link.status.lock().expect("status lock");
            s.connected = false;
            if let Err(e) = &result {
                s.last_error = Some(e.to_string());
            }
        }
        if let Err(e) = result {
            recovery.learn(&e);
            tracing::warn!(
                collector = target.shown,
                error = %e,
                retry_helps = e.retry_helps(),
                retry_in_ms = backoff.as_millis() as u64,
                "not shipping; events stay spooled"
            );
            if !e.retry_helps() && matches!(e, ShipError::Refused { .. }) {
                // What changes is what is sent, not the collector: no need to wait long.
                backoff = cfg.backoff_initial;
            }
        }
        // A broken stream or a replica that cannot be reached: the next one at once (any
        // replica takes what this one did not ack); after a whole round, the backoff.
        failed_in_round += 1;
        if failed_in_round < round.max(cfg.addresses.len()) {
            tokio::time::sleep(jitter(cfg.backoff_initial)).await;
            continue;
        }
        failed_in_round = 0;
        tokio::time::sleep(jitter(backoff)).await;
        backoff = (backoff * 2).min(cfg.backoff_max);
    }
}

/// One place a collector answers: the URL to connect to, and the name its certificate must
/// carry (the configured host's, when the URL holds one of its addresses).
#[derive(Debug, Clone, PartialEq)]
struct Target {
    url: String,
    server_name: Option<String>,
    /// How logs and `status` name it.
    shown: String,
}

/// The configured addresses in order, each name that resolves to several addresses as one
/// target per address (so that replicas behind one name are tried in turn, not the first
/// one again and again). A name that does not resolve stays as it is: connecting says why.
async fn resolve(addresses: &[String]) -> Vec<Target> {
    let mut out = Vec::new();
    for a in addresses {
        let as_is = Target {
            url: a.clone(),
            server_name: None,
            shown: a.clone(),
        };
        let Ok(uri) = a.parse::<tonic::codegen::http::Uri>() else {
            out.push(as_is);
            continue;
        };
        let (Some(scheme), Some(host)) = (uri.scheme_str(), uri.host()) else {
            out.push(as_is);
            continue;
        };
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        if bare.parse::<std::net::IpAddr>().is_ok() {
            out.push(as_is);
            continue;
        }
        let port = uri
            .port_u16()
            .unwrap_or(if scheme == "https" { 443 } else { 80 });
        let mut ips: Vec<std::net::SocketAddr> = match tokio::net::lookup_host((host, port)).await {
            Ok(ips) => ips.collect(),
            Err(_) => Vec::new(),
        };
        ips.dedup();
        if ips.len() < 2 {
            out.push(as_is);
            continue;
        }
        out.extend(ips.into_iter().map(|ip| Target {
            url: format!("{scheme}://{ip}"),
            server_name: Some(host.to_string()),
            shown: format!("{a} ({ip})"),
        }));
    }
    out
}

/// 50% to 100% of `d`, so that many agents do not reconnect in step.
fn jitter(d: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |t| t.subsec_nanos());
    d.mul_f64(0.5 + f64::from(nanos % 1000) / 2000.0)
}

/// The next batch from `next` on: at most [`BATCH`] events and `max_bytes` encoded (at least
/// one event), under the stream's node name, placeholders for what the collector refused
/// alone or what could never fit.
fn build_batch(
    reader: &SpoolReader,
    next: u64,
    node: &str,
    max_bytes: usize,
    recovery: &Recovery,
) -> Result<Vec<lockdown_proto::v1::Event>, ShipError> {
    use prost::Message;
    let limit = if next <= recovery.one_by_one_until {
        1
    } else {
        BATCH
    };
    let events = reader
        .read_from(next, limit)
        .map_err(|e| ShipError::Spool(e.to_string()))?;
    let mut batch = Vec::with_capacity(events.len());
    let mut bytes = 0;
    for mut e in events {
        // The stream's name, not the one spooled with the event: a node renamed across a
        // restart must not wedge on its own old events.
        e.node = node.to_string();
        let seq = e.seq;
        let mut p = to_proto(e);
        if recovery.withhold.contains(&seq) {
            p = placeholder(&p, "the collector refused this event on its own");
        } else if p.encoded_len() > max_bytes {
            p = placeholder(
                &p,
                &format!(
                    "the event is {} bytes encoded, over collector.max_batch_bytes ({max_bytes})",
                    p.encoded_len()
                ),
            );
        }
        let len = p.encoded_len() + 8;
        if !batch.is_empty() && bytes + len > max_bytes {
            break;
        }
        bytes += len;
        batch.push(p);
    }
    Ok(batch)
}

#[allow(clippy::too_many_arguments)]
async fn session(
    cfg: &ShipConfig,
    target: &Target,
    state_dir: &std::path::Path,
    node: &str,
    link: &mut Link,
    acked: &mut u64,
    started: &mut bool,
    recovery: &mut Recovery,
) -> Result<(), ShipError> {
    let Link {
        last_seq,
        summary,
        acks,
        status,
    } = link;
    let unreachable = |e: String| ShipError::Unreachable(e);
    let reader = SpoolReader::open(state_dir).map_err(|e| ShipError::Spool(e.to_string()))?;
    let tls = cfg.tls.clone().map(|mut t| {
        if t.server_name.is_none() {
            t.server_name = target.server_name.clone();
        }
        t
    });
    let channel = lockdown_proto::endpoint(&target.url, tls.as_ref())
        .map_err(ShipError::Unreachable)?
        .connect()
        .await
        .map_err(|e| unreachable(format!("cannot connect: {}", error_chain(&e))))?;
    let mut client = AgentServiceClient::new(channel);
    let (tx, rx) = mpsc::channel::<AgentMessage>(8);
    let mut hello = Hello {
        node: node.to_string(),
        agent_version: env!("CARGO_PKG_VERSION").into(),
        first_unacked_seq: *acked + 1,
        cluster: cfg.cluster.clone(),
        component_versions: summary.borrow().component_versions.clone(),
        open_findings: summary.borrow().open_findings.clone(),
        findings: summary.borrow().findings.clone(),
        findings_as_of_seq: summary.borrow().as_of_seq,
        checked_cis: summary.borrow().checked_cis.clone(),
        spool_epoch: reader
            .epoch()
            .map_err(|e| ShipError::Spool(e.to_string()))?,
    };
    fit_findings(&mut hello, cfg.max_batch_bytes);
    let hello = AgentMessage {
        msg: Some(agent_message::Msg::Hello(hello)),
    };
    let closed = || unreachable("the stream closed".into());
    tx.send(hello).await.map_err(|_| closed())?;
    let mut inbound = client
        .report(ReceiverStream::new(rx))
        .await
        .map_err(|s| ShipError::from_status(&s, None))?
        .into_inner();
    {
        let mut s = status.lock().expect("status lock");
        s.connected = true;
        s.last_error = None;
    }
    *started = true;
    tracing::info!(
        collector = target.shown,
        first_unacked = *acked + 1,
        "connected to the collector"
    );
    let mut next = *acked + 1;
    // Batches sent and not yet acknowledged: (first, last, events).
    let mut in_flight: std::collections::VecDeque<(u64, u64, usize)> = Default::default();
    let mut heartbeat = tokio::time::interval(cfg.heartbeat);
    heartbeat.tick().await;
    // When the collector last said anything; only matters while events are in flight.
    let mut heard = tokio::time::Instant::now();
    loop {
        // After a refusal, events go one at a time, each acknowledged before the next: a
        // refusal then names its batch (the collector cannot say which message it could not
        // decode, and blaming the oldest in flight could withhold an event it had taken).
        let one_by_one = next <= recovery.one_by_one_until;
        let can_send = next <= *last_seq.borrow()
            && next - 1 - *acked < WINDOW
            && (!one_by_one || in_flight.is_empty());
        let pending = next - 1 > *acked;
        tokio::select! {
            () = tokio::time::sleep_until(heard + cfg.ack_timeout), if pending => {
                return Err(unreachable(format!(
                    "no answer from the collector for {:?} with events in flight; reconnecting",
                    cfg.ack_timeout
                )));
            }
            msg = inbound.message() => {
                heard = tokio::time::Instant::now();
                let msg = msg
                    .map_err(|s| ShipError::from_status(&s, in_flight.front().copied()))?
                    .ok_or_else(|| unreachable("the collector closed the stream".into()))?;
                match msg.msg {
                    Some(collector_message::Msg::Ack(a)) if a.seq > *last_seq.borrow() => {
                        // Never trim on an ack for events this spool never had.
                        return Err(unreachable(format!(
                            "the collector acknowledged seq {} beyond the last spooled {}; not trimming",
                            a.seq,
                            *last_seq.borrow()
                        )));
                    }
                    Some(collector_message::Msg::Ack(a)) if a.seq > *acked => {
                        *acked = a.seq;
                        next = next.max(a.seq + 1);
                        while in_flight.front().is_some_and(|b| b.1 <= a.seq) {
                            in_flight.pop_front();
                        }
                        status.lock().expect("status lock").acked = a.seq;
                        if acks.send(a.seq).await.is_err() {
                            return Ok(()); // the daemon is stopping
                        }
                    }
                    Some(collector_message::Msg::SlowDown(s)) => {
                        tracing::debug!(pause_ms = s.pause_ms, "collector asks to slow down");
                        tokio::time::sleep(Duration::from_millis(u64::from(s.pause_ms))).await;
                    }
                    _ => {}
                }
            }
            changed = last_seq.changed(), if !can_send => {
                if changed.is_err() {
                    return Ok(());
                }
            }
            () = std::future::ready(()), if can_send => {
                let events = build_batch(&reader, next, node, cfg.max_batch_bytes, recovery)?;
                let (Some(first), Some(last)) =
                    (events.first().map(|e| e.seq), events.last().map(|e| e.seq))
                else {
                    // Trimmed or dropped below `next`: nothing to send until new commits.
                    next = *last_seq.borrow() + 1;
                    continue;
                };
                in_flight.push_back((first, last, events.len()));
                let batch = AgentMessage {
                    msg: Some(agent_message::Msg::Events(EventBatch {
                        covers_from: next,
                        events,
                    })),
                };
                if !pending {
                    heard = tokio::time::Instant::now(); // the wait starts with the first unacked batch
                }
                tx.send(batch).await.map_err(|_| closed())?;
                next = last + 1;
                heartbeat.reset();
            }
            _ = heartbeat.tick() => {
                let beat = AgentMessage {
                    msg: Some(agent_message::Msg::Heartbeat(Heartbeat {
                        last_seq: *last_seq.borrow(),
                        component_versions: summary.borrow().component_versions.clone(),
                        open_findings: summary.borrow().open_findings.clone(),
                    })),
                };
                tx.send(beat).await.map_err(|_| closed())?;
            }
        }
    }
}

/// An error with its sources, so that "transport error" says what failed underneath (a
/// certificate refused, a name that does not match, a connection refused).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

fn code(s: &tonic::Status) -> String {
    format!("{:?}", s.code()).to_lowercase()
}

/// A spooled event as the wire carries it.
pub fn to_proto(e: Event) -> lockdown_proto::v1::Event {
    // Every kind named: a new kind with a severity or a rule must say so here, where the
    // collector's index columns come from.
    let (severity, rule_id) = match &e.body {
        EventBody::FindingRaised { finding, .. } | EventBody::FindingResolved { finding, .. } => (
            finding.severity.as_str().to_string(),
            finding.rule_id.clone(),
        ),
        EventBody::AgentStarted { .. }
        | EventBody::AgentStopping { .. }
        | EventBody::ConfigReloaded { .. }
        | EventBody::ConfigRejected { .. }
        | EventBody::Rescan { .. }
        | EventBody::FileCreated { .. }
        | EventBody::FileModified { .. }
        | EventBody::FileDeleted { .. }
        | EventBody::PermissionDrift { .. }
        | EventBody::FileInvalid { .. }
        | EventBody::FixPlanned { .. }
        | EventBody::FixApplied { .. }
        | EventBody::FixVerified { .. }
        | EventBody::FixRolledBack { .. }
        | EventBody::FixSkipped { .. }
        | EventBody::FixQuarantined { .. }
        | EventBody::SpoolOverflow { .. } => (String::new(), String::new()),
    };
    lockdown_proto::v1::Event {
        path: e.body.path().unwrap_or_default().to_string(),
        kind: e.body.kind().to_string(),
        severity,
        rule_id,
        body: serde_json::to_vec(&e).expect("events serialise"),
        node: e.node,
        seq: e.seq,
        time: e.time,
        epoch: 0, // the stream's hello carries it
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn addresses_are_tried_in_order_and_a_name_keeps_its_certificate_name() {
        let t = resolve(&[
            "https://10.0.0.7:7443".to_string(),
            "https://localhost:7443".to_string(),
            "https://[::1]:7443".to_string(),
        ])
        .await;
        // Addresses stay as given, in the configured order.
        assert_eq!(t.first().unwrap().url, "https://10.0.0.7:7443");
        assert_eq!(t.last().unwrap().url, "https://[::1]:7443");
        assert!(t.first().unwrap().server_name.is_none());
        // localhost is one target, or one per address it has here (127.0.0.1, ::1), each
        // checked against the name's certificate.
        let local = &t[1..t.len() - 1];
        match local {
            [one] => assert_eq!(
                (one.url.as_str(), &one.server_name),
                ("https://localhost:7443", &None)
            ),
            many => {
                for x in many {
                    assert!(
                        x.url.ends_with(":7443") && !x.url.contains("localhost"),
                        "{x:?}"
                    );
                    assert_eq!(x.server_name.as_deref(), Some("localhost"));
                }
            }
        }
    }

    #[test]
    fn a_set_of_findings_too_large_for_a_hello_is_left_out_not_sent() {
        let finding = lockdown_proto::v1::OpenFinding {
            path: "/etc/kubernetes/manifests/kube-apiserver.yaml".into(),
            key: "unsupported-flag".into(),
            rule_id: "unsupported-flag".into(),
            observed: "x".repeat(200),
            ..Default::default()
        };
        let hello = |n| Hello {
            node: "cp-1".into(),
            findings: vec![finding.clone(); n],
            findings_as_of_seq: 9,
            ..Default::default()
        };
        let mut small = hello(10);
        fit_findings(&mut small, 1 << 20);
        assert_eq!((small.findings.len(), small.findings_as_of_seq), (10, 9));
        let mut large = hello(10_000);
        fit_findings(&mut large, 1 << 20);
        assert_eq!((large.findings.len(), large.findings_as_of_seq), (0, 0));
        assert_eq!(large.node, "cp-1", "the hello itself still goes");
    }
}

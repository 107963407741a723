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

use crate::event::{Event, EventBody};
use crate::spool::SpoolReader;

/// Events per batch message.
const BATCH: usize = 500;
/// Most events sent and not yet acknowledged.
const WINDOW: u64 = 5_000;

/// Where and how to ship.
#[derive(Debug, Clone, PartialEq)]
pub struct ShipConfig {
    /// `https://host:port` (or `http://` for a loopback development collector).
    pub address: String,
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
}

/// What the node looks like now, for the collector's node list (hello and heartbeats).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeSummary {
    /// Component name -> version ("unknown" when the image tag says nothing).
    pub component_versions: std::collections::HashMap<String, String>,
    /// Open findings by severity.
    pub open_findings: std::collections::HashMap<String, u32>,
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
    loop {
        let result = session(&cfg, &state_dir, &node, &mut link, &mut acked, &mut backoff).await;
        {
            let mut s = link.status.lock().expect("status lock");
            s.connected = false;
            if let Err(e) = &result {
                s.last_error = Some(e.clone());
            }
        }
        if let Err(e) = result {
            tracing::warn!(
                collector = cfg.address,
                error = e,
                retry_in_ms = backoff.as_millis() as u64,
                "collector unreachable; events stay spooled"
            );
        }
        tokio::time::sleep(jitter(backoff)).await;
        backoff = (backoff * 2).min(cfg.backoff_max);
    }
}

/// 50% to 100% of `d`, so that many agents do not reconnect in step.
fn jitter(d: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |t| t.subsec_nanos());
    d.mul_f64(0.5 + f64::from(nanos % 1000) / 2000.0)
}

async fn session(
    cfg: &ShipConfig,
    state_dir: &std::path::Path,
    node: &str,
    link: &mut Link,
    acked: &mut u64,
    backoff: &mut Duration,
) -> Result<(), String> {
    let Link {
        last_seq,
        summary,
        acks,
        status,
    } = link;
    let reader = SpoolReader::open(state_dir).map_err(|e| e.to_string())?;
    let channel = lockdown_proto::endpoint(&cfg.address, cfg.tls.as_ref())?
        .connect()
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    let mut client = AgentServiceClient::new(channel);
    let (tx, rx) = mpsc::channel::<AgentMessage>(8);
    let hello = AgentMessage {
        msg: Some(agent_message::Msg::Hello(Hello {
            node: node.to_string(),
            agent_version: env!("CARGO_PKG_VERSION").into(),
            first_unacked_seq: *acked + 1,
            cluster: cfg.cluster.clone(),
            component_versions: summary.borrow().component_versions.clone(),
            open_findings: summary.borrow().open_findings.clone(),
            spool_epoch: reader.epoch().map_err(|e| e.to_string())?,
        })),
    };
    tx.send(hello).await.map_err(|_| "stream closed")?;
    let mut inbound = client
        .report(ReceiverStream::new(rx))
        .await
        .map_err(|s| format!("{}: {}", code(&s), s.message()))?
        .into_inner();
    {
        let mut s = status.lock().expect("status lock");
        s.connected = true;
        s.last_error = None;
    }
    *backoff = cfg.backoff_initial;
    tracing::info!(
        collector = cfg.address,
        first_unacked = *acked + 1,
        "connected to the collector"
    );
    let mut next = *acked + 1;
    let mut heartbeat = tokio::time::interval(cfg.heartbeat);
    heartbeat.tick().await;
    // When the collector last said anything; only matters while events are in flight.
    let mut heard = tokio::time::Instant::now();
    loop {
        let can_send = next <= *last_seq.borrow() && next - 1 - *acked < WINDOW;
        let in_flight = next - 1 > *acked;
        tokio::select! {
            () = tokio::time::sleep_until(heard + cfg.ack_timeout), if in_flight => {
                return Err(format!(
                    "no answer from the collector for {:?} with events in flight; reconnecting",
                    cfg.ack_timeout
                ));
            }
            msg = inbound.message() => {
                heard = tokio::time::Instant::now();
                let msg = msg.map_err(|s| format!("{}: {}", code(&s), s.message()))?
                    .ok_or("the collector closed the stream")?;
                match msg.msg {
                    Some(collector_message::Msg::Ack(a)) if a.seq > *last_seq.borrow() => {
                        // Never trim on an ack for events this spool never had.
                        return Err(format!(
                            "the collector acknowledged seq {} beyond the last spooled {}; not trimming",
                            a.seq,
                            *last_seq.borrow()
                        ));
                    }
                    Some(collector_message::Msg::Ack(a)) if a.seq > *acked => {
                        *acked = a.seq;
                        next = next.max(a.seq + 1);
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
                let events = reader.read_from(next, BATCH).map_err(|e| e.to_string())?;
                let Some(last) = events.last().map(|e| e.seq) else {
                    // Trimmed or dropped below `next`: nothing to send until new commits.
                    next = *last_seq.borrow() + 1;
                    continue;
                };
                let batch = AgentMessage {
                    msg: Some(agent_message::Msg::Events(EventBatch {
                        covers_from: next,
                        // The stream's name, not the one spooled with the event: a node
                        // renamed across a restart must not wedge on its own old events.
                        events: events
                            .into_iter()
                            .map(|mut e| {
                                e.node = node.to_string();
                                to_proto(e)
                            })
                            .collect(),
                    })),
                };
                if !in_flight {
                    heard = tokio::time::Instant::now(); // the wait starts with the first unacked batch
                }
                tx.send(batch).await.map_err(|_| "the stream closed")?;
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
                tx.send(beat).await.map_err(|_| "the stream closed")?;
            }
        }
    }
}

fn code(s: &tonic::Status) -> String {
    format!("{:?}", s.code()).to_lowercase()
}

/// A spooled event as the wire carries it.
pub fn to_proto(e: Event) -> lockdown_proto::v1::Event {
    let (severity, rule_id) = match &e.body {
        EventBody::FindingRaised { finding, .. } | EventBody::FindingResolved { finding, .. } => (
            finding.severity.as_str().to_string(),
            finding.rule_id.clone(),
        ),
        _ => (String::new(), String::new()),
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

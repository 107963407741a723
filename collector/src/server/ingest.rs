//! The agents' service: a Report stream opens with a Hello, is authorized, settles what the
//! agent says was acknowledged before, then stores each batch through the writer and acks
//! it, with a per-node rate limit.

use std::sync::Arc;
use std::time::{Duration, Instant};

use lockdown_proto::v1::agent_service_server::AgentService;
use lockdown_proto::v1::{
    Ack, AgentMessage, CollectorMessage, Hello, SlowDown, agent_message, collector_message,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::writer::Job;
use super::{HELLO_TIMEOUT, Shared, ask, auth, now};
use crate::admit;
use crate::store::NodeInfo;

/// The agents' service.
pub struct Agents(pub(super) Arc<Shared>);

#[tonic::async_trait]
impl AgentService for Agents {
    type ReportStream = ReceiverStream<Result<CollectorMessage, Status>>;

    async fn report(
        &self,
        req: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Self::ReportStream>, Status> {
        let opened = self.open(req).await;
        if let Err(status) = &opened {
            self.0.metrics.refused(match status.code() {
                tonic::Code::Unavailable => "stopping",
                tonic::Code::ResourceExhausted => "too_many_streams",
                tonic::Code::DeadlineExceeded => "no_hello",
                tonic::Code::InvalidArgument => "malformed",
                tonic::Code::PermissionDenied | tonic::Code::Unauthenticated => "identity",
                _ => "other",
            });
        }
        opened
    }
}

impl Agents {
    /// A new agent stream, from its hello to the task that serves it.
    async fn open(
        &self,
        req: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<ReceiverStream<Result<CollectorMessage, Status>>>, Status> {
        let shared = Arc::clone(&self.0);
        if *shared.stopping.borrow() {
            return Err(Status::unavailable(
                "the collector is stopping; retry later",
            ));
        }
        let certs = req.peer_certs();
        let remote = req.remote_addr();
        let permit = Arc::clone(&shared.streams)
            .try_acquire_owned()
            .map_err(|_| Status::resource_exhausted("too many agent streams; retry later"))?;
        let mut inbound = req.into_inner();
        // A stream that never says hello must not hold a stream slot.
        let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no Hello within 10 s"))??;
        let hello = match first {
            Some(AgentMessage {
                msg: Some(agent_message::Msg::Hello(h)),
            }) => h,
            _ => {
                return Err(Status::invalid_argument(
                    "a Report stream opens with a Hello",
                ));
            }
        };
        let node = hello.node.clone();
        admit::hello(&hello)?;
        let certs = certs.as_deref().map(Vec::as_slice);
        auth::agent(&shared.cfg, shared.split_cas.as_ref(), certs, &node, remote)?;
        tracing::info!(
            node,
            agent_version = hello.agent_version,
            first_unacked = hello.first_unacked_seq,
            "agent connected"
        );
        let _ = shared
            .writer
            .send(Job::Touch(NodeInfo {
                node: node.clone(),
                cluster: hello.cluster.clone(),
                agent_version: hello.agent_version.clone(),
                component_versions: hello.component_versions.clone().into_iter().collect(),
                open_findings: hello.open_findings.clone().into_iter().collect(),
                last_seen: now(),
                acked: 0,
                checked_cis: Default::default(),
                // Said by heartbeats; a hello leaves the last one's.
                last_seq: 0,
            }))
            .await;
        *shared
            .connected
            .lock()
            .expect("lock")
            .entry(node.clone())
            .or_default() += 1;

        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            let _permit = permit;
            let result = stream_loop(&shared, &hello, &mut inbound, &tx).await;
            if let Err(status) = result {
                tracing::info!(node, code = ?status.code(), message = status.message(), "agent stream ended with an error");
                let _ = tx.send(Err(status)).await;
            }
            let mut c = shared.connected.lock().expect("lock");
            if let Some(n) = c.get_mut(&node) {
                *n -= 1;
                if *n == 0 {
                    c.remove(&node);
                }
            }
            tracing::info!(node, "agent disconnected");
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

async fn stream_loop(
    shared: &Shared,
    hello: &Hello,
    inbound: &mut Streaming<AgentMessage>,
    tx: &mpsc::Sender<Result<CollectorMessage, Status>>,
) -> Result<(), Status> {
    let (node, epoch) = (hello.node.as_str(), hello.spool_epoch);
    let ack = |seq| CollectorMessage {
        msg: Some(collector_message::Msg::Ack(Ack { seq })),
    };
    // What is already stored, or was acknowledged by an earlier store (the agent says it
    // trimmed everything below its first unacknowledged event): the agent may trim it now.
    let stored = ask(shared, |reply| Job::Settle {
        node: node.to_string(),
        epoch,
        first_unacked: hello.first_unacked_seq,
        reply,
    })
    .await?;
    // The node's open findings become what it says they are, before any of its events is
    // stored: those up to the set's sequence number are in it already.
    let taken = match admit::findings(hello) {
        Ok(()) => true,
        Err(why) => {
            tracing::warn!(
                node,
                why,
                "the hello's open findings are not taken; the collector keeps the set its events built"
            );
            false
        }
    };
    if hello.findings_as_of_seq > 0 && taken {
        let fixed = ask(shared, |reply| Job::Reconcile {
            node: node.to_string(),
            epoch,
            as_of: hello.findings_as_of_seq,
            findings: hello.findings.clone(),
            checked_cis: hello.checked_cis.clone(),
            reply,
        })
        .await?;
        if fixed.drift {
            tracing::warn!(
                node,
                ?fixed,
                "open findings had drifted from the agent's; corrected"
            );
        } else if fixed.differs() {
            tracing::debug!(
                node,
                ?fixed,
                "open findings brought ahead of events on their way"
            );
        }
    }
    if tx.send(Ok(ack(stored))).await.is_err() {
        return Ok(());
    }
    let rate = f64::from(shared.cfg.max_events_per_second_per_node.max(1));
    let mut budget = rate;
    let mut refilled = Instant::now();
    let mut stopping = shared.stopping.subscribe();
    loop {
        let msg = tokio::select! {
            biased;
            _ = async { stopping.wait_for(|s| *s).await.is_ok() } => {
                return Err(Status::unavailable("the collector is stopping; reconnect later"));
            }
            msg = inbound.message() => msg?,
        };
        let Some(msg) = msg else { break };
        match msg.msg {
            Some(agent_message::Msg::Events(batch)) => {
                admit::events(node, &batch.events)?;
                let n = batch.events.len() as f64;
                let mut kinds: Vec<(String, u64)> = Vec::new();
                for e in &batch.events {
                    match kinds.iter_mut().find(|(k, _)| *k == e.kind) {
                        Some((_, c)) => *c += 1,
                        None => kinds.push((e.kind.clone(), 1)),
                    }
                }
                let acked = ask(shared, |reply| Job::Insert {
                    node: node.to_string(),
                    epoch,
                    covers_from: batch.covers_from,
                    events: batch.events,
                    reply,
                })
                .await?;
                if tx.send(Ok(ack(acked))).await.is_err() {
                    return Ok(());
                }
                shared.metrics.acked();
                for (kind, c) in kinds {
                    shared.metrics.ingested(&kind, c);
                }
                // Token bucket: over the rate, say so and read this stream more slowly.
                budget = (budget + refilled.elapsed().as_secs_f64() * rate).min(rate) - n;
                refilled = Instant::now();
                if budget < 0.0 {
                    let pause = Duration::from_secs_f64(-budget / rate);
                    let _ = tx
                        .send(Ok(CollectorMessage {
                            msg: Some(collector_message::Msg::SlowDown(SlowDown {
                                pause_ms: pause.as_millis() as u32,
                                max_events_per_second: rate as u32,
                            })),
                        }))
                        .await;
                    tokio::time::sleep(pause).await;
                }
            }
            Some(agent_message::Msg::Heartbeat(h)) => {
                let _ = shared
                    .writer
                    .send(Job::Touch(NodeInfo {
                        node: node.to_string(),
                        component_versions: h.component_versions.into_iter().collect(),
                        open_findings: h.open_findings.into_iter().collect(),
                        last_seen: now(),
                        last_seq: h.last_seq,
                        ..NodeInfo::default()
                    }))
                    .await;
            }
            Some(agent_message::Msg::Hello(_)) => {
                return Err(Status::invalid_argument("a second Hello on one stream"));
            }
            None => return Err(Status::invalid_argument("an empty message")),
        }
    }
    Ok(())
}

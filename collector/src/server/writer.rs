//! The store writer: one thread owns the store's write side and commits whatever the streams
//! have queued in one transaction (group commit: one fsync for many agents), then answers
//! each stream with its ack.

use std::sync::Arc;
use std::time::Duration;

use lockdown_proto::v1::Event;
use tokio::sync::{mpsc, oneshot};

use crate::feed::CommitFeed;
use crate::store::{Batch, EventStore, NodeInfo, OpenFinding, Reconcile, Reconciled, StoreError};

/// A write run on the writer's store.
pub(super) type WriteFn = Box<dyn FnOnce(&mut dyn EventStore) + Send>;

/// Work for the writer.
pub(super) enum Job {
    Insert {
        node: String,
        epoch: u64,
        covers_from: u64,
        events: Vec<Event>,
        reply: oneshot::Sender<Result<u64, Arc<StoreError>>>,
    },
    Touch(NodeInfo),
    /// A new stream: everything below `first_unacked` was acknowledged before.
    Settle {
        node: String,
        epoch: u64,
        first_unacked: u64,
        reply: oneshot::Sender<Result<u64, Arc<StoreError>>>,
    },
    /// A hello's open findings.
    Reconcile {
        node: String,
        epoch: u64,
        as_of: u64,
        findings: Vec<OpenFinding>,
        checked_cis: Vec<String>,
        reply: oneshot::Sender<Result<Reconciled, Arc<StoreError>>>,
    },
    /// Any other write (exceptions), run on the writer's store; it answers on its own.
    Write(WriteFn),
    Retain {
        max_age: Option<Duration>,
        max_events: Option<u64>,
        /// The configured sinks: nothing they have not delivered is deleted.
        sinks: Vec<String>,
    },
}

/// Sends on drop, also when the thread that holds it unwinds from a panic.
pub(super) struct DropSignal(pub(super) Option<oneshot::Sender<()>>);

impl Drop for DropSignal {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

/// Commits queued jobs, many at a time.
pub(super) fn writer_loop(
    store: &mut dyn EventStore,
    jobs: &mut mpsc::Receiver<Job>,
    committed: &dyn CommitFeed,
    metrics: &crate::metrics::Metrics,
) {
    while let Some(first) = jobs.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < 256 {
            match jobs.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        let mut inserts = Vec::new();
        let mut touches = Vec::new();
        for job in batch {
            match job {
                Job::Insert {
                    node,
                    epoch,
                    covers_from,
                    events,
                    reply,
                } => inserts.push((node, epoch, covers_from, events, reply)),
                Job::Touch(info) => touches.push(info),
                Job::Settle {
                    node,
                    epoch,
                    first_unacked,
                    reply,
                } => {
                    let result = store.settle(&node, epoch, first_unacked, &super::now());
                    if let Err(e) = &result {
                        tracing::error!(error = %e, node, "cannot record the agent's earlier acks");
                    }
                    let _ = reply.send(result.map_err(Arc::new));
                    committed.committed();
                }
                Job::Reconcile {
                    node,
                    epoch,
                    as_of,
                    findings,
                    checked_cis,
                    reply,
                } => {
                    let result = store.reconcile(&Reconcile {
                        node: &node,
                        epoch,
                        as_of,
                        findings: &findings,
                        checked_cis: &checked_cis,
                        time: &super::now(),
                    });
                    if let Err(e) = &result {
                        tracing::error!(error = %e, node, "cannot reconcile the agent's open findings");
                    }
                    let _ = reply.send(result.map_err(Arc::new));
                    committed.committed();
                }
                Job::Write(f) => {
                    f(store);
                    committed.committed();
                }
                Job::Retain {
                    max_age,
                    max_events,
                    sinks,
                } => match store.retain(max_age, max_events, &sinks) {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(deleted = n, "retention"),
                    Err(e) => tracing::error!(error = %e, "retention failed"),
                },
            }
        }
        if inserts.is_empty() && touches.is_empty() {
            continue;
        }
        let batches: Vec<Batch<'_>> = inserts
            .iter()
            .map(|(n, epoch, covers_from, e, _)| Batch {
                node: n.as_str(),
                epoch: *epoch,
                covers_from: *covers_from,
                events: e.as_slice(),
            })
            .collect();
        let started = std::time::Instant::now();
        let result = store.insert_many(&batches, &touches);
        if result.is_ok() {
            metrics.committed(started.elapsed());
        }
        match result {
            Ok(acks) => {
                for ((_, _, _, _, reply), ack) in inserts.into_iter().zip(acks) {
                    let _ = reply.send(Ok(ack));
                }
                committed.committed();
            }
            Err(e) => {
                let retry_helps = e.retry_helps();
                tracing::error!(error = %e, retry_helps, "cannot commit events; agents will resend");
                let e = Arc::new(e);
                for (_, _, _, _, reply) in inserts {
                    let _ = reply.send(Err(Arc::clone(&e)));
                }
            }
        }
    }
}

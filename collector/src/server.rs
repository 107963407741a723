//! `lockdown-collector serve`: the agents' stream in, the readers' queries out. This module
//! starts and stops the server; who may do what is in `auth`, the agents' protocol in
//! `ingest`, the group-committing store writer in `writer`, the queries in `query`.
//!
//! One writer thread owns the store's write side; queries use a second instance of the
//! store. Nothing an agent or a reader sends can stop the server: malformed input ends that
//! stream with a status.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lockdown_proto::v1::agent_service_server::AgentServiceServer;
use lockdown_proto::v1::query_service_server::QueryServiceServer;
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

use crate::config::{Config, Database};
use crate::feed::{CommitFeed, InProcess};
use crate::store::{EventStore, PgStore, Store, StoreError};

pub use crate::admit::MAX_BATCH_EVENTS;
/// How long a new stream may take to send its Hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Most queued writer jobs before streams wait (backpressure, not loss).
const WRITER_QUEUE: usize = 1024;
/// How long a stopping collector waits for open streams to end before it exits anyway.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// Store instances for queries at once (each a connection to PostgreSQL).
const READERS: usize = 4;
/// How often the store is checked for the health service.
const HEALTH_EVERY: Duration = Duration::from_secs(2);
/// With PostgreSQL, how often readers look for other replicas' commits even without a
/// notification.
const POLL_EVERY: Duration = Duration::from_secs(1);

mod auth;
mod dashboard;
mod exceptions;
mod ingest;
mod query;
mod writer;

use auth::Anchors;
pub use ingest::Agents;
pub use query::Queries;
use writer::{DropSignal, Job, writer_loop};

/// State shared by the services.
pub(super) struct Shared {
    cfg: Config,
    writer: mpsc::Sender<Job>,
    readers: Readers,
    /// What the collector counts.
    metrics: Arc<crate::metrics::Metrics>,
    /// Wakes WatchEvents after every commit.
    committed: Arc<dyn CommitFeed>,
    /// Set once when the collector starts to stop: no new streams, open ones end.
    stopping: watch::Sender<bool>,
    /// Open streams per node.
    connected: Mutex<HashMap<String, usize>>,
    /// An exception was added or removed: the expiry watcher looks again.
    exceptions_changed: tokio::sync::Notify,
    streams: Arc<Semaphore>,
    /// With a separate reader CA: the agents' and the readers' trust anchors, to tell which
    /// CA issued a client certificate (the handshake accepts both).
    split_cas: Option<(Anchors, Anchors)>,
}

/// Why the server cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The store cannot be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The store writer stopped (it panicked); a restart is the way out.
    #[error("the store writer stopped; restart the collector")]
    WriterStopped,
    /// A TLS file cannot be read.
    #[error("cannot read {path}: {source}")]
    Tls {
        /// File.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The transport failed (address in use, bad certificate).
    #[error("cannot serve on {addr}: {source}")]
    Transport {
        /// Listen address.
        addr: String,
        /// Cause.
        source: tonic::transport::Error,
    },
}

/// A new instance of the configured store (each has its own connection).
pub fn open_store(db: &Database) -> Result<Box<dyn EventStore>, StoreError> {
    Ok(match db {
        Database::Sqlite(path) => Box::new(Store::open(path)?),
        Database::Postgres(target) => Box::new(PgStore::connect(target)?),
    })
}

/// Store instances for queries, opened as needed up to [`READERS`] at once; an instance is
/// reused (PostgreSQL's reconnects by itself after the database comes back).
struct Readers {
    db: Database,
    idle: Mutex<Vec<Box<dyn EventStore>>>,
    permits: Semaphore,
}

impl Readers {
    fn take(&self) -> Result<Box<dyn EventStore>, StoreError> {
        let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        match idle {
            Some(s) => Ok(s),
            None => open_store(&self.db),
        }
    }

    fn give_back(&self, s: Box<dyn EventStore>) {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).push(s);
    }
}

/// Serves until `shutdown` resolves.
pub async fn serve(
    cfg: Config,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    if let Database::Sqlite(path) = &cfg.database
        && let Some(dir) = path.parent()
    {
        let _ = std::fs::create_dir_all(dir);
    }
    let mut store = open_store(&cfg.database)?;
    let readers = Readers {
        db: cfg.database.clone(),
        idle: Mutex::new(vec![open_store(&cfg.database)?]),
        permits: Semaphore::new(READERS),
    };
    let health_store = open_store(&cfg.database)?;
    let (writer, mut jobs) = mpsc::channel::<Job>(WRITER_QUEUE);
    let metrics = Arc::new(crate::metrics::Metrics::default());
    let writer_metrics = Arc::clone(&metrics);
    let committed: Arc<dyn CommitFeed> = Arc::new(InProcess::default());
    if let Database::Postgres(target) = &cfg.database {
        // Other replicas' commits wake this one's readers too.
        tokio::spawn(crate::store::postgres::listen(
            (**target).clone(),
            Arc::clone(&committed),
            POLL_EVERY,
        ));
    }
    let committed_tx = Arc::clone(&committed);
    // If the writer ever stops (a panic), nothing can be acked again: stop serving and exit
    // non-zero, so that the service manager restarts the collector.
    let (writer_gone_tx, writer_gone) = oneshot::channel::<()>();
    std::thread::Builder::new()
        .name("store-writer".into())
        .spawn(move || {
            let _gone = DropSignal(Some(writer_gone_tx));
            writer_loop(
                store.as_mut(),
                &mut jobs,
                committed_tx.as_ref(),
                &writer_metrics,
            );
        })
        .expect("spawn the store writer");

    let split_cas = match cfg
        .tls
        .as_ref()
        .and_then(|t| Some((t, t.reader_ca.as_ref()?)))
    {
        Some((tls, reader_ca)) => {
            let read = |p: &std::path::Path| {
                std::fs::read(p).map_err(|source| ServeError::Tls {
                    path: p.display().to_string(),
                    source,
                })
            };
            Some((
                Anchors::from_pem(&tls.client_ca, &read(&tls.client_ca)?)?,
                Anchors::from_pem(reader_ca, &read(reader_ca)?)?,
            ))
        }
        None => None,
    };
    let shared = Arc::new(Shared {
        split_cas,
        streams: Arc::new(Semaphore::new(cfg.max_streams)),
        cfg: cfg.clone(),
        writer,
        readers,
        metrics: Arc::clone(&metrics),
        committed,
        stopping: watch::channel(false).0,
        connected: Mutex::new(HashMap::new()),
        exceptions_changed: tokio::sync::Notify::new(),
    });
    tokio::spawn(exceptions::watch_expiry(Arc::clone(&shared)));
    if let Some(m) = &cfg.metrics {
        let (listen, metrics, shared) = (m.listen, Arc::clone(&metrics), Arc::clone(&shared));
        let scope = crate::metrics::Scope {
            expected: cfg.expected_nodes.clone(),
            stale_after: cfg.stale_after,
            per_rule: m.per_rule,
            sinks: cfg.sinks.iter().map(|s| s.name.clone()).collect(),
        };
        let gauges = move || {
            let (shared, scope) = (Arc::clone(&shared), scope.clone());
            async move {
                read(&shared, move |s| crate::metrics::gauges(s, &scope))
                    .await
                    .map_err(|status| status.message().to_string())
            }
        };
        tokio::spawn(async move {
            if let Err(e) = crate::metrics::serve(listen, metrics, gauges).await {
                tracing::error!(%listen, error = %e, "cannot serve metrics");
            }
        });
    }
    if let Some(d) = &cfg.dashboard {
        let (shared, d) = (Arc::clone(&shared), d.clone());
        tokio::spawn(async move {
            if let Err(e) = dashboard::serve(shared, d).await {
                tracing::error!(error = %e, "cannot serve the dashboard");
            }
        });
    }
    // Each sink on its own thread with its own store instance, woken by commits; they stop
    // when serving stops (a delivery in progress is sent again by the next run).
    for sink in &cfg.sinks {
        let ctx = crate::sink::Context {
            filter: sink.filter.clone(),
            metrics: Arc::clone(&metrics),
            store: open_store(&cfg.database)?,
            feed: shared.committed.subscribe(),
            stop: shared.stopping.subscribe(),
            pace: crate::sink::Pace::default(),
        };
        if let Err(e) = crate::sink::start(sink, ctx) {
            tracing::error!(sink = sink.name, error = %e, "cannot start a sink");
        }
    }
    let writer_died = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let died = Arc::clone(&writer_died);
    let stopping = Arc::clone(&shared);
    let (stop_started_tx, stop_started) = oneshot::channel::<()>();
    let shutdown = async move {
        tokio::select! {
            () = shutdown => {}
            _ = writer_gone => {
                died.store(true, std::sync::atomic::Ordering::SeqCst);
                tracing::error!("the store writer stopped; shutting down");
            }
        }
        // Refuse new streams and end the open ones: an agent stream never ends on its own,
        // and a collector that stopped listening must not go on acking.
        stopping.stopping.send_replace(true);
        let _ = stop_started_tx.send(());
    };
    if cfg.max_age.is_some() || cfg.max_events.is_some() {
        let s = Arc::clone(&shared);
        tokio::spawn(async move {
            let mut t = tokio::time::interval(Duration::from_secs(60));
            loop {
                t.tick().await;
                let _ = s
                    .writer
                    .send(Job::Retain {
                        max_age: s.cfg.max_age,
                        max_events: s.cfg.max_events,
                        sinks: s.cfg.sinks.iter().map(|k| k.name.clone()).collect(),
                    })
                    .await;
            }
        });
    }

    let (health, health_svc) = tonic_health::server::health_reporter();
    health.set_serving::<AgentServiceServer<Agents>>().await;
    health.set_serving::<QueryServiceServer<Queries>>().await;
    tokio::spawn(watch_health(health, health_store));
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(lockdown_proto::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .expect("the embedded descriptor sets are valid");

    let mut builder = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)));
    if let Some(tls) = &cfg.tls {
        let read = |p: &std::path::Path| {
            std::fs::read(p).map_err(|source| ServeError::Tls {
                path: p.display().to_string(),
                source,
            })
        };
        let mut roots = read(&tls.client_ca)?;
        if let Some(reader_ca) = &tls.reader_ca {
            roots.push(b'\n');
            roots.extend(read(reader_ca)?);
        }
        let tls_cfg = ServerTlsConfig::new()
            .identity(Identity::from_pem(read(&tls.cert)?, read(&tls.key)?))
            .client_ca_root(Certificate::from_pem(roots));
        builder = builder
            .tls_config(tls_cfg)
            .map_err(|source| ServeError::Transport {
                addr: cfg.listen.to_string(),
                source,
            })?;
    }
    let max = cfg.max_message_bytes;
    let agents = AgentServiceServer::new(Agents(Arc::clone(&shared)))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let queries = QueryServiceServer::new(Queries(Arc::clone(&shared)))
        .max_decoding_message_size(max)
        .max_encoding_message_size(16 << 20);
    tracing::info!(listen = %cfg.listen, tls = cfg.tls.is_some(), database = %cfg.database, "collector serving");
    let serving = builder
        .add_service(health_svc)
        .add_service(reflection)
        .add_service(agents)
        .add_service(queries)
        .serve_with_shutdown(cfg.listen, shutdown);
    let deadline = async move {
        // Streams end at once; a batch in the writer is committed and acked first. What is
        // still open after STOP_GRACE is abandoned unacked (the agents resend it).
        if stop_started.await.is_ok() {
            tokio::time::sleep(STOP_GRACE).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        served = serving => served.map_err(|source| ServeError::Transport {
            addr: cfg.listen.to_string(),
            source,
        })?,
        () = deadline => tracing::warn!(grace = ?STOP_GRACE, "streams still open after the grace period; abandoning them unacked"),
    }
    tracing::info!("stopped");
    if writer_died.load(std::sync::atomic::Ordering::SeqCst) {
        return Err(ServeError::WriterStopped);
    }
    Ok(())
}

/// Sends a job to the writer and waits for its answer.
async fn ask<T>(
    shared: &Shared,
    job: impl FnOnce(oneshot::Sender<Result<T, Arc<StoreError>>>) -> Job,
) -> Result<T, tonic::Status> {
    let (reply, answer) = oneshot::channel();
    let stopped = || tonic::Status::unavailable("store writer stopped");
    shared
        .writer
        .send(job(reply))
        .await
        .map_err(|_| stopped())?;
    answer
        .await
        .map_err(|_| stopped())?
        .map_err(|e| e.to_status())
}

/// Runs `f` on a reader store instance, off the runtime (the stores block).
pub(super) async fn read<T: Send + 'static>(
    shared: &Arc<Shared>,
    f: impl FnOnce(&dyn EventStore) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, tonic::Status> {
    let _permit = shared
        .readers
        .permits
        .acquire()
        .await
        .map_err(|_| tonic::Status::unavailable("the collector is stopping"))?;
    let shared = Arc::clone(shared);
    tokio::task::spawn_blocking(move || {
        let store = shared.readers.take()?;
        let out = f(store.as_ref());
        shared.readers.give_back(store);
        out
    })
    .await
    .map_err(|e| tonic::Status::internal(e.to_string()))?
    .map_err(|e| e.to_status())
}

/// Says on the standard health service whether this replica can reach its store: one that
/// cannot acks nothing, and a load balancer should send agents and readers elsewhere.
async fn watch_health(health: tonic_health::server::HealthReporter, store: Box<dyn EventStore>) {
    let store = Arc::new(Mutex::new(store));
    let mut serving = true;
    let mut tick = tokio::time::interval(HEALTH_EVERY);
    loop {
        tick.tick().await;
        let s = Arc::clone(&store);
        let probe = tokio::task::spawn_blocking(move || {
            s.lock().unwrap_or_else(|p| p.into_inner()).max_cursor()
        });
        let ok = match probe.await {
            Ok(Ok(_)) => true,
            Ok(Err(e)) => {
                if serving {
                    tracing::error!(error = %e, "the store is unreachable; reporting not serving");
                }
                false
            }
            Err(_) => false,
        };
        if ok != serving {
            serving = ok;
            let status = if ok {
                tracing::info!("the store is reachable again; reporting serving");
                tonic_health::ServingStatus::Serving
            } else {
                tonic_health::ServingStatus::NotServing
            };
            health.set_service_status("", status).await;
            health
                .set_service_status(
                    <AgentServiceServer<Agents> as tonic::server::NamedService>::NAME,
                    status,
                )
                .await;
            health
                .set_service_status(
                    <QueryServiceServer<Queries> as tonic::server::NamedService>::NAME,
                    status,
                )
                .await;
        }
    }
}

/// The fleet's posture and each cluster's now: the nodes the store knows and the expected
/// ones, with their state, and their open findings counted.
fn summarize(
    cfg: &Config,
    nodes: Vec<crate::store::NodeInfo>,
    counts: &[crate::store::FindingCount],
) -> (
    lockdown_proto::v1::Posture,
    Vec<lockdown_proto::v1::Posture>,
) {
    let members = crate::posture::members(
        nodes,
        &cfg.expected_nodes,
        std::time::SystemTime::now(),
        cfg.stale_after,
    );
    crate::posture::summarize(&members, counts)
}

pub(super) fn now() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

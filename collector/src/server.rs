//! `lockdown-collector serve`: the agents' stream in, the readers' queries out.
//!
//! One writer thread owns the store's write connection and commits whatever the streams have
//! queued in one transaction (group commit: one fsync for many agents), then answers each
//! stream with its ack. Queries use a second, read-only connection. Nothing an agent or a
//! reader sends can stop the server: malformed input ends that stream with a status.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lockdown_proto::v1::agent_service_server::{AgentService, AgentServiceServer};
use lockdown_proto::v1::query_service_server::{QueryService, QueryServiceServer};
use lockdown_proto::v1::{
    Ack, AgentMessage, CollectorMessage, Event, GetNodeRequest, ListEventsRequest,
    ListEventsResponse, ListNodesRequest, ListNodesResponse, Node, SlowDown, StoredEvent,
    WatchEventsRequest, agent_message, collector_message,
};
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};
use tonic::{Request, Response, Status, Streaming};

use crate::admit;
use crate::config::Config;
use crate::store::{Batch, EventStore, Filter, NodeInfo, Store, StoreError};

pub use crate::admit::MAX_BATCH_EVENTS;
/// How long a new stream may take to send its Hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Most queued writer jobs before streams wait (backpressure, not loss).
const WRITER_QUEUE: usize = 1024;
/// How long a stopping collector waits for open streams to end before it exits anyway.
const STOP_GRACE: Duration = Duration::from_secs(5);

enum Job {
    Insert {
        node: String,
        epoch: u64,
        covers_from: u64,
        events: Vec<Event>,
        reply: oneshot::Sender<Result<u64, String>>,
    },
    Touch(NodeInfo),
    /// A new stream: everything below `first_unacked` was acknowledged before.
    Settle {
        node: String,
        epoch: u64,
        first_unacked: u64,
        reply: oneshot::Sender<Result<u64, String>>,
    },
    Retain {
        max_age: Option<Duration>,
        max_events: Option<u64>,
    },
}

/// State shared by the services.
struct Shared {
    cfg: Config,
    writer: mpsc::Sender<Job>,
    reader: Arc<Mutex<Box<dyn EventStore>>>,
    /// Bumped after every commit, for WatchEvents.
    committed: watch::Sender<u64>,
    /// Set once when the collector starts to stop: no new streams, open ones end.
    stopping: watch::Sender<bool>,
    /// Open streams per node.
    connected: Mutex<HashMap<String, usize>>,
    streams: Arc<Semaphore>,
    /// With a separate reader CA: the agents' and the readers' trust anchors, to tell which
    /// CA issued a client certificate (the handshake accepts both).
    split_cas: Option<(Anchors, Anchors)>,
}

/// Trust anchors parsed from a PEM bundle.
struct Anchors(Vec<rustls_pki_types::TrustAnchor<'static>>);

impl Anchors {
    fn from_pem(path: &std::path::Path, pem: &[u8]) -> Result<Anchors, ServeError> {
        use rustls_pki_types::pem::PemObject;
        let bad = |message: String| ServeError::Tls {
            path: path.display().to_string(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, message),
        };
        let mut out = Vec::new();
        for der in rustls_pki_types::CertificateDer::pem_slice_iter(pem) {
            let der = der.map_err(|e| bad(format!("not a PEM certificate bundle: {e}")))?;
            let anchor = webpki::anchor_from_trusted_cert(&der)
                .map_err(|e| bad(format!("not a CA certificate: {e}")))?;
            out.push(anchor.to_owned());
        }
        if out.is_empty() {
            return Err(bad("no certificate in it".into()));
        }
        Ok(Anchors(out))
    }

    /// Whether the peer's chain leads to one of these anchors, for client authentication.
    fn issued(&self, certs: Option<&[rustls_pki_types::CertificateDer<'_>]>) -> bool {
        let Some((ee, intermediates)) = certs.and_then(|c| c.split_first()) else {
            return false;
        };
        let Ok(ee) = webpki::EndEntityCert::try_from(ee) else {
            return false;
        };
        ee.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &self.0,
            intermediates,
            rustls_pki_types::UnixTime::now(),
            webpki::KeyUsage::client_auth(),
            None,
            None,
        )
        .is_ok()
    }
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

/// The configured store: one instance for the writer, one for the readers.
fn open_store(cfg: &Config) -> Result<Box<dyn EventStore>, ServeError> {
    Ok(Box::new(Store::open(&cfg.database)?))
}

/// Serves until `shutdown` resolves.
pub async fn serve(
    cfg: Config,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    if let Some(dir) = cfg.database.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let mut store = open_store(&cfg)?;
    let reader = open_store(&cfg)?;
    let (writer, mut jobs) = mpsc::channel::<Job>(WRITER_QUEUE);
    let (committed, _) = watch::channel(0u64);
    let committed_tx = committed.clone();
    // If the writer ever stops (a panic), nothing can be acked again: stop serving and exit
    // non-zero, so that the service manager restarts the collector.
    let (writer_gone_tx, writer_gone) = oneshot::channel::<()>();
    std::thread::Builder::new()
        .name("store-writer".into())
        .spawn(move || {
            let _gone = DropSignal(Some(writer_gone_tx));
            writer_loop(store.as_mut(), &mut jobs, &committed_tx);
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
        reader: Arc::new(Mutex::new(reader)),
        committed,
        stopping: watch::channel(false).0,
        connected: Mutex::new(HashMap::new()),
    });
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
                    })
                    .await;
            }
        });
    }

    let (health, health_svc) = tonic_health::server::health_reporter();
    health.set_serving::<AgentServiceServer<Agents>>().await;
    health.set_serving::<QueryServiceServer<Queries>>().await;
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
    tracing::info!(listen = %cfg.listen, tls = cfg.tls.is_some(), database = %cfg.database.display(), "collector serving");
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

/// Sends on drop, also when the thread that holds it unwinds from a panic.
struct DropSignal(Option<oneshot::Sender<()>>);

impl Drop for DropSignal {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

/// Commits queued jobs, many at a time.
fn writer_loop(
    store: &mut dyn EventStore,
    jobs: &mut mpsc::Receiver<Job>,
    committed: &watch::Sender<u64>,
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
                    let result = store.settle(&node, epoch, first_unacked, &now());
                    if let Err(e) = &result {
                        tracing::error!(error = %e, node, "cannot record the agent's earlier acks");
                    }
                    let _ = reply.send(result.map_err(|e| e.to_string()));
                    committed.send_modify(|n| *n += 1);
                }
                Job::Retain {
                    max_age,
                    max_events,
                } => match store.retain(max_age, max_events) {
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
        let result = store.insert_many(&batches, &touches);
        match result {
            Ok(acks) => {
                for ((_, _, _, _, reply), ack) in inserts.into_iter().zip(acks) {
                    let _ = reply.send(Ok(ack));
                }
                committed.send_modify(|n| *n += 1);
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot commit events; agents will resend");
                for (_, _, _, _, reply) in inserts {
                    let _ = reply.send(Err(e.to_string()));
                }
            }
        }
    }
}

/// The identities a peer's certificate is valid for, checked against `names`.
fn cert_names_match(
    req_certs: Option<&[rustls_pki_types::CertificateDer<'_>]>,
    name: &str,
) -> bool {
    let Some(cert) = req_certs.and_then(|c| c.first()) else {
        return false;
    };
    let Ok(ee) = webpki::EndEntityCert::try_from(cert) else {
        return false;
    };
    let Ok(server_name) = rustls_pki_types::ServerName::try_from(name) else {
        return false;
    };
    ee.verify_is_valid_for_subject_name(&server_name).is_ok()
}

/// The agents' service.
pub struct Agents(Arc<Shared>);
/// The readers' service.
pub struct Queries(Arc<Shared>);

#[tonic::async_trait]
impl AgentService for Agents {
    type ReportStream = ReceiverStream<Result<CollectorMessage, Status>>;

    async fn report(
        &self,
        req: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Self::ReportStream>, Status> {
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
        let epoch = hello.spool_epoch;
        admit::hello(&hello)?;
        if shared.cfg.readers.contains(&node) {
            // Readers are told apart by name: a certificate named like a reader is never an
            // agent, so no agent can also read.
            tracing::warn!(target: "audit", node, remote = ?remote, "an agent stream used a reader's name");
            return Err(Status::permission_denied(format!(
                "{node:?} is a reader name, not a node name"
            )));
        }
        if let Some((agents, _)) = &shared.split_cas
            && !agents.issued(certs.as_deref().map(Vec::as_slice))
        {
            tracing::warn!(target: "audit", node, remote = ?remote, "an agent stream with a certificate the agents' CA did not issue");
            return Err(Status::permission_denied(
                "agent certificates must be issued by the agents' CA (tls.client_ca)",
            ));
        }
        if shared.cfg.tls.is_some() && !cert_names_match(certs.as_deref().map(Vec::as_slice), &node)
        {
            tracing::warn!(target: "audit", node, remote = ?remote, "agent claimed a node name its certificate does not carry");
            return Err(Status::permission_denied(format!(
                "the client certificate is not valid for node {node:?}"
            )));
        }
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
            let result = stream_loop(
                &shared,
                &node,
                epoch,
                hello.first_unacked_seq,
                &mut inbound,
                &tx,
            )
            .await;
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
    node: &str,
    epoch: u64,
    first_unacked: u64,
    inbound: &mut Streaming<AgentMessage>,
    tx: &mpsc::Sender<Result<CollectorMessage, Status>>,
) -> Result<(), Status> {
    let ack = |seq| CollectorMessage {
        msg: Some(collector_message::Msg::Ack(Ack { seq })),
    };
    // What is already stored, or was acknowledged by an earlier store (the agent says it
    // trimmed everything below its first unacknowledged event): the agent may trim it now.
    let stored = {
        let (reply, answer) = oneshot::channel();
        shared
            .writer
            .send(Job::Settle {
                node: node.to_string(),
                epoch,
                first_unacked,
                reply,
            })
            .await
            .map_err(|_| Status::unavailable("store writer stopped"))?;
        answer
            .await
            .map_err(|_| Status::unavailable("store writer stopped"))?
            .map_err(Status::unavailable)?
    };
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
                let (reply, answer) = oneshot::channel();
                shared
                    .writer
                    .send(Job::Insert {
                        node: node.to_string(),
                        epoch,
                        covers_from: batch.covers_from,
                        events: batch.events,
                        reply,
                    })
                    .await
                    .map_err(|_| Status::unavailable("store writer stopped"))?;
                let acked = answer
                    .await
                    .map_err(|_| Status::unavailable("store writer stopped"))?
                    .map_err(Status::unavailable)?;
                if tx.send(Ok(ack(acked))).await.is_err() {
                    return Ok(());
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

fn now() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

impl Queries {
    fn authorize<T>(&self, req: &Request<T>) -> Result<(), Status> {
        if self.0.cfg.tls.is_none() {
            return Ok(()); // plaintext exists only on loopback
        }
        let certs = req.peer_certs();
        let certs = certs.as_deref().map(Vec::as_slice);
        let named = |names: &[String]| names.iter().any(|n| cert_names_match(certs, n));
        let allowed = match &self.0.split_cas {
            // A separate reader CA: what it issued may read, narrowed by `readers` if set.
            Some((_, readers)) => {
                readers.issued(certs)
                    && (self.0.cfg.readers.is_empty() || named(&self.0.cfg.readers))
            }
            None => named(&self.0.cfg.readers),
        };
        if allowed {
            Ok(())
        } else {
            tracing::warn!(target: "audit", remote = ?req.remote_addr(), "query from a certificate not in readers");
            Err(Status::permission_denied(
                "this client certificate is not one of the collector's readers",
            ))
        }
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn EventStore) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, Status> {
        let shared = Arc::clone(&self.0);
        tokio::task::spawn_blocking(move || f(shared.reader.lock().expect("lock").as_ref()))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| Status::unavailable(e.to_string()))
    }

    fn node(&self, info: NodeInfo) -> Node {
        let connected = self
            .0
            .connected
            .lock()
            .expect("lock")
            .contains_key(&info.node);
        Node {
            node: info.node,
            cluster: info.cluster,
            agent_version: info.agent_version,
            component_versions: info.component_versions.into_iter().collect(),
            last_seen: info.last_seen,
            connected,
            open_findings: info.open_findings.into_iter().collect(),
            last_seq: info.acked,
        }
    }
}

fn filter(f: Option<lockdown_proto::v1::EventFilter>) -> Result<Filter, Status> {
    let f = f.unwrap_or_default();
    let opt = |s: String| (!s.is_empty()).then_some(s);
    for t in [&f.since, &f.until] {
        if !t.is_empty() && humantime::parse_rfc3339(t).is_err() {
            return Err(Status::invalid_argument(format!("{t:?} is not RFC 3339")));
        }
    }
    if !f.min_severity.is_empty()
        && !["info", "low", "medium", "high", "critical"].contains(&f.min_severity.as_str())
    {
        return Err(Status::invalid_argument(format!(
            "{:?} is not a severity",
            f.min_severity
        )));
    }
    Ok(Filter {
        node: opt(f.node),
        kind: opt(f.kind),
        min_severity: opt(f.min_severity),
        rule_id: opt(f.rule_id),
        since: opt(f.since),
        until: opt(f.until),
    })
}

fn stored(s: crate::store::Stored) -> StoredEvent {
    StoredEvent {
        cursor: s.cursor,
        event: Some(s.event),
    }
}

#[tonic::async_trait]
impl QueryService for Queries {
    type WatchEventsStream = ReceiverStream<Result<StoredEvent, Status>>;

    async fn list_events(
        &self,
        req: Request<ListEventsRequest>,
    ) -> Result<Response<ListEventsResponse>, Status> {
        self.authorize(&req)?;
        let r = req.into_inner();
        let filter = filter(r.filter)?;
        let size = match r.page_size {
            0 => 100,
            n => n.min(1000) as usize,
        };
        let after: u64 = if r.page_token.is_empty() {
            0
        } else {
            r.page_token
                .parse()
                .map_err(|_| Status::invalid_argument("page_token is not one this server gave"))?
        };
        let events = self.read(move |s| s.list(&filter, after, size)).await?;
        let next_page_token = if events.len() == size {
            events
                .last()
                .map(|e| e.cursor.to_string())
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(ListEventsResponse {
            events: events.into_iter().map(stored).collect(),
            next_page_token,
        }))
    }

    async fn watch_events(
        &self,
        req: Request<WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        self.authorize(&req)?;
        let r = req.into_inner();
        let filter = filter(r.filter)?;
        let mut after = r.after_cursor;
        if after == 0 && !r.from_start {
            after = self.read(|s| s.max_cursor()).await?;
        }
        let (tx, rx) = mpsc::channel(256);
        let shared = Arc::clone(&self.0);
        let mut committed = shared.committed.subscribe();
        let mut stopping = shared.stopping.subscribe();
        tokio::spawn(async move {
            loop {
                let f = filter.clone();
                let s2 = Arc::clone(&shared);
                let page = tokio::task::spawn_blocking(move || {
                    s2.reader.lock().expect("lock").list(&f, after, 500)
                })
                .await;
                let page = match page {
                    Ok(Ok(p)) => p,
                    Ok(Err(e)) => {
                        let _ = tx.send(Err(Status::unavailable(e.to_string()))).await;
                        return;
                    }
                    Err(_) => return,
                };
                let full = page.len() == 500;
                for e in page {
                    after = e.cursor;
                    if tx.send(Ok(stored(e))).await.is_err() {
                        return; // the reader went away
                    }
                }
                if !full {
                    tokio::select! {
                        changed = committed.changed() => if changed.is_err() { return },
                        () = tx.closed() => return,
                        stopped = async { stopping.wait_for(|s| *s).await.is_ok() } => {
                            let _ = stopped;
                            let _ = tx.send(Err(Status::unavailable("the collector is stopping; resume from the last cursor"))).await;
                            return;
                        }
                    }
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn list_nodes(
        &self,
        req: Request<ListNodesRequest>,
    ) -> Result<Response<ListNodesResponse>, Status> {
        self.authorize(&req)?;
        let nodes = self.read(|s| s.nodes()).await?;
        Ok(Response::new(ListNodesResponse {
            nodes: nodes.into_iter().map(|n| self.node(n)).collect(),
        }))
    }

    async fn get_node(&self, req: Request<GetNodeRequest>) -> Result<Response<Node>, Status> {
        self.authorize(&req)?;
        let name = req.into_inner().node;
        let nodes = self.read(|s| s.nodes()).await?;
        let info = nodes
            .into_iter()
            .find(|n| n.node == name)
            .ok_or_else(|| Status::not_found(format!("no node {name:?}")))?;
        Ok(Response::new(self.node(info)))
    }
}

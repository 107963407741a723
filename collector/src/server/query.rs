//! The readers' service: list and watch events by cursor, list nodes, from the store's read
//! side; a watch wakes on each commit.

use std::sync::Arc;

use lockdown_proto::v1::query_service_server::QueryService;
use lockdown_proto::v1::{
    GetNodeRequest, ListEventsRequest, ListEventsResponse, ListNodesRequest, ListNodesResponse,
    Node, StoredEvent, WatchEventsRequest,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::{Shared, auth};
use crate::store::{EventStore, Filter, NodeInfo, StoreError};

/// The readers' service.
pub struct Queries(pub(super) Arc<Shared>);

impl Queries {
    fn authorize<T>(&self, req: &Request<T>) -> Result<(), Status> {
        auth::reader(&self.0.cfg, self.0.split_cas.as_ref(), req)
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

//! The readers' service: list and watch events by cursor, list nodes, from the store's read
//! side; a watch wakes on each commit.

use std::sync::Arc;
use std::time::SystemTime;

use lockdown_proto::v1::query_service_server::QueryService;
use lockdown_proto::v1::{
    AddExceptionRequest, Exception, Finding, FindingFilter, GetNodeRequest, ListEventsRequest,
    ListEventsResponse, ListExceptionsRequest, ListExceptionsResponse, ListFindingsRequest,
    ListFindingsResponse, ListNodesRequest, ListNodesResponse, Node, RemoveExceptionRequest,
    StoredEvent, SummaryRequest, SummaryResponse, WatchEventsRequest,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::{Shared, auth, exceptions};
use crate::posture::NodeState;
use crate::store::{
    EventStore, Filter, FindingCursor, FindingQuery, FindingRow, NodeInfo, StoreError,
};

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
        super::read(&self.0, f).await
    }

    fn node(&self, info: NodeInfo) -> Node {
        let connected = self
            .0
            .connected
            .lock()
            .expect("lock")
            .contains_key(&info.node);
        let state = NodeState::of(&info.last_seen, SystemTime::now(), self.0.cfg.stale_after);
        Node {
            state: state.as_str().into(),
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

fn severity_ok(s: &str) -> Result<(), Status> {
    if s.is_empty() || crate::store::SEVERITIES.contains(&s) {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!("{s:?} is not a severity")))
    }
}

fn finding_query(f: Option<FindingFilter>) -> Result<FindingQuery, Status> {
    let f = f.unwrap_or_default();
    severity_ok(&f.min_severity)?;
    if !["", "fail", "warn"].contains(&f.status.as_str()) {
        return Err(Status::invalid_argument(format!(
            "{:?} is not a status (fail or warn)",
            f.status
        )));
    }
    let excepted = match f.excepted.as_str() {
        "" => None,
        "yes" => Some(true),
        "no" => Some(false),
        other => {
            return Err(Status::invalid_argument(format!(
                "excepted is yes or no, not {other:?}"
            )));
        }
    };
    let opt = |s: String| (!s.is_empty()).then_some(s);
    Ok(FindingQuery {
        cluster: opt(f.cluster),
        node: opt(f.node),
        rule_id: opt(f.rule_id),
        cis: opt(f.cis.trim_end_matches('.').to_string()),
        min_severity: opt(f.min_severity),
        status: opt(f.status),
        excepted,
        now: super::now(),
    })
}

/// A findings page token: the last row's (node, path, key), as JSON.
fn finding_token(t: &str) -> Result<Option<FindingCursor>, Status> {
    if t.is_empty() {
        return Ok(None);
    }
    serde_json::from_str(t)
        .map(Some)
        .map_err(|_| Status::invalid_argument("page_token is not one this server gave"))
}

fn finding(r: FindingRow) -> Finding {
    let f = r.finding;
    Finding {
        node: r.node,
        cluster: r.cluster,
        path: f.path,
        key: f.key,
        rule_id: f.rule_id,
        cis: f.cis,
        title: f.title,
        severity: f.severity,
        status: f.status,
        component: f.component,
        version: r.version,
        flag: f.flag,
        observed: f.observed,
        expected: f.expected,
        since: r.since,
        excepted: r.exception_id.is_some(),
        exception_id: r.exception_id.unwrap_or_default(),
    }
}

fn stored(s: crate::store::Stored) -> StoredEvent {
    StoredEvent {
        cursor: s.cursor,
        event: Some(s.event),
    }
}

/// Every stored event that matches after `after`, in commit order, then each as it is
/// committed (as `each` makes it), until the receiver goes away. It ends with an error
/// when the store cannot be read or the collector stops; the reader resumes after the last
/// cursor it got. `WatchEvents` and the dashboard's live tail.
pub(super) fn tail<T: Send + 'static>(
    shared: Arc<Shared>,
    filter: Filter,
    mut after: u64,
    each: fn(crate::store::Stored) -> T,
) -> mpsc::Receiver<Result<T, Status>> {
    const PAGE: usize = 500;
    let (tx, rx) = mpsc::channel(256);
    tokio::spawn(async move {
        let mut committed = shared.committed.subscribe();
        let mut stopping = shared.stopping.subscribe();
        loop {
            let f = filter.clone();
            let page = match super::read(&shared, move |s| s.list(&f, after, PAGE)).await {
                Ok(p) => p,
                Err(status) => {
                    let _ = tx.send(Err(status)).await;
                    return;
                }
            };
            let full = page.len() == PAGE;
            for e in page {
                after = e.cursor;
                if tx.send(Ok(each(e))).await.is_err() {
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
    rx
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
        let events = tail(Arc::clone(&self.0), filter, after, stored);
        Ok(Response::new(ReceiverStream::new(events)))
    }

    async fn list_nodes(
        &self,
        req: Request<ListNodesRequest>,
    ) -> Result<Response<ListNodesResponse>, Status> {
        self.authorize(&req)?;
        let nodes = self.read(|s| s.nodes()).await?;
        let mut missing: Vec<Node> = (self.0.cfg.expected_nodes.iter())
            .filter(|e| !nodes.iter().any(|n| &n.node == *e))
            .map(|e| Node {
                node: e.clone(),
                state: NodeState::Missing.as_str().into(),
                ..Default::default()
            })
            .collect();
        let mut nodes: Vec<Node> = nodes.into_iter().map(|n| self.node(n)).collect();
        nodes.append(&mut missing);
        nodes.sort_by(|a, b| a.node.cmp(&b.node));
        Ok(Response::new(ListNodesResponse { nodes }))
    }

    async fn list_findings(
        &self,
        req: Request<ListFindingsRequest>,
    ) -> Result<Response<ListFindingsResponse>, Status> {
        self.authorize(&req)?;
        let r = req.into_inner();
        let q = finding_query(r.filter)?;
        let after = finding_token(&r.page_token)?;
        let size = match r.page_size {
            0 => 100,
            n => n.min(1000) as usize,
        };
        let rows = (self)
            .read(move |s| s.findings(&q, after.as_ref(), size))
            .await?;
        let next_page_token = match rows.last() {
            Some(last) if rows.len() == size => {
                let f = &last.finding;
                serde_json::to_string(&(&last.node, &f.path, &f.key)).expect("strings serialise")
            }
            _ => String::new(),
        };
        Ok(Response::new(ListFindingsResponse {
            findings: rows.into_iter().map(finding).collect(),
            next_page_token,
        }))
    }

    async fn summary(
        &self,
        req: Request<SummaryRequest>,
    ) -> Result<Response<SummaryResponse>, Status> {
        self.authorize(&req)?;
        let at = super::now();
        let (nodes, counts) = self
            .read(move |s| Ok((s.nodes()?, s.finding_counts(&at)?)))
            .await?;
        let (fleet, clusters) = super::summarize(&self.0.cfg, nodes, &counts);
        Ok(Response::new(SummaryResponse {
            fleet: Some(fleet),
            clusters,
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

    async fn add_exception(
        &self,
        req: Request<AddExceptionRequest>,
    ) -> Result<Response<Exception>, Status> {
        let author = auth::admin(&self.0.cfg, self.0.split_cas.as_ref(), &req)?;
        let added = exceptions::add(&self.0, author, req.into_inner()).await?;
        Ok(Response::new(added))
    }

    async fn list_exceptions(
        &self,
        req: Request<ListExceptionsRequest>,
    ) -> Result<Response<ListExceptionsResponse>, Status> {
        self.authorize(&req)?;
        let all = req.into_inner().all;
        Ok(Response::new(ListExceptionsResponse {
            exceptions: exceptions::list(&self.0, all).await?,
        }))
    }

    async fn remove_exception(
        &self,
        req: Request<RemoveExceptionRequest>,
    ) -> Result<Response<Exception>, Status> {
        let by = auth::admin(&self.0.cfg, self.0.split_cas.as_ref(), &req)?;
        let id = req.into_inner().id;
        Ok(Response::new(exceptions::remove(&self.0, by, id).await?))
    }
}

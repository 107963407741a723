//! The collector's command-line client (`lockdown-collector events`, `nodes`, `findings`,
//! `summary`): a reader of the query API over mTLS, printing tables or JSON.

use anyhow::Context as _;
use std::path::PathBuf;

use clap::{Args, ValueEnum};
use lockdown_proto::ClientTls;
use lockdown_proto::outln;
use lockdown_proto::v1::query_service_client::QueryServiceClient;
use lockdown_proto::v1::{
    AddExceptionRequest, EventFilter, Exception, FindingFilter, ListEventsRequest,
    ListExceptionsRequest, ListFindingsRequest, ListNodesRequest, Posture, RemoveExceptionRequest,
    SummaryRequest, WatchEventsRequest,
};

/// How a client reaches the collector.
#[derive(Args)]
pub struct Conn {
    /// Collector address.
    #[arg(
        long,
        env = "LOCKDOWN_COLLECTOR",
        default_value = "https://localhost:7443"
    )]
    pub addr: String,
    /// CA bundle of the collector's certificate.
    #[arg(long, env = "LOCKDOWN_CA")]
    pub ca: Option<PathBuf>,
    /// Reader certificate.
    #[arg(long, env = "LOCKDOWN_CERT")]
    pub cert: Option<PathBuf>,
    /// Reader key.
    #[arg(long, env = "LOCKDOWN_KEY")]
    pub key: Option<PathBuf>,
}

/// How a client prints.
#[derive(Clone, Copy, ValueEnum)]
pub enum Format {
    /// One line per event or node.
    Table,
    /// Each event's JSON body, one per line; nodes as a JSON array.
    Json,
}

async fn client(conn: &Conn) -> anyhow::Result<QueryServiceClient<tonic::transport::Channel>> {
    let tls = match (&conn.ca, &conn.cert, &conn.key) {
        (Some(ca), Some(cert), Some(key)) => Some(ClientTls {
            ca: ca.clone(),
            cert: cert.clone(),
            key: key.clone(),
            server_name: None,
        }),
        (None, None, None) => None,
        _ => anyhow::bail!("--ca, --cert and --key go together"),
    };
    let channel = lockdown_proto::endpoint(&conn.addr, tls.as_ref())
        .map_err(anyhow::Error::msg)?
        .connect()
        .await
        .with_context(|| format!("cannot reach {}", conn.addr))?;
    Ok(QueryServiceClient::new(channel).max_decoding_message_size(16 << 20))
}

/// A status's message with the errors under it, so that "transport error" says what failed
/// (a certificate refused, a name that does not match, a connection refused).
fn status_text(s: &tonic::Status) -> String {
    let mut text = s.message().to_string();
    let mut source = std::error::Error::source(s);
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

fn print_event(e: &lockdown_proto::v1::StoredEvent, format: Format) {
    let Some(ev) = &e.event else { return };
    match format {
        Format::Json => outln!("{}", String::from_utf8_lossy(&ev.body)),
        Format::Table => outln!(
            "{:<24} {:<16} {:>6} {:<18} {:<8} {} {}",
            ev.time,
            ev.node,
            ev.seq,
            ev.kind,
            ev.severity,
            ev.rule_id,
            ev.path
        ),
    }
}

/// Lists (and with `follow`, watches) events that match `filter`.
pub async fn events(
    conn: Conn,
    filter: EventFilter,
    follow: bool,
    format: Format,
) -> anyhow::Result<()> {
    let mut c = client(&conn).await?;
    // Following, the watch below lists from the start as well, and it rides out a collector
    // or database that is away: a tail started during an outage prints once it is over.
    if !follow {
        let mut token = String::new();
        loop {
            let page = c
                .list_events(ListEventsRequest {
                    filter: Some(filter.clone()),
                    page_size: 1000,
                    page_token: token.clone(),
                })
                .await
                .map_err(|s| anyhow::anyhow!("{}: {}", conn.addr, status_text(&s)))?
                .into_inner();
            for e in &page.events {
                print_event(e, format);
            }
            if page.next_page_token.is_empty() {
                return Ok(());
            }
            token = page.next_page_token;
        }
    }
    // Follow until interrupted: when the collector restarts or the network breaks, reconnect
    // and resume after the last event printed, so nothing is skipped or printed twice.
    let mut last_cursor = 0;
    let mut backoff = std::time::Duration::from_millis(200);
    loop {
        let watched = async {
            let mut stream = c
                .watch_events(WatchEventsRequest {
                    filter: Some(filter.clone()),
                    // Nothing printed yet: from the first event, which may be stored meanwhile.
                    after_cursor: last_cursor,
                    from_start: last_cursor == 0,
                })
                .await?
                .into_inner();
            while let Some(e) = stream.message().await? {
                last_cursor = e.cursor;
                print_event(&e, format);
            }
            Ok::<(), tonic::Status>(())
        }
        .await;
        match watched {
            Err(s)
                if matches!(
                    s.code(),
                    tonic::Code::PermissionDenied
                        | tonic::Code::Unauthenticated
                        | tonic::Code::InvalidArgument
                ) =>
            {
                anyhow::bail!("{}: {}", conn.addr, status_text(&s));
            }
            Err(s) => eprintln!(
                "lockdown-collector: {}: {}; resuming after cursor {last_cursor}",
                conn.addr,
                status_text(&s)
            ),
            Ok(()) => eprintln!(
                "lockdown-collector: {}: the stream ended; resuming after cursor {last_cursor}",
                conn.addr
            ),
        }
        loop {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(std::time::Duration::from_secs(5));
            match client(&conn).await {
                Ok(new) => {
                    c = new;
                    backoff = std::time::Duration::from_millis(200);
                    break;
                }
                Err(_) => continue,
            }
        }
    }
}

/// Open findings by severity, most severe first: `critical=1 high=3` (`none` for none).
/// Severities, worst first.
const ORDER: [&str; 5] = ["critical", "high", "medium", "low", "info"];

fn by_severity(counts: &std::collections::HashMap<String, u32>) -> String {
    let mut parts: Vec<String> = ORDER
        .iter()
        .filter_map(|s| {
            counts
                .get(*s)
                .filter(|n| **n > 0)
                .map(|n| format!("{s}={n}"))
        })
        .collect();
    let mut other: Vec<_> = counts
        .iter()
        .filter(|(s, n)| !ORDER.contains(&s.as_str()) && **n > 0)
        .collect();
    other.sort();
    parts.extend(other.into_iter().map(|(s, n)| format!("{s}={n}")));
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(" ")
    }
}

/// Lists the nodes with their state.
pub async fn nodes(conn: Conn, format: Format) -> anyhow::Result<()> {
    let mut c = client(&conn).await?;
    let nodes = c
        .list_nodes(ListNodesRequest {})
        .await
        .map_err(|s| anyhow::anyhow!("{}: {}", conn.addr, status_text(&s)))?
        .into_inner()
        .nodes;
    for n in nodes {
        match format {
            Format::Json => outln!(
                "{}",
                serde_json::json!({
                    "node": n.node, "cluster": n.cluster, "agent_version": n.agent_version,
                    "component_versions": n.component_versions, "last_seen": n.last_seen,
                    "connected": n.connected, "open_findings": n.open_findings, "last_seq": n.last_seq,
                    "state": n.state,
                })
            ),
            Format::Table => outln!(
                "{:<24} {:<10} {:<12} last seen {:<24} seq {:>8} findings {}",
                n.node,
                n.state,
                n.agent_version,
                n.last_seen,
                n.last_seq,
                by_severity(&n.open_findings)
            ),
        }
    }
    Ok(())
}

/// Lists what is open on every node now: every page, one table row or one JSON array.
pub async fn findings(conn: Conn, filter: FindingFilter, format: Format) -> anyhow::Result<()> {
    let mut c = client(&conn).await?;
    let mut all = Vec::new();
    let mut token = String::new();
    loop {
        let page = c
            .list_findings(ListFindingsRequest {
                filter: Some(filter.clone()),
                page_size: 1000,
                page_token: token,
            })
            .await
            .map_err(|s| anyhow::anyhow!("{}: {}", conn.addr, status_text(&s)))?
            .into_inner();
        all.extend(page.findings);
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    match format {
        Format::Json => {
            let list: Vec<serde_json::Value> = all
                .iter()
                .map(|f| {
                    serde_json::json!({
                        "node": f.node, "cluster": f.cluster, "rule_id": f.rule_id,
                        "cis": f.cis, "severity": f.severity, "status": f.status,
                        "path": f.path, "since": f.since, "excepted": f.excepted,
                        "exception_id": f.excepted.then_some(f.exception_id),
                        "title": f.title, "component": f.component, "version": f.version,
                        "flag": f.flag, "observed": f.observed, "expected": f.expected,
                        "key": f.key,
                    })
                })
                .collect();
            outln!("{}", serde_json::Value::Array(list));
        }
        Format::Table => {
            let rank = |s: &str| ORDER.iter().position(|o| *o == s).unwrap_or(ORDER.len());
            all.sort_by(|a, b| {
                (&a.cluster, &a.node, rank(&a.severity), &a.rule_id, &a.path).cmp(&(
                    &b.cluster,
                    &b.node,
                    rank(&b.severity),
                    &b.rule_id,
                    &b.path,
                ))
            });
            for f in &all {
                let mut excepted = if f.excepted {
                    format!(" (excepted #{})", f.exception_id)
                } else {
                    String::new()
                };
                // A rule open several times in one file: say which instance.
                if f.key != f.rule_id && !f.observed.is_empty() {
                    let seen: String = f.observed.chars().take(48).collect();
                    excepted = format!(" [{seen}]{excepted}");
                }
                outln!(
                    "{:<24} {:<9} {:<5} {:<8} {:<32} {}{excepted}",
                    f.node,
                    f.severity,
                    f.status,
                    if f.cis.is_empty() { "-" } else { &f.cis },
                    f.rule_id,
                    f.path
                );
            }
            outln!("{} open findings", all.len());
        }
    }
    Ok(())
}

/// Prints the fleet's posture and each cluster's.
pub async fn summary(conn: Conn, format: Format) -> anyhow::Result<()> {
    let mut c = client(&conn).await?;
    let s = c
        .summary(SummaryRequest {})
        .await
        .map_err(|s| anyhow::anyhow!("{}: {}", conn.addr, status_text(&s)))?
        .into_inner();
    let count = |c: &lockdown_proto::v1::CisCount| {
        serde_json::json!({
            "cis": c.cis, "pass": c.pass, "fail": c.fail, "unknown": c.unknown,
            "excepted": c.excepted,
        })
    };
    let json = |p: &Posture| {
        serde_json::json!({
            "cluster": p.cluster,
            "nodes_by_state": p.nodes_by_state,
            "open_by_severity": p.open_by_severity,
            "excepted": p.excepted,
            "cis": p.cis.iter().map(count).collect::<Vec<_>>(),
            "sections": p.sections.iter().map(count).collect::<Vec<_>>(),
        })
    };
    let fleet = s.fleet.unwrap_or_default();
    match format {
        Format::Json => outln!(
            "{}",
            serde_json::json!({
                "fleet": json(&fleet),
                "clusters": s.clusters.iter().map(json).collect::<Vec<_>>(),
            })
        ),
        Format::Table => {
            for p in std::iter::once(&fleet).chain(&s.clusters) {
                let name = if p.cluster.is_empty() {
                    "fleet"
                } else {
                    &p.cluster
                };
                let states: Vec<String> = ["connected", "stale", "missing"]
                    .iter()
                    .map(|st| format!("{} {st}", p.nodes_by_state.get(*st).unwrap_or(&0)))
                    .collect();
                outln!(
                    "{name}: nodes {}; open findings {} ({} excepted)",
                    states.join(", "),
                    by_severity(&p.open_by_severity),
                    p.excepted
                );
                let clean = p
                    .cis
                    .iter()
                    .filter(|c| c.fail == 0 && c.unknown == 0)
                    .count();
                outln!("  {clean} of {} CIS checks pass on every node", p.cis.len());
                for c in &p.sections {
                    outln!(
                        "  section {:<5} nodes pass {:>5}  fail {:>5} (excepted {:>5})  unknown {:>5}",
                        c.cis,
                        c.pass,
                        c.fail,
                        c.excepted,
                        c.unknown
                    );
                }
                for c in p.cis.iter().filter(|c| c.fail > 0 || c.unknown > 0) {
                    outln!(
                        "  CIS {:<8} pass {:>5}  fail {:>5} (excepted {:>5})  unknown {:>5}",
                        c.cis,
                        c.pass,
                        c.fail,
                        c.excepted,
                        c.unknown
                    );
                }
            }
        }
    }
    Ok(())
}

/// An exceptions command.
pub enum ExceptionCall {
    /// Add one.
    Add(AddExceptionRequest),
    /// List them.
    List {
        /// Also expired and removed ones.
        all: bool,
    },
    /// Remove one.
    Remove(u64),
}

/// Runs an exceptions command and prints what it returns.
pub async fn exceptions(conn: Conn, call: ExceptionCall, format: Format) -> anyhow::Result<()> {
    let mut c = client(&conn).await?;
    let failed = |s: tonic::Status| anyhow::anyhow!("{}: {}", conn.addr, status_text(&s));
    let list = match call {
        ExceptionCall::Add(req) => vec![c.add_exception(req).await.map_err(failed)?.into_inner()],
        ExceptionCall::Remove(id) => vec![
            c.remove_exception(RemoveExceptionRequest { id })
                .await
                .map_err(failed)?
                .into_inner(),
        ],
        ExceptionCall::List { all } => {
            (c.list_exceptions(ListExceptionsRequest { all }).await)
                .map_err(failed)?
                .into_inner()
                .exceptions
        }
    };
    let json = |x: &Exception| {
        serde_json::json!({
            "id": x.id, "rule_id": x.rule_id, "node": x.node, "cluster": x.cluster,
            "path": x.path, "max_severity": x.max_severity, "reason": x.reason,
            "author": x.author, "created": x.created, "expires": x.expires, "state": x.state,
            "removed_by": x.removed_by, "removed_at": x.removed_at,
        })
    };
    match format {
        Format::Json => outln!(
            "{}",
            serde_json::Value::Array(list.iter().map(json).collect())
        ),
        Format::Table => {
            for x in &list {
                let scope = match (x.node.as_str(), x.cluster.as_str()) {
                    ("", "") => "fleet".to_string(),
                    ("", c) => format!("cluster {c}"),
                    (n, _) => format!("node {n}"),
                };
                let path = if x.path.is_empty() {
                    String::new()
                } else {
                    format!(" file {}", x.path)
                };
                outln!(
                    "#{:<5} {:<8} {:<32} {scope}{path}, up to {}, by {} until {}: {}",
                    x.id,
                    x.state,
                    x.rule_id,
                    x.max_severity,
                    x.author,
                    x.expires,
                    x.reason
                );
            }
        }
    }
    Ok(())
}

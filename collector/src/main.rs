//! `lockdown-collector`: thin entry point. `serve` runs the collector; `events` and `nodes`
//! are its clients; `dev-ca` makes development certificates. Exit codes: 0 ok, 1 the server
//! or a query failed, 2 usage or config errors.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use lockdown_collector::config::{Config, DEFAULT_CONFIG_PATH};
use lockdown_collector::{certs, server};
use lockdown_proto::ClientTls;
use lockdown_proto::v1::query_service_client::QueryServiceClient;
use lockdown_proto::v1::{EventFilter, ListEventsRequest, ListNodesRequest, WatchEventsRequest};

use lockdown_proto::outln;

#[derive(Parser)]
#[command(
    name = "lockdown-collector",
    version,
    about = "kube-lockdown collector"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the collector until SIGTERM or SIGINT.
    Serve {
        /// Config file (default /etc/kube-lockdown/collector.yaml).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Serve plaintext on this loopback address instead of mTLS (development only;
        /// refused for any address that is not loopback).
        #[arg(long)]
        insecure_listen_loopback: Option<SocketAddr>,
        /// Database file (overrides the config).
        #[arg(long)]
        database: Option<PathBuf>,
    },
    /// List stored events, oldest first; --follow keeps printing new ones.
    Events {
        #[command(flatten)]
        conn: Conn,
        /// Only this node.
        #[arg(long)]
        node: Option<String>,
        /// Only this kind (finding_raised, file_modified, ...).
        #[arg(long)]
        kind: Option<String>,
        /// Only findings at or above this severity.
        #[arg(long)]
        min_severity: Option<String>,
        /// Only this rule.
        #[arg(long)]
        rule: Option<String>,
        /// Only events newer than this long ago (1h, 30m, 7d).
        #[arg(long)]
        since: Option<humantime::Duration>,
        /// Keep printing new events.
        #[arg(long)]
        follow: bool,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// List the nodes the collector knows.
    Nodes {
        #[command(flatten)]
        conn: Conn,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Write a development CA and certificates for the collector, agents and readers.
    DevCa {
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// Agent node names (one certificate each).
        #[arg(long = "node")]
        nodes: Vec<String>,
        /// Reader names (one certificate each).
        #[arg(long = "reader", default_value = "reader")]
        readers: Vec<String>,
        /// Extra DNS names for the collector certificate.
        #[arg(long = "collector-name")]
        collector_names: Vec<String>,
    },
}

/// How a client reaches the collector.
#[derive(Args)]
struct Conn {
    /// Collector address.
    #[arg(
        long,
        env = "LOCKDOWN_COLLECTOR",
        default_value = "https://localhost:7443"
    )]
    addr: String,
    /// CA bundle of the collector's certificate.
    #[arg(long, env = "LOCKDOWN_CA")]
    ca: Option<PathBuf>,
    /// Reader certificate.
    #[arg(long, env = "LOCKDOWN_CERT")]
    cert: Option<PathBuf>,
    /// Reader key.
    #[arg(long, env = "LOCKDOWN_KEY")]
    key: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Table,
    Json,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    {
        use std::io::IsTerminal;
        use tracing_subscriber::layer::SubscriberExt;
        use tracing_subscriber::util::SubscriberInitExt;
        // Info, plus tonic's report of a refused TLS handshake (a client certificate from
        // another CA, a name that does not match), which it logs at debug: without it the
        // collector says nothing while the agent sees only "transport error".
        let filter = tracing_subscriber::filter::Targets::new()
            .with_default(tracing::Level::INFO)
            .with_target("tonic::transport::server::io_stream", tracing::Level::DEBUG);
        tracing_subscriber::registry()
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    // Colour codes only for a terminal; the journal and files get plain text.
                    .with_ansi(std::io::stderr().is_terminal()),
            )
            .with(filter)
            .init();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match cli.command {
        Command::Serve {
            config,
            insecure_listen_loopback,
            database,
        } => {
            let (path, explicit) = match config {
                Some(p) => (p, true),
                None => (PathBuf::from(DEFAULT_CONFIG_PATH), false),
            };
            let mut cfg = match Config::load(&path, explicit, insecure_listen_loopback) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("lockdown-collector: {e}");
                    return ExitCode::from(2);
                }
            };
            if let Some(db) = database {
                cfg.database = db;
            }
            match runtime.block_on(server::serve(cfg, shutdown_signal())) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("lockdown-collector: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Command::DevCa {
            out,
            nodes,
            readers,
            collector_names,
        } => match certs::write_dev_ca(&out, &collector_names, &nodes, &readers) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("lockdown-collector: {e}");
                ExitCode::from(1)
            }
        },
        Command::Events {
            conn,
            node,
            kind,
            min_severity,
            rule,
            since,
            follow,
            format,
        } => {
            let since = since.map(|d| {
                let t = std::time::SystemTime::now()
                    .checked_sub(d.into())
                    .unwrap_or(std::time::UNIX_EPOCH);
                humantime::format_rfc3339_millis(t).to_string()
            });
            let filter = EventFilter {
                node: node.unwrap_or_default(),
                kind: kind.unwrap_or_default(),
                min_severity: min_severity.unwrap_or_default(),
                rule_id: rule.unwrap_or_default(),
                since: since.unwrap_or_default(),
                until: String::new(),
            };
            report(runtime.block_on(events(conn, filter, follow, format)))
        }
        Command::Nodes { conn, format } => report(runtime.block_on(nodes(conn, format))),
    }
}

fn report(r: Result<(), String>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lockdown-collector: {e}");
            ExitCode::from(1)
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("stopping");
}

async fn client(conn: &Conn) -> Result<QueryServiceClient<tonic::transport::Channel>, String> {
    let tls = match (&conn.ca, &conn.cert, &conn.key) {
        (Some(ca), Some(cert), Some(key)) => Some(ClientTls {
            ca: ca.clone(),
            cert: cert.clone(),
            key: key.clone(),
            server_name: None,
        }),
        (None, None, None) => None,
        _ => return Err("--ca, --cert and --key go together".into()),
    };
    let channel = lockdown_proto::endpoint(&conn.addr, tls.as_ref())?
        .connect()
        .await
        .map_err(|e| format!("cannot reach {}: {e}", conn.addr))?;
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

async fn events(
    conn: Conn,
    filter: EventFilter,
    follow: bool,
    format: Format,
) -> Result<(), String> {
    let mut c = client(&conn).await?;
    let mut token = String::new();
    let mut last_cursor = 0;
    loop {
        let page = c
            .list_events(ListEventsRequest {
                filter: Some(filter.clone()),
                page_size: 1000,
                page_token: token.clone(),
            })
            .await
            .map_err(|s| format!("{}: {}", conn.addr, status_text(&s)))?
            .into_inner();
        for e in &page.events {
            last_cursor = e.cursor;
            print_event(e, format);
        }
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    if !follow {
        return Ok(());
    }
    // Follow until interrupted: when the collector restarts or the network breaks, reconnect
    // and resume after the last event printed, so nothing is skipped or printed twice.
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
                return Err(format!("{}: {}", conn.addr, status_text(&s)));
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
fn by_severity(counts: &std::collections::HashMap<String, u32>) -> String {
    const ORDER: [&str; 5] = ["critical", "high", "medium", "low", "info"];
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

async fn nodes(conn: Conn, format: Format) -> Result<(), String> {
    let mut c = client(&conn).await?;
    let nodes = c
        .list_nodes(ListNodesRequest {})
        .await
        .map_err(|s| format!("{}: {}", conn.addr, status_text(&s)))?
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
                })
            ),
            Format::Table => outln!(
                "{:<24} {:<10} {:<12} last seen {:<24} seq {:>8} findings {}",
                n.node,
                if n.connected { "connected" } else { "away" },
                n.agent_version,
                n.last_seen,
                n.last_seq,
                by_severity(&n.open_findings)
            ),
        }
    }
    Ok(())
}

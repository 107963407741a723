//! `lockdown-collector`: thin entry point. `serve` runs the collector; `events` and `nodes`
//! are its clients; `dev-ca` makes development certificates. Exit codes: 0 ok, 1 the server
//! or a query failed, 2 usage or config errors.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use lockdown_collector::client::{self, Conn, Format};
use lockdown_collector::config::{Config, DEFAULT_CONFIG_PATH};
use lockdown_collector::{certs, server};
use lockdown_proto::v1::{AddExceptionRequest, EventFilter, FindingFilter};

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
        /// The store, a SQLite file or a postgres:// URL (overrides the config).
        #[arg(long)]
        database: Option<String>,
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
    /// What is open on every node now (the morning question), worst first per node.
    Findings {
        #[command(flatten)]
        conn: Conn,
        /// Only this cluster.
        #[arg(long)]
        cluster: Option<String>,
        /// Only this node.
        #[arg(long)]
        node: Option<String>,
        /// Only this rule.
        #[arg(long)]
        rule: Option<String>,
        /// Only this CIS check or section (1.2.1, 1.2).
        #[arg(long)]
        cis: Option<String>,
        /// Only findings at or above this severity.
        #[arg(long)]
        min_severity: Option<String>,
        /// Only fail or only warn.
        #[arg(long)]
        status: Option<String>,
        /// Only findings an exception covers (yes) or only the others (no).
        #[arg(long)]
        excepted: Option<String>,
        /// Output format (json: one array of objects).
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Per cluster and for the fleet: nodes by state, open findings by severity, and per CIS
    /// check how many nodes pass, fail or are unknown.
    Summary {
        #[command(flatten)]
        conn: Conn,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Accepted risks: add (an admin certificate), list, remove.
    Exceptions {
        #[command(subcommand)]
        action: ExceptionAction,
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

/// What to do with exceptions.
#[derive(Subcommand)]
enum ExceptionAction {
    /// Accept the open findings of a rule, on a node, a cluster or the fleet, until it
    /// expires.
    Add {
        #[command(flatten)]
        conn: Conn,
        /// The rule.
        #[arg(long)]
        rule: String,
        /// Only on this node.
        #[arg(long, conflicts_with = "cluster")]
        node: Option<String>,
        /// Only in this cluster.
        #[arg(long)]
        cluster: Option<String>,
        /// Only on this file.
        #[arg(long)]
        path: Option<String>,
        /// Why the risk is accepted.
        #[arg(long)]
        reason: String,
        /// How long it holds (30d, 12h; at most a year).
        #[arg(long)]
        expires: humantime::Duration,
        /// The highest severity it covers (default: the highest open now).
        #[arg(long)]
        max_severity: Option<String>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// The exceptions in force (--all: also expired and removed ones).
    List {
        #[command(flatten)]
        conn: Conn,
        /// Also expired and removed ones.
        #[arg(long)]
        all: bool,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// End an exception before it expires.
    Remove {
        #[command(flatten)]
        conn: Conn,
        /// Its id.
        id: u64,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
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
                match lockdown_collector::config::Database::parse(
                    &db,
                    cfg.database_password_file.as_deref(),
                ) {
                    Ok(db) => cfg.database = db,
                    Err(e) => {
                        eprintln!("lockdown-collector: --database: {e}");
                        return ExitCode::from(2);
                    }
                }
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
            report(runtime.block_on(client::events(conn, filter, follow, format)))
        }
        Command::Nodes { conn, format } => report(runtime.block_on(client::nodes(conn, format))),
        Command::Findings {
            conn,
            cluster,
            node,
            rule,
            cis,
            min_severity,
            status,
            excepted,
            format,
        } => {
            let filter = FindingFilter {
                excepted: excepted.unwrap_or_default(),
                cluster: cluster.unwrap_or_default(),
                node: node.unwrap_or_default(),
                rule_id: rule.unwrap_or_default(),
                cis: cis.unwrap_or_default(),
                min_severity: min_severity.unwrap_or_default(),
                status: status.unwrap_or_default(),
            };
            report(runtime.block_on(client::findings(conn, filter, format)))
        }
        Command::Exceptions { action } => report(runtime.block_on(match action {
            ExceptionAction::Add {
                conn,
                rule,
                node,
                cluster,
                path,
                reason,
                expires,
                max_severity,
                format,
            } => {
                let req = AddExceptionRequest {
                    rule_id: rule,
                    node: node.unwrap_or_default(),
                    cluster: cluster.unwrap_or_default(),
                    path: path.unwrap_or_default(),
                    reason,
                    expires_in_seconds: std::time::Duration::from(expires).as_secs(),
                    max_severity: max_severity.unwrap_or_default(),
                };
                client::exceptions(conn, client::ExceptionCall::Add(req), format)
            }
            ExceptionAction::List { conn, all, format } => {
                client::exceptions(conn, client::ExceptionCall::List { all }, format)
            }
            ExceptionAction::Remove { conn, id, format } => {
                client::exceptions(conn, client::ExceptionCall::Remove(id), format)
            }
        })),
        Command::Summary { conn, format } => {
            report(runtime.block_on(client::summary(conn, format)))
        }
    }
}

fn report(r: anyhow::Result<()>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lockdown-collector: {e:#}");
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

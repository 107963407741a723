//! `lockdown-agent`: thin entry point. Parses arguments, loads config, runs, maps the result
//! to an exit code (0 ok, 1 findings at or above --fail-on, 2 usage, config or IO errors).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use lockdown_agent::check::{self, Scope};
use lockdown_agent::config::{Config, DEFAULT_CONFIG_PATH, LogFormat, Overrides};
use lockdown_agent::daemon::{self, ConfigSource};
use lockdown_agent::report;
use lockdown_agent::rules::Severity;
use lockdown_agent::spool::SpoolReader;

use lockdown_proto::out;
use lockdown_proto::outln;

#[derive(Parser)]
#[command(name = "lockdown-agent", version, about = "kube-lockdown node agent")]
struct Cli {
    /// Config file (default /etc/kube-lockdown/agent.yaml; defaults apply when it is absent).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check manifests (files or directories) once; with no path, the configured manifests
    /// directory and the CIS 1.1 file set.
    Check {
        /// Files or directories of static pod manifests.
        paths: Vec<PathBuf>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
        /// Exit 1 when a finding of this severity or higher fails.
        #[arg(long, default_value = "high", value_parser = parse_severity)]
        fail_on: Severity,
        /// Also list passed and skipped checks in the table.
        #[arg(long, short)]
        verbose: bool,
        /// Also probe what kube-apiserver serves on this node (TLS versions, the certificate
        /// served, plaintext, anonymous access): read-only, unauthenticated, loopback unless
        /// live.address is set. Only without paths.
        #[arg(long)]
        live: bool,
    },
    /// List the rule catalogue in force.
    Rules {
        /// Output format.
        #[arg(long, value_enum, default_value_t = RulesFormat::Table)]
        format: RulesFormat,
    },
    /// Run the agent: watch, compare with the baseline, spool events. Stops on SIGTERM or
    /// SIGINT; reloads the config on SIGHUP.
    Run {
        /// Node name in events (default: config node_name, else the hostname).
        #[arg(long, env = "LOCKDOWN_NODE_NAME")]
        node_name: Option<String>,
        /// State directory: spool, baseline, lock, status socket.
        #[arg(long, env = "LOCKDOWN_STATE_DIR")]
        state_dir: Option<PathBuf>,
        /// Static pod manifest directory.
        #[arg(long, env = "LOCKDOWN_MANIFESTS_DIR")]
        manifests_dir: Option<PathBuf>,
        /// Log format.
        #[arg(long, value_enum, env = "LOCKDOWN_LOG_FORMAT")]
        log_format: Option<LogFormat>,
        /// Log level: error, warn, info, debug or trace.
        #[arg(long, env = "LOCKDOWN_LOG_LEVEL")]
        log_level: Option<String>,
    },
    /// Show what the running agent sees: watched files, open findings, spool depth, last
    /// event.
    Status {
        /// State directory of the agent to ask (default: config state_dir).
        #[arg(long, env = "LOCKDOWN_STATE_DIR")]
        state_dir: Option<PathBuf>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = RulesFormat::Table)]
        format: RulesFormat,
    },
    /// Print the events waiting in the spool (not yet acknowledged by a collector), one JSON
    /// object per line.
    Spool {
        /// State directory (default: config state_dir).
        #[arg(long, env = "LOCKDOWN_STATE_DIR")]
        state_dir: Option<PathBuf>,
        /// First sequence number to print.
        #[arg(long, default_value_t = 0)]
        from: u64,
    },
    /// Plan the fixes for manifests once and print the diff (--dry-run), or apply them behind
    /// the health gate, rolling back what does not come back healthy (--apply). Only fixes
    /// marked safe unattended, plus those named with --rule or set to enforce in fix.rules.
    #[command(group = clap::ArgGroup::new("action").required(true).args(["dry_run", "apply"]))]
    Fix {
        /// Manifest files or directories (default: the configured manifests directory).
        paths: Vec<PathBuf>,
        /// Print the diff; write nothing.
        #[arg(long)]
        dry_run: bool,
        /// Write, wait for health, roll back on failure.
        #[arg(long)]
        apply: bool,
        /// Also fix this rule even though its fix is not marked safe unattended (repeatable).
        #[arg(long = "rule", value_name = "RULE_ID")]
        rules: Vec<String>,
        /// The anonymous-auth fix keeps anonymous reads of kube-public/cluster-info (`kubeadm
        /// join` token discovery) working (as fix.keep_cluster_info).
        #[arg(long)]
        keep_cluster_info: bool,
        /// State directory for backups and the journal (default: config state_dir).
        #[arg(long, env = "LOCKDOWN_STATE_DIR")]
        state_dir: Option<PathBuf>,
    },
    /// Stop fixing (detection goes on), for upgrades such as `kubeadm upgrade`.
    Pause {
        /// How long (30m, 2h); without it, until `resume`.
        #[arg(long = "for", value_parser = humantime::parse_duration)]
        duration: Option<std::time::Duration>,
        /// State directory of the agent (default: config state_dir).
        #[arg(long, env = "LOCKDOWN_STATE_DIR")]
        state_dir: Option<PathBuf>,
    },
    /// Resume fixing after `pause`.
    Resume {
        /// State directory of the agent (default: config state_dir).
        #[arg(long, env = "LOCKDOWN_STATE_DIR")]
        state_dir: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Table,
    Json,
    KubeBench,
    /// SARIF 2.1.0 (GitHub code scanning).
    Sarif,
    /// JUnit XML, a suite per CIS section.
    Junit,
    /// An openreports.io/v1alpha1 ClusterReport for this node.
    Openreports,
    /// A wgpolicyk8s.io/v1alpha2 ClusterPolicyReport for this node.
    Policyreport,
}

#[derive(Clone, Copy, ValueEnum)]
enum RulesFormat {
    Table,
    Json,
}

fn parse_severity(s: &str) -> Result<Severity, String> {
    s.parse()
}

/// Logs to stderr as text or JSON, or to the journal. Under systemd (stderr is the journal,
/// `JOURNAL_STREAM`) text becomes journal entries with fields; without a journal socket the
/// journal format falls back to text on stderr.
fn init_logging(format: LogFormat, level: tracing::Level) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let journal = match format {
        LogFormat::Journal => true,
        LogFormat::Text => std::env::var_os("JOURNAL_STREAM").is_some(),
        LogFormat::Json => false,
    };
    if journal {
        match tracing_journald::layer() {
            Ok(layer) => {
                tracing_subscriber::registry()
                    .with(layer.with_syslog_identifier("lockdown-agent".into()))
                    .with(tracing_subscriber::filter::LevelFilter::from_level(level))
                    .init();
                return;
            }
            Err(e) => eprintln!("lockdown-agent: no journal ({e}); logging to stderr"),
        }
    }
    let b = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(level);
    match format {
        LogFormat::Json => b.json().flatten_event(true).init(),
        LogFormat::Text | LogFormat::Journal => b.init(),
    }
}

fn main() -> ExitCode {
    // Whatever the agent creates (state directory, spool, socket, backups) is its own; files it
    // writes for the kubelet get their mode explicitly.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let (path, explicit) = match &cli.config {
        Some(p) => (p.clone(), true),
        None => (PathBuf::from(DEFAULT_CONFIG_PATH), false),
    };
    let overrides = match &cli.command {
        Command::Run {
            node_name,
            state_dir,
            manifests_dir,
            log_format,
            log_level,
        } => Overrides {
            node_name: node_name.clone(),
            state_dir: state_dir.clone(),
            manifests_dir: manifests_dir.clone(),
            log_format: *log_format,
            log_level: log_level.clone(),
        },
        Command::Status { state_dir, .. }
        | Command::Spool { state_dir, .. }
        | Command::Fix { state_dir, .. }
        | Command::Pause { state_dir, .. }
        | Command::Resume { state_dir } => Overrides {
            state_dir: state_dir.clone(),
            ..Default::default()
        },
        _ => Overrides::default(),
    };
    let source = ConfigSource {
        path,
        explicit,
        overrides,
    };
    let cfg = match source.load() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("lockdown-agent: {e}");
            return ExitCode::from(2);
        }
    };
    if matches!(cli.command, Command::Run { .. }) {
        init_logging(cfg.log_format, cfg.log_level);
    } else {
        init_logging(LogFormat::Text, tracing::Level::WARN);
    }
    match cli.command {
        Command::Check {
            paths,
            format,
            fail_on,
            verbose,
            live,
        } => {
            let scope = if paths.is_empty() {
                Scope::Node { live }
            } else if live {
                eprintln!(
                    "lockdown-agent: --live probes this node's kube-apiserver, found in the manifests directory: it takes no paths"
                );
                return ExitCode::from(2);
            } else {
                Scope::Paths(paths)
            };
            check_command(&cfg, &scope, format, fail_on, verbose)
        }
        Command::Rules { format } => {
            let text = match format {
                RulesFormat::Table => report::rules_table(&cfg.catalogue),
                RulesFormat::Json => report::rules_json(&cfg.catalogue),
            };
            outln!("{text}");
            ExitCode::SUCCESS
        }
        Command::Run { .. } => run(cfg, source),
        Command::Status { format, .. } => {
            match lockdown_agent::status::query_status(&cfg.state_dir) {
                Ok(status) => {
                    match format {
                        RulesFormat::Table => out!("{}", report::status_table(&status)),
                        RulesFormat::Json => outln!(
                            "{}",
                            serde_json::to_string_pretty(&status).expect("status serialises")
                        ),
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("lockdown-agent: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Spool { from, .. } => print_spool(&cfg.state_dir, from),
        Command::Fix {
            paths,
            apply,
            rules,
            keep_cluster_info,
            ..
        } => {
            let mut cfg = cfg;
            cfg.fix.keep_cluster_info |= keep_cluster_info;
            ExitCode::from(lockdown_agent::fix::command::run(cfg, paths, apply, &rules))
        }
        Command::Pause { duration, .. } => {
            match lockdown_agent::fix::policy::pause(&cfg.state_dir, duration) {
                Ok(p) => {
                    match p.until {
                        Some(t) => outln!("fixing paused until {t} (detection goes on)"),
                        None => outln!(
                            "fixing paused until `lockdown-agent resume` (detection goes on)"
                        ),
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("lockdown-agent: cannot pause: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Resume { .. } => match lockdown_agent::fix::policy::resume(&cfg.state_dir) {
            Ok(true) => {
                outln!("fixing resumed");
                ExitCode::SUCCESS
            }
            Ok(false) => {
                outln!("fixing was not paused");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("lockdown-agent: cannot resume: {e}");
                ExitCode::from(2)
            }
        },
    }
}

/// `check`: every file checked on all cores, each written out as soon as the format allows;
/// 0 when nothing at or above `fail_on` failed, 1 when something did, 2 when a file could
/// not be checked.
fn check_command(
    cfg: &Config,
    scope: &Scope,
    format: Format,
    fail_on: Severity,
    verbose: bool,
) -> ExitCode {
    use lockdown_agent::report::stream::{self, ReportApi, Sink, Whole};
    let cat = &cfg.catalogue;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let mut sink: Box<dyn Sink<'_> + '_> = match format {
        Format::Table => Box::new(Whole::new(|r: &check::Report| {
            lockdown_proto::printable(report::table(r, verbose).trim_end()).into_owned()
        })),
        Format::Json => Box::new(stream::Json::default()),
        Format::KubeBench => Box::new(Whole::new(|r: &check::Report| report::kube_bench(r, cat))),
        Format::Sarif => Box::new(stream::Sarif::new(cat)),
        Format::Junit => Box::new(stream::Junit::new(cat)),
        Format::Openreports => Box::new(stream::PolicyReport::new(
            cat,
            ReportApi::OpenReports,
            &cfg.node_name,
            now,
        )),
        Format::Policyreport => Box::new(stream::PolicyReport::new(
            cat,
            ReportApi::PolicyReport,
            &cfg.node_name,
            now,
        )),
    };
    let (mut failed, mut unreadable) = (false, false);
    let render = sink.renderer();
    let written = (|| {
        // Straight to the file descriptor: std's stdout is line-buffered, and would scan every
        // entry for its last newline and copy it once more. Entries larger than the buffer
        // (a manifest's JSON is 5-20 KB) are written without a copy.
        let stdout = std::os::fd::AsFd::as_fd(&std::io::stdout()).try_clone_to_owned()?;
        let mut out = std::io::BufWriter::new(std::fs::File::from(stdout));
        sink.start(&mut out)?;
        let keep = sink.keeps_reports();
        // On the worker: the entry rendered, the verdict taken, and the report dropped
        // there unless the format keeps it.
        let prepare = |f: lockdown_agent::node::FileReport| {
            let rendered = render(&f);
            let unreadable = f.error.is_some();
            let failed = f
                .findings
                .iter()
                .any(|x| x.status == lockdown_agent::rules::Status::Fail && x.severity >= fail_on);
            (keep.then_some(f), rendered, unreadable, failed)
        };
        check::run_each(cfg, scope, &prepare, &mut |(f, rendered, bad, fail)| {
            unreadable |= bad;
            failed |= fail;
            sink.file(&mut out, f, rendered?)
        })?;
        sink.finish(&mut out)?;
        std::io::Write::flush(&mut out)
    })();
    if let Err(e) = written {
        lockdown_proto::stdout_failed(e);
    }
    if unreadable {
        ExitCode::from(2)
    } else if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// The single-threaded runtime `run` uses.
fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("lockdown-agent: cannot start the runtime: {e}");
            ExitCode::from(2)
        })
}

fn run(cfg: Config, source: ConfigSource) -> ExitCode {
    let runtime = match runtime() {
        Ok(r) => r,
        Err(code) => return code,
    };
    let result = runtime.block_on(daemon::run(cfg, source, |status| {
        tracing::info!(
            files = status.files.len(),
            open_findings = status.open_findings.len(),
            spool_events = status.spool.events,
            "ready"
        );
    }));
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            eprintln!("lockdown-agent: {e}");
            ExitCode::from(2)
        }
    }
}

fn print_spool(state_dir: &std::path::Path, from: u64) -> ExitCode {
    use std::io::Write;
    let reader = match SpoolReader::open(state_dir) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("lockdown-agent: {e}");
            return ExitCode::from(2);
        }
    };
    let mut out = std::io::stdout().lock();
    let mut next = from;
    loop {
        match reader.read_from(next, 1000) {
            Ok(events) if events.is_empty() => return ExitCode::SUCCESS,
            Ok(events) => {
                for e in &events {
                    let line = serde_json::to_string(e).expect("events serialise");
                    if writeln!(out, "{line}").is_err() {
                        return ExitCode::SUCCESS; // reader went away (head, less)
                    }
                }
                next = events.last().map_or(next, |e| e.seq + 1);
            }
            Err(e) => {
                eprintln!("lockdown-agent: {e}");
                return ExitCode::from(2);
            }
        }
    }
}

//! `lockdown-agent`: thin entry point. Parses arguments, loads config, runs, maps the result
//! to an exit code (0 ok, 1 findings at or above --fail-on, 2 usage, config or IO errors).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use lockdown_agent::check::{self, Scope};
use lockdown_agent::config::{Config, DEFAULT_CONFIG_PATH};
use lockdown_agent::report;
use lockdown_agent::rules::Severity;

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
    },
    /// List the rule catalogue in force.
    Rules {
        /// Output format.
        #[arg(long, value_enum, default_value_t = RulesFormat::Table)]
        format: RulesFormat,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Table,
    Json,
    KubeBench,
}

#[derive(Clone, Copy, ValueEnum)]
enum RulesFormat {
    Table,
    Json,
}

fn parse_severity(s: &str) -> Result<Severity, String> {
    s.parse()
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(tracing::Level::WARN)
        .init();
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
    let cfg = match Config::load(&path, explicit) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("lockdown-agent: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.command {
        Command::Check {
            paths,
            format,
            fail_on,
            verbose,
        } => {
            let scope = if paths.is_empty() {
                Scope::Node
            } else {
                Scope::Paths(paths)
            };
            let result = check::run(&cfg, &scope);
            let text = match format {
                Format::Table => report::table(&result, verbose),
                Format::Json => report::json(&result),
                Format::KubeBench => report::kube_bench(&result),
            };
            println!("{text}");
            if report::has_error(&result) {
                ExitCode::from(2)
            } else if report::has_failure(&result, fail_on) {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            }
        }
        Command::Rules { format } => {
            let text = match format {
                RulesFormat::Table => report::rules_table(&cfg.catalogue),
                RulesFormat::Json => report::rules_json(&cfg.catalogue),
            };
            println!("{text}");
            ExitCode::SUCCESS
        }
    }
}

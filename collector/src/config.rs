//! Collector configuration, in two steps: the file as written (unknown keys rejected), then
//! the validated [`Config`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Where the collector looks for its config when none is named.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/kube-lockdown/collector.yaml";

/// The config file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Address to listen on. Default: 0.0.0.0:7443.
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// The store: a SQLite file, or a `postgres://` URL (several collectors may share one
    /// PostgreSQL database). Default: /var/lib/kube-lockdown-collector/events.db.
    #[serde(default)]
    pub database: Option<String>,
    /// The PostgreSQL password's file (first line), e.g. a systemd credential
    /// (`%d/database-password`). Default: the LOCKDOWN_DATABASE_PASSWORD environment variable,
    /// else none. Never in the URL.
    #[serde(default)]
    pub database_password_file: Option<PathBuf>,
    /// TLS: the collector's certificate and key, and the CA that signs agent and reader
    /// certificates. Required unless --insecure-listen-loopback is given.
    #[serde(default)]
    pub tls: Option<RawTls>,
    /// Names (DNS SANs) of reader certificates allowed to use the query service. An agent
    /// stream that claims one of these names is refused, so no agent can read. Default: none.
    #[serde(default)]
    pub readers: Vec<String>,
    /// Names of reader certificates that may also add and remove exceptions (accepted
    /// risks); each must be a reader. Default: none.
    #[serde(default)]
    pub admins: Vec<String>,
    /// Limits.
    #[serde(default)]
    pub limits: RawLimits,
    /// Retention; off unless set.
    #[serde(default)]
    pub retention: RawRetention,
    /// When a node counts as gone quiet, and which nodes are expected.
    #[serde(default)]
    pub nodes: RawNodes,
    /// Outputs of the stored events (alerts, webhooks). Default: none.
    #[serde(default)]
    pub sinks: Vec<crate::sink::config::RawSink>,
    /// Prometheus metrics on a listener of their own. Default: off.
    #[serde(default)]
    pub metrics: Option<RawMetrics>,
    /// The web dashboard on a listener of its own. Default: off.
    #[serde(default)]
    pub dashboard: Option<RawDashboard>,
}

/// `dashboard:` in the config file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDashboard {
    /// Address of its listener. Default: 127.0.0.1:7480. With `tls`, it serves HTTPS with
    /// the collector's certificate and every request must authenticate; without (the
    /// plaintext loopback mode), plain HTTP on loopback only.
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// A file whose first line is a bearer token that reads, for a proxy that authenticates
    /// people in front of the dashboard (`%d/dashboard-token`). Default: none.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// The same for a token that may also add and remove exceptions. Default: none.
    #[serde(default)]
    pub admin_token_file: Option<PathBuf>,
}

/// A secret read from a file; never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// The dashboard's listener and who may use it.
#[derive(Debug, Clone)]
pub struct DashboardConfig {
    /// Where it is served.
    pub listen: SocketAddr,
    /// A bearer token that reads.
    pub token: Option<Secret>,
    /// A bearer token that may also change exceptions.
    pub admin_token: Option<Secret>,
}

impl DashboardConfig {
    fn from_raw(raw: RawDashboard, tls: bool) -> Result<DashboardConfig, String> {
        let listen = raw
            .listen
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 7480)));
        if !tls && !listen.ip().is_loopback() {
            return Err(format!(
                "dashboard.listen {listen}: without tls the dashboard is plain HTTP, so it may listen on loopback only"
            ));
        }
        let read = |what: &str, path: Option<PathBuf>| -> Result<Option<Secret>, String> {
            let Some(path) = path else { return Ok(None) };
            if !tls {
                return Err(format!(
                    "dashboard.{what}: a bearer token needs tls (it would cross the network in plain text)"
                ));
            }
            let text = std::fs::read_to_string(&path)
                .map_err(|e| format!("dashboard.{what} {}: {e}", path.display()))?;
            let token = text.lines().next().unwrap_or("").trim();
            if token.len() < 32 || !token.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(format!(
                    "dashboard.{what} {}: the token must be at least 32 printable characters on the first line",
                    path.display()
                ));
            }
            Ok(Some(Secret(token.to_string())))
        };
        let token = read("token_file", raw.token_file)?;
        let admin_token = read("admin_token_file", raw.admin_token_file)?;
        if token.is_some() && token == admin_token {
            return Err("dashboard: token_file and admin_token_file hold the same token".into());
        }
        Ok(DashboardConfig {
            listen,
            token,
            admin_token,
        })
    }
}

/// `metrics:` in the config file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMetrics {
    /// Address of the plain-HTTP listener for `GET /metrics`. Default: 127.0.0.1:9470.
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// Also a gauge per rule (how many nodes fail it): one series per rule. Default: false.
    #[serde(default)]
    pub per_rule: bool,
}

/// The metrics listener.
#[derive(Debug, Clone)]
pub struct MetricsConfig {
    /// Where `GET /metrics` is served.
    pub listen: SocketAddr,
    /// Per-rule failing-node gauges.
    pub per_rule: bool,
}

/// `nodes:` in the config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNodes {
    /// A node not heard from for this long is stale ("30s"). Default: 30s, three of the
    /// agent's default heartbeats.
    #[serde(default, deserialize_with = "crate::de::duration")]
    pub stale_after: Option<Duration>,
    /// Node names that should report; one never heard from is missing. Default: none.
    #[serde(default)]
    pub expected: Vec<String>,
}

/// `tls:` in the config file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    /// PEM certificate chain of the collector.
    pub cert: PathBuf,
    /// PEM private key of the collector.
    pub key: PathBuf,
    /// PEM bundle of the CA(s) that sign agent certificates (and reader certificates, unless
    /// `reader_ca` is set).
    pub client_ca: PathBuf,
    /// PEM bundle of a separate CA for readers. When set, any certificate it signs may read
    /// (narrowed by `readers` if that lists names), and agents must chain to `client_ca`.
    #[serde(default)]
    pub reader_ca: Option<PathBuf>,
}

/// `limits:` in the config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    /// Largest message accepted, in bytes. Default: 4194304.
    #[serde(default)]
    pub max_message_bytes: Option<usize>,
    /// Events per second one node may send; beyond it the agent is told to slow down (and
    /// its stream is read more slowly), never dropped. Default: 20000.
    #[serde(default)]
    pub max_events_per_second_per_node: Option<u32>,
    /// Concurrent agent streams. Default: 10000.
    #[serde(default)]
    pub max_streams: Option<usize>,
}

/// `retention:` in the config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetention {
    /// Delete events older than this ("30d"). Default: keep.
    #[serde(default, deserialize_with = "crate::de::duration")]
    pub max_age: Option<Duration>,
    /// Keep at most this many events, the newest. Default: keep.
    #[serde(default)]
    pub max_events: Option<u64>,
}

/// TLS files.
#[derive(Debug, Clone)]
pub struct Tls {
    /// Certificate chain.
    pub cert: PathBuf,
    /// Key.
    pub key: PathBuf,
    /// Client CA bundle (agents).
    pub client_ca: PathBuf,
    /// Separate reader CA bundle.
    pub reader_ca: Option<PathBuf>,
}

/// Where the events are stored.
#[derive(Debug, Clone)]
pub enum Database {
    /// A SQLite file (the embedded default).
    Sqlite(PathBuf),
    /// A PostgreSQL database, with its password.
    Postgres(Box<crate::store::postgres::Target>),
}

/// The environment variable a PostgreSQL password may come from.
pub const PASSWORD_ENV: &str = "LOCKDOWN_DATABASE_PASSWORD";

impl Database {
    /// A file path or a `postgres://` URL; a URL's password comes from `password_file`, else
    /// the environment ([`PASSWORD_ENV`]).
    pub fn parse(text: &str, password_file: Option<&Path>) -> Result<Database, String> {
        use crate::store::postgres::{Password, Target, is_url};
        if !is_url(text) {
            if text.contains("://") {
                return Err(format!(
                    "database: {text:?} is neither a file path nor a postgres:// URL"
                ));
            }
            return Ok(Database::Sqlite(PathBuf::from(text)));
        }
        let password = match (password_file, std::env::var(PASSWORD_ENV)) {
            (Some(f), _) => Password::File(f.to_path_buf()),
            (None, Ok(p)) => Password::Value(p),
            (None, Err(_)) => Password::None,
        };
        Target::parse(text, &password)
            .map(|t| Database::Postgres(Box::new(t)))
            .map_err(|e| e.to_string())
    }
}

impl std::fmt::Display for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Database::Sqlite(p) => write!(f, "{}", p.display()),
            Database::Postgres(t) => write!(f, "{t:?}"),
        }
    }
}

/// The validated config.
#[derive(Debug, Clone)]
pub struct Config {
    /// Listen address.
    pub listen: SocketAddr,
    /// The store.
    pub database: Database,
    /// The PostgreSQL password's file, if configured (for `--database`).
    pub database_password_file: Option<PathBuf>,
    /// TLS, or `None` for plaintext on loopback.
    pub tls: Option<Tls>,
    /// Allowed reader names.
    pub readers: Vec<String>,
    /// Readers that may also add and remove exceptions.
    pub admins: Vec<String>,
    /// Largest message.
    pub max_message_bytes: usize,
    /// Per-node rate.
    pub max_events_per_second_per_node: u32,
    /// Concurrent streams.
    pub max_streams: usize,
    /// Retention by age.
    pub max_age: Option<Duration>,
    /// Retention by count.
    pub max_events: Option<u64>,
    /// A node not heard from for this long is stale.
    pub stale_after: Duration,
    /// Nodes that should report.
    pub expected_nodes: Vec<String>,
    /// Sinks.
    pub sinks: Vec<crate::sink::config::SinkConfig>,
    /// Metrics, if served.
    pub metrics: Option<MetricsConfig>,
    /// The dashboard, if served.
    pub dashboard: Option<DashboardConfig>,
}

/// Why a config cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Unreadable file.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// Schema or value problem.
    #[error("invalid config {path}: {message}")]
    Invalid {
        /// File.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

impl Config {
    /// Loads `path` (a missing default file means defaults) and applies the plaintext
    /// override: `insecure_loopback` is the only way to run without TLS, and only on a
    /// loopback address.
    pub fn load(
        path: &Path,
        explicit: bool,
        insecure_loopback: Option<SocketAddr>,
    ) -> Result<Config, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if !explicit && e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        Self::parse_with(&text, path, insecure_loopback)
    }

    /// Parses and validates config text read from `path` (TLS required).
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        Self::parse_with(text, path, None)
    }

    fn parse_with(
        text: &str,
        path: &Path,
        insecure_loopback: Option<SocketAddr>,
    ) -> Result<Config, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        let raw: RawConfig = if text.trim().is_empty() {
            RawConfig::default()
        } else {
            serde_saphyr::from_str(text).map_err(|e| invalid(e.to_string()))?
        };
        let (listen, tls) = match insecure_loopback {
            Some(addr) if !addr.ip().is_loopback() => {
                return Err(invalid(format!(
                    "--insecure-listen-loopback {addr}: plaintext is allowed on loopback addresses only"
                )));
            }
            Some(addr) => (addr, None),
            None => {
                let tls = raw.tls.ok_or_else(|| {
                    invalid("tls is required (cert, key, client_ca); plaintext exists only as --insecure-listen-loopback".into())
                })?;
                (
                    raw.listen
                        .unwrap_or_else(|| "0.0.0.0:7443".parse().expect("valid")),
                    Some(Tls {
                        cert: tls.cert,
                        key: tls.key,
                        client_ca: tls.client_ca,
                        reader_ca: tls.reader_ca,
                    }),
                )
            }
        };
        if !raw.readers.is_empty()
            && let Some(a) = raw.admins.iter().find(|a| !raw.readers.contains(a))
        {
            return Err(invalid(format!(
                "admins: {a:?} is not in readers (an admin is a reader that may also change exceptions)"
            )));
        }
        if let Some(bad) = (raw.nodes.expected.iter()).find(|n| !crate::admit::node_name_ok(n)) {
            return Err(invalid(format!(
                "nodes.expected: {bad:?} is not a node name (lower-case DNS name)"
            )));
        }
        let database = Database::parse(
            raw.database
                .as_deref()
                .unwrap_or("/var/lib/kube-lockdown-collector/events.db"),
            raw.database_password_file.as_deref(),
        )
        .map_err(invalid)?;
        let mut sinks = Vec::new();
        for raw in raw.sinks {
            let sink = crate::sink::config::SinkConfig::from_raw(raw).map_err(invalid)?;
            if sinks
                .iter()
                .any(|s: &crate::sink::config::SinkConfig| s.name == sink.name)
            {
                return Err(invalid(format!("sinks: {:?} is named twice", sink.name)));
            }
            sinks.push(sink);
        }
        let dashboard = raw
            .dashboard
            .map(|d| DashboardConfig::from_raw(d, tls.is_some()))
            .transpose()
            .map_err(invalid)?;
        Ok(Config {
            dashboard,
            listen,
            database,
            database_password_file: raw.database_password_file,
            tls,
            readers: raw.readers,
            admins: raw.admins,
            max_message_bytes: raw.limits.max_message_bytes.unwrap_or(4 << 20),
            max_events_per_second_per_node: raw
                .limits
                .max_events_per_second_per_node
                .unwrap_or(20_000),
            max_streams: raw.limits.max_streams.unwrap_or(10_000),
            max_age: raw.retention.max_age,
            max_events: raw.retention.max_events,
            stale_after: raw.nodes.stale_after.unwrap_or(Duration::from_secs(30)),
            expected_nodes: raw.nodes.expected,
            sinks,
            metrics: raw.metrics.map(|m| MetricsConfig {
                listen: m
                    .listen
                    .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 9470))),
                per_rule: m.per_rule,
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> (tempfile::TempDir, PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("c.yaml");
        std::fs::write(&p, text).unwrap();
        (d, p)
    }

    #[test]
    fn plaintext_only_on_loopback_and_tls_required_otherwise() {
        let (_d, p) = write("");
        let err = Config::load(&p, true, Some("0.0.0.0:7443".parse().unwrap())).unwrap_err();
        assert!(err.to_string().contains("loopback addresses only"), "{err}");
        let err = Config::load(&p, true, None).unwrap_err();
        assert!(err.to_string().contains("tls is required"), "{err}");
        let c = Config::load(&p, true, Some("[::1]:7000".parse().unwrap())).unwrap();
        assert!(c.tls.is_none());
    }

    #[test]
    fn sinks_are_checked_and_their_secrets_come_from_files() {
        let (d, p) = write("");
        let secret = d.path().join("secret");
        std::fs::write(&secret, "s3cret\n").unwrap();
        let base = "listen: 127.0.0.1:1\n";
        let ok = format!(
            "{base}sinks:\n- {{name: chat, type: webhook, url: http://127.0.0.1:9/x, secret_file: {}, filter: {{min_severity: high}}}}\n",
            secret.display()
        );
        std::fs::write(&p, &ok).unwrap();
        let c = Config::load(&p, true, Some("127.0.0.1:1".parse().unwrap())).unwrap();
        assert_eq!(c.sinks.len(), 1);
        assert!(!format!("{c:?}").contains("s3cret"));
        for (sinks, needle) in [
            (
                "- {name: Chat, type: webhook, url: http://127.0.0.1:9/x}",
                "lower-case",
            ),
            (
                "- {name: a, type: pager, url: http://127.0.0.1:9/x}",
                "not a sink type",
            ),
            ("- {name: a, type: webhook}", "needs url"),
            (
                "- {name: a, type: webhook, url: http://127.0.0.1:9/x, secret_file: /nonexistent}",
                "/nonexistent",
            ),
            (
                "- {name: a, type: webhook, url: http://127.0.0.1:9/x, secret: x}",
                "secret",
            ),
            (
                "- {name: a, type: webhook, url: http://127.0.0.1:9/x}\n- {name: a, type: webhook, url: http://127.0.0.1:9/y}",
                "named twice",
            ),
            (
                "- {name: a, type: webhook, url: http://127.0.0.1:9/x, filter: {min_severity: loud}}",
                "loud",
            ),
        ] {
            std::fs::write(&p, format!("{base}sinks:\n{sinks}\n")).unwrap();
            let err = Config::load(&p, true, Some("127.0.0.1:1".parse().unwrap()))
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{sinks}: {err}");
        }
    }

    #[test]
    fn the_dashboard_is_plain_http_on_loopback_only_and_its_tokens_need_tls() {
        let (d, p) = write("");
        let token = d.path().join("token");
        std::fs::write(&token, format!("{}\n", "t".repeat(40))).unwrap();
        let load = |text: &str, plain: bool| {
            std::fs::write(&p, text).unwrap();
            Config::load(&p, true, plain.then(|| "127.0.0.1:1".parse().unwrap()))
        };
        let c = load("dashboard: {}\n", true).unwrap();
        assert_eq!(c.dashboard.unwrap().listen.to_string(), "127.0.0.1:7480");
        let err = load("dashboard: {listen: 0.0.0.0:7480}\n", true).unwrap_err();
        assert!(err.to_string().contains("loopback only"), "{err}");
        let with_token = format!("dashboard: {{token_file: {}}}\n", token.display());
        let err = load(&with_token, true).unwrap_err();
        assert!(err.to_string().contains("needs tls"), "{err}");
        let tls = "tls: {cert: /c, key: /k, client_ca: /ca}\n";
        let c = load(&format!("{tls}{with_token}"), false).unwrap();
        let dash = c.dashboard.unwrap();
        assert_eq!(dash.token.as_ref().unwrap().0.len(), 40);
        assert!(!format!("{dash:?}").contains("tttt"), "{dash:?}");
        std::fs::write(&token, "short\n").unwrap();
        let err = load(&format!("{tls}{with_token}"), false).unwrap_err();
        assert!(err.to_string().contains("at least 32"), "{err}");
    }

    #[test]
    fn unknown_keys_are_named() {
        let (_d, p) = write("listen: 127.0.0.1:1\nretention: {max_agee: 1d}\n");
        let err = Config::load(&p, true, None).unwrap_err();
        assert!(err.to_string().contains("max_agee"), "{err}");
    }
}

#[cfg(test)]
mod example_tests {
    #[test]
    fn the_documented_example_config_is_valid() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("collector.example.yaml");
        let c = super::Config::load(&path, true, None).unwrap();
        assert_eq!(c.readers, ["reader", "admin"]);
        assert_eq!(c.admins, ["admin"]);
        assert_eq!(c.stale_after, std::time::Duration::from_secs(30));
        assert!(c.tls.is_some());
    }
}

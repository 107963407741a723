//! Agent configuration, in two steps: a raw serde struct that rejects unknown keys, then a
//! validated [`Config`] that the rest of the code uses.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::rules::Catalogue;
use crate::rules::catalogue::{CatalogueError, RawRule};

/// Where the agent looks for its config when none is named.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/kube-lockdown/agent.yaml";
/// Default state directory (spool, baseline, lock, status socket).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/kube-lockdown";

/// The config file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Static pod manifest directory the kubelet runs (kubelet `staticPodPath`).
    /// Default: /etc/kubernetes/manifests.
    #[serde(default)]
    pub manifests_dir: Option<PathBuf>,
    /// Directory holding admin.conf, super-admin.conf, scheduler.conf and
    /// controller-manager.conf. Default: /etc/kubernetes.
    #[serde(default)]
    pub kubernetes_dir: Option<PathBuf>,
    /// PKI directory (CIS 1.1.19-1.1.21). Default: /etc/kubernetes/pki.
    #[serde(default)]
    pub pki_dir: Option<PathBuf>,
    /// etcd data directory when the etcd manifest does not name one (CIS 1.1.11-1.1.12).
    /// Default: /var/lib/etcd.
    #[serde(default)]
    pub etcd_data_dir: Option<PathBuf>,
    /// Directories of CNI configuration and state (CIS 1.1.9-1.1.10).
    /// Default: /etc/cni/net.d and /var/lib/cni/networks.
    #[serde(default)]
    pub cni_dirs: Option<Vec<PathBuf>>,
    /// Rule catalogue changes.
    #[serde(default)]
    pub rules: RawRulesConfig,
    /// Node name in events. Default: the hostname in lower case, as the kubelet uses it.
    #[serde(default)]
    pub node_name: Option<String>,
    /// Where the agent keeps its spool, baseline, lock and status socket.
    /// Default: /var/lib/kube-lockdown.
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
    /// Quiet time after a file event before the agent reads the files, so that an editor's
    /// rename dance is seen as one change. Default: 2ms.
    #[serde(default, deserialize_with = "duration")]
    pub settle: Option<Duration>,
    /// Longest the agent waits for quiet during a burst before it reads anyway, so that a
    /// storm of writes still gives events. Default: 100ms.
    #[serde(default, deserialize_with = "duration")]
    pub settle_max: Option<Duration>,
    /// Full rescan interval, the safety net under inotify ("0s" turns it off). Default: 60s.
    #[serde(default, deserialize_with = "duration")]
    pub rescan_interval: Option<Duration>,
    /// Bound of the event spool in bytes; when full, the oldest unshipped events go and a
    /// spool_overflow event counts them. At least 65536. Default: 67108864 (64 MiB).
    #[serde(default)]
    pub spool_max_bytes: Option<u64>,
    /// Logging.
    #[serde(default)]
    pub log: RawLogConfig,
    /// Where to ship events. Without it the agent only spools them.
    #[serde(default)]
    pub collector: Option<RawCollector>,
    /// Automatic fixing of manifests. Off unless turned on here.
    #[serde(default)]
    pub fix: RawFixConfig,
    /// Certificate checks.
    #[serde(default)]
    pub tls: RawTlsConfig,
    /// Probes of what the API server really serves.
    #[serde(default)]
    pub live: RawLiveConfig,
    /// Prometheus metrics on loopback. Default: off.
    #[serde(default)]
    pub metrics: Option<RawMetrics>,
}

/// `metrics:` in the config file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMetrics {
    /// The port of `GET /metrics` on 127.0.0.1 (never another address: the agent runs on
    /// control-plane nodes). A change needs a restart.
    pub port: u16,
}

/// `live:` in the config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLiveConfig {
    /// Whether the daemon probes. Default: true.
    #[serde(default)]
    pub enabled: Option<bool>,
    /// How often the daemon probes. Default: 5m.
    #[serde(default, deserialize_with = "duration")]
    pub interval: Option<Duration>,
    /// How long after a kube-apiserver manifest changes the daemon probes (the kubelet
    /// restarts the pod meanwhile). Default: 60s.
    #[serde(default, deserialize_with = "duration")]
    pub after_change: Option<Duration>,
    /// The most each step of a probe waits. Default: 3s.
    #[serde(default, deserialize_with = "duration")]
    pub timeout: Option<Duration>,
    /// Where to probe instead of loopback (needed when --bind-address is one non-loopback
    /// address).
    #[serde(default)]
    pub address: Option<String>,
}

/// Probes of what the API server serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveConfig {
    /// Whether the daemon probes.
    pub enabled: bool,
    /// How often the daemon probes.
    pub interval: Duration,
    /// How long after a kube-apiserver manifest changes the daemon probes.
    pub after_change: Duration,
    /// The most each step of a probe waits.
    pub timeout: Duration,
    /// Where to probe instead of loopback.
    pub addressing: crate::live::Addressing,
}

/// `tls:` in the config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTlsConfig {
    /// Days left under which a certificate's expiry is high. Default: 7.
    #[serde(default)]
    pub expiry_high_days: Option<u32>,
    /// Days left under which a certificate's expiry is medium. Default: 30.
    #[serde(default)]
    pub expiry_medium_days: Option<u32>,
    /// How often the daemon judges certificate expiry again when no file changed. Default: 1h.
    #[serde(default, deserialize_with = "duration")]
    pub recheck_interval: Option<Duration>,
}

/// Certificate check thresholds (expired is always critical).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlsConfig {
    /// Under this many days left, high.
    pub expiry_high_days: u32,
    /// Under this many days left, medium.
    pub expiry_medium_days: u32,
    /// How often the daemon judges expiry again without a file change.
    pub recheck_interval: Duration,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            expiry_high_days: 7,
            expiry_medium_days: 30,
            recheck_interval: Duration::from_secs(3600),
        }
    }
}

/// `fix:` in the config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFixConfig {
    /// off (default), dry-run or enforce, for every rule.
    #[serde(default)]
    pub mode: Option<Mode>,
    /// Per-rule modes that take precedence. A rule named `enforce` here is applied even when
    /// its fix is not marked safe unattended.
    #[serde(default)]
    pub rules: std::collections::BTreeMap<String, Mode>,
    /// Originals kept per manifest in `<state_dir>/backups`. Default: 10.
    #[serde(default)]
    pub backups: Option<usize>,
    /// How long a component has to become healthy after a write. Default: derived from its
    /// probes (what the kubelet itself tolerates).
    #[serde(default, deserialize_with = "duration")]
    pub health_timeout: Option<Duration>,
    /// Stop fixing a file when the drift comes back more than this many times ... Default: 3.
    #[serde(default)]
    pub fight_max: Option<u32>,
    /// ... within this window. Default: 10m.
    #[serde(default, deserialize_with = "duration")]
    pub fight_window: Option<Duration>,
    /// The anonymous-auth fix also allows anonymous reads of kube-public/cluster-info, which
    /// `kubeadm join` token discovery makes. Default: false.
    #[serde(default)]
    pub keep_cluster_info: bool,
}

/// One collector address or several.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Addresses {
    /// `address: https://collector:7443`.
    One(String),
    /// `address: [https://c1:7443, https://c2:7443]`.
    Many(Vec<String>),
}

impl Addresses {
    fn into_vec(self) -> Vec<String> {
        match self {
            Addresses::One(a) => vec![a],
            Addresses::Many(v) => v,
        }
    }
}

/// Whether `address` (`http://host:port`) names a loopback host.
fn loopback(address: &str) -> bool {
    let host = address
        .trim_start_matches("http://")
        .split(['/', ':'])
        .next()
        .unwrap_or("");
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
        || address.starts_with("http://[::1]")
}

/// `collector:` in the config file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCollector {
    /// `https://host:port`, or a list of them (collector replicas sharing one database): on
    /// a broken stream the agent moves to the next, and a name with several addresses counts
    /// as one entry per address. `http://` only for a collector on loopback run with
    /// --insecure-listen-loopback.
    pub address: Addresses,
    /// PEM bundle of the CA that signs the collector's certificate.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// This node's certificate; its DNS name must be the node name.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// This node's key.
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// Name to check the collector's certificate against. Default: the address's host.
    #[serde(default)]
    pub server_name: Option<String>,
    /// Cluster label shown by the collector. Default: empty.
    #[serde(default)]
    pub cluster: Option<String>,
    /// Longest wait between reconnects (backoff doubles from 200ms, with jitter).
    /// Default: 30s.
    #[serde(default, deserialize_with = "duration")]
    pub backoff_max: Option<Duration>,
    /// Heartbeat interval when there is nothing to send. Default: 10s.
    #[serde(default, deserialize_with = "duration")]
    pub heartbeat: Option<Duration>,
    /// With events sent and unacknowledged, how long without any answer before the stream
    /// is taken for dead and reopened (a network that drops packets silently). Default: 15s.
    #[serde(default, deserialize_with = "duration")]
    pub ack_timeout: Option<Duration>,
    /// Most bytes of events in one batch message (the collector refuses messages over its
    /// `limits.max_message_bytes`, 4 MiB by default). At least 16384. Default: 1048576.
    #[serde(default)]
    pub max_batch_bytes: Option<usize>,
}

/// `log:` in the config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLogConfig {
    /// `text` or `json`. Default: text.
    #[serde(default)]
    pub format: Option<LogFormat>,
    /// `error`, `warn`, `info`, `debug` or `trace`. Default: info.
    #[serde(default)]
    pub level: Option<String>,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
    /// Structured entries to the systemd journal; text on stderr where there is no journal.
    /// Chosen by default when stderr is the journal (`JOURNAL_STREAM`, set by systemd).
    Journal,
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_duration(&text).map(Some).map_err(|e| {
        serde::de::Error::custom(format!(
            "{text:?} is not a duration like 2ms, 60s or 5m: {e}"
        ))
    })
}

/// `rules:` in the config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRulesConfig {
    /// Ids of built-in rules to turn off.
    #[serde(default)]
    pub disable: Vec<String>,
    /// Extra rules, in the catalogue's own format (see agent/catalogue/rules.yaml).
    #[serde(default)]
    pub extra: Vec<RawRule>,
}

/// The validated config.
#[derive(Debug, Clone)]
pub struct Config {
    /// Static pod manifest directory.
    pub manifests_dir: PathBuf,
    /// Directory of the control-plane kubeconfigs.
    pub kubernetes_dir: PathBuf,
    /// PKI directory.
    pub pki_dir: PathBuf,
    /// Fallback etcd data directory.
    pub etcd_data_dir: PathBuf,
    /// CNI directories.
    pub cni_dirs: Vec<PathBuf>,
    /// The rule catalogue in force.
    pub catalogue: Catalogue,
    /// Node name in events.
    pub node_name: String,
    /// State directory.
    pub state_dir: PathBuf,
    /// Quiet time before reading after a file event.
    pub settle: Duration,
    /// Longest wait for quiet during a burst.
    pub settle_max: Duration,
    /// Full rescan interval; `None` = off.
    pub rescan_interval: Option<Duration>,
    /// Spool bound in bytes.
    pub spool_max_bytes: u64,
    /// Log format.
    pub log_format: LogFormat,
    /// Log level.
    pub log_level: tracing::Level,
    /// Where to ship events, if anywhere.
    pub collector: Option<crate::ship::ShipConfig>,
    /// Automatic fixing.
    pub fix: FixConfig,
    /// Certificate check thresholds.
    pub tls: TlsConfig,
    /// Probes of what the API server serves.
    pub live: LiveConfig,
    /// The loopback port of `GET /metrics`, when served.
    pub metrics_port: Option<u16>,
}

/// Command-line and environment values that take precedence over the file, kept so that a
/// reload applies them again.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// Node name.
    pub node_name: Option<String>,
    /// State directory.
    pub state_dir: Option<PathBuf>,
    /// Manifests directory.
    pub manifests_dir: Option<PathBuf>,
    /// Log format.
    pub log_format: Option<LogFormat>,
    /// Log level.
    pub log_level: Option<String>,
}

/// Why a config cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Cannot read the file.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The file does not match the schema (an unknown key names itself here).
    #[error("invalid config {path}: {message}")]
    Parse {
        /// File.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A rule change is invalid.
    #[error("invalid config {path}: {source}")]
    Rules {
        /// File.
        path: PathBuf,
        /// Cause.
        source: CatalogueError,
    },
    /// A value is out of range or malformed.
    #[error("invalid config {path}: {field}: {message}")]
    Value {
        /// File.
        path: PathBuf,
        /// Field.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// A path is not absolute.
    #[error("invalid config {path}: {field} must be an absolute path, got {value}")]
    Relative {
        /// File.
        path: PathBuf,
        /// Field.
        field: &'static str,
        /// Value.
        value: String,
    },
}

impl Config {
    /// Defaults for a kubeadm node.
    pub fn kubeadm_defaults() -> Self {
        Self::validate(RawConfig::default(), Path::new("(defaults)")).expect("defaults are valid")
    }

    /// Loads `path`; when `explicit` is false and the file does not exist, the defaults.
    pub fn load(path: &Path, explicit: bool) -> Result<Self, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if !explicit && e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Self::kubeadm_defaults());
            }
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        Self::parse(&text, path)
    }

    /// Parses and validates config text.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let raw: RawConfig = if text.trim().is_empty() {
            RawConfig::default()
        } else {
            serde_saphyr::from_str(text).map_err(|e| ConfigError::Parse {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?
        };
        Self::validate(raw, path)
    }

    fn validate(raw: RawConfig, path: &Path) -> Result<Self, ConfigError> {
        let abs = |field: &'static str,
                   v: Option<PathBuf>,
                   default: &str|
         -> Result<PathBuf, ConfigError> {
            let v = v.unwrap_or_else(|| PathBuf::from(default));
            if v.is_absolute() {
                Ok(v)
            } else {
                Err(ConfigError::Relative {
                    path: path.to_path_buf(),
                    field,
                    value: v.display().to_string(),
                })
            }
        };
        let mut catalogue = Catalogue::builtin_owned();
        let rules_err = |source| ConfigError::Rules {
            path: path.to_path_buf(),
            source,
        };
        catalogue.disable(&raw.rules.disable).map_err(rules_err)?;
        catalogue
            .add_raw_rules(raw.rules.extra)
            .map_err(rules_err)?;
        let cni_dirs = raw
            .cni_dirs
            .unwrap_or_else(|| vec!["/etc/cni/net.d".into(), "/var/lib/cni/networks".into()]);
        for d in &cni_dirs {
            if !d.is_absolute() {
                return Err(ConfigError::Relative {
                    path: path.to_path_buf(),
                    field: "cni_dirs",
                    value: d.display().to_string(),
                });
            }
        }
        let value = |field: &'static str, message: String| ConfigError::Value {
            path: path.to_path_buf(),
            field,
            message,
        };
        let node_name = match raw.node_name {
            Some(n) => n,
            None => nix::unistd::gethostname()
                .map(|h| h.to_string_lossy().to_lowercase())
                .map_err(|e| {
                    value(
                        "node_name",
                        format!("not set, and the hostname cannot be read: {e}"),
                    )
                })?,
        };
        validate_node_name(&node_name).map_err(|m| value("node_name", m))?;
        let spool_max_bytes = raw.spool_max_bytes.unwrap_or(64 << 20);
        if spool_max_bytes < crate::spool::MIN_MAX_BYTES {
            return Err(value(
                "spool_max_bytes",
                format!(
                    "{spool_max_bytes} is below the minimum of {}",
                    crate::spool::MIN_MAX_BYTES
                ),
            ));
        }
        let log_level = parse_level(raw.log.level.as_deref().unwrap_or("info"))
            .map_err(|m| value("log.level", m))?;
        let settle = raw.settle.unwrap_or(Duration::from_millis(2));
        let settle_max = raw.settle_max.unwrap_or(Duration::from_millis(100));
        if settle_max < settle {
            return Err(value(
                "settle_max",
                "must not be shorter than settle".into(),
            ));
        }
        let collector = match raw.collector {
            None => None,
            Some(c) => {
                let addresses = c.address.into_vec();
                if addresses.is_empty() {
                    return Err(value("collector.address", "is an empty list".into()));
                }
                if let Some(a) = addresses
                    .iter()
                    .find(|a| !a.starts_with("https://") && !a.starts_with("http://"))
                {
                    return Err(value(
                        "collector.address",
                        format!("{a:?} is not https://host:port"),
                    ));
                }
                let plaintext = addresses.iter().all(|a| a.starts_with("http://"));
                if !plaintext && addresses.iter().any(|a| a.starts_with("http://")) {
                    return Err(value(
                        "collector.address",
                        "mixes http:// and https:// addresses".into(),
                    ));
                }
                let tls = match (c.ca, c.cert, c.key) {
                    (Some(ca), Some(cert), Some(key)) => Some(lockdown_proto::ClientTls {
                        ca,
                        cert,
                        key,
                        server_name: c.server_name,
                    }),
                    (None, None, None) if plaintext => None,
                    (None, None, None) => {
                        return Err(value(
                            "collector",
                            "ca, cert and key are required (mutual TLS); only an http:// loopback collector goes without".into(),
                        ));
                    }
                    _ => return Err(value("collector", "ca, cert and key go together".into())),
                };
                if tls.is_none()
                    && let Some(a) = addresses.iter().find(|a| !loopback(a))
                {
                    return Err(value(
                        "collector.address",
                        format!(
                            "{a} is plaintext to a host that is not loopback; use https:// with ca, cert and key"
                        ),
                    ));
                }
                Some(crate::ship::ShipConfig {
                    addresses,
                    tls,
                    cluster: c.cluster.unwrap_or_default(),
                    backoff_initial: Duration::from_millis(200),
                    backoff_max: c.backoff_max.unwrap_or(Duration::from_secs(30)),
                    heartbeat: c.heartbeat.unwrap_or(Duration::from_secs(10)),
                    ack_timeout: c.ack_timeout.unwrap_or(Duration::from_secs(15)),
                    max_batch_bytes: c.max_batch_bytes.unwrap_or(1 << 20).max(16 << 10),
                })
            }
        };
        for id in raw.fix.rules.keys() {
            if !catalogue.rule_ids().any(|r| r == id) {
                return Err(value(
                    "fix.rules",
                    format!("{id:?} is not a rule id (see `lockdown-agent rules`)"),
                ));
            }
        }
        let fix = FixConfig {
            mode: raw.fix.mode.unwrap_or_default(),
            rules: raw.fix.rules,
            backups: raw.fix.backups.unwrap_or(10).max(1),
            health_timeout: raw.fix.health_timeout,
            fight_max: raw.fix.fight_max.unwrap_or(3),
            fight_window: raw.fix.fight_window.unwrap_or(Duration::from_secs(600)),
            keep_cluster_info: raw.fix.keep_cluster_info,
        };
        let defaults = TlsConfig::default();
        let tls = TlsConfig {
            expiry_high_days: raw
                .tls
                .expiry_high_days
                .unwrap_or(defaults.expiry_high_days),
            expiry_medium_days: raw
                .tls
                .expiry_medium_days
                .unwrap_or(defaults.expiry_medium_days),
            recheck_interval: raw
                .tls
                .recheck_interval
                .unwrap_or(defaults.recheck_interval),
        };
        if tls.recheck_interval < Duration::from_secs(1) {
            return Err(ConfigError::Value {
                path: path.to_path_buf(),
                field: "tls.recheck_interval",
                message: format!(
                    "{} is under 1s (expiry must be judged again as time passes)",
                    humantime::format_duration(tls.recheck_interval)
                ),
            });
        }
        if tls.expiry_high_days > tls.expiry_medium_days {
            return Err(ConfigError::Value {
                path: path.to_path_buf(),
                field: "tls.expiry_high_days",
                message: format!(
                    "{} is more than tls.expiry_medium_days ({}): the high threshold is the nearer one",
                    tls.expiry_high_days, tls.expiry_medium_days
                ),
            });
        }
        let live_field = |field: &'static str, d: Option<Duration>, default: u64| match d {
            Some(d) if d < Duration::from_secs(1) => Err(ConfigError::Value {
                path: path.to_path_buf(),
                field,
                message: format!("{} is under 1s", humantime::format_duration(d)),
            }),
            Some(d) => Ok(d),
            None => Ok(Duration::from_secs(default)),
        };
        let live = LiveConfig {
            enabled: raw.live.enabled.unwrap_or(true),
            interval: live_field("live.interval", raw.live.interval, 300)?,
            after_change: raw.live.after_change.unwrap_or(Duration::from_secs(60)),
            timeout: live_field("live.timeout", raw.live.timeout, 3)?,
            addressing: crate::live::Addressing {
                address: match raw.live.address {
                    None => None,
                    Some(a) => Some(a.parse().map_err(|_| ConfigError::Value {
                        path: path.to_path_buf(),
                        field: "live.address",
                        message: format!("{a:?} is not an IP address"),
                    })?),
                },
            },
        };
        Ok(Config {
            fix,
            tls,
            live,
            collector,
            node_name,
            state_dir: abs("state_dir", raw.state_dir, DEFAULT_STATE_DIR)?,
            settle,
            settle_max,
            rescan_interval: match raw.rescan_interval {
                Some(d) if d.is_zero() => None,
                Some(d) => Some(d),
                None => Some(Duration::from_secs(60)),
            },
            spool_max_bytes,
            log_format: raw.log.format.unwrap_or_default(),
            log_level,
            manifests_dir: abs(
                "manifests_dir",
                raw.manifests_dir,
                "/etc/kubernetes/manifests",
            )?,
            kubernetes_dir: abs("kubernetes_dir", raw.kubernetes_dir, "/etc/kubernetes")?,
            pki_dir: abs("pki_dir", raw.pki_dir, "/etc/kubernetes/pki")?,
            etcd_data_dir: abs("etcd_data_dir", raw.etcd_data_dir, "/var/lib/etcd")?,
            cni_dirs,
            catalogue,
            metrics_port: raw.metrics.map(|m| m.port),
        })
    }
}

impl Overrides {
    /// Applies the overrides to a loaded config.
    pub fn apply(&self, cfg: &mut Config) -> Result<(), ConfigError> {
        let value = |field: &'static str, message: String| ConfigError::Value {
            path: PathBuf::from("(command line or environment)"),
            field,
            message,
        };
        if let Some(n) = &self.node_name {
            validate_node_name(n).map_err(|m| value("node name", m))?;
            cfg.node_name.clone_from(n);
        }
        for (field, v, slot) in [
            ("state dir", &self.state_dir, &mut cfg.state_dir),
            ("manifests dir", &self.manifests_dir, &mut cfg.manifests_dir),
        ] {
            if let Some(v) = v {
                if !v.is_absolute() {
                    return Err(value(
                        field,
                        format!("must be an absolute path, got {}", v.display()),
                    ));
                }
                slot.clone_from(v);
            }
        }
        if let Some(f) = self.log_format {
            cfg.log_format = f;
        }
        if let Some(l) = &self.log_level {
            cfg.log_level = parse_level(l).map_err(|m| value("log level", m))?;
        }
        Ok(())
    }
}

fn parse_level(s: &str) -> Result<tracing::Level, String> {
    s.parse()
        .map_err(|_| format!("{s:?} is not one of error, warn, info, debug, trace"))
}

/// Node names are Kubernetes node names: DNS subdomains (lower case letters, digits, `-` and
/// `.`, at most 253 characters).
fn validate_node_name(n: &str) -> Result<(), String> {
    let ok = !n.is_empty()
        && n.len() <= 253
        && n.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && !n.starts_with(['-', '.'])
        && !n.ends_with(['-', '.']);
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{n:?} is not a valid node name (lower case letters, digits, '-' and '.', at most 253 characters)"
        ))
    }
}

impl Config {
    /// sha256 of the effective config (catalogue included), for `agent_started` events.
    pub fn digest(&self) -> String {
        crate::integrity::sha256_hex(format!("{self:?}").as_bytes())
    }

    /// sha256 of the rule catalogue in force.
    pub fn rules_digest(&self) -> String {
        crate::integrity::sha256_hex(format!("{:?}", self.catalogue).as_bytes())
    }
}

/// What to do about a fixable finding.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, serde::Serialize, Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Nothing (the default).
    #[default]
    Off,
    /// Report the exact diff a fix would make; write nothing.
    DryRun,
    /// Apply the fix, behind the health gate.
    Enforce,
}

impl Mode {
    /// The name as written in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Off => "off",
            Mode::DryRun => "dry-run",
            Mode::Enforce => "enforce",
        }
    }
}

/// The `fix:` config.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FixConfig {
    /// Mode for every rule.
    pub mode: Mode,
    /// Per-rule modes that take precedence; `enforce` here also allows fixes not marked safe.
    pub rules: std::collections::BTreeMap<String, Mode>,
    /// Originals kept per manifest.
    pub backups: usize,
    /// Health gate timeout; `None`: derived from the probes.
    pub health_timeout: Option<Duration>,
    /// Fixes of one file allowed within `fight_window` before the agent stops fixing it.
    pub fight_max: u32,
    /// See `fight_max`.
    pub fight_window: Duration,
    /// The anonymous-auth fix keeps anonymous reads of kube-public/cluster-info (`kubeadm
    /// join` token discovery) working.
    pub keep_cluster_info: bool,
}

impl FixConfig {
    /// The mode for a rule.
    pub fn mode_of(&self, rule_id: &str) -> Mode {
        self.rules.get(rule_id).copied().unwrap_or(self.mode)
    }

    /// True when some rule is in enforce mode.
    pub fn enforces(&self) -> bool {
        self.mode == Mode::Enforce || self.rules.values().any(|m| *m == Mode::Enforce)
    }

    /// True when some rule is not off.
    pub fn any(&self) -> bool {
        self.mode != Mode::Off || self.rules.values().any(|m| *m != Mode::Off)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_named() {
        let err = Config::parse("manifest_dir: /x\n", Path::new("a.yaml")).unwrap_err();
        assert!(err.to_string().contains("manifest_dir"), "{err}");
    }

    #[test]
    fn the_collector_may_be_several_replicas_of_one_scheme() {
        let tls = "ca: /ca.pem, cert: /n.pem, key: /n.key";
        let cfg = Config::parse(
            &format!("collector: {{address: [https://c1:7443, https://c2:7443], {tls}}}\n"),
            Path::new("a.yaml"),
        )
        .unwrap();
        assert_eq!(
            cfg.collector.unwrap().addresses,
            ["https://c1:7443", "https://c2:7443"]
        );
        let one = Config::parse(
            "collector: {address: http://127.0.0.1:7000}\n",
            Path::new("a.yaml"),
        )
        .unwrap();
        assert_eq!(one.collector.unwrap().addresses, ["http://127.0.0.1:7000"]);
        for (text, needle) in [
            (format!("collector: {{address: [], {tls}}}\n"), "empty list"),
            (
                format!("collector: {{address: [https://c1:1, http://127.0.0.1:2], {tls}}}\n"),
                "mixes http:// and https://",
            ),
            (
                "collector: {address: [http://127.0.0.1:1, http://c2:2]}\n".to_string(),
                "http://c2:2 is plaintext",
            ),
            (
                format!("collector: {{address: [c1:7443], {tls}}}\n"),
                "not https://",
            ),
        ] {
            let err = Config::parse(&text, Path::new("a.yaml"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }

    #[test]
    fn relative_paths_are_refused() {
        let err = Config::parse("pki_dir: pki\n", Path::new("a.yaml")).unwrap_err();
        assert!(
            err.to_string().contains("pki_dir must be an absolute path"),
            "{err}"
        );
    }

    #[test]
    fn rules_can_be_disabled_and_added() {
        let cfg = Config::parse(
            "rules:\n  disable: [apiserver-profiling]\n  extra:\n  - {id: site-audit-policy, component: kube-apiserver, title: Audit policy set, severity: medium, test: {set: {flag: audit-policy-file}}, remediation: set it}\n",
            Path::new("a.yaml"),
        )
        .unwrap();
        let ids: Vec<&str> = cfg.catalogue.rule_ids().collect();
        assert!(!ids.contains(&"apiserver-profiling"));
        assert!(ids.contains(&"site-audit-policy"));
    }

    #[test]
    fn daemon_fields_parse_and_are_checked() {
        let cfg = Config::parse(
            "node_name: cp-1\nsettle: 5ms\nrescan_interval: 0s\nspool_max_bytes: 1048576\nlog: {format: json, level: debug}\n",
            Path::new("a.yaml"),
        )
        .unwrap();
        assert_eq!(cfg.node_name, "cp-1");
        assert_eq!(cfg.settle, Duration::from_millis(5));
        assert_eq!(cfg.rescan_interval, None);
        assert_eq!(cfg.log_format, LogFormat::Json);
        for (text, needle) in [
            ("settle: soon\n", "not a duration"),
            ("spool_max_bytes: 10\n", "below the minimum"),
            ("node_name: CP_1\n", "not a valid node name"),
            ("log: {level: loud}\n", "log.level"),
            ("log: {colour: red}\n", "colour"),
        ] {
            let err = Config::parse(text, Path::new("a.yaml"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }

    #[test]
    fn overrides_win_and_are_checked() {
        let mut cfg = Config::parse("node_name: a\n", Path::new("a.yaml")).unwrap();
        let o = Overrides {
            node_name: Some("b".into()),
            state_dir: Some("/tmp/s".into()),
            ..Default::default()
        };
        o.apply(&mut cfg).unwrap();
        assert_eq!(
            (cfg.node_name.as_str(), cfg.state_dir.as_path()),
            ("b", Path::new("/tmp/s"))
        );
        let bad = Overrides {
            state_dir: Some("rel".into()),
            ..Default::default()
        };
        assert!(
            bad.apply(&mut cfg)
                .unwrap_err()
                .to_string()
                .contains("absolute")
        );
    }

    #[test]
    fn fix_modes_are_read_and_unknown_rules_named() {
        let cfg = Config::parse(
            "node_name: cp-1\nfix:\n  mode: dry-run\n  rules:\n    apiserver-profiling: enforce\n",
            Path::new("a.yaml"),
        )
        .unwrap();
        assert_eq!(cfg.fix.mode, Mode::DryRun);
        assert_eq!(cfg.fix.mode_of("apiserver-profiling"), Mode::Enforce);
        assert_eq!(cfg.fix.mode_of("scheduler-profiling"), Mode::DryRun);
        let e = Config::parse(
            "node_name: cp-1\nfix:\n  rules:\n    apiserver-profilng: enforce\n",
            Path::new("a.yaml"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("fix.rules") && e.contains("apiserver-profilng"),
            "{e}"
        );
        let e = Config::parse(
            "node_name: cp-1\nfix:\n  mode: yes-please\n",
            Path::new("a.yaml"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("a.yaml"), "{e}");
    }

    #[test]
    fn missing_default_config_means_defaults_but_missing_named_config_is_an_error() {
        let cfg = Config::load(Path::new("/nonexistent/agent.yaml"), false).unwrap();
        assert_eq!(cfg.manifests_dir, Path::new("/etc/kubernetes/manifests"));
        assert!(Config::load(Path::new("/nonexistent/agent.yaml"), true).is_err());
    }
}

#[cfg(test)]
mod example_tests {
    use super::*;

    #[test]
    fn the_documented_example_config_is_valid() {
        let text = include_str!("../agent.example.yaml");
        let cfg = Config::parse(text, Path::new("agent.example.yaml")).unwrap();
        assert!(
            cfg.catalogue
                .rule_ids()
                .any(|id| id == "site-audit-policy-file")
        );
    }

    #[test]
    fn certificate_thresholds_and_recheck_are_checked() {
        let cfg = Config::parse("tls: {recheck_interval: 10m}\n", Path::new("a.yaml")).unwrap();
        assert_eq!(cfg.tls.recheck_interval, Duration::from_secs(600));
        assert_eq!(cfg.tls.expiry_high_days, 7);
        for (text, field) in [
            ("tls: {recheck_interval: 0s}\n", "tls.recheck_interval"),
            (
                "tls: {expiry_high_days: 40, expiry_medium_days: 30}\n",
                "tls.expiry_high_days",
            ),
        ] {
            let e = Config::parse(text, Path::new("a.yaml"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(field) && e.contains("a.yaml"), "{e}");
        }
    }
}

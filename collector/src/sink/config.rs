//! The `sinks:` of the collector's config: as written, and checked into what a sink runs
//! with (its filter, its output and the output's settings; secrets read from their files).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// One of `sinks:` in the config file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSink {
    /// Its name: the key of its delivery cursor (lower-case letters, digits, `-`).
    pub name: String,
    /// `webhook`, `alertmanager`, `falcosidekick` or `syslog`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Which events it gets. Default: every event.
    #[serde(default)]
    pub filter: RawSinkFilter,
    /// `https://host/path` (`http://` only to loopback); for Alertmanager its base URL
    /// (`https://alertmanager:9093`); for syslog `tls://host:6514` (`tcp://` only to
    /// loopback).
    #[serde(default)]
    pub url: Option<String>,
    /// The CA that signs the receiver's certificate (required for https).
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// A client certificate to present, with `key`.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// Its key.
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// A file whose first line is the shared secret of the body's HMAC-SHA256 signature
    /// (`X-Lockdown-Signature: sha256=<hex>`). Default: unsigned.
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// How long one delivery may take. Default: 10s.
    #[serde(default, deserialize_with = "crate::de::duration")]
    pub timeout: Option<Duration>,
    /// Most events in one delivery. Default: 500.
    #[serde(default)]
    pub max_batch_events: Option<usize>,
    /// Alertmanager: how often every open finding is sent again (keep it well under
    /// Alertmanager's `resolve_timeout`; alerts end four of these after the last send).
    /// Default: 1m.
    #[serde(default, deserialize_with = "crate::de::duration")]
    pub resend: Option<Duration>,
    /// Syslog: the facility (auth, authpriv, audit, local0..local7). Default: local0.
    #[serde(default)]
    pub facility: Option<String>,
}

/// `filter:` of a sink.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSinkFilter {
    /// Only these kinds (finding_raised, file_modified, ...). Default: all.
    #[serde(default)]
    pub kinds: Vec<String>,
    /// Only events of at least this severity (events without one are left out).
    #[serde(default)]
    pub min_severity: Option<String>,
    /// Only these rules. Default: all.
    #[serde(default)]
    pub rules: Vec<String>,
    /// Only nodes of these clusters. Default: all.
    #[serde(default)]
    pub clusters: Vec<String>,
    /// Only these nodes. Default: all.
    #[serde(default)]
    pub nodes: Vec<String>,
    /// Also findings an active exception covers. Default: false (accepted risks do not
    /// alert).
    #[serde(default)]
    pub excepted: bool,
}

/// A configured sink.
#[derive(Debug, Clone)]
pub struct SinkConfig {
    /// Its name (its cursor's key).
    pub name: String,
    /// Which events it gets.
    pub filter: super::filter::SinkFilter,
    /// Where and how it delivers.
    pub output: SinkOutput,
}

/// What a sink delivers to.
#[derive(Debug, Clone)]
pub enum SinkOutput {
    /// JSON POSTs.
    Webhook(super::webhook::Webhook),
    /// Alertmanager's v2 API, and how often every open finding is sent again.
    Alertmanager(super::webhook::Webhook, Duration),
    /// Falcosidekick's listener.
    Falcosidekick(super::webhook::Webhook),
    /// A syslog receiver.
    Syslog(super::syslog::Syslog),
}

impl SinkConfig {
    /// Checks a sink as written; an error names the sink and what is wrong.
    pub fn from_raw(raw: RawSink) -> Result<SinkConfig, String> {
        let at = |m: String| format!("sinks: {:?}: {m}", raw.name);
        let name_ok = !raw.name.is_empty()
            && raw.name.len() <= 63
            && raw
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !name_ok {
            return Err(at(
                "a name is 1 to 63 lower-case letters, digits and '-'".into()
            ));
        }
        let filter = super::filter::SinkFilter::from_raw(raw.filter).map_err(at)?;
        let output = match raw.kind.as_str() {
            "webhook" | "alertmanager" | "falcosidekick" => {
                let url = raw
                    .url
                    .ok_or_else(|| at(format!("a {} sink needs url", raw.kind)))?;
                let client = match (&raw.cert, &raw.key) {
                    (Some(c), Some(k)) => Some((c.as_path(), k.as_path())),
                    (None, None) => None,
                    _ => return Err(at("cert and key go together".into())),
                };
                let secret = match &raw.secret_file {
                    None => None,
                    Some(f) => Some(read_secret(f).map_err(at)?),
                };
                let settings = super::webhook::Settings {
                    timeout: raw.timeout.unwrap_or(Duration::from_secs(10)),
                    max_batch_events: raw.max_batch_events.unwrap_or(500).clamp(1, 5000),
                    secret,
                };
                let hook = |url: &str, settings| {
                    super::webhook::Webhook::new(url, raw.ca.as_deref(), client, settings)
                        .map_err(at)
                };
                match raw.kind.as_str() {
                    "webhook" => SinkOutput::Webhook(hook(&url, settings)?),
                    "falcosidekick" => SinkOutput::Falcosidekick(hook(&url, settings)?),
                    _ => {
                        let api = format!("{}/api/v2/alerts", url.trim_end_matches('/'));
                        let resend = raw.resend.unwrap_or(Duration::from_secs(60));
                        if resend < Duration::from_secs(1) {
                            return Err(at("resend must be at least 1s".into()));
                        }
                        SinkOutput::Alertmanager(hook(&api, settings)?, resend)
                    }
                }
            }
            "syslog" => {
                let url = raw
                    .url
                    .ok_or_else(|| at("a syslog sink needs url".into()))?;
                let client = match (&raw.cert, &raw.key) {
                    (Some(c), Some(k)) => Some((c.as_path(), k.as_path())),
                    (None, None) => None,
                    _ => return Err(at("cert and key go together".into())),
                };
                SinkOutput::Syslog(
                    super::syslog::Syslog::new(
                        &url,
                        raw.ca.as_deref(),
                        client,
                        raw.facility.as_deref().unwrap_or("local0"),
                        raw.timeout.unwrap_or(Duration::from_secs(10)),
                    )
                    .map_err(at)?,
                )
            }
            other => {
                return Err(at(format!(
                    "type {other:?} is not a sink type (webhook, alertmanager, falcosidekick, syslog)"
                )));
            }
        };
        Ok(SinkConfig {
            name: raw.name,
            filter,
            output,
        })
    }
}

/// The first line of a secret's file.
fn read_secret(f: &Path) -> Result<Vec<u8>, String> {
    let text = std::fs::read_to_string(f)
        .map_err(|e| format!("cannot read secret_file {}: {e}", f.display()))?;
    let line = text.lines().next().unwrap_or_default();
    if line.is_empty() {
        return Err(format!("secret_file {} is empty", f.display()));
    }
    Ok(line.as_bytes().to_vec())
}

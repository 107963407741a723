//! The syslog sink: each event an RFC 5424 message over TCP, or TLS verified against a
//! configured CA (RFC 5425), with octet-counting framing (`LEN SP MSG`, RFC 6587 3.4.1).
//!
//! ```text
//! <PRI>1 TIMESTAMP NODE kube-lockdown - KIND [lockdown@32473 id="node/epoch/seq" kind=".."
//!   severity=".." rule=".." path=".." cluster=".."] BOM one-line summary
//! ```
//!
//! PRI is the configured facility (default local0) with our severity as syslog's (critical:
//! crit, high: err, medium: warning, low: notice, else info). The SD-ID uses 32473, the
//! private enterprise number RFC 5612 sets aside for examples; kube-lockdown has none of its
//! own. One connection is kept open and made again after any error; a batch counts as
//! delivered once written and flushed (syslog over TCP has no acknowledgement).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::Sink;
use crate::store::Stored;

/// The SD-ID of the structured data.
const SD_ID: &str = "lockdown@32473";

/// Where and how a syslog sink sends.
#[derive(Clone)]
pub struct Syslog {
    host: String,
    port: u16,
    tls: Option<(
        Arc<rustls::ClientConfig>,
        rustls::pki_types::ServerName<'static>,
    )>,
    facility: u8,
    timeout: Duration,
}

impl std::fmt::Debug for Syslog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Syslog({}:{}, tls: {}, facility {})",
            self.host,
            self.port,
            self.tls.is_some(),
            self.facility
        )
    }
}

/// Syslog's facility number for a name.
pub fn facility(name: &str) -> Option<u8> {
    Some(match name {
        "auth" => 4,
        "authpriv" => 10,
        "audit" => 13,
        "local0" => 16,
        "local1" => 17,
        "local2" => 18,
        "local3" => 19,
        "local4" => 20,
        "local5" => 21,
        "local6" => 22,
        "local7" => 23,
        _ => return None,
    })
}

impl Syslog {
    /// A receiver at `url`: `tls://host:port` verified against `ca` (and presenting
    /// `client` if given), or `tcp://host:port` to a loopback host only.
    pub fn new(
        url: &str,
        ca: Option<&Path>,
        client: Option<(&Path, &Path)>,
        facility_name: &str,
        timeout: Duration,
    ) -> Result<Syslog, String> {
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| format!("url {url:?} is not tcp://host:port or tls://host:port"))?;
        let (host, port) = rest
            .rsplit_once(':')
            .and_then(|(h, p)| {
                Some((
                    h.trim_start_matches('[').trim_end_matches(']'),
                    p.parse().ok()?,
                ))
            })
            .ok_or_else(|| format!("url {url:?} has no host:port"))?;
        let facility = facility(facility_name).ok_or_else(|| {
            format!("facility {facility_name:?} is not auth, authpriv, audit or local0..local7")
        })?;
        let tls = match scheme {
            "tls" => {
                let ca = ca.ok_or("a tls:// url needs ca (the CA that signs the receiver)")?;
                let name = rustls::pki_types::ServerName::try_from(host.to_string())
                    .map_err(|e| format!("url host {host:?}: {e}"))?;
                Some((Arc::new(super::webhook::client_config(ca, client)?), name))
            }
            "tcp" => {
                if !super::loopback(host) {
                    return Err(format!(
                        "url {url} is plain TCP to a host that is not loopback: use tls:// with ca"
                    ));
                }
                None
            }
            _ => return Err(format!("url {url:?} is not tcp:// or tls://")),
        };
        Ok(Syslog {
            host: host.to_string(),
            port,
            tls,
            facility,
            timeout,
        })
    }
}

/// Syslog's severity for one of ours.
pub fn severity(ours: &str) -> u8 {
    match ours {
        "critical" => 2,
        "high" => 3,
        "medium" => 4,
        "low" => 5,
        _ => 6,
    }
}

/// An SD-PARAM value: `"`, `\` and `]` escaped (RFC 5424 6.3.3).
fn sd_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        if matches!(c, '"' | '\\' | ']') {
            out.push('\\');
        }
        out.push(if c.is_control() { ' ' } else { c });
    }
    out
}

/// The free-text part: control characters (line breaks, terminal escapes) as spaces, so
/// that what a node names cannot forge a second line in a receiver's log or colour a
/// terminal that shows it.
fn plain(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// A header field: printable US-ASCII without spaces, at most `max`; `-` when empty.
fn header(v: &str, max: usize) -> String {
    let v: String = v
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(max)
        .collect();
    if v.is_empty() { "-".into() } else { v }
}

/// The RFC 5424 message of one event, framed (`LEN SP MSG`).
pub fn frame(s: &Stored, facility: u8) -> Vec<u8> {
    let e = &s.event;
    let body: serde_json::Value = serde_json::from_slice(&e.body).unwrap_or_default();
    let mut sd = format!(
        "[{SD_ID} id=\"{}\" kind=\"{}\"",
        sd_value(&format!("{}/{}/{}", e.node, e.epoch, e.seq)),
        sd_value(&e.kind)
    );
    for (k, v) in [
        ("severity", e.severity.as_str()),
        ("rule", e.rule_id.as_str()),
        ("path", e.path.as_str()),
        ("cis", body["finding"]["cis"].as_str().unwrap_or_default()),
    ] {
        if !v.is_empty() {
            sd.push_str(&format!(" {k}=\"{}\"", sd_value(v)));
        }
    }
    sd.push(']');
    let text = super::summary(s);
    let msg = format!(
        "<{}>1 {} {} kube-lockdown - {} {sd} \u{feff}{}",
        u32::from(facility) * 8 + u32::from(severity(&e.severity)),
        header(&e.time, 64),
        header(&e.node, 255),
        header(&e.kind, 32),
        plain(&text)
    );
    let mut out = format!("{} ", msg.len()).into_bytes();
    out.extend_from_slice(msg.as_bytes());
    out
}

/// A syslog sink.
pub struct SyslogSink {
    name: String,
    to: Syslog,
    conn: Option<Box<dyn AsyncWrite + Send + Sync + Unpin>>,
}

impl SyslogSink {
    /// The sink `name` sending to `to`.
    pub fn new(name: String, to: Syslog) -> SyslogSink {
        SyslogSink {
            name,
            to,
            conn: None,
        }
    }

    async fn connect(&self) -> anyhow::Result<Box<dyn AsyncWrite + Send + Sync + Unpin>> {
        let tcp = tokio::net::TcpStream::connect((self.to.host.as_str(), self.to.port))
            .await
            .with_context(|| format!("connect to {}:{}", self.to.host, self.to.port))?;
        tcp.set_nodelay(true)?;
        Ok(match &self.to.tls {
            None => Box::new(tcp),
            Some((config, name)) => Box::new(
                tokio_rustls::TlsConnector::from(Arc::clone(config))
                    .connect(name.clone(), tcp)
                    .await
                    .context("TLS handshake")?,
            ),
        })
    }
}

impl Sink for SyslogSink {
    fn name(&self) -> &str {
        &self.name
    }

    async fn deliver(&mut self, events: &[Stored]) -> anyhow::Result<()> {
        let mut bytes = Vec::new();
        for s in events {
            bytes.extend(frame(s, self.to.facility));
        }
        let sent = tokio::time::timeout(self.to.timeout, async {
            if self.conn.is_none() {
                self.conn = Some(self.connect().await?);
            }
            let conn = self.conn.as_mut().expect("connected above");
            conn.write_all(&bytes).await?;
            conn.flush().await?;
            anyhow::Ok(())
        })
        .await
        .map_err(|_| anyhow::anyhow!("no progress within {:?}", self.to.timeout))
        .and_then(|r| r);
        if sent.is_err() {
            self.conn = None; // made again next time
        }
        sent.with_context(|| format!("syslog {}:{}", self.to.host, self.to.port))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_is_rfc5424_with_its_fields_as_structured_data_and_counted() {
        let s = Stored {
            cursor: 3,
            event: lockdown_proto::v1::Event {
                node: "cp-1".into(),
                epoch: 2,
                seq: 9,
                time: "2026-12-02T10:00:00.000Z".into(),
                kind: "finding_raised".into(),
                severity: "high".into(),
                rule_id: "apiserver-anonymous-auth".into(),
                path: "/etc/kubernetes/manifests/kube-apiserver \"x\"].yaml".into(),
                body: br#"{"finding":{"cis":"1.2.1","title":"Anonymous auth is off"}}"#.to_vec(),
            },
        };
        let framed = String::from_utf8(frame(&s, 16)).unwrap();
        let (len, msg) = framed.split_once(' ').unwrap();
        assert_eq!(len.parse::<usize>().unwrap(), msg.len());
        assert!(
            msg.starts_with("<131>1 2026-12-02T10:00:00.000Z cp-1 kube-lockdown - finding_raised [lockdown@32473 id=\"cp-1/2/9\" kind=\"finding_raised\" severity=\"high\" rule=\"apiserver-anonymous-auth\" path=\"/etc/kubernetes/manifests/kube-apiserver \\\"x\\\"\\].yaml\" cis=\"1.2.1\"] \u{feff}finding raised on cp-1"),
            "{msg}"
        );
        assert_eq!(facility("audit"), Some(13));
        // What a node names cannot break the line or reach a terminal as an escape.
        let mut evil = s.clone();
        evil.event.path = "/m/a.yaml\r\n<13>1 forged\u{1b}[31m".into();
        evil.event.body = b"{\"finding\":{\"title\":\"t\\u0085x\"}}".to_vec();
        let framed = String::from_utf8(frame(&evil, 16)).unwrap();
        assert!(!framed.chars().any(char::is_control), "{framed:?}");
        // Plain TCP only to loopback, TLS only with a CA, a facility from the local ones.
        for (url, facility, ok) in [
            ("tcp://siem.example:514", "local0", false),
            ("tls://siem.example:6514", "local0", false),
            ("tcp://127.0.0.1:514", "kern", false),
            ("tcp://127.0.0.1:514", "local3", true),
        ] {
            let made = Syslog::new(url, None, None, facility, Duration::from_secs(1));
            assert_eq!(made.is_ok(), ok, "{url} {facility}");
        }
    }
}

//! The webhook sink: stored events as JSON POSTs, over HTTPS verified against a configured CA
//! (and a client certificate if one is configured), each body signed with HMAC-SHA256 when a
//! shared secret is configured.
//!
//! ```text
//! POST <path>
//! Content-Type: application/json
//! X-Lockdown-Delivery: <sink>:<first cursor>-<last cursor>
//! X-Lockdown-Signature: sha256=<hex HMAC-SHA256 of the body with the shared secret>
//!
//! {"sink": "...", "delivery": "...", "events": [{"id": "<node>/<epoch>/<seq>", "cursor": ...,
//!   "node", "epoch", "seq", "time", "kind", "severity", "rule_id", "path",
//!   "event": <the event as the agent or the collector wrote it>}, ...]}
//! ```
//!
//! Delivery is at least once: a delivery that fails (no answer in time, a status other than
//! 2xx) is sent again, so a receiver may see an event twice and drops it by its `id`, which
//! never changes. Events of a node arrive in their order.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use hmac::{KeyInit, Mac};
use http_body_util::Full;
use hyper::Uri;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use super::Sink;
use crate::store::Stored;

/// How a webhook delivers.
#[derive(Clone)]
pub struct Settings {
    /// How long one POST may take.
    pub timeout: Duration,
    /// Most events in one POST.
    pub max_batch_events: usize,
    /// The HMAC-SHA256 key, if the bodies are signed.
    pub secret: Option<Vec<u8>>,
}

/// A receiver of JSON POSTs.
#[derive(Clone)]
pub struct Webhook {
    url: Uri,
    host: String,
    port: u16,
    tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
    settings: Settings,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret.
        write!(
            f,
            "Webhook({}, signed: {})",
            self.url,
            self.settings.secret.is_some()
        )
    }
}

impl Webhook {
    /// A receiver at `url`: `https://` verified against `ca` (required), presenting
    /// `client` (certificate, key) if given; `http://` only to a loopback host.
    pub fn new(
        url: &str,
        ca: Option<&Path>,
        client: Option<(&Path, &Path)>,
        settings: Settings,
    ) -> Result<Webhook, String> {
        let uri: Uri = url
            .parse()
            .map_err(|e| format!("url {url:?} is not a URL: {e}"))?;
        let host = uri
            .host()
            .ok_or_else(|| format!("url {url:?} has no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let tls = match uri.scheme_str() {
            Some("https") => {
                let ca = ca.ok_or("an https url needs ca (the CA that signs the receiver)")?;
                let name = ServerName::try_from(host.clone())
                    .map_err(|e| format!("url host {host:?}: {e}"))?;
                Some((Arc::new(client_config(ca, client)?), name))
            }
            Some("http") => {
                if !super::loopback(&host) {
                    return Err(format!(
                        "url {url} is plain http to a host that is not loopback: use https with ca"
                    ));
                }
                None
            }
            _ => return Err(format!("url {url:?} is not http:// or https://")),
        };
        let port = uri
            .port_u16()
            .unwrap_or(if tls.is_some() { 443 } else { 80 });
        Ok(Webhook {
            url: uri,
            host,
            port,
            tls,
            settings,
        })
    }

    /// Where it posts.
    pub fn url(&self) -> &Uri {
        &self.url
    }

    /// POSTs `body` (with its delivery id, if it has one) and waits for a 2xx answer.
    pub(crate) async fn post(&self, body: Vec<u8>, delivery: Option<&str>) -> anyhow::Result<()> {
        let mut req = hyper::Request::post(
            self.url
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_string(),
        )
        .header(
            hyper::header::HOST,
            self.url.authority().map_or("", |a| a.as_str()),
        )
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header(
            hyper::header::USER_AGENT,
            concat!("lockdown-collector/", env!("CARGO_PKG_VERSION")),
        );
        if let Some(delivery) = delivery {
            req = req.header("x-lockdown-delivery", delivery);
        }
        if let Some(secret) = &self.settings.secret {
            req = req.header("x-lockdown-signature", signature(secret, &body));
        }
        let req = req
            .body(Full::new(bytes::Bytes::from(body)))
            .context("build the request")?;
        let exchange = async {
            let tcp = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
                .await
                .with_context(|| format!("connect to {}:{}", self.host, self.port))?;
            tcp.set_nodelay(true)?;
            match &self.tls {
                None => send(TokioIo::new(tcp), req).await,
                Some((config, name)) => {
                    let tls = tokio_rustls::TlsConnector::from(Arc::clone(config))
                        .connect(name.clone(), tcp)
                        .await
                        .context("TLS handshake")?;
                    send(TokioIo::new(tls), req).await
                }
            }
        };
        let status = tokio::time::timeout(self.settings.timeout, exchange)
            .await
            .map_err(|_| anyhow::anyhow!("no answer within {:?}", self.settings.timeout))??;
        anyhow::ensure!(status.is_success(), "the receiver answered {status}");
        Ok(())
    }
}

/// One request on a new HTTP/1.1 connection; the answer's status.
async fn send<IO>(
    io: IO,
    req: hyper::Request<Full<bytes::Bytes>>,
) -> anyhow::Result<hyper::StatusCode>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .context("HTTP handshake")?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let resp = sender.send_request(req).await.context("HTTP request")?;
    Ok(resp.status())
}

pub(crate) fn client_config(
    ca: &Path,
    client: Option<(&Path, &Path)>,
) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("ca {}: {e}", ca.display()))?;
    for c in certs {
        roots
            .add(c)
            .map_err(|e| format!("ca {}: {e}", ca.display()))?;
    }
    if roots.is_empty() {
        return Err(format!("ca {}: no certificate in it", ca.display()));
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots);
    match client {
        None => Ok(builder.with_no_client_auth()),
        Some((cert, key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .and_then(|i| i.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("cert {}: {e}", cert.display()))?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| format!("key {}: {e}", key.display()))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("cert: {e}"))
        }
    }
}

/// `sha256=<hex>`: the HMAC-SHA256 of `body` under `secret`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let mut mac =
        hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(body);
    let tag = mac.finalize().into_bytes();
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256=");
    for b in tag {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// The JSON body of one delivery.
pub fn body(sink: &str, delivery: &str, events: &[Stored]) -> Vec<u8> {
    use serde_json::value::RawValue;
    #[derive(serde::Serialize)]
    struct Delivery<'a> {
        sink: &'a str,
        delivery: &'a str,
        events: Vec<One<'a>>,
    }
    #[derive(serde::Serialize)]
    struct One<'a> {
        id: String,
        cursor: u64,
        node: &'a str,
        epoch: u64,
        seq: u64,
        time: &'a str,
        kind: &'a str,
        severity: &'a str,
        rule_id: &'a str,
        path: &'a str,
        /// The stored JSON as it is, checked but not parsed into a tree and written again.
        event: Option<&'a RawValue>,
    }
    let events = events
        .iter()
        .map(|s| {
            let e = &s.event;
            One {
                id: format!("{}/{}/{}", e.node, e.epoch, e.seq),
                cursor: s.cursor,
                node: &e.node,
                epoch: e.epoch,
                seq: e.seq,
                time: &e.time,
                kind: &e.kind,
                severity: &e.severity,
                rule_id: &e.rule_id,
                path: &e.path,
                event: serde_json::from_slice(&e.body).ok(),
            }
        })
        .collect();
    serde_json::to_vec(&Delivery {
        sink,
        delivery,
        events,
    })
    .expect("the delivery serialises")
}

/// A webhook sink.
pub struct WebhookSink {
    name: String,
    hook: Webhook,
}

impl WebhookSink {
    /// The sink `name` delivering to `hook`.
    pub fn new(name: String, hook: Webhook) -> WebhookSink {
        WebhookSink { name, hook }
    }
}

impl Sink for WebhookSink {
    fn name(&self) -> &str {
        &self.name
    }

    async fn deliver(&mut self, events: &[Stored]) -> anyhow::Result<()> {
        for chunk in events.chunks(self.hook.settings.max_batch_events) {
            let (first, last) = (chunk[0].cursor, chunk[chunk.len() - 1].cursor);
            let delivery = format!("{}:{first}-{last}", self.name);
            let body = body(&self.name, &delivery, chunk);
            self.hook
                .post(body, Some(&delivery))
                .await
                .with_context(|| format!("webhook {}", self.hook.url))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_in_hex() {
        // RFC 4231, test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn plain_http_only_to_loopback_and_https_only_with_a_ca() {
        let settings = || Settings {
            timeout: Duration::from_secs(1),
            max_batch_events: 10,
            secret: Some(b"s3cret".to_vec()),
        };
        assert!(Webhook::new("http://127.0.0.1:9/hook", None, None, settings()).is_ok());
        assert!(Webhook::new("http://localhost/hook", None, None, settings()).is_ok());
        let err = Webhook::new("http://hooks.example/x", None, None, settings()).unwrap_err();
        assert!(err.contains("not loopback"), "{err}");
        let err = Webhook::new("https://hooks.example/x", None, None, settings()).unwrap_err();
        assert!(err.contains("needs ca"), "{err}");
        let hook = Webhook::new("http://[::1]:9/x", None, None, settings()).unwrap();
        assert!(!format!("{hook:?}").contains("s3cret"));
    }
}

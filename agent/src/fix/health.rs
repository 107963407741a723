//! The health gate: after a write, the component must come back healthy by its own probes,
//! run the way the kubelet runs them.
//!
//! - The probes are the manifest's `httpGet` probes (scheme, host, port or named port, path).
//!   No host means the pod IP; control-plane pods run on the host network, so that is the
//!   node, reached on 127.0.0.1. HTTPS is not verified, as the kubelet does not verify it.
//!   Success is a status from 200 to 399, as for the kubelet.
//! - Phase 1, up: the startup probe (else readiness, else liveness) must succeed. The first
//!   try is after its `initialDelaySeconds`, then one every `periodSeconds`, until
//!   `initialDelaySeconds + failureThreshold × periodSeconds` plus 30 s for the kubelet to
//!   restart the container (or `fix.health_timeout`). Waiting out the initial delay also lets
//!   the kubelet replace the old process, so that its last answers are not taken for the new
//!   one's.
//! - Phase 2, stays up: the liveness probe (else the phase 1 probe) for
//!   `failureThreshold × periodSeconds`; `failureThreshold` failures in a row, the count at
//!   which the kubelet would restart the container, fail the gate.
//!
//! A component with no `httpGet` probe cannot be gated, and is never fixed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::manifest::pod::{Probe, ProbeKind};
use crate::manifest::{ControlPlane, Manifest};

/// Time allowed on top of the probes' own budget for the kubelet to restart the container.
const RESTART_ALLOWANCE: Duration = Duration::from_secs(30);
/// Evidence kept for an event.
const EVIDENCE: usize = 12;

/// One probe, resolved to an address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Target {
    /// startup, readiness or liveness.
    pub kind: &'static str,
    /// `https` or `http`.
    pub scheme: String,
    /// Host to connect to.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Path and query.
    pub path: String,
    /// `initialDelaySeconds`.
    pub initial_delay: Duration,
    /// `periodSeconds`.
    pub period: Duration,
    /// `timeoutSeconds`.
    pub timeout: Duration,
    /// `failureThreshold`.
    pub failure_threshold: u32,
}

impl Target {
    /// `https://127.0.0.1:6443/livez`.
    pub fn url(&self) -> String {
        format!("{}://{}:{}{}", self.scheme, self.host, self.port, self.path)
    }
}

/// The probes a gate runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatePlan {
    /// Phase 1.
    pub up: Target,
    /// Phase 2.
    pub live: Target,
    /// Phase 1 deadline.
    pub up_timeout: Duration,
}

/// One probe attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Attempt {
    /// Milliseconds since the gate started.
    pub at_ms: u64,
    /// Which probe.
    pub probe: String,
    /// `200`, `401`, or the connection error.
    pub result: String,
    /// Whether it counts as a success.
    pub ok: bool,
}

/// The gate's verdict with its evidence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    /// Healthy.
    pub healthy: bool,
    /// Why not, or how.
    pub summary: String,
    /// The last attempts.
    pub attempts: Vec<Attempt>,
}

fn kind_name(k: ProbeKind) -> &'static str {
    match k {
        ProbeKind::Startup => "startup",
        ProbeKind::Readiness => "readiness",
        ProbeKind::Liveness => "liveness",
    }
}

/// The gate for a manifest, or why it cannot be gated.
pub fn plan(
    m: &Manifest,
    cp: &ControlPlane,
    timeout: Option<Duration>,
) -> Result<GatePlan, String> {
    let c = &m.pod.containers[cp.container];
    let resolve = |p: &Probe| -> Result<Target, String> {
        let h = p.http_get.as_ref().ok_or("not an httpGet probe")?;
        let port = match h.port.parse::<u16>() {
            Ok(n) => n,
            Err(_) => c
                .ports
                .iter()
                .find(|(name, _)| *name == h.port)
                .and_then(|(_, n)| n.parse().ok())
                .ok_or_else(|| format!("the probe port {:?} is not a container port", h.port))?,
        };
        Ok(Target {
            kind: kind_name(p.kind),
            scheme: h.scheme.to_ascii_lowercase(),
            host: h.host.clone().unwrap_or_else(|| "127.0.0.1".into()),
            port,
            path: if h.path.starts_with('/') {
                h.path.clone()
            } else {
                format!("/{}", h.path)
            },
            initial_delay: Duration::from_secs(p.initial_delay_seconds.into()),
            period: Duration::from_secs(p.period_seconds.max(1).into()),
            timeout: Duration::from_secs(p.timeout_seconds.max(1).into()),
            failure_threshold: p.failure_threshold.max(1),
        })
    };
    let find = |k: ProbeKind| {
        c.probes
            .iter()
            .find(|p| p.kind == k && p.http_get.is_some())
    };
    let up = find(ProbeKind::Startup)
        .or_else(|| find(ProbeKind::Readiness))
        .or_else(|| find(ProbeKind::Liveness))
        .ok_or_else(|| {
            format!(
                "{} has no httpGet probe, so its health cannot be checked after a write",
                cp.component
            )
        })?;
    let live = find(ProbeKind::Liveness).unwrap_or(up);
    let up = resolve(up)?;
    let live = resolve(live)?;
    for t in [&up, &live] {
        if t.scheme != "http" && t.scheme != "https" {
            return Err(format!("probe scheme {:?} is not HTTP or HTTPS", t.scheme));
        }
    }
    let up_timeout =
        timeout.unwrap_or(up.initial_delay + up.period * up.failure_threshold + RESTART_ALLOWANCE);
    Ok(GatePlan {
        up,
        live,
        up_timeout,
    })
}

/// Runs the gate.
pub async fn run(g: &GatePlan) -> Verdict {
    let t0 = Instant::now();
    let mut attempts: Vec<Attempt> = Vec::new();
    let mut record = |t: &Target, r: &Result<u16, String>| {
        let ok = matches!(r, Ok(code) if (200..400).contains(code));
        attempts.push(Attempt {
            at_ms: t0.elapsed().as_millis() as u64,
            probe: t.kind.to_string(),
            result: match r {
                Ok(code) => code.to_string(),
                Err(e) => e.clone(),
            },
            ok,
        });
        if attempts.len() > EVIDENCE {
            attempts.remove(0);
        }
        tracing::debug!(probe = t.kind, url = %t.url(), ?r, ok, "health probe");
        ok
    };
    tokio::time::sleep(g.up.initial_delay).await;
    let deadline = t0 + g.up_timeout;
    loop {
        let started = Instant::now();
        let r = probe(&g.up).await;
        if record(&g.up, &r) {
            break;
        }
        if Instant::now() + g.up.period > deadline {
            let attempts = attempts.clone();
            return Verdict {
                healthy: false,
                summary: format!(
                    "{} probe {} did not succeed within {:?}",
                    g.up.kind,
                    g.up.url(),
                    g.up_timeout
                ),
                attempts,
            };
        }
        tokio::time::sleep_until((started + g.up.period).into()).await;
    }
    let window = g.live.period * g.live.failure_threshold;
    let until = Instant::now() + window;
    let mut failures = 0;
    while Instant::now() < until {
        let started = Instant::now();
        tokio::time::sleep_until((started + g.live.period).into()).await;
        let r = probe(&g.live).await;
        if record(&g.live, &r) {
            failures = 0;
        } else {
            failures += 1;
            if failures >= g.live.failure_threshold {
                let attempts = attempts.clone();
                return Verdict {
                    healthy: false,
                    summary: format!(
                        "{} probe {} failed {failures} times in a row after the component came up",
                        g.live.kind,
                        g.live.url()
                    ),
                    attempts,
                };
            }
        }
    }
    Verdict {
        healthy: true,
        summary: format!(
            "{} probe {} succeeded and {} probe {} held for {window:?}",
            g.up.kind,
            g.up.url(),
            g.live.kind,
            g.live.url()
        ),
        attempts,
    }
}

/// One probe: the status code, or what went wrong.
pub async fn probe(t: &Target) -> Result<u16, String> {
    match tokio::time::timeout(t.timeout, probe_inner(t)).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {:?}", t.timeout)),
    }
}

async fn probe_inner(t: &Target) -> Result<u16, String> {
    let tcp = TcpStream::connect((t.host.as_str(), t.port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let host = if t.host.contains(':') {
        format!("[{}]", t.host)
    } else {
        t.host.clone()
    };
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {host}:{}\r\nUser-Agent: kube-probe/kube-lockdown\r\nAccept: */*\r\nConnection: close\r\n\r\n",
        t.path, t.port
    );
    if t.scheme == "https" {
        let name = rustls_pki_types::ServerName::try_from(t.host.clone())
            .map_err(|e| format!("host {:?}: {e}", t.host))?;
        let tls = tokio_rustls::TlsConnector::from(tls_config())
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        exchange(tls, &request).await
    } else {
        exchange(tcp, &request).await
    }
}

async fn exchange<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut s: S,
    request: &str,
) -> Result<u16, String> {
    s.write_all(request.as_bytes())
        .await
        .map_err(|e| format!("send: {e}"))?;
    // The status line is all a probe needs.
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 256];
    while !buf.windows(2).any(|w| w == b"\r\n") && buf.len() < 4096 {
        let n = s.read(&mut chunk).await.map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let line = String::from_utf8_lossy(&buf);
    let line = line.lines().next().unwrap_or_default();
    let mut parts = line.split(' ');
    match (
        parts.next(),
        parts.next().and_then(|c| c.parse::<u16>().ok()),
    ) {
        (Some(v), Some(code)) if v.starts_with("HTTP/") => Ok(code),
        _ => Err(format!("not an HTTP response: {line:?}")),
    }
}

/// TLS as the kubelet's probes do it: no certificate verification.
fn tls_config() -> Arc<rustls::ClientConfig> {
    static CONFIG: std::sync::OnceLock<Arc<rustls::ClientConfig>> = std::sync::OnceLock::new();
    Arc::clone(CONFIG.get_or_init(|| {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
            .with_no_client_auth();
        Arc::new(config)
    }))
}

/// Accepts any server certificate (probes only; never used for the collector).
#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls_pki_types::CertificateDer<'_>,
        _intermediates: &[rustls_pki_types::CertificateDer<'_>],
        _server_name: &rustls_pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

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
//! - Only the **new** instance's answers count: the old one may go on answering 200 for
//!   seconds after the write (the kubelet has not replaced it yet, or kube-apiserver's
//!   `--shutdown-delay-duration`). A phase 1 success counts once the new instance is known
//!   to run: a process whose arguments are the new manifest's flags is seen in `/proc` with
//!   none left running the old ones, or (when the host's processes are not visible) a probe
//!   was seen failing since the write, i.e. the old instance went away. Without either, the
//!   gate keeps waiting, and rolls back when its time is up.
//!
//! A component with no `httpGet` probe cannot be gated, and is never fixed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

pub use crate::event::Attempt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::manifest::pod::{Probe, ProbeKind};
use crate::manifest::{ControlPlane, Manifest};

/// Time allowed on top of the probes' own budget for the kubelet to restart the container.
const RESTART_ALLOWANCE: Duration = Duration::from_secs(30);
/// Evidence kept for an event.
const EVIDENCE: usize = 12;
/// How often the gate looks for the new instance before the first probe.
const LOOK_EVERY: Duration = Duration::from_millis(50);

/// Tells the new instance from the old: the component's flag words (the arguments after the
/// executable) in the new manifest and in the one it replaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    /// What the new process runs with.
    pub new: Vec<String>,
    /// What the old process ran with.
    pub old: Vec<String>,
}

impl Instance {
    /// The instance check between two versions of a component, when their argument lists
    /// differ (else only a failed probe can tell them apart).
    pub fn between(old: &ControlPlane, new: &ControlPlane) -> Option<Instance> {
        let words = |cp: &ControlPlane| -> Vec<String> {
            cp.flags
                .args
                .iter()
                .filter(|a| a.source != crate::manifest::flags::ArgSource::Env)
                .map(|a| a.text.clone())
                .collect()
        };
        let (old, new) = (words(old), words(new));
        (old != new && !new.is_empty() && !old.is_empty()).then_some(Instance { new, old })
    }

    /// Reverses the roles, for the health check after a rollback.
    pub fn reversed(&self) -> Instance {
        Instance {
            new: self.old.clone(),
            old: self.new.clone(),
        }
    }
}

/// What `/proc` shows of the two instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Only the new one runs.
    New,
    /// The old one still runs (perhaps beside the new one).
    Old,
    /// Neither is visible (not started yet, or the host's processes are hidden from us).
    Neither,
}

/// Whether a process's command line runs `words`: its arguments end with exactly them,
/// after the executable (and at most one sub-command, as `hyperkube kube-apiserver`).
pub fn runs(cmdline: &[String], words: &[String]) -> bool {
    cmdline.len() > words.len()
        && cmdline.len() - words.len() <= 2
        && cmdline[cmdline.len() - words.len()..] == *words
}

/// Classifies command lines by instance.
pub fn classify<'a>(cmdlines: impl IntoIterator<Item = &'a [String]>, i: &Instance) -> Seen {
    let (mut new, mut old) = (false, false);
    for c in cmdlines {
        new |= runs(c, &i.new);
        old |= runs(c, &i.old);
    }
    match (new, old) {
        (_, true) => Seen::Old,
        (true, false) => Seen::New,
        (false, false) => Seen::Neither,
    }
}

/// Reads every visible process's command line from `/proc`.
fn cmdlines() -> Vec<Vec<String>> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        })
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .filter(|raw| !raw.is_empty() && raw.len() < 1 << 20)
        .map(|raw| {
            raw.strip_suffix(&[0])
                .unwrap_or(&raw)
                .split(|b| *b == 0)
                .map(|w| String::from_utf8_lossy(w).into_owned())
                .collect()
        })
        .collect()
}

fn look(i: Option<&Instance>) -> Seen {
    match i {
        Some(i) => classify(cmdlines().iter().map(Vec::as_slice), i),
        None => Seen::Neither,
    }
}

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
    /// How to tell the new instance from the old; `None`: only a failed probe can.
    pub instance: Option<Instance>,
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
        instance: None,
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
    // Until the first probe, watch for the old instance going away: a new process in
    // /proc, or the probe port refusing.
    let mut new_seen = false;
    let first = t0 + g.up.initial_delay;
    while Instant::now() < first && !new_seen {
        new_seen = match look(g.instance.as_ref()) {
            Seen::New => true,
            Seen::Old => false,
            Seen::Neither => probe(&g.up).await.is_err(),
        };
        tokio::time::sleep(LOOK_EVERY.min(first.saturating_duration_since(Instant::now()))).await;
    }
    tokio::time::sleep_until(first.into()).await;
    let deadline = t0 + g.up_timeout;
    let mut old_answered = 0;
    loop {
        let started = Instant::now();
        let seen = look(g.instance.as_ref());
        new_seen = match seen {
            Seen::New => true,
            Seen::Old => false,
            Seen::Neither => new_seen,
        };
        let r = probe(&g.up).await;
        let ok = record(&g.up, &r);
        if ok && new_seen {
            break;
        }
        if ok {
            old_answered += 1; // the old instance still answers: it does not count
        } else if seen == Seen::Neither {
            new_seen = true; // the old instance is gone; what answers next is the new one
        }
        if Instant::now() + g.up.period > deadline {
            let attempts = attempts.clone();
            let summary = if old_answered > 0 {
                format!(
                    "{} probe {} answered {old_answered} times within {:?}, but never from an instance known to be the new one (the old one still ran, or could not be told apart: no process with the new flags in /proc and no gap in the answers)",
                    g.up.kind,
                    g.up.url(),
                    g.up_timeout
                )
            } else {
                format!(
                    "{} probe {} did not succeed within {:?}",
                    g.up.kind,
                    g.up.url(),
                    g.up_timeout
                )
            };
            return Verdict {
                healthy: false,
                summary,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn v(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| w.to_string()).collect()
    }

    #[test]
    fn instances_are_told_apart_by_their_flags() {
        let i = Instance {
            new: v(&["--a=1", "--profiling=false"]),
            old: v(&["--a=1"]),
        };
        let old = v(&["kube-scheduler", "--a=1"]);
        let new = v(&[
            "/usr/local/bin/kube-scheduler",
            "--a=1",
            "--profiling=false",
        ]);
        let hyperkube = v(&["hyperkube", "kube-scheduler", "--a=1", "--profiling=false"]);
        let other = v(&["bash", "-c", "x", "--a=1"]);
        assert_eq!(classify([old.as_slice()], &i), Seen::Old);
        assert_eq!(classify([old.as_slice(), new.as_slice()], &i), Seen::Old);
        assert_eq!(classify([new.as_slice()], &i), Seen::New);
        assert_eq!(classify([hyperkube.as_slice()], &i), Seen::New);
        assert_eq!(classify([other.as_slice()], &i), Seen::Neither);
        assert_eq!(classify(std::iter::empty(), &i), Seen::Neither);
    }
}

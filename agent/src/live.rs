//! What the API server really serves. Flags say what should be served; a probe looks, from
//! the kube-apiserver manifest's secure port, bind address and certificate files:
//! - a TLS 1.2/1.3 handshake on the secure port, whose chain is then verified against the
//!   cluster CA for the advertise address, and whose leaf is compared with `--tls-cert-file`;
//! - a TLS 1.1 ClientHello on the same port (rustls cannot speak TLS 1.1, so it is written
//!   here, a few fixed bytes): a ServerHello back means TLS 1.0 or 1.1 is accepted;
//! - a plaintext `GET /api` on the old insecure port and on the secure port;
//! - unauthenticated `GET /api` and `GET /livez` over TLS.
//!
//! Probes are read-only, send no credentials, are bounded in time, and go to loopback unless
//! `live.address` says otherwise. A port that does not answer is reported as down, not as
//! insecure.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::manifest::version::Version;

/// The old default insecure port of kube-apiserver (removed in 1.24, only 0 allowed since
/// 1.20): probed for plaintext when the manifest names no other.
pub const OLD_INSECURE_PORT: u16 = 8080;

/// The most a response's head is read (status line and headers); the body is read up to
/// this too, to tell a Kubernetes API from something else.
const MAX_RESPONSE: usize = 16 * 1024;

/// Where and what to probe, from the kube-apiserver manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The secure port's address.
    pub secure: SocketAddr,
    /// The name the chain must be valid for: the advertise address, else `kubernetes`.
    pub server_name: String,
    /// `--tls-cert-file` on the host, when set.
    pub cert_file: Option<PathBuf>,
    /// Where plaintext must not be served (the old insecure port).
    pub plaintext: Vec<SocketAddr>,
    /// Whether the manifest turns anonymous access off (or limits it to the health
    /// endpoints): then `/api` must refuse an unauthenticated request.
    pub anonymous_off: bool,
    /// The cluster CA on the host.
    pub cluster_ca: PathBuf,
}

/// How the target's address is chosen.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Addressing {
    /// `live.address`: probe there, whatever the bind address.
    pub address: Option<IpAddr>,
}

impl Target {
    /// The target for a kube-apiserver with these flags (`value` gives a flag's value), or
    /// why it is not probed. `host_path` maps a container path to the host.
    pub fn of(
        value: &dyn Fn(&str) -> Option<String>,
        version: Option<Version>,
        host_path: &dyn Fn(&str) -> Option<PathBuf>,
        anonymous_off: bool,
        cluster_ca: PathBuf,
        addressing: &Addressing,
    ) -> Result<Target, String> {
        let port = |flag: &str, default: u16| -> Result<u16, String> {
            match value(flag) {
                None => Ok(default),
                Some(p) => p
                    .parse()
                    .map_err(|_| format!("--{flag}={p} is not a port number")),
            }
        };
        let secure_port = port("secure-port", 6443)?;
        if secure_port == 0 {
            return Err("--secure-port=0: nothing is served over TLS".into());
        }
        let ip = |flag: &str, default: IpAddr| -> Result<IpAddr, String> {
            let bind = match value(flag) {
                None => default,
                Some(a) if a.is_empty() => default,
                Some(a) => a
                    .parse()
                    .map_err(|_| format!("--{flag}={a} is not an IP address"))?,
            };
            match (addressing.address, bind) {
                (Some(a), _) => Ok(a),
                (None, b) if b.is_unspecified() => Ok(IpAddr::V4(Ipv4Addr::LOCALHOST)),
                (None, b) if b.is_loopback() => Ok(b),
                (None, b) => Err(format!(
                    "--{flag}={b} is not loopback, and probes go to loopback unless live.address is set"
                )),
            }
        };
        let secure = SocketAddr::new(
            ip("bind-address", Ipv4Addr::UNSPECIFIED.into())?,
            secure_port,
        );
        // The insecure port: what the manifest names, else the old default where it existed.
        let insecure_port = port("insecure-port", OLD_INSECURE_PORT)?;
        let had_insecure = version.is_none_or(|v| v.minor_pair() < (1, 24));
        let mut plaintext = Vec::new();
        if insecure_port != 0 && (had_insecure || value("insecure-port").is_some()) {
            let insecure_ip =
                ip("insecure-bind-address", Ipv4Addr::LOCALHOST.into()).unwrap_or(secure.ip());
            plaintext.push(SocketAddr::new(insecure_ip, insecure_port));
        }
        Ok(Target {
            secure,
            server_name: value("advertise-address").unwrap_or_else(|| "kubernetes".into()),
            cert_file: value("tls-cert-file").and_then(|f| host_path(&f)),
            plaintext,
            anonymous_off,
            cluster_ca,
        })
    }
}

/// What a probe saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    /// Where it looked.
    pub target: Target,
    /// Why the secure port could not be reached (refused, timed out): the server is down.
    pub down: Option<String>,
    /// The TLS 1.2/1.3 handshake: what was served, or why it failed.
    pub handshake: Result<Handshake, String>,
    /// The TLS 1.1 ClientHello: the version the server accepted (`TLSv1.1`, `TLSv1.0`), or
    /// `None` when it refused; `Err` when that could not be told.
    pub legacy: Result<Option<String>, String>,
    /// Plaintext `GET /api` where it must not answer: the address, and the Kubernetes API's
    /// answer (its status line) when one came.
    pub plaintext: Vec<(SocketAddr, Result<Option<String>, String>)>,
    /// Unauthenticated `GET /api` over TLS: the status code.
    pub api: Result<u16, String>,
    /// Unauthenticated `GET /livez` over TLS: the status code.
    pub livez: Result<u16, String>,
    /// The certificates in `--tls-cert-file`, when it is set.
    pub cert_file: Option<Result<Vec<crate::tls::Cert>, String>>,
}

/// A completed TLS 1.2/1.3 handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handshake {
    /// The protocol version.
    pub version: String,
    /// The served leaf.
    pub leaf: crate::tls::Cert,
    /// Whether the served chain verifies against the cluster CA for the server name.
    pub verified: Result<(), String>,
}

/// Probes `target`, each step within `timeout`.
pub fn probe(target: &Target, timeout: Duration) -> Observed {
    let cert_file = target.cert_file.as_ref().map(|f| {
        crate::io::read_bounded(f, crate::io::MAX_AUX_BYTES)
            .map_err(String::from)
            .and_then(|pem| crate::tls::certs_from_pem(&pem))
            .map_err(|e| format!("{}: {e}", f.display()))
    });
    let plaintext = target
        .plaintext
        .iter()
        .chain(std::iter::once(&target.secure))
        .map(|a| (*a, plaintext_api(*a, timeout)))
        .collect();
    let down = TcpStream::connect_timeout(&target.secure, timeout)
        .err()
        .map(|e| format!("{}: {}", target.secure, crate::io::io_problem(&e)));
    let handshake = handshake(target, timeout);
    Observed {
        target: target.clone(),
        down,
        handshake,
        legacy: legacy_hello(target.secure, timeout),
        plaintext,
        api: tls_get(target, "/api", timeout),
        livez: tls_get(target, "/livez", timeout),
        cert_file,
    }
}

/// The ring provider, shared by the probes.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Accepts any chain, keeping it to be judged after the handshake: the probe must see what
/// is served even when it is wrong. Handshake signatures are still verified.
#[derive(Debug)]
struct Keep {
    provider: Arc<CryptoProvider>,
    chain: Mutex<Vec<CertificateDer<'static>>>,
}

impl ServerCertVerifier for Keep {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let mut chain = self.chain.lock().unwrap_or_else(|e| e.into_inner());
        chain.clear();
        chain.push(end_entity.clone().into_owned());
        chain.extend(intermediates.iter().map(|c| c.clone().into_owned()));
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algs = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algs = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A TLS connection to the secure port that keeps the served chain.
fn connect(
    target: &Target,
    timeout: Duration,
) -> Result<
    (
        rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
        Arc<Keep>,
    ),
    String,
> {
    let provider = provider();
    let keep = Arc::new(Keep {
        provider: provider.clone(),
        chain: Mutex::new(Vec::new()),
    });
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(keep.clone())
        .with_no_client_auth();
    let name = server_name(&target.server_name)?;
    let conn = rustls::ClientConnection::new(Arc::new(config), name).map_err(|e| e.to_string())?;
    let tcp = TcpStream::connect_timeout(&target.secure, timeout)
        .map_err(|e| format!("{}: {}", target.secure, crate::io::io_problem(&e)))?;
    tcp.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    tcp.set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let deadline = Instant::now() + timeout;
    while tls.conn.is_handshaking() {
        if Instant::now() > deadline {
            return Err("the TLS handshake timed out".into());
        }
        tls.conn
            .complete_io(&mut tls.sock)
            .map_err(|e| format!("the TLS 1.2/1.3 handshake failed: {e}"))?;
    }
    Ok((tls, keep))
}

/// The name to verify the chain for (an IP address or a DNS name).
fn server_name(name: &str) -> Result<ServerName<'static>, String> {
    ServerName::try_from(name.to_string()).map_err(|_| format!("{name:?} is not a server name"))
}

/// A TLS 1.2/1.3 handshake, and the served chain judged against the cluster CA.
fn handshake(target: &Target, timeout: Duration) -> Result<Handshake, String> {
    let (tls, keep) = connect(target, timeout)?;
    let version = tls
        .conn
        .protocol_version()
        .and_then(|v| v.as_str())
        .unwrap_or("unknown")
        .replace("TLSv1_", "TLSv1.");
    let chain = keep.chain.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let leaf_der = chain.first().ok_or("no certificate was served")?;
    let leaf =
        crate::tls::cert_from_der(leaf_der).map_err(|e| format!("the served certificate: {e}"))?;
    Ok(Handshake {
        version,
        leaf,
        verified: verify(target, &chain),
    })
}

/// Whether `chain` verifies against the cluster CA for the target's server name.
fn verify(target: &Target, chain: &[CertificateDer<'static>]) -> Result<(), String> {
    let pem =
        crate::io::read_bounded(&target.cluster_ca, crate::io::MAX_AUX_BYTES).map_err(|e| {
            format!(
                "cannot read the cluster CA {}: {e}",
                target.cluster_ca.display()
            )
        })?;
    let mut roots = rustls::RootCertStore::empty();
    use rustls_pki_types::pem::PemObject;
    for der in CertificateDer::pem_slice_iter(&pem) {
        let der = der.map_err(|e| format!("the cluster CA: {e}"))?;
        roots.add(der).map_err(|e| format!("the cluster CA: {e}"))?;
    }
    let verifier =
        rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(|e| format!("the cluster CA: {e}"))?;
    let name = server_name(&target.server_name)?;
    verifier
        .verify_server_cert(&chain[0], &chain[1..], &name, &[], UnixTime::now())
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// An unauthenticated `GET path` over TLS: the status code.
fn tls_get(target: &Target, path: &str, timeout: Duration) -> Result<u16, String> {
    let (mut tls, _) = connect(target, timeout)?;
    let (status, _) = http_get(&mut tls, &target.server_name, path, timeout)?;
    Ok(status)
}

/// Sends `GET path` (no credentials, `Connection: close`) and reads the status code and up
/// to [`MAX_RESPONSE`] bytes of the response, within `timeout` in all (a server that sends a
/// byte at a time does not hold the probe).
fn http_get<S: Read + Write>(
    stream: &mut S,
    host: &str,
    path: &str,
    timeout: Duration,
) -> Result<(u16, String), String> {
    let deadline = Instant::now() + timeout;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: kube-lockdown-probe\r\nAccept: application/json\r\nConnection: close\r\n\r\n"
    )
    .and_then(|()| stream.flush())
    .map_err(|e| format!("cannot send GET {path}: {e}"))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while buf.len() < MAX_RESPONSE && Instant::now() < deadline {
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            // A TLS peer that closes without close_notify still sent its answer.
            Err(_) if !buf.is_empty() => break,
            Err(e) => return Err(format!("no answer to GET {path}: {e}")),
        }
    }
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .strip_prefix("HTTP/1.")
        .and_then(|r| r.get(2..5))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("GET {path}: not an HTTP answer"))?;
    Ok((status, text))
}

/// A plaintext `GET /api` at `addr`: the status line when a Kubernetes API answered, `None`
/// when nothing did (refused, closed, Go's "HTTP request to an HTTPS server", or something
/// that is not a Kubernetes API).
fn plaintext_api(addr: SocketAddr, timeout: Duration) -> Result<Option<String>, String> {
    let mut tcp = match TcpStream::connect_timeout(&addr, timeout) {
        Ok(t) => t,
        Err(_) => return Ok(None),
    };
    tcp.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    tcp.set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let Ok((status, text)) = http_get(&mut tcp, &addr.ip().to_string(), "/api", timeout) else {
        return Ok(None);
    };
    let kubernetes = text.contains("\"APIVersions\"")
        || text.contains("\"kind\":\"Status\"")
        || text.contains("\"kind\": \"Status\"");
    let line = clip(text.lines().next().unwrap_or_default());
    Ok((status != 400 && kubernetes).then_some(line))
}

/// At most 120 printable characters of what a server sent: evidence leaves the node, and
/// whatever listens chooses these bytes.
pub fn clip(text: &str) -> String {
    crate::redact::clip(text, 120)
}

/// Offers TLS 1.1 (and so 1.0) only: the version the server picks, or `None` when it
/// refuses.
fn legacy_hello(addr: SocketAddr, timeout: Duration) -> Result<Option<String>, String> {
    let mut tcp = TcpStream::connect_timeout(&addr, timeout)
        .map_err(|e| format!("{addr}: {}", crate::io::io_problem(&e)))?;
    tcp.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    tcp.set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    tcp.write_all(&legacy_client_hello())
        .map_err(|e| format!("cannot send a TLS 1.1 ClientHello: {e}"))?;
    let mut head = [0u8; 5];
    if tcp.read_exact(&mut head).is_err() {
        return Ok(None); // closed: refused
    }
    match head[0] {
        // An alert: refused (protocol_version, handshake_failure).
        0x15 => Ok(None),
        0x16 => {
            let mut body = [0u8; 6];
            tcp.read_exact(&mut body)
                .map_err(|e| format!("a short ServerHello: {e}"))?;
            if body[0] != 0x02 {
                return Err(format!(
                    "handshake message {} instead of a ServerHello",
                    body[0]
                ));
            }
            Ok(match (body[4], body[5]) {
                (3, 1) => Some("TLSv1.0".into()),
                (3, 2) => Some("TLSv1.1".into()),
                (3, 0) => Some("SSLv3".into()),
                _ => None, // a newer version than was offered: not an acceptance of 1.1
            })
        }
        b => Err(format!("record type {b} after a ClientHello: not TLS")),
    }
}

/// A TLS 1.1 ClientHello: ECDHE and RSA key exchange with AES-CBC-SHA (what TLS 1.0 and 1.1
/// servers, Go's among them, offer), the P-256/P-384/X25519 groups, no SNI (an IP target).
fn legacy_client_hello() -> Vec<u8> {
    let suites: [u16; 8] = [
        0xc009, 0xc00a, 0xc013, 0xc014, 0x002f, 0x0035, 0x000a, 0x00ff,
    ];
    let mut ext = Vec::new();
    // supported_groups: x25519, secp256r1, secp384r1.
    ext.extend_from_slice(&[
        0x00, 0x0a, 0x00, 0x08, 0x00, 0x06, 0x00, 0x1d, 0x00, 0x17, 0x00, 0x18,
    ]);
    // ec_point_formats: uncompressed.
    ext.extend_from_slice(&[0x00, 0x0b, 0x00, 0x02, 0x01, 0x00]);
    let mut hello = vec![0x03, 0x02]; // TLS 1.1
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    hello.extend((0..32).map(|i| (seed >> (i % 16 * 8)) as u8 ^ i as u8)); // random
    hello.push(0); // no session id
    hello.extend_from_slice(&((suites.len() * 2) as u16).to_be_bytes());
    for s in suites {
        hello.extend_from_slice(&s.to_be_bytes());
    }
    hello.extend_from_slice(&[0x01, 0x00]); // no compression
    hello.extend_from_slice(&(ext.len() as u16).to_be_bytes());
    hello.extend_from_slice(&ext);
    let mut handshake = vec![0x01];
    handshake.extend_from_slice(&(hello.len() as u32).to_be_bytes()[1..]);
    handshake.extend_from_slice(&hello);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend_from_slice(&(handshake.len() as u16).to_be_bytes());
    record.extend_from_slice(&handshake);
    record
}

/// When the daemon probes: at start, `after_change` after a kube-apiserver manifest's target
/// changes (the kubelet restarts the pod meanwhile), and every `interval`; one probe round at
/// a time, off the daemon's loop.
#[derive(Debug)]
pub struct Schedule {
    /// The targets the last round probed, by manifest.
    probed: Vec<(PathBuf, Result<Target, String>)>,
    /// When the next round is due; `None` while one runs, or with nothing to probe.
    due: Option<Instant>,
    /// Whether a round runs.
    running: bool,
}

impl Default for Schedule {
    fn default() -> Self {
        Schedule {
            probed: Vec::new(),
            due: Some(Instant::now()),
            running: false,
        }
    }
}

impl Schedule {
    /// When the next round is due (never while one runs).
    pub fn due(&self) -> Option<Instant> {
        self.due.filter(|_| !self.running)
    }

    /// The targets as the last scan found them: a change since the last round brings the
    /// next one to `after_change` from `now` at the latest.
    pub fn saw(
        &mut self,
        targets: &[(PathBuf, Result<Target, String>)],
        after_change: Duration,
        now: Instant,
    ) {
        if targets != self.probed.as_slice() {
            let soon = now + after_change;
            self.due = Some(self.due.map_or(soon, |d| d.min(soon)));
        }
    }

    /// A round starts on `targets`.
    pub fn start(&mut self, targets: Vec<(PathBuf, Result<Target, String>)>) {
        self.probed = targets;
        self.running = true;
        self.due = None;
    }

    /// The round ended: the next is due `interval` from `now`, or sooner if a change asked.
    pub fn finished(&mut self, interval: Duration, now: Instant) {
        self.running = false;
        let next = now + interval;
        self.due = Some(self.due.map_or(next, |d| d.min(next)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(port: u16) -> Target {
        Target {
            secure: SocketAddr::from(([127, 0, 0, 1], port)),
            server_name: "10.0.0.10".into(),
            cert_file: None,
            plaintext: Vec::new(),
            anonymous_off: true,
            cluster_ca: PathBuf::from("/etc/kubernetes/pki/ca.crt"),
        }
    }

    #[test]
    fn a_round_is_due_at_start_after_a_change_and_on_the_interval() {
        let t0 = Instant::now();
        let (after, every) = (Duration::from_secs(60), Duration::from_secs(300));
        let mut s = Schedule::default();
        assert!(s.due().is_some_and(|d| d <= Instant::now()), "at start");
        let targets = vec![(PathBuf::from("kube-apiserver.yaml"), Ok(target(6443)))];
        s.start(targets.clone());
        assert_eq!(s.due(), None, "not while a round runs");
        s.finished(every, t0);
        assert_eq!(s.due(), Some(t0 + every));
        s.saw(&targets, after, t0);
        assert_eq!(s.due(), Some(t0 + every), "nothing changed");
        let moved = vec![(PathBuf::from("kube-apiserver.yaml"), Ok(target(7443)))];
        s.saw(&moved, after, t0);
        assert_eq!(s.due(), Some(t0 + after), "a change brings it forward");
        // A change seen during a round is probed after it.
        s.start(moved.clone());
        s.saw(&targets, after, t0);
        assert_eq!(s.due(), None);
        s.finished(every, t0);
        assert_eq!(s.due(), Some(t0 + after));
    }

    #[test]
    fn the_target_follows_the_flags_and_stays_on_loopback() {
        let flags = |pairs: &'static [(&'static str, &'static str)]| {
            move |f: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == f)
                    .map(|(_, v)| v.to_string())
            }
        };
        let host = |p: &str| Some(PathBuf::from(format!("/host{p}")));
        let ca = PathBuf::from("/ca.crt");
        let none = Addressing::default();
        let v131 = Version::parse("1.31.4");
        let t = Target::of(
            &flags(&[
                ("advertise-address", "10.0.0.10"),
                ("tls-cert-file", "/pki/a.crt"),
            ]),
            v131,
            &host,
            true,
            ca.clone(),
            &none,
        )
        .unwrap();
        assert_eq!(t.secure, SocketAddr::from(([127, 0, 0, 1], 6443)));
        assert_eq!(t.server_name, "10.0.0.10");
        assert_eq!(t.cert_file, Some(PathBuf::from("/host/pki/a.crt")));
        assert!(
            t.plaintext.is_empty(),
            "1.24 and later have no insecure port"
        );
        let old = Target::of(
            &flags(&[]),
            Version::parse("1.19.0"),
            &host,
            false,
            ca.clone(),
            &none,
        )
        .unwrap();
        assert_eq!(old.plaintext, [SocketAddr::from(([127, 0, 0, 1], 8080))]);
        let e = Target::of(
            &flags(&[("bind-address", "10.0.0.10")]),
            v131,
            &host,
            true,
            ca.clone(),
            &none,
        )
        .unwrap_err();
        assert!(e.contains("live.address"), "{e}");
        let there = Addressing {
            address: Some("10.0.0.10".parse().unwrap()),
        };
        let t = Target::of(
            &flags(&[("bind-address", "10.0.0.10")]),
            v131,
            &host,
            true,
            ca,
            &there,
        )
        .unwrap();
        assert_eq!(t.secure.ip().to_string(), "10.0.0.10");
    }

    #[test]
    fn what_a_server_sends_is_clipped_before_it_becomes_evidence() {
        let long = format!("HTTP/1.1 200 OK\u{1b}[2J{}", "x".repeat(1000));
        let c = clip(&long);
        assert_eq!(c.chars().count(), 120);
        assert!(
            c.starts_with("HTTP/1.1 200 OK[2J") && !c.contains('\u{1b}'),
            "{c}"
        );
    }

    #[test]
    fn the_legacy_hello_is_a_well_formed_tls_11_client_hello() {
        let h = legacy_client_hello();
        assert_eq!(&h[..3], &[0x16, 0x03, 0x01]);
        assert_eq!(usize::from(u16::from_be_bytes([h[3], h[4]])), h.len() - 5);
        assert_eq!(h[5], 0x01, "ClientHello");
        let len = u32::from_be_bytes([0, h[6], h[7], h[8]]) as usize;
        assert_eq!(len, h.len() - 9);
        assert_eq!(&h[9..11], &[0x03, 0x02], "TLS 1.1");
    }
}

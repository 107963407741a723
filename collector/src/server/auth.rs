//! Who may do what: agents and readers are told apart by name and, with a separate reader
//! CA, by issuer; an agent's certificate must carry the node name it claims.

use tonic::{Request, Status};

use super::ServeError;
use crate::config::Config;

/// Trust anchors parsed from a PEM bundle.
pub(super) struct Anchors(Vec<rustls_pki_types::TrustAnchor<'static>>);

impl Anchors {
    pub(super) fn from_pem(path: &std::path::Path, pem: &[u8]) -> Result<Anchors, ServeError> {
        use rustls_pki_types::pem::PemObject;
        let bad = |message: String| ServeError::Tls {
            path: path.display().to_string(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, message),
        };
        let mut out = Vec::new();
        for der in rustls_pki_types::CertificateDer::pem_slice_iter(pem) {
            let der = der.map_err(|e| bad(format!("not a PEM certificate bundle: {e}")))?;
            let anchor = webpki::anchor_from_trusted_cert(&der)
                .map_err(|e| bad(format!("not a CA certificate: {e}")))?;
            out.push(anchor.to_owned());
        }
        if out.is_empty() {
            return Err(bad("no certificate in it".into()));
        }
        Ok(Anchors(out))
    }

    /// Whether the peer's chain leads to one of these anchors, for client authentication.
    pub(super) fn issued(&self, certs: Option<&[rustls_pki_types::CertificateDer<'_>]>) -> bool {
        let Some((ee, intermediates)) = certs.and_then(|c| c.split_first()) else {
            return false;
        };
        let Ok(ee) = webpki::EndEntityCert::try_from(ee) else {
            return false;
        };
        ee.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &self.0,
            intermediates,
            rustls_pki_types::UnixTime::now(),
            webpki::KeyUsage::client_auth(),
            None,
            None,
        )
        .is_ok()
    }
}

/// The identities a peer's certificate is valid for, checked against `names`.
pub(super) fn cert_names_match(
    req_certs: Option<&[rustls_pki_types::CertificateDer<'_>]>,
    name: &str,
) -> bool {
    let Some(cert) = req_certs.and_then(|c| c.first()) else {
        return false;
    };
    let Ok(ee) = webpki::EndEntityCert::try_from(cert) else {
        return false;
    };
    let Ok(server_name) = rustls_pki_types::ServerName::try_from(name) else {
        return false;
    };
    ee.verify_is_valid_for_subject_name(&server_name).is_ok()
}

/// Certificates of a request's peer.
pub(super) type PeerCerts<'a> = Option<&'a [rustls_pki_types::CertificateDer<'static>]>;

/// Whether an agent stream for `node` may open: not a reader's name, a certificate the
/// agents' CA issued (with a separate reader CA), valid for that node name (with TLS).
pub(super) fn agent(
    cfg: &Config,
    split_cas: Option<&(Anchors, Anchors)>,
    certs: PeerCerts<'_>,
    node: &str,
    remote: Option<std::net::SocketAddr>,
) -> Result<(), Status> {
    if cfg.readers.iter().any(|r| r == node) {
        // Readers are told apart by name: a certificate named like a reader is never an
        // agent, so no agent can also read.
        tracing::warn!(target: "audit", node, remote = ?remote, "an agent stream used a reader's name");
        return Err(Status::permission_denied(format!(
            "{node:?} is a reader name, not a node name"
        )));
    }
    if let Some((agents, _)) = split_cas
        && !agents.issued(certs)
    {
        tracing::warn!(target: "audit", node, remote = ?remote, "an agent stream with a certificate the agents' CA did not issue");
        return Err(Status::permission_denied(
            "agent certificates must be issued by the agents' CA (tls.client_ca)",
        ));
    }
    if cfg.tls.is_some() && !cert_names_match(certs, node) {
        tracing::warn!(target: "audit", node, remote = ?remote, "agent claimed a node name its certificate does not carry");
        return Err(Status::permission_denied(format!(
            "the client certificate is not valid for node {node:?}"
        )));
    }
    Ok(())
}

/// Whether a request may read: with TLS, a certificate named in `readers`, or (with a
/// separate reader CA) one it issued, narrowed by `readers` if set.
pub(super) fn reader<T>(
    cfg: &Config,
    split_cas: Option<&(Anchors, Anchors)>,
    req: &Request<T>,
) -> Result<(), Status> {
    if cfg.tls.is_none() {
        return Ok(()); // plaintext exists only on loopback
    }
    let certs = req.peer_certs();
    if may_read(cfg, split_cas, certs.as_deref().map(Vec::as_slice)) {
        Ok(())
    } else {
        tracing::warn!(target: "audit", remote = ?req.remote_addr(), "query from a certificate not in readers");
        Err(Status::permission_denied(
            "this client certificate is not one of the collector's readers",
        ))
    }
}

/// Whether a request may change exceptions: a reader whose certificate is valid for a name
/// in `admins`. Returns that name, the author of the change. Without TLS (loopback only)
/// the author is "loopback".
pub(super) fn admin<T>(
    cfg: &Config,
    split_cas: Option<&(Anchors, Anchors)>,
    req: &Request<T>,
) -> Result<String, Status> {
    reader(cfg, split_cas, req)?;
    if cfg.tls.is_none() {
        return Ok("loopback".into());
    }
    let certs = req.peer_certs();
    match admin_name(cfg, certs.as_deref().map(Vec::as_slice)) {
        Some(name) => Ok(name),
        None => {
            tracing::warn!(target: "audit", remote = ?req.remote_addr(), "an exception change from a reader that is not an admin");
            Err(Status::permission_denied(
                "changing exceptions needs an admin certificate (the collector's admins)",
            ))
        }
    }
}

/// Whether a peer with these certificates may read (TLS only): a certificate named in
/// `readers`, or (with a separate reader CA) one it issued, narrowed by `readers` if set.
pub(super) fn may_read(
    cfg: &Config,
    split_cas: Option<&(Anchors, Anchors)>,
    certs: PeerCerts<'_>,
) -> bool {
    let named = |names: &[String]| names.iter().any(|n| cert_names_match(certs, n));
    match split_cas {
        Some((_, readers)) => {
            readers.issued(certs) && (cfg.readers.is_empty() || named(&cfg.readers))
        }
        None => named(&cfg.readers),
    }
}

/// The name in `admins` a reader's certificate is valid for, if any.
pub(super) fn admin_name(cfg: &Config, certs: PeerCerts<'_>) -> Option<String> {
    cfg.admins
        .iter()
        .find(|a| cert_names_match(certs, a))
        .cloned()
}

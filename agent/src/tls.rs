//! What certificate and key files hold: each certificate's validity, key, signature
//! algorithm, whether it is a CA and the names it covers, and whether a private key belongs
//! to it. Certificates are read with x509-parser (rusticata), private keys with rustls' ring
//! provider, PEM with rustls-pki-types: no DER is parsed here by hand.

use std::fmt::Write as _;
use std::net::IpAddr;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use x509_parser::prelude::{FromDer, GeneralName, SubjectPublicKeyInfo, X509Certificate};
use x509_parser::public_key::PublicKey;

/// Smallest RSA modulus, in bits, that is not weak (NIST SP 800-131A).
pub const RSA_MIN_BITS: usize = 2048;
/// Smallest elliptic curve, in bits, that is not weak (P-256).
pub const EC_MIN_BITS: usize = 256;

/// One certificate, as the checks need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cert {
    /// Subject, as text.
    pub subject: String,
    /// Validity start, Unix seconds.
    pub not_before: i64,
    /// Validity end, Unix seconds.
    pub not_after: i64,
    /// Basic constraints say it is a CA.
    pub is_ca: bool,
    /// Its public key.
    pub key: KeyInfo,
    /// Its signature algorithm, by name where known, else the OID.
    pub signature: String,
    /// The signature algorithm uses MD2, MD4, MD5 or SHA-1.
    pub weak_signature: bool,
    /// DNS names of the subject alternative name extension.
    pub dns_names: Vec<String>,
    /// IP addresses of the subject alternative name extension.
    pub ips: Vec<IpAddr>,
    /// The subject public key (the bit string), to compare with a private key's.
    pub public_key: Vec<u8>,
    /// sha256 of the DER, hex: tells two certificates apart, whatever their file names.
    pub sha256: String,
}

/// A public key's algorithm and size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyInfo {
    /// RSA with a modulus of this many bits.
    Rsa {
        /// Modulus size.
        bits: usize,
    },
    /// An elliptic curve.
    Ec {
        /// Curve name (P-256) or OID.
        curve: String,
        /// Curve size in bits, when the curve is known.
        bits: Option<usize>,
    },
    /// Ed25519.
    Ed25519,
    /// Anything else, by algorithm OID.
    Other(String),
}

impl KeyInfo {
    /// Why the key is too weak, if it is: RSA under 2048 bits, a curve under 256 bits.
    pub fn weakness(&self) -> Option<String> {
        match self {
            KeyInfo::Rsa { bits } if *bits < RSA_MIN_BITS => {
                Some(format!("RSA {bits} bits (at least {RSA_MIN_BITS} needed)"))
            }
            KeyInfo::Ec {
                curve,
                bits: Some(bits),
            } if *bits < EC_MIN_BITS => {
                Some(format!("EC {curve} ({bits} bits, P-256 or larger needed)"))
            }
            _ => None,
        }
    }
}

impl std::fmt::Display for KeyInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyInfo::Rsa { bits } => write!(f, "RSA {bits} bits"),
            KeyInfo::Ec { curve, .. } => write!(f, "EC {curve}"),
            KeyInfo::Ed25519 => f.write_str("Ed25519"),
            KeyInfo::Other(oid) => write!(f, "key algorithm {oid}"),
        }
    }
}

/// Whether `bytes` hold a PEM certificate: a line that starts with its boundary (text may
/// come before it, as in openssl's output).
pub fn has_pem_certificate(bytes: &[u8]) -> bool {
    bytes.split(|&b| b == b'\n').any(|line| {
        line.trim_ascii_start()
            .starts_with(b"-----BEGIN CERTIFICATE-----")
    })
}

/// Every certificate in PEM text, in order. An error names the certificate that cannot be
/// read (by its place in the file).
pub fn certs_from_pem(bytes: &[u8]) -> Result<Vec<Cert>, String> {
    let mut out = Vec::new();
    for (i, der) in CertificateDer::pem_slice_iter(bytes).enumerate() {
        let der = der.map_err(|e| format!("certificate {}: not valid PEM: {e}", i + 1))?;
        out.push(cert_from_der(&der).map_err(|e| format!("certificate {}: {e}", i + 1))?);
    }
    if out.is_empty() {
        return Err("no PEM certificate in the file".into());
    }
    Ok(out)
}

/// One DER certificate.
pub fn cert_from_der(der: &[u8]) -> Result<Cert, String> {
    let (rest, x) = X509Certificate::from_der(der).map_err(|e| format!("not X.509: {e}"))?;
    if !rest.is_empty() {
        return Err("bytes after the certificate".into());
    }
    let spki = x.public_key();
    let key = key_info(spki);
    let sig_oid = x.signature_algorithm.algorithm.to_id_string();
    let (signature, weak_signature) = signature_name(&sig_oid);
    let mut dns_names = Vec::new();
    let mut ips = Vec::new();
    if let Ok(Some(san)) = x.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(d) => dns_names.push((*d).to_string()),
                GeneralName::IPAddress(b) => {
                    if let Ok(a) = <[u8; 4]>::try_from(*b) {
                        ips.push(IpAddr::from(a));
                    } else if let Ok(a) = <[u8; 16]>::try_from(*b) {
                        ips.push(IpAddr::from(a));
                    }
                }
                _ => {}
            }
        }
    }
    let is_ca = x
        .basic_constraints()
        .ok()
        .flatten()
        .is_some_and(|bc| bc.value.ca);
    Ok(Cert {
        subject: crate::redact::clip(&x.subject().to_string(), 200),
        not_before: x.validity().not_before.timestamp(),
        not_after: x.validity().not_after.timestamp(),
        is_ca,
        key,
        signature: signature.to_string(),
        weak_signature,
        dns_names,
        ips,
        public_key: spki.subject_public_key.data.to_vec(),
        sha256: hex(&Sha256::digest(der)),
    })
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn key_info(spki: &SubjectPublicKeyInfo<'_>) -> KeyInfo {
    let alg = spki.algorithm.algorithm.to_id_string();
    match spki.parsed() {
        Ok(PublicKey::RSA(rsa)) => KeyInfo::Rsa {
            bits: rsa.key_size(),
        },
        Ok(PublicKey::EC(_)) => {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .map(|o| o.to_id_string())
                .unwrap_or_default();
            let (name, bits) = match curve.as_str() {
                "1.2.840.10045.3.1.1" => ("P-192", Some(192)),
                "1.3.132.0.33" => ("P-224", Some(224)),
                "1.2.840.10045.3.1.7" => ("P-256", Some(256)),
                "1.3.132.0.34" => ("P-384", Some(384)),
                "1.3.132.0.35" => ("P-521", Some(521)),
                "1.3.132.0.10" => ("secp256k1", Some(256)),
                other => (other, None),
            };
            KeyInfo::Ec {
                curve: name.to_string(),
                bits,
            }
        }
        _ if alg == "1.3.101.112" => KeyInfo::Ed25519,
        _ => KeyInfo::Other(alg),
    }
}

/// A signature algorithm's name, and whether its hash is broken (MD2, MD4, MD5, SHA-1).
fn signature_name(oid: &str) -> (&str, bool) {
    match oid {
        "1.2.840.113549.1.1.2" => ("md2WithRSAEncryption", true),
        "1.2.840.113549.1.1.3" => ("md4WithRSAEncryption", true),
        "1.2.840.113549.1.1.4" => ("md5WithRSAEncryption", true),
        "1.2.840.113549.1.1.5" | "1.3.14.3.2.29" => ("sha1WithRSAEncryption", true),
        "1.2.840.10045.4.1" => ("ecdsa-with-SHA1", true),
        "1.2.840.10040.4.3" => ("dsa-with-SHA1", true),
        "1.2.840.113549.1.1.10" => ("RSASSA-PSS", false),
        "1.2.840.113549.1.1.11" => ("sha256WithRSAEncryption", false),
        "1.2.840.113549.1.1.12" => ("sha384WithRSAEncryption", false),
        "1.2.840.113549.1.1.13" => ("sha512WithRSAEncryption", false),
        "1.2.840.10045.4.3.2" => ("ecdsa-with-SHA256", false),
        "1.2.840.10045.4.3.3" => ("ecdsa-with-SHA384", false),
        "1.2.840.10045.4.3.4" => ("ecdsa-with-SHA512", false),
        "1.3.101.112" => ("Ed25519", false),
        other => (other, false),
    }
}

/// The public key (as in a certificate's subject public key) of a PEM private key: PKCS#1
/// (`RSA PRIVATE KEY`, what kubeadm writes), PKCS#8 or SEC1 (`EC PRIVATE KEY`).
pub fn public_key_of(pem: &[u8]) -> Result<Vec<u8>, String> {
    let der = PrivateKeyDer::from_pem_slice(pem).map_err(|e| format!("no private key: {e}"))?;
    let key = rustls::crypto::ring::sign::any_supported_type(&der)
        .map_err(|e| format!("the private key cannot be used: {e}"))?;
    let spki = key
        .public_key()
        .ok_or("the private key does not give its public key")?;
    let (_, spki) = SubjectPublicKeyInfo::from_der(spki.as_ref())
        .map_err(|e| format!("the private key's public key: {e}"))?;
    Ok(spki.subject_public_key.data.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ec_cert(names: &[&str], ca: bool) -> (String, String) {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        if ca {
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        }
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn a_certificate_is_read_with_its_key_names_and_validity() {
        let (pem, key) = ec_cert(
            &["kubernetes", "kubernetes.default.svc", "10.96.0.1"],
            false,
        );
        let certs = certs_from_pem(pem.as_bytes()).unwrap();
        assert_eq!(certs.len(), 1);
        let c = &certs[0];
        assert_eq!(
            c.key,
            KeyInfo::Ec {
                curve: "P-256".into(),
                bits: Some(256)
            }
        );
        assert_eq!(c.key.weakness(), None);
        assert_eq!(c.signature, "ecdsa-with-SHA256");
        assert!(!c.weak_signature && !c.is_ca);
        assert_eq!(c.dns_names, ["kubernetes", "kubernetes.default.svc"]);
        assert_eq!(c.ips, ["10.96.0.1".parse::<IpAddr>().unwrap()]);
        assert!(c.not_before < c.not_after);
        assert_eq!(public_key_of(key.as_bytes()).unwrap(), c.public_key);
        let (_, other) = ec_cert(&["x"], false);
        assert_ne!(public_key_of(other.as_bytes()).unwrap(), c.public_key);
    }

    #[test]
    fn bundles_cas_and_bad_input() {
        let (a, _) = ec_cert(&["a"], true);
        let (b, _) = ec_cert(&["b"], false);
        let both = certs_from_pem(format!("{a}{b}").as_bytes()).unwrap();
        assert_eq!(both.len(), 2);
        assert!(both[0].is_ca && !both[1].is_ca);
        assert_ne!(both[0].sha256, both[1].sha256);
        assert!(has_pem_certificate(a.as_bytes()) && !has_pem_certificate(b"apiVersion: v1"));
        // openssl x509 -text puts text first; a manifest naming the boundary in a value is
        // not a certificate.
        assert!(has_pem_certificate(
            format!("Certificate:\n    Data:\n{a}").as_bytes()
        ));
        assert!(!has_pem_certificate(
            b"spec:\n  containers:\n  - command:\n    - echo -----BEGIN CERTIFICATE-----\n"
        ));
        let err = certs_from_pem(b"no pem here").unwrap_err();
        assert!(err.contains("no PEM certificate"), "{err}");
        let broken = a.replace("MII", "MIX");
        assert!(certs_from_pem(broken.as_bytes()).is_err());
        assert!(
            public_key_of(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
                .is_err()
        );
    }

    #[test]
    fn weak_keys_are_named() {
        assert!(
            KeyInfo::Rsa { bits: 1024 }
                .weakness()
                .unwrap()
                .contains("1024")
        );
        assert_eq!(KeyInfo::Rsa { bits: 2048 }.weakness(), None);
        let p192 = KeyInfo::Ec {
            curve: "P-192".into(),
            bits: Some(192),
        };
        assert!(p192.weakness().unwrap().contains("P-192"));
        assert_eq!(
            signature_name("1.2.840.113549.1.1.5"),
            ("sha1WithRSAEncryption", true)
        );
        assert!(signature_name("1.2.840.113549.1.1.4").1);
    }
}

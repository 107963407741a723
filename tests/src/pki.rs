//! Certificates for the sandbox nodes, made as kubeadm makes them: a cluster CA, an etcd CA
//! and a front-proxy CA of their own, leaf certificates they sign (EC P-256, as
//! `encryptionAlgorithm: ECDSA-P256`), and kubeconfigs that embed the cluster CA and a
//! client certificate.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    SanType,
};
use time::{Duration, OffsetDateTime};

/// A CA that signs.
pub struct Ca {
    /// Its certificate (PEM).
    pub pem: String,
    /// Its key (PEM).
    pub key_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("pem", &self.pem)
            .finish_non_exhaustive()
    }
}

/// A certificate and its key (PEM).
#[derive(Debug, Clone)]
pub struct Pair {
    /// The certificate.
    pub cert: String,
    /// The key.
    pub key: String,
}

impl Ca {
    /// A self-signed CA named `cn`, valid for ten years.
    pub fn new(cn: &str) -> Ca {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(DnType::CommonName, cn);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.not_before = OffsetDateTime::now_utc() - Duration::days(1);
        params.not_after = OffsetDateTime::now_utc() + Duration::days(3650);
        let pem = params.self_signed(&key).expect("self-signed").pem();
        let key_pem = key.serialize_pem();
        Ca {
            pem,
            key_pem,
            issuer: Issuer::new(params, key),
        }
    }

    /// A leaf for `cn` with `names` (DNS names or IP addresses), valid until `not_after`.
    pub fn issue_until(&self, cn: &str, names: &[&str], not_after: OffsetDateTime) -> Pair {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(DnType::CommonName, cn);
        params.subject_alt_names = names
            .iter()
            .map(|n| match n.parse() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName((*n).try_into().expect("a DNS name")),
            })
            .collect();
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.not_before = OffsetDateTime::now_utc() - Duration::days(1);
        params.not_after = not_after;
        let cert = params.signed_by(&key, &self.issuer).expect("signed");
        Pair {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    /// A leaf valid for a year, as kubeadm issues them.
    pub fn issue(&self, cn: &str, names: &[&str]) -> Pair {
        self.issue_until(cn, names, OffsetDateTime::now_utc() + Duration::days(365))
    }
}

/// A kubeconfig for `server` that trusts `ca` and authenticates as `client`, all embedded,
/// as kubeadm writes admin.conf and the components' kubeconfigs.
pub fn kubeconfig(server: &str, ca: &Ca, user: &str, client: &Pair) -> String {
    use base64::Engine as _;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- cluster:\n    certificate-authority-data: {ca}\n    server: {server}\n  name: kubernetes\ncontexts:\n- context:\n    cluster: kubernetes\n    user: {user}\n  name: {user}@kubernetes\ncurrent-context: {user}@kubernetes\npreferences: {{}}\nusers:\n- name: {user}\n  user:\n    client-certificate-data: {cert}\n    client-key-data: {key}\n",
        ca = b64(&ca.pem),
        cert = b64(&client.cert),
        key = b64(&client.key),
    )
}

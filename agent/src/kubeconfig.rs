//! What a kubeconfig says about how its clients reach and trust the API server: each
//! cluster's server, the CA it trusts and whether it verifies at all, and how each user
//! authenticates. Secrets (tokens, passwords, keys) are noted as present, never kept.

use std::path::PathBuf;

use base64::Engine as _;

use crate::redact::clip;
use serde::Deserialize;

/// A kubeconfig, as the checks need it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Kubeconfig {
    /// Its clusters.
    pub clusters: Vec<Cluster>,
    /// Its users.
    pub users: Vec<User>,
}

/// One cluster entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    /// Its name.
    pub name: String,
    /// The server URL.
    pub server: String,
    /// The CA it trusts (PEM).
    pub ca: Pem,
    /// `insecure-skip-tls-verify: true`.
    pub insecure_skip_verify: bool,
}

/// Where certificates come from: a cluster's CA, a user's client certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pem {
    /// `*-data`, decoded (PEM).
    Data(Vec<u8>),
    /// A file (relative paths are relative to the kubeconfig).
    File(PathBuf),
    /// `*-data` that is not base64.
    Undecodable,
    /// None (for a CA: the system's roots are trusted).
    None,
}

/// Where a user's client key is. The key itself is never kept: only its public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientKey {
    /// `client-key-data`: the public key of the key it holds, or why it cannot be read.
    Public(Result<Vec<u8>, String>),
    /// `client-key`, a file (relative paths are relative to the kubeconfig).
    File(PathBuf),
    /// None.
    None,
}

/// One user entry: how it authenticates (which secrets are set, not their values).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// Its name.
    pub name: String,
    /// `username` or `password` is set (basic authentication, which kube-apiserver no
    /// longer accepts since 1.19 and which puts a password in a file).
    pub basic_auth: bool,
    /// `token` or `tokenFile` is set (a static bearer token).
    pub static_token: bool,
    /// The client certificate (`client-certificate` or `-data`).
    pub client_certificate: Pem,
    /// The client key (`client-key` or `-data`).
    pub client_key: ClientKey,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Raw {
    kind: Option<String>,
    clusters: Vec<RawNamedCluster>,
    users: Vec<RawNamedUser>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawNamedCluster {
    name: String,
    cluster: RawCluster,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "kebab-case")]
struct RawCluster {
    server: String,
    certificate_authority: Option<String>,
    certificate_authority_data: Option<String>,
    insecure_skip_tls_verify: bool,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawNamedUser {
    name: String,
    user: RawUser,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "kebab-case")]
struct RawUser {
    username: Option<String>,
    password: Option<String>,
    token: Option<String>,
    #[serde(rename = "tokenFile")]
    token_file: Option<String>,
    client_certificate: Option<String>,
    client_certificate_data: Option<String>,
    client_key: Option<String>,
    client_key_data: Option<String>,
}

/// Whether `bytes` look like a kubeconfig: a `kind: Config` line and a `clusters:` line.
pub fn looks_like_kubeconfig(bytes: &[u8]) -> bool {
    let mut kind = false;
    let mut clusters = false;
    for line in bytes.split(|&b| b == b'\n') {
        let line = line.trim_ascii_end();
        kind |= matches!(
            line,
            b"kind: Config" | b"kind: \"Config\"" | b"kind: 'Config'"
        );
        clusters |= line.starts_with(b"clusters:");
    }
    kind && clusters
}

/// A server URL with any `user:password@`, query and fragment withheld: the URL goes into
/// findings, which leave the node, and a password or token can be written there.
fn without_userinfo(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let sep = if scheme.is_empty() { "" } else { "://" };
    let (authority, tail) = rest.split_at(authority_end);
    let host = match authority.rfind('@') {
        Some(at) => format!("(userinfo withheld)@{}", &authority[at + 1..]),
        None => authority.to_string(),
    };
    let path = match tail.find(['?', '#']) {
        Some(q) => format!("{}?(query withheld)", &tail[..q]),
        None => tail.to_string(),
    };
    format!("{scheme}{sep}{host}{path}")
}

/// Certificates given as `*-data` (base64 of PEM, which wins, as in client-go) or as a file.
fn pem(data: Option<String>, file: Option<String>) -> Pem {
    match (
        data.filter(|d| !d.is_empty()),
        file.filter(|f| !f.is_empty()),
    ) {
        (Some(data), _) => base64::engine::general_purpose::STANDARD
            .decode(data.trim())
            .map_or(Pem::Undecodable, Pem::Data),
        (None, Some(file)) => Pem::File(PathBuf::from(file)),
        (None, None) => Pem::None,
    }
}

/// Parses a kubeconfig.
pub fn parse(bytes: &[u8]) -> Result<Kubeconfig, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "not UTF-8 text".to_string())?;
    let raw: Raw = serde_saphyr::from_str(text).map_err(|e| format!("not a kubeconfig: {e}"))?;
    if raw.kind.as_deref().is_some_and(|k| k != "Config") {
        return Err(format!(
            "kind is {:?}, not Config",
            raw.kind.unwrap_or_default()
        ));
    }
    let clusters = raw
        .clusters
        .into_iter()
        .map(|c| Cluster {
            name: clip(&c.name, 120),
            server: clip(&without_userinfo(&c.cluster.server), 200),
            ca: pem(
                c.cluster.certificate_authority_data,
                c.cluster.certificate_authority,
            ),
            insecure_skip_verify: c.cluster.insecure_skip_tls_verify,
        })
        .collect();
    let set = |v: &Option<String>| v.as_deref().is_some_and(|s| !s.is_empty());
    let users = raw
        .users
        .into_iter()
        .map(|u| User {
            basic_auth: set(&u.user.username) || set(&u.user.password),
            static_token: set(&u.user.token) || set(&u.user.token_file),
            client_certificate: pem(u.user.client_certificate_data, u.user.client_certificate),
            client_key: match (u.user.client_key_data, u.user.client_key) {
                (Some(data), _) if !data.is_empty() => ClientKey::Public(
                    base64::engine::general_purpose::STANDARD
                        .decode(data.trim())
                        .map_err(|_| "client-key-data is not base64".to_string())
                        .and_then(|key| crate::tls::public_key_of(&key)),
                ),
                (_, Some(file)) if !file.is_empty() => ClientKey::File(PathBuf::from(file)),
                _ => ClientKey::None,
            },
            name: clip(&u.name, 120),
        })
        .collect();
    Ok(Kubeconfig { clusters, users })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADMIN: &str = "apiVersion: v1
clusters:
- cluster:
    certificate-authority-data: LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCg==
    server: https://10.0.0.10:6443
  name: kubernetes
contexts:
- context:
    cluster: kubernetes
    user: kubernetes-admin
  name: kubernetes-admin@kubernetes
current-context: kubernetes-admin@kubernetes
kind: Config
preferences: {}
users:
- name: kubernetes-admin
  user:
    client-certificate-data: LS0t
    client-key-data: LS0t
";

    #[test]
    fn a_kubeadm_kubeconfig_is_read() {
        assert!(looks_like_kubeconfig(ADMIN.as_bytes()));
        let k = parse(ADMIN.as_bytes()).unwrap();
        assert_eq!(k.clusters.len(), 1);
        let c = &k.clusters[0];
        assert_eq!(c.server, "https://10.0.0.10:6443");
        assert_eq!(c.ca, Pem::Data(b"-----BEGIN CERTIFICATE-----\n".to_vec()));
        assert!(!c.insecure_skip_verify);
        let [u] = &k.users[..] else {
            panic!("one user: {:?}", k.users)
        };
        assert_eq!(u.name, "kubernetes-admin");
        assert!(!u.basic_auth && !u.static_token);
        assert_eq!(u.client_certificate, Pem::Data(b"---".to_vec()));
        assert!(
            matches!(&u.client_key, ClientKey::Public(Err(e)) if e.contains("no private key")),
            "{:?}",
            u.client_key
        );
    }

    #[test]
    fn insecure_forms_are_read_and_secrets_not_kept() {
        let text = "kind: Config
clusters:
- name: a
  cluster:
    server: http://admin:pw-in-url@127.0.0.1:8080/api
- name: b
  cluster:
    server: https://b
    insecure-skip-tls-verify: true
    certificate-authority: ca.crt
- name: c
  cluster:
    server: https://c
    certificate-authority-data: '%%%'
users:
- name: basic
  user: {username: admin, password: hunter2}
- name: tok
  user: {token: abc.def}
";
        let k = parse(text.as_bytes()).unwrap();
        assert_eq!(k.clusters[0].ca, Pem::None);
        assert_eq!(
            k.clusters[0].server,
            "http://(userinfo withheld)@127.0.0.1:8080/api"
        );
        assert_eq!(
            without_userinfo("https://10.0.0.1:6443"),
            "https://10.0.0.1:6443"
        );
        assert_eq!(
            without_userinfo("https://h/p?token=a@b#frag"),
            "https://h/p?(query withheld)",
            "an @ after the host is not userinfo, and the query is withheld"
        );
        assert_eq!(k.clusters[1].ca, Pem::File("ca.crt".into()));
        assert!(k.clusters[1].insecure_skip_verify);
        assert_eq!(k.clusters[2].ca, Pem::Undecodable);
        assert!(k.users[0].basic_auth && !k.users[0].static_token);
        assert!(k.users[1].static_token);
        // A crafted name reaches evidence clipped, without its escape sequences.
        let long = format!(
            "kind: Config\nclusters:\n- name: \"\\e[2J{}\"\n  cluster: {{server: https://a}}\n",
            "n".repeat(500)
        );
        let crafted = parse(long.as_bytes()).unwrap();
        assert_eq!(crafted.clusters[0].name.chars().count(), 120);
        assert!(!crafted.clusters[0].name.contains('\u{1b}'));
        for secret in ["hunter2", "abc.def", "pw-in-url"] {
            assert!(!format!("{k:?}").contains(secret), "{secret}");
        }
        assert!(!looks_like_kubeconfig(b"apiVersion: v1\nkind: Pod\n"));
        assert!(parse(b"kind: Pod\nclusters: []\n").is_err());
        assert!(parse(b"clusters: [unclosed").is_err());
    }
}

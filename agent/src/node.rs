//! The node's files as the rules see them: a manifest's findings with the files it names
//! (read where the pod mounts them), a file's mode, owner and what it holds (certificates,
//! kubeconfigs), and the CIS 1.1 file set this node has.

use std::fs;

use serde::Serialize;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::{Config, TlsConfig};
use crate::io::{MAX_AUX_BYTES, io_problem, owner_names, read_bounded};
use crate::manifest::mounts::host_path;
use crate::manifest::{Component, ControlPlane, Manifest};
use crate::rules::catalogue::FileRole;
use crate::rules::eval::{
    self, AuthnConfig, AuthzConfig, FileFacts, KubeconfigFacts, ManifestCerts, ManifestFacts,
    TlsFacts, parse_authn, parse_authz,
};
use crate::rules::{Catalogue, Finding, Findings, parse_manifest};

/// One file's results. Field names are a contract (DESIGN.md).
#[derive(Debug, Clone, Default, Serialize)]
pub struct FileReport {
    /// The file.
    pub path: String,
    /// Control-plane component it runs, if any.
    pub component: Option<String>,
    /// Component version, if known.
    pub version: Option<String>,
    /// Why the file could not be checked.
    pub error: Option<String>,
    /// Remarks that are not findings (more than one document, not a control-plane pod).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// Findings.
    pub findings: Findings,
    /// Where each flag is written in a manifest, for outputs that point at lines (SARIF).
    #[serde(skip)]
    pub places: Arc<Places>,
    /// Flags (`--name`) whose value came from the container's env through `$(VAR)` or a
    /// script's `$NAME`: env values are treated as secrets (as the redactor does), so what
    /// was seen of these flags does not leave the node.
    #[serde(skip)]
    pub from_env: Vec<String>,
}

impl FileReport {
    /// Whether what was seen of `flag` may not leave the node: the catalogue calls it
    /// sensitive, or its value came from the env.
    pub fn withholds(&self, cat: &Catalogue, flag: Option<&str>) -> bool {
        flag.is_some_and(|f| {
            cat.sensitive(f.trim_start_matches('-')) || self.from_env.iter().any(|e| e == f)
        })
    }
}

/// Line and column (1-based; columns in characters) of what a finding is about.
#[derive(Debug, Clone, Default)]
pub struct Places {
    /// `--flag` → where its last occurrence (the one in force) is written.
    pub flags: Vec<(String, (u32, u32))>,
    /// The component's first argument: where an absent flag would go.
    pub arguments: Option<(u32, u32)>,
}

impl Places {
    /// Where a finding about `flag` points: the flag, else the arguments, else line 1.
    pub fn of(&self, flag: Option<&str>) -> (u32, u32) {
        flag.and_then(|f| self.flags.iter().rev().find(|(n, _)| n == f))
            .map(|(_, at)| *at)
            .or(self.arguments)
            .unwrap_or((1, 1))
    }

    pub(crate) fn find(src: &[u8], cp: &ControlPlane) -> Places {
        let starts: Vec<usize> = std::iter::once(0)
            .chain(
                src.iter()
                    .enumerate()
                    .filter(|&(_, &b)| b == b'\n')
                    .map(|(i, _)| i + 1),
            )
            .collect();
        let at = |offset: usize| -> (u32, u32) {
            let line = starts.partition_point(|&s| s <= offset);
            let start = starts[line - 1];
            // Characters, not bytes: every byte that does not continue a UTF-8 sequence.
            let col = src
                .get(start..offset)
                .map_or(0, |s| s.iter().filter(|&&b| (b as i8) >= -0x40).count())
                + 1;
            (line as u32, col as u32)
        };
        let args = &cp.flags.args;
        Places {
            flags: cp
                .flags
                .uses
                .iter()
                .filter_map(|u| {
                    let span = args[u.arg].span.as_ref()?;
                    Some((format!("--{}", u.name), at(span.start)))
                })
                .collect(),
            arguments: args
                .iter()
                .find_map(|a| a.span.as_ref())
                .map(|s| at(s.start)),
        }
    }
}

impl FileReport {
    pub(crate) fn new(path: &Path) -> Self {
        FileReport {
            path: path.display().to_string(),
            component: None,
            version: None,
            error: None,
            notes: Vec::new(),
            findings: Findings::default(),
            places: Arc::default(),
            from_env: Vec::new(),
        }
    }
}

/// The file `flag` names, read where the pod mounts it and parsed with `parse`: `None` when
/// the flag is not set, `Err` with the reason when the file cannot be read or parsed.
pub(crate) fn read_named<T>(
    m: &Manifest,
    cp: &ControlPlane,
    flag: &str,
    parse: fn(&[u8]) -> Result<T, String>,
) -> Option<Result<T, String>> {
    let inner = cp.flags.value(flag)?;
    let Some(host) = host_path(m, cp, &inner) else {
        return Some(Err(format!(
            "{inner} is not on a hostPath mount of the container, so {} cannot read it either",
            cp.component
        )));
    };
    Some(
        read_bounded(&host, MAX_AUX_BYTES)
            .map_err(String::from)
            .and_then(|b| parse(&b))
            .map_err(|e| format!("{}: {e}", host.display())),
    )
}

/// Reads the AuthenticationConfiguration a manifest names, if it names one.
pub fn read_authn(m: &Manifest, cp: &ControlPlane) -> Option<AuthnConfig> {
    read_named(m, cp, "authentication-config", parse_authn)
        .map(|r| r.unwrap_or_else(AuthnConfig::Unreadable))
}

/// Reads the AuthorizationConfiguration a manifest names, if it names one.
pub fn read_authz(m: &Manifest, cp: &ControlPlane) -> Option<AuthzConfig> {
    read_named(m, cp, "authorization-config", parse_authz)
        .map(|r| r.unwrap_or_else(AuthzConfig::Unreadable))
}

/// Stat facts of a file (following symlinks, as `stat -L` would).
pub fn file_facts(path: &Path, roles: Vec<FileRole>) -> Result<FileFacts, String> {
    let meta = fs::metadata(path).map_err(|e| io_problem(&e))?;
    Ok(facts_of(&meta, roles))
}

/// The facts the file rules look at, from a file's metadata.
pub(crate) fn facts_of(meta: &fs::Metadata, roles: Vec<FileRole>) -> FileFacts {
    let (user, group) = owner_names(meta.uid(), meta.gid());
    FileFacts {
        roles,
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
        user,
        group,
        tls: Vec::new(),
        kubeconfig: None,
    }
}

/// Checks a manifest whose bytes were already read from `path`; on a node (`node`), with the
/// certificates it names.
pub fn check_manifest_bytes(
    cat: &Catalogue,
    path: &Path,
    bytes: &[u8],
    node: Option<&OnNode>,
) -> (FileReport, Option<(Manifest, ControlPlane)>) {
    let (mut report, parsed) = manifest_findings(cat, path, bytes, node);
    if let Some((_, cp)) = &parsed {
        match fs::metadata(path) {
            Ok(meta) => file_findings(cat, &meta, cp.component, &mut report),
            Err(e) => report
                .notes
                .push(format!("cannot stat the file: {}", io_problem(&e))),
        }
    }
    (report, parsed)
}

/// What a manifest's bytes say (and the files they name), without the file's own mode and
/// owner.
pub(crate) fn manifest_findings(
    cat: &Catalogue,
    path: &Path,
    bytes: &[u8],
    node: Option<&OnNode>,
) -> (FileReport, Option<(Manifest, ControlPlane)>) {
    let mut report = FileReport::new(path);
    let m = match parse_manifest(cat, bytes) {
        Ok(m) => m,
        Err(e) => {
            report.error = Some(e.to_string());
            return (report, None);
        }
    };
    report.notes.clone_from(&m.notes);
    let Some(cp) = m.control_plane.clone() else {
        let what = m
            .pod
            .containers
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        report.notes.push(format!(
            "not a control-plane component (containers: {what}); no rules apply"
        ));
        return (report, None);
    };
    report.component = Some(cp.component.name().to_string());
    report.version = cp.version.map(|v| v.to_string());
    report.places = Arc::new(Places::find(bytes, &cp));
    let args = &cp.flags.args;
    report.from_env = cp
        .flags
        .uses
        .iter()
        .filter(|u| args[u.arg].expanded || u.value_arg.is_some_and(|i| args[i].expanded))
        .map(|u| format!("--{}", u.name))
        .collect();
    let authn = read_authn(&m, &cp);
    let authz = read_authz(&m, &cp);
    // On a node, the certificates the manifest names, where the pod mounts them.
    let certs = node.map(|node| {
        let certs = |b: &[u8]| crate::tls::certs_from_pem(b);
        ManifestCerts {
            serving: (cp.component == Component::KubeApiserver)
                .then(|| read_named(&m, &cp, "tls-cert-file", certs))
                .flatten(),
            trusted_ca: (cp.component == Component::Etcd)
                .then(|| read_named(&m, &cp, "trusted-ca-file", certs))
                .flatten(),
            cluster_ca: node.ca.clone(),
        }
    });
    let facts = ManifestFacts {
        cp: &cp,
        authn: authn.as_ref(),
        authz: authz.as_ref(),
        certs: certs.as_ref(),
    };
    let mut findings = eval::evaluate_manifest(cat, facts);
    if let Some((ca, live)) = node.and_then(|n| n.live.as_ref())
        && cp.component == Component::KubeApiserver
    {
        let target = live_target(cat, &m, &facts, ca.clone(), &live.addressing);
        let seen = target.map(|t| crate::live::probe(&t, live.timeout));
        findings.extend(eval::evaluate_live(
            cat,
            seen.as_ref().map_err(String::as_str),
        ));
    }
    report.findings = findings.into();
    (report, Some((m, cp)))
}

/// The manifest file's own mode and owner (CIS 1.1.1-1.1.8), from the file that was read.
fn file_findings(cat: &Catalogue, meta: &fs::Metadata, c: Component, report: &mut FileReport) {
    let facts = facts_of(meta, vec![FileRole::manifest_of(c)]);
    let manifest = std::mem::take(&mut report.findings).into_vec();
    report.findings = with_file_findings(manifest, cat, &facts);
}

/// A manifest's findings followed by those of its file.
pub(crate) fn with_file_findings(
    mut manifest: Vec<Finding>,
    cat: &Catalogue,
    facts: &FileFacts,
) -> Findings {
    manifest.extend(eval::evaluate_file(cat, facts));
    manifest.into()
}

/// Checking on a node: what the manifests' certificates are compared with, and whether
/// kube-apiserver is probed.
#[derive(Debug, Clone, Default)]
pub struct OnNode {
    /// The cluster CA (the PKI directory's `ca.crt`) by sha256, when it can be read.
    pub ca: Option<Vec<String>>,
    /// Probe kube-apiserver (`check --live`): the cluster CA's file, and how.
    pub live: Option<(PathBuf, crate::config::LiveConfig)>,
}

/// Where and what to probe of the kube-apiserver a manifest runs, or why it is not probed.
pub fn live_target(
    cat: &Catalogue,
    m: &Manifest,
    facts: &ManifestFacts<'_>,
    cluster_ca: PathBuf,
    addressing: &crate::live::Addressing,
) -> Result<crate::live::Target, String> {
    let cp = facts.cp;
    crate::live::Target::of(
        &|flag| cp.flags.value(flag),
        cp.version,
        &|inner| host_path(m, cp, inner),
        eval::anonymous_off(cat, facts),
        cluster_ca,
        addressing,
    )
}

/// Now, in Unix seconds: certificate expiry is judged against it.
pub(crate) fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// What the certificate checks need of a certificate file: its certificates, the key of
/// the same name beside it (kubeadm's pairs) and whether kubeadm's naming makes it a CA.
/// The key file goes into `deps`.
pub(crate) fn tls_facts(
    path: &Path,
    bytes: Result<&[u8], &str>,
    cfg: &TlsConfig,
    deps: &mut Vec<PathBuf>,
) -> TlsFacts {
    let key_path = path.with_extension("key");
    let key = match fs::symlink_metadata(&key_path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        _ => Some(read_key(&key_path)),
    };
    deps.push(key_path);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    TlsFacts {
        label: None,
        certs: bytes
            .map_err(str::to_string)
            .and_then(crate::tls::certs_from_pem),
        key,
        meant_ca: Some(name == "ca.crt" || name.ends_with("-ca.crt")),
        now: now_unix(),
        expiry_high_days: cfg.expiry_high_days,
        expiry_medium_days: cfg.expiry_medium_days,
    }
}

/// The public key of the private key in a file (the private key is dropped at once).
fn read_key(path: &Path) -> Result<Vec<u8>, String> {
    read_bounded(path, MAX_AUX_BYTES)
        .map_err(String::from)
        .and_then(|pem| crate::tls::public_key_of(&pem))
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// The certificates in a kubeconfig's `Pem` (a relative file is relative to `dir`, the
/// kubeconfig's directory); a file read goes into `deps`.
fn pem_certs(
    dir: &Path,
    pem: &crate::kubeconfig::Pem,
    what: &str,
    deps: &mut Vec<PathBuf>,
) -> Option<Result<Vec<crate::tls::Cert>, String>> {
    use crate::kubeconfig::Pem;
    Some(match pem {
        Pem::None => return None,
        Pem::Data(pem) => crate::tls::certs_from_pem(pem),
        Pem::Undecodable => Err(format!("{what}-data is not base64")),
        Pem::File(file) => {
            let file = dir.join(file);
            let read = read_bounded(&file, MAX_AUX_BYTES)
                .map_err(String::from)
                .and_then(|pem| crate::tls::certs_from_pem(&pem))
                .map_err(|e| format!("{}: {e}", file.display()));
            deps.push(file);
            read
        }
    })
}

/// What the kubeconfig checks need: the kubeconfig, the certificates of each cluster's CA,
/// each user's client certificate with its key, and the modes of the key files. The files
/// it names go into `deps`.
fn kubeconfig_facts(
    path: &Path,
    bytes: Result<&[u8], &str>,
    node_ca: Option<&[String]>,
    cfg: &TlsConfig,
    deps: &mut Vec<PathBuf>,
) -> (KubeconfigFacts, Vec<TlsFacts>) {
    use crate::kubeconfig::ClientKey;
    let config = bytes
        .map_err(str::to_string)
        .and_then(crate::kubeconfig::parse);
    let dir = path.parent().unwrap_or(Path::new("/"));
    let mut cluster_cas = Vec::new();
    let mut client_certs = Vec::new();
    let mut key_files = Vec::new();
    if let Ok(k) = &config {
        for c in &k.clusters {
            let certs = pem_certs(dir, &c.ca, "certificate-authority", deps);
            let hashes =
                certs.map(|r| r.map(|certs| certs.into_iter().map(|c| c.sha256).collect()));
            cluster_cas.push(hashes.unwrap_or(Ok(Vec::new())));
        }
        for u in &k.users {
            let Some(certs) = pem_certs(dir, &u.client_certificate, "client-certificate", deps)
            else {
                continue;
            };
            let key = match &u.client_key {
                ClientKey::None => None,
                ClientKey::Public(public) => Some(public.clone()),
                ClientKey::File(file) => {
                    let file = dir.join(file);
                    let mode = fs::metadata(&file)
                        .map(|m| m.mode() & 0o7777)
                        .map_err(|e| io_problem(&e));
                    key_files.push((u.name.clone(), file.clone(), mode));
                    let key = read_key(&file);
                    deps.push(file);
                    Some(key)
                }
            };
            client_certs.push(TlsFacts {
                label: Some(format!("user {}", u.name)),
                certs,
                key,
                meant_ca: Some(false),
                now: now_unix(),
                expiry_high_days: cfg.expiry_high_days,
                expiry_medium_days: cfg.expiry_medium_days,
            });
        }
    }
    let facts = KubeconfigFacts {
        config,
        cluster_cas,
        node_ca: node_ca.map(<[String]>::to_vec),
        key_files,
    };
    (facts, client_certs)
}

/// A file's findings: its mode and owner, and what it holds when it is a certificate file or
/// a kubeconfig (`bytes`, when it was read). The files they depend on go into `deps`.
pub(crate) fn judge_file(
    cat: &Catalogue,
    path: &Path,
    mut facts: FileFacts,
    bytes: Option<Result<&[u8], &str>>,
    tls: &TlsConfig,
    node_ca: Option<&[String]>,
    deps: &mut Vec<PathBuf>,
) -> Findings {
    if let Some(bytes) = bytes {
        if facts.roles.contains(&FileRole::Kubeconfig) {
            let (k, client_certs) = kubeconfig_facts(path, bytes, node_ca, tls, deps);
            if !client_certs.is_empty() {
                facts.roles.push(FileRole::Certificate);
            }
            facts.tls = client_certs;
            facts.kubeconfig = Some(k);
        } else if facts.roles.contains(&FileRole::Certificate) {
            facts.tls = vec![tls_facts(path, bytes, tls, deps)];
        }
    }
    eval::evaluate_file(cat, &facts).into()
}

/// The cluster CA's certificates (`ca.crt` in the PKI directory), by sha256, when it can be
/// read: what the node's kubeconfigs must trust.
pub fn node_cluster_ca(cfg: &Config) -> Option<Vec<String>> {
    let pem = read_bounded(&cfg.pki_dir.join("ca.crt"), MAX_AUX_BYTES).ok()?;
    let certs = crate::tls::certs_from_pem(&pem).ok()?;
    Some(certs.into_iter().map(|c| c.sha256).collect())
}

/// A PEM certificate file named on the command line: its mode and the certificate checks.
/// Whether it should be a CA is not known from a name chosen by someone else.
pub(crate) fn certificate_report(
    cat: &Catalogue,
    path: &Path,
    bytes: &[u8],
    meta: &fs::Metadata,
    cfg: &TlsConfig,
) -> FileReport {
    let mut report = FileReport::new(path);
    let mut facts = facts_of(meta, vec![FileRole::PkiCert, FileRole::Certificate]);
    let mut tls = tls_facts(path, Ok(bytes), cfg, &mut Vec::new());
    tls.meant_ca = None;
    facts.tls = vec![tls];
    report.findings = eval::evaluate_file(cat, &facts).into();
    report
}

/// Whether files of these roles are judged by what they hold (certificates, kubeconfigs), not
/// only by their mode and owner.
pub fn reads_content(roles: &[FileRole]) -> bool {
    roles.contains(&FileRole::Certificate) || roles.contains(&FileRole::Kubeconfig)
}

/// Checks a plain file or directory of the CIS 1.1 file set (or a kubeconfig named on the
/// command line), and returns the other files its findings depend on: the key beside a
/// certificate, the files a kubeconfig names.
pub fn check_file(
    cat: &Catalogue,
    path: &Path,
    roles: Vec<FileRole>,
    tls: &TlsConfig,
    node_ca: Option<&[String]>,
) -> (FileReport, Vec<PathBuf>) {
    let mut report = FileReport::new(path);
    let mut deps = Vec::new();
    match file_facts(path, roles) {
        Ok(facts) => {
            let bytes = reads_content(&facts.roles)
                .then(|| read_bounded(path, MAX_AUX_BYTES).map_err(String::from));
            let bytes = bytes.as_ref().map(|b| b.as_deref().map_err(String::as_str));
            report.findings = judge_file(cat, path, facts, bytes, tls, node_ca, &mut deps);
        }
        Err(e) => report.error = Some(e),
    }
    (report, deps)
}

/// One member of the node's file set: a path with its roles, or a directory that could not
/// be listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetMember {
    /// The path.
    pub path: PathBuf,
    /// What the rules check it as.
    pub roles: Vec<FileRole>,
    /// Why its contents could not be listed (directories only).
    pub error: Option<String>,
}

/// The CIS 1.1 file set that exists on this node (and kubelet.conf, CIS 4.1.5-4.1.6), and
/// the certificate files the manifests name outside the PKI directory (`named_certs`).
pub fn file_set_members(
    cfg: &Config,
    etcd_data_dir: Option<PathBuf>,
    named_certs: Vec<PathBuf>,
) -> Vec<SetMember> {
    let member = |path: PathBuf, roles: Vec<FileRole>| SetMember {
        path,
        roles,
        error: None,
    };
    let mut out = Vec::new();
    let k = &cfg.kubernetes_dir;
    for (name, role) in [
        ("admin.conf", FileRole::AdminKubeconfig),
        ("super-admin.conf", FileRole::AdminKubeconfig),
        ("scheduler.conf", FileRole::SchedulerKubeconfig),
        (
            "controller-manager.conf",
            FileRole::ControllerManagerKubeconfig,
        ),
        ("kubelet.conf", FileRole::KubeletKubeconfig),
    ] {
        let p = k.join(name);
        if fs::symlink_metadata(&p).is_ok() {
            out.push(member(p, vec![role, FileRole::Kubeconfig]));
        }
    }
    if fs::symlink_metadata(&cfg.pki_dir).is_ok() {
        let mut stack = vec![cfg.pki_dir.clone()];
        let mut entries = Vec::new();
        while let Some(dir) = stack.pop() {
            let rd = match fs::read_dir(&dir) {
                Ok(rd) => rd,
                Err(e) => {
                    entries.push(SetMember {
                        path: dir,
                        roles: vec![FileRole::Pki],
                        error: Some(format!("cannot list: {}", io_problem(&e))),
                    });
                    continue;
                }
            };
            entries.push(member(dir, vec![FileRole::Pki]));
            for e in rd.flatten() {
                let p = e.path();
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(p);
                } else {
                    let mut roles = vec![FileRole::Pki];
                    match p.extension().and_then(|e| e.to_str()) {
                        Some("crt") => roles.extend([FileRole::PkiCert, FileRole::Certificate]),
                        Some("key") => roles.push(FileRole::PkiKey),
                        _ => {}
                    }
                    entries.push(member(p, roles));
                }
            }
        }
        entries.sort_by(|a, b| a.path.cmp(&b.path));
        out.extend(entries);
    }
    let mut named_certs = named_certs;
    named_certs.sort();
    named_certs.dedup();
    for p in named_certs {
        if !p.starts_with(&cfg.pki_dir) && fs::symlink_metadata(&p).is_ok() {
            out.push(member(p, vec![FileRole::Certificate]));
        }
    }
    let data_dir = etcd_data_dir.unwrap_or_else(|| cfg.etcd_data_dir.clone());
    if fs::symlink_metadata(&data_dir).is_ok() {
        out.push(member(data_dir, vec![FileRole::EtcdDataDir]));
    }
    for dir in &cfg.cni_dirs {
        let Ok(rd) = fs::read_dir(dir) else { continue };
        let mut paths: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
        paths.sort();
        out.extend(paths.into_iter().map(|p| member(p, vec![FileRole::Cni])));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::parse_manifest;

    /// Lines and columns of flags, in characters (a flag after a non-ASCII argument on its
    /// line is where an editor shows it).
    #[test]
    fn places_count_lines_and_characters() {
        let src = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: kube-apiserver\nspec:\n  containers:\n  - name: kube-apiserver\n    image: registry.k8s.io/kube-apiserver:v1.31.4\n    command: [\"kube-apiserver\", \"--audit-log-path=/var/log/été/a.log\", \"--profiling=true\"]\n";
        let cat = Catalogue::builtin();
        let m = parse_manifest(cat, src.as_bytes()).unwrap();
        let places = Places::find(src.as_bytes(), m.control_plane.as_ref().unwrap());
        // The token, with its quote.
        let line = src.lines().nth(8).unwrap();
        let col = line.split("\"--profiling").next().unwrap().chars().count() + 1;
        assert_ne!(
            col,
            line.find("\"--profiling").unwrap() + 1,
            "the line has non-ASCII"
        );
        assert_eq!(places.of(Some("--profiling")), (9, col as u32));
        assert_eq!(places.of(Some("--audit-log-path")).0, 9);
        assert_eq!(places.of(Some("--no-such-flag")), places.arguments.unwrap());
    }
}

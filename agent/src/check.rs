//! `lockdown-agent check`: the IO around the pure core. Reads files (bounded), gathers file
//! facts, evaluates, and returns one report entry per file. One bad file never stops the
//! others: it becomes an entry with an `error` naming the problem.

use std::collections::HashMap;
use std::fs;
use std::hash::BuildHasherDefault;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use serde::Serialize;

use crate::config::Config;
use crate::config::TlsConfig;
use crate::manifest::{self, Component, ControlPlane, MAX_MANIFEST_BYTES, Manifest};
use crate::rules::catalogue::{FileRole, Fx};
use crate::rules::eval::{
    self, AuthnConfig, AuthzConfig, FileFacts, KubeconfigFacts, ManifestCerts, ManifestFacts,
    TlsFacts,
};
use crate::rules::{Catalogue, Finding, Findings};

/// Largest file read besides manifests (a certificate, a kubeconfig, a config a manifest
/// names).
pub const MAX_AUX_BYTES: usize = 256 * 1024;

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

    fn find(src: &[u8], cp: &ControlPlane) -> Places {
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
    fn new(path: &Path) -> Self {
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

/// The whole result.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Per-file results, in scan order.
    pub files: Vec<FileReport>,
}

/// Reads a file of at most `limit` bytes without trusting its reported size.
pub fn read_bounded(path: &Path, limit: usize) -> Result<Vec<u8>, String> {
    read_bounded_as(path, limit, false).map(|(bytes, _)| bytes)
}

/// [`read_bounded`], with the metadata of the file that was read (its mode and owner, for
/// the file checks, without another stat); `listed_regular` when the directory listing just said the path is a
/// regular file (not a symlink), which stands for the stat before the open.
fn read_bounded_as(
    path: &Path,
    limit: usize,
    listed_regular: bool,
) -> Result<(Vec<u8>, fs::Metadata), String> {
    if listed_regular {
        let (file, opened) = open_nonblocking(path)?;
        if let Some(what) = not_regular(&opened) {
            return Err(what.into());
        }
        return read_opened(file, opened, limit);
    }
    // Stat before open, following symlinks as the kubelet does: a device, socket or FIFO is
    // never opened (opening some devices has effects), only named.
    let meta = match fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.raw_os_error() == Some(nix::libc::ELOOP) => {
            return Err("symlink loop".into());
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // The path itself, or only what a symlink there points to?
            let link = fs::symlink_metadata(path).map_err(|e| io_problem(&e))?;
            if !link.file_type().is_symlink() {
                return Err(io_problem(&e));
            }
            let target = fs::read_link(path)
                .map(|t| t.display().to_string())
                .unwrap_or_default();
            return Err(format!("dangling symlink to {target}"));
        }
        Err(e) => return Err(io_problem(&e)),
    };
    if let Some(what) = not_regular(&meta) {
        return Err(what.into());
    }
    if meta.len() > limit as u64 {
        return Err(manifest::ManifestError::TooLarge {
            size: meta.len(),
            limit,
        }
        .to_string());
    }
    let (file, opened) = open_nonblocking(path)?;
    if (opened.dev(), opened.ino()) != (meta.dev(), meta.ino()) {
        return Err("replaced while being read".into());
    }
    read_opened(file, opened, limit)
}

/// Opens for reading, with the opened file's metadata. O_NONBLOCK: if the path was swapped
/// for a FIFO since it was listed or stat'ed, opening it must not hang.
fn open_nonblocking(path: &Path) -> Result<(fs::File, fs::Metadata), String> {
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| io_problem(&e))?;
    let opened = file.metadata().map_err(|e| io_problem(&e))?;
    Ok((file, opened))
}

/// Reads an opened regular file of at most `limit` bytes.
fn read_opened(
    file: fs::File,
    opened: fs::Metadata,
    limit: usize,
) -> Result<(Vec<u8>, fs::Metadata), String> {
    if opened.len() > limit as u64 {
        return Err(manifest::ManifestError::TooLarge {
            size: opened.len(),
            limit,
        }
        .to_string());
    }
    let mut buf = Vec::with_capacity(opened.len() as usize);
    file.take(limit as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(|e| io_problem(&e))?;
    if buf.len() > limit {
        return Err(manifest::ManifestError::TooLarge {
            size: buf.len() as u64,
            limit,
        }
        .to_string());
    }
    Ok((buf, opened))
}

/// An IO error as a short reason that says what to do about it.
/// What a file that is not a regular file is, in words; `None` for a regular file.
pub fn not_regular(meta: &fs::Metadata) -> Option<&'static str> {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_file() {
        None
    } else if t.is_dir() {
        Some("is a directory")
    } else if t.is_socket() {
        Some("is a socket, not a regular file")
    } else if t.is_fifo() {
        Some("is a FIFO, not a regular file")
    } else if t.is_block_device() || t.is_char_device() {
        Some("is a device, not a regular file (not opened)")
    } else {
        Some("is not a regular file")
    }
}

pub(crate) fn io_problem(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::PermissionDenied => {
            "permission denied (run as root or with CAP_DAC_READ_SEARCH)".into()
        }
        std::io::ErrorKind::NotFound => "no such file".into(),
        _ => e.to_string(),
    }
}

/// Parses manifest bytes with the catalogue's flag kinds.
pub fn parse_manifest(cat: &Catalogue, bytes: &[u8]) -> Result<Manifest, manifest::ManifestError> {
    manifest::parse(bytes, &|c, f| cat.kind(c, f))
}

/// Lists the manifests the kubelet would read in `dir`: every non-dot entry, sorted, not
/// recursing. Dot files are ignored, as by the kubelet.
pub fn list_manifest_dir(dir: &Path) -> Result<Vec<PathBuf>, String> {
    Ok(list_manifests(dir)?.into_iter().map(|(p, _)| p).collect())
}

/// [`list_manifest_dir`], with whether the listing says each is a regular file (not a
/// symlink).
fn list_manifests(dir: &Path) -> Result<Vec<(PathBuf, bool)>, String> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)
        .map_err(|e| format!("cannot list {}: {}", dir.display(), io_problem(&e)))?
    {
        let entry =
            entry.map_err(|e| format!("cannot list {}: {}", dir.display(), io_problem(&e)))?;
        let name = entry.file_name();
        if name.as_encoded_bytes().starts_with(b".") {
            continue;
        }
        // The entry's type comes with the listing; only a symlink (or a file system that
        // does not say) needs a stat to tell where it leads.
        let (is_dir, regular) = match entry.file_type() {
            Ok(t) if t.is_dir() => (true, false),
            Ok(t) if t.is_file() => (false, true),
            _ => (fs::metadata(entry.path()).is_ok_and(|m| m.is_dir()), false),
        };
        if is_dir {
            continue; // the kubelet does not recurse
        }
        out.push((name, regular));
    }
    // Names of one directory are unique: byte order, as a sort of the paths would give.
    out.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    Ok(out
        .into_iter()
        .map(|(name, regular)| (dir.join(name), regular))
        .collect())
}

/// Maps a path inside the container to the host through the pod's hostPath mounts.
pub fn host_path(m: &Manifest, cp: &ControlPlane, inner: &str) -> Option<PathBuf> {
    // Compared by path components, as the container runtime does: `/var/lib/etcd//` is the
    // mount `/var/lib/etcd`, and `/var/lib/etcdx` is not under it.
    let inner = Path::new(inner);
    let c = &m.pod.containers[cp.container];
    c.mounts
        .iter()
        .filter_map(|mnt| {
            let rest = inner.strip_prefix(Path::new(&mnt.mount_path)).ok()?;
            // `..` leaves the mount inside the container; where it lands is not ours to say.
            let escapes = rest
                .components()
                .any(|c| matches!(c, std::path::Component::ParentDir));
            (!escapes).then_some((mnt, rest))
        })
        .max_by_key(|(mnt, _)| Path::new(&mnt.mount_path).components().count())
        .and_then(|(mnt, rest)| {
            let vol = m.pod.host_paths.iter().find(|v| v.name == mnt.name)?;
            Some(if rest.as_os_str().is_empty() {
                PathBuf::from(&vol.path)
            } else {
                Path::new(&vol.path).join(rest)
            })
        })
}

/// The host path of the AuthenticationConfiguration a manifest names, if any.
pub fn authn_host_path(m: &Manifest, cp: &ControlPlane) -> Option<PathBuf> {
    host_path(m, cp, &cp.flags.value("authentication-config")?)
}

/// The host path of the AuthorizationConfiguration a manifest names, if any.
pub fn authz_host_path(m: &Manifest, cp: &ControlPlane) -> Option<PathBuf> {
    host_path(m, cp, &cp.flags.value("authorization-config")?)
}

/// The file `flag` names, read where the pod mounts it and parsed with `parse`: `None` when
/// the flag is not set, `Err` with the reason when the file cannot be read or parsed.
fn read_named<T>(
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
            .and_then(|b| parse(&b))
            .map_err(|e| format!("{}: {e}", host.display())),
    )
}

/// Certificate files each component's flags name.
const CERT_FLAGS: [(Component, &[&str]); 4] = [
    (
        Component::KubeApiserver,
        &[
            "tls-cert-file",
            "client-ca-file",
            "kubelet-client-certificate",
            "kubelet-certificate-authority",
            "etcd-certfile",
            "etcd-cafile",
            "proxy-client-cert-file",
            "requestheader-client-ca-file",
        ],
    ),
    (
        Component::KubeControllerManager,
        &[
            "tls-cert-file",
            "client-ca-file",
            "cluster-signing-cert-file",
            "root-ca-file",
            "requestheader-client-ca-file",
        ],
    ),
    (
        Component::KubeScheduler,
        &[
            "tls-cert-file",
            "client-ca-file",
            "requestheader-client-ca-file",
        ],
    ),
    (
        Component::Etcd,
        &[
            "cert-file",
            "peer-cert-file",
            "trusted-ca-file",
            "peer-trusted-ca-file",
        ],
    ),
];

/// Where on the host the certificate files the manifest's flags name are, as the pod mounts
/// them: on a node they are judged like the PKI directory's.
pub fn named_cert_paths(m: &Manifest, cp: &ControlPlane) -> Vec<PathBuf> {
    let flags = CERT_FLAGS
        .iter()
        .find(|(c, _)| *c == cp.component)
        .map_or(&[][..], |(_, f)| f);
    flags
        .iter()
        .filter_map(|f| host_path(m, cp, &cp.flags.value(f)?))
        .collect()
}

/// Where on the host the certificate files the manifest's rules read are (kube-apiserver's
/// `--tls-cert-file`, etcd's `--trusted-ca-file`).
pub fn cert_host_paths(m: &Manifest, cp: &ControlPlane) -> Vec<PathBuf> {
    ["tls-cert-file", "trusted-ca-file"]
        .iter()
        .filter_map(|f| host_path(m, cp, &cp.flags.value(f)?))
        .collect()
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

/// The authorizer types of an AuthorizationConfiguration, in order.
pub fn parse_authz(bytes: &[u8]) -> Result<AuthzConfig, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "not UTF-8 text".to_string())?;
    let doc = manifest::yaml::parse_first_document(text).map_err(|e| e.to_string())?;
    if doc.root.get("kind").and_then(|k| k.as_str()) != Some("AuthorizationConfiguration") {
        return Err("not an AuthorizationConfiguration".into());
    }
    let authorizers = doc
        .root
        .get("authorizers")
        .and_then(|a| a.as_seq())
        .ok_or("no authorizers list")?;
    authorizers
        .iter()
        .map(|a| {
            a.get("type")
                .and_then(|t| t.as_str())
                .map(str::to_string)
                .ok_or_else(|| "an authorizer without a type".to_string())
        })
        .collect::<Result<Vec<_>, _>>()
        .map(AuthzConfig::Authorizers)
}

/// Parses the `anonymous:` block of an AuthenticationConfiguration.
pub fn parse_authn(bytes: &[u8]) -> Result<AuthnConfig, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "not UTF-8 text".to_string())?;
    let doc = manifest::yaml::parse_first_document(text).map_err(|e| e.to_string())?;
    if doc.root.get("kind").and_then(|k| k.as_str()) != Some("AuthenticationConfiguration") {
        return Err("not an AuthenticationConfiguration".into());
    }
    let Some(anon) = doc.root.get("anonymous") else {
        return Ok(AuthnConfig::NoAnonymousBlock);
    };
    let enabled = anon.get("enabled").and_then(|e| e.as_str()) == Some("true");
    let paths = anon
        .get("conditions")
        .and_then(|c| c.as_seq())
        .unwrap_or_default()
        .iter()
        .filter_map(|c| c.get("path").and_then(|p| p.as_str()).map(str::to_string))
        .collect();
    Ok(AuthnConfig::Anonymous { enabled, paths })
}

/// Stat facts of a file (following symlinks, as `stat -L` would).
pub fn file_facts(path: &Path, roles: Vec<FileRole>) -> Result<FileFacts, String> {
    let meta = fs::metadata(path).map_err(|e| io_problem(&e))?;
    Ok(facts_of(&meta, roles))
}

/// The facts the file rules look at, from a file's metadata.
fn facts_of(meta: &fs::Metadata, roles: Vec<FileRole>) -> FileFacts {
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

/// The user and group names of `uid` and `gid`. Looked up once per id and kept while
/// /etc/passwd and /etc/group stay as they were (checked at most once a second): a lookup
/// reads the whole file (NSS), and a check of hundreds of files owned by the same root would
/// read it hundreds of times.
pub fn owner_names(uid: u32, gid: u32) -> (Option<String>, Option<String>) {
    type Names = HashMap<u32, Option<String>>;
    type Stamp = (Option<std::time::SystemTime>, Option<std::time::SystemTime>);
    struct Cache {
        stamp: Stamp,
        checked: std::time::Instant,
        users: Names,
        groups: Names,
    }
    static CACHE: Mutex<Option<Cache>> = Mutex::new(None);
    let stamp = || -> Stamp {
        let mtime = |p: &str| fs::metadata(p).and_then(|m| m.modified()).ok();
        (mtime("/etc/passwd"), mtime("/etc/group"))
    };
    let mut guard = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    let now = std::time::Instant::now();
    let cache = guard.get_or_insert_with(|| Cache {
        stamp: stamp(),
        checked: now,
        users: HashMap::new(),
        groups: HashMap::new(),
    });
    if now.duration_since(cache.checked) >= std::time::Duration::from_secs(1) {
        let s = stamp();
        cache.checked = now;
        if s != cache.stamp {
            cache.stamp = s;
            cache.users.clear();
            cache.groups.clear();
        }
    }
    if cache.stamp.0.is_none() || cache.stamp.1.is_none() {
        // No files to watch for changes (names from elsewhere): nothing is kept.
        cache.users.clear();
        cache.groups.clear();
    }
    let user = cache
        .users
        .entry(uid)
        .or_insert_with(|| {
            nix::unistd::User::from_uid(uid.into())
                .ok()
                .flatten()
                .map(|u| u.name)
        })
        .clone();
    let group = cache
        .groups
        .entry(gid)
        .or_insert_with(|| {
            nix::unistd::Group::from_gid(gid.into())
                .ok()
                .flatten()
                .map(|g| g.name)
        })
        .clone();
    (user, group)
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
fn manifest_findings(
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
fn with_file_findings(mut manifest: Vec<Finding>, cat: &Catalogue, facts: &FileFacts) -> Findings {
    manifest.extend(eval::evaluate_file(cat, facts));
    manifest.into()
}

/// Distinct manifest contents remembered during one check.
const MEMO_ENTRIES: usize = 64;

/// Manifest contents already evaluated in this check, with what they gave: copies of one
/// manifest (one per cluster or environment in a repository, say) are parsed and evaluated
/// once. Bounded: past [`MEMO_ENTRIES`] distinct contents, nothing more is kept.
#[derive(Default)]
struct Memo {
    /// A content is in the map from when a worker starts on it: the others wait for that
    /// evaluation instead of making their own.
    seen: RwLock<HashMap<Vec<u8>, Pending, BuildHasherDefault<Fx>>>,
    /// Thresholds for certificate files named on the command line.
    tls: TlsConfig,
    /// Files named on the command line may be certificates or kubeconfigs too (in the
    /// manifests directory every file is what the kubelet reads: a manifest, or an error).
    any_kind: bool,
    /// Checking the node: the certificates manifests name are read, and the cluster CA.
    node: Option<OnNode>,
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

/// A content's evaluation, there once the worker that started it is done.
type Pending = Arc<OnceLock<Arc<Evaluated>>>;

/// A manifest content as first checked: its report without the path, whose findings are the
/// manifest's followed by the file's for the mode and owner it was first seen with; its
/// component and, for etcd, where its data directory is on the host.
struct Evaluated {
    report: FileReport,
    /// How many of the findings are the manifest's (the rest are the file's).
    manifest_findings: usize,
    /// The file's (mode, uid, gid) its file findings are for.
    stat: (u32, u32, u32),
    component: Option<Component>,
    etcd_data_dir: Option<Option<PathBuf>>,
    /// On a node: the certificate files its flags name.
    certs: Vec<PathBuf>,
}

/// One worker's view of the memo: what it found there, and for each content the whole list
/// of findings for the last other mode and owner it saw. Kept per worker so that copies cost
/// no lock and no cache line that other cores write.
#[derive(Default)]
struct MemoView {
    seen: HashMap<Vec<u8>, Viewed, BuildHasherDefault<Fx>>,
}

/// A content as one worker saw it: its evaluation and the whole list of findings for the
/// last (mode, uid, gid) that is not the evaluation's own.
type Viewed = (Arc<Evaluated>, Option<((u32, u32, u32), Findings)>);

impl Memo {
    fn check(
        &self,
        view: &mut MemoView,
        cat: &Catalogue,
        path: &Path,
        listed_regular: bool,
    ) -> (FileReport, Option<Option<PathBuf>>, Vec<PathBuf>) {
        let (bytes, meta) = match read_bounded_as(path, MAX_MANIFEST_BYTES, listed_regular) {
            Ok(read) => read,
            Err(e) => {
                let mut report = FileReport::new(path);
                report.error = Some(e);
                return (report, None, Vec::new());
            }
        };
        let stat = (meta.mode() & 0o7777, meta.uid(), meta.gid());
        let mut other = None;
        let (e, other) = match view.seen.get_mut(&bytes) {
            Some((e, other)) => (e.clone(), other),
            // A certificate named on the command line (never in the memo: not a manifest).
            None if self.any_kind && crate::tls::has_pem_certificate(&bytes) => {
                let report = certificate_report(cat, path, &bytes, &meta, &self.tls);
                return (report, None, Vec::new());
            }
            // A kubeconfig named on the command line (a workstation's ~/.kube/config).
            None if self.any_kind && crate::kubeconfig::looks_like_kubeconfig(&bytes) => {
                let mut report = FileReport::new(path);
                let facts = facts_of(&meta, vec![FileRole::Kubeconfig]);
                let (tls, deps) = (&self.tls, &mut Vec::new());
                report.findings = judge_file(cat, path, facts, Some(Ok(&bytes)), tls, None, deps);
                return (report, None, Vec::new());
            }
            None => {
                let e = self.evaluated(cat, path, &bytes, &meta);
                if view.seen.len() < MEMO_ENTRIES {
                    let (_, other) = view.seen.entry(bytes).or_insert((e.clone(), None));
                    (e, other)
                } else {
                    (e, &mut other)
                }
            }
        };
        let mut report = e.report.clone();
        report.path = path.display().to_string();
        if let Some(c) = e.component
            && e.stat != stat
        {
            // A copy with another mode or owner: the manifest's findings and its own.
            report.findings = match other {
                Some((seen, list)) if *seen == stat => list.clone(),
                _ => {
                    let facts = facts_of(&meta, vec![FileRole::manifest_of(c)]);
                    let manifest = &e.report.findings[..e.manifest_findings];
                    let list = with_file_findings(manifest.to_vec(), cat, &facts);
                    *other = Some((stat, list.clone()));
                    list
                }
            };
        }
        (report, e.etcd_data_dir.clone(), e.certs.clone())
    }

    /// What `bytes` give, from the shared memo or checked now (and remembered while there is
    /// room).
    fn evaluated(
        &self,
        cat: &Catalogue,
        path: &Path,
        bytes: &[u8],
        meta: &fs::Metadata,
    ) -> Arc<Evaluated> {
        let seen = self.seen.read().unwrap_or_else(|e| e.into_inner());
        let cell = match seen.get(bytes) {
            Some(cell) => Some(cell.clone()),
            None if seen.len() >= MEMO_ENTRIES => None,
            None => {
                drop(seen);
                let mut seen = self.seen.write().unwrap_or_else(|e| e.into_inner());
                let room = seen.len() < MEMO_ENTRIES;
                match seen.get(bytes) {
                    Some(cell) => Some(cell.clone()),
                    None if room => Some(seen.entry(bytes.to_vec()).or_default().clone()),
                    None => None,
                }
            }
        };
        match cell {
            Some(cell) => cell
                .get_or_init(|| Arc::new(evaluate(cat, path, bytes, meta, self.node.as_ref())))
                .clone(),
            None => Arc::new(evaluate(cat, path, bytes, meta, self.node.as_ref())),
        }
    }
}

/// Checks a manifest's bytes, with the file findings for `meta`.
fn evaluate(
    cat: &Catalogue,
    path: &Path,
    bytes: &[u8],
    meta: &fs::Metadata,
    node: Option<&OnNode>,
) -> Evaluated {
    let (mut report, parsed) = manifest_findings(cat, path, bytes, node);
    let manifest_findings = report.findings.len();
    let component = parsed.as_ref().map(|(_, cp)| cp.component);
    if let Some(c) = component {
        let facts = facts_of(meta, vec![FileRole::manifest_of(c)]);
        let manifest = std::mem::take(&mut report.findings).into_vec();
        report.findings = with_file_findings(manifest, cat, &facts);
    }
    let certs = match (&parsed, node) {
        (Some((m, cp)), Some(_)) => named_cert_paths(m, cp),
        _ => Vec::new(),
    };
    let etcd_data_dir = parsed
        .filter(|(_, cp)| cp.component == Component::Etcd)
        .map(|(m, cp)| {
            let inner = cp.flags.value("data-dir");
            inner.and_then(|d| host_path(&m, &cp, &d))
        });
    Evaluated {
        report,
        manifest_findings,
        stat: (meta.mode() & 0o7777, meta.uid(), meta.gid()),
        component,
        etcd_data_dir,
        certs,
    }
}

/// Now, in Unix seconds: certificate expiry is judged against it.
fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// What the certificate checks need of a certificate file: its certificates, the key of
/// the same name beside it (kubeadm's pairs) and whether kubeadm's naming makes it a CA.
/// The key file goes into `deps`.
fn tls_facts(
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
fn judge_file(
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
fn certificate_report(
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
            let reads = facts.roles.contains(&FileRole::Certificate)
                || facts.roles.contains(&FileRole::Kubeconfig);
            let bytes = reads.then(|| read_bounded(path, MAX_AUX_BYTES));
            let bytes = bytes.as_ref().map(|b| b.as_deref().map_err(String::as_str));
            report.findings = judge_file(cat, path, facts, bytes, tls, node_ca, &mut deps);
        }
        Err(e) => report.error = Some(e),
    }
    (report, deps)
}

/// What to scan.
#[derive(Debug, Clone)]
pub enum Scope {
    /// The configured manifests directory and the CIS 1.1 file set; with `live`, probe
    /// kube-apiserver too.
    Node {
        /// Probe what kube-apiserver serves (`check --live`).
        live: bool,
    },
    /// These files or directories only (manifests).
    Paths(Vec<PathBuf>),
}

/// Runs a check and returns every entry (tests and callers that want the whole report).
pub fn run(cfg: &Config, scope: &Scope) -> Report {
    let mut files = Vec::new();
    run_each(cfg, scope, &|f| f, &mut |f| {
        files.push(f);
        Ok(())
    })
    .expect("collecting never fails");
    Report { files }
}

/// Files checked ahead of the one the writer waits for, per core: bounds the memory a check
/// of a huge directory takes (and keeps it the same few pages, warm) while the cores stay
/// busy.
const AHEAD_PER_CORE: usize = 128;

/// Files a worker takes at once: checking a copy of a known manifest takes a few
/// microseconds, so one lock per file would cost as much as the file.
const CHUNK: usize = 4;

/// Runs a check on every core and hands each entry to `emit` in scan order as soon as it and
/// those before it are done (manifests first, then the CIS 1.1 file set). `prepare` runs on
/// the worker that checked the file (an output format renders the entry there). Stops at
/// the first error of `emit` (stdout gone).
pub fn run_each<R: Send>(
    cfg: &Config,
    scope: &Scope,
    prepare: &(dyn Fn(FileReport) -> R + Sync),
    emit: &mut dyn FnMut(R) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let cat = &cfg.catalogue;
    let roots = match scope {
        Scope::Node { .. } => vec![cfg.manifests_dir.clone()],
        Scope::Paths(p) => p.clone(),
    };
    // What to check, in order: a manifest path, or a directory that could not be listed.
    let mut items: Vec<Result<(PathBuf, bool), FileReport>> = Vec::new();
    for root in roots {
        let is_dir = fs::metadata(&root).is_ok_and(|m| m.is_dir());
        if !is_dir {
            items.push(Ok((root, false)));
            continue;
        }
        match list_manifests(&root) {
            Ok(paths) => items.extend(paths.into_iter().map(Ok)),
            Err(e) => {
                let mut r = FileReport::new(&root);
                r.error = Some(e);
                items.push(Err(r));
            }
        }
    }
    let mut etcd_data_dir = None;
    let mut named_certs = Vec::new();
    let on_node = matches!(scope, Scope::Node { .. });
    let live = matches!(scope, Scope::Node { live: true });
    // The cluster CA, read once: the manifests' certificates and the kubeconfigs compare with it.
    let node_ca = if on_node { node_cluster_ca(cfg) } else { None };
    let memo = Memo {
        tls: cfg.tls,
        any_kind: !on_node,
        node: on_node.then(|| OnNode {
            ca: node_ca.clone(),
            live: live.then(|| (cfg.pki_dir.join("ca.crt"), cfg.live.clone())),
        }),
        ..Memo::default()
    };
    in_parallel(
        items,
        |view: &mut MemoView, item| match item {
            // For etcd also where its data directory is on the host (the last etcd wins).
            Ok((path, listed_regular)) => {
                let (report, data_dir, certs) = memo.check(view, cat, &path, listed_regular);
                (prepare(report), data_dir, certs)
            }
            Err(report) => (prepare(report), None, Vec::new()),
        },
        &mut |(report, data_dir, certs)| {
            if let Some(d) = data_dir {
                etcd_data_dir = d;
            }
            named_certs.extend(certs);
            emit(report)
        },
    )?;
    if on_node {
        let members = file_set_members(cfg, etcd_data_dir, named_certs);
        in_parallel(
            members,
            |_: &mut (), m| {
                prepare(match m.error {
                    Some(e) => {
                        let mut r = FileReport::new(&m.path);
                        r.error = Some(e);
                        r
                    }
                    None => check_file(cat, &m.path, m.roles, &cfg.tls, node_ca.as_deref()).0,
                })
            },
            emit,
        )?;
    }
    Ok(())
}

/// `work` on every item, on all cores, with the results handed to `emit` in the items' order
/// as soon as each and those before it are done. Workers take [`CHUNK`] items at a time,
/// each with its own state `S`; at most [`AHEAD_PER_CORE`] items per core are in flight or
/// waiting to be handed on. The calling thread is one of the workers: it hands results on
/// when the next are done and works items when they are not. Stops at the first error of
/// `emit`.
fn in_parallel<T: Send, R: Send, S: Default>(
    items: Vec<T>,
    work: impl Fn(&mut S, T) -> R + Sync,
    emit: &mut dyn FnMut(R) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cores == 1 || items.len() <= CHUNK {
        let mut state = S::default();
        return items
            .into_iter()
            .try_for_each(|t| emit(work(&mut state, t)));
    }
    let mut chunks = Vec::with_capacity(items.len().div_ceil(CHUNK));
    let mut items = items.into_iter();
    loop {
        let chunk: Vec<T> = items.by_ref().take(CHUNK).collect();
        if chunk.is_empty() {
            break;
        }
        chunks.push(chunk);
    }
    let total = chunks.len();
    let window = (cores * AHEAD_PER_CORE / CHUNK).max(cores);
    let work = |state: &mut S, chunk: Vec<T>| -> Vec<R> {
        chunk.into_iter().map(|t| work(state, t)).collect()
    };
    let pool = Pool {
        state: Mutex::new(PoolState {
            items: chunks.into_iter().enumerate(),
            handed_on: 0,
            done: std::collections::VecDeque::new(),
            stopped: false,
            writer_waits: false,
            workers_waiting: 0,
        }),
        room: std::sync::Condvar::new(),
        ready: std::sync::Condvar::new(),
    };
    let mut emit_all = |results: Vec<R>| results.into_iter().try_for_each(&mut *emit);
    std::thread::scope(|s| {
        for _ in 1..cores.min(total) {
            s.spawn(|| pool.work(window, &work));
        }
        let result = pool.hand_on(total, window, &work, &mut emit_all);
        // On an error of `emit` the workers stop at their next chunk.
        pool.lock().stopped = true;
        pool.room.notify_all();
        result
    })
}

/// A worker (or the writer) that panics stops the pool rather than leave the others waiting
/// for it (the panic then surfaces when the scope ends).
struct StopOnPanic<'p, T, R>(&'p Pool<T, R>);

impl<T, R> Drop for StopOnPanic<'_, T, R> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.lock().stopped = true;
            self.0.ready.notify_all();
            self.0.room.notify_all();
        }
    }
}

/// What the workers and the writer of [`in_parallel`] share.
struct Pool<T, R> {
    state: Mutex<PoolState<T, R>>,
    /// An item may start (the writer handed results on).
    room: std::sync::Condvar,
    /// The result the writer waits for is there.
    ready: std::sync::Condvar,
}

struct PoolState<T, R> {
    /// Items not started, with their index.
    items: std::iter::Enumerate<std::vec::IntoIter<T>>,
    /// Results handed on so far (the index of the next one).
    handed_on: usize,
    /// Results from `handed_on` on, in order (`None`: not done yet).
    done: std::collections::VecDeque<Option<R>>,
    /// The writer has stopped.
    stopped: bool,
    /// The writer waits for the result at `handed_on`.
    writer_waits: bool,
    /// Workers waiting for room.
    workers_waiting: usize,
}

impl<T, R> Pool<T, R> {
    fn lock(&self) -> std::sync::MutexGuard<'_, PoolState<T, R>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Works item `i` without the lock and puts its result in its place: the lock again,
    /// and where the result went (0: the one the writer hands on next).
    fn work_one<'p, S>(
        &'p self,
        mut state: std::sync::MutexGuard<'p, PoolState<T, R>>,
        (i, item): (usize, T),
        own: &mut S,
        work: &impl Fn(&mut S, T) -> R,
    ) -> (std::sync::MutexGuard<'p, PoolState<T, R>>, usize) {
        state.done.push_back(None);
        drop(state);
        let r = work(own, item);
        let mut state = self.lock();
        let at = i - state.handed_on;
        state.done[at] = Some(r);
        (state, at)
    }

    /// A worker: takes the next item while it is within `window` of the writer, works it and
    /// puts the result in its place.
    fn work<S: Default>(&self, window: usize, work: &impl Fn(&mut S, T) -> R) {
        let _guard = StopOnPanic(self);
        let mut own = S::default();
        let mut state = self.lock();
        loop {
            while !state.stopped && state.done.len() >= window {
                state.workers_waiting += 1;
                state = self.room.wait(state).unwrap_or_else(|e| e.into_inner());
                state.workers_waiting -= 1;
            }
            if state.stopped {
                return;
            }
            let Some(next) = state.items.next() else {
                return;
            };
            let at;
            (state, at) = self.work_one(state, next, &mut own, work);
            // Waking costs a system call: only when the writer sleeps on this one.
            if at == 0 && state.writer_waits {
                self.ready.notify_one();
            }
        }
    }

    /// The writer: hands every result on in order, `total` in all.
    fn hand_on<S: Default>(
        &self,
        total: usize,
        window: usize,
        work: &impl Fn(&mut S, T) -> R,
        emit: &mut dyn FnMut(R) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        let _guard = StopOnPanic(self);
        let mut own = S::default();
        let mut batch = Vec::new();
        let mut state = self.lock();
        while state.handed_on < total {
            while let Some(Some(_)) = state.done.front() {
                batch.extend(state.done.pop_front().flatten());
            }
            if batch.is_empty() {
                if state.stopped {
                    return Err(std::io::Error::other("a worker stopped"));
                }
                // Nothing to hand on yet: work the next item rather than wait.
                if state.done.len() < window
                    && let Some(next) = state.items.next()
                {
                    (state, _) = self.work_one(state, next, &mut own, work);
                    continue;
                }
                state.writer_waits = true;
                state = self.ready.wait(state).unwrap_or_else(|e| e.into_inner());
                state.writer_waits = false;
                continue;
            }
            state.handed_on += batch.len();
            let wake = state.workers_waiting > 0;
            drop(state);
            if wake {
                self.room.notify_all();
            }
            for r in batch.drain(..) {
                emit(r)?;
            }
            state = self.lock();
        }
        Ok(())
    }
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
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// Uneven work: some items take far longer than their neighbours.
    fn uneven(i: usize) -> usize {
        let mut x = i;
        for _ in 0..(i % 7) * 2000 {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        std::hint::black_box(x);
        i * 2
    }

    /// Copies of one manifest are evaluated once (also when another worker checks them) and,
    /// with one mode and owner, share one list of findings; a copy with another mode has its
    /// own list, with its own verdict on the mode.
    #[test]
    fn copies_are_evaluated_once_and_share_their_findings() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let src = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/data/kubeadm/v1.31/kube-apiserver.yaml");
        let text = fs::read(src).unwrap();
        let path = |name: &str| dir.path().join(name);
        for (name, mode) in [("a", 0o600), ("b", 0o600), ("c", 0o666)] {
            fs::write(path(name), &text).unwrap();
            fs::set_permissions(path(name), fs::Permissions::from_mode(mode)).unwrap();
        }
        let cat = Catalogue::builtin();
        let memo = Memo::default();
        let mut view = MemoView::default();
        let (a, _, _) = memo.check(&mut view, cat, &path("a"), true);
        let (b, _, _) = memo.check(&mut view, cat, &path("b"), false);
        let (c, _, _) = memo.check(&mut view, cat, &path("c"), true);
        assert!(a.findings.shares(&b.findings), "copies share one list");
        assert!(
            !a.findings.shares(&c.findings),
            "another mode, another list"
        );
        let mode = |r: &FileReport| {
            let f = r
                .findings
                .iter()
                .find(|x| x.cis.as_deref() == Some("1.1.1"));
            f.unwrap().status
        };
        assert_eq!(mode(&a), crate::rules::Status::Pass);
        assert_eq!(mode(&c), crate::rules::Status::Fail);
        assert_eq!(b.path, path("b").display().to_string());
        // Another worker finds the evaluation in the memo (the same places, not a copy).
        let (d, _, _) = memo.check(&mut MemoView::default(), cat, &path("b"), true);
        assert!(Arc::ptr_eq(&a.places, &d.places) && Arc::ptr_eq(&a.places, &c.places));
        assert_eq!(*a.findings, *d.findings);
        // A file that changed is evaluated again.
        fs::write(path("a"), String::from_utf8(text).unwrap() + "\n# edited\n").unwrap();
        let (e, _, _) = memo.check(&mut view, cat, &path("a"), true);
        assert!(!Arc::ptr_eq(&a.places, &e.places));
    }

    /// A file with more than its stat says (procfs says 0) is read to its end, and the limit
    /// still holds.
    #[test]
    fn a_file_longer_than_its_stat_is_read_whole_and_bounded() {
        let path = Path::new("/proc/self/status");
        assert_eq!(fs::metadata(path).unwrap().len(), 0);
        let text = String::from_utf8(read_bounded(path, 1 << 20).unwrap()).unwrap();
        assert!(
            text.starts_with("Name:") && text.contains("\nPid:"),
            "{text}"
        );
        let err = read_bounded(path, 16).unwrap_err();
        assert!(err.contains("16"), "{err}");
        // And a plain file is read exactly.
        let dir = tempfile::tempdir().unwrap();
        for len in [0, 1, 4095, 4096, 4097] {
            let p = dir.path().join(format!("f{len}"));
            let bytes: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            fs::write(&p, &bytes).unwrap();
            assert_eq!(read_bounded(&p, 1 << 20).unwrap(), bytes);
            assert_eq!(read_bounded_as(&p, 1 << 20, true).unwrap().0, bytes);
        }
    }

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

    #[test]
    fn results_are_handed_on_in_order_whatever_finishes_first() {
        let mut seen = Vec::new();
        in_parallel((0..2000).collect(), |_: &mut (), i| uneven(i), &mut |r| {
            seen.push(r);
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, (0..2000).map(|i| i * 2).collect::<Vec<_>>());
    }

    #[test]
    fn an_error_of_emit_stops_the_work() {
        let worked = AtomicUsize::new(0);
        let mut handed = 0;
        let r = in_parallel(
            (0..5000).collect(),
            |_: &mut (), i| {
                worked.fetch_add(1, Ordering::Relaxed);
                uneven(i)
            },
            &mut |_| {
                handed += 1;
                if handed == 10 {
                    Err(std::io::Error::other("stdout gone"))
                } else {
                    Ok(())
                }
            },
        );
        assert_eq!(r.unwrap_err().to_string(), "stdout gone");
        assert_eq!(handed, 10);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        // The window bounds what runs ahead of the writer (plus a chunk per worker).
        assert!(
            worked.load(Ordering::Relaxed) <= CHUNK + cores * AHEAD_PER_CORE + cores * CHUNK,
            "{} items worked",
            worked.load(Ordering::Relaxed)
        );
    }

    #[test]
    fn a_panicking_item_ends_the_pool_instead_of_hanging_it() {
        for bad in [0, 1, 37, 999] {
            let r = std::panic::catch_unwind(|| {
                in_parallel(
                    (0..1000).collect(),
                    |_: &mut (), i| {
                        assert_ne!(i, bad, "item {bad}");
                        uneven(i)
                    },
                    &mut |_| Ok(()),
                )
            });
            assert!(r.is_err(), "the panic of item {bad} surfaces");
        }
    }
}

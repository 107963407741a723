//! `lockdown-agent check`: the IO around the pure core. Reads files (bounded), gathers file
//! facts, evaluates, and returns one report entry per file. One bad file never stops the
//! others: it becomes an entry with an `error` naming the problem.

use std::collections::HashMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::Serialize;

use crate::config::Config;
use crate::manifest::{self, Component, ControlPlane, MAX_MANIFEST_BYTES, Manifest};
use crate::rules::catalogue::FileRole;
use crate::rules::eval::{self, AuthnConfig, AuthzConfig, FileFacts, ManifestFacts};
use crate::rules::{Catalogue, Finding};

/// Largest authentication config we read.
const MAX_AUX_BYTES: usize = 256 * 1024;

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
    pub findings: Vec<Finding>,
    /// Where each flag is written in a manifest, for outputs that point at lines (SARIF).
    #[serde(skip)]
    pub places: Places,
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
        let text = String::from_utf8_lossy(src);
        let starts: Vec<usize> = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        let at = |offset: usize| -> (u32, u32) {
            let line = starts.partition_point(|&s| s <= offset);
            let start = starts[line - 1];
            let col = text.get(start..offset).map_or(1, |s| s.chars().count() + 1);
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
            findings: Vec::new(),
            places: Places::default(),
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
    // O_NONBLOCK: if the path was swapped for a FIFO since the stat, opening it must not hang.
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| io_problem(&e))?;
    let opened = file.metadata().map_err(|e| io_problem(&e))?;
    if (opened.dev(), opened.ino()) != (meta.dev(), meta.ino()) {
        return Err("replaced while being read".into());
    }
    let mut buf = Vec::with_capacity(meta.len() as usize);
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
    Ok(buf)
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
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)
        .map_err(|e| format!("cannot list {}: {}", dir.display(), io_problem(&e)))?
    {
        let entry =
            entry.map_err(|e| format!("cannot list {}: {}", dir.display(), io_problem(&e)))?;
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let path = entry.path();
        if fs::metadata(&path).is_ok_and(|m| m.is_dir()) {
            continue; // the kubelet does not recurse
        }
        out.push(path);
    }
    out.sort();
    Ok(out)
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
    let (user, group) = owner_names(meta.uid(), meta.gid());
    Ok(FileFacts {
        roles,
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
        user,
        group,
    })
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

/// Checks one manifest file: parse, evaluate its flags and its own mode and owner.
pub fn check_manifest(
    cat: &Catalogue,
    path: &Path,
) -> (FileReport, Option<(Manifest, ControlPlane)>) {
    match read_bounded(path, MAX_MANIFEST_BYTES) {
        Ok(bytes) => check_manifest_bytes(cat, path, &bytes),
        Err(e) => {
            let mut report = FileReport::new(path);
            report.error = Some(e);
            (report, None)
        }
    }
}

/// Checks a manifest whose bytes were already read from `path`.
pub fn check_manifest_bytes(
    cat: &Catalogue,
    path: &Path,
    bytes: &[u8],
) -> (FileReport, Option<(Manifest, ControlPlane)>) {
    let (mut report, parsed) = manifest_findings(cat, path, bytes);
    if let Some((_, cp)) = &parsed {
        file_findings(cat, path, cp.component, &mut report);
    }
    (report, parsed)
}

/// What a manifest's bytes say (and the files they name), without the file's own mode and
/// owner.
fn manifest_findings(
    cat: &Catalogue,
    path: &Path,
    bytes: &[u8],
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
    report.places = Places::find(bytes, &cp);
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
    report.findings = eval::evaluate_manifest(
        cat,
        ManifestFacts {
            cp: &cp,
            authn: authn.as_ref(),
            authz: authz.as_ref(),
        },
    );
    (report, Some((m, cp)))
}

/// The manifest file's own mode and owner (CIS 1.1.1-1.1.8).
fn file_findings(cat: &Catalogue, path: &Path, c: Component, report: &mut FileReport) {
    match file_facts(path, vec![FileRole::manifest_of(c)]) {
        Ok(facts) => report.findings.extend(eval::evaluate_file(cat, &facts)),
        Err(e) => report.notes.push(format!("cannot stat the file: {e}")),
    }
}

/// Distinct manifest contents remembered during one check.
const MEMO_ENTRIES: usize = 64;

/// Manifest contents already evaluated in this check, with what they gave: copies of one
/// manifest (one per cluster or environment in a repository, say) are parsed and evaluated
/// once. Bounded: past [`MEMO_ENTRIES`] distinct contents, nothing more is kept.
#[derive(Default)]
struct Memo {
    seen: Mutex<HashMap<Vec<u8>, Evaluated>>,
}

/// A manifest's report without its path and file findings, its component and, for etcd,
/// where its data directory is on the host.
#[derive(Clone)]
struct Evaluated {
    report: FileReport,
    component: Option<Component>,
    etcd_data_dir: Option<Option<PathBuf>>,
}

impl Memo {
    fn check(&self, cat: &Catalogue, path: &Path) -> (FileReport, Option<Option<PathBuf>>) {
        let bytes = match read_bounded(path, MAX_MANIFEST_BYTES) {
            Ok(b) => b,
            Err(e) => {
                let mut report = FileReport::new(path);
                report.error = Some(e);
                return (report, None);
            }
        };
        let hit = self
            .seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&bytes)
            .cloned();
        let e = match hit {
            Some(mut e) => {
                e.report.path = path.display().to_string();
                e
            }
            None => {
                let (report, parsed) = manifest_findings(cat, path, &bytes);
                let component = parsed.as_ref().map(|(_, cp)| cp.component);
                let etcd_data_dir = parsed
                    .filter(|(_, cp)| cp.component == Component::Etcd)
                    .map(|(m, cp)| {
                        let inner = cp.flags.value("data-dir");
                        inner.and_then(|d| host_path(&m, &cp, &d))
                    });
                let e = Evaluated {
                    report,
                    component,
                    etcd_data_dir,
                };
                let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
                if seen.len() < MEMO_ENTRIES {
                    seen.insert(bytes, e.clone());
                }
                e
            }
        };
        let mut report = e.report;
        if let Some(c) = e.component {
            file_findings(cat, path, c, &mut report);
        }
        (report, e.etcd_data_dir)
    }
}

/// Checks a plain file or directory of the CIS 1.1 file set.
pub fn check_file(cat: &Catalogue, path: &Path, roles: Vec<FileRole>) -> FileReport {
    let mut report = FileReport::new(path);
    match file_facts(path, roles) {
        Ok(facts) => report.findings = eval::evaluate_file(cat, &facts),
        Err(e) => report.error = Some(e),
    }
    report
}

/// What to scan.
#[derive(Debug, Clone)]
pub enum Scope {
    /// The configured manifests directory and the CIS 1.1 file set.
    Node,
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

/// Files checked at once before their entries are handed on, in order: bounds the memory a
/// check of a huge directory takes while the cores stay busy.
const BATCH: usize = 256;

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
        Scope::Node => vec![cfg.manifests_dir.clone()],
        Scope::Paths(p) => p.clone(),
    };
    // What to check, in order: a manifest path, or a directory that could not be listed.
    let mut items: Vec<Result<PathBuf, FileReport>> = Vec::new();
    for root in roots {
        let is_dir = fs::metadata(&root).is_ok_and(|m| m.is_dir());
        if !is_dir {
            items.push(Ok(root));
            continue;
        }
        match list_manifest_dir(&root) {
            Ok(paths) => items.extend(paths.into_iter().map(Ok)),
            Err(e) => {
                let mut r = FileReport::new(&root);
                r.error = Some(e);
                items.push(Err(r));
            }
        }
    }
    let mut etcd_data_dir = None;
    let memo = Memo::default();
    in_parallel(
        items,
        |item| match item {
            // For etcd also where its data directory is on the host (the last etcd wins).
            Ok(path) => {
                let (report, data_dir) = memo.check(cat, &path);
                (prepare(report), data_dir)
            }
            Err(report) => (prepare(report), None),
        },
        &mut |(report, data_dir)| {
            if let Some(d) = data_dir {
                etcd_data_dir = d;
            }
            emit(report)
        },
    )?;
    if matches!(scope, Scope::Node) {
        let members = file_set_members(cfg, etcd_data_dir);
        in_parallel(
            members,
            |m| {
                prepare(match m.error {
                    Some(e) => {
                        let mut r = FileReport::new(&m.path);
                        r.error = Some(e);
                        r
                    }
                    None => check_file(cat, &m.path, m.roles),
                })
            },
            emit,
        )?;
    }
    Ok(())
}

/// `work` on every item, on all cores, with the results handed to `emit` in the items' order.
fn in_parallel<T: Send, R: Send>(
    items: Vec<T>,
    work: impl Fn(T) -> R + Sync,
    emit: &mut dyn FnMut(R) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut items = items.into_iter().peekable();
    while items.peek().is_some() {
        let batch: Vec<T> = items.by_ref().take(BATCH).collect();
        let results: Vec<R> = if cores == 1 || batch.len() == 1 {
            batch.into_iter().map(&work).collect()
        } else {
            let slots: Vec<std::sync::Mutex<Option<T>>> = batch
                .into_iter()
                .map(|t| std::sync::Mutex::new(Some(t)))
                .collect();
            let next = std::sync::atomic::AtomicUsize::new(0);
            let done: Vec<std::sync::Mutex<Option<R>>> =
                slots.iter().map(|_| std::sync::Mutex::new(None)).collect();
            std::thread::scope(|s| {
                for _ in 0..cores.min(slots.len()) {
                    s.spawn(|| {
                        loop {
                            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            let Some(slot) = slots.get(i) else { break };
                            let item = slot.lock().expect("not poisoned").take();
                            if let Some(item) = item {
                                let r = work(item);
                                *done[i].lock().expect("not poisoned") = Some(r);
                            }
                        }
                    });
                }
            });
            done.into_iter()
                .map(|d| {
                    d.into_inner()
                        .expect("not poisoned")
                        .expect("every item done")
                })
                .collect()
        };
        for r in results {
            emit(r)?;
        }
    }
    Ok(())
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

/// The CIS 1.1 file set that exists on this node (and kubelet.conf, CIS 4.1.5-4.1.6).
pub fn file_set_members(cfg: &Config, etcd_data_dir: Option<PathBuf>) -> Vec<SetMember> {
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
            out.push(member(p, vec![role]));
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
                        Some("crt") => roles.push(FileRole::PkiCert),
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

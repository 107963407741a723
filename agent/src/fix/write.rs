//! Writing without the kubelet ever seeing a partial, a backup or a temp file as a manifest.
//!
//! - The original bytes are backed up first, in `<state_dir>/backups` (0700, files 0600),
//!   never in the manifests directory: the kubelet runs every non-dot file there, backups
//!   included (kubernetes/kubernetes#55596).
//! - The new bytes go to a dot-prefixed temp file in the same directory (the kubelet ignores
//!   dot files), opened with `O_EXCL | O_NOFOLLOW`, given the target's owner and group, then
//!   its mode (fchown before fchmod: chown clears set-id bits), fsynced, renamed over the
//!   target, and the directory is fsynced.
//! - A symlinked target is never written: the link's target may be anywhere.
//! - The target must still hold the bytes the plan was made from; otherwise someone else
//!   changed it meanwhile, and nothing is written.
//! - A journal in the state directory records a write, with the original bytes, until its
//!   gate has a verdict, so that an agent killed in between finishes the gate (or rolls back)
//!   when it starts again. It is durable before the manifest is replaced; the backup file is
//!   written before and fsynced after, off the path from drift to hardened file.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::integrity::sha256_hex;

/// Suffix of our temp files (`.<name>.kube-lockdown.tmp`).
pub const TEMP_SUFFIX: &str = ".kube-lockdown.tmp";
/// The journal file in the state directory.
pub const JOURNAL_FILE: &str = "fix-journal.json";
/// The backups directory in the state directory.
pub const BACKUP_DIR: &str = "backups";

/// Why a write did not happen.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The target is a symlink.
    #[error("{0} is a symlink; a symlinked manifest is never rewritten")]
    Symlink(PathBuf),
    /// The target changed since the plan was made.
    #[error("{0} changed since the fix was planned; nothing written")]
    Changed(PathBuf),
    /// The target is not a regular file.
    #[error("{0} is not a regular file")]
    NotAFile(PathBuf),
    /// An IO error, with what was being done.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// On which path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> WriteError + 'a {
    move |source| WriteError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Replaces `path` with `bytes` atomically, if it still holds bytes with sha256 `expect`.
pub fn replace(path: &Path, bytes: &[u8], expect: &str) -> Result<(), WriteError> {
    let meta = fs::symlink_metadata(path).map_err(io("cannot stat", path))?;
    if meta.file_type().is_symlink() {
        return Err(WriteError::Symlink(path.to_path_buf()));
    }
    if !meta.is_file() {
        return Err(WriteError::NotAFile(path.to_path_buf()));
    }
    let current = read_nofollow(path)?;
    if sha256_hex(&current) != expect {
        return Err(WriteError::Changed(path.to_path_buf()));
    }
    write_via_temp(path, bytes, meta.uid(), meta.gid(), meta.mode() & 0o7777)
}

/// Creates `path` with `bytes` (mode 0600, owned like its directory: root:root in
/// /etc/kubernetes/pki, as CIS 1.1.19 wants, even when the agent runs as its own user),
/// atomically. An existing file with the same bytes is left alone; with other bytes it is an
/// error. Returns whether the file was created.
pub fn create(path: &Path, bytes: &[u8]) -> Result<bool, WriteError> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => return Err(WriteError::Symlink(path.into())),
        Ok(_) => {
            let current = read_nofollow(path)?;
            return if current == bytes {
                Ok(false)
            } else {
                Err(WriteError::Changed(path.to_path_buf()))
            };
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(io("cannot stat", path)(e)),
    }
    let dir = path.parent().unwrap_or(Path::new("/"));
    let owner = fs::metadata(dir).map_err(io("cannot stat", dir))?;
    write_via_temp(path, bytes, owner.uid(), owner.gid(), 0o600)?;
    Ok(true)
}

/// Removes a file this agent created, if it still holds `bytes`.
pub fn remove_created(path: &Path, bytes: &[u8]) -> Result<(), WriteError> {
    match read_nofollow(path) {
        Ok(current) if current == bytes => {
            fs::remove_file(path).map_err(io("cannot remove", path))?;
            sync_dir(path)
        }
        _ => Ok(()),
    }
}

fn read_nofollow(path: &Path) -> Result<Vec<u8>, WriteError> {
    let mut f = OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(path)
        .map_err(io("cannot read", path))?;
    let mut buf = Vec::new();
    std::io::Read::read_to_end(&mut f, &mut buf).map_err(io("cannot read", path))?;
    Ok(buf)
}

/// The temp file name for `path`: a dot file, so the kubelet ignores it.
pub fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}{TEMP_SUFFIX}"))
}

fn write_via_temp(
    path: &Path,
    bytes: &[u8],
    uid: u32,
    gid: u32,
    mode: u32,
) -> Result<(), WriteError> {
    let tmp = temp_path(path);
    let open = || {
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
            .open(&tmp)
    };
    let mut f = match open() {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {
            // Left by an agent that died mid-write: ours by name, and a dot file the kubelet
            // never read. Remove it (not following a link) and try once more.
            fs::remove_file(&tmp).map_err(io("cannot remove stale temp file", &tmp))?;
            open().map_err(io("cannot create temp file", &tmp))?
        }
        Err(e) => return Err(io("cannot create temp file", &tmp)(e)),
    };
    let result = (|| {
        f.write_all(bytes).map_err(io("cannot write", &tmp))?;
        std::os::unix::fs::fchown(&f, Some(uid), Some(gid)).map_err(io("cannot chown", &tmp))?;
        f.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(io("cannot chmod", &tmp))?;
        f.sync_all().map_err(io("cannot fsync", &tmp))?;
        fs::rename(&tmp, path).map_err(io("cannot rename over", path))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result?;
    sync_dir(path)
}

/// fsyncs the directory holding `path`, so that a rename or unlink is durable.
pub fn sync_dir(path: &Path) -> Result<(), WriteError> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("cannot fsync directory", dir))
}

/// Removes temp files a killed agent may have left in `dir`.
pub fn remove_stale_temps(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') && name.ends_with(TEMP_SUFFIX) {
            match fs::remove_file(e.path()) {
                Ok(()) => {
                    tracing::warn!(path = %e.path().display(), "removed a temp file left by an interrupted write")
                }
                Err(err) => {
                    tracing::error!(path = %e.path().display(), error = %err, "cannot remove a stale temp file")
                }
            }
        }
    }
}

/// Backs up `bytes` (the original of `path`) in `<state_dir>/backups`, keeping the newest
/// `keep` per file name. Returns the backup's path. `durable: false` leaves the fsync to a
/// later [`sync`] (the journal holds the original meanwhile).
pub fn backup(
    state_dir: &Path,
    path: &Path,
    bytes: &[u8],
    keep: usize,
    durable: bool,
) -> Result<PathBuf, WriteError> {
    let dir = state_dir.join(BACKUP_DIR);
    fs::create_dir_all(&dir).map_err(io("cannot create", &dir))?;
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
        .map_err(io("cannot chmod", &dir))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "manifest".into());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let file = dir.join(format!("{name}.{nanos:020}.{}", &sha256_hex(bytes)[..12]));
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
        .open(&file)
        .map_err(io("cannot create backup", &file))?;
    f.write_all(bytes).map_err(io("cannot write", &file))?;
    if durable {
        f.sync_all().map_err(io("cannot fsync", &file))?;
        sync_dir(&file)?;
    }
    let mut ours: Vec<PathBuf> = fs::read_dir(&dir)
        .map_err(io("cannot list", &dir))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_prefix(&format!("{name}.")))
                .is_some_and(|rest| rest.len() == 20 + 1 + 12)
        })
        .collect();
    ours.sort();
    let excess = ours.len().saturating_sub(keep.max(1));
    for old in &ours[..excess] {
        let _ = fs::remove_file(old);
    }
    Ok(file)
}

/// fsyncs a file and its directory.
pub fn sync(path: &Path) -> Result<(), WriteError> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(io("cannot fsync", path))?;
    sync_dir(path)
}

/// A write whose gate has no verdict yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Journal {
    /// The manifest.
    pub path: PathBuf,
    /// The backup of its original.
    pub backup: PathBuf,
    /// The original bytes (manifests are UTF-8): the journal alone is enough to roll back.
    pub original: String,
    /// sha256 of the original.
    pub before: String,
    /// sha256 of what was written.
    pub after: String,
    /// Files created for the fix (removed again on rollback), with their content's sha256.
    pub created: Vec<(PathBuf, String)>,
    /// The rules fixed.
    pub rules: Vec<String>,
    /// The diff, for the events.
    pub diff: String,
    /// `rollback` once the agent has decided to restore the original.
    pub phase: String,
}

/// Records `j` durably.
pub fn save_journal(state_dir: &Path, j: &Journal) -> Result<(), WriteError> {
    let bytes = serde_json::to_vec_pretty(j).expect("journal serialises");
    save_state_file(&state_dir.join(JOURNAL_FILE), &bytes)
}

/// Replaces a file of the agent's own state (journal, quarantine, pause) durably: a temp file
/// beside it (0600), fsynced, renamed over it, the directory fsynced.
pub fn save_state_file(path: &Path, bytes: &[u8]) -> Result<(), WriteError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    let _ = fs::remove_file(&tmp);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(&tmp)
        .map_err(io("cannot create", &tmp))?;
    f.write_all(bytes).map_err(io("cannot write", &tmp))?;
    f.sync_all().map_err(io("cannot fsync", &tmp))?;
    fs::rename(&tmp, path).map_err(io("cannot rename over", path))?;
    sync_dir(path)
}

/// The journal left by an earlier run, if any.
pub fn load_journal(state_dir: &Path) -> Result<Option<Journal>, String> {
    let path = state_dir.join(JOURNAL_FILE);
    match fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// Removes the journal: the gate has its verdict.
pub fn clear_journal(state_dir: &Path) -> Result<(), WriteError> {
    let path = state_dir.join(JOURNAL_FILE);
    match fs::remove_file(&path) {
        Ok(()) => sync_dir(&path),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io("cannot remove", &path)(e)),
    }
}

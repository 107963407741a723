//! Reading the node's files without trusting them: bounded reads that never open a device,
//! FIFO or socket, a manifests directory listed as the kubelet lists it, and owner names
//! looked up once.

use std::collections::HashMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::manifest;

/// Largest file read besides manifests (a certificate, a kubeconfig, a config a manifest
/// names).
pub const MAX_AUX_BYTES: usize = 256 * 1024;

/// Why a file could not be read. The text is evidence (an event's error, a finding's
/// reason): it says what is wrong and what to do, not the path, which the caller names.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The open, stat or read failed.
    #[error("{}", io_problem(.0))]
    Io(std::io::Error),
    /// A directory, device, FIFO or socket (never opened).
    #[error("{0}")]
    NotRegular(&'static str),
    /// Symlinks that lead to each other.
    #[error("symlink loop")]
    SymlinkLoop,
    /// A symlink to nothing, with its target.
    #[error("dangling symlink to {0}")]
    Dangling(String),
    /// The path led to another file between its stat and its open.
    #[error("replaced while being read")]
    Replaced,
    /// Over the size limit.
    #[error(transparent)]
    TooLarge(manifest::ManifestError),
}

impl ReadError {
    /// Whether reading again at once can succeed: the file was being replaced (an atomic
    /// rename in progress), or the read was interrupted. Anything else stays as it is until
    /// the file changes, and its change is an event.
    pub fn retry_helps(&self) -> bool {
        match self {
            ReadError::Replaced => true,
            ReadError::Io(e) => matches!(
                e.kind(),
                std::io::ErrorKind::Interrupted | std::io::ErrorKind::WouldBlock
            ),
            ReadError::NotRegular(_)
            | ReadError::SymlinkLoop
            | ReadError::Dangling(_)
            | ReadError::TooLarge(_) => false,
        }
    }
}

/// Most callers keep a read error as evidence text.
impl From<ReadError> for String {
    fn from(e: ReadError) -> String {
        e.to_string()
    }
}

/// Reads a file of at most `limit` bytes without trusting its reported size.
pub fn read_bounded(path: &Path, limit: usize) -> Result<Vec<u8>, ReadError> {
    read_bounded_as(path, limit, false).map(|(bytes, _)| bytes)
}

/// [`read_bounded`], with the metadata of the file that was read (its mode and owner, for
/// the file checks, without another stat); `listed_regular` when the directory listing just said the path is a
/// regular file (not a symlink), which stands for the stat before the open.
pub(crate) fn read_bounded_as(
    path: &Path,
    limit: usize,
    listed_regular: bool,
) -> Result<(Vec<u8>, fs::Metadata), ReadError> {
    if listed_regular {
        let (file, opened) = open_nonblocking(path)?;
        if let Some(what) = not_regular(&opened) {
            return Err(ReadError::NotRegular(what));
        }
        return read_opened(file, opened, limit);
    }
    // Stat before open, following symlinks as the kubelet does: a device, socket or FIFO is
    // never opened (opening some devices has effects), only named.
    let meta = match fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.raw_os_error() == Some(nix::libc::ELOOP) => {
            return Err(ReadError::SymlinkLoop);
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // The path itself, or only what a symlink there points to?
            let link = fs::symlink_metadata(path).map_err(ReadError::Io)?;
            if !link.file_type().is_symlink() {
                return Err(ReadError::Io(e));
            }
            let target = fs::read_link(path)
                .map(|t| t.display().to_string())
                .unwrap_or_default();
            return Err(ReadError::Dangling(target));
        }
        Err(e) => return Err(ReadError::Io(e)),
    };
    if let Some(what) = not_regular(&meta) {
        return Err(ReadError::NotRegular(what));
    }
    if meta.len() > limit as u64 {
        return Err(ReadError::TooLarge(manifest::ManifestError::TooLarge {
            size: meta.len(),
            limit,
        }));
    }
    let (file, opened) = open_nonblocking(path)?;
    if (opened.dev(), opened.ino()) != (meta.dev(), meta.ino()) {
        return Err(ReadError::Replaced);
    }
    read_opened(file, opened, limit)
}

/// Opens for reading, with the opened file's metadata. O_NONBLOCK: if the path was swapped
/// for a FIFO since it was listed or stat'ed, opening it must not hang.
pub(crate) fn open_nonblocking(path: &Path) -> Result<(fs::File, fs::Metadata), ReadError> {
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(path)
        .map_err(ReadError::Io)?;
    let opened = file.metadata().map_err(ReadError::Io)?;
    Ok((file, opened))
}

/// Reads an opened regular file of at most `limit` bytes.
pub(crate) fn read_opened(
    file: fs::File,
    opened: fs::Metadata,
    limit: usize,
) -> Result<(Vec<u8>, fs::Metadata), ReadError> {
    if opened.len() > limit as u64 {
        return Err(ReadError::TooLarge(manifest::ManifestError::TooLarge {
            size: opened.len(),
            limit,
        }));
    }
    let mut buf = Vec::with_capacity(opened.len() as usize);
    file.take(limit as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(ReadError::Io)?;
    if buf.len() > limit {
        return Err(ReadError::TooLarge(manifest::ManifestError::TooLarge {
            size: buf.len() as u64,
            limit,
        }));
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

/// An IO error as a short phrase for messages (permission denied, no such file, ...).
pub fn io_problem(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::PermissionDenied => {
            "permission denied (run as root or with CAP_DAC_READ_SEARCH)".into()
        }
        std::io::ErrorKind::NotFound => "no such file".into(),
        _ => e.to_string(),
    }
}

/// Lists the manifests the kubelet would read in `dir`: every non-dot entry, sorted, not
/// recursing. Dot files are ignored, as by the kubelet.
pub fn list_manifest_dir(dir: &Path) -> Result<Vec<PathBuf>, String> {
    Ok(list_manifests(dir)?.into_iter().map(|(p, _)| p).collect())
}

/// [`list_manifest_dir`], with whether the listing says each is a regular file (not a
/// symlink).
pub(crate) fn list_manifests(dir: &Path) -> Result<Vec<(PathBuf, bool)>, String> {
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

/// The path as a key of the baseline, the events and the fixer's state files.
pub fn key(path: &Path) -> String {
    path.display().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(
            matches!(err, ReadError::TooLarge(_)) && !err.retry_helps(),
            "{err}"
        );
        assert!(err.to_string().contains("16"), "{err}");
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
}

//! File integrity facts: what a tracked path is right now (type, sha256, size, mode, owner,
//! symlink target). The comparison with the baseline is pure and lives in `baseline`.

use std::fs;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::event::FileMeta;
use crate::io::io_problem;

/// Files larger than this are not hashed (their size, type, mode and owner are still
/// compared): the tracked files are manifests, kubeconfigs and keys, all small, and a huge
/// file dropped into a watched directory must not cost a full read on every change.
pub const MAX_HASH_BYTES: u64 = 64 << 20;

/// Hex sha256 of bytes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Observes `path`, following a symlink (as the kubelet and the components do) but recording
/// where it points. `content`: the bytes already read for a manifest, so that the file is not
/// read twice; otherwise regular files are hashed here, streaming.
pub fn observe(path: &Path, content: Option<&[u8]>) -> Result<FileMeta, String> {
    let link = fs::symlink_metadata(path).map_err(|e| io_problem(&e))?;
    let symlink = if link.file_type().is_symlink() {
        let target = fs::read_link(path).map_err(|e| io_problem(&e))?;
        Some(target.display().to_string())
    } else {
        None
    };
    let meta = match fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.raw_os_error() == Some(nix::libc::ELOOP) => {
            return Err("symlink loop".into());
        }
        Err(_) if symlink.is_some() => {
            return Err(format!(
                "dangling symlink to {}",
                symlink.unwrap_or_default()
            ));
        }
        Err(e) => return Err(io_problem(&e)),
    };
    let kind = if meta.is_file() {
        "file"
    } else if meta.is_dir() {
        "directory"
    } else {
        "other"
    };
    let sha256 = match (meta.is_file(), content) {
        (true, Some(bytes)) => Some(sha256_hex(bytes)),
        (true, None) if meta.len() <= MAX_HASH_BYTES => Some(hash_file(path)?),
        _ => None,
    };
    let size = match content {
        Some(bytes) if meta.is_file() => bytes.len() as u64,
        _ => meta.len(),
    };
    let (owner, group) = crate::io::owner_names(meta.uid(), meta.gid());
    Ok(FileMeta {
        kind: kind.into(),
        sha256,
        size,
        mode: format!("{:04o}", meta.mode() & 0o7777),
        uid: meta.uid(),
        gid: meta.gid(),
        owner,
        group,
        symlink,
    })
}

fn hash_file(path: &Path) -> Result<String, String> {
    // O_NONBLOCK: a FIFO swapped in between stat and open must not hang the agent.
    let mut file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| io_problem(&e))?;
    let mut hasher = Sha256::new();
    let mut buf = [0u8; 64 * 1024];
    loop {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => hasher.update(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_problem(&e)),
        }
    }
    Ok(hex(&hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn file_facts_include_hash_mode_and_symlink_target() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("a");
        fs::write(&f, b"abc").unwrap();
        fs::set_permissions(&f, fs::Permissions::from_mode(0o640)).unwrap();
        let m = observe(&f, None).unwrap();
        assert_eq!(
            m.sha256.as_deref(),
            Some("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        );
        assert_eq!(
            (m.kind.as_str(), m.size, m.mode.as_str()),
            ("file", 3, "0640")
        );
        let l = dir.path().join("l");
        std::os::unix::fs::symlink(&f, &l).unwrap();
        let ml = observe(&l, None).unwrap();
        assert_eq!(ml.symlink.as_deref(), Some(f.to_str().unwrap()));
        assert_eq!(ml.sha256, m.sha256);
        // Same bytes through a symlink: a link that now points elsewhere is a content
        // change, a file replaced by a link to the same bytes is too (its target is news),
        // and a mode change alone is not.
        assert!(
            ml.content_differs(&m),
            "a symlink where a file was is a change"
        );
        let mut elsewhere = ml.clone();
        elsewhere.symlink = Some("/other".into());
        assert!(elsewhere.content_differs(&ml));
        let mut chmod = m.clone();
        chmod.mode = "0600".into();
        assert!(!chmod.content_differs(&m), "mode alone is permission drift");
        assert!(!ml.content_differs(&ml.clone()));
    }

    #[test]
    fn dangling_symlink_and_missing_file_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let l = dir.path().join("l");
        std::os::unix::fs::symlink("/nonexistent/x", &l).unwrap();
        assert_eq!(
            observe(&l, None).unwrap_err(),
            "dangling symlink to /nonexistent/x"
        );
        assert_eq!(
            observe(&dir.path().join("m"), None).unwrap_err(),
            "no such file"
        );
    }

    #[test]
    fn directories_have_no_hash() {
        let dir = tempfile::tempdir().unwrap();
        let m = observe(dir.path(), None).unwrap();
        assert_eq!(m.kind, "directory");
        assert!(m.sha256.is_none());
    }
}

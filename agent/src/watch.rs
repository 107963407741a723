//! Watching: inotify (through notify) on a set of directories, turned into "these paths may
//! have changed" for the next scan.
//!
//! Directories are watched, never single files: editors and kubeadm replace files by rename,
//! which a watch on the old inode would miss. Each directory the scan names is watched
//! non-recursively; one that does not exist is stood in for by its nearest existing ancestor
//! (the scan does that), so that its creation is heard. After every scan the set is armed
//! again, and a directory whose inode changed (removed and created again) is re-watched.
//!
//! The notify thread only records paths in a bounded set and wakes the daemon; the daemon
//! settles and scans. Too many distinct paths at once, a kernel queue overflow (notify's
//! Rescan flag) or a watch error all become "rescan everything".

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use notify::event::{AccessKind, AccessMode, EventKind};
use notify::{RecursiveMode, Watcher as _};

/// Beyond this many distinct pending paths, the daemon rescans everything instead.
const MAX_PENDING_PATHS: usize = 4096;

/// What the notify thread has gathered since the daemon last took it.
#[derive(Debug, Default)]
pub struct Pending {
    /// Paths named by events.
    pub paths: HashSet<PathBuf>,
    /// Why everything must be read again, if it must.
    pub rescan: Option<String>,
    /// When the last event arrived, so the daemon can tell whether a burst is still going.
    pub last_event: Option<std::time::Instant>,
}

/// Shared between the notify thread and the daemon.
#[derive(Debug, Default)]
pub struct Shared {
    /// Gathered events.
    pub pending: Mutex<Pending>,
    /// Woken on every event.
    pub wake: tokio::sync::Notify,
}

impl Shared {
    /// Takes what was gathered.
    pub fn take(&self) -> Pending {
        std::mem::take(&mut *self.pending.lock().expect("pending lock"))
    }

    /// When the last event arrived.
    pub fn last_event(&self) -> Option<std::time::Instant> {
        self.pending.lock().expect("pending lock").last_event
    }

    fn record(&self, res: notify::Result<notify::Event>) {
        let mut p = self.pending.lock().expect("pending lock");
        match res {
            Ok(ev) if ev.need_rescan() => {
                p.rescan = Some("inotify queue overflow".into());
                p.paths.clear();
            }
            // Opens and reads (ours included) are not changes.
            Ok(ev) if matches!(ev.kind, EventKind::Access(a) if a != AccessKind::Close(AccessMode::Write)) =>
            {
                return;
            }
            Ok(ev) => {
                if p.rescan.is_none() {
                    p.paths.extend(ev.paths);
                    if p.paths.len() > MAX_PENDING_PATHS {
                        p.rescan = Some(format!(
                            "more than {MAX_PENDING_PATHS} paths changed at once"
                        ));
                        p.paths.clear();
                    }
                }
            }
            Err(e) => {
                p.rescan = Some(format!("watch error: {e}"));
                p.paths.clear();
            }
        }
        p.last_event = Some(std::time::Instant::now());
        drop(p);
        self.wake.notify_one();
    }
}

/// The inotify watches.
pub struct Watch {
    watcher: notify::INotifyWatcher,
    armed: BTreeMap<PathBuf, (u64, u64)>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch")
            .field("armed", &self.armed.keys())
            .finish()
    }
}

impl Watch {
    /// Starts the inotify instance (no watches yet).
    pub fn new() -> notify::Result<Watch> {
        let shared = Arc::new(Shared::default());
        let s = Arc::clone(&shared);
        let watcher = notify::INotifyWatcher::new(
            move |res| s.record(res),
            notify::Config::default().with_follow_symlinks(true),
        )?;
        Ok(Watch {
            watcher,
            armed: BTreeMap::new(),
            shared,
        })
    }

    /// What the notify thread gathers.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Directories watched now.
    pub fn armed(&self) -> impl Iterator<Item = &PathBuf> {
        self.armed.keys()
    }

    /// Watches exactly `dirs`: adds new ones, drops old ones, and re-watches a directory that
    /// was replaced. Returns the directories that could not be watched, with why (the
    /// periodic rescan still covers them).
    pub fn arm(&mut self, dirs: &BTreeSet<PathBuf>) -> Vec<(PathBuf, String)> {
        let mut failed = Vec::new();
        let gone: Vec<PathBuf> = self
            .armed
            .keys()
            .filter(|d| !dirs.contains(*d))
            .cloned()
            .collect();
        for d in gone {
            let _ = self.watcher.unwatch(&d);
            self.armed.remove(&d);
        }
        for d in dirs {
            let Ok(meta) = std::fs::metadata(d) else {
                continue; // gone since the scan; the next scan names its ancestor
            };
            let id = (meta.dev(), meta.ino());
            match self.armed.get(d) {
                Some(old) if *old == id => continue,
                Some(_) => {
                    let _ = self.watcher.unwatch(d);
                }
                None => {}
            }
            match self.watcher.watch(d, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    self.armed.insert(d.clone(), id);
                }
                Err(e) => {
                    self.armed.remove(d);
                    failed.push((d.clone(), e.to_string()));
                }
            }
        }
        failed
    }
}

//! Detection: what changed on the node since the baseline, as events.
//!
//! A scan of the dirty paths, the pure old-state/new-state diff (`baseline::changes`) and the
//! own-write filter (bytes the fixer wrote are reported by its own events, not as drift).
//! No tokio, no spool: the loop commits what this returns.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::baseline::{self, PathState};
use crate::config::Config;
use crate::event::EventBody;
use crate::fix::policy::OwnWrites;
use crate::scan::{Dirty, Scanner};
use crate::spool::BaselineWrite;

/// What a look at the node found.
#[derive(Debug, Default)]
pub struct Detection {
    /// Events, in order (a `rescan` event first when there is one).
    pub bodies: Vec<EventBody>,
    /// The baseline writes that go with them.
    pub writes: Vec<BaselineWrite>,
    /// Every tracked path's new state (the fixer looks at these).
    pub states: BTreeMap<String, PathState>,
    /// Directories to watch.
    pub watch: BTreeSet<PathBuf>,
}

/// Why a full rescan ran, and whether to say so when it finds nothing.
#[derive(Debug, Clone, Copy)]
pub struct Why<'a> {
    /// The reason, for the `rescan` event.
    pub reason: &'a str,
    /// Report the rescan even when it finds nothing (a queue overflow is worth knowing).
    pub always_say: bool,
}

/// Scans and diffs, remembering what manifests depend on between looks.
pub struct Detector {
    /// The scanner and its memory (also holds the live probes' findings).
    pub scanner: Scanner,
    own: Arc<OwnWrites>,
    /// Full rescans since start.
    pub rescans: u64,
}

impl Detector {
    /// A detector that drops the fixer's writes recorded in `own`.
    pub fn new(own: Arc<OwnWrites>) -> Self {
        Detector {
            scanner: Scanner::new(),
            own,
            rescans: 0,
        }
    }

    /// Forgets what the scanner remembered (rules or paths changed).
    pub fn reset(&mut self) {
        self.scanner = Scanner::new();
    }

    /// Scans `dirty` and returns what differs from `baseline`. `first_run`: the baseline is
    /// new, so what exists is not reported as created.
    pub fn detect(
        &mut self,
        cfg: &Config,
        dirty: &Dirty,
        baseline: &BTreeMap<String, PathState>,
        why: Option<Why<'_>>,
        first_run: bool,
    ) -> Detection {
        let snap = self.scanner.scan(cfg, dirty, baseline);
        if dirty.all {
            self.rescans += 1;
        }
        let (changes, writes) = diff(baseline, &snap.states, first_run);
        let changes = self.drop_own_writes(changes);
        let mut bodies = Vec::with_capacity(changes.len() + 1);
        if let Some(why) = why
            && dirty.all
            && (why.always_say || !writes.is_empty())
        {
            tracing::info!(reason = why.reason, changes = writes.len(), "rescan");
            bodies.push(EventBody::Rescan {
                reason: why.reason.into(),
                changes: writes.len(),
            });
        }
        bodies.extend(changes);
        Detection {
            bodies,
            writes,
            states: snap.states,
            watch: snap.watch,
        }
    }

    /// Drops `file_modified` and `file_created` events for bytes the fixer wrote: its own
    /// events (`fix_applied`, `fix_rolled_back`) describe them.
    fn drop_own_writes(&self, changes: Vec<EventBody>) -> Vec<EventBody> {
        changes
            .into_iter()
            .filter(|e| match e {
                EventBody::FileModified { path, after, .. }
                | EventBody::FileCreated { path, after, .. } => {
                    !self.own.take_if_own(path, after.sha256.as_deref())
                }
                _ => true,
            })
            .collect()
    }
}

/// Whether an event on `p` can change what the agent tracks: a tracked path, a directory
/// above one (removed or replaced), a new file where new files are tracked (manifests, PKI,
/// CNI), or the target of a tracked symlink. Watched parent directories hear about their
/// other files too (a log file next to the node's directories): those are not ours, and
/// reacting to them, even with a log line, can feed itself.
pub fn relevant(cfg: &Config, baseline: &BTreeMap<String, PathState>, p: &Path) -> bool {
    if p.parent() == Some(cfg.manifests_dir.as_path())
        || p.starts_with(&cfg.pki_dir)
        || cfg.cni_dirs.iter().any(|d| p.starts_with(d))
        || [
            &cfg.manifests_dir,
            &cfg.kubernetes_dir,
            &cfg.pki_dir,
            &cfg.etcd_data_dir,
        ]
        .into_iter()
        .chain(&cfg.cni_dirs)
        .any(|d| d.starts_with(p))
    {
        return true;
    }
    baseline.iter().any(|(k, state)| {
        let k = Path::new(k);
        k.starts_with(p)
            || (state.meta.as_ref().is_some_and(|m| m.symlink.is_some())
                && std::fs::canonicalize(k)
                    .is_ok_and(|t| t.starts_with(p) || t.parent() == Some(p)))
    })
}

/// The events and baseline writes that take `old` to `new`.
fn diff(
    old: &BTreeMap<String, PathState>,
    new: &BTreeMap<String, PathState>,
    first_run: bool,
) -> (Vec<EventBody>, Vec<BaselineWrite>) {
    let mut events = Vec::new();
    let mut writes = Vec::new();
    let keys: BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    for k in keys {
        let (o, n) = (old.get(k), new.get(k));
        if o == n {
            continue;
        }
        events.extend(baseline::changes(k, o, n, first_run));
        writes.push((k.clone(), n.cloned()));
    }
    (events, writes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node() -> (tempfile::TempDir, Config) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let yaml = format!(
            "manifests_dir: {0}/manifests\nkubernetes_dir: {0}\npki_dir: {0}/pki\nstate_dir: {0}/state\netcd_data_dir: {0}/etcd\n",
            root.display()
        );
        std::fs::create_dir_all(root.join("manifests")).unwrap();
        let cfg = Config::parse(&yaml, Path::new("agent.yaml")).unwrap();
        (dir, cfg)
    }

    #[test]
    fn a_change_is_reported_once_and_the_fixers_own_write_not_at_all() {
        let (dir, cfg) = node();
        let own = Arc::new(OwnWrites::default());
        let mut d = Detector::new(Arc::clone(&own));
        let path = dir.path().join("manifests/kube-scheduler.yaml");
        std::fs::write(&path, "apiVersion: v1\nkind: Pod\n").unwrap();
        let first = d.detect(&cfg, &Dirty::all(), &BTreeMap::new(), None, true);
        let mut baseline = BTreeMap::new();
        for (k, s) in first.writes {
            baseline.insert(k, s.unwrap());
        }
        let key = path.display().to_string();
        assert!(baseline.contains_key(&key));

        std::fs::write(&path, "apiVersion: v1\nkind: Pod\n# edited\n").unwrap();
        let dirty = Dirty {
            paths: [path.clone()].into(),
            ..Dirty::default()
        };
        let seen = d.detect(&cfg, &dirty, &baseline, None, false);
        assert!(
            seen.bodies.iter().any(|b| b.kind() == "file_modified"),
            "{:?}",
            seen.bodies
        );

        // The same change written by the fixer is not drift (its write is still a baseline
        // write, so the next look does not report it either).
        let bytes = b"apiVersion: v1\nkind: Pod\n# fixed\n";
        std::fs::write(&path, bytes).unwrap();
        own.expect(&key, &crate::integrity::sha256_hex(bytes));
        let seen = d.detect(&cfg, &dirty, &baseline, None, false);
        assert!(
            !seen.bodies.iter().any(|b| b.kind() == "file_modified"),
            "{:?}",
            seen.bodies
        );
        assert_eq!(seen.writes.len(), 1);
    }

    #[test]
    fn a_rescan_says_why_only_when_asked_or_when_it_found_something() {
        let (_dir, cfg) = node();
        let mut d = Detector::new(Arc::default());
        let quiet = Why {
            reason: "periodic",
            always_say: false,
        };
        let first = d.detect(&cfg, &Dirty::all(), &BTreeMap::new(), None, true);
        let baseline: BTreeMap<_, _> = first
            .writes
            .into_iter()
            .map(|(k, s)| (k, s.unwrap()))
            .collect();
        let seen = d.detect(&cfg, &Dirty::all(), &baseline, Some(quiet), false);
        assert!(seen.bodies.is_empty(), "{:?}", seen.bodies);
        let loud = Why {
            always_say: true,
            ..quiet
        };
        let seen = d.detect(&cfg, &Dirty::all(), &baseline, Some(loud), false);
        assert_eq!(seen.bodies.len(), 1);
        assert_eq!(seen.bodies[0].kind(), "rescan");
        assert_eq!(d.rescans, 3);
    }

    #[test]
    fn only_events_on_the_nodes_paths_are_relevant() {
        let (dir, cfg) = node();
        let baseline = BTreeMap::new();
        let root = dir.path();
        assert!(relevant(&cfg, &baseline, &root.join("manifests/new.yaml")));
        assert!(relevant(&cfg, &baseline, &root.join("pki/etcd/ca.crt")));
        assert!(relevant(&cfg, &baseline, root));
        assert!(!relevant(&cfg, &baseline, &root.join("agent.log")));
    }
}

//! The daemon's view of the node: which paths are tracked, their current [`PathState`], and
//! which directories must be watched to hear about them.
//!
//! A scan is told what may have changed ([`Dirty`]). Dirty paths (and new ones) are read
//! again in full; the others keep their last state, so a burst on one file does not re-read
//! the PKI. A full rescan ([`Dirty::all`]) reads everything.
//!
//! Tracked paths:
//! - the manifests directory itself and every manifest the kubelet would read in it;
//! - the CIS 1.1 file set and kubelet.conf ([`check::file_set_members`]), with the etcd data
//!   directory taken from the etcd manifest;
//! - files a manifest depends on (the AuthenticationConfiguration named by
//!   `--authentication-config`): a change there re-evaluates the manifest.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};

use crate::baseline::PathState;
use crate::check::{self, FileReport, SetMember};
use crate::config::Config;
use crate::event::FindingRecord;
use crate::integrity;
use crate::manifest::{Component, MAX_MANIFEST_BYTES};

/// Most manifests the daemon tracks (a control-plane node has four or five). Past this the
/// rest are not read, and the manifests directory says so: a directory filled by mistake or
/// on purpose must not take the agent's memory and disk with it. The control-plane
/// components' own file names come first, so junk cannot push them out.
pub const MAX_MANIFESTS: usize = 256;
/// Largest manifest text kept for diffs (real manifests are under 10 KiB; the diff an event
/// carries is capped at 64 KiB anyway). A larger manifest is still checked and hashed.
pub const MAX_TEXT_BYTES: usize = 64 * 1024;
use crate::redact;
use crate::rules::Catalogue;
use crate::rules::eval::{self, FileFacts};

/// What may have changed since the last scan.
#[derive(Debug, Clone, Default)]
pub struct Dirty {
    /// Everything: read every tracked path again.
    pub all: bool,
    /// These paths, and everything under them when they are directories.
    pub paths: HashSet<PathBuf>,
}

impl Dirty {
    /// A full rescan.
    pub fn all() -> Self {
        Dirty {
            all: true,
            paths: HashSet::new(),
        }
    }

    /// Whether `path` (or a directory above it) was touched.
    pub fn touches(&self, path: &Path) -> bool {
        self.all || path.ancestors().any(|a| self.paths.contains(a))
    }

    /// Nothing to do.
    pub fn is_empty(&self) -> bool {
        !self.all && self.paths.is_empty()
    }
}

/// What a manifest's last evaluation depended on.
#[derive(Debug, Clone, Default)]
struct ManifestMemo {
    /// Files it reads (the authentication config).
    deps: Vec<PathBuf>,
    /// Where its etcd keeps data, for the etcd manifest.
    etcd_data_dir: Option<PathBuf>,
}

/// The result of one scan.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Every tracked path and its state.
    pub states: BTreeMap<String, PathState>,
    /// Directories to watch (existing ones; for a missing directory, its nearest existing
    /// ancestor, so that its creation is heard).
    pub watch: BTreeSet<PathBuf>,
}

/// Scans with memory of what manifests depended on.
#[derive(Debug, Default)]
pub struct Scanner {
    memo: HashMap<PathBuf, ManifestMemo>,
}

impl Scanner {
    /// A scanner with no memory: the first scan reads everything.
    pub fn new() -> Self {
        Scanner::default()
    }

    /// Scans the node. `current` is the last state (the baseline); paths that are neither
    /// dirty nor new keep their state from it.
    pub fn scan(
        &mut self,
        cfg: &Config,
        dirty: &Dirty,
        current: &BTreeMap<String, PathState>,
    ) -> Snapshot {
        let cat = &cfg.catalogue;
        let mut snap = Snapshot::default();
        let mut watch_dirs: BTreeSet<PathBuf> = [
            cfg.manifests_dir.clone(),
            cfg.kubernetes_dir.clone(),
            cfg.pki_dir.clone(),
        ]
        .into_iter()
        .chain(cfg.cni_dirs.iter().cloned())
        .collect();

        let mdir = &cfg.manifests_dir;
        let (mut manifests, mut list_error) = match check::list_manifest_dir(mdir) {
            Ok(m) => (m, None),
            Err(e) => (Vec::new(), Some(e)),
        };
        if manifests.len() > MAX_MANIFESTS {
            let own = |p: &PathBuf| {
                let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
                !Component::ALL
                    .iter()
                    .any(|c| name.as_deref() == Some(&format!("{}.yaml", c.name())))
            };
            manifests.sort_by_key(|p| (own(p), p.clone()));
            list_error = Some(format!(
                "holds {} files the kubelet would read; only the first {MAX_MANIFESTS} (by name) are tracked",
                manifests.len()
            ));
            manifests.truncate(MAX_MANIFESTS);
        }
        self.memo.retain(|p, _| manifests.contains(p));
        let mut etcd_data_dir = None;
        let mut deps = BTreeSet::new();
        for path in &manifests {
            let k = key(path);
            let old = current.get(&k);
            let memo_dirty = self
                .memo
                .get(path)
                .is_none_or(|m| m.deps.iter().any(|d| dirty.touches(d)));
            let state = match old {
                Some(s) if !touched(dirty, path, s) && !memo_dirty => s.clone(),
                _ => self.observe_manifest(cat, path, old),
            };
            if state.meta.is_none() && fs::symlink_metadata(path).is_err() {
                // Gone between the listing and the read (a temp file renamed away): not a
                // file of this scan, so not "invalid"; the next scan sees what replaced it.
                self.memo.remove(path);
                continue;
            }
            if let Some(m) = self.memo.get(path) {
                deps.extend(m.deps.iter().cloned());
                if m.etcd_data_dir.is_some() {
                    etcd_data_dir.clone_from(&m.etcd_data_dir);
                }
            }
            add_link_target(&mut watch_dirs, path, &state);
            snap.states.insert(k, state);
        }

        let mut members = Vec::new();
        if fs::symlink_metadata(mdir).is_ok() {
            members.push(SetMember {
                path: mdir.clone(),
                roles: Vec::new(),
                error: list_error,
            });
        }
        members.extend(check::file_set_members(cfg, etcd_data_dir));
        members.extend(deps.into_iter().map(|path| SetMember {
            path,
            roles: Vec::new(),
            error: None,
        }));
        for m in members {
            let k = key(&m.path);
            if snap.states.contains_key(&k) {
                continue; // a dependency that is also in the file set
            }
            let old = current.get(&k);
            let state = match old {
                Some(s) if !touched(dirty, &m.path, s) => s.clone(),
                _ => observe_file(cat, &m, old),
            };
            if state
                .meta
                .as_ref()
                .is_some_and(|meta| meta.kind == "directory")
            {
                watch_dirs.insert(m.path.clone());
            }
            if let Some(parent) = m.path.parent() {
                watch_dirs.insert(parent.to_path_buf());
            }
            add_link_target(&mut watch_dirs, &m.path, &state);
            snap.states.insert(k, state);
        }
        // The parents of the watched directories, so that a directory removed and created
        // again is heard.
        let parents: Vec<PathBuf> = watch_dirs
            .iter()
            .filter_map(|d| d.parent().map(Path::to_path_buf))
            .collect();
        watch_dirs.extend(parents);
        snap.watch = watch_dirs.iter().map(|d| nearest_existing(d)).collect();
        snap
    }

    fn observe_manifest(
        &mut self,
        cat: &Catalogue,
        path: &Path,
        old: Option<&PathState>,
    ) -> PathState {
        let bytes = match check::read_bounded(path, MAX_MANIFEST_BYTES) {
            Ok(b) => b,
            Err(error) => {
                // Keep what the last good parse found (the etcd data directory, the files it
                // reads): an unreadable manifest says nothing new about them.
                self.memo.entry(path.to_path_buf()).or_default();
                return PathState {
                    meta: integrity::observe(path, None).ok(),
                    error: Some(error),
                    findings: old.map(|o| o.findings.clone()).unwrap_or_default(),
                    text: old.and_then(|o| o.text.clone()),
                    component: old.and_then(|o| o.component.clone()),
                };
            }
        };
        let meta = integrity::observe(path, Some(&bytes)).ok();
        // Only a pod manifest's text, redacted from the parser's spans, may leave the node.
        let text = std::str::from_utf8(&bytes)
            .ok()
            .filter(|src| src.len() <= MAX_TEXT_BYTES)
            .and_then(|src| redact::manifest_text(src, &|f| cat.sensitive(f)).ok());
        let (report, parsed) = check::check_manifest_bytes(cat, path, &bytes);
        if let Some(mut error) = report.error {
            if is_sed_temp(path) {
                error.push_str(" (a temporary file of `sed -i`, which renames it over the file it edits; the kubelet reads it too while it exists)");
            }
            self.memo.entry(path.to_path_buf()).or_default();
            return PathState {
                meta,
                error: Some(error),
                findings: old.map(|o| o.findings.clone()).unwrap_or_default(),
                text,
                component: old.and_then(|o| o.component.clone()),
            };
        }
        let mut memo = ManifestMemo::default();
        if let Some((m, cp)) = &parsed {
            memo.deps.extend(check::authn_host_path(m, cp));
            memo.deps.extend(check::authz_host_path(m, cp));
            if cp.component == Component::Etcd {
                memo.etcd_data_dir = cp
                    .flags
                    .value("data-dir")
                    .and_then(|d| check::host_path(m, cp, &d));
            }
        }
        self.memo.insert(path.to_path_buf(), memo);
        PathState {
            meta,
            error: None,
            findings: records(cat, &report, &report.findings),
            text,
            component: report
                .component
                .clone()
                .map(|c| (c, report.version.clone())),
        }
    }
}

fn observe_file(cat: &Catalogue, m: &SetMember, old: Option<&PathState>) -> PathState {
    let meta = integrity::observe(&m.path, None);
    let error = m.error.clone().or_else(|| meta.as_ref().err().cloned());
    let findings = match &meta {
        Ok(meta) => {
            let facts = FileFacts {
                roles: m.roles.clone(),
                mode: u32::from_str_radix(&meta.mode, 8).expect("observe writes octal"),
                uid: meta.uid,
                gid: meta.gid,
                user: meta.owner.clone(),
                group: meta.group.clone(),
                tls: None,
                kubeconfig: None,
            };
            records(
                cat,
                &FileReport::default(),
                &eval::evaluate_file(cat, &facts),
            )
        }
        Err(_) => old.map(|o| o.findings.clone()).unwrap_or_default(),
    };
    PathState {
        meta: meta.ok(),
        error,
        findings,
        text: None,
        component: None,
    }
}

fn records(
    cat: &Catalogue,
    file: &FileReport,
    findings: &[crate::rules::Finding],
) -> BTreeMap<String, FindingRecord> {
    findings
        .iter()
        .filter_map(|f| {
            let withheld = file.withholds(cat, f.flag.as_deref());
            FindingRecord::open(f, file.component.as_deref(), withheld)
        })
        .map(|r| (finding_key(cat, &r), r))
        .collect()
}

/// The key of an open finding in a file: the rule id, and for a rule that can fail more than
/// once in a file (two unsupported flags), what tells its instances apart, as `check` lists
/// them.
pub fn finding_key(cat: &Catalogue, r: &FindingRecord) -> String {
    if !cat.multi_instance(&r.rule_id) {
        return r.rule_id.clone();
    }
    [
        Some(r.rule_id.as_str()),
        r.flag.as_deref(),
        r.observed.as_deref(),
        Some(r.title.as_str()),
    ]
    .iter()
    .map(|p| p.unwrap_or(""))
    .collect::<Vec<_>>()
    .join("\u{1f}")
}

/// Whether a scan must read `path` again: it (or a directory above it) was touched, or, for a
/// symlink, its target was.
fn touched(dirty: &Dirty, path: &Path, old: &PathState) -> bool {
    dirty.touches(path)
        || (old.meta.as_ref().is_some_and(|m| m.symlink.is_some())
            && fs::canonicalize(path).is_ok_and(|t| dirty.touches(&t)))
}

/// A symlink's target lives elsewhere: watch its directory too, as the kubelet does not.
fn add_link_target(watch: &mut BTreeSet<PathBuf>, path: &Path, state: &PathState) {
    if state.meta.as_ref().is_some_and(|m| m.symlink.is_some())
        && let Ok(target) = fs::canonicalize(path)
        && let Some(parent) = target.parent()
    {
        watch.insert(parent.to_path_buf());
    }
}

/// `sed -i` writes its result to `sedXXXXXX` in the same directory, then renames it.
fn is_sed_temp(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("sed"))
        .is_some_and(|r| r.len() == 6 && r.bytes().all(|b| b.is_ascii_alphanumeric()))
}

/// The path as a baseline key.
pub fn key(path: &Path) -> String {
    path.display().to_string()
}

/// `dir` if it exists as a directory, else its nearest existing ancestor.
pub fn nearest_existing(dir: &Path) -> PathBuf {
    dir.ancestors()
        .find(|a| fs::metadata(a).is_ok_and(|m| m.is_dir()))
        .unwrap_or(Path::new("/"))
        .to_path_buf()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_env_value_in_a_flag_is_withheld_from_events() {
        // Issue 13 made `$(VAR)` expand into what the rules see; env values are secrets to
        // the redactor, so the event's `observed` is redacted for such a flag.
        let cat = Catalogue::builtin();
        let src = include_str!("../../tests/data/kubeadm/v1.31/kube-apiserver.yaml")
            .replace(
                "    - --secure-port=6443\n",
                "    - --secure-port=6443\n    - --tls-cipher-suites=$(SUITES)\n",
            )
            .replace(
                "    name: kube-apiserver\n",
                "    name: kube-apiserver\n    env:\n    - {name: SUITES, value: S3CRET_SUITE}\n",
            );
        let path = std::path::Path::new("/nonexistent/kube-apiserver.yaml");
        let (report, _) = check::check_manifest_bytes(cat, path, src.as_bytes());
        assert!(
            report
                .findings
                .iter()
                .any(|f| f.observed.as_deref() == Some("S3CRET_SUITE"))
        );
        let records = records(cat, &report, &report.findings);
        let r = records
            .values()
            .find(|r| r.rule_id == "apiserver-tls-cipher-suites")
            .expect("the cipher-suite finding is open");
        assert_eq!(r.observed.as_deref(), Some(crate::redact::REDACTED));
        assert!(!serde_json::to_string(&records).unwrap().contains("S3CRET"));
    }
}

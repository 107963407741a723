//! The daemon's view of the node: which paths are tracked, their current [`PathState`], and
//! which directories must be watched to hear about them.
//!
//! A scan is told what may have changed ([`Dirty`]). Dirty paths (and new ones) are read
//! again in full; the others keep their last state, so a burst on one file does not re-read
//! the PKI. A full rescan ([`Dirty::all`]) reads everything.
//!
//! Tracked paths:
//! - the manifests directory itself and every manifest the kubelet would read in it;
//! - the CIS 1.1 file set and kubelet.conf ([`crate::node::file_set_members`]), with the etcd data
//!   directory taken from the etcd manifest;
//! - files a manifest depends on (the AuthenticationConfiguration named by
//!   `--authentication-config`): a change there re-evaluates the manifest;
//! - the certificate files the manifests name outside the PKI directory.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};

use crate::baseline::PathState;
use crate::config::Config;
use crate::event::FindingRecord;
use crate::integrity;
use crate::io::{self, key};
use crate::manifest::{Component, MAX_MANIFEST_BYTES};
use crate::node::{self, FileReport, SetMember};
use crate::rules::eval::FileFacts;

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
use crate::rules::catalogue::FileRole;

/// What may have changed since the last scan.
#[derive(Debug, Clone, Default)]
pub struct Dirty {
    /// Everything: read every tracked path again.
    pub all: bool,
    /// Time has passed: read again the files whose findings depend on the time (certificates
    /// and kubeconfigs, for expiry).
    pub clock: bool,
    /// These paths, and everything under them when they are directories.
    pub paths: HashSet<PathBuf>,
}

impl Dirty {
    /// A full rescan.
    pub fn all() -> Self {
        Dirty {
            all: true,
            ..Dirty::default()
        }
    }

    /// The files whose findings depend on the time.
    pub fn clock() -> Self {
        Dirty {
            clock: true,
            ..Dirty::default()
        }
    }

    /// Whether `path` (or a directory above it) was touched.
    pub fn touches(&self, path: &Path) -> bool {
        self.all || path.ancestors().any(|a| self.paths.contains(a))
    }

    /// Nothing to do.
    pub fn is_empty(&self) -> bool {
        !self.all && !self.clock && self.paths.is_empty()
    }
}

/// What a manifest's last evaluation depended on.
#[derive(Debug, Clone, Default)]
struct ManifestMemo {
    /// Files it reads that are tracked with it (the authentication config).
    deps: Vec<PathBuf>,
    /// The certificate files its flags name (tracked with the file set): a change there, or
    /// to the cluster CA, evaluates the manifest again.
    certs: Vec<PathBuf>,
    /// kube-apiserver: where and what to probe (or why not), when probes are on.
    live: Option<Result<crate::live::Target, String>>,
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

/// Scans with memory of what manifests and files depended on.
#[derive(Debug, Default)]
pub struct Scanner {
    memo: HashMap<PathBuf, ManifestMemo>,
    /// For the other tracked files: the files their findings read besides themselves (the
    /// key beside a certificate, what a kubeconfig names, the cluster CA).
    file_deps: HashMap<PathBuf, Vec<PathBuf>>,
    /// The last probe's findings of each kube-apiserver manifest, merged into its state.
    live: HashMap<PathBuf, BTreeMap<String, FindingRecord>>,
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
        // The cluster CA, read when something compares with it.
        let node_ca = std::cell::OnceCell::new();
        let node_ca = || {
            node_ca.get_or_init(|| crate::node::OnNode {
                ca: crate::node::node_cluster_ca(cfg),
                live: None,
            })
        };
        let cluster_ca = cfg.pki_dir.join("ca.crt");
        let mut watch_dirs: BTreeSet<PathBuf> = [
            cfg.manifests_dir.clone(),
            cfg.kubernetes_dir.clone(),
            cfg.pki_dir.clone(),
        ]
        .into_iter()
        .chain(cfg.cni_dirs.iter().cloned())
        .collect();

        let mdir = &cfg.manifests_dir;
        let (mut manifests, mut list_error) = match crate::io::list_manifest_dir(mdir) {
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
        self.live.retain(|p, _| manifests.contains(p));
        let mut etcd_data_dir = None;
        let mut deps = BTreeSet::new();
        let mut named_certs = Vec::new();
        for path in &manifests {
            let k = key(path);
            let old = current.get(&k);
            let memo_dirty = self.memo.get(path).is_none_or(|m| {
                let read = m.deps.iter().chain(&m.certs);
                read.chain([&cluster_ca]).any(|d| dirty.touches(d))
            });
            let state = match old {
                Some(s) if !touched(dirty, path, s) && !memo_dirty => s.clone(),
                _ => self.observe_manifest(cfg, path, old, node_ca(), &cluster_ca),
            };
            let state = self.with_live(cat, path, state, old);
            if state.meta.is_none() && fs::symlink_metadata(path).is_err() {
                // Gone between the listing and the read (a temp file renamed away): not a
                // file of this scan, so not "invalid"; the next scan sees what replaced it.
                self.memo.remove(path);
                continue;
            }
            if let Some(m) = self.memo.get(path) {
                deps.extend(m.deps.iter().cloned());
                named_certs.extend(m.certs.iter().cloned());
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
        members.extend(crate::node::file_set_members(
            cfg,
            etcd_data_dir,
            named_certs,
        ));
        members.extend(deps.into_iter().map(|path| SetMember {
            path,
            roles: Vec::new(),
            error: None,
        }));
        let mut file_deps = HashMap::new();
        for m in members {
            let k = key(&m.path);
            if snap.states.contains_key(&k) {
                continue; // a dependency that is also in the file set
            }
            let old = current.get(&k);
            let deps = self.file_deps.remove(&m.path);
            let deps_dirty = deps
                .as_ref()
                .is_none_or(|d| d.iter().any(|d| dirty.touches(d)));
            let timed = dirty.clock
                && (m.roles.contains(&FileRole::Certificate)
                    || m.roles.contains(&FileRole::Kubeconfig));
            let (state, deps) = match (old, deps) {
                (Some(s), Some(deps)) if !touched(dirty, &m.path, s) && !deps_dirty && !timed => {
                    (s.clone(), deps)
                }
                _ => {
                    let ca = m.roles.contains(&FileRole::Kubeconfig).then(node_ca);
                    let ca = ca.and_then(|c| c.ca.as_deref());
                    let (state, mut deps) = observe_file(cfg, &m, old, ca);
                    if ca.is_some() {
                        deps.push(cluster_ca.clone());
                    }
                    (state, deps)
                }
            };
            file_deps.insert(m.path.clone(), deps);
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
        self.file_deps = file_deps;
        snap.watch = watch_dirs.iter().map(|d| nearest_existing(d)).collect();
        snap
    }

    /// The kube-apiserver manifests to probe: where and what (or why not).
    pub fn live_targets(&self) -> Vec<(PathBuf, Result<crate::live::Target, String>)> {
        let mut out: Vec<_> = self
            .memo
            .iter()
            .filter_map(|(p, m)| Some((p.clone(), m.live.clone()?)))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Keeps a probe's findings for the manifest at `path`: the next scan merges them into its
    /// state (and they stay until the next probe).
    pub fn set_live(&mut self, cat: &Catalogue, path: &Path, findings: &[crate::rules::Finding]) {
        let component = Some(Component::KubeApiserver.name().to_string());
        let file = FileReport {
            component,
            ..FileReport::default()
        };
        self.live
            .insert(path.to_path_buf(), records(cat, &file, findings));
    }

    /// `state` with the last probe's findings in place of those it had; before this process
    /// has probed, those `old` had (a restart is not a resolution).
    fn with_live(
        &self,
        cat: &Catalogue,
        path: &Path,
        mut state: PathState,
        old: Option<&PathState>,
    ) -> PathState {
        if state.error.is_some() {
            return state; // an unreadable manifest keeps what was known, probes included
        }
        let probed = self
            .memo
            .get(path)
            .is_some_and(|m| matches!(m.live, Some(Ok(_))));
        let live = |s: &PathState| -> Vec<(String, FindingRecord)> {
            s.findings
                .iter()
                .filter(|(_, f)| cat.is_live(&f.rule_id))
                .map(|(k, f)| (k.clone(), f.clone()))
                .collect()
        };
        let kept = match self.live.get(path) {
            _ if !probed => Vec::new(),
            Some(last) => last.iter().map(|(k, f)| (k.clone(), f.clone())).collect(),
            None => old.map(live).unwrap_or_default(),
        };
        state.findings.retain(|_, f| !cat.is_live(&f.rule_id));
        state.findings.extend(kept);
        state
    }

    fn observe_manifest(
        &mut self,
        cfg: &Config,
        path: &Path,
        old: Option<&PathState>,
        node_ca: &crate::node::OnNode,
        cluster_ca: &Path,
    ) -> PathState {
        let cat = &cfg.catalogue;
        // A manifest caught mid-replacement (a rename between the stat and the open) is read
        // again at once rather than reported unreadable.
        let read = || crate::io::read_bounded(path, MAX_MANIFEST_BYTES);
        let bytes = match read().or_else(|e| if e.retry_helps() { read() } else { Err(e) }) {
            Ok(b) => b,
            Err(error) => {
                let error = error.to_string();
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
        let (report, parsed) = crate::node::check_manifest_bytes(cat, path, &bytes, Some(node_ca));
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
            memo.deps
                .extend(crate::manifest::mounts::authn_host_path(m, cp));
            memo.deps
                .extend(crate::manifest::mounts::authz_host_path(m, cp));
            memo.certs = crate::manifest::mounts::named_cert_paths(m, cp);
            if cfg.live.enabled && cp.component == Component::KubeApiserver {
                let authn = crate::node::read_authn(m, cp);
                let facts = crate::rules::eval::ManifestFacts {
                    cp,
                    authn: authn.as_ref(),
                    authz: None,
                    certs: None,
                };
                let addressing = &cfg.live.addressing;
                let target =
                    crate::node::live_target(cat, m, &facts, cluster_ca.to_path_buf(), addressing);
                memo.live = Some(target);
            }
            if cp.component == Component::Etcd {
                memo.etcd_data_dir = cp
                    .flags
                    .value("data-dir")
                    .and_then(|d| crate::manifest::mounts::host_path(m, cp, &d));
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

/// A file of the set: its integrity facts and findings, and the files those read besides it.
fn observe_file(
    cfg: &Config,
    m: &SetMember,
    old: Option<&PathState>,
    node_ca: Option<&[String]>,
) -> (PathState, Vec<PathBuf>) {
    let cat = &cfg.catalogue;
    // A certificate or kubeconfig is read once: the hash and the findings are of the same
    // bytes.
    let bytes = node::reads_content(&m.roles)
        .then(|| io::read_bounded(&m.path, io::MAX_AUX_BYTES).map_err(String::from));
    let content = bytes.as_ref().and_then(|b| b.as_deref().ok());
    let meta = integrity::observe(&m.path, content);
    let error = m.error.clone().or_else(|| meta.as_ref().err().cloned());
    let mut deps = Vec::new();
    let findings = match &meta {
        Ok(meta) => {
            let facts = FileFacts {
                roles: m.roles.clone(),
                mode: u32::from_str_radix(&meta.mode, 8).expect("observe writes octal"),
                uid: meta.uid,
                gid: meta.gid,
                user: meta.owner.clone(),
                group: meta.group.clone(),
                tls: Vec::new(),
                kubeconfig: None,
            };
            let bytes = bytes.as_ref().map(|b| b.as_deref().map_err(String::as_str));
            let found = node::judge_file(cat, &m.path, facts, bytes, &cfg.tls, node_ca, &mut deps);
            records(cat, &FileReport::default(), &found)
        }
        Err(_) => old.map(|o| o.findings.clone()).unwrap_or_default(),
    };
    (
        PathState {
            meta: meta.ok(),
            error,
            findings,
            text: None,
            component: None,
        },
        deps,
    )
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
        let (report, _) = crate::node::check_manifest_bytes(cat, path, src.as_bytes(), None);
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

//! Manifest contents already evaluated in one check: copies are parsed and evaluated once.

use std::collections::HashMap;
use std::fs;
use std::hash::BuildHasherDefault;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock, RwLock};

use crate::config::TlsConfig;
use crate::io::read_bounded_as;
use crate::manifest::mounts::{host_path, named_cert_paths};
use crate::manifest::{Component, MAX_MANIFEST_BYTES};
use crate::node::{
    FileReport, OnNode, certificate_report, facts_of, judge_file, manifest_findings,
    with_file_findings,
};
use crate::rules::catalogue::{FileRole, Fx};
use crate::rules::{Catalogue, Findings};

/// Distinct manifest contents remembered during one check.
pub(super) const MEMO_ENTRIES: usize = 64;

/// Manifest contents already evaluated in this check, with what they gave: copies of one
/// manifest (one per cluster or environment in a repository, say) are parsed and evaluated
/// once. Bounded: past [`MEMO_ENTRIES`] distinct contents, nothing more is kept.
#[derive(Default)]
pub(super) struct Memo {
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
pub(super) struct MemoView {
    seen: HashMap<Vec<u8>, Viewed, BuildHasherDefault<Fx>>,
}

/// A content as one worker saw it: its evaluation and the whole list of findings for the
/// last (mode, uid, gid) that is not the evaluation's own.
type Viewed = (Arc<Evaluated>, Option<((u32, u32, u32), Findings)>);

impl Memo {
    /// An empty memo: certificate thresholds for files named on the command line, whether
    /// those may be certificates or kubeconfigs (`any_kind`), and on a node what to compare
    /// the manifests' certificates with.
    pub(super) fn new(tls: TlsConfig, any_kind: bool, node: Option<OnNode>) -> Memo {
        Memo {
            tls,
            any_kind,
            node,
            ..Memo::default()
        }
    }

    pub(super) fn check(
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
                report.error = Some(e.to_string());
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

#[cfg(test)]
mod tests {
    use super::*;

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
}

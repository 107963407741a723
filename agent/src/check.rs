//! `lockdown-agent check`: one report entry per file, on every core, in path order. What a
//! file's entry holds comes from `node` (manifests with the files they name, the file set,
//! certificates, kubeconfigs) through `io` (bounded reads); copies of one manifest are
//! evaluated once (`memo`); `pool` spreads the work. One bad file never stops the others: it
//! becomes an entry with an `error` naming the problem.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

use crate::config::Config;
use crate::io::list_manifests;
use crate::manifest::ControlPlane;
use crate::node::{OnNode, check_file, file_set_members, node_cluster_ca};
use crate::rules::{Catalogue, Findings};

mod memo;
mod pool;

use memo::{Memo, MemoView};
use pool::in_parallel;

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

    pub(crate) fn find(src: &[u8], cp: &ControlPlane) -> Places {
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
    pub(crate) fn new(path: &Path) -> Self {
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
    let memo = Memo::new(
        cfg.tls,
        !on_node,
        on_node.then(|| OnNode {
            ca: node_ca.clone(),
            live: live.then(|| (cfg.pki_dir.join("ca.crt"), cfg.live.clone())),
        }),
    );
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::parse_manifest;

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
}

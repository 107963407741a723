//! `lockdown-agent check`: one report entry per file, on every core, in path order. What a
//! file's entry holds comes from `node` (manifests with the files they name, the file set,
//! certificates, kubeconfigs) through `io` (bounded reads); copies of one manifest are
//! evaluated once (`memo`); `pool` spreads the work. One bad file never stops the others: it
//! becomes an entry with an `error` naming the problem.

use std::fs;
use std::path::PathBuf;

use serde::Serialize;

use crate::config::Config;
use crate::io::list_manifests;
use crate::node::{FileReport, OnNode, check_file, file_set_members, node_cluster_ca};

mod memo;
mod pool;

use memo::{Memo, MemoView};
use pool::in_parallel;

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

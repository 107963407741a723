//! Opt-in automatic fixing: rewrite a manifest to its hardened form without ever taking the
//! control plane down.
//!
//! - [`plan`] (pure) decides the new bytes: minimal edits, version-guarded, prerequisites
//!   checked, each verified by parsing and evaluating again.
//! - [`write`](mod@write) puts bytes on disk the way the kubelet can never see half of: a backup of the
//!   original outside the manifests directory, a dot-prefixed temp file, fsync, rename, fsync
//!   of the directory; and a journal, so that a gate interrupted by a crash is finished.
//! - [`health`] is the gate: the component's own probes, as the kubelet runs them.
//! - [`fixer`] is the daemon's task that ties them together: modes, pause, quarantine, the
//!   fight guard and the events.

pub mod command;
pub mod edit;
pub mod fixer;
pub mod health;
pub mod plan;
pub mod policy;
pub mod write;

use crate::config::{FixConfig, Mode};
use crate::rules::{Finding, Fix};
use plan::Choice;

/// What the planner should do with a finding in `mode` (the daemon: each rule's own mode;
/// `lockdown-agent fix`: dry-run or enforce for all). Only fixes marked safe unattended
/// are applied, unless the rule is named in `rules` (or in `extra`, from the command line).
pub fn choose(fc: &FixConfig, f: &Finding, mode: Mode, extra: &[String]) -> Choice {
    let guarded = f
        .reason
        .as_deref()
        .is_some_and(|r| r.starts_with(crate::rules::eval::NO_FIX_OFFERED));
    if mode == Mode::Off || (f.fix.is_none() && !guarded) {
        return Choice::Ignore;
    }
    let named = fc.rules.get(&*f.id) == Some(&Mode::Enforce) || extra.iter().any(|e| **e == *f.id);
    if f.fix.is_some() && !f.autofix && !named {
        // The anonymous-auth fix also ends anonymous reads of kube-public/cluster-info,
        // which `kubeadm join` token discovery makes: say so where it is offered.
        let why = if f.fix == Some(Fix::AnonymousHealthOnly) && !fc.keep_cluster_info {
            " (it also stops the anonymous read of the kube-public/cluster-info ConfigMap that `kubeadm join` token discovery makes: join nodes with a discovery file, or set fix.keep_cluster_info (fix --keep-cluster-info) for the form that keeps that one path open)"
        } else {
            ""
        };
        return Choice::Skip(format!(
            "the fix for {} is not marked safe unattended{why}; name the rule in fix.rules with enforce to apply it",
            f.id
        ));
    }
    if f.fix == Some(Fix::AnonymousHealthOnly) && fc.keep_cluster_info {
        return Choice::FixWith(Fix::AnonymousHealthAndDiscovery);
    }
    Choice::Fix
}

#[cfg(test)]
mod tests;

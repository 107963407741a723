//! Opt-in automatic fixing: rewrite a manifest to its hardened form without ever taking the
//! control plane down.
//!
//! - [`plan`] (pure) decides the new bytes: minimal edits, version-guarded, prerequisites
//!   checked, each verified by parsing and evaluating again.
//! - [`write`] puts bytes on disk the way the kubelet can never see half of: a backup of the
//!   original outside the manifests directory, a dot-prefixed temp file, fsync, rename, fsync
//!   of the directory; and a journal, so that a gate interrupted by a crash is finished.
//! - [`health`] is the gate: the component's own probes, as the kubelet runs them.
//! - [`fixer`] is the daemon's task that ties them together: modes, pause, quarantine, the
//!   fight guard and the events.

pub mod edit;
pub mod fixer;
pub mod health;
pub mod plan;
pub mod write;

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::rules::{Finding, Fix};
use plan::Choice;

/// What to do about a fixable finding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Nothing (the default).
    #[default]
    Off,
    /// Report the exact diff a fix would make; write nothing.
    DryRun,
    /// Apply the fix, behind the health gate.
    Enforce,
}

impl Mode {
    /// The name as written in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Off => "off",
            Mode::DryRun => "dry-run",
            Mode::Enforce => "enforce",
        }
    }
}

/// The `fix:` config.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FixConfig {
    /// Mode for every rule.
    pub mode: Mode,
    /// Per-rule modes that take precedence; `enforce` here also allows fixes not marked safe.
    pub rules: BTreeMap<String, Mode>,
    /// Originals kept per manifest.
    pub backups: usize,
    /// Health gate timeout; `None`: derived from the probes.
    pub health_timeout: Option<Duration>,
    /// Fixes of one file allowed within `fight_window` before the agent stops fixing it.
    pub fight_max: u32,
    /// See `fight_max`.
    pub fight_window: Duration,
    /// The anonymous-auth fix keeps anonymous reads of kube-public/cluster-info (`kubeadm
    /// join` token discovery) working.
    pub keep_cluster_info: bool,
}

impl FixConfig {
    /// The mode for a rule.
    pub fn mode_of(&self, rule_id: &str) -> Mode {
        self.rules.get(rule_id).copied().unwrap_or(self.mode)
    }

    /// True when some rule is in enforce mode.
    pub fn enforces(&self) -> bool {
        self.mode == Mode::Enforce || self.rules.values().any(|m| *m == Mode::Enforce)
    }

    /// True when some rule is not off.
    pub fn any(&self) -> bool {
        self.mode != Mode::Off || self.rules.values().any(|m| *m != Mode::Off)
    }

    /// What the planner should do with a finding in `mode` (the daemon: each rule's own mode;
    /// `lockdown-agent fix`: dry-run or enforce for all). Only fixes marked safe unattended
    /// are applied, unless the rule is named in `rules` (or in `extra`, from the command line).
    pub fn choose(&self, f: &Finding, mode: Mode, extra: &[String]) -> Choice {
        let guarded = f
            .reason
            .as_deref()
            .is_some_and(|r| r.starts_with(crate::rules::eval::NO_FIX_OFFERED));
        if mode == Mode::Off || (f.fix.is_none() && !guarded) {
            return Choice::Ignore;
        }
        let named =
            self.rules.get(&*f.id) == Some(&Mode::Enforce) || extra.iter().any(|e| **e == *f.id);
        if f.fix.is_some() && !f.autofix && !named {
            // The anonymous-auth fix also ends anonymous reads of kube-public/cluster-info,
            // which `kubeadm join` token discovery makes: say so where it is offered.
            let why = if f.fix == Some(Fix::AnonymousHealthOnly) && !self.keep_cluster_info {
                " (it also stops the anonymous read of the kube-public/cluster-info ConfigMap that `kubeadm join` token discovery makes: join nodes with a discovery file, or set fix.keep_cluster_info (fix --keep-cluster-info) for the form that keeps that one path open)"
            } else {
                ""
            };
            return Choice::Skip(format!(
                "the fix for {} is not marked safe unattended{why}; name the rule in fix.rules with enforce to apply it",
                f.id
            ));
        }
        if f.fix == Some(Fix::AnonymousHealthOnly) && self.keep_cluster_info {
            return Choice::FixWith(Fix::AnonymousHealthAndDiscovery);
        }
        Choice::Fix
    }
}

#[cfg(test)]
mod tests;

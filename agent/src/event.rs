//! Events: the one serialisable type for everything the agent reports. The spool stores them,
//! the shipper sends them, the collector keeps them. Field names are a contract: change them
//! only with a new `kind`.
//!
//! Only changes make events. A rescan that finds nothing new produces none.

use serde::{Deserialize, Serialize};

use crate::rules::{Finding, Severity, Status};

/// One event, as spooled: who, when, which number, what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Per-agent sequence number: strictly increasing, no gaps except the ranges a
    /// `spool_overflow` event names.
    pub seq: u64,
    /// Node name.
    pub node: String,
    /// When the agent recorded it, RFC 3339 UTC with milliseconds.
    pub time: String,
    /// What happened.
    #[serde(flatten)]
    pub body: EventBody,
}

/// What happened. Serialised with a `kind` tag in snake case (`file_modified`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EventBody {
    /// The agent started and compared the node with its baseline.
    AgentStarted {
        /// Agent version.
        agent_version: String,
        /// sha256 of the effective config.
        config_digest: String,
        /// sha256 of the rule catalogue in force.
        rules_digest: String,
        /// `loaded` when a baseline from an earlier run was compared, `created` on a first run
        /// (no file events then: nothing to compare with).
        baseline: String,
        /// Files and directories tracked.
        files: usize,
    },
    /// The agent is stopping cleanly.
    AgentStopping {
        /// Agent version.
        agent_version: String,
        /// sha256 of the effective config.
        config_digest: String,
        /// sha256 of the rule catalogue in force.
        rules_digest: String,
        /// Why (the signal).
        reason: String,
    },
    /// A new config was loaded on SIGHUP.
    ConfigReloaded {
        /// sha256 of the new effective config.
        config_digest: String,
        /// sha256 of the new rule catalogue.
        rules_digest: String,
    },
    /// A new config was refused on SIGHUP; the old one stays in force.
    ConfigRejected {
        /// The problem, naming the file.
        error: String,
    },
    /// Events may have been missed, so everything was re-read.
    Rescan {
        /// Why: `inotify queue overflow`, `periodic rescan found changes inotify did not
        /// report`, `watch error: ...`.
        reason: String,
        /// Files whose state changed.
        changes: usize,
    },
    /// A tracked file appeared.
    FileCreated {
        /// Path.
        path: String,
        /// Its state.
        after: FileMeta,
        /// Manifests: the whole file as a diff from nothing, sensitive values redacted.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        diff: Option<String>,
    },
    /// A tracked file's content (or symlink target, or type) changed.
    FileModified {
        /// Path.
        path: String,
        /// State before.
        before: FileMeta,
        /// State after.
        after: FileMeta,
        /// Manifests: unified diff, sensitive values redacted.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        diff: Option<String>,
    },
    /// A tracked file went away.
    FileDeleted {
        /// Path.
        path: String,
        /// Its last state.
        before: FileMeta,
    },
    /// Only the mode or ownership of a tracked file changed.
    PermissionDrift {
        /// Path.
        path: String,
        /// State before.
        before: FileMeta,
        /// State after.
        after: FileMeta,
    },
    /// A tracked file cannot be read, or a manifest cannot be parsed. Its open findings stay
    /// open: nothing can be said about them until it parses again.
    FileInvalid {
        /// Path.
        path: String,
        /// The problem.
        error: String,
    },
    /// A rule started failing (or warning) on a file.
    FindingRaised {
        /// Path.
        path: String,
        /// Tells the finding apart from others of its rule in the file (see
        /// [`crate::scan::finding_key`]); the collector keeps open findings by it.
        #[serde(default)]
        key: String,
        /// The finding.
        finding: FindingRecord,
    },
    /// A rule that failed (or warned) no longer does, or its file went away.
    FindingResolved {
        /// Path.
        path: String,
        /// As in `finding_raised`.
        #[serde(default)]
        key: String,
        /// The finding as it was when open.
        finding: FindingRecord,
    },
    /// A fix was planned: the exact diff it makes (dry-run: all that happens).
    FixPlanned {
        /// Path.
        path: String,
        /// `dry-run` or `enforce`.
        mode: String,
        /// Rules the fix addresses, in order.
        rules: Vec<String>,
        /// Unified diff, sensitive values redacted.
        diff: String,
    },
    /// A fix was written; the health gate starts.
    FixApplied {
        /// Path.
        path: String,
        /// Rules fixed.
        rules: Vec<String>,
        /// Unified diff, sensitive values redacted.
        diff: String,
        /// Where the original is kept.
        backup: String,
        /// sha256 of the original.
        before_sha256: String,
        /// sha256 of the new file.
        after_sha256: String,
        /// Files created for the fix (an AuthenticationConfiguration).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        created: Vec<String>,
    },
    /// The component came back healthy after a fix.
    FixVerified {
        /// Path.
        path: String,
        /// Rules fixed.
        rules: Vec<String>,
        /// Unified diff, sensitive values redacted.
        diff: String,
        /// How the gate decided.
        health: String,
        /// The last probe attempts.
        attempts: Vec<Attempt>,
    },
    /// The component did not come back healthy: the original was restored.
    FixRolledBack {
        /// Path.
        path: String,
        /// Rules whose fix was undone.
        rules: Vec<String>,
        /// The diff that was undone, sensitive values redacted.
        diff: String,
        /// Why the gate failed.
        reason: String,
        /// The probe attempts that show it.
        attempts: Vec<Attempt>,
        /// Whether the component was healthy again on the original.
        restored_healthy: bool,
        /// How the gate on the original decided.
        restored_health: String,
    },
    /// A fix was not made, and why (not safe unattended, version guard, prerequisite,
    /// paused, symlink, ...).
    FixSkipped {
        /// Path.
        path: String,
        /// The rule, when one rule is concerned.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rule_id: Option<String>,
        /// Why.
        reason: String,
        /// The diff it would have made, when there is one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        diff: Option<String>,
    },
    /// The agent stopped fixing this file: a fix was rolled back (until someone else changes
    /// the file), or the same drift keeps coming back (a fight).
    FixQuarantined {
        /// Path.
        path: String,
        /// Rules concerned.
        rules: Vec<String>,
        /// Why.
        reason: String,
        /// The diff concerned.
        diff: String,
    },
    /// The spool was full: these events were dropped before they could be shipped.
    SpoolOverflow {
        /// How many, in this commit: exactly the sequence numbers `first_seq..=last_seq`.
        dropped: u64,
        /// First dropped sequence number.
        first_seq: u64,
        /// Last dropped sequence number.
        last_seq: u64,
        /// Every event this spool ever dropped, this commit's included (kept in the spool's
        /// meta table, which nothing evicts).
        #[serde(default)]
        total_dropped: u64,
    },
}

impl EventBody {
    /// The `kind` tag.
    pub fn kind(&self) -> &'static str {
        match self {
            EventBody::AgentStarted { .. } => "agent_started",
            EventBody::AgentStopping { .. } => "agent_stopping",
            EventBody::ConfigReloaded { .. } => "config_reloaded",
            EventBody::ConfigRejected { .. } => "config_rejected",
            EventBody::Rescan { .. } => "rescan",
            EventBody::FileCreated { .. } => "file_created",
            EventBody::FileModified { .. } => "file_modified",
            EventBody::FileDeleted { .. } => "file_deleted",
            EventBody::PermissionDrift { .. } => "permission_drift",
            EventBody::FileInvalid { .. } => "file_invalid",
            EventBody::FindingRaised { .. } => "finding_raised",
            EventBody::FindingResolved { .. } => "finding_resolved",
            EventBody::FixPlanned { .. } => "fix_planned",
            EventBody::FixApplied { .. } => "fix_applied",
            EventBody::FixVerified { .. } => "fix_verified",
            EventBody::FixRolledBack { .. } => "fix_rolled_back",
            EventBody::FixSkipped { .. } => "fix_skipped",
            EventBody::FixQuarantined { .. } => "fix_quarantined",
            EventBody::SpoolOverflow { .. } => "spool_overflow",
        }
    }

    /// True for what a scan derives from the files and the baseline (a failed commit's
    /// retry finds these again); false for what only happened once (lifecycle, config and
    /// fix events).
    pub fn from_scan(&self) -> bool {
        // Every kind named, no catch-all: a new kind must be sorted here.
        match self {
            EventBody::Rescan { .. }
            | EventBody::FileCreated { .. }
            | EventBody::FileModified { .. }
            | EventBody::FileDeleted { .. }
            | EventBody::PermissionDrift { .. }
            | EventBody::FileInvalid { .. }
            | EventBody::FindingRaised { .. }
            | EventBody::FindingResolved { .. } => true,
            EventBody::AgentStarted { .. }
            | EventBody::AgentStopping { .. }
            | EventBody::ConfigReloaded { .. }
            | EventBody::ConfigRejected { .. }
            | EventBody::FixPlanned { .. }
            | EventBody::FixApplied { .. }
            | EventBody::FixVerified { .. }
            | EventBody::FixRolledBack { .. }
            | EventBody::FixSkipped { .. }
            | EventBody::FixQuarantined { .. }
            | EventBody::SpoolOverflow { .. } => false,
        }
    }

    /// The file the event is about, if any.
    pub fn path(&self) -> Option<&str> {
        match self {
            EventBody::FileCreated { path, .. }
            | EventBody::FileModified { path, .. }
            | EventBody::FileDeleted { path, .. }
            | EventBody::PermissionDrift { path, .. }
            | EventBody::FileInvalid { path, .. }
            | EventBody::FindingRaised { path, .. }
            | EventBody::FindingResolved { path, .. }
            | EventBody::FixPlanned { path, .. }
            | EventBody::FixApplied { path, .. }
            | EventBody::FixVerified { path, .. }
            | EventBody::FixRolledBack { path, .. }
            | EventBody::FixSkipped { path, .. }
            | EventBody::FixQuarantined { path, .. } => Some(path),
            EventBody::AgentStarted { .. }
            | EventBody::AgentStopping { .. }
            | EventBody::ConfigReloaded { .. }
            | EventBody::ConfigRejected { .. }
            | EventBody::Rescan { .. }
            | EventBody::SpoolOverflow { .. } => None,
        }
    }
}

/// The integrity facts of a file, directory or symlink (followed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileMeta {
    /// `file`, `directory` or `other` (FIFO, socket, device), of the symlink's target.
    pub kind: String,
    /// sha256 of the content, regular files only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Size in bytes.
    pub size: u64,
    /// Permission bits in octal, `0600`.
    pub mode: String,
    /// Owner uid.
    pub uid: u32,
    /// Group gid.
    pub gid: u32,
    /// Owner name, when the user database has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Group name, when the group database has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Where the path points, when it is a symlink.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub symlink: Option<String>,
}

impl FileMeta {
    /// True when the content, type or symlink target differ (not only mode or owner).
    pub fn content_differs(&self, other: &FileMeta) -> bool {
        self.kind != other.kind
            || self.sha256 != other.sha256
            || self.size != other.size
            || self.symlink != other.symlink
    }
}

/// A finding as events carry it: the open (fail or warn) verdict of one rule on one file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FindingRecord {
    /// Rule id.
    pub rule_id: String,
    /// CIS id, when CIS has the check.
    pub cis: Option<String>,
    /// Title.
    pub title: String,
    /// Severity.
    pub severity: Severity,
    /// fail or warn.
    pub status: Status,
    /// Component, when the file is a manifest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub component: Option<String>,
    /// Flag concerned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flag: Option<String>,
    /// What was seen (sensitive values redacted).
    pub observed: Option<String>,
    /// What the rule wants.
    pub expected: Option<String>,
    /// What to do.
    pub remediation: String,
}

impl FindingRecord {
    /// The record of an open finding; `None` for pass and skip.
    pub fn open(f: &Finding, component: Option<&str>, redact: bool) -> Option<Self> {
        if !matches!(f.status, Status::Fail | Status::Warn) {
            return None;
        }
        Some(FindingRecord {
            rule_id: f.id.to_string(),
            cis: f.cis.as_deref().map(str::to_string),
            title: f.title.to_string(),
            severity: f.severity,
            status: f.status,
            component: component.map(str::to_string),
            flag: f.flag.clone(),
            observed: if redact {
                f.observed
                    .as_ref()
                    .map(|_| crate::redact::REDACTED.to_string())
            } else {
                f.observed.clone()
            },
            expected: f.expected.clone(),
            remediation: f.remediation.to_string(),
        })
    }
}

/// Now, as the events' time format.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

/// One probe attempt.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Attempt {
    /// Milliseconds since the gate started.
    pub at_ms: u64,
    /// Which probe.
    pub probe: String,
    /// `200`, `401`, or the connection error.
    pub result: String,
    /// Whether it counts as a success.
    pub ok: bool,
}

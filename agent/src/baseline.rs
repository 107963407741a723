//! The baseline: what the agent last recorded about each tracked path, and the pure
//! comparison that turns an old and a new state into events. The spool persists the baseline
//! in the same transaction as the events that describe its changes, so after a crash the two
//! agree: a change is either recorded with its events or found again on restart.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::event::{EventBody, FileMeta, FindingRecord};
use crate::redact::unified_diff;

/// What the agent knows about one tracked path.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathState {
    /// Integrity facts; `None` when the path exists but could not be observed.
    pub meta: Option<FileMeta>,
    /// Why the file could not be read or parsed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Open (fail or warn) findings by rule id.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub findings: BTreeMap<String, FindingRecord>,
    /// Pod manifests: the text with secrets redacted ([`crate::redact::manifest_text`]), to
    /// diff against; `None` for every other file, whose content never leaves the node. (Stored
    /// under a new key: texts written by the line-based redactor of earlier versions are not
    /// trusted, and are dropped when an old baseline is read.)
    #[serde(
        default,
        rename = "redacted_text",
        skip_serializing_if = "Option::is_none"
    )]
    pub text: Option<String>,
    /// Manifests: the component and its version, as last parsed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub component: Option<(String, Option<String>)>,
}

/// The events that take a path from `old` to `new` (`None`: not tracked or gone). On the first
/// run (`first_run`) there is nothing to compare with, so appearing files are not reported as
/// created; their findings and errors are.
pub fn changes(
    path: &str,
    old: Option<&PathState>,
    new: Option<&PathState>,
    first_run: bool,
) -> Vec<EventBody> {
    let mut out = Vec::new();
    let empty = PathState::default();
    let (o, n) = (old.unwrap_or(&empty), new.unwrap_or(&empty));
    match (&o.meta, &n.meta, new.is_some()) {
        (Some(before), _, false) => out.push(EventBody::FileDeleted {
            path: path.into(),
            before: before.clone(),
        }),
        (None, Some(after), true) if old.is_none() && !first_run => {
            out.push(EventBody::FileCreated {
                path: path.into(),
                after: after.clone(),
                diff: n.text.as_deref().map(|t| unified_diff(path, None, Some(t))),
            })
        }
        (Some(before), Some(after), true) if before.content_differs(after) => {
            let diff = match (&o.text, &n.text) {
                (a, b) if a == b => None,
                (a, b) => Some(unified_diff(path, a.as_deref(), b.as_deref())),
            };
            out.push(EventBody::FileModified {
                path: path.into(),
                before: before.clone(),
                after: after.clone(),
                diff,
            })
        }
        (Some(before), Some(after), true) if before != after => {
            out.push(EventBody::PermissionDrift {
                path: path.into(),
                before: before.clone(),
                after: after.clone(),
            })
        }
        _ => {}
    }
    if let Some(error) = &n.error
        && o.error.as_ref() != Some(error)
    {
        out.push(EventBody::FileInvalid {
            path: path.into(),
            error: error.clone(),
        });
    }
    for (id, f) in &n.findings {
        if o.findings.get(id).map(|g| g.status) != Some(f.status) {
            out.push(EventBody::FindingRaised {
                path: path.into(),
                key: id.clone(),
                finding: f.clone(),
            });
        }
    }
    for (id, f) in &o.findings {
        if !n.findings.contains_key(id) {
            out.push(EventBody::FindingResolved {
                path: path.into(),
                key: id.clone(),
                finding: f.clone(),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::{Severity, Status};

    fn meta(sha: &str, mode: &str) -> FileMeta {
        FileMeta {
            kind: "file".into(),
            sha256: Some(sha.into()),
            size: 1,
            mode: mode.into(),
            uid: 0,
            gid: 0,
            owner: Some("root".into()),
            group: Some("root".into()),
            symlink: None,
        }
    }

    fn finding(id: &str, status: Status) -> FindingRecord {
        FindingRecord {
            rule_id: id.into(),
            cis: None,
            title: "t".into(),
            severity: Severity::High,
            status,
            component: None,
            flag: None,
            observed: None,
            expected: None,
            remediation: "r".into(),
        }
    }

    fn state(sha: &str, mode: &str, findings: &[(&str, Status)]) -> PathState {
        PathState {
            meta: Some(meta(sha, mode)),
            error: None,
            findings: findings
                .iter()
                .map(|(id, s)| (id.to_string(), finding(id, *s)))
                .collect(),
            text: Some(format!("{sha}\n")),
            component: None,
        }
    }

    fn kinds(events: &[EventBody]) -> Vec<&'static str> {
        events.iter().map(EventBody::kind).collect()
    }

    #[test]
    fn same_state_gives_nothing() {
        let s = state("a", "0600", &[("x", Status::Fail)]);
        assert!(changes("/p", Some(&s), Some(&s), false).is_empty());
    }

    #[test]
    fn content_change_gives_a_diff_and_finding_changes() {
        let a = state("a", "0600", &[("x", Status::Fail), ("y", Status::Warn)]);
        let b = state("b", "0600", &[("y", Status::Fail), ("z", Status::Fail)]);
        let ev = changes("/p", Some(&a), Some(&b), false);
        assert_eq!(
            kinds(&ev),
            [
                "file_modified",
                "finding_raised",
                "finding_raised",
                "finding_resolved"
            ]
        );
        let EventBody::FileModified { diff: Some(d), .. } = &ev[0] else {
            panic!("{ev:?}")
        };
        assert!(d.contains("-a\n+b\n"), "{d}");
    }

    #[test]
    fn mode_only_is_permission_drift() {
        let a = state("a", "0600", &[]);
        let b = state("a", "0644", &[]);
        assert_eq!(
            kinds(&changes("/p", Some(&a), Some(&b), false)),
            ["permission_drift"]
        );
    }

    #[test]
    fn created_is_silent_on_first_run_but_findings_are_not() {
        let b = state("a", "0600", &[("x", Status::Fail)]);
        assert_eq!(
            kinds(&changes("/p", None, Some(&b), true)),
            ["finding_raised"]
        );
        assert_eq!(
            kinds(&changes("/p", None, Some(&b), false)),
            ["file_created", "finding_raised"]
        );
    }

    #[test]
    fn deleted_resolves_its_findings() {
        let a = state("a", "0600", &[("x", Status::Fail)]);
        assert_eq!(
            kinds(&changes("/p", Some(&a), None, false)),
            ["file_deleted", "finding_resolved"]
        );
    }

    #[test]
    fn a_new_error_is_reported_once() {
        let a = state("a", "0600", &[]);
        let mut b = state("b", "0600", &[]);
        b.error = Some("yaml: bad".into());
        assert_eq!(
            kinds(&changes("/p", Some(&a), Some(&b), false)),
            ["file_modified", "file_invalid"]
        );
        assert!(changes("/p", Some(&b), Some(&b), false).is_empty());
    }
}

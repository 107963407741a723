//! Committing: events and the baseline they take the node to, spooled in one transaction.
//!
//! The baseline in memory advances only with a commit that succeeded. When the spool refuses
//! one (disk full), what a rescan would find again is dropped (the unchanged baseline makes
//! the rescan report it), what it would not (lifecycle, config and fix events) is held and
//! spooled first at the next commit, and a full rescan is asked for. No tokio here: the
//! loop calls it, the tests drive it directly.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::baseline::PathState;
use crate::event::{Event, EventBody};
use crate::ship::NodeSummary;
use crate::spool::{BaselineWrite, Spool, SpoolError};
use crate::status::LastEvent;

/// How long to wait before retrying after the spool refused a commit.
pub const COMMIT_RETRY: Duration = Duration::from_secs(1);

/// Where committed events go: the spool, or a test's stand-in that can fail at will.
pub trait Log {
    /// Appends `bodies` and applies `writes` in one durable transaction.
    fn commit(
        &mut self,
        node: &str,
        bodies: Vec<EventBody>,
        writes: &[BaselineWrite],
    ) -> Result<Vec<Event>, SpoolError>;
}

impl Log for Spool {
    fn commit(
        &mut self,
        node: &str,
        bodies: Vec<EventBody>,
        writes: &[BaselineWrite],
    ) -> Result<Vec<Event>, SpoolError> {
        Spool::commit(self, node, bodies, writes)
    }
}

/// The committed state: the baseline, and what a failed commit left to do.
#[derive(Debug, Default)]
pub struct Committer {
    /// Each tracked path's state as last committed.
    pub baseline: BTreeMap<String, PathState>,
    /// Events a failed commit could not spool and no rescan would find again: spooled first
    /// at the next commit.
    held: Vec<EventBody>,
    /// Fixer events received and not yet committed (held ones included).
    fix_pending: u64,
    /// The spool refused a commit: rescan everything at this time.
    pub retry_at: Option<Instant>,
    /// The newest committed event.
    pub last_event: Option<LastEvent>,
}

/// What a successful commit did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Committed {
    /// Events stored (numbered).
    pub events: usize,
    /// Fixer events now durable (those held before included).
    pub fix_events: u64,
}

impl Committer {
    /// A committer starting from the spooled baseline.
    pub fn new(baseline: BTreeMap<String, PathState>) -> Self {
        Committer {
            baseline,
            ..Default::default()
        }
    }

    /// Counts `n` fixer events about to be committed, so that [`Committed::fix_events`]
    /// says when they are durable.
    pub fn from_fixer(&mut self, n: usize) {
        self.fix_pending += n as u64;
    }

    /// Commits `bodies` and `writes` (held events first). `None` when the log refused: the
    /// baseline is unchanged, the events no rescan finds again are held and
    /// [`Committer::retry_at`] is set.
    pub fn commit(
        &mut self,
        log: &mut impl Log,
        node: &str,
        mut bodies: Vec<EventBody>,
        writes: Vec<BaselineWrite>,
    ) -> Option<Committed> {
        if !self.held.is_empty() {
            let mut all = std::mem::take(&mut self.held);
            all.append(&mut bodies);
            bodies = all;
        }
        // What the retry's rescan would not report again, kept in case this commit fails.
        let keep: Vec<EventBody> = bodies.iter().filter(|b| !b.from_scan()).cloned().collect();
        match log.commit(node, bodies, &writes) {
            Ok(events) => {
                for e in &events {
                    tracing::info!(
                        seq = e.seq,
                        kind = e.body.kind(),
                        path = e.body.path(),
                        "event"
                    );
                }
                if let Some(e) = events.last() {
                    self.last_event = Some(LastEvent {
                        seq: e.seq,
                        kind: e.body.kind().into(),
                        time: e.time.clone(),
                        path: e.body.path().map(str::to_string),
                    });
                }
                for (path, state) in writes {
                    match state {
                        Some(s) => self.baseline.insert(path, s),
                        None => self.baseline.remove(&path),
                    };
                }
                Some(Committed {
                    events: events.len(),
                    fix_events: std::mem::take(&mut self.fix_pending),
                })
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot spool events; retrying with a full rescan");
                self.held = keep;
                self.retry_at = Some(Instant::now() + COMMIT_RETRY);
                None
            }
        }
    }

    /// Component versions and open findings, for the collector; `as_of_seq`: the spool's last
    /// sequence number, which the baseline matches. The caller says which checks apply.
    pub fn summary(&self, as_of_seq: u64) -> NodeSummary {
        let mut s = NodeSummary {
            as_of_seq,
            ..NodeSummary::default()
        };
        for (path, state) in &self.baseline {
            s.findings.extend(
                (state.findings.iter()).map(|(key, f)| crate::ship::open_finding(path, key, f)),
            );
            if let Some((component, version)) = &state.component {
                s.component_versions.insert(
                    component.clone(),
                    version.clone().unwrap_or_else(|| "unknown".into()),
                );
            }
            for f in state.findings.values() {
                *s.open_findings
                    .entry(f.severity.as_str().to_string())
                    .or_default() += 1;
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A log that refuses while `full`, and numbers what it takes.
    #[derive(Default)]
    struct Disk {
        full: bool,
        taken: Vec<Event>,
    }

    impl Log for Disk {
        fn commit(
            &mut self,
            node: &str,
            bodies: Vec<EventBody>,
            _: &[BaselineWrite],
        ) -> Result<Vec<Event>, SpoolError> {
            if self.full {
                return Err(SpoolError::Db {
                    dir: "/state".into(),
                    source: rusqlite::Error::SqliteFailure(
                        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
                        None,
                    ),
                });
            }
            let start = self.taken.len() as u64;
            let events: Vec<Event> = bodies
                .into_iter()
                .enumerate()
                .map(|(i, body)| Event {
                    seq: start + i as u64 + 1,
                    node: node.into(),
                    time: "2026-12-02T00:00:00.000Z".into(),
                    body,
                })
                .collect();
            self.taken.extend(events.iter().cloned());
            Ok(events)
        }
    }

    fn reloaded() -> EventBody {
        EventBody::ConfigReloaded {
            config_digest: "c".into(),
            rules_digest: "r".into(),
        }
    }

    fn rescan() -> EventBody {
        EventBody::Rescan {
            reason: "retry".into(),
            changes: 1,
        }
    }

    #[test]
    fn a_refused_commit_keeps_the_baseline_and_holds_only_what_no_rescan_finds_again() {
        let mut c = Committer::new(BTreeMap::from([("/m/a.yaml".into(), PathState::default())]));
        let mut disk = Disk {
            full: true,
            ..Default::default()
        };
        c.from_fixer(1);
        let writes = vec![("/m/a.yaml".to_string(), None)];
        assert_eq!(
            c.commit(&mut disk, "n", vec![reloaded(), rescan()], writes),
            None
        );
        assert!(c.baseline.contains_key("/m/a.yaml"), "baseline advanced");
        assert!(c.retry_at.is_some());
        // The retry's rescan finds the change again; the reload is held and goes first.
        disk.full = false;
        let writes = vec![("/m/a.yaml".to_string(), None)];
        let done = c.commit(&mut disk, "n", vec![rescan()], writes);
        assert_eq!(
            done,
            Some(Committed {
                events: 2,
                fix_events: 1
            })
        );
        let kinds: Vec<&str> = disk.taken.iter().map(|e| e.body.kind()).collect();
        assert_eq!(kinds, ["config_reloaded", "rescan"]);
        assert!(c.baseline.is_empty());
        assert_eq!(c.last_event.as_ref().map(|e| e.seq), Some(2));
    }
}

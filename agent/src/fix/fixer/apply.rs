//! Applying a plan: the write (backup, journal, atomic replace), the health gate on the new
//! instance, the verdict, and the rollback with its quarantine; and recovery of a fix a
//! restart interrupted between its write and its verdict. The journal makes every step
//! finishable after a crash.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::{Emit, Fixer, Outcome};
use crate::event::EventBody;
use crate::fix::health::{self, Attempt};
use crate::fix::plan::Plan;
use crate::fix::policy::Quarantine;
use crate::fix::write::{self, Journal, WriteError};
use crate::integrity::sha256_hex;
use crate::io::key;
use crate::rules::parse_manifest;

impl Fixer {
    /// Removes the journal once the verdict's events are durable (in the daemon: committed
    /// to the spool by the loop). A crash before that finishes the verdict again at the next
    /// start, so its events are not lost.
    async fn close_journal(&mut self) {
        if let Some((sent, committed)) = &mut self.spooled {
            let target = sent.load(Ordering::SeqCst);
            if committed.wait_for(|c| *c >= target).await.is_err() {
                return; // the loop is gone: keep the journal for the next start
            }
        }
        if let Err(e) = write::clear_journal(&self.cfg.state_dir) {
            tracing::error!(error = %e, "cannot clear the fix journal");
        }
    }

    /// Applies a plan to `path` (which holds `bytes`) behind the health gate, rolling back on
    /// failure.
    pub async fn apply(
        &mut self,
        path: &Path,
        bytes: &[u8],
        plan: &Plan,
        diff: String,
        emit: Emit<'_>,
    ) -> Outcome {
        let k = key(path);
        let rules: Vec<String> = plan.steps.iter().map(|s| s.rule_id.clone()).collect();
        let gate = self.gate_plan(bytes, plan.text.as_bytes());
        let gate = match gate {
            Ok(g) => g,
            Err(why) => {
                self.skip_once(emit, &k, None, format!("not applied: {why}"), Some(diff));
                return Outcome::Skipped;
            }
        };
        let before = sha256_hex(bytes);
        let after_bytes = plan.text.as_bytes().to_vec();
        let after = sha256_hex(&after_bytes);
        let mut journal = Journal {
            path: path.to_path_buf(),
            backup: PathBuf::new(),
            original: String::from_utf8_lossy(bytes).into_owned(),
            before: before.clone(),
            after: after.clone(),
            created: Vec::new(),
            rules: rules.clone(),
            diff: diff.clone(),
            phase: "gate".into(),
        };
        let state_dir = self.cfg.state_dir.clone();
        let keep = self.fix_cfg().backups;
        let own = Arc::clone(&self.own);
        let files = plan.files.clone();
        let original = bytes.to_vec();
        let k2 = k.clone();
        let written = tokio::task::spawn_blocking(move || -> Result<Journal, WriteError> {
            for f in &files {
                own.expect(&key(&f.host_path), &sha256_hex(f.contents.as_bytes()));
                if write::create(&f.host_path, f.contents.as_bytes())? {
                    journal
                        .created
                        .push((f.host_path.clone(), sha256_hex(f.contents.as_bytes())));
                }
            }
            let undo = |j: &Journal| {
                for (p, _) in &j.created {
                    let _ = std::fs::remove_file(p);
                }
            };
            let result = (|| {
                // The backup is written first (a full disk stops here) and made durable last;
                // the journal, durable before the write, holds the original meanwhile.
                journal.backup = write::backup(&state_dir, &journal.path, &original, keep, false)?;
                write::save_journal(&state_dir, &journal)?;
                own.expect(&k2, &journal.after);
                write::replace(&journal.path, &after_bytes, &journal.before)
            })();
            if let Err(e) = result {
                own.forget(&k2);
                undo(&journal);
                let _ = write::clear_journal(&state_dir);
                return Err(e);
            }
            if let Err(e) = write::sync(&journal.backup) {
                tracing::error!(error = %e, "the backup is not durable; the journal keeps the original until the verdict");
            }
            Ok(journal)
        })
        .await
        .expect("the write task does not panic");
        let journal = match written {
            Ok(j) => j,
            Err(e) => {
                let mut why = format!("not applied: {e}");
                if why.contains("Read-only file system") {
                    // Under systemd, ReadWritePaths= binds only what existed at start: a
                    // manifests directory made later (kubeadm init after the agent) stays
                    // read-only to this process until it restarts.
                    why.push_str("; if the manifests directory was created after the agent started, restart the agent (systemctl restart lockdown-agent) so that the enforce drop-in's write access applies to it");
                }
                self.skip_once(emit, &k, None, why, Some(diff));
                return Outcome::Skipped;
            }
        };
        tracing::warn!(path = %k, rules = ?rules, "fix applied; waiting for the component to be healthy");
        emit(EventBody::FixApplied {
            path: k.clone(),
            rules: rules.clone(),
            diff: diff.clone(),
            backup: journal.backup.display().to_string(),
            before_sha256: before,
            after_sha256: after,
            created: journal
                .created
                .iter()
                .map(|(p, _)| p.display().to_string())
                .collect(),
        });
        self.gate(journal, gate, emit).await
    }

    /// The gate for `new` replacing `old`: the new manifest's probes, crediting only the
    /// instance that runs the new flags.
    fn gate_plan(&self, old: &[u8], new: &[u8]) -> Result<health::GatePlan, String> {
        let m = parse_manifest(self.cat(), new).map_err(|e| e.to_string())?;
        let cp = m.control_plane.clone().ok_or("no component")?;
        let mut g = health::plan(&m, &cp, self.fix_cfg().health_timeout)?;
        g.instance = parse_manifest(self.cat(), old)
            .ok()
            .and_then(|m| m.control_plane)
            .and_then(|old| health::Instance::between(&old, &cp));
        Ok(g)
    }

    /// Resolves when the agent is stopping (never outside the daemon).
    async fn stopped(&self) {
        match self.stopping.clone() {
            Some(mut s) => {
                let _ = s.wait_for(|stop| *stop).await;
            }
            None => std::future::pending().await,
        }
    }

    /// Whether the agent is stopping.
    fn is_stopping(&self) -> bool {
        self.stopping.as_ref().is_some_and(|s| *s.borrow())
    }

    /// Runs the gate for a written fix and decides.
    async fn gate(&mut self, journal: Journal, gate: health::GatePlan, emit: Emit<'_>) -> Outcome {
        let verdict = tokio::select! {
            v = health::run(&gate) => v,
            () = self.stopped() => health::Verdict {
                healthy: false,
                summary: "the agent was stopped before the health gate finished; rolled back rather than leave an unverified fix in place".into(),
                attempts: Vec::new(),
            },
        };
        let k = key(&journal.path);
        let now_there = std::fs::read(&journal.path).map(|b| sha256_hex(&b));
        if verdict.healthy && now_there.as_ref().ok() != Some(&journal.after) {
            // Another writer replaced the file while the gate ran: what answered healthy may
            // not be our fix, so do not claim it; the scan reports the new content.
            self.own.forget(&k);
            tracing::warn!(path = %k, "the file was replaced during the health gate; not reporting the fix verified");
            emit(unfinished(
                k,
                "not verified: the file was replaced by another writer during the health gate; what runs now is theirs",
                &journal,
            ));
            self.close_journal().await;
            return Outcome::Skipped;
        }
        if verdict.healthy {
            tracing::info!(path = %k, "fix verified healthy");
            emit(EventBody::FixVerified {
                path: k,
                rules: journal.rules.clone(),
                diff: journal.diff.clone(),
                health: verdict.summary,
                attempts: verdict.attempts,
            });
            self.close_journal().await;
            return Outcome::Verified;
        }
        self.rollback(journal, verdict.summary, verdict.attempts, emit)
            .await
    }

    /// Restores the original, waits for health on it, quarantines the fix.
    async fn rollback(
        &mut self,
        mut journal: Journal,
        reason: String,
        attempts: Vec<Attempt>,
        emit: Emit<'_>,
    ) -> Outcome {
        let k = key(&journal.path);
        tracing::error!(path = %k, %reason, "fix failed the health gate; rolling back");
        journal.phase = "rollback".into();
        if let Err(e) = write::save_journal(&self.cfg.state_dir, &journal) {
            tracing::error!(error = %e, "cannot record the rollback in the journal");
        }
        let original = journal.original.clone().into_bytes();
        if sha256_hex(&original) != journal.before {
            tracing::error!("the journal's original does not match its sha256");
            emit(unfinished(
                k,
                format!(
                    "ROLLBACK NOT DONE: the journal's copy of the original is damaged; restore the file from {} by hand",
                    journal.backup.display()
                ),
                &journal,
            ));
            return Outcome::Skipped;
        }
        self.own.expect(&k, &journal.before);
        match write::replace(&journal.path, &original, &journal.after) {
            Ok(()) => {}
            Err(WriteError::Changed(_)) => {
                self.own.forget(&k);
                emit(unfinished(
                    k,
                    "not rolled back: the file was changed by someone else during the health gate",
                    &journal,
                ));
                self.close_journal().await;
                return Outcome::Skipped;
            }
            Err(e) => {
                self.own.forget(&k);
                emit(unfinished(
                    k,
                    format!("ROLLBACK FAILED: {e}; the agent retries at its next start"),
                    &journal,
                ));
                return Outcome::Skipped;
            }
        }
        self.finish_rollback(journal, reason, attempts, original, emit)
            .await
    }

    async fn finish_rollback(
        &mut self,
        journal: Journal,
        reason: String,
        attempts: Vec<Attempt>,
        original: Vec<u8>,
        emit: Emit<'_>,
    ) -> Outcome {
        let k = key(&journal.path);
        for (p, sha) in &journal.created {
            if std::fs::read(p).is_ok_and(|b| sha256_hex(&b) == *sha) {
                let _ = std::fs::remove_file(p);
                let _ = write::sync_dir(p);
            }
        }
        let restored = match parse_manifest(self.cat(), &original)
            .map_err(|e| e.to_string())
            .and_then(|m| {
                let cp = m.control_plane.clone().ok_or("no component")?;
                health::plan(&m, &cp, self.fix_cfg().health_timeout)
            }) {
            Ok(_) if self.is_stopping() => health::Verdict {
                healthy: false,
                summary: "not checked: the agent is stopping".into(),
                attempts: Vec::new(),
            },
            Ok(g) => health::run(&g).await,
            Err(why) => health::Verdict {
                healthy: false,
                summary: format!("cannot check the original: {why}"),
                attempts: Vec::new(),
            },
        };
        emit(EventBody::FixRolledBack {
            path: k.clone(),
            rules: journal.rules.clone(),
            diff: journal.diff.clone(),
            reason: reason.clone(),
            attempts,
            restored_healthy: restored.healthy,
            restored_health: restored.summary,
        });
        self.quarantine.insert(
            k.clone(),
            Quarantine {
                sha256: journal.before.clone(),
                rules: journal.rules.clone(),
                reason: reason.clone(),
            },
        );
        self.save_quarantine();
        emit(EventBody::FixQuarantined {
            path: k,
            rules: journal.rules.clone(),
            reason: format!(
                "rolled back ({reason}); not tried again until someone else changes the file"
            ),
            diff: journal.diff.clone(),
        });
        self.close_journal().await;
        Outcome::RolledBack
    }

    /// Finishes a fix an earlier run left between its write and its verdict.
    pub async fn recover(&mut self, emit: Emit<'_>) -> Outcome {
        write::remove_stale_temps(&self.cfg.manifests_dir);
        let journal = match write::load_journal(&self.cfg.state_dir) {
            Ok(Some(j)) => j,
            Ok(None) => return Outcome::Nothing,
            Err(e) => {
                tracing::error!(error = %e, "unreadable fix journal; an interrupted fix may need a look");
                return Outcome::Nothing;
            }
        };
        let k = key(&journal.path);
        let current = std::fs::read(&journal.path).ok();
        let current_sha = current.as_deref().map(sha256_hex);
        tracing::warn!(path = %k, phase = %journal.phase, "finishing a fix interrupted by a restart");
        let interrupted = "the agent stopped before the verdict".to_string();
        if current_sha.as_deref() == Some(journal.after.as_str()) {
            if journal.phase == "rollback" {
                return self.rollback(journal, interrupted, Vec::new(), emit).await;
            }
            let gate = self.gate_plan(
                journal.original.as_bytes(),
                current.as_deref().unwrap_or_default(),
            );
            match gate {
                Ok(g) => self.gate(journal, g, emit).await,
                Err(why) => self.rollback(journal, why, Vec::new(), emit).await,
            }
        } else if current_sha.as_deref() == Some(journal.before.as_str()) {
            if journal.phase == "rollback" {
                let original = current.unwrap_or_default();
                return self
                    .finish_rollback(journal, interrupted, Vec::new(), original, emit)
                    .await;
            }
            // The write never landed.
            for (p, sha) in &journal.created {
                if std::fs::read(p).is_ok_and(|b| sha256_hex(&b) == *sha) {
                    let _ = std::fs::remove_file(p);
                }
            }
            self.close_journal().await;
            Outcome::Nothing
        } else {
            emit(unfinished(
                k,
                "an interrupted fix was not finished: the file was changed by someone else meanwhile",
                &journal,
            ));
            self.close_journal().await;
            Outcome::Skipped
        }
    }
}

/// A fix that could not be finished (rollback not possible, file changed meanwhile), with
/// the diff concerned.
fn unfinished(path: String, reason: impl Into<String>, journal: &Journal) -> EventBody {
    EventBody::FixSkipped {
        path,
        rule_id: None,
        reason: reason.into(),
        diff: Some(journal.diff.clone()),
    }
}

//! The fixer: plans, applies, gates and rolls back, one manifest at a time (two components are
//! never restarted at once). The daemon runs it as a task fed with the manifests whose
//! findings may need fixing; `lockdown-agent fix --apply` drives the same code once.
//!
//! It keeps its policies' state (`policy`: own writes, quarantine, fight guard, pause) and
//! applies them: a quarantined or stopped file is not fixed, and what a pause deferred is
//! fixed when the pause ends.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use super::health::{self, Attempt};
use super::plan::{self, Plan};
use super::policy::{
    self, FIGHTS_FILE, Fights, OwnWrites, QUARANTINE_FILE, Quarantine, load_fights,
    load_quarantine, paused, unix_now,
};
use super::write::{self, Journal, WriteError};
use crate::config::Config;
use crate::config::{FixConfig, Mode};
use crate::event::EventBody;
use crate::integrity::sha256_hex;
use crate::manifest::MAX_MANIFEST_BYTES;
use crate::redact;
use crate::rules::Catalogue;
use crate::rules::parse_manifest;
use crate::scan::key;

/// Why a symlinked manifest is not fixed.
const SYMLINK: &str =
    "is a symlink; a symlinked manifest is never rewritten (fix its target by hand)";
/// How often a deferred fix checks whether the pause ended.
const PAUSE_POLL: Duration = Duration::from_secs(1);

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

/// How a fix ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing to do.
    Nothing,
    /// Planned only.
    Planned,
    /// Not applied (the events say why).
    Skipped,
    /// Applied and healthy.
    Verified,
    /// Applied, unhealthy, restored.
    RolledBack,
}

/// Where events go.
pub type Emit<'a> = &'a mut (dyn FnMut(EventBody) + Send);

/// The fixer's state.
pub struct Fixer {
    cfg: Config,
    own: Arc<OwnWrites>,
    quarantine: BTreeMap<String, Quarantine>,
    fights: BTreeMap<String, Fights>,
    planned: HashMap<String, String>,
    reported: HashSet<(String, Option<String>, String)>,
    deferred: BTreeSet<PathBuf>,
    /// In the daemon: how many events were sent, and how many the loop has committed.
    spooled: Option<(Arc<AtomicU64>, watch::Receiver<u64>)>,
    /// In the daemon: true once the agent is stopping. A gate in progress then ends in a
    /// rollback, so that no unverified fix outlives the process (invariant 2).
    stopping: Option<watch::Receiver<bool>>,
}

impl Fixer {
    /// A fixer for `cfg`, sharing `own` with the daemon loop.
    pub fn new(cfg: Config, own: Arc<OwnWrites>) -> Self {
        let quarantine = load_quarantine(&cfg.state_dir);
        let fights = load_fights(&cfg.state_dir);
        Fixer {
            cfg,
            own,
            quarantine,
            fights,
            planned: HashMap::new(),
            reported: HashSet::new(),
            deferred: BTreeSet::new(),
            spooled: None,
            stopping: None,
        }
    }

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

    /// The quarantine holding `path`, if its bytes are still those it was rolled back to.
    pub fn quarantined(&self, path: &Path, bytes: &[u8]) -> Option<&Quarantine> {
        self.quarantine
            .get(&key(path))
            .filter(|q| q.sha256 == sha256_hex(bytes))
    }

    fn cat(&self) -> &Catalogue {
        &self.cfg.catalogue
    }

    fn fix_cfg(&self) -> &FixConfig {
        &self.cfg.fix
    }

    fn save_fights(&self) {
        policy::save(
            &self.cfg.state_dir,
            FIGHTS_FILE,
            &self.fights,
            "fight guard",
        );
    }

    fn save_quarantine(&self) {
        policy::save(
            &self.cfg.state_dir,
            QUARANTINE_FILE,
            &self.quarantine,
            "fix quarantine",
        );
    }

    fn skip_once(
        &mut self,
        emit: Emit<'_>,
        path: &str,
        rule_id: Option<String>,
        reason: String,
        diff: Option<String>,
    ) {
        if self
            .reported
            .insert((path.to_string(), rule_id.clone(), reason.clone()))
        {
            emit(EventBody::FixSkipped {
                path: path.to_string(),
                rule_id,
                reason,
                diff,
            });
        }
    }

    /// The redacted diff of a plan: the manifest, then each file it creates.
    pub fn diff(&self, path: &str, before: &str, plan: &Plan) -> String {
        let red = |t: &str| redact::manifest_text(t, &|f| self.cat().sensitive(f));
        let mut diff = match (red(before), red(&plan.text)) {
            (Ok(a), Ok(b)) => redact::unified_diff(path, Some(&a), Some(&b)),
            (Err(e), _) | (_, Err(e)) => format!("[diff withheld: {e}]\n"),
        };
        for f in &plan.files {
            diff.push_str(&redact::unified_diff(
                &f.host_path.display().to_string(),
                None,
                Some(&f.contents),
            ));
        }
        diff
    }

    /// Plans the fixes `choose` selects for the manifest at `path` as it is on disk.
    pub fn plan_file(
        &self,
        path: &Path,
        choose: &dyn Fn(&crate::rules::Finding) -> plan::Choice,
    ) -> Result<(Vec<u8>, Plan), String> {
        let meta = std::fs::symlink_metadata(path).map_err(|e| crate::io::io_problem(&e))?;
        if meta.file_type().is_symlink() {
            return Err(SYMLINK.into());
        }
        let bytes = crate::io::read_bounded(path, MAX_MANIFEST_BYTES)?;
        let m = parse_manifest(self.cat(), &bytes).map_err(|e| e.to_string())?;
        let authn = m
            .control_plane
            .as_ref()
            .and_then(|cp| crate::node::read_authn(&m, cp));
        let plan =
            plan::plan(self.cat(), &bytes, authn.as_ref(), choose).map_err(|e| e.to_string())?;
        Ok((bytes, plan))
    }

    /// Looks at one manifest: plans, reports, and in enforce mode applies behind the gate.
    pub async fn handle(&mut self, path: &Path, emit: Emit<'_>) -> Outcome {
        if !self.fix_cfg().any() {
            return Outcome::Nothing;
        }
        let k = key(path);
        if self.fights.get(&k).is_some_and(|f| f.stopped) {
            let why = "not fixing: the fight guard stopped fixing this file (something else keeps rewriting it); reload the agent to try again";
            self.skip_once(emit, &k, None, why.into(), None);
            return Outcome::Skipped;
        }
        let fc = self.fix_cfg().clone();
        let all = |f: &crate::rules::Finding| crate::fix::choose(&fc, f, fc.mode_of(&f.id), &[]);
        if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
            self.skip_once(emit, &k, None, SYMLINK.into(), None);
            return Outcome::Skipped;
        }
        let Ok((bytes, planned)) = self.plan_file(path, &all) else {
            // Unreadable or not a control-plane manifest: the scan reports it.
            return Outcome::Nothing;
        };
        let hash = sha256_hex(&bytes);
        if let Some(q) = self.quarantine.get(&k) {
            if q.sha256 == hash {
                return Outcome::Skipped;
            }
            self.quarantine.remove(&k);
            self.save_quarantine();
        }
        for s in &planned.skipped {
            self.skip_once(emit, &k, Some(s.rule_id.clone()), s.reason.clone(), None);
        }
        if planned.is_empty() {
            self.planned.remove(&k);
            return Outcome::Nothing;
        }
        let before = String::from_utf8_lossy(&bytes).into_owned();
        let enforce_rules: Vec<&String> = planned
            .steps
            .iter()
            .map(|s| &s.rule_id)
            .filter(|r| fc.mode_of(r) == Mode::Enforce)
            .collect();
        let diff = self.diff(&k, &before, &planned);
        if self.planned.get(&k) != Some(&diff) {
            self.planned.insert(k.clone(), diff.clone());
            emit(EventBody::FixPlanned {
                path: k.clone(),
                mode: if enforce_rules.is_empty() {
                    "dry-run"
                } else {
                    "enforce"
                }
                .into(),
                rules: planned.steps.iter().map(|s| s.rule_id.clone()).collect(),
                diff: diff.clone(),
            });
        }
        if enforce_rules.is_empty() {
            return Outcome::Planned;
        }
        // Only the enforce rules are applied when some are dry-run.
        let enforced = if enforce_rules.len() == planned.steps.len() {
            planned
        } else {
            let only = |f: &crate::rules::Finding| match fc.mode_of(&f.id) {
                Mode::Enforce => crate::fix::choose(&fc, f, Mode::Enforce, &[]),
                _ => plan::Choice::Ignore,
            };
            match self.plan_file(path, &only) {
                Ok((again, p)) if again == bytes && !p.is_empty() => p,
                _ => return Outcome::Planned,
            }
        };
        let diff = self.diff(&k, &before, &enforced);
        if let Some(why) = paused(&self.cfg.state_dir) {
            self.skip_once(emit, &k, None, why, Some(diff));
            self.deferred.insert(path.to_path_buf());
            return Outcome::Skipped;
        }
        let window = fc.fight_window;
        let fights = self.fights.entry(k.clone()).or_default();
        if let Err(times) = fights.admit(unix_now(), window, fc.fight_max) {
            self.save_fights();
            tracing::error!(path = %k, "the same drift keeps coming back; stopped fixing this file");
            emit(EventBody::FixQuarantined {
                path: k.clone(),
                rules: enforced.steps.iter().map(|s| s.rule_id.clone()).collect(),
                reason: format!(
                    "the drift came back after {} fixes within {}: something else keeps rewriting this file (kubeadm, a config manager?); stopped fixing it until the agent is reloaded",
                    times,
                    humantime::format_duration(window)
                ),
                diff,
            });
            return Outcome::Skipped;
        }
        self.save_fights();
        self.apply(path, &bytes, &enforced, diff, emit).await
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

    /// In enforce mode, says at once (and not at the first fix) when the manifests directory
    /// is not writable: the systemd unit grants write access only with the enforce drop-in.
    /// Checked with the effective ids and capabilities (`AT_EACCESS`).
    fn check_writable(&mut self, emit: Emit<'_>) {
        if !self.fix_cfg().enforces() {
            return;
        }
        let dir = self.cfg.manifests_dir.clone();
        if let Err(e) = nix::unistd::faccessat(
            nix::fcntl::AT_FDCWD,
            &dir,
            nix::unistd::AccessFlags::W_OK | nix::unistd::AccessFlags::X_OK,
            nix::fcntl::AtFlags::AT_EACCESS,
        ) {
            let reason = format!(
                "fix.mode is enforce, but {} is not writable by the agent ({}): install the enforce drop-in (lockdown-agent.service.d/enforce.conf) or every fix fails",
                dir.display(),
                e.desc()
            );
            tracing::error!("{reason}");
            self.skip_once(emit, &key(&dir), None, reason, None);
        }
    }

    /// The daemon task: recover, then handle requests one at a time until the channel closes.
    /// `committed` counts the events the loop has committed to the spool.
    pub async fn run(
        mut self,
        mut requests: mpsc::UnboundedReceiver<PathBuf>,
        mut configs: watch::Receiver<Config>,
        events: mpsc::UnboundedSender<EventBody>,
        committed: watch::Receiver<u64>,
        mut stopping: watch::Receiver<bool>,
    ) {
        let sent = Arc::new(AtomicU64::new(0));
        self.spooled = Some((Arc::clone(&sent), committed));
        self.stopping = Some(stopping.clone());
        let mut emit = move |e: EventBody| {
            if events.send(e).is_ok() {
                sent.fetch_add(1, Ordering::SeqCst);
            }
        };
        self.recover(&mut emit).await;
        self.check_writable(&mut emit);
        let mut poll = tokio::time::interval(PAUSE_POLL);
        loop {
            tokio::select! {
                biased;
                _ = stopping.wait_for(|stop| *stop) => break,
                r = requests.recv() => {
                    let Some(first) = r else { break };
                    let mut batch = BTreeSet::from([first]);
                    while let Ok(p) = requests.try_recv() {
                        batch.insert(p);
                    }
                    for p in batch {
                        self.handle(&p, &mut emit).await;
                    }
                }
                Ok(()) = configs.changed() => {
                    self.cfg = configs.borrow_and_update().clone();
                    self.fights.clear();
                    self.save_fights();
                    self.reported.clear();
                    self.planned.clear();
                    self.check_writable(&mut emit);
                }
                _ = poll.tick(), if !self.deferred.is_empty() => {
                    if paused(&self.cfg.state_dir).is_none() {
                        for p in std::mem::take(&mut self.deferred) {
                            self.reported.retain(|(path, _, _)| *path != key(&p));
                            self.handle(&p, &mut emit).await;
                        }
                    }
                }
            }
        }
    }
}

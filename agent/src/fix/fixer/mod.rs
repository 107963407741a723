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

mod apply;

use tokio::sync::{mpsc, watch};

use super::plan::{self, Plan};
use super::policy::{
    self, FIGHTS_FILE, Fights, OwnWrites, QUARANTINE_FILE, Quarantine, load_fights,
    load_quarantine, paused, unix_now,
};
use crate::config::Config;
use crate::config::{FixConfig, Mode};
use crate::event::EventBody;
use crate::integrity::sha256_hex;
use crate::io::key;
use crate::manifest::MAX_MANIFEST_BYTES;
use crate::rules::Catalogue;
use crate::rules::{Finding, parse_manifest};

/// Why a symlinked manifest is not fixed.
pub(crate) const SYMLINK: &str =
    "is a symlink; a symlinked manifest is never rewritten (fix its target by hand)";
/// How often a deferred fix checks whether the pause ended.
const PAUSE_POLL: Duration = Duration::from_secs(1);

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

/// What the first step of a fix found ([`Fixer::look`]).
#[derive(Debug)]
pub enum Look {
    /// A symlinked manifest: never rewritten.
    Symlink,
    /// Unreadable, or not a control-plane manifest, and why.
    Unplannable(String),
    /// The manifest's bytes and the plan for them; `quarantined`: a rollback quarantined
    /// these bytes, so the plan is not applied.
    Planned {
        /// The manifest as read.
        bytes: Vec<u8>,
        /// What to change (may be empty, with the rules it skipped).
        plan: Plan,
        /// The quarantine that holds these bytes.
        quarantined: Option<Quarantine>,
    },
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

    /// The first step of every fix, in the daemon and in `lockdown-agent fix`: the manifest
    /// as it is on disk, the plan `choose` makes for it, and whether a rollback quarantined
    /// these very bytes. A quarantine whose file changed since is dropped here.
    pub fn look(&mut self, path: &Path, choose: &dyn Fn(&Finding) -> plan::Choice) -> Look {
        if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
            return Look::Symlink;
        }
        let (bytes, plan) = match self.plan_file(path, choose) {
            Ok(x) => x,
            Err(e) => return Look::Unplannable(e),
        };
        let k = key(path);
        let quarantined = match self.quarantine.get(&k) {
            Some(q) if q.sha256 == sha256_hex(&bytes) => Some(q.clone()),
            Some(_) => {
                self.quarantine.remove(&k);
                self.save_quarantine();
                None
            }
            None => None,
        };
        Look::Planned {
            bytes,
            plan,
            quarantined,
        }
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

    /// Plans the fixes `choose` selects for the manifest at `path` as it is on disk.
    pub fn plan_file(
        &self,
        path: &Path,
        choose: &dyn Fn(&Finding) -> plan::Choice,
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
        let all = |f: &Finding| crate::fix::choose(&fc, f, fc.mode_of(&f.id), &[]);
        let (bytes, planned) = match self.look(path, &all) {
            Look::Symlink => {
                self.skip_once(emit, &k, None, SYMLINK.into(), None);
                return Outcome::Skipped;
            }
            // Unreadable or not a control-plane manifest: the scan reports it.
            Look::Unplannable(_) => return Outcome::Nothing,
            // Its rollback was reported; not tried again until someone changes the file.
            Look::Planned {
                quarantined: Some(_),
                ..
            } => return Outcome::Skipped,
            Look::Planned { bytes, plan, .. } => (bytes, plan),
        };
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
        let diff = planned.diff(self.cat(), &k, &before);
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
            let only = |f: &Finding| match fc.mode_of(&f.id) {
                Mode::Enforce => crate::fix::choose(&fc, f, Mode::Enforce, &[]),
                _ => plan::Choice::Ignore,
            };
            match self.plan_file(path, &only) {
                Ok((again, p)) if again == bytes && !p.is_empty() => p,
                _ => return Outcome::Planned,
            }
        };
        let diff = enforced.diff(self.cat(), &k, &before);
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

//! `lockdown-agent run`: the long-running agent.
//!
//! One loop owns everything (config, baseline, spool, watches), so there is no locking but
//! the notify thread's pending set. It waits for: file events (then settles and scans what
//! they name), the periodic rescan, the certificate clock (expiry judged again), probe
//! rounds of kube-apiserver (run off the loop, their findings merged by the scanner), signals
//! (SIGTERM and SIGINT stop, SIGHUP reloads) and status requests on a Unix socket in the state
//! directory (`status`).
//!
//! Every scan compares the new state of each tracked path with the baseline, and commits the
//! events and the new baseline in one spool transaction. If the commit fails (disk full),
//! the in-memory baseline is not advanced and a full rescan is retried, so the change is
//! reported once the spool can take it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::UnixListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, watch};

use crate::baseline::{self, PathState};
use crate::config::{Config, ConfigError, Overrides};
use crate::event::EventBody;
use crate::scan::{Dirty, Scanner};
use crate::spool::{BaselineWrite, Spool, SpoolError};
use crate::status::{
    FileStatus, FixStatus, LastEvent, OpenFinding, SOCKET_FILE, Status, status_line,
};
use crate::watch::{Shared, Watch};

/// How long a stopping agent waits for the collector to acknowledge what is left.
const FLUSH_ON_STOP: Duration = Duration::from_millis(500);
/// How long to wait before retrying after the spool refused a commit.
const COMMIT_RETRY: Duration = Duration::from_secs(1);

/// Why the agent cannot start. After start, nothing stops it but a signal.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The spool cannot be opened (locked, unwritable, corrupt).
    #[error(transparent)]
    Spool(#[from] SpoolError),
    /// inotify cannot be started (fs.inotify.max_user_instances reached).
    #[error("cannot start inotify: {0} (raise fs.inotify.max_user_instances?)")]
    Inotify(#[from] notify::Error),
    /// The status socket cannot be created.
    #[error("cannot create status socket {path}: {source}")]
    Socket {
        /// Socket path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// Signal handlers cannot be installed.
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    /// The fixer's thread cannot be started.
    #[error("cannot start the fixer thread: {0}")]
    Thread(std::io::Error),
}

/// Where the config came from, to reload it on SIGHUP.
#[derive(Debug, Clone)]
pub struct ConfigSource {
    /// The file.
    pub path: PathBuf,
    /// Whether it was named explicitly (a missing default file means defaults).
    pub explicit: bool,
    /// Command-line and environment overrides.
    pub overrides: Overrides,
}

impl ConfigSource {
    /// Loads the file and applies the overrides.
    pub fn load(&self) -> Result<Config, ConfigError> {
        let mut cfg = Config::load(&self.path, self.explicit)?;
        self.overrides.apply(&mut cfg)?;
        Ok(cfg)
    }
}

struct Agent {
    cfg: Config,
    source: ConfigSource,
    spool: Spool,
    baseline: BTreeMap<String, PathState>,
    scanner: Scanner,
    watch: Watch,
    shared: Arc<Shared>,
    started: String,
    last_event: Option<LastEvent>,
    /// The spool refused a commit: rescan everything at this time.
    retry_at: Option<Instant>,
    /// Full rescans since start.
    rescans: u64,
    /// Directories that could not be watched at the last arming (warned about once).
    unwatchable: std::collections::BTreeSet<PathBuf>,
    /// Tells the shipper the highest committed sequence number.
    last_seq: watch::Sender<u64>,
    /// Where the shipper sends acks.
    acks: mpsc::Sender<u64>,
    /// What the node looks like, for the shipper's hello and heartbeats.
    summary: watch::Sender<crate::ship::NodeSummary>,
    /// The running shipper.
    shipper: Option<Shipper>,
    /// Events a failed commit could not spool and no rescan would find again (fix events,
    /// config and lifecycle events): spooled first at the next commit.
    held: Vec<EventBody>,
    /// Fixer events received and not yet committed (held ones included).
    fix_pending: u64,
    /// Tells the fixer how many of its events are committed.
    fix_committed: watch::Sender<u64>,
    /// Bytes the fixer wrote: not drift.
    own: Arc<crate::fix::policy::OwnWrites>,
    /// Manifests the fixer should look at.
    fix_requests: mpsc::UnboundedSender<PathBuf>,
    /// The config, for the fixer.
    fix_config: watch::Sender<Config>,
    /// When kube-apiserver is probed next.
    live: crate::live::Schedule,
    /// Where probe rounds send what they saw.
    live_results: mpsc::UnboundedSender<LiveRound>,
}

/// What one probe round saw, by kube-apiserver manifest (`Err`: why it was not probed).
type LiveRound = Vec<(PathBuf, Result<crate::live::Observed, String>)>;

struct Shipper {
    cfg: crate::ship::ShipConfig,
    task: tokio::task::JoinHandle<()>,
    status: Arc<std::sync::Mutex<crate::ship::ShipStatus>>,
}

/// Runs the agent until SIGTERM or SIGINT. `ready` is called once the spool is open, the
/// baseline compared and the watches armed.
pub async fn run(
    cfg: Config,
    source: ConfigSource,
    ready: impl FnOnce(&Status),
) -> Result<(), DaemonError> {
    let mut sigterm = signal(SignalKind::terminate()).map_err(DaemonError::Signals)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(DaemonError::Signals)?;
    let mut sighup = signal(SignalKind::hangup()).map_err(DaemonError::Signals)?;

    let spool = Spool::open(&cfg.state_dir, cfg.spool_max_bytes)?;
    let baseline = spool.baseline()?;
    let watch = Watch::new()?;
    let socket_path = cfg.state_dir.join(SOCKET_FILE);
    let _ = std::fs::remove_file(&socket_path); // ours: we hold the spool lock
    let listener = UnixListener::bind(&socket_path).map_err(|source| DaemonError::Socket {
        path: socket_path.clone(),
        source,
    })?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&socket_path, std::fs::Permissions::from_mode(0o600)).map_err(
            |source| DaemonError::Socket {
                path: socket_path.clone(),
                source,
            },
        )?;
    }
    let shared = Arc::clone(watch.shared());
    let (last_seq, _) = watch::channel(spool.depth().last_seq);
    let (acks, mut acked) = mpsc::channel::<u64>(64);
    let own = Arc::new(crate::fix::policy::OwnWrites::default());
    let (fix_requests, fix_requests_rx) = mpsc::unbounded_channel();
    let (fix_events_tx, mut fix_events) = mpsc::unbounded_channel();
    let (fix_config, fix_config_rx) = watch::channel(cfg.clone());
    let (fix_committed, fix_committed_rx) = watch::channel(0u64);
    let fixer = crate::fix::fixer::Fixer::new(cfg.clone(), Arc::clone(&own));
    let (live_results, mut live_rounds) = mpsc::unbounded_channel();
    let mut agent = Agent {
        cfg,
        source,
        spool,
        baseline,
        scanner: Scanner::new(),
        watch,
        shared,
        started: crate::event::now_rfc3339(),
        last_event: None,
        retry_at: None,
        rescans: 0,
        unwatchable: Default::default(),
        last_seq,
        acks,
        summary: watch::channel(Default::default()).0,
        shipper: None,
        held: Vec::new(),
        fix_pending: 0,
        fix_committed,
        own,
        fix_requests,
        fix_config,
        live: Default::default(),
        live_results,
    };
    agent.start();
    agent.start_shipper();
    // The fixer has a thread of its own: its planning and writes overlap the loop's spool
    // commits, and a health gate never delays detection. At stop it is told so: a fix in its
    // gate is rolled back, and the loop commits the events, before the process exits.
    let (fix_stop, fix_stop_rx) = watch::channel(false);
    let fixer_thread = std::thread::Builder::new()
        .name("fixer".into())
        .spawn(move || {
            match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt.block_on(fixer.run(
                    fix_requests_rx,
                    fix_config_rx,
                    fix_events_tx,
                    fix_committed_rx,
                    fix_stop_rx,
                )),
                Err(e) => tracing::error!(error = %e, "cannot start the fixer; fixing is off"),
            }
        })
        .map_err(DaemonError::Thread)?;
    agent.request_fixes(&agent.baseline, None);
    let status = agent.status();
    ready(&status);
    // systemd (Type=notify): ready only now, with the spool open, the baseline compared and
    // the watches armed. Without NOTIFY_SOCKET these are no-ops.
    let _ = sd_notify::notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(&status_line(&status)),
    ]);
    // The watchdog is pinged from this loop, so a loop that hangs gets the agent restarted.
    let mut watchdog = tokio::time::interval(
        sd_notify::watchdog_enabled().map_or(STATUS_EVERY, |d| (d / 2).min(STATUS_EVERY)),
    );
    watchdog.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    let mut rescan = agent.rescan_timer();
    let mut clock = agent.clock_timer();
    loop {
        let retry = agent.retry_at;
        tokio::select! {
            () = agent.shared.wake.notified() => {
                agent.settle().await;
                let mut pending = agent.shared.take();
                // Watched parent directories hear about their other files too (a log file
                // next to the node's directories): those are not ours, and reacting to them,
                // even with a log line, can feed itself.
                pending.paths.retain(|p| agent.relevant(p));
                if pending.rescan.is_none() && pending.paths.is_empty() {
                    continue;
                }
                tracing::debug!(paths = pending.paths.len(), rescan = ?pending.rescan, "file events");
                let dirty = match &pending.rescan {
                    Some(_) => Dirty::all(),
                    None => Dirty { paths: pending.paths, ..Dirty::default() },
                };
                agent.process(&dirty, pending.rescan.as_deref(), true);
            }
            _ = clock.tick() => {
                // Certificates expire without a file change.
                agent.process(&Dirty::clock(), None, false);
            }
            _ = rescan.tick() => {
                agent.process(&Dirty::all(), Some("periodic rescan found changes inotify did not report"), false);
            }
            () = sleep_until_opt(agent.live_due()) => agent.start_probes(),
            Some(round) = live_rounds.recv() => agent.probed(round),
            () = sleep_until_opt(retry) => {
                agent.retry_at = None;
                agent.process(&Dirty::all(), Some("retry after the spool refused a commit"), false);
            }
            Some(seq) = acked.recv() => {
                if let Err(e) = agent.spool.ack(seq) {
                    tracing::error!(error = %e, seq, "cannot trim the spool");
                }
            }
            Some(body) = fix_events.recv() => {
                let mut bodies = vec![body];
                while let Ok(b) = fix_events.try_recv() {
                    bodies.push(b);
                }
                agent.fix_pending += bodies.len() as u64;
                agent.commit(bodies, Vec::new());
            }
            _ = watchdog.tick() => {
                let _ = sd_notify::notify(&[
                    sd_notify::NotifyState::Watchdog,
                    sd_notify::NotifyState::Status(&status_line(&agent.status())),
                ]);
            }
            _ = sighup.recv() => {
                let mut reloading = vec![sd_notify::NotifyState::Reloading];
                reloading.extend(sd_notify::NotifyState::monotonic_usec_now().ok());
                let _ = sd_notify::notify(&reloading);
                agent.reload();
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
                rescan = agent.rescan_timer();
                clock = agent.clock_timer();
            }
            _ = sigterm.recv() => {
                agent.finish_fixes(&fix_stop, &mut fix_events, &fixer_thread).await;
                agent.stop("SIGTERM");
                break;
            }
            _ = sigint.recv() => {
                agent.finish_fixes(&fix_stop, &mut fix_events, &fixer_thread).await;
                agent.stop("SIGINT");
                break;
            }
            Ok((mut stream, _)) = listener.accept() => {
                let body = serde_json::to_vec(&agent.status()).expect("status serialises");
                tokio::spawn(async move {
                    let _ = stream.write_all(&body).await;
                    let _ = stream.shutdown().await;
                });
            }
        }
    }
    // Give a connected shipper a moment to deliver what is left (agent_stopping included);
    // whatever it cannot deliver stays spooled for the next start.
    let connected = agent
        .shipper
        .as_ref()
        .is_some_and(|s| s.status.lock().expect("status lock").connected);
    if connected {
        let deadline = tokio::time::Instant::now() + FLUSH_ON_STOP;
        while agent.spool.depth().acked < agent.spool.depth().last_seq {
            match tokio::time::timeout_at(deadline, acked.recv()).await {
                Ok(Some(seq)) => {
                    if let Err(e) = agent.spool.ack(seq) {
                        tracing::error!(error = %e, seq, "cannot trim the spool");
                    }
                }
                _ => break,
            }
        }
    }
    if let Some(s) = agent.shipper.take() {
        s.task.abort();
    }
    let _ = std::fs::remove_file(&socket_path);
    Ok(())
}

/// How long a stopping agent waits for the fixer to roll back a fix in its gate (the unit's
/// TimeoutStopSec is 15 s).
const FIX_STOP_GRACE: Duration = Duration::from_secs(10);

/// How often `STATUS=` is refreshed when there is no (shorter) watchdog.
const STATUS_EVERY: Duration = Duration::from_secs(10);

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

impl Agent {
    fn rescan_timer(&self) -> tokio::time::Interval {
        let period = self
            .cfg
            .rescan_interval
            .unwrap_or(Duration::from_secs(365 * 24 * 3600));
        let mut t = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    }

    /// When the next probe round is due (never with probes off).
    fn live_due(&self) -> Option<Instant> {
        self.cfg.live.enabled.then(|| self.live.due()).flatten()
    }

    /// Starts a probe round of the kube-apiserver manifests the last scan found, off the
    /// loop (a probe waits on the network).
    fn start_probes(&mut self) {
        let targets = self.scanner.live_targets();
        self.live.start(targets.clone());
        let (tx, timeout) = (self.live_results.clone(), self.cfg.live.timeout);
        tokio::task::spawn_blocking(move || {
            let round: LiveRound = targets
                .into_iter()
                .map(|(path, t)| (path, t.map(|t| crate::live::probe(&t, timeout))))
                .collect();
            let _ = tx.send(round);
        });
    }

    /// A probe round ended: its findings go into the manifests' state, and out as events.
    fn probed(&mut self, round: LiveRound) {
        self.live.finished(self.cfg.live.interval, Instant::now());
        let cat = &self.cfg.catalogue;
        let mut dirty = Dirty::default();
        for (path, seen) in round {
            let seen = seen.as_ref().map_err(String::as_str);
            let findings = crate::rules::eval::evaluate_live(cat, seen);
            self.scanner.set_live(cat, &path, &findings);
            dirty.paths.insert(path);
        }
        self.process(&dirty, None, false);
    }

    /// Ticks when certificate expiry is to be judged again.
    fn clock_timer(&self) -> tokio::time::Interval {
        let period = self.cfg.tls.recheck_interval;
        let mut t = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    }

    /// Starts (or restarts, when its config changed) the shipper.
    fn start_shipper(&mut self) {
        if self.shipper.as_ref().map(|s| &s.cfg) == self.cfg.collector.as_ref() {
            return;
        }
        if let Some(old) = self.shipper.take() {
            old.task.abort();
        }
        let Some(cfg) = self.cfg.collector.clone() else {
            return;
        };
        let status = Arc::new(std::sync::Mutex::new(crate::ship::ShipStatus {
            address: cfg.address.clone(),
            acked: self.spool.depth().acked,
            ..Default::default()
        }));
        let link = crate::ship::Link {
            last_seq: self.last_seq.subscribe(),
            summary: self.summary.subscribe(),
            acks: self.acks.clone(),
            status: Arc::clone(&status),
        };
        let task = tokio::spawn(crate::ship::run(
            cfg.clone(),
            self.cfg.state_dir.clone(),
            self.cfg.node_name.clone(),
            self.spool.depth().acked,
            link,
        ));
        self.shipper = Some(Shipper { cfg, task, status });
    }

    /// First scan: compare with the persisted baseline, so that changes made while the agent
    /// was down are reported.
    fn start(&mut self) {
        let first_run = self.baseline.is_empty();
        // Scan, watch what the scan found, then scan again: a change between the first scan
        // and the watches is in the second.
        let snap = self.scanner.scan(&self.cfg, &Dirty::all(), &self.baseline);
        self.arm(&snap.watch);
        let snap = self.scanner.scan(&self.cfg, &Dirty::all(), &self.baseline);
        self.arm(&snap.watch);
        let (changes, writes) = diff(&self.baseline, &snap.states, first_run);
        let mut bodies = vec![EventBody::AgentStarted {
            agent_version: env!("CARGO_PKG_VERSION").into(),
            config_digest: self.cfg.digest(),
            rules_digest: self.cfg.rules_digest(),
            baseline: if first_run { "created" } else { "loaded" }.into(),
            files: snap.states.len(),
        }];
        bodies.extend(changes);
        tracing::info!(
            node = %self.cfg.node_name,
            files = snap.states.len(),
            watched_dirs = self.watch.armed().count(),
            first_run,
            "agent started"
        );
        self.commit(bodies, writes);
    }

    fn arm(&mut self, dirs: &std::collections::BTreeSet<PathBuf>) {
        let failed = self.watch.arm(dirs);
        for (dir, error) in &failed {
            if !self.unwatchable.contains(dir) {
                tracing::warn!(dir = %dir.display(), %error, "cannot watch; the periodic rescan still covers it");
            }
        }
        self.unwatchable = failed.into_iter().map(|(d, _)| d).collect();
    }

    /// Waits until the files have been quiet for `settle` since the last event, or
    /// `settle_max` has passed since the first.
    async fn settle(&self) {
        let deadline = Instant::now() + self.cfg.settle_max;
        loop {
            let quiet_at = self
                .shared
                .last_event()
                .map_or_else(Instant::now, |t| t + self.cfg.settle);
            let until = quiet_at.min(deadline);
            if until <= Instant::now() {
                return;
            }
            // tokio's timer rounds up to whole milliseconds, which would add up to half the
            // default settle time to every event; a blocking-pool sleep is precise.
            let wait = until.saturating_duration_since(Instant::now());
            let _ = tokio::task::spawn_blocking(move || std::thread::sleep(wait)).await;
        }
    }

    /// Scans, then spools what changed. `reason`: why this is a rescan; `always_say` reports
    /// the rescan even when it finds nothing (a queue overflow is worth knowing about).
    /// Whether an event on `p` can change what the agent tracks: a tracked path, a directory
    /// above one (removed or replaced), a new file where new files are tracked (manifests,
    /// PKI, CNI), or the target of a tracked symlink.
    fn relevant(&self, p: &Path) -> bool {
        let cfg = &self.cfg;
        if p.parent() == Some(cfg.manifests_dir.as_path())
            || p.starts_with(&cfg.pki_dir)
            || cfg.cni_dirs.iter().any(|d| p.starts_with(d))
            || [
                &cfg.manifests_dir,
                &cfg.kubernetes_dir,
                &cfg.pki_dir,
                &cfg.etcd_data_dir,
            ]
            .into_iter()
            .chain(&cfg.cni_dirs)
            .any(|d| d.starts_with(p))
        {
            return true;
        }
        self.baseline.iter().any(|(k, state)| {
            let k = Path::new(k);
            k.starts_with(p)
                || (state.meta.as_ref().is_some_and(|m| m.symlink.is_some())
                    && std::fs::canonicalize(k)
                        .is_ok_and(|t| t.starts_with(p) || t.parent() == Some(p)))
        })
    }

    fn process(&mut self, dirty: &Dirty, reason: Option<&str>, always_say: bool) {
        if dirty.is_empty() {
            return;
        }
        let t0 = Instant::now();
        let snap = self.scanner.scan(&self.cfg, dirty, &self.baseline);
        let scanned = t0.elapsed();
        self.arm(&snap.watch);
        let armed = t0.elapsed();
        if dirty.all {
            self.rescans += 1;
        }
        let (changes, writes) = diff(&self.baseline, &snap.states, false);
        let changes = self.drop_own_writes(changes);
        let mut bodies = Vec::with_capacity(changes.len() + 1);
        if let Some(reason) = reason
            && dirty.all
            && (always_say || !writes.is_empty())
        {
            tracing::info!(reason, changes = writes.len(), "rescan");
            bodies.push(EventBody::Rescan {
                reason: reason.into(),
                changes: writes.len(),
            });
        }
        bodies.extend(changes);
        let diffed = t0.elapsed();
        let targets = self.scanner.live_targets();
        self.live
            .saw(&targets, self.cfg.live.after_change, Instant::now());
        let changed: Vec<String> = writes.iter().map(|(k, _)| k.clone()).collect();
        self.request_fixes(&snap.states, if dirty.all { None } else { Some(&changed) });
        self.commit(bodies, writes);
        tracing::debug!(
            scan_us = scanned.as_micros() as u64,
            arm_us = (armed - scanned).as_micros() as u64,
            diff_us = (diffed - armed).as_micros() as u64,
            commit_us = (t0.elapsed() - diffed).as_micros() as u64,
            "processed"
        );
    }

    fn commit(&mut self, bodies: Vec<EventBody>, writes: Vec<BaselineWrite>) {
        let mut bodies = bodies;
        if !self.held.is_empty() {
            let mut all = std::mem::take(&mut self.held);
            all.append(&mut bodies);
            bodies = all;
        }
        // What the retry's rescan would not report again, kept in case this commit fails.
        let keep: Vec<EventBody> = bodies.iter().filter(|b| !b.from_scan()).cloned().collect();
        match self.spool.commit(&self.cfg.node_name, bodies, &writes) {
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
                self.last_seq.send_replace(self.spool.depth().last_seq);
                // Whatever was held is in this commit too: every fixer event so far is durable.
                if self.fix_pending > 0 {
                    let n = std::mem::take(&mut self.fix_pending);
                    self.fix_committed.send_modify(|c| *c += n);
                }
                self.summary.send_if_modified(|s| {
                    let new = summarize(&self.baseline);
                    let changed = *s != new;
                    *s = new;
                    changed
                });
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot spool events; retrying with a full rescan");
                self.held = keep;
                self.retry_at = Some(Instant::now() + COMMIT_RETRY);
            }
        }
    }

    /// Drops `file_modified` and `file_created` events for bytes the fixer wrote: its own
    /// events (`fix_applied`, `fix_rolled_back`) describe them.
    fn drop_own_writes(&self, changes: Vec<EventBody>) -> Vec<EventBody> {
        changes
            .into_iter()
            .filter(|e| match e {
                EventBody::FileModified { path, after, .. }
                | EventBody::FileCreated { path, after, .. } => {
                    !self.own.take_if_own(path, after.sha256.as_deref())
                }
                _ => true,
            })
            .collect()
    }

    /// Asks the fixer to look at the manifests in `paths` (all of them when `None`) that have
    /// open findings in `states`.
    fn request_fixes(&self, states: &BTreeMap<String, PathState>, paths: Option<&[String]>) {
        if !self.cfg.fix.any() {
            return;
        }
        for (path, state) in states {
            let wanted = paths.is_none_or(|p| p.contains(path));
            if wanted && state.component.is_some() && !state.findings.is_empty() {
                let _ = self.fix_requests.send(PathBuf::from(path));
            }
        }
    }

    fn reload(&mut self) {
        match self.source.load() {
            Ok(cfg) if let Some(error) = fixed_at_start(&self.cfg, &cfg) => {
                tracing::error!(error, "new config refused; the old one stays in force");
                self.commit(vec![EventBody::ConfigRejected { error }], Vec::new());
            }
            Ok(cfg) => {
                self.spool.set_max_bytes(cfg.spool_max_bytes);
                tracing::info!(path = %self.source.path.display(), "config reloaded");
                let body = EventBody::ConfigReloaded {
                    config_digest: cfg.digest(),
                    rules_digest: cfg.rules_digest(),
                };
                self.cfg = cfg;
                self.fix_config.send_replace(self.cfg.clone());
                self.start_shipper();
                self.commit(vec![body], Vec::new());
                // Rules or paths may have changed: evaluate everything again.
                self.scanner = Scanner::new();
                self.process(&Dirty::all(), None, false);
            }
            Err(e) => {
                tracing::error!(error = %e, "new config refused; the old one stays in force");
                self.commit(
                    vec![EventBody::ConfigRejected {
                        error: e.to_string(),
                    }],
                    Vec::new(),
                );
            }
        }
    }

    /// Tells the fixer the agent is stopping and commits what it reports until it is done: a
    /// fix in its health gate is rolled back while the agent can still write (a restart may
    /// take that away, as removing the enforce drop-in does). If it is not done within
    /// [`FIX_STOP_GRACE`], that is an event, not only a log line.
    async fn finish_fixes(
        &mut self,
        stop: &watch::Sender<bool>,
        events: &mut mpsc::UnboundedReceiver<EventBody>,
        thread: &std::thread::JoinHandle<()>,
    ) {
        stop.send_replace(true);
        let deadline = tokio::time::Instant::now() + FIX_STOP_GRACE;
        loop {
            tokio::select! {
                body = events.recv() => match body {
                    Some(body) => {
                        self.fix_pending += 1;
                        self.commit(vec![body], Vec::new());
                    }
                    None => return, // the fixer is done
                },
                () = tokio::time::sleep_until(deadline) => break,
                () = tokio::time::sleep(Duration::from_millis(20)), if thread.is_finished() => {
                    while let Ok(body) = events.try_recv() {
                        self.fix_pending += 1;
                        self.commit(vec![body], Vec::new());
                    }
                    return;
                }
            }
        }
        tracing::error!("stopping with a fix the fixer could not finish in time");
        self.commit(
            vec![EventBody::FixSkipped {
                path: self.cfg.manifests_dir.display().to_string(),
                rule_id: None,
                reason: format!(
                    "ALERT: the agent stopped with a fix it could not finish or roll back within {FIX_STOP_GRACE:?}; its journal finishes it at the next start, if the agent can still write then"
                ),
                diff: None,
            }],
            Vec::new(),
        );
    }

    fn stop(&mut self, reason: &str) {
        tracing::info!(reason, "stopping");
        self.commit(
            vec![EventBody::AgentStopping {
                agent_version: env!("CARGO_PKG_VERSION").into(),
                config_digest: self.cfg.digest(),
                rules_digest: self.cfg.rules_digest(),
                reason: reason.into(),
            }],
            Vec::new(),
        );
    }

    fn status(&self) -> Status {
        let mut open_findings = Vec::new();
        let files = self
            .baseline
            .iter()
            .map(|(path, s)| {
                open_findings.extend(s.findings.values().map(|f| OpenFinding {
                    path: path.clone(),
                    finding: f.clone(),
                }));
                FileStatus {
                    path: path.clone(),
                    kind: s.meta.as_ref().map(|m| m.kind.clone()).unwrap_or_default(),
                    mode: s.meta.as_ref().map(|m| m.mode.clone()).unwrap_or_default(),
                    error: s.error.clone(),
                }
            })
            .collect();
        open_findings.sort_by(|a, b| {
            (b.finding.severity, &a.path, &a.finding.rule_id).cmp(&(
                a.finding.severity,
                &b.path,
                &b.finding.rule_id,
            ))
        });
        Status {
            node: self.cfg.node_name.clone(),
            agent_version: env!("CARGO_PKG_VERSION").into(),
            pid: std::process::id(),
            started: self.started.clone(),
            watched_dirs: self
                .watch
                .armed()
                .map(|d| d.display().to_string())
                .collect(),
            files,
            open_findings,
            spool: self.spool.depth(),
            last_event: self.last_event.clone(),
            rescans: self.rescans,
            collector: self
                .shipper
                .as_ref()
                .map(|s| s.status.lock().expect("status lock").clone()),
            fix: FixStatus {
                mode: self.cfg.fix.mode.as_str().into(),
                rules: self
                    .cfg
                    .fix
                    .rules
                    .iter()
                    .map(|(r, m)| (r.clone(), m.as_str().to_string()))
                    .collect(),
                paused: crate::fix::policy::paused(&self.cfg.state_dir),
                quarantined: crate::fix::policy::load_quarantine(&self.cfg.state_dir)
                    .into_iter()
                    .map(|(p, q)| (p, q.reason))
                    .collect(),
            },
        }
    }
}

/// Component versions and open findings by severity.
fn summarize(baseline: &BTreeMap<String, PathState>) -> crate::ship::NodeSummary {
    let mut s = crate::ship::NodeSummary::default();
    for state in baseline.values() {
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

/// The events and baseline writes that take `old` to `new`.
fn diff(
    old: &BTreeMap<String, PathState>,
    new: &BTreeMap<String, PathState>,
    first_run: bool,
) -> (Vec<EventBody>, Vec<BaselineWrite>) {
    let mut events = Vec::new();
    let mut writes = Vec::new();
    let keys: std::collections::BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    for k in keys {
        let (o, n) = (old.get(k), new.get(k));
        if o == n {
            continue;
        }
        events.extend(baseline::changes(k, o, n, first_run));
        writes.push((k.clone(), n.cloned()));
    }
    (events, writes)
}

/// Why `new` cannot replace `old` on reload, if it cannot: the node's identity and its state
/// directory are fixed for the life of the process (the spool, its lock and the baseline live
/// there, and the collector knows the node by its name). A restart takes them.
fn fixed_at_start(old: &Config, new: &Config) -> Option<String> {
    if new.node_name != old.node_name {
        return Some(format!(
            "node_name cannot change on reload ({:?} -> {:?}); restart the agent to change it",
            old.node_name, new.node_name
        ));
    }
    if new.state_dir != old.state_dir {
        return Some(format!(
            "state_dir cannot change on reload ({} -> {}); restart the agent to change it",
            old.state_dir.display(),
            new.state_dir.display()
        ));
    }
    None
}

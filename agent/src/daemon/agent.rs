//! The running agent's parts and what the loop asks of them: detect and commit, probe
//! rounds, the shipper, the fixer's requests and events, reload and stop, the status.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use super::ConfigSource;
use super::commit::Committer;
use super::detect::{Detector, Why};
use crate::config::Config;
use crate::event::EventBody;
use crate::scan::Dirty;
use crate::spool::{BaselineWrite, Spool};
use crate::status::{FileStatus, FixStatus, OpenFinding, Status};
use crate::watch::{Shared, Watch};

/// How long a stopping agent waits for the fixer to roll back a fix in its gate (the unit's
/// TimeoutStopSec is 15 s).
const FIX_STOP_GRACE: Duration = Duration::from_secs(10);

/// What one probe round saw, by kube-apiserver manifest (`Err`: why it was not probed).
pub type LiveRound = Vec<(PathBuf, Result<crate::live::Observed, String>)>;

/// Channels to the other tasks: the shipper, the fixer, probe rounds.
pub struct Links {
    /// Tells the shipper the highest committed sequence number.
    pub last_seq: watch::Sender<u64>,
    /// Where the shipper sends acks.
    pub acks: mpsc::Sender<u64>,
    /// What the node looks like, for the shipper's hello and heartbeats.
    pub summary: watch::Sender<crate::ship::NodeSummary>,
    /// Tells the fixer how many of its events are committed.
    pub fix_committed: watch::Sender<u64>,
    /// Manifests the fixer should look at.
    pub fix_requests: mpsc::UnboundedSender<PathBuf>,
    /// The config, for the fixer.
    pub fix_config: watch::Sender<Config>,
    /// Where probe rounds send what they saw.
    pub live_results: mpsc::UnboundedSender<LiveRound>,
}

pub struct Agent {
    pub cfg: Config,
    pub source: ConfigSource,
    pub spool: Spool,
    pub committed: Committer,
    pub detector: Detector,
    pub watch: Watch,
    pub shared: Arc<Shared>,
    pub links: Links,
    started: String,
    /// Directories that could not be watched at the last arming (warned about once).
    unwatchable: BTreeSet<PathBuf>,
    /// The running shipper.
    pub shipper: Option<Shipper>,
    /// When kube-apiserver is probed next.
    live: crate::live::Schedule,
    /// What the metrics count.
    pub counters: crate::metrics::Counters,
}

pub struct Shipper {
    cfg: crate::ship::ShipConfig,
    pub task: tokio::task::JoinHandle<()>,
    pub status: Arc<std::sync::Mutex<crate::ship::ShipStatus>>,
}

impl Agent {
    pub fn new(
        cfg: Config,
        source: ConfigSource,
        spool: Spool,
        committed: Committer,
        detector: Detector,
        watch: Watch,
        links: Links,
    ) -> Self {
        Agent {
            cfg,
            source,
            spool,
            committed,
            detector,
            shared: Arc::clone(watch.shared()),
            watch,
            links,
            started: crate::event::now_rfc3339(),
            unwatchable: BTreeSet::new(),
            shipper: None,
            live: Default::default(),
            counters: Default::default(),
        }
    }

    /// Ticks every rescan interval (never with rescans off).
    pub fn rescan_timer(&self) -> tokio::time::Interval {
        let period = self
            .cfg
            .rescan_interval
            .unwrap_or(Duration::from_secs(365 * 24 * 3600));
        timer(period)
    }

    /// Ticks when certificate expiry is to be judged again.
    pub fn clock_timer(&self) -> tokio::time::Interval {
        timer(self.cfg.tls.recheck_interval)
    }

    /// When the next probe round is due (never with probes off).
    pub fn live_due(&self) -> Option<Instant> {
        self.cfg.live.enabled.then(|| self.live.due()).flatten()
    }

    /// Starts a probe round of the kube-apiserver manifests the last scan found, off the
    /// loop (a probe waits on the network).
    pub fn start_probes(&mut self) {
        let targets = self.detector.scanner.live_targets();
        self.live.start(targets.clone());
        let (tx, timeout) = (self.links.live_results.clone(), self.cfg.live.timeout);
        tokio::task::spawn_blocking(move || {
            let round: LiveRound = targets
                .into_iter()
                .map(|(path, t)| (path, t.map(|t| crate::live::probe(&t, timeout))))
                .collect();
            let _ = tx.send(round);
        });
    }

    /// A probe round ended: its findings go into the manifests' state, and out as events.
    pub fn probed(&mut self, round: LiveRound) {
        self.live.finished(self.cfg.live.interval, Instant::now());
        let cat = &self.cfg.catalogue;
        let mut dirty = Dirty::default();
        for (path, seen) in round {
            let seen = seen.as_ref().map_err(String::as_str);
            let findings = crate::rules::eval::evaluate_live(cat, seen);
            self.detector.scanner.set_live(cat, &path, &findings);
            dirty.paths.insert(path);
        }
        self.process(&dirty, None);
    }

    /// Starts (or restarts, when its config changed) the shipper.
    pub fn start_shipper(&mut self) {
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
            address: cfg.addresses[0].clone(),
            acked: self.spool.depth().acked,
            ..Default::default()
        }));
        let link = crate::ship::Link {
            last_seq: self.links.last_seq.subscribe(),
            summary: self.links.summary.subscribe(),
            acks: self.links.acks.clone(),
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

    /// Whether the shipper is connected now.
    pub fn connected(&self) -> bool {
        self.shipper
            .as_ref()
            .is_some_and(|s| s.status.lock().expect("status lock").connected)
    }

    /// First scan: compare with the persisted baseline, so that changes made while the agent
    /// was down are reported.
    pub fn start(&mut self) {
        let first_run = self.committed.baseline.is_empty();
        // Scan, watch what the scan found, then scan again: a change between the first scan
        // and the watches is in the second.
        let all = Dirty::all();
        let seen =
            (self.detector).detect(&self.cfg, &all, &self.committed.baseline, None, first_run);
        self.arm(&seen.watch);
        let seen =
            (self.detector).detect(&self.cfg, &all, &self.committed.baseline, None, first_run);
        self.arm(&seen.watch);
        let mut bodies = vec![EventBody::AgentStarted {
            agent_version: env!("CARGO_PKG_VERSION").into(),
            config_digest: self.cfg.digest(),
            rules_digest: self.cfg.rules_digest(),
            baseline: if first_run { "created" } else { "loaded" }.into(),
            files: seen.states.len(),
        }];
        bodies.extend(seen.bodies);
        tracing::info!(
            node = %self.cfg.node_name,
            files = seen.states.len(),
            watched_dirs = self.watch.armed().count(),
            first_run,
            "agent started"
        );
        self.commit(bodies, seen.writes);
    }

    fn arm(&mut self, dirs: &BTreeSet<PathBuf>) {
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
    pub async fn settle(&self) {
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

    /// Detects what changed in `dirty`, spools it, and asks the fixer to look. `why`: this
    /// is a rescan, and why.
    pub fn process(&mut self, dirty: &Dirty, why: Option<Why<'_>>) {
        if dirty.is_empty() {
            return;
        }
        let t0 = Instant::now();
        let seen = (self.detector).detect(&self.cfg, dirty, &self.committed.baseline, why, false);
        let detected = t0.elapsed();
        self.counters.scan.observe(detected);
        self.arm(&seen.watch);
        let targets = self.detector.scanner.live_targets();
        self.live
            .saw(&targets, self.cfg.live.after_change, Instant::now());
        let changed: Vec<String> = seen.writes.iter().map(|(k, _)| k.clone()).collect();
        self.request_fixes(&seen.states, if dirty.all { None } else { Some(&changed) });
        let armed = t0.elapsed();
        self.commit(seen.bodies, seen.writes);
        tracing::debug!(
            detect_us = detected.as_micros() as u64,
            arm_us = (armed - detected).as_micros() as u64,
            commit_us = (t0.elapsed() - armed).as_micros() as u64,
            "processed"
        );
    }

    /// Commits, then tells the shipper and the fixer what is durable.
    pub fn commit(&mut self, bodies: Vec<EventBody>, writes: Vec<BaselineWrite>) {
        let node = self.cfg.node_name.clone();
        let kinds: Vec<&'static str> = bodies.iter().map(EventBody::kind).collect();
        let t0 = Instant::now();
        let Some(done) = (self.committed).commit(&mut self.spool, &node, bodies, writes) else {
            return;
        };
        self.counters.commit.observe(t0.elapsed());
        for kind in kinds {
            *self.counters.events.entry(kind).or_default() += 1;
        }
        if done.events > 0 {
            self.links
                .last_seq
                .send_replace(self.spool.depth().last_seq);
        }
        if done.fix_events > 0 {
            self.links
                .fix_committed
                .send_modify(|c| *c += done.fix_events);
        }
        let mut new = self.committed.summary(self.spool.depth().last_seq);
        // The checks that apply to what runs here: a node without etcd has no etcd checks.
        let runs = |c: crate::manifest::Component| new.component_versions.contains_key(c.name());
        new.checked_cis = self.cfg.catalogue.cis_ids(runs);
        self.links.summary.send_if_modified(|s| {
            let changed = *s != new;
            *s = new;
            changed
        });
    }

    /// Commits events from the fixer.
    pub fn commit_fixer(&mut self, bodies: Vec<EventBody>) {
        self.committed.from_fixer(bodies.len());
        self.commit(bodies, Vec::new());
    }

    /// Trims the spool up to what the collector acknowledged.
    pub fn acked(&mut self, seq: u64) {
        if let Err(e) = self.spool.ack(seq) {
            tracing::error!(error = %e, seq, "cannot trim the spool");
        }
    }

    /// Asks the fixer to look at the manifests in `paths` (all of them when `None`) that have
    /// open findings in `states`.
    pub fn request_fixes(
        &self,
        states: &std::collections::BTreeMap<String, crate::baseline::PathState>,
        paths: Option<&[String]>,
    ) {
        if !self.cfg.fix.any() {
            return;
        }
        for (path, state) in states {
            let wanted = paths.is_none_or(|p| p.contains(path));
            if wanted && state.component.is_some() && !state.findings.is_empty() {
                let _ = self.links.fix_requests.send(PathBuf::from(path));
            }
        }
    }

    pub fn reload(&mut self) {
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
                self.links.fix_config.send_replace(self.cfg.clone());
                self.start_shipper();
                self.commit(vec![body], Vec::new());
                // Rules or paths may have changed: evaluate everything again.
                self.detector.reset();
                self.process(&Dirty::all(), None);
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
    pub async fn finish_fixes(
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
                    Some(body) => self.commit_fixer(vec![body]),
                    None => return, // the fixer is done
                },
                () = tokio::time::sleep_until(deadline) => break,
                () = tokio::time::sleep(Duration::from_millis(20)), if thread.is_finished() => {
                    while let Ok(body) = events.try_recv() {
                        self.commit_fixer(vec![body]);
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

    pub fn stop(&mut self, reason: &str) {
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

    /// The Prometheus exposition of the status and the counters; the certificates' expiry
    /// is that of the tracked `.crt` files and of the agent's own client certificate.
    pub fn metrics(&self) -> String {
        let status = self.status();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let own = (self.cfg.collector.as_ref())
            .and_then(|c| c.tls.as_ref())
            .map(|t| t.cert.display().to_string());
        let certs = crate::metrics::expiries(
            (status.files.iter())
                .filter(|f| f.kind == "file" && f.path.ends_with(".crt"))
                .map(|f| f.path.as_str())
                .chain(own.as_deref()),
            now,
        );
        crate::metrics::render(&status, &self.counters, &certs)
    }

    pub fn status(&self) -> Status {
        let mut open_findings = Vec::new();
        let files = self
            .committed
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
            last_event: self.committed.last_event.clone(),
            rescans: self.detector.rescans,
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

/// An interval whose first tick is one period from now, and that does not catch up.
fn timer(period: Duration) -> tokio::time::Interval {
    let mut t = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    t
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

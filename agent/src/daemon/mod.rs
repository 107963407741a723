//! `lockdown-agent run`: the long-running agent.
//!
//! One loop owns everything (config, baseline, spool, watches), so there is no locking but
//! the notify thread's pending set. It waits for: file events (then settles and scans what
//! they name), the periodic rescan, the certificate clock (expiry judged again), probe
//! rounds of kube-apiserver (run off the loop, their findings merged by the scanner), signals
//! (SIGTERM and SIGINT stop, SIGHUP reloads) and status requests on a Unix socket in the state
//! directory (`status`). This module is the loop; `detect` finds what changed, `commit`
//! spools it with the baseline, `agent` holds the parts.
//!
//! Every scan compares the new state of each tracked path with the baseline, and commits the
//! events and the new baseline in one spool transaction. If the commit fails (disk full),
//! the in-memory baseline is not advanced and a full rescan is retried, so the change is
//! reported once the spool can take it.

mod agent;
pub mod commit;
pub mod detect;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::UnixListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, watch};

use self::agent::{Agent, Links};
use self::commit::Committer;
use self::detect::{Detector, Why};
use crate::config::{Config, ConfigError, Overrides};
use crate::scan::Dirty;
use crate::spool::{Spool, SpoolError};
use crate::status::{SOCKET_FILE, Status, status_line};
use crate::watch::Watch;

/// How long a stopping agent waits for the collector to acknowledge what is left.
const FLUSH_ON_STOP: Duration = Duration::from_millis(500);
/// How often `STATUS=` is refreshed when there is no (shorter) watchdog.
const STATUS_EVERY: Duration = Duration::from_secs(10);

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
    let committed = Committer::new(spool.baseline()?);
    let watch = Watch::new()?;
    let (socket_path, listener) = status_socket(&cfg)?;
    let metrics = match cfg.metrics_port {
        None => None,
        Some(port) => {
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
            match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => Some(l),
                Err(e) => {
                    // Metrics are for operators; the agent goes on without them.
                    tracing::error!(%addr, error = %e, "cannot serve metrics");
                    None
                }
            }
        }
    };
    let (acks, mut acked) = mpsc::channel::<u64>(64);
    let own = Arc::new(crate::fix::policy::OwnWrites::default());
    let (fix_requests, fix_requests_rx) = mpsc::unbounded_channel();
    let (fix_events_tx, mut fix_events) = mpsc::unbounded_channel();
    let (fix_config, fix_config_rx) = watch::channel(cfg.clone());
    let (fix_committed, fix_committed_rx) = watch::channel(0u64);
    let (live_results, mut live_rounds) = mpsc::unbounded_channel();
    let fixer = crate::fix::fixer::Fixer::new(cfg.clone(), Arc::clone(&own));
    let links = Links {
        last_seq: watch::channel(spool.depth().last_seq).0,
        acks,
        summary: watch::channel(Default::default()).0,
        fix_committed,
        fix_requests,
        fix_config,
        live_results,
    };
    let detector = Detector::new(own);
    let mut agent = Agent::new(cfg, source, spool, committed, detector, watch, links);
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
    agent.request_fixes(&agent.committed.baseline, None);
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
        let retry = agent.committed.retry_at;
        tokio::select! {
            () = agent.shared.wake.notified() => {
                agent.settle().await;
                let mut pending = agent.shared.take();
                let (cfg, baseline) = (&agent.cfg, &agent.committed.baseline);
                pending.paths.retain(|p| detect::relevant(cfg, baseline, p));
                if pending.rescan.is_none() && pending.paths.is_empty() {
                    continue;
                }
                tracing::debug!(paths = pending.paths.len(), rescan = ?pending.rescan, "file events");
                match &pending.rescan {
                    Some(reason) => agent.process(&Dirty::all(), Some(Why { reason, always_say: true })),
                    None => agent.process(&Dirty { paths: pending.paths, ..Dirty::default() }, None),
                }
            }
            // Certificates expire without a file change.
            _ = clock.tick() => agent.process(&Dirty::clock(), None),
            _ = rescan.tick() => {
                let reason = "periodic rescan found changes inotify did not report";
                agent.process(&Dirty::all(), Some(Why { reason, always_say: false }));
            }
            () = sleep_until_opt(agent.live_due()) => agent.start_probes(),
            Some(round) = live_rounds.recv() => agent.probed(round),
            () = sleep_until_opt(retry) => {
                agent.committed.retry_at = None;
                let reason = "retry after the spool refused a commit";
                agent.process(&Dirty::all(), Some(Why { reason, always_say: false }));
            }
            Some(seq) = acked.recv() => agent.acked(seq),
            Some(body) = fix_events.recv() => {
                let mut bodies = vec![body];
                while let Ok(b) = fix_events.try_recv() {
                    bodies.push(b);
                }
                agent.commit_fixer(bodies);
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
            Ok((conn, _)) = accept(metrics.as_ref()) => {
                tokio::spawn(crate::metrics::answer(conn, agent.metrics()));
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
    if agent.connected() {
        let deadline = tokio::time::Instant::now() + FLUSH_ON_STOP;
        while agent.spool.depth().acked < agent.spool.depth().last_seq {
            match tokio::time::timeout_at(deadline, acked.recv()).await {
                Ok(Some(seq)) => agent.acked(seq),
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

/// Creates the status socket (0600) in the state directory. A stale one is ours to remove:
/// the spool's lock is held.
/// The next connection to `listener`; with none, never.
async fn accept(
    listener: Option<&tokio::net::TcpListener>,
) -> std::io::Result<(tokio::net::TcpStream, std::net::SocketAddr)> {
    match listener {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

fn status_socket(cfg: &Config) -> Result<(PathBuf, UnixListener), DaemonError> {
    use std::os::unix::fs::PermissionsExt;
    let path = cfg.state_dir.join(SOCKET_FILE);
    let _ = std::fs::remove_file(&path);
    let failed = |source| DaemonError::Socket {
        path: path.clone(),
        source,
    };
    let listener = UnixListener::bind(&path).map_err(failed)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(failed)?;
    Ok((path, listener))
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

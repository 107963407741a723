//! The fixer's policies, each with its persistence beside it:
//! - the pause (`<state_dir>/fix-paused`, written by `lockdown-agent pause`): fixing stops,
//!   detection goes on;
//! - the quarantine (`<state_dir>/fix-quarantine.json`): a fix rolled back is not tried again
//!   while the file holds the bytes it was rolled back to;
//! - the fight guard (`<state_dir>/fix-fights.json`, so that `Restart=always` cannot make the
//!   agent fight forever): a file fixed `fight_max` times within `fight_window` that drifts
//!   again is not fixed any more until the agent is reloaded;
//! - own writes: the bytes the fixer wrote, which the daemon does not report as drift.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::write::{self, WriteError};

/// The pause file in the state directory.
pub const PAUSE_FILE: &str = "fix-paused";

/// Where fixing is paused until, if it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pause {
    /// RFC 3339 time the pause ends; `None`: until `lockdown-agent resume`.
    pub until: Option<String>,
}

/// Reads the pause file: `Some(description)` while fixing is paused.
pub fn paused(state_dir: &Path) -> Option<String> {
    let path = state_dir.join(PAUSE_FILE);
    let bytes = std::fs::read(&path).ok()?;
    match serde_json::from_slice::<Pause>(&bytes) {
        Ok(Pause { until: None }) => Some("paused until `lockdown-agent resume`".into()),
        Ok(Pause { until: Some(t) }) => match humantime::parse_rfc3339(&t) {
            Ok(end) if end > SystemTime::now() => Some(format!("paused until {t}")),
            Ok(_) => None,
            Err(e) => Some(format!(
                "paused: {} has an unreadable time ({e}); remove it to resume",
                path.display()
            )),
        },
        // Fail safe: an unreadable pause file still pauses.
        Err(e) => Some(format!(
            "paused: {} is unreadable ({e}); remove it to resume",
            path.display()
        )),
    }
}

/// Writes the pause file (`None`: until resumed).
pub fn pause(state_dir: &Path, duration: Option<Duration>) -> Result<Pause, WriteError> {
    let until =
        duration.map(|d| humantime::format_rfc3339_seconds(SystemTime::now() + d).to_string());
    let p = Pause { until };
    crate::spool::private_dir(state_dir).map_err(|source| WriteError::Io {
        what: "cannot create",
        path: state_dir.to_path_buf(),
        source,
    })?;
    let bytes = serde_json::to_vec(&p).expect("pause serialises");
    write::save_state_file(&state_dir.join(PAUSE_FILE), &bytes)?;
    Ok(p)
}

/// Removes the pause file. Returns whether there was one.
pub fn resume(state_dir: &Path) -> Result<bool, WriteError> {
    let path = state_dir.join(PAUSE_FILE);
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(WriteError::Io {
            what: "cannot remove",
            path,
            source,
        }),
    }
}

/// The quarantine file in the state directory.
pub const QUARANTINE_FILE: &str = "fix-quarantine.json";

/// A rolled-back fix, held while the file has the bytes it was rolled back to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quarantine {
    /// sha256 of the file when quarantined.
    pub sha256: String,
    /// Rules whose fix was undone.
    pub rules: Vec<String>,
    /// Why.
    pub reason: String,
}

/// The quarantined fixes recorded in `state_dir`, by path.
pub fn load_quarantine(state_dir: &Path) -> BTreeMap<String, Quarantine> {
    load(state_dir, QUARANTINE_FILE, "fix quarantine")
}

/// The fight guard's memory in the state directory.
pub const FIGHTS_FILE: &str = "fix-fights.json";

/// What the fight guard remembers of one file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fights {
    /// When each recent fix was applied (seconds since the epoch).
    pub fixed_at: VecDeque<u64>,
    /// Fixing this file stopped (until a reload).
    pub stopped: bool,
}

/// The fight guard's memory recorded in `state_dir`, by path.
pub fn load_fights(state_dir: &Path) -> BTreeMap<String, Fights> {
    load(state_dir, FIGHTS_FILE, "fight guard")
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Bytes the agent itself wrote, by path: the daemon does not report them as drift.
#[derive(Debug, Default)]
pub struct OwnWrites(Mutex<HashMap<String, String>>);

impl OwnWrites {
    pub(crate) fn expect(&self, path: &str, sha256: &str) {
        self.0
            .lock()
            .expect("own writes lock")
            .insert(path.to_string(), sha256.to_string());
    }

    pub(crate) fn forget(&self, path: &str) {
        self.0.lock().expect("own writes lock").remove(path);
    }

    /// True (once) when `sha256` is what the agent last wrote to `path`.
    pub fn take_if_own(&self, path: &str, sha256: Option<&str>) -> bool {
        let mut own = self.0.lock().expect("own writes lock");
        match (own.get(path), sha256) {
            (Some(ours), Some(seen)) if ours == seen => {
                own.remove(path);
                true
            }
            _ => false,
        }
    }
}

/// A policy's state by path, from its file; an unreadable file is logged and the policy
/// starts without it.
fn load<T: serde::de::DeserializeOwned>(
    state_dir: &Path,
    file: &str,
    what: &str,
) -> BTreeMap<String, T> {
    let path = state_dir.join(file);
    match std::fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b).unwrap_or_else(|e| {
            tracing::error!(path = %path.display(), error = %e, "unreadable {what}; starting without it");
            BTreeMap::new()
        }),
        Err(_) => BTreeMap::new(),
    }
}

/// State files are written whole and durably; a failure is logged, and the policy goes on in
/// memory.
pub(crate) fn save<T: Serialize>(state_dir: &Path, file: &str, value: &T, what: &str) {
    let bytes = serde_json::to_vec_pretty(value).expect("policy state serialises");
    if let Err(e) = write::save_state_file(&state_dir.join(file), &bytes) {
        tracing::error!(error = %e, "cannot save the {what}");
    }
}

impl Fights {
    /// Whether another fix at `now` is allowed: fixes older than `window` are forgotten; at
    /// `max` recent fixes the file is stopped (and `Err` says how many there were).
    pub fn admit(&mut self, now: u64, window: Duration, max: u32) -> Result<(), usize> {
        while self
            .fixed_at
            .front()
            .is_some_and(|t| now.saturating_sub(*t) > window.as_secs())
        {
            self.fixed_at.pop_front();
        }
        if self.fixed_at.len() >= max as usize {
            self.stopped = true;
            return Err(self.fixed_at.len());
        }
        self.fixed_at.push_back(now);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fight_guard_stops_at_max_fixes_within_the_window_and_forgets_older_ones() {
        let window = Duration::from_secs(600);
        let mut f = Fights::default();
        assert_eq!(f.admit(1_000, window, 3), Ok(()));
        assert_eq!(f.admit(1_100, window, 3), Ok(()));
        assert_eq!(f.admit(1_200, window, 3), Ok(()));
        assert_eq!(f.admit(1_300, window, 3), Err(3));
        assert!(f.stopped);
        // Ten minutes after the first two, they no longer count.
        let mut g = Fights::default();
        for t in [1_000, 1_100, 1_700] {
            assert_eq!(g.admit(t, window, 3), Ok(()));
        }
        assert_eq!(
            g.admit(1_750, window, 3),
            Ok(()),
            "1000 has gone out of the window"
        );
        assert!(!g.stopped);
    }

    #[test]
    fn an_unreadable_pause_file_still_pauses() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(paused(dir.path()), None);
        std::fs::write(dir.path().join(PAUSE_FILE), b"{not json").unwrap();
        assert!(paused(dir.path()).unwrap().contains("unreadable"));
        assert!(resume(dir.path()).unwrap());
        assert_eq!(paused(dir.path()), None);
        pause(dir.path(), Some(Duration::from_secs(3600))).unwrap();
        assert!(paused(dir.path()).unwrap().starts_with("paused until "));
    }
}

//! What the running agent says about itself on its status socket (`lockdown-agent status`,
//! systemd's `STATUS=`): the types, the one-line form, and the client side of the socket.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::event::FindingRecord;
use crate::spool::Depth;

/// Status socket file name in the state directory.
pub const SOCKET_FILE: &str = "agent.sock";

/// What `lockdown-agent status` shows: the running agent's view.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    /// Node name.
    pub node: String,
    /// Agent version.
    pub agent_version: String,
    /// Process id.
    pub pid: u32,
    /// When it started (RFC 3339).
    pub started: String,
    /// Directories under inotify watch.
    pub watched_dirs: Vec<String>,
    /// Tracked files and directories.
    pub files: Vec<FileStatus>,
    /// Open findings.
    pub open_findings: Vec<OpenFinding>,
    /// Spool depth.
    pub spool: Depth,
    /// The last event spooled.
    pub last_event: Option<LastEvent>,
    /// Full rescans done since start (periodic, overflow, retries, reloads).
    pub rescans: u64,
    /// The shipper, when a collector is configured.
    pub collector: Option<crate::ship::ShipStatus>,
    /// Automatic fixing.
    #[serde(default)]
    pub fix: FixStatus,
}

/// Automatic fixing in [`Status`].
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FixStatus {
    /// The mode for every rule.
    pub mode: String,
    /// Rules with their own mode.
    pub rules: std::collections::BTreeMap<String, String>,
    /// Why fixing is paused, when it is.
    pub paused: Option<String>,
    /// Files whose fix was rolled back, with the reason.
    pub quarantined: std::collections::BTreeMap<String, String>,
}

/// One tracked path in [`Status`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileStatus {
    /// Path.
    pub path: String,
    /// `file`, `directory`, `other`, or empty when it could not be observed.
    pub kind: String,
    /// Mode in octal.
    pub mode: String,
    /// Why it could not be read or parsed.
    pub error: Option<String>,
}

/// One open finding in [`Status`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OpenFinding {
    /// Path.
    pub path: String,
    /// The finding.
    #[serde(flatten)]
    pub finding: FindingRecord,
}

/// The last event in [`Status`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LastEvent {
    /// Sequence number.
    pub seq: u64,
    /// Kind.
    pub kind: String,
    /// Time.
    pub time: String,
    /// The file, if any.
    pub path: Option<String>,
}

/// The one-line status systemd shows (`systemctl status`).
pub fn status_line(s: &Status) -> String {
    let collector = match &s.collector {
        None => "no collector".to_string(),
        Some(c) if c.connected => format!("collector {} connected", c.address),
        Some(c) => format!("collector {} not connected", c.address),
    };
    let fixing = match (&s.fix.paused, s.fix.mode.as_str()) {
        (Some(_), _) => ", fixing paused".to_string(),
        (None, "off") if s.fix.rules.is_empty() => String::new(),
        (None, mode) => format!(", fix {mode}"),
    };
    format!(
        "watching {} files in {} directories, {} open findings, spool {} events, {collector}{fixing}",
        s.files.len(),
        s.watched_dirs.len(),
        s.open_findings.len(),
        s.spool.events,
    )
}

/// Why the running agent's status could not be had.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// Nothing listens on the socket: no agent runs with this state directory. Retrying
    /// helps only once one is started.
    #[error("no agent answers on {}: {source} (is lockdown-agent running with this state directory?)", socket.display())]
    NotRunning {
        /// The status socket.
        socket: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// An agent accepted the connection but its answer failed or was cut short (a busy or
    /// stopping agent): retrying may help.
    #[error("reading {}: {source}", socket.display())]
    Read {
        /// The status socket.
        socket: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The answer is not a status (another version, or not an agent): retrying cannot help.
    #[error("unreadable status from {}: {source}", socket.display())]
    Garbled {
        /// The status socket.
        socket: PathBuf,
        /// Cause.
        source: serde_json::Error,
    },
}

impl StatusError {
    /// Whether asking again can succeed.
    pub fn retry_helps(&self) -> bool {
        matches!(self, StatusError::Read { .. })
    }
}

/// Asks the agent running on `state_dir` for its status.
pub fn query_status(state_dir: &Path) -> Result<Status, StatusError> {
    use std::io::Read;
    let socket = state_dir.join(SOCKET_FILE);
    let mut stream = match std::os::unix::net::UnixStream::connect(&socket) {
        Ok(s) => s,
        Err(source) => return Err(StatusError::NotRunning { socket, source }),
    };
    let mut buf = Vec::new();
    if let Err(source) = stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .and_then(|()| stream.read_to_end(&mut buf))
    {
        return Err(StatusError::Read { socket, source });
    }
    serde_json::from_slice(&buf).map_err(|source| StatusError::Garbled { socket, source })
}

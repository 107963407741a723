//! What the running agent says about itself on its status socket (`lockdown-agent status`,
//! systemd's `STATUS=`): the types, the one-line form, and the client side of the socket.

use std::path::Path;
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

/// Asks the agent running on `state_dir` for its status.
pub fn query_status(state_dir: &Path) -> Result<Status, String> {
    use std::io::Read;
    let path = state_dir.join(SOCKET_FILE);
    let mut stream = std::os::unix::net::UnixStream::connect(&path).map_err(|e| {
        format!(
            "no agent answers on {}: {e} (is lockdown-agent running with this state directory?)",
            path.display()
        )
    })?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    stream
        .read_to_end(&mut buf)
        .map_err(|e| format!("reading {}: {e}", path.display()))?;
    serde_json::from_slice(&buf)
        .map_err(|e| format!("unreadable status from {}: {e}", path.display()))
}

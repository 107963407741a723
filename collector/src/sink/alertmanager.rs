//! The Alertmanager sink: every open finding its filter selects is a firing alert on
//! Alertmanager's v2 API (`POST /api/v2/alerts`), and alerts clear by themselves.
//!
//! - An alert's labels are stable: `alertname="KubeLockdownFinding"`, `node`, `cluster`,
//!   `rule`, `severity`, `cis`, `path` (empty ones left out), so Alertmanager groups and
//!   deduplicates them; its annotations say what was observed and what is expected.
//! - Every open finding is sent again every `resend` with `endsAt` four resends ahead, as
//!   Prometheus does: an alert the collector stops sending (it stopped, it lost its store)
//!   resolves by itself once that passes.
//! - A finding resolved, now covered by an exception, or no longer selected is sent once with
//!   `endsAt` now: its alert clears at once. After events that changed the open findings,
//!   only what changed is sent.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use super::Sink;
use super::webhook::Webhook;
use crate::store::{FindingRow, Stored};

/// Alerts in one POST, at most.
const CHUNK: usize = 500;

/// An Alertmanager sink.
pub struct AlertmanagerSink {
    name: String,
    api: Webhook,
    resend: Duration,
    /// What was last sent as firing, by its labels.
    firing: HashMap<Vec<(&'static str, String)>, serde_json::Value>,
}

impl AlertmanagerSink {
    /// The sink `name`, posting to `api` (`<alertmanager>/api/v2/alerts`) and sending every
    /// open finding again every `resend`.
    pub fn new(name: String, api: Webhook, resend: Duration) -> AlertmanagerSink {
        AlertmanagerSink {
            name,
            api,
            resend,
            firing: HashMap::new(),
        }
    }
}

/// The labels of a finding's alert.
pub fn labels(f: &FindingRow) -> Vec<(&'static str, String)> {
    [
        ("alertname", "KubeLockdownFinding".to_string()),
        ("node", f.node.clone()),
        ("cluster", f.cluster.clone()),
        ("rule", f.finding.rule_id.clone()),
        ("severity", f.finding.severity.clone()),
        ("cis", f.finding.cis.clone()),
        ("path", f.finding.path.clone()),
    ]
    .into_iter()
    .filter(|(_, v)| !v.is_empty())
    .collect()
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// The alert of an open finding, ending at `ends`.
fn alert(f: &FindingRow, labels: &[(&'static str, String)], ends: &str) -> serde_json::Value {
    let labels: serde_json::Map<String, serde_json::Value> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone().into()))
        .collect();
    let g = &f.finding;
    let mut description = format!("{} on {}", g.title, f.node);
    if !g.observed.is_empty() || !g.expected.is_empty() {
        description.push_str(&format!(
            ": observed {:?}, expected {:?}",
            g.observed, g.expected
        ));
    }
    serde_json::json!({
        "labels": labels,
        "annotations": {
            "summary": g.title,
            "description": description,
            "component": g.component,
            "version": f.version,
        },
        "startsAt": f.since,
        "endsAt": ends,
    })
}

impl Sink for AlertmanagerSink {
    fn name(&self) -> &str {
        &self.name
    }

    /// Events themselves are not alerts: the open findings they change are (below).
    fn takes_events(&self) -> bool {
        false
    }

    async fn deliver(&mut self, _events: &[Stored]) -> anyhow::Result<()> {
        Ok(())
    }

    fn findings_every(&self) -> Option<Duration> {
        Some(self.resend)
    }

    async fn findings(&mut self, open: &[FindingRow], full: bool) -> anyhow::Result<()> {
        let now = SystemTime::now();
        let ends = rfc3339(now + self.resend * 4);
        let mut current = HashMap::with_capacity(open.len());
        let mut send = Vec::new();
        for f in open {
            let l = labels(f);
            let a = alert(f, &l, &ends);
            if full || !self.firing.contains_key(&l) {
                send.push(a.clone());
            }
            current.insert(l, a);
        }
        // What no longer fires ends now.
        let ended = rfc3339(now);
        for (l, a) in &self.firing {
            if !current.contains_key(l) {
                let mut a = a.clone();
                a["endsAt"] = ended.clone().into();
                send.push(a);
            }
        }
        for chunk in send.chunks(CHUNK) {
            let body = serde_json::to_vec(chunk).expect("JSON values serialise");
            // Not all sent: what was firing before stays the reference, so the next call
            // sends the same changes again.
            self.api
                .post(body, None)
                .await
                .map_err(|e| e.context(format!("alertmanager {}", self.api.url())))?;
        }
        self.firing = current;
        Ok(())
    }
}

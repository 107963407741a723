//! The Falcosidekick sink: each event POSTed as the event Falcosidekick accepts from Falco,
//! so that its outputs (Slack, Teams, Loki, Elasticsearch, Kafka, ...) carry kube-lockdown's
//! events with no more code here.
//!
//! `output` is one line; `priority` maps our severity (critical: Critical, high: Error,
//! medium: Warning, low: Notice, info or none: Informational); `output_fields` holds only
//! short values, since some outputs turn each into a label, and never a diff or a body.

use anyhow::Context;

use super::Sink;
use super::webhook::Webhook;
use crate::store::Stored;

/// A Falcosidekick sink.
pub struct FalcosidekickSink {
    name: String,
    api: Webhook,
}

impl FalcosidekickSink {
    /// The sink `name` posting to `api` (Falcosidekick's listener, `http(s)://host:2801/`).
    pub fn new(name: String, api: Webhook) -> FalcosidekickSink {
        FalcosidekickSink { name, api }
    }
}

/// Falco's priority for one of our severities.
pub fn priority(severity: &str) -> &'static str {
    match severity {
        "critical" => "Critical",
        "high" => "Error",
        "medium" => "Warning",
        "low" => "Notice",
        _ => "Informational",
    }
}

/// The longest value kept in `output_fields`.
const FIELD_MAX: usize = 256;

/// The Falco event for one of ours.
pub fn event(s: &Stored) -> serde_json::Value {
    let e = &s.event;
    let body: serde_json::Value = serde_json::from_slice(&e.body).unwrap_or_default();
    let output = format!("kube-lockdown: {}", super::summary(s));
    let short = |v: &str| v.chars().take(FIELD_MAX).collect::<String>();
    let mut fields = serde_json::Map::new();
    for (k, v) in [
        ("lockdown.id", format!("{}/{}/{}", e.node, e.epoch, e.seq)),
        ("lockdown.kind", e.kind.clone()),
        ("lockdown.node", e.node.clone()),
        ("lockdown.severity", e.severity.clone()),
        ("lockdown.rule", e.rule_id.clone()),
        ("lockdown.path", e.path.clone()),
        (
            "lockdown.cis",
            body["finding"]["cis"].as_str().unwrap_or_default().into(),
        ),
        (
            "lockdown.observed",
            body["finding"]["observed"]
                .as_str()
                .unwrap_or_default()
                .into(),
        ),
    ] {
        if !v.is_empty() {
            fields.insert(k.into(), short(&v).into());
        }
    }
    let mut tags = vec!["kube-lockdown".to_string(), e.kind.clone()];
    if !e.rule_id.is_empty() {
        tags.push(e.rule_id.clone());
    }
    serde_json::json!({
        "output": output,
        "priority": priority(&e.severity),
        "rule": if e.rule_id.is_empty() { e.kind.clone() } else { e.rule_id.clone() },
        "time": e.time,
        "output_fields": fields,
        "source": "kube-lockdown",
        "tags": tags,
        "hostname": e.node,
    })
}

impl Sink for FalcosidekickSink {
    fn name(&self) -> &str {
        &self.name
    }

    async fn deliver(&mut self, events: &[Stored]) -> anyhow::Result<()> {
        // Falcosidekick takes one event a request.
        for s in events {
            let body = serde_json::to_vec(&event(s)).expect("JSON values serialise");
            let id = format!("{}:{}", self.name, s.cursor);
            self.api
                .post(body, Some(&id))
                .await
                .with_context(|| format!("falcosidekick {}", self.api.url()))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_is_what_falcosidekick_takes_with_short_fields_only() {
        let body = serde_json::json!({
            "kind": "finding_raised",
            "finding": {"rule_id": "apiserver-anonymous-auth", "title": "Anonymous auth is off",
                        "cis": "1.2.1", "observed": "x".repeat(5000)},
            "diff": "--- a\n+++ b\n",
        });
        let s = Stored {
            cursor: 9,
            event: lockdown_proto::v1::Event {
                node: "cp-1".into(),
                epoch: 4,
                seq: 7,
                time: "2026-12-02T10:00:00.000Z".into(),
                kind: "finding_raised".into(),
                severity: "critical".into(),
                rule_id: "apiserver-anonymous-auth".into(),
                path: "/etc/kubernetes/manifests/kube-apiserver.yaml".into(),
                body: body.to_string().into_bytes(),
            },
        };
        let v = event(&s);
        assert_eq!(v["priority"], "Critical");
        assert_eq!(v["rule"], "apiserver-anonymous-auth");
        assert_eq!(v["hostname"], "cp-1");
        assert_eq!(v["source"], "kube-lockdown");
        assert_eq!(v["output_fields"]["lockdown.id"], "cp-1/4/7");
        assert_eq!(v["output_fields"]["lockdown.cis"], "1.2.1");
        let fields = v["output_fields"].as_object().unwrap();
        assert!(
            fields
                .values()
                .all(|f| f.as_str().unwrap().len() <= FIELD_MAX)
        );
        assert!(!v.to_string().contains("+++ b"), "no diff");
        assert_eq!(
            v["output"],
            "kube-lockdown: finding raised on cp-1: apiserver-anonymous-auth (Anonymous auth is off) in /etc/kubernetes/manifests/kube-apiserver.yaml"
        );
        for (ours, falco) in [
            ("high", "Error"),
            ("medium", "Warning"),
            ("low", "Notice"),
            ("", "Informational"),
        ] {
            assert_eq!(priority(ours), falco);
        }
    }
}

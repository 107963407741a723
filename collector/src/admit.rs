//! What the collector accepts from an agent, decided without IO: the hello's identity fields
//! and each event batch. Every check answers with the gRPC status the agent gets
//! (`invalid_argument`: do not resend as is). The fuzz target `collector_decode` drives
//! [`agent_message()`] on arbitrary bytes.

use lockdown_proto::v1::{AgentMessage, Event, Hello, agent_message};
use prost::Message;
use tonic::Status;

/// Most events in one batch message.
pub const MAX_BATCH_EVENTS: usize = 10_000;

/// Whether `n` can be a node name (a lower-case DNS name, as certificates carry).
pub fn node_name_ok(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 253
        && n.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

/// Checks a stream's opening hello.
pub fn hello(h: &Hello) -> Result<(), Status> {
    if h.spool_epoch == 0 || h.spool_epoch > i64::MAX as u64 {
        return Err(Status::invalid_argument("the hello has no spool_epoch"));
    }
    if !node_name_ok(&h.node) {
        return Err(Status::invalid_argument(format!(
            "{:?} is not a node name",
            h.node
        )));
    }
    if h.findings_as_of_seq > i64::MAX as u64 {
        return Err(Status::invalid_argument(
            "findings_as_of_seq is out of range",
        ));
    }
    Ok(())
}

/// Most open findings the collector keeps for one node (a kubeadm node has a few dozen; a
/// node with hundreds of kubeconfigs and certificates, a few hundred). Beyond it a
/// compromised agent could make every summary slow.
pub const MAX_NODE_FINDINGS: usize = 10_000;
/// Most CIS ids a hello may say its agent evaluates (the benchmark has about 130).
pub const MAX_CHECKED_CIS: usize = 1_000;

/// Whether `s` can be a CIS Kubernetes Benchmark id (1.2.3), or is empty.
pub fn cis_id_ok(s: &str) -> bool {
    s.is_empty()
        || (s.len() <= 16
            && s.split('.')
                .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())))
}

/// Checks the open findings a hello carries, for the store to make the node's set. Unlike
/// the hello's identity, a set that fails this does not end the stream (its events still
/// flow); the collector keeps the set its events built, and says why.
pub fn findings(h: &Hello) -> Result<(), String> {
    if h.findings.len() > MAX_NODE_FINDINGS {
        return Err(format!(
            "{} open findings, more than the {MAX_NODE_FINDINGS} the collector keeps per node",
            h.findings.len()
        ));
    }
    if h.checked_cis.len() > MAX_CHECKED_CIS || !h.checked_cis.iter().all(|c| cis_id_ok(c)) {
        return Err(format!(
            "checked_cis must be at most {MAX_CHECKED_CIS} CIS ids like 1.2.3"
        ));
    }
    for f in &h.findings {
        let why = if f.rule_id.is_empty() || f.key.is_empty() {
            "has no rule id or key"
        } else if !SEVERITIES.contains(&f.severity.as_str()) {
            "has no known severity"
        } else if !["fail", "warn"].contains(&f.status.as_str()) {
            "is neither fail nor warn"
        } else if !cis_id_ok(&f.cis) {
            "has a CIS id unlike 1.2.3"
        } else {
            continue;
        };
        return Err(format!("the finding {:?} on {:?} {why}", f.rule_id, f.path));
    }
    Ok(())
}

/// Checks a batch of events on the stream of `node`.
pub fn events(node: &str, events: &[Event]) -> Result<(), Status> {
    if events.is_empty() || events.len() > MAX_BATCH_EVENTS {
        return Err(Status::invalid_argument(format!(
            "a batch holds 1 to {MAX_BATCH_EVENTS} events, got {}",
            events.len()
        )));
    }
    for e in events {
        if e.node != node {
            return Err(Status::invalid_argument(format!(
                "event {} names node {:?} on the stream of {node:?}",
                e.seq, e.node
            )));
        }
        if e.seq == 0 || e.seq > i64::MAX as u64 || e.kind.is_empty() {
            return Err(Status::invalid_argument(format!(
                "event {} has no sequence number or no kind",
                e.seq
            )));
        }
        if humantime::parse_rfc3339(&e.time).is_err() {
            return Err(Status::invalid_argument(format!(
                "event {} has time {:?}, not RFC 3339",
                e.seq, e.time
            )));
        }
    }
    Ok(())
}

/// Decodes one agent message and checks it as the stream would: a hello on its own, a batch
/// as if it came on the stream of the node `stream_node`.
pub fn agent_message(bytes: &[u8], stream_node: &str) -> Result<(), Status> {
    let msg = AgentMessage::decode(bytes)
        .map_err(|e| Status::invalid_argument(format!("undecodable message: {e}")))?;
    match msg.msg {
        Some(agent_message::Msg::Hello(h)) => hello(&h),
        Some(agent_message::Msg::Events(b)) => {
            events(stream_node, &b.events)?;
            for e in &b.events {
                let _ = overflow_range(&e.body);
            }
            Ok(())
        }
        Some(_) => Ok(()),
        None => Err(Status::invalid_argument("an empty message")),
    }
}

/// Severities, lowest first.
pub const SEVERITIES: [&str; 5] = ["info", "low", "medium", "high", "critical"];

/// The dropped range a `spool_overflow` event's body names.
pub fn overflow_range(body: &[u8]) -> Option<(u64, u64)> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    Some((v.get("first_seq")?.as_u64()?, v.get("last_seq")?.as_u64()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_refused_with_invalid_argument() {
        for bytes in [&b"\xff\xff\xff"[..], b"", b"\x0a\x03abc"] {
            let e = agent_message(bytes, "cp-1").unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{bytes:?}");
        }
    }

    #[test]
    fn a_sequence_number_beyond_the_store_is_refused() {
        let e = Event {
            node: "cp-1".into(),
            seq: u64::MAX,
            time: "2026-01-01T00:00:00Z".into(),
            kind: "x".into(),
            ..Event::default()
        };
        assert!(events("cp-1", &[e]).is_err());
    }

    fn finding(cis: &str, severity: &str) -> lockdown_proto::v1::OpenFinding {
        lockdown_proto::v1::OpenFinding {
            path: "/etc/kubernetes/manifests/kube-apiserver.yaml".into(),
            key: "r".into(),
            rule_id: "r".into(),
            cis: cis.into(),
            severity: severity.into(),
            status: "fail".into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_hellos_set_is_taken_only_when_every_finding_and_check_id_is_sound() {
        let hello = |findings, checked_cis| Hello {
            findings,
            checked_cis,
            ..Default::default()
        };
        assert!(findings(&hello(vec![finding("1.2.1", "high")], vec!["1.2.1".into()])).is_ok());
        assert!(findings(&hello(vec![finding("", "low")], vec![])).is_ok());
        for bad in [
            hello(vec![finding("1.2.1", "urgent")], vec![]),
            hello(vec![finding("1..2", "high")], vec![]),
            hello(vec![finding("CVE-1", "high")], vec![]),
            hello(vec![], vec!["1.2.1; DROP".into()]),
            hello(vec![], vec!["1".into(); MAX_CHECKED_CIS + 1]),
            hello(
                vec![finding("1.2.1", "high"); MAX_NODE_FINDINGS + 1],
                vec![],
            ),
        ] {
            assert!(findings(&bad).is_err(), "{bad:?}");
        }
        assert!(
            !cis_id_ok("1.2.3.4.5.6.7.8.9"),
            "longer than any benchmark id"
        );
    }
}

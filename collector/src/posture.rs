//! Fleet posture, decided without IO: a node's state from when it was last heard from, and
//! the summary of what is open, per cluster and for the fleet. A node that is stale or
//! missing is never counted as passing a check: its checks are unknown.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, SystemTime};

use lockdown_proto::v1::{CisCount, Posture};

use crate::store::{FindingCount, NodeInfo};

/// Where a node stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum NodeState {
    /// Heard from within `stale_after`.
    Connected,
    /// Heard from, but not within `stale_after`.
    Stale,
    /// Expected, never heard from.
    Missing,
}

impl NodeState {
    /// As the API and the CLI say it.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Connected => "connected",
            NodeState::Stale => "stale",
            NodeState::Missing => "missing",
        }
    }

    /// The state of a node last heard from at `last_seen` (RFC 3339; empty: never).
    pub fn of(last_seen: &str, now: SystemTime, stale_after: Duration) -> NodeState {
        match humantime::parse_rfc3339(last_seen) {
            Ok(t) if now.duration_since(t).unwrap_or_default() <= stale_after => {
                NodeState::Connected
            }
            Ok(_) => NodeState::Stale,
            Err(_) => NodeState::Missing,
        }
    }
}

/// A node as the summary sees it.
#[derive(Debug, Clone)]
pub struct Member {
    /// Node name.
    pub node: String,
    /// Cluster label ("" when none).
    pub cluster: String,
    /// Its state.
    pub state: NodeState,
    /// The CIS ids its agent evaluates.
    pub checked_cis: Vec<String>,
}

/// Every node the store knows, with its state, and the expected nodes it has never heard of
/// as missing.
pub fn members(
    nodes: Vec<NodeInfo>,
    expected: &[String],
    now: SystemTime,
    stale_after: Duration,
) -> Vec<Member> {
    let known: BTreeSet<String> = nodes.iter().map(|n| n.node.clone()).collect();
    let mut out: Vec<Member> = nodes
        .into_iter()
        .map(|n| Member {
            state: NodeState::of(&n.last_seen, now, stale_after),
            node: n.node,
            cluster: n.cluster,
            checked_cis: n.checked_cis,
        })
        .collect();
    out.extend(
        expected
            .iter()
            .filter(|e| !known.contains(*e))
            .map(|e| Member {
                node: e.clone(),
                cluster: String::new(),
                state: NodeState::Missing,
                checked_cis: Vec::new(),
            }),
    );
    out
}

/// The fleet's posture and each cluster's (clusters sorted by name; nodes without a
/// cluster label count in the fleet only).
pub fn summarize(members: &[Member], counts: &[FindingCount]) -> (Posture, Vec<Posture>) {
    let by_node: HashMap<&str, Vec<&FindingCount>> =
        counts.iter().fold(HashMap::new(), |mut m, c| {
            m.entry(c.node.as_str()).or_default().push(c);
            m
        });
    let fleet = posture("", members.iter(), &by_node);
    let mut clusters: BTreeMap<&str, Vec<&Member>> = BTreeMap::new();
    for m in members.iter().filter(|m| !m.cluster.is_empty()) {
        clusters.entry(&m.cluster).or_default().push(m);
    }
    let clusters = clusters
        .into_iter()
        .map(|(name, ms)| posture(name, ms.into_iter(), &by_node))
        .collect();
    (fleet, clusters)
}

fn posture<'a>(
    cluster: &str,
    members: impl Iterator<Item = &'a Member> + Clone,
    by_node: &HashMap<&str, Vec<&FindingCount>>,
) -> Posture {
    let mut p = Posture {
        cluster: cluster.into(),
        ..Default::default()
    };
    // Every check any node in scope evaluates or fails.
    let mut checks: BTreeSet<&str> = BTreeSet::new();
    for m in members.clone() {
        *p.nodes_by_state.entry(m.state.as_str().into()).or_default() += 1;
        checks.extend(m.checked_cis.iter().map(String::as_str));
        for c in by_node.get(m.node.as_str()).into_iter().flatten() {
            *p.open_by_severity.entry(c.severity.clone()).or_default() += c.count;
            if c.excepted {
                p.excepted += c.count;
            }
            if !c.cis.is_empty() {
                checks.insert(&c.cis);
            }
        }
    }
    p.cis = checks
        .into_iter()
        .map(|cis| {
            let mut n = CisCount {
                cis: cis.into(),
                ..Default::default()
            };
            for m in members.clone() {
                let open: Vec<&&FindingCount> = (by_node.get(m.node.as_str()).into_iter())
                    .flatten()
                    .filter(|c| c.cis == cis)
                    .collect();
                if m.state != NodeState::Connected {
                    n.unknown += 1;
                } else if !open.is_empty() {
                    // An accepted risk still fails the check; it is counted as excepted too.
                    n.fail += 1;
                    if open.iter().all(|c| c.excepted) {
                        n.excepted += 1;
                    }
                } else if m.checked_cis.iter().any(|c| c == cis) {
                    n.pass += 1;
                } else {
                    n.unknown += 1; // its agent does not evaluate this check
                }
            }
            n
        })
        .collect();
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(node: &str, cluster: &str, state: NodeState) -> Member {
        Member {
            node: node.into(),
            cluster: cluster.into(),
            state,
            checked_cis: vec!["1.2.1".into(), "1.2.2".into()],
        }
    }

    fn open(node: &str, cis: &str, severity: &str) -> FindingCount {
        FindingCount {
            node: node.into(),
            cis: cis.into(),
            severity: severity.into(),
            status: "fail".into(),
            excepted: false,
            count: 1,
        }
    }

    #[test]
    fn a_node_heard_from_long_ago_is_stale_and_one_never_heard_from_is_missing() {
        let now = humantime::parse_rfc3339("2026-12-02T01:00:00Z").unwrap();
        let after = Duration::from_secs(30);
        assert_eq!(
            NodeState::of("2026-12-02T00:59:40.000Z", now, after),
            NodeState::Connected
        );
        assert_eq!(
            NodeState::of("2026-12-02T00:59:00.000Z", now, after),
            NodeState::Stale
        );
        assert_eq!(NodeState::of("", now, after), NodeState::Missing);
        let ms = members(
            vec![NodeInfo {
                node: "a".into(),
                last_seen: "2026-12-02T00:59:50.000Z".into(),
                ..Default::default()
            }],
            &["a".into(), "b".into()],
            now,
            after,
        );
        let states: Vec<_> = ms.iter().map(|m| (m.node.as_str(), m.state)).collect();
        assert_eq!(
            states,
            [("a", NodeState::Connected), ("b", NodeState::Missing)]
        );
    }

    #[test]
    fn stale_and_missing_nodes_never_pass_a_check() {
        let ms = [
            member("a", "prod", NodeState::Connected),
            member("b", "prod", NodeState::Stale),
            member("c", "dev", NodeState::Connected),
            member("d", "", NodeState::Missing),
        ];
        let counts = [open("a", "1.2.1", "high"), open("c", "1.3.2", "low")];
        let (fleet, clusters) = summarize(&ms, &counts);
        let get = |p: &Posture, cis: &str| {
            let c = p.cis.iter().find(|c| c.cis == cis).unwrap();
            (c.pass, c.fail, c.unknown)
        };
        // 1.2.1: a fails, b stale, c passes, d missing.
        assert_eq!(get(&fleet, "1.2.1"), (1, 1, 2));
        // 1.3.2: only c's agent fails it; nobody evaluates it otherwise.
        assert_eq!(get(&fleet, "1.3.2"), (0, 1, 3));
        assert_eq!(fleet.nodes_by_state["connected"], 2);
        assert_eq!(fleet.nodes_by_state["stale"], 1);
        assert_eq!(fleet.nodes_by_state["missing"], 1);
        assert_eq!(fleet.open_by_severity["high"], 1);
        let names: Vec<&str> = clusters.iter().map(|c| c.cluster.as_str()).collect();
        assert_eq!(names, ["dev", "prod"]);
        assert_eq!(get(&clusters[1], "1.2.1"), (0, 1, 1));
    }
}

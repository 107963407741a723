//! Fleet posture, decided without IO: a node's state from when it was last heard from, and
//! the summary of what is open, per cluster and for the fleet. A node that is stale or
//! missing is never counted as passing a check: its checks are unknown.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

use lockdown_proto::v1::{CisCount, Posture};

use crate::fnv::FnvMap;
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
    pub checked_cis: std::sync::Arc<[String]>,
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
                checked_cis: Default::default(),
            }),
    );
    out
}

/// CIS ids in the benchmark's order: 1.2.9 before 1.2.10 (numbers compared as numbers).
pub fn cis_order(a: &str, b: &str) -> std::cmp::Ordering {
    let parts = |s: &str| -> Vec<(u64, String)> {
        s.split('.')
            .map(|p| (p.parse().unwrap_or(u64::MAX), p.to_string()))
            .collect()
    };
    parts(a).cmp(&parts(b))
}

/// The CIS section a check belongs to: "1.2" for 1.2.16 (the control-plane sections are
/// numbered 1.1 to 1.4), "2" for 2.7 (etcd), "" for a check CIS does not have.
pub fn cis_section(id: &str) -> &str {
    let mut dots = id.match_indices('.').map(|(i, _)| i);
    match (id.starts_with("1."), dots.next(), dots.next()) {
        (true, Some(_), Some(second)) => &id[..second],
        (false, Some(first), _) => &id[..first],
        _ => id,
    }
}

/// A set of checks, by their number in the summary's list.
#[derive(Clone, Default, PartialEq)]
struct Checks(Vec<u64>);

impl Checks {
    fn with(n: usize) -> Checks {
        Checks(vec![0; n.div_ceil(64)])
    }
    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }
    fn has(&self, i: usize) -> bool {
        self.0[i / 64] & (1 << (i % 64)) != 0
    }
    fn add(&mut self, other: &Checks) {
        for (a, b) in self.0.iter_mut().zip(&other.0) {
            *a |= b;
        }
    }
    /// Whether this set and `other` share a check.
    fn meets(&self, other: &Checks) -> bool {
        self.0.iter().zip(&other.0).any(|(a, b)| a & b != 0)
    }
}

/// One node as the summary counts it.
struct Seen<'a> {
    member: &'a Member,
    by_severity: FnvMap<&'a str, u32>,
    excepted: u32,
    /// Checks it evaluates.
    checked: Checks,
    /// Checks with an open finding.
    failing: Checks,
    /// Checks with an open finding no exception covers.
    unexcepted: Checks,
}

/// The fleet's posture and each cluster's (clusters sorted by name; nodes without a
/// cluster label count in the fleet only). Checks are numbered once, and each node's are
/// bit sets, so that a fleet of thousands sums up in milliseconds (BENCHMARKS.md).
pub fn summarize(members: &[Member], counts: &[FindingCount]) -> (Posture, Vec<Posture>) {
    let mut names: BTreeSet<&str> = BTreeSet::new();
    let mut last: Option<&std::sync::Arc<[String]>> = None;
    for m in members {
        // Agents of one version evaluate the same list (the store shares it): each list once.
        if !last.is_some_and(|l| std::sync::Arc::ptr_eq(l, &m.checked_cis) || **l == *m.checked_cis)
        {
            names.extend(m.checked_cis.iter().map(String::as_str));
            last = Some(&m.checked_cis);
        }
    }
    let mut last = "";
    for c in counts.iter().map(|c| &*c.cis) {
        if c != last && !c.is_empty() {
            names.insert(c);
            last = c;
        }
    }
    let mut names: Vec<&str> = names.into_iter().collect();
    names.sort_by(|a, b| cis_order(a, b));
    let number: FnvMap<&str, usize> = names.iter().enumerate().map(|(i, n)| (*n, i)).collect();
    let mut seen: Vec<Seen<'_>> = Vec::with_capacity(members.len());
    let mut at: FnvMap<&str, usize> = FnvMap::default();
    for m in members {
        // Agents of one version evaluate the same list: number it once.
        let checked = match seen.last() {
            Some(prev)
                if std::sync::Arc::ptr_eq(&prev.member.checked_cis, &m.checked_cis)
                    || prev.member.checked_cis == m.checked_cis =>
            {
                prev.checked.clone()
            }
            _ => {
                let mut c = Checks::with(names.len());
                m.checked_cis
                    .iter()
                    .for_each(|id| c.set(number[id.as_str()]));
                c
            }
        };
        at.insert(&m.node, seen.len());
        seen.push(Seen {
            member: m,
            by_severity: FnvMap::default(),
            excepted: 0,
            checked,
            failing: Checks::with(names.len()),
            unexcepted: Checks::with(names.len()),
        });
    }
    for c in counts {
        let Some(&i) = at.get(&*c.node) else {
            continue; // a node the store holds findings of but no longer lists
        };
        let s = &mut seen[i];
        *s.by_severity.entry(&c.severity).or_default() += c.count;
        if c.excepted {
            s.excepted += c.count;
        }
        if let Some(&n) = number.get(&*c.cis) {
            s.failing.set(n);
            if !c.excepted {
                s.unexcepted.set(n);
            }
        }
    }
    let fleet = posture("", seen.iter(), &names);
    let mut clusters: BTreeMap<&str, Vec<&Seen<'_>>> = BTreeMap::new();
    for s in seen.iter().filter(|s| !s.member.cluster.is_empty()) {
        clusters.entry(&s.member.cluster).or_default().push(s);
    }
    let clusters = clusters
        .into_iter()
        .map(|(name, ss)| posture(name, ss.into_iter(), &names))
        .collect();
    (fleet, clusters)
}

fn posture<'a, 'b: 'a>(
    cluster: &str,
    seen: impl Iterator<Item = &'a Seen<'b>> + Clone,
    names: &[&str],
) -> Posture {
    let mut p = Posture {
        cluster: cluster.into(),
        ..Default::default()
    };
    // Every check a node in scope evaluates or fails.
    let mut scope = Checks::with(names.len());
    for s in seen.clone() {
        *p.nodes_by_state
            .entry(s.member.state.as_str().into())
            .or_default() += 1;
        for (severity, n) in &s.by_severity {
            *p.open_by_severity.entry((*severity).into()).or_default() += n;
        }
        p.excepted += s.excepted;
        scope.add(&s.checked);
        scope.add(&s.failing);
    }
    let mut counts: Vec<CisCount> = (0..names.len())
        .filter(|i| scope.has(*i))
        .map(|i| CisCount {
            cis: names[i].into(),
            ..Default::default()
        })
        .collect();
    let numbers: Vec<usize> = (0..names.len()).filter(|i| scope.has(*i)).collect();
    for s in seen.clone() {
        for (n, &i) in counts.iter_mut().zip(&numbers) {
            if s.member.state != NodeState::Connected {
                n.unknown += 1;
            } else if s.failing.has(i) {
                // An accepted risk still fails the check; it is counted as excepted too.
                n.fail += 1;
                n.excepted += u32::from(!s.unexcepted.has(i));
            } else if s.checked.has(i) {
                n.pass += 1;
            } else {
                n.unknown += 1; // its agent does not evaluate this check
            }
        }
    }
    p.cis = counts;
    // Sections, in the benchmark's order: each a set of the checks in scope.
    let mut sections: Vec<(&str, Checks)> = Vec::new();
    for &i in &numbers {
        let name = cis_section(names[i]);
        if sections.last().is_none_or(|(n, _)| *n != name) {
            sections.push((name, Checks::with(names.len())));
        }
        sections.last_mut().expect("pushed").1.set(i);
    }
    p.sections = sections
        .iter()
        .map(|(name, checks)| {
            let mut n = CisCount {
                cis: (*name).into(),
                ..Default::default()
            };
            for s in seen.clone() {
                if s.member.state != NodeState::Connected {
                    n.unknown += 1;
                } else if s.failing.meets(checks) {
                    n.fail += 1;
                    n.excepted += u32::from(!s.unexcepted.meets(checks));
                } else if s.checked.meets(checks) {
                    n.pass += 1;
                } else {
                    n.unknown += 1;
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
            checked_cis: vec!["1.2.1".to_string(), "1.2.2".to_string()].into(),
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
    fn checks_are_listed_in_the_benchmarks_order() {
        let mut ids = ["1.2.10", "2.1", "1.2.9", "1.10.1", "1.2.1"];
        ids.sort_by(|a, b| cis_order(a, b));
        assert_eq!(ids, ["1.2.1", "1.2.9", "1.2.10", "1.10.1", "2.1"]);
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
        let section = |p: &Posture, name: &str| {
            let c = p.sections.iter().find(|c| c.cis == name).unwrap();
            (c.pass, c.fail, c.unknown)
        };
        let order: Vec<&str> = fleet.sections.iter().map(|c| c.cis.as_str()).collect();
        assert_eq!(order, ["1.2", "1.3"]);
        // 1.2: a fails 1.2.1, c passes both of its checks, b stale, d missing.
        assert_eq!(section(&fleet, "1.2"), (1, 1, 2));
        // 1.3: c fails; a evaluates nothing there, so a is unknown, as are b and d.
        assert_eq!(section(&fleet, "1.3"), (0, 1, 3));
    }

    #[test]
    fn a_section_is_failed_by_any_check_in_it_and_excepted_only_when_all_of_them_are() {
        let ms = [member("a", "", NodeState::Connected)];
        let mut excepted = open("a", "1.2.1", "high");
        excepted.excepted = true;
        let (fleet, _) = summarize(&ms, std::slice::from_ref(&excepted));
        assert_eq!((fleet.sections[0].fail, fleet.sections[0].excepted), (1, 1));
        let (fleet, _) = summarize(&ms, &[excepted, open("a", "1.2.2", "low")]);
        assert_eq!((fleet.sections[0].fail, fleet.sections[0].excepted), (1, 0));
    }

    #[test]
    fn sections_are_the_benchmarks() {
        for (id, section) in [
            ("1.2.16", "1.2"),
            ("1.1.1", "1.1"),
            ("2.7", "2"),
            ("5.1.1", "5"),
            ("1.2", "1.2"),
            ("", ""),
        ] {
            assert_eq!(cis_section(id), section, "{id}");
        }
    }
}

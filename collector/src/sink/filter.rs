//! Which stored events a sink gets: kinds, a minimum severity, rules, clusters, nodes, and
//! whether findings an active exception covers are delivered (by default they are not: an
//! accepted risk does not alert).

use lockdown_proto::v1::Event;

use super::config::RawSinkFilter;
use crate::store::SEVERITIES;

/// A sink's filter; an empty list lets everything through.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SinkFilter {
    kinds: Vec<String>,
    /// The lowest severity's place in [`SEVERITIES`].
    min_rank: Option<usize>,
    rules: Vec<String>,
    clusters: Vec<String>,
    nodes: Vec<String>,
    /// Deliver findings an active exception covers too.
    pub excepted: bool,
}

impl SinkFilter {
    /// The filter as configured; an unknown severity is an error that names it.
    pub fn from_raw(raw: RawSinkFilter) -> Result<SinkFilter, String> {
        let min_rank = match raw.min_severity {
            None => None,
            Some(s) => Some(SEVERITIES.iter().position(|x| *x == s).ok_or_else(|| {
                format!(
                    "filter.min_severity {s:?} is not one of {}",
                    SEVERITIES.join(", ")
                )
            })?),
        };
        Ok(SinkFilter {
            kinds: raw.kinds,
            min_rank,
            rules: raw.rules,
            clusters: raw.clusters,
            nodes: raw.nodes,
            excepted: raw.excepted,
        })
    }

    /// Whether it selects by cluster (the node's cluster must be looked up).
    pub fn by_cluster(&self) -> bool {
        !self.clusters.is_empty()
    }

    /// The lowest severity it takes, if it has one.
    pub fn min_severity(&self) -> Option<&'static str> {
        self.min_rank.map(|r| SEVERITIES[r])
    }

    /// Whether an open finding passes (its kind is `finding_raised`; whether an exception
    /// covers it is the caller's question).
    pub fn wants_finding(&self, f: &crate::store::FindingRow) -> bool {
        let e = Event {
            kind: "finding_raised".into(),
            severity: f.finding.severity.clone(),
            rule_id: f.finding.rule_id.clone(),
            node: f.node.clone(),
            ..Default::default()
        };
        self.wants(&e, &f.cluster)
    }

    /// Whether `e`, of a node in `cluster`, passes every test but the exceptions'.
    pub fn wants(&self, e: &Event, cluster: &str) -> bool {
        let listed = |list: &[String], v: &str| list.is_empty() || list.iter().any(|x| x == v);
        let severe = match self.min_rank {
            None => true,
            Some(min) => SEVERITIES
                .iter()
                .position(|s| *s == e.severity)
                .is_some_and(|r| r >= min),
        };
        severe
            && listed(&self.kinds, &e.kind)
            && listed(&self.rules, &e.rule_id)
            && listed(&self.nodes, &e.node)
            && listed(&self.clusters, cluster)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: &str, severity: &str, rule: &str, node: &str) -> Event {
        Event {
            kind: kind.into(),
            severity: severity.into(),
            rule_id: rule.into(),
            node: node.into(),
            ..Default::default()
        }
    }

    #[test]
    fn each_test_narrows_and_an_empty_filter_takes_everything() {
        let all = SinkFilter::default();
        assert!(all.wants(&event("file_modified", "", "", "cp-1"), ""));
        let f = SinkFilter::from_raw(RawSinkFilter {
            kinds: vec!["finding_raised".into()],
            min_severity: Some("high".into()),
            rules: vec![],
            clusters: vec!["prod".into()],
            nodes: vec![],
            excepted: false,
        })
        .unwrap();
        assert!(f.by_cluster());
        assert!(f.wants(&event("finding_raised", "critical", "r", "cp-1"), "prod"));
        assert!(f.wants(&event("finding_raised", "high", "r", "cp-1"), "prod"));
        assert!(!f.wants(&event("finding_raised", "medium", "r", "cp-1"), "prod"));
        assert!(!f.wants(&event("finding_raised", "", "r", "cp-1"), "prod"));
        assert!(!f.wants(&event("finding_resolved", "high", "r", "cp-1"), "prod"));
        assert!(!f.wants(&event("finding_raised", "high", "r", "cp-1"), "dev"));
        let err = SinkFilter::from_raw(RawSinkFilter {
            min_severity: Some("severe".into()),
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.contains("\"severe\""), "{err}");
    }
}

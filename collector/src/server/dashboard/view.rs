//! The dashboard's pages, decided without IO: what the store returned, turned into page
//! models and rendered by askama templates (`collector/templates/`), which are checked at
//! compile time and escape every value they print. Node names, paths, flag values and
//! diffs come from nodes, which may be compromised: they reach a page only through a
//! template's escaping, and the live tail builds its rows with `textContent`.

use askama::Template;
use lockdown_proto::v1::{CisCount, Posture};

use crate::posture::{NodeState, cis_order};
use crate::store::{Exception, FindingRow, NodeInfo, SEVERITIES, Stored};

/// Rows on one page of findings, nodes or events.
pub const PAGE_ROWS: usize = 100;
/// Most bytes of a diff shown in a page; the rest is cut, and says so.
const DIFF_BYTES: usize = 16 << 10;
/// Most checks listed as the fleet's most common failures.
const TOP_CHECKS: usize = 10;
/// Most values listed per facet.
const FACET_VALUES: usize = 12;

/// What every page shows around its content.
pub struct Frame {
    /// The page's title.
    pub title: String,
    /// Which entry of the navigation is this page.
    pub nav: &'static str,
    /// Who is looking (the certificate's name, "token", or "loopback").
    pub who: String,
    /// The collector's version.
    pub version: &'static str,
}

impl Frame {
    /// A page titled `title` under `nav`, for `who`.
    pub fn new(title: impl Into<String>, nav: &'static str, who: &str) -> Frame {
        Frame {
            title: title.into(),
            nav,
            who: who.to_string(),
            version: env!("CARGO_PKG_VERSION"),
        }
    }
}

/// A time as the pages show it: UTC text (the page's script shows it in the viewer's time
/// zone), with the RFC 3339 value kept for `datetime` and the hover.
#[derive(Debug, Clone)]
pub struct When {
    /// RFC 3339, as stored ("" when never).
    pub iso: String,
    /// "2026-12-02 05:49:39 UTC", or "never".
    pub shown: String,
}

impl When {
    /// From a stored RFC 3339 time.
    pub fn of(iso: &str) -> When {
        let shown = match humantime::parse_rfc3339(iso) {
            Ok(t) => {
                let s = humantime::format_rfc3339_seconds(t).to_string();
                format!("{} UTC", s.trim_end_matches('Z').replace('T', " "))
            }
            Err(_) => "never".into(),
        };
        When {
            iso: iso.to_string(),
            shown,
        }
    }
}

/// `path` with `params` as its query, the values percent-encoded; empty values left out.
pub fn href(path: &str, params: &[(&str, &str)]) -> String {
    let mut out = path.to_string();
    let mut first = true;
    for (k, v) in params.iter().filter(|(_, v)| !v.is_empty()) {
        out.push(if first { '?' } else { '&' });
        first = false;
        out.push_str(k);
        out.push('=');
        out.push_str(&encode(v));
    }
    out
}

/// A path segment or query value, percent-encoded (everything but unreserved characters).
pub fn encode(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Page `page` (from 1; 0 is 1) of `rows`, [`PAGE_ROWS`] long, and the addresses of the
/// pages before and after it ("" when there is none); `at(n)` is page n's address.
fn paged<T>(rows: Vec<T>, page: usize, at: impl Fn(usize) -> String) -> (Vec<T>, String, String) {
    let page = page.max(1);
    let pages = rows.len().div_ceil(PAGE_ROWS).max(1);
    let prev = if page > 1 {
        at(page - 1)
    } else {
        String::new()
    };
    let next = if page < pages {
        at(page + 1)
    } else {
        String::new()
    };
    let rows = rows
        .into_iter()
        .skip((page - 1) * PAGE_ROWS)
        .take(PAGE_ROWS)
        .collect();
    (rows, prev, next)
}

/// A number and the list behind it.
#[derive(Debug, Clone)]
pub struct Count {
    /// What is counted.
    pub label: String,
    /// How many.
    pub n: u32,
    /// The list of them.
    pub href: String,
}

/// A posture row: one cluster, or the fleet.
pub struct PostureRow {
    /// Cluster label ("" for the fleet).
    pub cluster: String,
    /// Its open findings.
    pub href: String,
    /// Connected, stale, missing.
    pub states: Vec<Count>,
    /// Open findings by severity, most severe first.
    pub severities: Vec<Count>,
    /// Open findings an exception covers.
    pub excepted: Count,
}

/// Pass, fail and unknown of one CIS section or check.
pub struct CisRow {
    /// The id.
    pub cis: String,
    /// Nodes that pass.
    pub pass: Count,
    /// Nodes that fail.
    pub fail: Count,
    /// Of those, nodes whose failure is excepted.
    pub excepted: Count,
    /// Nodes that are stale, missing or do not evaluate it.
    pub unknown: Count,
}

/// An event as a row.
#[derive(Debug, Clone)]
pub struct EventRow {
    /// Its cursor.
    pub cursor: u64,
    /// When the node saw it.
    pub time: When,
    /// The node.
    pub node: String,
    /// The node's page.
    pub node_href: String,
    /// Its kind.
    pub kind: String,
    /// Its severity, for findings.
    pub severity: String,
    /// Its rule, for findings.
    pub rule_id: String,
    /// The file.
    pub path: String,
    /// One line of what happened.
    pub summary: String,
    /// The manifest diff it carries (redacted by the agent), cut at [`DIFF_BYTES`].
    pub diff: String,
    /// A fix's health-gate evidence: how it decided and its probe attempts.
    pub evidence: Vec<String>,
}

impl EventRow {
    /// From a stored event.
    pub fn of(s: &Stored) -> EventRow {
        let e = &s.event;
        let body: serde_json::Value = serde_json::from_slice(&e.body).unwrap_or_default();
        let text = |k: &str| body.get(k).and_then(|v| v.as_str()).unwrap_or("");
        let finding = body.get("finding");
        let ftext = |k: &str| {
            finding
                .and_then(|f| f.get(k))
                .and_then(|v| v.as_str())
                .unwrap_or("")
        };
        let rules = body
            .get("rules")
            .and_then(|r| r.as_array())
            .map(|r| {
                r.iter()
                    .filter_map(|v| v.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default();
        let summary = match e.kind.as_str() {
            "finding_raised" | "finding_resolved" => {
                let observed = ftext("observed");
                if observed.is_empty() {
                    ftext("title").to_string()
                } else {
                    format!("{} (observed: {observed})", ftext("title"))
                }
            }
            _ if !text("error").is_empty() => text("error").to_string(),
            _ if !text("reason").is_empty() && !rules.is_empty() => {
                format!("{rules}: {}", text("reason"))
            }
            _ if !text("reason").is_empty() => text("reason").to_string(),
            _ if !rules.is_empty() => rules,
            _ => String::new(),
        };
        let mut diff = text("diff").to_string();
        if diff.len() > DIFF_BYTES {
            let total = diff.len();
            let mut cut = DIFF_BYTES;
            while !diff.is_char_boundary(cut) {
                cut -= 1;
            }
            diff.truncate(cut);
            diff.push_str(&format!("\n… (cut; the whole diff is {total} bytes)"));
        }
        let mut evidence = Vec::new();
        if !text("health").is_empty() {
            evidence.push(format!("gate: {}", text("health")));
        }
        if let Some(restored) = body.get("restored_healthy").and_then(|v| v.as_bool()) {
            evidence.push(format!("healthy again on the original: {restored}"));
        }
        for a in body
            .get("attempts")
            .and_then(|a| a.as_array())
            .into_iter()
            .flatten()
        {
            let field = |k: &str| a.get(k).map(|v| v.to_string()).unwrap_or_default();
            evidence.push(format!(
                "+{} ms {} → {}{}",
                field("at_ms"),
                a.get("probe").and_then(|v| v.as_str()).unwrap_or(""),
                a.get("result").and_then(|v| v.as_str()).unwrap_or(""),
                if a.get("ok").and_then(|v| v.as_bool()) == Some(true) {
                    " (ok)"
                } else {
                    ""
                }
            ));
        }
        EventRow {
            cursor: s.cursor,
            time: When::of(&e.time),
            node: e.node.clone(),
            node_href: format!("/nodes/{}", encode(&e.node)),
            kind: e.kind.clone(),
            severity: e.severity.clone(),
            rule_id: e.rule_id.clone(),
            path: e.path.clone(),
            summary,
            diff,
            evidence,
        }
    }

    /// The row as the live tail's JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "cursor": self.cursor,
            "time": self.time.iso,
            "shown": self.time.shown,
            "node": self.node,
            "kind": self.kind,
            "severity": self.severity,
            "rule_id": self.rule_id,
            "path": self.path,
            "summary": self.summary,
        })
    }
}

/// The fleet page.
#[derive(Template)]
#[template(path = "fleet.html")]
pub struct FleetPage {
    /// Around it.
    pub frame: Frame,
    /// The fleet, then each cluster.
    pub rows: Vec<PostureRow>,
    /// Per CIS section.
    pub sections: Vec<CisRow>,
    /// The most common failing checks.
    pub top: Vec<CisRow>,
    /// Checks evaluated in all.
    pub checks: usize,
    /// Recent fixes, rollbacks and quarantines.
    pub fixes: Vec<EventRow>,
}

fn posture_row(p: &Posture) -> PostureRow {
    let cluster = p.cluster.as_str();
    let states = ["connected", "stale", "missing"]
        .iter()
        .map(|s| Count {
            label: (*s).into(),
            n: p.nodes_by_state.get(*s).copied().unwrap_or(0),
            href: href("/nodes", &[("cluster", cluster), ("state", s)]),
        })
        .collect();
    let severities = SEVERITIES
        .iter()
        .rev()
        .map(|s| Count {
            label: (*s).into(),
            n: p.open_by_severity.get(*s).copied().unwrap_or(0),
            href: href("/findings", &[("cluster", cluster), ("severity", s)]),
        })
        .collect();
    PostureRow {
        cluster: cluster.into(),
        href: href("/findings", &[("cluster", cluster)]),
        states,
        severities,
        excepted: Count {
            label: "excepted".into(),
            n: p.excepted,
            href: href("/findings", &[("cluster", cluster), ("excepted", "yes")]),
        },
    }
}

fn cis_row(c: &CisCount, section: bool) -> CisRow {
    let key = if section { "section" } else { "check" };
    let count = |label: &str, n: u32, result: &str| Count {
        label: label.into(),
        n,
        href: href("/nodes", &[(key, &c.cis), ("result", result)]),
    };
    CisRow {
        cis: c.cis.clone(),
        pass: count("pass", c.pass, "pass"),
        fail: Count {
            label: "fail".into(),
            n: c.fail,
            href: href("/findings", &[("cis", &c.cis)]),
        },
        excepted: Count {
            label: "excepted".into(),
            n: c.excepted,
            href: href("/findings", &[("cis", &c.cis), ("excepted", "yes")]),
        },
        unknown: count("unknown", c.unknown, "unknown"),
    }
}

impl FleetPage {
    /// The fleet page from the summary and the recent fix events.
    pub fn new(frame: Frame, fleet: &Posture, clusters: &[Posture], fixes: &[Stored]) -> Self {
        let rows = std::iter::once(fleet)
            .chain(clusters)
            .map(posture_row)
            .collect();
        let mut failing: Vec<&CisCount> = fleet.cis.iter().filter(|c| c.fail > 0).collect();
        failing.sort_by(|a, b| b.fail.cmp(&a.fail).then(cis_order(&a.cis, &b.cis)));
        FleetPage {
            frame,
            rows,
            sections: fleet.sections.iter().map(|c| cis_row(c, true)).collect(),
            top: (failing.iter().take(TOP_CHECKS))
                .map(|c| cis_row(c, false))
                .collect(),
            checks: fleet.cis.len(),
            fixes: fixes.iter().map(EventRow::of).collect(),
        }
    }
}

/// What the findings page filters on; every field a query parameter ("" does not filter).
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(default)]
pub struct FindingParams {
    /// Cluster label.
    pub cluster: String,
    /// Node.
    pub node: String,
    /// Rule id.
    pub rule: String,
    /// CIS id or section.
    pub cis: String,
    /// Exactly this severity.
    pub severity: String,
    /// yes or no.
    pub excepted: String,
    /// Free text, in any field.
    pub q: String,
    /// Page number, from 1.
    pub page: usize,
}

impl FindingParams {
    /// As query parameters, with `page`.
    fn pairs(&self) -> [(&'static str, &str); 7] {
        [
            ("cluster", &self.cluster),
            ("node", &self.node),
            ("rule", &self.rule),
            ("cis", &self.cis),
            ("severity", &self.severity),
            ("excepted", &self.excepted),
            ("q", &self.q),
        ]
    }

    /// This filter with `key` set to `value`, first page.
    pub fn with(&self, key: &str, value: &str) -> String {
        let mut pairs: Vec<(&str, &str)> = self.pairs().to_vec();
        for p in pairs.iter_mut().filter(|p| p.0 == key) {
            p.1 = value;
        }
        href("/findings", &pairs)
    }

    /// Whether `row` matches what the store does not filter: the exact severity and the
    /// free text.
    pub fn keeps(&self, row: &FindingRow) -> bool {
        let f = &row.finding;
        if !self.severity.is_empty() && f.severity != self.severity {
            return false;
        }
        let q = self.q.trim();
        q.is_empty()
            || [
                &row.node,
                &row.cluster,
                &f.path,
                &f.rule_id,
                &f.cis,
                &f.title,
                &f.flag,
                &f.observed,
            ]
            .iter()
            .any(|field| contains_ignoring_case(field, q))
    }
}

/// Whether `needle` is in `hay`, ASCII letters compared without case.
fn contains_ignoring_case(hay: &str, needle: &str) -> bool {
    let (hay, needle) = (hay.as_bytes(), needle.as_bytes());
    needle.is_empty()
        || hay
            .windows(needle.len())
            .any(|w| w.eq_ignore_ascii_case(needle))
}

/// One facet: the values found, with how many findings each and the list of them.
pub struct Facet {
    /// What it is.
    pub name: &'static str,
    /// Its values, most frequent first.
    pub values: Vec<Count>,
    /// Values left out.
    pub more: usize,
}

/// A finding as a row.
pub struct FindingLine {
    /// The stored row.
    pub row: FindingRow,
    /// Since.
    pub since: When,
    /// Its node's page.
    pub node_href: String,
    /// Its check's page.
    pub check_href: String,
}

impl FindingLine {
    fn of(row: FindingRow) -> FindingLine {
        FindingLine {
            since: When::of(&row.since),
            node_href: format!("/nodes/{}", encode(&row.node)),
            check_href: format!("/checks/{}", encode(&row.finding.rule_id)),
            row,
        }
    }
}

/// The findings page.
#[derive(Template)]
#[template(path = "findings.html")]
pub struct FindingsPage {
    /// Around it.
    pub frame: Frame,
    /// The filter in force.
    pub params: FindingParams,
    /// Findings that match, in all.
    pub total: usize,
    /// This page's.
    pub lines: Vec<FindingLine>,
    /// Facets of what matches.
    pub facets: Vec<Facet>,
    /// The previous and next pages.
    pub prev: String,
    /// The next page.
    pub next: String,
    /// Severities, for the filter's choice.
    pub severities: &'static [&'static str],
}

impl FindingsPage {
    /// The page of `rows` (what the store selected) that `params` asks for.
    pub fn new(frame: Frame, params: FindingParams, mut rows: Vec<FindingRow>) -> Self {
        rows.retain(|r| params.keeps(r));
        // The store lists by (node, path, key); a stable sort keeps that within a severity.
        rows.sort_by_key(|r| {
            std::cmp::Reverse(SEVERITIES.iter().position(|x| *x == r.finding.severity))
        });
        let facet = |name: &'static str, key: &str, value: &dyn Fn(&FindingRow) -> &str| {
            let mut counts: std::collections::HashMap<&str, u32> = Default::default();
            for r in &rows {
                *counts.entry(value(r)).or_default() += 1;
            }
            counts.remove("");
            let mut values: Vec<(&str, u32)> = counts.into_iter().collect();
            values.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
            let more = values.len().saturating_sub(FACET_VALUES);
            Facet {
                name,
                values: (values.into_iter().take(FACET_VALUES))
                    .map(|(v, n)| Count {
                        href: params.with(key, v),
                        label: v.to_string(),
                        n,
                    })
                    .collect(),
                more,
            }
        };
        let facets = vec![
            facet("severity", "severity", &|r| &r.finding.severity),
            facet("cluster", "cluster", &|r| &r.cluster),
            facet("CIS section", "cis", &|r| {
                crate::posture::cis_section(&r.finding.cis)
            }),
            facet("rule", "rule", &|r| &r.finding.rule_id),
            facet("node", "node", &|r| &r.node),
            facet("excepted", "excepted", &|r| {
                if r.exception_id.is_some() {
                    "yes"
                } else {
                    "no"
                }
            }),
        ];
        let total = rows.len();
        let (rows, prev, next) = paged(rows, params.page, |n| {
            let mut pairs: Vec<(&str, &str)> = params.pairs().to_vec();
            let n = n.to_string();
            pairs.push(("page", &n));
            href("/findings", &pairs)
        });
        let lines = rows.into_iter().map(FindingLine::of).collect();
        FindingsPage {
            frame,
            params,
            total,
            lines,
            facets,
            prev,
            next,
            severities: &SEVERITIES,
        }
    }
}

/// A check's page: which nodes fail it, since when, and what to do.
#[derive(Template)]
#[template(path = "check.html")]
pub struct CheckPage {
    /// Around it.
    pub frame: Frame,
    /// The rule id.
    pub rule: String,
    /// Its title, CIS id and severity, from an open finding.
    pub title: String,
    /// CIS id.
    pub cis: String,
    /// The remediation the agent sent with it, if a stored event still holds it.
    pub remediation: String,
    /// Open findings of it.
    pub lines: Vec<FindingLine>,
    /// Nodes failing it.
    pub nodes: usize,
    /// The CSRF token, for an admin's exception form (empty: not an admin).
    pub csrf: String,
}

impl CheckPage {
    /// From the open findings of `rule` and the newest `finding_raised` event of it.
    pub fn new(
        frame: Frame,
        rule: String,
        rows: Vec<FindingRow>,
        raised: Option<&Stored>,
        csrf: String,
    ) -> Self {
        let body: serde_json::Value = raised
            .and_then(|s| serde_json::from_slice(&s.event.body).ok())
            .unwrap_or_default();
        let from_event = |k: &str| {
            body.get("finding")
                .and_then(|f| f.get(k))
                .and_then(|v| v.as_str())
                .unwrap_or("")
                .to_string()
        };
        let first = rows.first().map(|r| &r.finding);
        let title = first
            .map(|f| f.title.clone())
            .unwrap_or_else(|| from_event("title"));
        let cis = first
            .map(|f| f.cis.clone())
            .unwrap_or_else(|| from_event("cis"));
        let nodes = rows
            .iter()
            .map(|r| r.node.as_str())
            .collect::<std::collections::BTreeSet<_>>()
            .len();
        CheckPage {
            frame,
            rule,
            title,
            cis,
            remediation: from_event("remediation"),
            nodes,
            lines: rows.into_iter().map(FindingLine::of).collect(),
            csrf,
        }
    }
}

/// A node as a row of the nodes page.
pub struct NodeLine {
    /// The node.
    pub node: String,
    /// Its page.
    pub href: String,
    /// Cluster.
    pub cluster: String,
    /// connected, stale, missing.
    pub state: &'static str,
    /// Agent version.
    pub agent_version: String,
    /// Last heard from.
    pub last_seen: When,
    /// Open findings by severity, most severe first ("" where none).
    pub open: Vec<String>,
}

/// What the nodes page filters on.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(default)]
pub struct NodeParams {
    /// Cluster label.
    pub cluster: String,
    /// connected, stale or missing.
    pub state: String,
    /// A CIS section: nodes by their result on it.
    pub section: String,
    /// A CIS check: nodes by their result on it.
    pub check: String,
    /// pass, fail or unknown (with `section` or `check`).
    pub result: String,
    /// Page number, from 1.
    pub page: usize,
}

/// The nodes page.
#[derive(Template)]
#[template(path = "nodes.html")]
pub struct NodesPage {
    /// Around it.
    pub frame: Frame,
    /// What the list is.
    pub what: String,
    /// Nodes that match, in all.
    pub total: usize,
    /// This page's.
    pub lines: Vec<NodeLine>,
    /// The previous page.
    pub prev: String,
    /// The next page.
    pub next: String,
}

/// A node's standing: its info (none when expected and never heard from) and state.
pub struct Standing {
    /// What it last said.
    pub info: NodeInfo,
    /// Its state.
    pub state: NodeState,
}

impl NodesPage {
    /// The page of `nodes` `params` asks for; `result_of` says a node's result on the
    /// section or check asked for.
    pub fn new(
        frame: Frame,
        params: &NodeParams,
        nodes: Vec<Standing>,
        result_of: impl Fn(&str) -> &'static str,
    ) -> Self {
        let cis = if params.section.is_empty() {
            &params.check
        } else {
            &params.section
        };
        let keep: Vec<Standing> = nodes
            .into_iter()
            .filter(|n| params.cluster.is_empty() || n.info.cluster == params.cluster)
            .filter(|n| params.state.is_empty() || n.state.as_str() == params.state)
            .filter(|n| {
                cis.is_empty()
                    || params.result.is_empty()
                    || result_of(&n.info.node) == params.result
            })
            .collect();
        let mut what = vec![];
        if !params.state.is_empty() {
            what.push(params.state.clone());
        }
        what.push("nodes".to_string());
        if !params.cluster.is_empty() {
            what.push(format!("in cluster {}", params.cluster));
        }
        if !cis.is_empty() && !params.result.is_empty() {
            let kind = if params.section.is_empty() {
                "check"
            } else {
                "section"
            };
            what.push(format!(
                "whose result on CIS {kind} {cis} is {}",
                params.result
            ));
        }
        let total = keep.len();
        let (keep, prev, next) = paged(keep, params.page, |n| {
            let n = n.to_string();
            href(
                "/nodes",
                &[
                    ("cluster", &params.cluster),
                    ("state", &params.state),
                    ("section", &params.section),
                    ("check", &params.check),
                    ("result", &params.result),
                    ("page", &n),
                ],
            )
        });
        let lines = keep
            .into_iter()
            .map(|n| NodeLine {
                href: format!("/nodes/{}", encode(&n.info.node)),
                state: n.state.as_str(),
                last_seen: When::of(&n.info.last_seen),
                open: SEVERITIES
                    .iter()
                    .rev()
                    .map(|s| match n.info.open_findings.get(*s) {
                        Some(c) if *c > 0 => format!("{c} {s}"),
                        _ => String::new(),
                    })
                    .filter(|s| !s.is_empty())
                    .collect(),
                node: n.info.node,
                cluster: n.info.cluster,
                agent_version: n.info.agent_version,
            })
            .collect();
        NodesPage {
            frame,
            what: what.join(" "),
            total,
            lines,
            prev,
            next,
        }
    }
}

/// A node's page.
#[derive(Template)]
#[template(path = "node.html")]
pub struct NodePage {
    /// Around it.
    pub frame: Frame,
    /// What it last said.
    pub info: NodeInfo,
    /// Its state.
    pub state: &'static str,
    /// Whether a stream of it is open now (on this replica).
    pub connected: bool,
    /// Last heard from.
    pub last_seen: When,
    /// Its open findings.
    pub findings: Vec<FindingLine>,
    /// Its recent events, newest first.
    pub events: Vec<EventRow>,
    /// Its fixes, newest first.
    pub fixes: Vec<EventRow>,
    /// Its live tail.
    pub stream: String,
}

impl NodePage {
    /// From what the store holds of the node.
    pub fn new(
        frame: Frame,
        standing: Standing,
        connected: bool,
        findings: Vec<FindingRow>,
        events: &[Stored],
        fixes: &[Stored],
    ) -> Self {
        let mut findings = findings;
        findings.sort_by_key(|r| {
            std::cmp::Reverse(SEVERITIES.iter().position(|s| *s == r.finding.severity))
        });
        let after = events.first().map(|e| e.cursor).unwrap_or(0).to_string();
        NodePage {
            frame,
            stream: href(
                "/events/stream",
                &[("node", &standing.info.node), ("after", &after)],
            ),
            state: standing.state.as_str(),
            last_seen: When::of(&standing.info.last_seen),
            info: standing.info,
            connected,
            findings: findings.into_iter().map(FindingLine::of).collect(),
            events: events.iter().map(EventRow::of).collect(),
            fixes: fixes.iter().map(EventRow::of).collect(),
        }
    }
}

/// What the events page and the live tail filter on.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(default)]
pub struct EventParams {
    /// Node.
    pub node: String,
    /// Kind.
    pub kind: String,
    /// At or above this severity.
    pub severity: String,
    /// Rule id.
    pub rule: String,
    /// The live tail starts after this cursor (a reconnect's `Last-Event-ID` wins).
    pub after: Option<u64>,
}

/// The events page: the newest events and the live tail after them.
#[derive(Template)]
#[template(path = "events.html")]
pub struct EventsPage {
    /// Around it.
    pub frame: Frame,
    /// The filter.
    pub params: EventParams,
    /// The newest events, newest first.
    pub events: Vec<EventRow>,
    /// The live tail's address.
    pub stream: String,
    /// Severities, for the filter's choice.
    pub severities: &'static [&'static str],
}

impl EventsPage {
    /// From the newest events that match.
    pub fn new(frame: Frame, params: EventParams, events: &[Stored], max_cursor: u64) -> Self {
        let after = events
            .first()
            .map(|e| e.cursor)
            .unwrap_or(max_cursor)
            .to_string();
        EventsPage {
            frame,
            stream: href(
                "/events/stream",
                &[
                    ("node", &params.node),
                    ("kind", &params.kind),
                    ("severity", &params.severity),
                    ("rule", &params.rule),
                    ("after", &after),
                ],
            ),
            params,
            events: events.iter().map(EventRow::of).collect(),
            severities: &SEVERITIES,
        }
    }
}

/// An exception as a row.
pub struct ExceptionLine {
    /// The exception.
    pub x: Exception,
    /// active, expired or removed.
    pub state: &'static str,
    /// Created.
    pub created: When,
    /// Expires.
    pub expires: When,
    /// Removed.
    pub removed_at: When,
}

/// The exceptions page.
#[derive(Template)]
#[template(path = "exceptions.html")]
pub struct ExceptionsPage {
    /// Around it.
    pub frame: Frame,
    /// Every exception, newest first.
    pub lines: Vec<ExceptionLine>,
    /// The CSRF token for the forms (empty: not an admin, no forms).
    pub csrf: String,
    /// What went wrong with the last change, if it did.
    pub error: String,
    /// The add form's values (kept when it was refused).
    pub form: AddForm,
    /// Severities, for the form's choice.
    pub severities: &'static [&'static str],
}

/// The add form.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(default)]
pub struct AddForm {
    /// CSRF token.
    pub csrf: String,
    /// Rule id.
    pub rule_id: String,
    /// Node, or "".
    pub node: String,
    /// Cluster, or "".
    pub cluster: String,
    /// File, or "".
    pub path: String,
    /// Highest severity covered ("": what is open now).
    pub max_severity: String,
    /// Why.
    pub reason: String,
    /// For how many days.
    pub days: String,
}

impl ExceptionsPage {
    /// Every exception at `now`.
    pub fn new(frame: Frame, all: Vec<Exception>, now: &str, csrf: String) -> Self {
        ExceptionsPage {
            frame,
            lines: all
                .into_iter()
                .map(|x| ExceptionLine {
                    state: x.state(now),
                    created: When::of(&x.created),
                    expires: When::of(&x.expires),
                    removed_at: When::of(&x.removed_at),
                    x,
                })
                .collect(),
            csrf,
            error: String::new(),
            form: AddForm {
                days: "30".into(),
                ..AddForm::default()
            },
            severities: &SEVERITIES,
        }
    }
}

/// A page that says what went wrong.
#[derive(Template)]
#[template(path = "error.html")]
pub struct ErrorPage {
    /// Around it.
    pub frame: Frame,
    /// What went wrong.
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::OpenFinding;

    fn row(node: &str, rule: &str, severity: &str, path: &str) -> FindingRow {
        FindingRow {
            node: node.into(),
            cluster: "prod".into(),
            version: "1.31.0".into(),
            since: "2026-12-02T05:00:00.000Z".into(),
            exception_id: None,
            finding: OpenFinding {
                path: path.into(),
                key: rule.into(),
                rule_id: rule.into(),
                cis: "1.2.1".into(),
                title: "Anonymous requests are allowed".into(),
                severity: severity.into(),
                status: "fail".into(),
                observed: "--anonymous-auth=true".into(),
                ..Default::default()
            },
        }
    }

    #[test]
    fn what_nodes_send_is_escaped_in_every_page() {
        let evil = "/etc/kubernetes/manifests/<script>alert(1)</script>.yaml";
        let mut r = row("n1", "apiserver-anonymous-auth", "high", evil);
        r.finding.observed = "\"><img src=x onerror=alert(1)>".into();
        let page = FindingsPage::new(
            Frame::new("Findings", "findings", "loopback"),
            FindingParams::default(),
            vec![r],
        )
        .render()
        .unwrap();
        assert!(!page.contains("<script>alert"), "{page}");
        assert!(!page.contains("<img src=x"), "{page}");
        assert!(
            page.contains("&#60;script&#62;alert(1)&#60;/script&#62;"),
            "{page}"
        );
    }

    #[test]
    fn findings_filter_by_text_and_severity_and_count_facets_of_what_matches() {
        let rows = vec![
            row("n1", "a", "high", "/m/kube-apiserver.yaml"),
            row("n2", "a", "high", "/m/kube-apiserver.yaml"),
            row("n2", "b", "low", "/m/etcd.yaml"),
        ];
        let params = FindingParams {
            q: "APISERVER".into(),
            ..Default::default()
        };
        let page = FindingsPage::new(Frame::new("F", "findings", "x"), params, rows.clone());
        assert_eq!(page.total, 2);
        let nodes = &page
            .facets
            .iter()
            .find(|f| f.name == "node")
            .unwrap()
            .values;
        assert_eq!(nodes.len(), 2);
        assert_eq!(nodes[0].href, "/findings?node=n1&q=APISERVER");
        let params = FindingParams {
            severity: "low".into(),
            ..Default::default()
        };
        let page = FindingsPage::new(Frame::new("F", "findings", "x"), params, rows);
        assert_eq!(page.total, 1);
        assert_eq!(page.lines[0].row.finding.rule_id, "b");
    }

    #[test]
    fn a_nodes_page_says_what_its_agent_still_has_to_send_and_exceptions_their_state() {
        let info = NodeInfo {
            node: "cp-1".into(),
            acked: 40,
            last_seq: 52,
            ..Default::default()
        };
        let page = NodePage::new(
            Frame::new("Node cp-1", "nodes", "x"),
            Standing {
                info,
                state: NodeState::Stale,
            },
            false,
            vec![],
            &[],
            &[],
        )
        .render()
        .unwrap();
        assert!(
            page.contains("newest event 52 at its last heartbeat: 12 on the way"),
            "{page}"
        );
        assert!(page.contains(">stale<"), "{page}");
        let expired = Exception {
            id: 3,
            rule_id: "r".into(),
            expires: "2026-12-01T00:00:00.000Z".into(),
            ..Default::default()
        };
        let page = ExceptionsPage::new(
            Frame::new("Exceptions", "exceptions", "x"),
            vec![expired],
            "2026-12-02T00:00:00.000Z",
            String::new(),
        )
        .render()
        .unwrap();
        assert!(page.contains("data-state=\"expired\""), "{page}");
        assert!(
            !page.contains("<form method=\"post\""),
            "a reader gets no forms: {page}"
        );
    }

    #[test]
    fn links_encode_what_they_carry() {
        assert_eq!(
            href(
                "/findings",
                &[("node", "a&b=c d"), ("cis", ""), ("q", "<x>")]
            ),
            "/findings?node=a%26b%3Dc%20d&q=%3Cx%3E"
        );
        assert_eq!(
            When::of("2026-12-02T05:49:39.123Z").shown,
            "2026-12-02 05:49:39 UTC"
        );
        assert_eq!(When::of("").shown, "never");
    }

    #[test]
    fn a_fixs_health_gate_evidence_and_diff_are_shown() {
        let body = serde_json::json!({
            "kind": "fix_rolled_back", "path": "/m/a.yaml", "rules": ["r1"],
            "diff": "-a\n+b\n", "reason": "not healthy in 60s", "restored_healthy": true,
            "attempts": [{"at_ms": 500, "probe": "livez", "result": "connection refused", "ok": false}],
        });
        let row = EventRow::of(&Stored {
            cursor: 9,
            event: lockdown_proto::v1::Event {
                kind: "fix_rolled_back".into(),
                body: body.to_string().into_bytes(),
                ..Default::default()
            },
        });
        assert_eq!(row.summary, "r1: not healthy in 60s");
        assert_eq!(row.diff, "-a\n+b\n");
        assert_eq!(
            row.evidence,
            [
                "healthy again on the original: true",
                "+500 ms livez → connection refused"
            ]
        );
    }
}

use super::*;
use crate::store::sql::SqlStore;
use crate::store::sql::db::Backend;

fn ev(node: &str, seq: u64) -> Event {
    Event {
        node: node.into(),
        seq,
        time: format!("2026-11-26T10:00:{:02}.000Z", seq % 60),
        kind: "file_modified".into(),
        severity: String::new(),
        rule_id: String::new(),
        path: "/etc/kubernetes/manifests/a.yaml".into(),
        body: b"{}".to_vec(),
        epoch: 0,
    }
}

fn overflow(node: &str, seq: u64, first: u64, last: u64) -> Event {
    Event {
        kind: "spool_overflow".into(),
        body: format!(
            r#"{{"kind":"spool_overflow","dropped":{},"first_seq":{first},"last_seq":{last}}}"#,
            last - first + 1
        )
        .into_bytes(),
        ..ev(node, seq)
    }
}

fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(&dir.path().join("c.db")).unwrap();
    (dir, s)
}

/// A store on a new database of a real PostgreSQL server of its own.
fn pg_store() -> (crate::testing::PgServer, PgStore) {
    let server = crate::testing::PgServer::start();
    let target = crate::store::postgres::Target::parse(
        &server.database(),
        &crate::store::postgres::Password::None,
    )
    .unwrap();
    let s = PgStore::connect(&target).unwrap();
    (server, s)
}

/// Each test of the store's rules, on SQLite and on PostgreSQL.
macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[test]
            fn $name() {
                let (_d, s) = super::store();
                super::$name(s)
            })*
        }
        mod postgres {
            $(#[test]
            fn $name() {
                let (_server, s) = super::pg_store();
                super::$name(s)
            })*
        }
    };
}

on_both!(
    retention_never_deletes_what_a_sink_has_not_delivered,
    a_batch_leaves_each_findings_outcome_with_when_it_was_last_opened,
    a_sink_cursor_is_durable_per_sink_and_never_moves_back,
    a_resend_stores_nothing_twice,
    an_unexplained_gap_holds_the_ack_back,
    a_spool_overflow_event_explains_its_gap,
    nodes_are_independent,
    list_filters_and_pages_by_cursor,
    node_info_is_kept,
    retention_by_count_keeps_the_newest_and_the_acks,
    a_new_epoch_starts_its_sequence_again_and_keeps_the_old_events,
    finding_events_keep_the_open_set_in_the_same_commit,
    a_hello_makes_the_set_the_agents_and_earlier_events_do_not_undo_it,
    findings_filter_by_cluster_cis_section_and_severity_and_page,
    listed_and_counted_coverage_agree_for_every_kind_of_exception,
    a_node_cannot_hold_more_open_findings_than_the_limit,
    settling_records_each_hole_below_the_agents_first_unacked_event,
    what_a_batch_does_not_carry_from_where_it_was_read_is_a_gap,
);

fn a_resend_stores_nothing_twice<B: Backend>(mut s: SqlStore<B>) {
    assert_eq!(s.insert("n1", 7, &[ev("n1", 1), ev("n1", 2)]).unwrap(), 2);
    assert_eq!(
        s.insert("n1", 7, &[ev("n1", 1), ev("n1", 2), ev("n1", 3)])
            .unwrap(),
        3
    );
    assert_eq!(
        s.keys().unwrap(),
        [
            ("n1".to_string(), 1),
            ("n1".to_string(), 2),
            ("n1".to_string(), 3)
        ]
    );
}

fn an_unexplained_gap_holds_the_ack_back<B: Backend>(mut s: SqlStore<B>) {
    assert_eq!(s.insert("n1", 7, &[ev("n1", 1), ev("n1", 3)]).unwrap(), 1);
    assert_eq!(s.insert("n1", 7, &[ev("n1", 2)]).unwrap(), 3);
}

fn a_spool_overflow_event_explains_its_gap<B: Backend>(mut s: SqlStore<B>) {
    s.insert("n1", 7, &[ev("n1", 1)]).unwrap();
    // 2..=5 were dropped by the agent; 6 survived; 7 says so.
    assert_eq!(s.insert("n1", 7, &[ev("n1", 6)]).unwrap(), 1);
    assert_eq!(s.insert("n1", 7, &[overflow("n1", 7, 2, 5)]).unwrap(), 7);
}

fn nodes_are_independent<B: Backend>(mut s: SqlStore<B>) {
    s.insert("n1", 7, &[ev("n1", 1), ev("n1", 2)]).unwrap();
    assert_eq!(s.insert("n2", 7, &[ev("n2", 1)]).unwrap(), 1);
    assert_eq!(s.acked("n1").unwrap(), 2);
    assert_eq!(s.acked("n3").unwrap(), 0);
}

fn list_filters_and_pages_by_cursor<B: Backend>(mut s: SqlStore<B>) {
    let mut finding = ev("n1", 2);
    finding.kind = "finding_raised".into();
    finding.severity = "high".into();
    finding.rule_id = "apiserver-anonymous-auth".into();
    s.insert("n1", 7, &[ev("n1", 1), finding, ev("n1", 3)])
        .unwrap();
    s.insert("n2", 7, &[ev("n2", 1)]).unwrap();
    let all = s.list(&Filter::default(), 0, 100).unwrap();
    assert_eq!(all.len(), 4);
    assert!(all.windows(2).all(|w| w[0].cursor < w[1].cursor));
    let page = s.list(&Filter::default(), all[1].cursor, 2).unwrap();
    assert_eq!(
        page.iter().map(|e| e.cursor).collect::<Vec<_>>(),
        [all[2].cursor, all[3].cursor]
    );
    let high = Filter {
        min_severity: Some("medium".into()),
        ..Filter::default()
    };
    assert_eq!(s.list(&high, 0, 100).unwrap().len(), 1);
    let critical = Filter {
        min_severity: Some("critical".into()),
        ..Filter::default()
    };
    assert!(s.list(&critical, 0, 100).unwrap().is_empty());
    let n2 = Filter {
        node: Some("n2".into()),
        ..Filter::default()
    };
    assert_eq!(s.list(&n2, 0, 100).unwrap().len(), 1);
    let since = Filter {
        since: Some("2026-11-26T10:00:02.000Z".into()),
        until: Some("2026-11-26T10:00:03.000Z".into()),
        ..Filter::default()
    };
    assert_eq!(s.list(&since, 0, 100).unwrap().len(), 1);
    // The newest first, of the kinds asked for, within the filter.
    let cursors = |v: Vec<Stored>| v.iter().map(|e| e.cursor).collect::<Vec<_>>();
    let newest = s.recent(&Filter::default(), &[], 2).unwrap();
    assert_eq!(cursors(newest), [all[3].cursor, all[2].cursor]);
    let kinds = s
        .recent(&Filter::default(), &["finding_raised", "fix_verified"], 10)
        .unwrap();
    assert_eq!(cursors(kinds), [all[1].cursor]);
    assert_eq!(cursors(s.recent(&n2, &[], 10).unwrap()), [all[3].cursor]);
    assert!(s.recent(&n2, &["finding_raised"], 10).unwrap().is_empty());
}

fn node_info_is_kept<B: Backend>(mut s: SqlStore<B>) {
    let info = NodeInfo {
        node: "n1".into(),
        cluster: "prod".into(),
        agent_version: "0.1.0".into(),
        component_versions: [("kube-apiserver".to_string(), "1.35.1".to_string())].into(),
        open_findings: [("high".to_string(), 2)].into(),
        last_seen: "2026-11-26T10:00:00.000Z".into(),
        acked: 0,
        checked_cis: Default::default(),
        last_seq: 3,
    };
    s.touch_node(&info).unwrap();
    s.insert("n1", 7, &[ev("n1", 1)]).unwrap();
    let nodes = s.nodes().unwrap();
    assert_eq!(
        nodes,
        [NodeInfo {
            acked: 1,
            ..info.clone()
        }]
    );
    // A touch that does not say how far the agent is (a hello) keeps what the last did.
    s.touch_node(&NodeInfo {
        last_seq: 0,
        ..info.clone()
    })
    .unwrap();
    assert_eq!(s.nodes().unwrap()[0].last_seq, 3);
}

fn retention_by_count_keeps_the_newest_and_the_acks<B: Backend>(mut s: SqlStore<B>) {
    s.insert("n1", 7, &(1..=10).map(|i| ev("n1", i)).collect::<Vec<_>>())
        .unwrap();
    assert_eq!(s.retain(None, Some(3), &[]).unwrap(), 7);
    assert_eq!(
        s.keys().unwrap().iter().map(|k| k.1).collect::<Vec<_>>(),
        [8, 9, 10]
    );
    assert_eq!(s.acked("n1").unwrap(), 10);
    // Old events are long past any age limit.
    assert_eq!(
        s.retain(Some(std::time::Duration::from_secs(1)), None, &[])
            .unwrap(),
        3
    );
}

fn a_new_epoch_starts_its_sequence_again_and_keeps_the_old_events<B: Backend>(mut s: SqlStore<B>) {
    assert_eq!(s.insert("n1", 7, &[ev("n1", 1), ev("n1", 2)]).unwrap(), 2);
    // The node's state directory was wiped: a new spool, seq 1 again.
    assert_eq!(s.insert("n1", 8, &[ev("n1", 1)]).unwrap(), 1);
    assert_eq!(s.acked_in("n1", 8).unwrap(), 1);
    assert_eq!(s.acked_in("n1", 7).unwrap(), 0);
    assert_eq!(s.keys().unwrap().len(), 3);
}

fn settling_records_each_hole_below_the_agents_first_unacked_event<B: Backend>(mut s: SqlStore<B>) {
    // issue 11 (4): a store that lost events the agent already trimmed
    assert_eq!(
        s.insert("n1", 3, &[ev("n1", 1), ev("n1", 2), ev("n1", 5)])
            .unwrap(),
        2
    );
    let t = "2026-11-26T10:00:00.000Z";
    assert_eq!(s.settle("n1", 3, 8, t).unwrap(), 7);
    let keys: Vec<u64> = s.keys().unwrap().into_iter().map(|(_, q)| q).collect();
    assert_eq!(keys, [1, 2, 4, 5, 7]);
    let notes = s
        .list(
            &Filter {
                kind: Some("acked_by_earlier_store".into()),
                ..Filter::default()
            },
            0,
            10,
        )
        .unwrap();
    let ranges: Vec<(u64, u64)> = notes
        .iter()
        .map(|n| overflow_range(&n.event.body).unwrap())
        .collect();
    assert_eq!(ranges, [(3, 4), (6, 7)]);
    // nothing more to settle: a second hello changes nothing
    assert_eq!(s.settle("n1", 3, 8, t).unwrap(), 7);
    assert_eq!(s.keys().unwrap().len(), 5);
    // the next event goes on from there
    assert_eq!(s.insert("n1", 3, &[ev("n1", 8)]).unwrap(), 8);
    // a first hello (nothing acked yet) settles nothing
    assert_eq!(s.settle("n2", 1, 1, t).unwrap(), 0);
}

fn what_a_batch_does_not_carry_from_where_it_was_read_is_a_gap<B: Backend>(mut s: SqlStore<B>) {
    // Issue 11 (8): the agent's overflow event for a range can itself be dropped; the batch
    // says where it was read from, so the gap is known without it.
    s.insert("n1", 7, &[ev("n1", 1)]).unwrap();
    let batch = [ev("n1", 5), ev("n1", 6)];
    let acks = s
        .insert_many(
            &[Batch {
                node: "n1",
                epoch: 7,
                covers_from: 2,
                events: &batch,
            }],
            &[],
        )
        .unwrap();
    assert_eq!(acks, [6], "2..=4 are not held by the agent any more");
    // A batch that starts where the ack is explains nothing it did not skip.
    let batch = [ev("n1", 9)];
    let acks = s
        .insert_many(
            &[Batch {
                node: "n1",
                epoch: 7,
                covers_from: 9,
                events: &batch,
            }],
            &[],
        )
        .unwrap();
    assert_eq!(acks, [6], "7 and 8 were never said to be gone");
}

fn failing(code: i32) -> StoreError {
    StoreError::Db {
        path: "events.db".into(),
        source: rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), None).into(),
    }
}

#[test]
fn a_full_or_busy_store_is_worth_retrying_and_a_corrupt_one_is_not() {
    use rusqlite::ffi::{SQLITE_BUSY, SQLITE_CORRUPT, SQLITE_FULL, SQLITE_NOTADB};
    assert!(failing(SQLITE_FULL).retry_helps());
    assert!(failing(SQLITE_BUSY).retry_helps());
    assert!(!failing(SQLITE_CORRUPT).retry_helps());
    assert!(!failing(SQLITE_NOTADB).retry_helps());
    assert_eq!(
        failing(SQLITE_FULL).to_status().code(),
        tonic::Code::Unavailable
    );
    assert_eq!(
        failing(SQLITE_CORRUPT).to_status().code(),
        tonic::Code::Internal
    );
}

/// A `finding_raised` or `finding_resolved` event as an agent sends it.
fn finding_event(
    seq: u64,
    raised: bool,
    path: &str,
    rule: &str,
    cis: &str,
    severity: &str,
) -> Event {
    let kind = if raised {
        "finding_raised"
    } else {
        "finding_resolved"
    };
    let body = serde_json::json!({
        "kind": kind, "path": path, "key": rule,
        "finding": {"rule_id": rule, "cis": cis, "title": rule, "severity": severity,
                    "status": "fail", "component": "kube-apiserver", "observed": "true",
                    "expected": "false", "remediation": ""},
    });
    Event {
        kind: kind.into(),
        severity: severity.into(),
        rule_id: rule.into(),
        path: path.into(),
        body: body.to_string().into_bytes(),
        ..ev("n1", seq)
    }
}

fn open(path: &str, rule: &str, cis: &str, severity: &str) -> OpenFinding {
    OpenFinding {
        path: path.into(),
        key: rule.into(),
        rule_id: rule.into(),
        cis: cis.into(),
        title: rule.into(),
        severity: severity.into(),
        status: "fail".into(),
        component: "kube-apiserver".into(),
        observed: "true".into(),
        expected: "false".into(),
        ..Default::default()
    }
}

fn open_now<B: Backend>(s: &SqlStore<B>, node: &str) -> Vec<(String, String)> {
    let q = FindingQuery {
        node: Some(node.into()),
        ..Default::default()
    };
    (s.findings(&q, None, 1000).unwrap().into_iter())
        .map(|r| (r.finding.path, r.finding.rule_id))
        .collect()
}

const API: &str = "/etc/kubernetes/manifests/kube-apiserver.yaml";

fn finding_events_keep_the_open_set_in_the_same_commit<B: Backend>(mut s: SqlStore<B>) {
    s.insert(
        "n1",
        7,
        &[
            finding_event(1, true, API, "anonymous-auth", "1.2.1", "high"),
            finding_event(2, true, API, "profiling", "1.2.18", "low"),
        ],
    )
    .unwrap();
    assert_eq!(open_now(&s, "n1").len(), 2);
    s.insert(
        "n1",
        7,
        &[finding_event(3, false, API, "profiling", "1.2.18", "low")],
    )
    .unwrap();
    assert_eq!(open_now(&s, "n1"), [(API.into(), "anonymous-auth".into())]);
    // A resend changes nothing (the event is stored once, applied once).
    s.insert(
        "n1",
        7,
        &[finding_event(2, true, API, "profiling", "1.2.18", "low")],
    )
    .unwrap();
    assert_eq!(open_now(&s, "n1").len(), 1);
}

fn a_hello_makes_the_set_the_agents_and_earlier_events_do_not_undo_it<B: Backend>(
    mut s: SqlStore<B>,
) {
    let reconciled = |s: &SqlStore<B>| {
        let kind = Filter {
            kind: Some("findings_reconciled".into()),
            ..Default::default()
        };
        s.list(&kind, 0, 10).unwrap()
    };
    // Events 1 to 3 are stored; 4 and 5 are on their way when the agent says hello with its
    // set as of 5 (profiling resolved at 4, anonymous-auth raised at 5).
    s.insert(
        "n1",
        7,
        &[
            finding_event(1, true, API, "profiling", "1.2.18", "low"),
            ev("n1", 2),
            ev("n1", 3),
        ],
    )
    .unwrap();
    let hello = [open(API, "anonymous-auth", "1.2.1", "high")];
    let r = Reconcile {
        node: "n1",
        epoch: 7,
        as_of: 5,
        findings: &hello,
        checked_cis: &["1.2.1".into(), "1.2.18".into()],
        time: "2026-12-02T01:00:00.000Z",
    };
    let fixed = s.reconcile(&r).unwrap();
    assert_eq!((fixed.added, fixed.removed, fixed.changed), (1, 1, 0));
    assert!(!fixed.drift, "events on their way explain it");
    assert!(reconciled(&s).is_empty());
    assert_eq!(open_now(&s, "n1"), [(API.into(), "anonymous-auth".into())]);
    // The events the hello already holds arrive: stored, not applied again (the resolution
    // of anonymous-auth at 4 is older than the set).
    s.insert(
        "n1",
        7,
        &[
            finding_event(4, false, API, "anonymous-auth", "1.2.1", "high"),
            ev("n1", 5),
        ],
    )
    .unwrap();
    assert_eq!(open_now(&s, "n1"), [(API.into(), "anonymous-auth".into())]);
    // Later ones apply.
    s.insert(
        "n1",
        7,
        &[finding_event(6, true, API, "profiling", "1.2.18", "low")],
    )
    .unwrap();
    assert_eq!(open_now(&s, "n1").len(), 2);
    // The same set again, with everything stored: nothing to correct, nothing said.
    let both = [
        open(API, "anonymous-auth", "1.2.1", "high"),
        open(API, "profiling", "1.2.18", "low"),
    ];
    let again = Reconcile {
        as_of: 6,
        findings: &both,
        ..r
    };
    assert!(!s.reconcile(&again).unwrap().differs());
    assert_eq!(*s.nodes().unwrap()[0].checked_cis, ["1.2.1", "1.2.18"]);
    // Everything stored and still different (a finding event was lost): drift, corrected
    // and recorded as the collector's own event.
    let drifted = Reconcile {
        findings: &hello,
        ..again
    };
    let fixed = s.reconcile(&drifted).unwrap();
    assert!(fixed.drift && fixed.removed == 1, "{fixed:?}");
    let said = reconciled(&s);
    assert_eq!(said.len(), 1, "the correction is an event");
    assert_eq!(
        (said[0].event.node.as_str(), said[0].event.epoch),
        ("n1", 0)
    );
    assert_eq!(open_now(&s, "n1"), [(API.into(), "anonymous-auth".into())]);
}

fn findings_filter_by_cluster_cis_section_and_severity_and_page<B: Backend>(mut s: SqlStore<B>) {
    for (node, cluster) in [("n1", "prod"), ("n2", "dev")] {
        s.touch_node(&NodeInfo {
            node: node.into(),
            cluster: cluster.into(),
            component_versions: [("kube-apiserver".to_string(), "1.30.2".to_string())].into(),
            ..Default::default()
        })
        .unwrap();
        let hello = [
            open(API, "anonymous-auth", "1.2.1", "high"),
            open(API, "profiling", "1.2.18", "low"),
            open(
                "/etc/kubernetes/admin.conf",
                "file-mode",
                "1.1.13",
                "medium",
            ),
        ];
        let r = Reconcile {
            node,
            epoch: 7,
            as_of: 1,
            findings: &hello,
            checked_cis: &[],
            time: "2026-12-02T01:00:00.000Z",
        };
        s.reconcile(&r).unwrap();
    }
    let count = |q: FindingQuery| s.findings(&q, None, 1000).unwrap().len();
    let q = |f: fn(&mut FindingQuery)| {
        let mut q = FindingQuery::default();
        f(&mut q);
        q
    };
    assert_eq!(count(q(|q| q.cluster = Some("prod".into()))), 3);
    assert_eq!(count(q(|q| q.cis = Some("1.2".into()))), 4);
    assert_eq!(
        count(q(|q| q.cis = Some("1.2.1".into()))),
        2,
        "1.2.18 is not 1.2.1"
    );
    assert_eq!(count(q(|q| q.min_severity = Some("medium".into()))), 4);
    let rows = s.findings(&FindingQuery::default(), None, 1000).unwrap();
    assert_eq!(rows[0].version, "1.30.2");
    // Pages of two cover all six once.
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = s
            .findings(&FindingQuery::default(), after.as_ref(), 2)
            .unwrap();
        if page.is_empty() {
            break;
        }
        let last = page.last().unwrap();
        after = Some((
            last.node.clone(),
            last.finding.path.clone(),
            last.finding.key.clone(),
        ));
        seen.extend(page);
    }
    assert_eq!(seen, rows);
}

fn listed_and_counted_coverage_agree_for_every_kind_of_exception<B: Backend>(mut s: SqlStore<B>) {
    let rules = ["anonymous-auth", "profiling", "file-mode"];
    let paths = [API, "/etc/kubernetes/admin.conf"];
    for (n, node) in ["n1", "n2", "n3", "n4"].iter().enumerate() {
        s.touch_node(&NodeInfo {
            node: node.to_string(),
            cluster: ["prod", "dev"][n % 2].into(),
            ..Default::default()
        })
        .unwrap();
        let mut set = Vec::new();
        for (i, rule) in rules.iter().enumerate() {
            for (j, path) in paths.iter().enumerate() {
                set.push(open(path, rule, "1.2.1", SEVERITIES[(n + i + j) % 5]));
            }
        }
        let r = Reconcile {
            node,
            epoch: 1,
            as_of: 1,
            findings: &set,
            checked_cis: &[],
            time: "2026-12-02T01:00:00.000Z",
        };
        s.reconcile(&r).unwrap();
    }
    let x =
        |rule: &str, node: &str, cluster: &str, path: &str, max: &str, expires: &str| Exception {
            rule_id: rule.into(),
            node: node.into(),
            cluster: cluster.into(),
            path: path.into(),
            max_severity: max.into(),
            reason: "r".into(),
            author: "admin".into(),
            created: "2026-12-01T00:00:00.000Z".into(),
            expires: expires.into(),
            ..Default::default()
        };
    let later = "2027-01-01T00:00:00.000Z";
    for e in [
        x("anonymous-auth", "n1", "", "", "critical", later),
        x("profiling", "", "dev", "", "medium", later),
        x(
            "file-mode",
            "",
            "",
            "/etc/kubernetes/admin.conf",
            "high",
            later,
        ),
        x(
            "anonymous-auth",
            "",
            "",
            "",
            "critical",
            "2026-12-01T12:00:00.000Z",
        ), // expired
        x("profiling", "", "", "", "critical", later), // removed
    ] {
        s.add_exception(&e).unwrap();
    }
    s.remove_exception(5, "admin", "2026-12-02T00:30:00.000Z")
        .unwrap()
        .unwrap();
    let now = "2026-12-02T01:00:00.000Z".to_string();
    let listed = s
        .findings(
            &FindingQuery {
                now: now.clone(),
                ..Default::default()
            },
            None,
            1000,
        )
        .unwrap();
    let counted = s.finding_counts(&now).unwrap();
    for node in ["n1", "n2", "n3", "n4"] {
        let by_list = listed
            .iter()
            .filter(|r| r.node == node && r.exception_id.is_some())
            .count() as u32;
        let by_count: u32 = counted
            .iter()
            .filter(|c| &*c.node == node && c.excepted)
            .map(|c| c.count)
            .sum();
        assert_eq!(by_list, by_count, "{node}");
    }
    let total: usize = listed.iter().filter(|r| r.exception_id.is_some()).count();
    assert!(
        total > 4 && total < listed.len(),
        "a mix: {total} of {}",
        listed.len()
    );
    // The expired and the removed exceptions cover nothing.
    assert!(
        listed
            .iter()
            .all(|r| !matches!(r.exception_id, Some(4 | 5)))
    );
    // A finding more severe than an exception's max is not covered by it.
    assert!(listed.iter().all(|r| r.finding.rule_id != "profiling"
        || r.exception_id.is_none()
        || SEVERITIES.iter().position(|s| *s == r.finding.severity) <= Some(2)));
}

fn a_node_cannot_hold_more_open_findings_than_the_limit<B: Backend>(mut s: SqlStore<B>) {
    let limit = crate::admit::MAX_NODE_FINDINGS;
    let many: Vec<OpenFinding> = (0..limit)
        .map(|i| OpenFinding {
            key: format!("k{i}"),
            ..open(API, "unsupported-flag", "", "low")
        })
        .collect();
    let r = Reconcile {
        node: "n1",
        epoch: 7,
        as_of: 1,
        findings: &many,
        checked_cis: &[],
        time: "2026-12-02T01:00:00.000Z",
    };
    s.reconcile(&r).unwrap();
    // A new one over the limit is stored as an event, not as an open finding; a known one
    // still changes, and a resolution still removes.
    s.insert(
        "n1",
        7,
        &[
            ev("n1", 1),
            finding_event(2, true, API, "anonymous-auth", "1.2.1", "high"),
            finding_event(3, false, API, "k0", "", "low"),
        ],
    )
    .unwrap();
    let held = s
        .findings(&FindingQuery::default(), None, usize::MAX)
        .unwrap();
    assert_eq!(held.len(), limit - 1);
    assert!(!held.iter().any(|r| r.finding.rule_id == "anonymous-auth"));
    assert_eq!(s.list(&Filter::default(), 0, 10).unwrap().len(), 3);
}

/// Several collectors committing to one PostgreSQL at once while readers tail it: every
/// reader sees every event exactly once, whichever replica committed it. (A cursor from a
/// plain sequence would let a reader pass a cursor whose transaction had not committed yet,
/// and miss that event for good.)
#[test]
fn replicas_committing_at_once_are_tailed_in_commit_order_by_every_reader() {
    use std::collections::BTreeSet;
    use std::sync::Arc;
    let server = crate::testing::PgServer::start();
    let url = server.database();
    let target = Arc::new(
        crate::store::postgres::Target::parse(&url, &crate::store::postgres::Password::None)
            .unwrap(),
    );
    const WRITERS: usize = 4;
    const BATCHES: u64 = 150;
    const PER_BATCH: u64 = 4;
    let total = WRITERS as u64 * BATCHES * PER_BATCH;
    // Set once every writer has committed: a reader's next empty read means it caught up.
    let written = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = (0..3)
        .map(|_| {
            let (target, written) = (Arc::clone(&target), Arc::clone(&written));
            std::thread::spawn(move || {
                let s = PgStore::connect(&target).unwrap();
                let (mut cursor, mut seen) = (0, Vec::new());
                loop {
                    let done = written.load(std::sync::atomic::Ordering::SeqCst);
                    let page = s.list(&Filter::default(), cursor, 1000).unwrap();
                    if page.is_empty() && done {
                        return seen;
                    }
                    for e in page {
                        assert!(e.cursor > cursor);
                        cursor = e.cursor;
                        seen.push((e.event.node, e.event.seq));
                    }
                }
            })
        })
        .collect();
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let target = Arc::clone(&target);
            std::thread::spawn(move || {
                let mut s = PgStore::connect(&target).unwrap();
                for b in 0..BATCHES {
                    // Two nodes per writer, so that batches of one replica interleave too.
                    let node = format!("w{w}-{}", b % 2);
                    let first = b / 2 * PER_BATCH + 1;
                    let events: Vec<Event> =
                        (first..first + PER_BATCH).map(|q| ev(&node, q)).collect();
                    s.insert(&node, 1, &events).unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    written.store(true, std::sync::atomic::Ordering::SeqCst);
    let everything: BTreeSet<(String, u64)> = PgStore::connect(&target)
        .unwrap()
        .keys()
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(everything.len() as u64, total);
    for r in readers {
        let seen = r.join().unwrap();
        let unique: BTreeSet<_> = seen.iter().cloned().collect();
        assert_eq!(unique.len(), seen.len(), "a reader saw an event twice");
        assert_eq!(unique, everything, "a reader missed events");
    }
}

#[test]
fn a_database_of_a_newer_collector_is_refused() {
    let server = crate::testing::PgServer::start();
    let target = crate::store::postgres::Target::parse(
        &server.database(),
        &crate::store::postgres::Password::None,
    )
    .unwrap();
    drop(PgStore::connect(&target).unwrap());
    // A newer collector migrated the database past what this one knows.
    let mut s = PgStore::connect(&target).unwrap();
    s.write(|db| db.exec("UPDATE schema SET version = version + 1", &[]))
        .unwrap();
    let err = PgStore::connect(&target).unwrap_err();
    assert!(!err.retry_helps());
    assert!(err.to_string().contains("upgrade the collector"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.db");
    drop(Store::open(&path).unwrap());
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute("UPDATE schema SET version = version + 1", [])
        .unwrap();
    let err = Store::open(&path).unwrap_err();
    assert!(err.to_string().contains("upgrade the collector"), "{err}");
}

#[test]
fn a_database_of_schema_1_is_migrated_to_2_on_both() {
    // What a collector of schema 1 left: no nodes.last_seq, no events_node or events_kind.
    let undo = "DROP INDEX events_node; DROP INDEX events_kind; \
                ALTER TABLE nodes DROP COLUMN last_seq; UPDATE schema SET version = 1";
    let server = crate::testing::PgServer::start();
    let target = crate::store::postgres::Target::parse(
        &server.database(),
        &crate::store::postgres::Password::None,
    )
    .unwrap();
    let mut s = PgStore::connect(&target).unwrap();
    s.write(|db| {
        for stmt in undo.split("; ") {
            db.exec(stmt, &[])?;
        }
        Ok(())
    })
    .unwrap();
    let mut s = PgStore::connect(&target).unwrap();
    let indexes =
        "SELECT COUNT(*) FROM pg_indexes WHERE indexname IN ('events_node', 'events_kind')";
    assert_eq!(s.read(|db| db.int(indexes, &[])).unwrap(), 2);
    assert_eq!(
        s.read(|db| db.int("SELECT version FROM schema", &[]))
            .unwrap(),
        2
    );
    node_keeps_its_last_seq(&mut s);

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.db");
    drop(Store::open(&path).unwrap());
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute_batch(&undo.replace("; ", ";\n"))
        .unwrap();
    let mut s = Store::open(&path).unwrap();
    let indexes = "SELECT COUNT(*) FROM sqlite_master WHERE name IN ('events_node', 'events_kind')";
    assert_eq!(s.read(|db| db.int(indexes, &[])).unwrap(), 2);
    assert_eq!(
        s.read(|db| db.int("SELECT version FROM schema", &[]))
            .unwrap(),
        2
    );
    node_keeps_its_last_seq(&mut s);
}

fn node_keeps_its_last_seq<B: Backend>(s: &mut SqlStore<B>) {
    s.touch_node(&NodeInfo {
        node: "n1".into(),
        last_seq: 9,
        ..Default::default()
    })
    .unwrap();
    assert_eq!(s.nodes().unwrap()[0].last_seq, 9);
}

#[test]
fn a_database_url_never_carries_the_password_and_tls_is_verified_or_off() {
    use crate::store::postgres::{Password, Target};
    let refused = |url: &str| Target::parse(url, &Password::None).unwrap_err().to_string();
    assert!(refused("postgres://u:secret@db/x").contains("carries a password"));
    assert!(refused("postgres://u@db/x?password=secret").contains("carries a password"));
    assert!(refused("postgres://u@db/x?sslmode=prefer").contains("not accepted"));
    assert!(refused("postgres://u@db/x?sslmode=verify-full").contains("needs sslrootcert"));
    assert!(
        refused("postgres://u@db/x?sslmode=require&sslrootcert=/nonexistent")
            .contains("/nonexistent")
    );
    // Errors never echo a password given where it may not be.
    assert!(!refused("postgres://u:secret@db/x").contains("secret"));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pw");
    std::fs::write(&file, "s3cret\nignored\n").unwrap();
    let t = Target::parse("postgres://u@db/x", &Password::File(file)).unwrap();
    assert!(!format!("{t:?}").contains("s3cret"));
    assert!(!format!("{:?}", Password::Value("s3cret".into())).contains("s3cret"));
    let missing = Target::parse(
        "postgres://u@db/x",
        &Password::File(dir.path().join("none")),
    );
    assert!(missing.unwrap_err().to_string().contains("password file"));
}

#[test]
fn tls_to_the_database_is_verified_against_the_configured_ca() {
    use crate::store::postgres::{Password, Target};
    let (server, ca) = crate::testing::PgServer::start_tls();
    let url = server.database().replace("127.0.0.1", "localhost");
    let mut s = PgStore::connect(
        &Target::parse(
            &format!("{url}?sslmode=verify-full&sslrootcert={}", ca.display()),
            &Password::None,
        )
        .unwrap(),
    )
    .unwrap();
    let ssl = s
        .write(|db| {
            db.opt(
                "SELECT CASE WHEN ssl THEN 'on' ELSE 'off' END FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
                |r| Ok(r.text(0)?.to_string()),
            )
        })
        .unwrap();
    assert_eq!(ssl.as_deref(), Some("on"), "the session is encrypted");
    // A server whose certificate another CA signed is refused.
    let other = tempfile::tempdir().unwrap();
    crate::certs::write_dev_ca(other.path(), &["localhost".to_string()], &[], &[]).unwrap();
    let err = PgStore::connect(
        &Target::parse(
            &format!(
                "{url}?sslmode=verify-full&sslrootcert={}",
                other.path().join("ca.crt").display()
            ),
            &Password::None,
        )
        .unwrap(),
    )
    .unwrap_err();
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "{err}"
    );
}

fn a_sink_cursor_is_durable_per_sink_and_never_moves_back<B: Backend>(mut s: SqlStore<B>) {
    assert_eq!(s.sink_cursor("hook").unwrap(), 0);
    s.set_sink_cursor("hook", 7).unwrap();
    s.set_sink_cursor("syslog", 3).unwrap();
    // A slower run of the same sink cannot undo the other's progress.
    s.set_sink_cursor("hook", 5).unwrap();
    assert_eq!(s.sink_cursor("hook").unwrap(), 7);
    assert_eq!(s.sink_cursor("syslog").unwrap(), 3);
}

fn a_batch_leaves_each_findings_outcome_with_when_it_was_last_opened<B: Backend>(
    mut s: SqlStore<B>,
) {
    let since = |s: &SqlStore<B>, rule: &str| {
        let q = FindingQuery {
            rule_id: Some(rule.into()),
            ..Default::default()
        };
        let rows = s.findings(&q, None, 10).unwrap();
        rows.into_iter()
            .map(|r| (r.since, r.finding.severity))
            .collect::<Vec<_>>()
    };
    s.insert(
        "n1",
        7,
        &[
            finding_event(1, true, API, "kept", "1.2.1", "low"),
            finding_event(2, true, API, "reopened", "1.2.2", "low"),
            finding_event(3, true, API, "gone", "1.2.3", "low"),
        ],
    )
    .unwrap();
    s.insert(
        "n1",
        7,
        &[
            // Raised again while open: still open since the first raise, at the new severity.
            finding_event(4, true, API, "kept", "1.2.1", "high"),
            finding_event(5, true, API, "kept", "1.2.1", "medium"),
            // Resolved, raised, resolved, raised: open since the last opening.
            finding_event(6, false, API, "reopened", "1.2.2", "low"),
            finding_event(7, true, API, "reopened", "1.2.2", "low"),
            finding_event(8, false, API, "reopened", "1.2.2", "low"),
            finding_event(9, true, API, "reopened", "1.2.2", "high"),
            finding_event(10, true, API, "reopened", "1.2.2", "critical"),
            // Raised, then resolved: gone.
            finding_event(11, true, API, "gone", "1.2.3", "high"),
            finding_event(12, false, API, "gone", "1.2.3", "high"),
        ],
    )
    .unwrap();
    let at = |seq: u64| ev("n1", seq).time;
    assert_eq!(since(&s, "kept"), [(at(1), "medium".to_string())]);
    assert_eq!(since(&s, "reopened"), [(at(9), "critical".to_string())]);
    assert_eq!(since(&s, "gone"), []);
}

fn retention_never_deletes_what_a_sink_has_not_delivered<B: Backend>(mut s: SqlStore<B>) {
    s.insert("n1", 7, &(1..=10).map(|q| ev("n1", q)).collect::<Vec<_>>())
        .unwrap();
    let cursors: Vec<u64> = s
        .list(&Filter::default(), 0, 100)
        .unwrap()
        .iter()
        .map(|e| e.cursor)
        .collect();
    s.set_sink_cursor("hook", cursors[3]).unwrap();
    s.set_sink_cursor("alerts", cursors[5]).unwrap();
    let sinks = ["hook".to_string(), "alerts".to_string()];
    // Keep 2 would delete 8; the slower sink has delivered 4.
    assert_eq!(s.retain(None, Some(2), &sinks).unwrap(), 4);
    // A configured sink that never delivered anything holds everything.
    let with_new = ["hook".to_string(), "new".to_string()];
    assert_eq!(s.retain(None, Some(2), &with_new).unwrap(), 0);
    // Age: everything is old, but only what both delivered goes.
    s.set_sink_cursor("hook", cursors[6]).unwrap();
    s.set_sink_cursor("alerts", cursors[6]).unwrap();
    let aged = s.retain(Some(std::time::Duration::from_secs(1)), None, &sinks);
    assert_eq!(aged.unwrap(), 3);
    assert_eq!(s.list(&Filter::default(), 0, 100).unwrap().len(), 3);
}

#[test]
fn one_replica_at_a_time_runs_a_sink_and_another_takes_over_when_it_is_gone() {
    let server = crate::testing::PgServer::start();
    let target = crate::store::postgres::Target::parse(
        &server.database(),
        &crate::store::postgres::Password::None,
    )
    .unwrap();
    let mut a = PgStore::connect(&target).unwrap();
    let mut b = PgStore::connect(&target).unwrap();
    assert!(a.lead("hook").unwrap());
    assert!(a.lead("hook").unwrap(), "still held");
    assert!(!b.lead("hook").unwrap());
    assert!(b.lead("alerts").unwrap(), "each sink its own");
    drop(a); // its connection ends, as when its process dies
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !b.lead("hook").unwrap() {
        assert!(std::time::Instant::now() < deadline, "never taken over");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // SQLite: one process, nothing to share.
    let (_d, mut s) = store();
    assert!(s.lead("hook").unwrap());
}

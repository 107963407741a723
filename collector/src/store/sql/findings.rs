//! The open findings of every node, kept in the same transactions as the events that change
//! them (`finding_raised`, `finding_resolved`) and made exactly what a hello says on each
//! connection.
//!
//! ```text
//! findings(node, path, key, rule_id, cis, title, severity, rank, status, component, flag,
//!          observed, expected, since, PRIMARY KEY(node, path, key)) WITHOUT ROWID
//!                                     rank = severity's place; stored in node order
//! nodes.findings_epoch, nodes.findings_as_of   the hello the set was last made from: finding
//!                                              events of that epoch up to as_of are in it
//! nodes.checked_cis                            the CIS ids the node's agent evaluates (JSON)
//! ```

use lockdown_proto::v1::Event;

use super::db::{Arg, Db, DbError, args};
use crate::store::{
    FindingCount, FindingCursor, FindingQuery, FindingRow, OpenFinding, Reconcile, Reconciled,
    SEVERITIES,
};

pub(super) fn rank(severity: &str) -> i64 {
    SEVERITIES
        .iter()
        .position(|s| *s == severity)
        .map_or(0, |p| p as i64)
}

/// The hello a node's set was last made from: (epoch, as_of).
pub(super) fn made_from(db: &mut dyn Db, node: &str) -> Result<(u64, u64), DbError> {
    Ok(db
        .opt(
            "SELECT findings_epoch, findings_as_of FROM nodes WHERE node = ?1",
            args![node],
            |r| Ok((r.int(0)? as u64, r.int(1)? as u64)),
        )?
        .unwrap_or_default())
}

/// Applies a batch's newly stored events (in sequence order) to the node's set, skipping
/// those the hello the set was made from already holds. Only each finding's outcome is
/// written, so a batch that raises and resolves one finding many times costs one write: a
/// finding resolved in the batch is deleted, and if raised again after that, open since that
/// raise; one only raised is inserted or updated (keeping since when it was open already).
pub(super) fn apply<'e>(
    db: &mut dyn Db,
    node: &str,
    epoch: u64,
    made_from: (u64, u64),
    events: impl IntoIterator<Item = &'e Event>,
) -> Result<(), DbError> {
    /// What a batch leaves of one finding.
    struct Outcome {
        resolved: bool,
        /// The last raise after the last resolve, and when the first of them was.
        raised: Option<(OpenFinding, String)>,
    }
    let mut order: Vec<(String, String)> = Vec::new();
    let mut outcomes: std::collections::HashMap<(String, String), Outcome> = Default::default();
    for e in events {
        let raised = match e.kind.as_str() {
            "finding_raised" => true,
            "finding_resolved" => false,
            _ => continue,
        };
        if made_from.0 == epoch && e.seq <= made_from.1 {
            continue;
        }
        // Admitted events are the agent's JSON; one that does not decode changes nothing
        // (the next hello makes the set right).
        let Some(mut f) = from_body(&e.body) else {
            tracing::warn!(node, seq = e.seq, "a finding event without a finding");
            continue;
        };
        if !crate::admit::cis_id_ok(&f.cis) {
            f.cis.clear(); // not a CIS id: kept out of the per-check counts
        }
        let k = (f.path.clone(), f.key.clone());
        let o = outcomes.entry(k.clone()).or_insert_with(|| {
            order.push(k);
            Outcome {
                resolved: false,
                raised: None,
            }
        });
        match (&mut o.raised, raised) {
            (Some((last, _)), true) => *last = f,
            (None, true) => o.raised = Some((f, e.time.clone())),
            (_, false) => (o.resolved, o.raised) = (true, None),
        }
    }
    if order.is_empty() {
        return Ok(());
    }
    let mut open: std::collections::HashSet<(String, String)> = db
        .rows(
            "SELECT path, key FROM findings WHERE node = ?1",
            args![node],
            |r| Ok((r.text(0)?.to_string(), r.text(1)?.to_string())),
        )?
        .into_iter()
        .collect();
    for k in order {
        let o = outcomes.remove(&k).expect("each key has its outcome");
        if o.resolved && open.remove(&k) {
            forget(db, node, &k.0, &k.1)?;
        }
        let Some((f, since)) = o.raised else { continue };
        // Only a finding new to the node can take it over the limit.
        if !open.contains(&k) && open.len() >= crate::admit::MAX_NODE_FINDINGS {
            tracing::warn!(
                node,
                rule = f.rule_id,
                limit = crate::admit::MAX_NODE_FINDINGS,
                "a node over the open-findings limit; this one is stored as an event only"
            );
            continue;
        }
        upsert(db, node, &f, &since)?;
        open.insert(k);
    }
    Ok(())
}

fn forget(db: &mut dyn Db, node: &str, path: &str, key: &str) -> Result<(), DbError> {
    db.exec(
        "DELETE FROM findings WHERE node = ?1 AND path = ?2 AND key = ?3",
        args![node, path, key],
    )
    .map(drop)
}

/// The finding an agent's `finding_raised` or `finding_resolved` JSON carries.
fn from_body(body: &[u8]) -> Option<OpenFinding> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let f = v.get("finding")?;
    let text = |v: &serde_json::Value, k: &str| {
        v.get(k)
            .and_then(|x| x.as_str())
            .unwrap_or_default()
            .to_string()
    };
    let rule_id = text(f, "rule_id");
    if rule_id.is_empty() {
        return None;
    }
    let key = match text(&v, "key") {
        k if k.is_empty() => rule_id.clone(), // an agent from before keys
        k => k,
    };
    Some(OpenFinding {
        path: text(&v, "path"),
        key,
        rule_id,
        cis: text(f, "cis"),
        title: text(f, "title"),
        severity: text(f, "severity"),
        status: text(f, "status"),
        component: text(f, "component"),
        flag: text(f, "flag"),
        observed: text(f, "observed"),
        expected: text(f, "expected"),
    })
}

/// Inserts or updates a finding; an update keeps when it was first seen.
fn upsert(db: &mut dyn Db, node: &str, f: &OpenFinding, since: &str) -> Result<(), DbError> {
    db.exec(
        "INSERT INTO findings(node, path, key, rule_id, cis, title, severity, rank, status,
                              component, flag, observed, expected, since)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)
         ON CONFLICT(node, path, key) DO UPDATE SET
           rule_id = excluded.rule_id, cis = excluded.cis, title = excluded.title,
           severity = excluded.severity, rank = excluded.rank, status = excluded.status,
           component = excluded.component, flag = excluded.flag,
           observed = excluded.observed, expected = excluded.expected",
        args![
            node,
            &f.path,
            &f.key,
            &f.rule_id,
            &f.cis,
            &f.title,
            &f.severity,
            rank(&f.severity),
            &f.status,
            &f.component,
            &f.flag,
            &f.observed,
            &f.expected,
            since
        ],
    )
    .map(drop)
}

/// [`crate::store::EventStore::reconcile`] inside a transaction.
pub(super) fn reconcile(db: &mut dyn Db, r: &Reconcile<'_>) -> Result<Reconciled, DbError> {
    use std::collections::BTreeMap;
    let (epoch, acked) = super::node_ack(db, r.node)?;
    let stored: BTreeMap<(String, String), OpenFinding> = list(
        db,
        &FindingQuery {
            node: Some(r.node.to_string()),
            ..Default::default()
        },
        None,
        usize::MAX,
    )?
    .into_iter()
    .map(|row| {
        (
            (row.finding.path.clone(), row.finding.key.clone()),
            row.finding,
        )
    })
    .collect();
    let mut out = Reconciled::default();
    let mut seen = std::collections::BTreeSet::new();
    for f in r.findings {
        let k = (f.path.clone(), f.key.clone());
        match stored.get(&k) {
            None => out.added += 1,
            Some(old) if old != f => out.changed += 1,
            Some(_) => {}
        }
        if stored.get(&k) != Some(f) {
            upsert(db, r.node, f, r.time)?;
        }
        seen.insert(k);
    }
    for (path, key) in stored.keys().filter(|k| !seen.contains(*k)) {
        forget(db, r.node, path, key)?;
        out.removed += 1;
    }
    let checked = serde_json::to_string(r.checked_cis).expect("a list serialises");
    db.exec(
        "UPDATE nodes SET findings_epoch = ?2, findings_as_of = ?3, checked_cis = ?4 WHERE node = ?1",
        args![r.node, r.epoch, r.as_of, &checked],
    )?;
    // A difference is drift only when the store holds every event the set was taken after
    // (its ack is the set's sequence number): events still on their way explain the rest.
    out.drift = epoch == r.epoch && acked >= r.as_of && out.differs();
    if out.drift {
        let body = serde_json::json!({
            "as_of_seq": r.as_of,
            "epoch": r.epoch,
            "added": out.added,
            "removed": out.removed,
            "changed": out.changed,
            "note": "the collector held every event of this node up to as_of_seq and still differed from the agent's open findings (lost events, a restored or replaced store); it now holds the agent's",
        });
        super::collector_event(db, r.node, "findings_reconciled", r.time, "", "", body)?;
    }
    Ok(out)
}

/// [`crate::store::EventStore::findings`].
pub(super) fn list(
    db: &mut dyn Db,
    q: &FindingQuery,
    after: Option<&FindingCursor>,
    limit: usize,
) -> Result<Vec<FindingRow>, DbError> {
    // Empty: no exception covers (every expiry is after "9").
    let now = if q.now.is_empty() { "9" } else { &q.now };
    let mut sql = format!(
        "SELECT * FROM (SELECT f.node, COALESCE(n.cluster, '') AS cluster, f.path, f.key,
                f.rule_id, f.cis, f.title, f.severity, f.rank, f.status, f.component, f.flag,
                f.observed, f.expected, f.since,
                COALESCE({}, '') AS version,
                {} AS exception_id
         FROM findings f LEFT JOIN nodes n ON n.node = f.node) f WHERE 1 = 1",
        db.dialect()
            .json_text("n.component_versions", "f.component"),
        super::exceptions::covering(1)
    );
    let section = q.cis.as_ref().map(|c| format!("{c}.%"));
    let mut args: Vec<Arg<'_>> = vec![now.into()];
    let min_rank = q.min_severity.as_deref().map(rank);
    for (clause, v) in [
        ("f.cluster =", q.cluster.as_ref().map(Arg::from)),
        ("f.node =", q.node.as_ref().map(Arg::from)),
        ("f.rule_id =", q.rule_id.as_ref().map(Arg::from)),
        ("f.status =", q.status.as_ref().map(Arg::from)),
        ("f.rank >=", min_rank.map(Arg::from)),
    ] {
        if let Some(v) = v {
            args.push(v);
            sql.push_str(&format!(" AND {clause} ?{}", args.len()));
        }
    }
    if let (Some(c), Some(section)) = (&q.cis, &section) {
        args.push(c.into());
        let n = args.len();
        args.push(section.into());
        sql.push_str(&format!(" AND (f.cis = ?{n} OR f.cis LIKE ?{})", n + 1));
    }
    match q.excepted {
        Some(true) => sql.push_str(" AND f.exception_id IS NOT NULL"),
        Some(false) => sql.push_str(" AND f.exception_id IS NULL"),
        None => {}
    }
    if let Some((node, path, key)) = after {
        args.extend([Arg::from(node), path.into(), key.into()]);
        let n = args.len();
        sql.push_str(&format!(
            " AND (f.node, f.path, f.key) > (?{}, ?{}, ?{n})",
            n - 2,
            n - 1
        ));
    }
    args.push(limit.into());
    sql.push_str(&format!(
        " ORDER BY f.node, f.path, f.key LIMIT ?{}",
        args.len()
    ));
    db.rows(&sql, &args, |r| {
        let text = |i| r.text(i).map(str::to_string);
        Ok(FindingRow {
            node: text(0)?,
            cluster: text(1)?,
            since: text(14)?,
            version: text(15)?,
            exception_id: r.opt_int(16)?.map(|id| id as u64),
            finding: OpenFinding {
                path: text(2)?,
                key: text(3)?,
                rule_id: text(4)?,
                cis: text(5)?,
                title: text(6)?,
                severity: text(7)?,
                status: text(9)?,
                component: text(10)?,
                flag: text(11)?,
                observed: text(12)?,
                expected: text(13)?,
            },
        })
    })
}

/// [`crate::store::EventStore::finding_counts`]. A plain scan, grouped and judged against
/// the exceptions in force here rather than in SQL: nearly every (node, check) is a group of
/// its own, SQLite's sort for GROUP BY and a per-row EXISTS cost several times the scan, and
/// a fleet has few exceptions (BENCHMARKS.md). [`super::exceptions::Active::covers`] is the
/// same rule as the SQL of [`super::exceptions::covering`]; a test holds them together.
pub(super) fn counts(db: &mut dyn Db, now: &str) -> Result<Vec<FindingCount>, DbError> {
    use crate::fnv::FnvMap;
    let active = super::exceptions::Active::load(db, now)?;
    // Each distinct text once (a thousand nodes, a few dozen checks): rows are grouped by
    // number, without allocating per row.
    let mut names: FnvMap<Box<str>, u32> = FnvMap::default();
    let mut texts: Vec<std::sync::Arc<str>> = Vec::new();
    let mut id = |t: &str| match names.get(t) {
        Some(&i) => i,
        None => {
            names.insert(t.into(), texts.len() as u32);
            texts.push(t.into());
            texts.len() as u32 - 1
        }
    };
    let mut groups: FnvMap<[u32; 5], u32> =
        FnvMap::with_capacity_and_hasher(1024, Default::default());
    let mut last_node = (String::new(), u32::MAX);
    db.each(
        "SELECT node, cis, severity, status, rule_id, path, rank FROM findings",
        &[],
        &mut |r| {
            let node = r.text(0)?;
            // Rows come in node order: a node's name is looked up once per run of its rows.
            if last_node.0 != node {
                last_node = (node.to_string(), id(node));
            }
            let excepted = active.covers(node, r.text(4)?, || Ok((r.text(5)?, r.int(6)?)))?;
            let key = [
                last_node.1,
                id(r.text(1)?),
                id(r.text(2)?),
                id(r.text(3)?),
                u32::from(excepted),
            ];
            *groups.entry(key).or_default() += 1;
            Ok(())
        },
    )?;
    Ok(groups
        .into_iter()
        .map(
            |([node, cis, severity, status, excepted], count)| FindingCount {
                node: texts[node as usize].clone(),
                cis: texts[cis as usize].clone(),
                severity: texts[severity as usize].clone(),
                status: texts[status as usize].clone(),
                excepted: excepted == 1,
                count,
            },
        )
        .collect())
}

/// The CIS ids a node's agent evaluates, from the node row's JSON.
pub(super) fn checked_cis(
    json: &str,
    seen: &mut crate::fnv::FnvMap<String, std::sync::Arc<[String]>>,
) -> std::sync::Arc<[String]> {
    if let Some(list) = seen.get(json) {
        return std::sync::Arc::clone(list);
    }
    let list: std::sync::Arc<[String]> = serde_json::from_str::<Vec<String>>(json)
        .unwrap_or_default()
        .into();
    seen.insert(json.to_string(), std::sync::Arc::clone(&list));
    list
}

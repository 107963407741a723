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

use rusqlite::{Connection, Transaction, params};

use crate::store::{
    FindingCount, FindingCursor, FindingQuery, FindingRow, OpenFinding, Reconcile, Reconciled,
    SEVERITIES,
};
use lockdown_proto::v1::Event;

/// The table, and the node columns older databases lack.
pub(super) fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS findings(
            node TEXT NOT NULL, path TEXT NOT NULL, key TEXT NOT NULL,
            rule_id TEXT NOT NULL, cis TEXT NOT NULL, title TEXT NOT NULL,
            severity TEXT NOT NULL, rank INTEGER NOT NULL, status TEXT NOT NULL,
            component TEXT NOT NULL, flag TEXT NOT NULL, observed TEXT NOT NULL,
            expected TEXT NOT NULL, since TEXT NOT NULL,
            PRIMARY KEY(node, path, key)) WITHOUT ROWID;
         CREATE INDEX IF NOT EXISTS findings_rule ON findings(rule_id);",
    )?;
    let columns: Vec<String> = conn
        .prepare("SELECT name FROM pragma_table_info('nodes')")?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    for (name, ddl) in [
        ("findings_epoch", "INTEGER NOT NULL DEFAULT 0"),
        ("findings_as_of", "INTEGER NOT NULL DEFAULT 0"),
        ("checked_cis", "TEXT NOT NULL DEFAULT '[]'"),
    ] {
        if !columns.iter().any(|c| c == name) {
            conn.execute_batch(&format!("ALTER TABLE nodes ADD COLUMN {name} {ddl}"))?;
        }
    }
    Ok(())
}

pub(super) fn rank(severity: &str) -> i64 {
    SEVERITIES
        .iter()
        .position(|s| *s == severity)
        .map_or(0, |p| p as i64)
}

/// The hello a node's set was last made from: (epoch, as_of).
pub(super) fn made_from(tx: &Transaction<'_>, node: &str) -> rusqlite::Result<(u64, u64)> {
    tx.query_row(
        "SELECT findings_epoch, findings_as_of FROM nodes WHERE node = ?1",
        [node],
        |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)),
    )
}

/// Applies a newly stored event to the node's set, unless the hello it was made from already
/// holds it.
pub(super) fn apply(
    tx: &Transaction<'_>,
    node: &str,
    epoch: u64,
    made_from: (u64, u64),
    e: &Event,
) -> rusqlite::Result<()> {
    let raised = match e.kind.as_str() {
        "finding_raised" => true,
        "finding_resolved" => false,
        _ => return Ok(()),
    };
    if made_from.0 == epoch && e.seq <= made_from.1 {
        return Ok(());
    }
    // Admitted events are the agent's JSON; one that does not decode changes nothing (the
    // next hello makes the set right).
    let Some(mut f) = from_body(&e.body) else {
        tracing::warn!(node, seq = e.seq, "a finding event without a finding");
        return Ok(());
    };
    if !crate::admit::cis_id_ok(&f.cis) {
        f.cis.clear(); // not a CIS id: kept out of the per-check counts
    }
    if raised {
        // Only a finding new to the node can take it over the limit: count only then.
        let known: bool = tx
            .prepare_cached("SELECT 1 FROM findings WHERE node = ?1 AND path = ?2 AND key = ?3")?
            .exists(params![node, f.path, f.key])?;
        let full = || -> rusqlite::Result<bool> {
            let held: i64 = tx
                .prepare_cached("SELECT COUNT(*) FROM findings WHERE node = ?1")?
                .query_row([node], |r| r.get(0))?;
            Ok(held as usize >= crate::admit::MAX_NODE_FINDINGS)
        };
        if !known && full()? {
            tracing::warn!(
                node,
                seq = e.seq,
                limit = crate::admit::MAX_NODE_FINDINGS,
                "a node over the open-findings limit; this one is stored as an event only"
            );
            return Ok(());
        }
        upsert(tx, node, &f, &e.time)
    } else {
        tx.execute(
            "DELETE FROM findings WHERE node = ?1 AND path = ?2 AND key = ?3",
            params![node, f.path, f.key],
        )
        .map(drop)
    }
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
fn upsert(tx: &Transaction<'_>, node: &str, f: &OpenFinding, since: &str) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO findings(node, path, key, rule_id, cis, title, severity, rank, status,
                              component, flag, observed, expected, since)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)
         ON CONFLICT(node, path, key) DO UPDATE SET
           rule_id = excluded.rule_id, cis = excluded.cis, title = excluded.title,
           severity = excluded.severity, rank = excluded.rank, status = excluded.status,
           component = excluded.component, flag = excluded.flag,
           observed = excluded.observed, expected = excluded.expected",
    )?
    .execute(params![
        node,
        f.path,
        f.key,
        f.rule_id,
        f.cis,
        f.title,
        f.severity,
        rank(&f.severity),
        f.status,
        f.component,
        f.flag,
        f.observed,
        f.expected,
        since
    ])
    .map(drop)
}

/// [`crate::store::EventStore::reconcile`] inside a transaction.
pub(super) fn reconcile(tx: &Transaction<'_>, r: &Reconcile<'_>) -> rusqlite::Result<Reconciled> {
    use std::collections::BTreeMap;
    tx.execute("INSERT OR IGNORE INTO nodes(node) VALUES (?1)", [r.node])?;
    let stored: BTreeMap<(String, String), OpenFinding> = list(
        tx,
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
            upsert(tx, r.node, f, r.time)?;
        }
        seen.insert(k);
    }
    for (path, key) in stored.keys().filter(|k| !seen.contains(*k)) {
        tx.execute(
            "DELETE FROM findings WHERE node = ?1 AND path = ?2 AND key = ?3",
            params![r.node, path, key],
        )?;
        out.removed += 1;
    }
    tx.execute(
        "UPDATE nodes SET findings_epoch = ?2, findings_as_of = ?3, checked_cis = ?4 WHERE node = ?1",
        params![
            r.node,
            r.epoch as i64,
            r.as_of as i64,
            serde_json::to_string(r.checked_cis).expect("a list serialises")
        ],
    )?;
    // A difference is drift only when the store holds every event the set was taken after
    // (its ack is the set's sequence number): events still on their way explain the rest.
    let (epoch, acked): (i64, i64) = tx.query_row(
        "SELECT epoch, acked FROM nodes WHERE node = ?1",
        [r.node],
        |row| Ok((row.get(0)?, row.get(1)?)),
    )?;
    out.drift = epoch as u64 == r.epoch && acked as u64 >= r.as_of && out.differs();
    if out.drift {
        let body = serde_json::json!({
            "as_of_seq": r.as_of,
            "epoch": r.epoch,
            "added": out.added,
            "removed": out.removed,
            "changed": out.changed,
            "note": "the collector held every event of this node up to as_of_seq and still differed from the agent's open findings (lost events, a restored or replaced store); it now holds the agent's",
        });
        super::collector_event(tx, r.node, "findings_reconciled", r.time, "", "", body)?;
    }
    Ok(out)
}

/// [`crate::store::EventStore::findings`].
pub(super) fn list(
    conn: &Connection,
    q: &FindingQuery,
    after: Option<&FindingCursor>,
    limit: usize,
) -> rusqlite::Result<Vec<FindingRow>> {
    // Empty: no exception covers (every expiry is after "9").
    let now = if q.now.is_empty() { "9" } else { &q.now };
    let mut sql = format!(
        "SELECT * FROM (SELECT f.node, COALESCE(n.cluster, '') AS cluster, f.path, f.key,
                f.rule_id, f.cis, f.title, f.severity, f.rank, f.status, f.component, f.flag,
                f.observed, f.expected, f.since,
                COALESCE(json_extract(n.component_versions, '$.\"' || f.component || '\"'), ''),
                {} AS exception_id
         FROM findings f LEFT JOIN nodes n ON n.node = f.node) f WHERE 1",
        super::exceptions::covering(1)
    );
    let mut args: Vec<rusqlite::types::Value> = vec![now.to_string().into()];
    let mut add = |clause: &str, v: rusqlite::types::Value| {
        args.push(v);
        sql.push_str(&format!(" AND {clause} ?{}", args.len()));
    };
    if let Some(c) = &q.cluster {
        add("f.cluster =", c.clone().into());
    }
    if let Some(n) = &q.node {
        add("f.node =", n.clone().into());
    }
    if let Some(r) = &q.rule_id {
        add("f.rule_id =", r.clone().into());
    }
    if let Some(s) = &q.status {
        add("f.status =", s.clone().into());
    }
    if let Some(s) = &q.min_severity {
        add("f.rank >=", rank(s).into());
    }
    if let Some(c) = &q.cis {
        args.push(c.clone().into());
        let n = args.len();
        args.push(format!("{c}.%").into());
        sql.push_str(&format!(" AND (f.cis = ?{n} OR f.cis LIKE ?{})", n + 1));
    }
    match q.excepted {
        Some(true) => sql.push_str(" AND f.exception_id IS NOT NULL"),
        Some(false) => sql.push_str(" AND f.exception_id IS NULL"),
        None => {}
    }
    if let Some((node, path, key)) = after {
        args.extend([node.clone().into(), path.clone().into(), key.clone().into()]);
        let n = args.len();
        sql.push_str(&format!(
            " AND (f.node, f.path, f.key) > (?{}, ?{}, ?{n})",
            n - 2,
            n - 1
        ));
    }
    args.push((limit.min(i64::MAX as usize) as i64).into());
    sql.push_str(&format!(
        " ORDER BY f.node, f.path, f.key LIMIT ?{}",
        args.len()
    ));
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map(rusqlite::params_from_iter(args), |r| {
        Ok(FindingRow {
            node: r.get(0)?,
            cluster: r.get(1)?,
            since: r.get(14)?,
            version: r.get(15)?,
            exception_id: r.get::<_, Option<i64>>(16)?.map(|id| id as u64),
            finding: OpenFinding {
                path: r.get(2)?,
                key: r.get(3)?,
                rule_id: r.get(4)?,
                cis: r.get(5)?,
                title: r.get(6)?,
                severity: r.get(7)?,
                status: r.get(9)?,
                component: r.get(10)?,
                flag: r.get(11)?,
                observed: r.get(12)?,
                expected: r.get(13)?,
            },
        })
    })?;
    rows.collect()
}

/// [`crate::store::EventStore::finding_counts`]. A plain scan, grouped and judged against
/// the exceptions in force here rather than in SQL: nearly every (node, check) is a group of
/// its own, SQLite's sort for GROUP BY and a per-row EXISTS cost several times the scan, and
/// a fleet has few exceptions (BENCHMARKS.md). [`super::exceptions::Active::covers`] is the
/// same rule as the SQL of [`super::exceptions::covering`]; a test holds them together.
pub(super) fn counts(conn: &Connection, now: &str) -> rusqlite::Result<Vec<FindingCount>> {
    use crate::fnv::FnvMap;
    let active = super::exceptions::Active::load(conn, now)?;
    let mut stmt = conn
        .prepare_cached("SELECT node, cis, severity, status, rule_id, path, rank FROM findings")?;
    // Each distinct text once (a thousand nodes, a few dozen checks): rows are grouped by
    // number, without allocating per row; texts are looked up by their bytes, and checked
    // as UTF-8 once each.
    let mut names: FnvMap<Vec<u8>, u32> = FnvMap::default();
    let mut texts: Vec<Vec<u8>> = Vec::new();
    let mut id = |t: &[u8]| match names.get(t) {
        Some(&i) => i,
        None => {
            names.insert(t.to_vec(), texts.len() as u32);
            texts.push(t.to_vec());
            texts.len() as u32 - 1
        }
    };
    let mut groups: FnvMap<[u32; 5], u32> =
        FnvMap::with_capacity_and_hasher(1024, Default::default());
    let mut last_node = (Vec::new(), u32::MAX);
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let bytes = |i: usize| -> rusqlite::Result<&[u8]> {
            r.get_ref(i)?.as_bytes().map_err(|e| {
                rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, e.into())
            })
        };
        let text = |i: usize| -> rusqlite::Result<&str> {
            std::str::from_utf8(bytes(i)?).map_err(|e| {
                rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, e.into())
            })
        };
        let node = bytes(0)?;
        // Rows come in node order: a node's name is looked up once per run of its rows.
        if last_node.0 != node {
            last_node = (node.to_vec(), id(node));
        }
        let excepted = active.covers(text(0)?, text(4)?, || Ok((text(5)?, r.get(6)?)))?;
        let key = [
            last_node.1,
            id(bytes(1)?),
            id(bytes(2)?),
            id(bytes(3)?),
            u32::from(excepted),
        ];
        *groups.entry(key).or_default() += 1;
    }
    let texts: Vec<std::sync::Arc<str>> = texts
        .into_iter()
        .map(|t| String::from_utf8_lossy(&t).into())
        .collect();
    let out: Vec<FindingCount> = groups
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
        .collect();
    Ok(out)
}

/// The CIS ids a node's agent evaluates, from the node row's JSON.
pub(super) fn checked_cis(
    json: Option<String>,
    seen: &mut crate::fnv::FnvMap<String, std::sync::Arc<[String]>>,
) -> std::sync::Arc<[String]> {
    let json = json.unwrap_or_default();
    if let Some(list) = seen.get(&json) {
        return std::sync::Arc::clone(list);
    }
    let list: std::sync::Arc<[String]> = serde_json::from_str::<Vec<String>>(&json)
        .unwrap_or_default()
        .into();
    seen.insert(json, std::sync::Arc::clone(&list));
    list
}

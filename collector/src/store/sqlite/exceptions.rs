//! Accepted risks, kept centrally, and what they cover.
//!
//! ```text
//! exceptions(id INTEGER PRIMARY KEY AUTOINCREMENT, rule_id, node, cluster, path,
//!            max_severity, max_rank, reason, author, created, expires,
//!            removed_by, removed_at, announced)   announced: its expiry is an event already
//! ```
//!
//! Every change is an event of the collector's own (node "", epoch 0), readable by readers
//! and delivered to sinks like any other.

use rusqlite::{Connection, OptionalExtension, Transaction, params};

use super::collector_event;
use crate::store::Exception;

pub(super) fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS exceptions(
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            rule_id TEXT NOT NULL, node TEXT NOT NULL, cluster TEXT NOT NULL, path TEXT NOT NULL,
            max_severity TEXT NOT NULL, max_rank INTEGER NOT NULL,
            reason TEXT NOT NULL, author TEXT NOT NULL, created TEXT NOT NULL, expires TEXT NOT NULL,
            removed_by TEXT NOT NULL DEFAULT '', removed_at TEXT NOT NULL DEFAULT '',
            announced INTEGER NOT NULL DEFAULT 0);
         CREATE INDEX IF NOT EXISTS exceptions_rule ON exceptions(rule_id);",
    )
}

/// The SQL that finds the active exception covering finding `f` (joined with its node `n`)
/// at time `?now` (the parameter's number is given): its id, or NULL. [`Active::covers`]
/// is the same rule for many findings at once.
pub(super) fn covering(now: usize) -> String {
    format!(
        "(SELECT MIN(x.id) FROM exceptions x
          WHERE x.rule_id = f.rule_id AND x.removed_at = '' AND x.expires > ?{now}
            AND (x.node = '' OR x.node = f.node)
            AND (x.cluster = '' OR x.cluster = COALESCE(n.cluster, ''))
            AND (x.path = '' OR x.path = f.path)
            AND f.rank <= x.max_rank)"
    )
}

/// The exceptions in force at one time, by rule, to judge many findings against.
pub(super) struct Active {
    by_rule: crate::fnv::FnvMap<String, Vec<Scope>>,
    /// Node -> cluster, loaded only when an exception names a cluster.
    clusters: crate::fnv::FnvMap<String, String>,
}

/// What one exception covers.
struct Scope {
    node: String,
    cluster: String,
    path: String,
    max_rank: i64,
}

impl Active {
    pub(super) fn load(conn: &Connection, now: &str) -> rusqlite::Result<Active> {
        let mut by_rule: crate::fnv::FnvMap<String, Vec<Scope>> = Default::default();
        let mut stmt = conn.prepare_cached(
            "SELECT rule_id, node, cluster, path, max_rank FROM exceptions
             WHERE removed_at = '' AND expires > ?1",
        )?;
        let mut rows = stmt.query([now])?;
        while let Some(r) = rows.next()? {
            by_rule.entry(r.get(0)?).or_default().push(Scope {
                node: r.get(1)?,
                cluster: r.get(2)?,
                path: r.get(3)?,
                max_rank: r.get(4)?,
            });
        }
        let clusters = if by_rule.values().flatten().any(|x| !x.cluster.is_empty()) {
            conn.prepare_cached("SELECT node, cluster FROM nodes")?
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?
        } else {
            Default::default()
        };
        Ok(Active { by_rule, clusters })
    }

    /// Whether one of them covers a finding of `rule` on `node` whose path and severity
    /// rank `rest` gives (asked only when an exception names the rule): the rule of
    /// [`covering`].
    pub(super) fn covers<'r>(
        &self,
        node: &str,
        rule: &str,
        rest: impl FnOnce() -> rusqlite::Result<(&'r str, i64)>,
    ) -> rusqlite::Result<bool> {
        let Some(scopes) = self.by_rule.get(rule) else {
            return Ok(false);
        };
        let (path, rank) = rest()?;
        Ok(scopes.iter().any(|x| {
            (x.node.is_empty() || x.node == node)
                && (x.cluster.is_empty()
                    || self.clusters.get(node).is_some_and(|c| *c == x.cluster))
                && (x.path.is_empty() || x.path == path)
                && rank <= x.max_rank
        }))
    }
}

const COLUMNS: &str = "id, rule_id, node, cluster, path, max_severity, reason, author, created, \
                       expires, removed_by, removed_at";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Exception> {
    Ok(Exception {
        id: r.get::<_, i64>(0)? as u64,
        rule_id: r.get(1)?,
        node: r.get(2)?,
        cluster: r.get(3)?,
        path: r.get(4)?,
        max_severity: r.get(5)?,
        reason: r.get(6)?,
        author: r.get(7)?,
        created: r.get(8)?,
        expires: r.get(9)?,
        removed_by: r.get(10)?,
        removed_at: r.get(11)?,
    })
}

fn fields(x: &Exception) -> serde_json::Value {
    serde_json::json!({
        "id": x.id, "rule_id": x.rule_id, "node": x.node, "cluster": x.cluster, "path": x.path,
        "max_severity": x.max_severity, "reason": x.reason, "author": x.author,
        "created": x.created, "expires": x.expires,
    })
}

fn get(tx: &Transaction<'_>, id: u64) -> rusqlite::Result<Option<Exception>> {
    tx.query_row(
        &format!("SELECT {COLUMNS} FROM exceptions WHERE id = ?1"),
        [id as i64],
        row,
    )
    .optional()
}

pub(super) fn add(tx: &Transaction<'_>, x: &Exception, rank: i64) -> rusqlite::Result<Exception> {
    tx.execute(
        "INSERT INTO exceptions(rule_id, node, cluster, path, max_severity, max_rank, reason,
                                author, created, expires)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        params![
            x.rule_id,
            x.node,
            x.cluster,
            x.path,
            x.max_severity,
            rank,
            x.reason,
            x.author,
            x.created,
            x.expires
        ],
    )?;
    let added = get(tx, tx.last_insert_rowid() as u64)?.expect("just inserted");
    collector_event(
        tx,
        "",
        "exception_added",
        &added.created,
        &added.rule_id,
        &added.path,
        {
            let mut f = fields(&added);
            f["by"] = added.author.clone().into();
            f
        },
    )?;
    Ok(added)
}

pub(super) fn remove(
    tx: &Transaction<'_>,
    id: u64,
    by: &str,
    time: &str,
) -> rusqlite::Result<Option<Exception>> {
    let n = tx.execute(
        "UPDATE exceptions SET removed_by = ?2, removed_at = ?3 WHERE id = ?1 AND removed_at = ''",
        params![id as i64, by, time],
    )?;
    if n == 0 {
        return Ok(None);
    }
    let x = get(tx, id)?.expect("just updated");
    let mut f = fields(&x);
    f["by"] = by.into();
    collector_event(tx, "", "exception_removed", time, &x.rule_id, &x.path, f)?;
    Ok(Some(x))
}

pub(super) fn list(conn: &Connection) -> rusqlite::Result<Vec<Exception>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM exceptions ORDER BY id DESC"
    ))?;
    let rows = stmt.query_map([], row)?;
    rows.collect()
}

pub(super) fn expire(tx: &Transaction<'_>, now: &str) -> rusqlite::Result<Vec<Exception>> {
    let due: Vec<Exception> = tx
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM exceptions
             WHERE announced = 0 AND removed_at = '' AND expires <= ?1 ORDER BY expires, id"
        ))?
        .query_map([now], row)?
        .collect::<Result<_, _>>()?;
    for x in &due {
        tx.execute(
            "UPDATE exceptions SET announced = 1 WHERE id = ?1",
            [x.id as i64],
        )?;
        // The event is dated when the exception expired, not when this collector noticed.
        let mut f = fields(x);
        f["noticed"] = now.into();
        collector_event(
            tx,
            "",
            "exception_expired",
            &x.expires,
            &x.rule_id,
            &x.path,
            f,
        )?;
    }
    Ok(due)
}

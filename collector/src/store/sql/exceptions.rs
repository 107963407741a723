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

use super::collector_event;
use super::db::{Db, DbError, Row, args};
use crate::store::Exception;

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
    pub(super) fn load(db: &mut dyn Db, now: &str) -> Result<Active, DbError> {
        let mut by_rule: crate::fnv::FnvMap<String, Vec<Scope>> = Default::default();
        db.each(
            "SELECT rule_id, node, cluster, path, max_rank FROM exceptions
             WHERE removed_at = '' AND expires > ?1",
            args![now],
            &mut |r| {
                by_rule
                    .entry(r.text(0)?.to_string())
                    .or_default()
                    .push(Scope {
                        node: r.text(1)?.to_string(),
                        cluster: r.text(2)?.to_string(),
                        path: r.text(3)?.to_string(),
                        max_rank: r.int(4)?,
                    });
                Ok(())
            },
        )?;
        let clusters = if by_rule.values().flatten().any(|x| !x.cluster.is_empty()) {
            db.rows("SELECT node, cluster FROM nodes", &[], |r| {
                Ok((r.text(0)?.to_string(), r.text(1)?.to_string()))
            })?
            .into_iter()
            .collect()
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
        rest: impl FnOnce() -> Result<(&'r str, i64), DbError>,
    ) -> Result<bool, DbError> {
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

fn row(r: &dyn Row) -> Result<Exception, DbError> {
    let text = |i| r.text(i).map(str::to_string);
    Ok(Exception {
        id: r.int(0)? as u64,
        rule_id: text(1)?,
        node: text(2)?,
        cluster: text(3)?,
        path: text(4)?,
        max_severity: text(5)?,
        reason: text(6)?,
        author: text(7)?,
        created: text(8)?,
        expires: text(9)?,
        removed_by: text(10)?,
        removed_at: text(11)?,
    })
}

fn fields(x: &Exception) -> serde_json::Value {
    serde_json::json!({
        "id": x.id, "rule_id": x.rule_id, "node": x.node, "cluster": x.cluster, "path": x.path,
        "max_severity": x.max_severity, "reason": x.reason, "author": x.author,
        "created": x.created, "expires": x.expires,
    })
}

fn get(db: &mut dyn Db, id: u64) -> Result<Option<Exception>, DbError> {
    db.opt(
        &format!("SELECT {COLUMNS} FROM exceptions WHERE id = ?1"),
        args![id],
        row,
    )
}

pub(super) fn add(db: &mut dyn Db, x: &Exception, rank: i64) -> Result<Exception, DbError> {
    let added = db
        .opt(
            &format!(
                "INSERT INTO exceptions(rule_id, node, cluster, path, max_severity, max_rank,
                                        reason, author, created, expires)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) RETURNING {COLUMNS}"
            ),
            args![
                &x.rule_id,
                &x.node,
                &x.cluster,
                &x.path,
                &x.max_severity,
                rank,
                &x.reason,
                &x.author,
                &x.created,
                &x.expires
            ],
            row,
        )?
        .expect("an INSERT ... RETURNING returns its row");
    collector_event(
        db,
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
    db: &mut dyn Db,
    id: u64,
    by: &str,
    time: &str,
) -> Result<Option<Exception>, DbError> {
    let n = db.exec(
        "UPDATE exceptions SET removed_by = ?2, removed_at = ?3 WHERE id = ?1 AND removed_at = ''",
        args![id, by, time],
    )?;
    if n == 0 {
        return Ok(None);
    }
    let x = get(db, id)?.expect("just updated");
    let mut f = fields(&x);
    f["by"] = by.into();
    collector_event(db, "", "exception_removed", time, &x.rule_id, &x.path, f)?;
    Ok(Some(x))
}

pub(super) fn list(db: &mut dyn Db) -> Result<Vec<Exception>, DbError> {
    db.rows(
        &format!("SELECT {COLUMNS} FROM exceptions ORDER BY id DESC"),
        &[],
        row,
    )
}

pub(super) fn expire(db: &mut dyn Db, now: &str) -> Result<Vec<Exception>, DbError> {
    let due: Vec<Exception> = db.rows(
        &format!(
            "SELECT {COLUMNS} FROM exceptions
             WHERE announced = 0 AND removed_at = '' AND expires <= ?1 ORDER BY expires, id"
        ),
        args![now],
        row,
    )?;
    for x in &due {
        db.exec(
            "UPDATE exceptions SET announced = 1 WHERE id = ?1",
            args![x.id],
        )?;
        // The event is dated when the exception expired, not when this collector noticed.
        let mut f = fields(x);
        f["noticed"] = now.into();
        collector_event(
            db,
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

//! The SQLite store (the default, embedded).
//!
//! ## Format (WAL, `synchronous=FULL`)
//!
//! ```text
//! events(cursor INTEGER PRIMARY KEY AUTOINCREMENT, node, epoch, seq, time, kind, severity,
//!        rule_id, path, body, UNIQUE(node, epoch, seq))   cursor = store-wide commit order
//! gaps(node, epoch, first_seq, last_seq)     ranges an agent's spool_overflow event says it dropped
//! nodes(node PRIMARY KEY, epoch, acked, cluster, agent_version, component_versions,
//!       open_findings, last_seen)            acked = highest seq of the current epoch below
//!                                            which all is stored
//! sinks(name PRIMARY KEY, cursor)            each sink's delivery cursor
//! ```
//!
//! Inserts are `INSERT OR IGNORE` on the unique key (invariant 1); a transaction commits
//! with `synchronous=FULL` before its acks are returned (invariant 2).

use std::path::Path;

use lockdown_proto::v1::Event;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::{
    Batch, EventStore, Exception, Filter, FindingCount, FindingCursor, FindingQuery, FindingRow,
    NodeInfo, Reconcile, Reconciled, SEVERITIES, StoreError, Stored, overflow_range,
};

mod exceptions;
mod findings;

/// The store.
#[derive(Debug)]
pub struct Store {
    path: String,
    conn: Connection,
}

impl Store {
    /// Opens (creating) the database at `path`.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let p = path.display().to_string();
        let db = |source| StoreError::Db {
            path: p.clone(),
            source,
        };
        let conn = Connection::open(path).map_err(db)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(db)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(db)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(db)?;
        // 32 MiB of pages per connection (the default is 2 MiB): the summary scans every open
        // finding, and re-reading its pages through the kernel on every call costs more than
        // the scan.
        conn.pragma_update(None, "cache_size", -32768).map_err(db)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS events(
                cursor INTEGER PRIMARY KEY AUTOINCREMENT,
                node TEXT NOT NULL, epoch INTEGER NOT NULL, seq INTEGER NOT NULL, time TEXT NOT NULL,
                kind TEXT NOT NULL, severity TEXT NOT NULL, rule_id TEXT NOT NULL, path TEXT NOT NULL,
                body BLOB NOT NULL, UNIQUE(node, epoch, seq));
             CREATE INDEX IF NOT EXISTS events_time ON events(time);
             CREATE TABLE IF NOT EXISTS gaps(node TEXT NOT NULL, epoch INTEGER NOT NULL,
                first_seq INTEGER NOT NULL, last_seq INTEGER NOT NULL);
             CREATE INDEX IF NOT EXISTS gaps_node ON gaps(node, epoch, first_seq);
             CREATE TABLE IF NOT EXISTS nodes(
                node TEXT PRIMARY KEY, epoch INTEGER NOT NULL DEFAULT 0, acked INTEGER NOT NULL DEFAULT 0,
                cluster TEXT NOT NULL DEFAULT '',
                agent_version TEXT NOT NULL DEFAULT '', component_versions TEXT NOT NULL DEFAULT '{}',
                open_findings TEXT NOT NULL DEFAULT '{}', last_seen TEXT NOT NULL DEFAULT '');
             CREATE TABLE IF NOT EXISTS sinks(name TEXT PRIMARY KEY, cursor INTEGER NOT NULL);",
        )
        .map_err(db)?;
        findings::migrate(&conn).map_err(db)?;
        exceptions::migrate(&conn).map_err(db)?;
        Ok(Store { path: p, conn })
    }

    fn db(&self) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
        |source| StoreError::Db {
            path: self.path.clone(),
            source,
        }
    }

    /// Stores a batch of one node's events of one epoch (already validated) and returns the
    /// node's ack: the highest sequence number below which every event is stored or
    /// explained.
    pub fn insert(&mut self, node: &str, epoch: u64, events: &[Event]) -> Result<u64, StoreError> {
        let batch = Batch {
            node,
            epoch,
            covers_from: 0,
            events,
        };
        Ok(self.insert_many(&[batch], &[])?[0])
    }

    /// Stores several batches, and what agents said about themselves, in one transaction
    /// Runs `f` in one immediate transaction and commits it (durably: `synchronous=FULL`).
    fn write<T>(
        &mut self,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        let path = self.path.clone();
        let db = |source| StoreError::Db {
            path: path.clone(),
            source,
        };
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db)?;
        let out = f(&tx).map_err(db)?;
        tx.commit().map_err(db)?;
        Ok(out)
    }

    /// Takes an agent at its word that every event of `epoch` below `first_unacked` was
    /// acknowledged: it trimmed them, so nobody will ever send them again. Each missing range
    /// below it (this store was wiped, restored from an older backup, or replaced) is recorded
    /// as a gap with a `acked_by_earlier_store` event at the range's last sequence number, so
    /// The ack of a node in `epoch`: 0 when the node's current epoch is another one.
    pub fn acked_in(&self, node: &str, epoch: u64) -> Result<u64, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT acked FROM nodes WHERE node = ?1 AND epoch = ?2",
                params![node, epoch as i64],
                |r| r.get::<_, i64>(0),
            )
            .optional()
            .map_err(self.db())?
            .unwrap_or(0) as u64)
    }

    /// Deletes events older than `max_age` and all but the newest `max_events`. Acks are
    /// Every stored (node, seq), for tests and audits.
    pub fn keys(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT node, seq FROM events ORDER BY node, seq")
            .map_err(self.db())?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))
            .map_err(self.db())?;
        rows.collect::<Result<_, _>>().map_err(self.db())
    }
}

impl EventStore for Store {
    fn insert_many(
        &mut self,
        batches: &[Batch<'_>],
        touches: &[NodeInfo],
    ) -> Result<Vec<u64>, StoreError> {
        self.write(|tx| {
            for info in touches {
                touch(tx, info)?;
            }
            batches.iter().map(|b| insert_batch(tx, b)).collect()
        })
    }

    fn settle(
        &mut self,
        node: &str,
        epoch: u64,
        first_unacked: u64,
        time: &str,
    ) -> Result<u64, StoreError> {
        self.write(|tx| settle(tx, node, epoch, first_unacked, time))
    }

    fn touch_node(&mut self, info: &NodeInfo) -> Result<(), StoreError> {
        touch(&self.conn, info).map_err(self.db())
    }

    fn acked(&self, node: &str) -> Result<u64, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT acked FROM nodes WHERE node = ?1", [node], |r| {
                r.get::<_, i64>(0)
            })
            .optional()
            .map_err(self.db())?
            .unwrap_or(0) as u64)
    }

    fn list(
        &self,
        filter: &Filter,
        after_cursor: u64,
        limit: usize,
    ) -> Result<Vec<Stored>, StoreError> {
        let mut sql = String::from(
            "SELECT cursor, node, seq, time, kind, severity, rule_id, path, body, epoch FROM events WHERE cursor > ?1",
        );
        let mut args: Vec<rusqlite::types::Value> = vec![(after_cursor as i64).into()];
        let mut add = |clause: &str, v: rusqlite::types::Value| {
            args.push(v);
            sql.push_str(&format!(" AND {clause} ?{}", args.len()));
        };
        if let Some(n) = &filter.node {
            add("node =", n.clone().into());
        }
        if let Some(k) = &filter.kind {
            add("kind =", k.clone().into());
        }
        if let Some(r) = &filter.rule_id {
            add("rule_id =", r.clone().into());
        }
        if let Some(s) = &filter.since {
            add("time >=", s.clone().into());
        }
        if let Some(u) = &filter.until {
            add("time <", u.clone().into());
        }
        if let Some(min) = &filter.min_severity {
            let at = SEVERITIES.iter().position(|s| s == min).unwrap_or(0);
            let list = SEVERITIES[at..]
                .iter()
                .map(|s| format!("'{s}'"))
                .collect::<Vec<_>>()
                .join(",");
            sql.push_str(&format!(" AND severity IN ({list})"));
        }
        args.push((limit as i64).into());
        sql.push_str(&format!(" ORDER BY cursor LIMIT ?{}", args.len()));
        let mut stmt = self.conn.prepare_cached(&sql).map_err(self.db())?;
        let rows = stmt
            .query_map(rusqlite::params_from_iter(args), |r| {
                Ok(Stored {
                    cursor: r.get::<_, i64>(0)? as u64,
                    event: Event {
                        node: r.get(1)?,
                        seq: r.get::<_, i64>(2)? as u64,
                        time: r.get(3)?,
                        kind: r.get(4)?,
                        severity: r.get(5)?,
                        rule_id: r.get(6)?,
                        path: r.get(7)?,
                        body: r.get(8)?,
                        epoch: r.get::<_, i64>(9)? as u64,
                    },
                })
            })
            .map_err(self.db())?;
        rows.collect::<Result<_, _>>().map_err(self.db())
    }

    fn nodes(&self) -> Result<Vec<NodeInfo>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT node, cluster, agent_version, component_versions, open_findings, last_seen, acked,
                        checked_cis
                 FROM nodes ORDER BY node",
            )
            .map_err(self.db())?;
        let mut lists = crate::fnv::FnvMap::default();
        let rows = stmt
            .query_map([], |r| {
                Ok(NodeInfo {
                    node: r.get(0)?,
                    cluster: r.get(1)?,
                    agent_version: r.get(2)?,
                    component_versions: serde_json::from_str(&r.get::<_, String>(3)?)
                        .unwrap_or_default(),
                    open_findings: serde_json::from_str(&r.get::<_, String>(4)?)
                        .unwrap_or_default(),
                    last_seen: r.get(5)?,
                    acked: r.get::<_, i64>(6)? as u64,
                    checked_cis: findings::checked_cis(r.get(7)?, &mut lists),
                })
            })
            .map_err(self.db())?;
        rows.collect::<Result<_, _>>().map_err(self.db())
    }

    fn max_cursor(&self) -> Result<u64, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT COALESCE(MAX(cursor), 0) FROM events", [], |r| {
                r.get::<_, i64>(0)
            })
            .map_err(self.db())? as u64)
    }

    fn reconcile(&mut self, r: &Reconcile<'_>) -> Result<Reconciled, StoreError> {
        self.write(|tx| findings::reconcile(tx, r))
    }

    fn findings(
        &self,
        q: &FindingQuery,
        after: Option<&FindingCursor>,
        limit: usize,
    ) -> Result<Vec<FindingRow>, StoreError> {
        findings::list(&self.conn, q, after, limit).map_err(self.db())
    }

    fn finding_counts(&self, now: &str) -> Result<Vec<FindingCount>, StoreError> {
        findings::counts(&self.conn, now).map_err(self.db())
    }

    fn add_exception(&mut self, x: &Exception) -> Result<Exception, StoreError> {
        self.write(|tx| exceptions::add(tx, x, findings::rank(&x.max_severity)))
    }

    fn remove_exception(
        &mut self,
        id: u64,
        by: &str,
        time: &str,
    ) -> Result<Option<Exception>, StoreError> {
        self.write(|tx| exceptions::remove(tx, id, by, time))
    }

    fn exceptions(&self) -> Result<Vec<Exception>, StoreError> {
        exceptions::list(&self.conn).map_err(self.db())
    }

    fn expire_exceptions(&mut self, now: &str) -> Result<Vec<Exception>, StoreError> {
        self.write(|tx| exceptions::expire(tx, now))
    }

    fn sink_cursor(&self, name: &str) -> Result<u64, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT cursor FROM sinks WHERE name = ?1", [name], |r| {
                r.get::<_, i64>(0)
            })
            .optional()
            .map_err(self.db())?
            .unwrap_or(0) as u64)
    }

    fn set_sink_cursor(&mut self, name: &str, cursor: u64) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.execute(
                "INSERT INTO sinks(name, cursor) VALUES (?1, ?2)
                 ON CONFLICT(name) DO UPDATE SET cursor = max(cursor, excluded.cursor)",
                params![name, cursor as i64],
            )
            .map(drop)
        })
    }

    fn retain(
        &mut self,
        max_age: Option<std::time::Duration>,
        max_events: Option<u64>,
    ) -> Result<u64, StoreError> {
        let mut n = 0;
        if let Some(age) = max_age {
            let cutoff = std::time::SystemTime::now()
                .checked_sub(age)
                .unwrap_or(std::time::UNIX_EPOCH);
            let cutoff = humantime::format_rfc3339_millis(cutoff).to_string();
            n += self
                .conn
                .execute("DELETE FROM events WHERE time < ?1", [cutoff])
                .map_err(self.db())? as u64;
        }
        if let Some(keep) = max_events {
            n += self
                .conn
                .execute(
                    "DELETE FROM events WHERE cursor <= (SELECT COALESCE(MAX(cursor), 0) FROM events) - ?1",
                    [keep as i64],
                )
                .map_err(self.db())? as u64;
        }
        Ok(n)
    }
}

fn touch(conn: &Connection, info: &NodeInfo) -> rusqlite::Result<()> {
    let versions = serde_json::to_string(&info.component_versions).expect("map serialises");
    let findings = serde_json::to_string(&info.open_findings).expect("map serialises");
    conn.execute(
        "INSERT INTO nodes(node, cluster, agent_version, component_versions, open_findings, last_seen)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT(node) DO UPDATE SET
           cluster = CASE WHEN ?2 = '' THEN cluster ELSE ?2 END,
           agent_version = CASE WHEN ?3 = '' THEN agent_version ELSE ?3 END,
           component_versions = ?4, open_findings = ?5, last_seen = ?6",
        params![
            info.node,
            info.cluster,
            info.agent_version,
            versions,
            findings,
            info.last_seen
        ],
    )?;
    Ok(())
}

fn insert_batch(tx: &rusqlite::Transaction<'_>, b: &Batch<'_>) -> rusqlite::Result<u64> {
    let (node, epoch, events) = (b.node, b.epoch, b.events);
    tx.execute("INSERT OR IGNORE INTO nodes(node) VALUES (?1)", [node])?;
    let (current, mut acked): (u64, u64) = tx.query_row(
        "SELECT epoch, acked FROM nodes WHERE node = ?1",
        [node],
        |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)),
    )?;
    if current != epoch {
        // A new spool on this node: its sequence numbers start again.
        acked = 0;
    }
    let made_from = findings::made_from(tx, node)?;
    let mut ins = tx.prepare_cached(
        "INSERT OR IGNORE INTO events(node, epoch, seq, time, kind, severity, rule_id, path, body)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?;
    let mut gap = tx.prepare_cached(
        "INSERT INTO gaps(node, epoch, first_seq, last_seq) VALUES (?1, ?2, ?3, ?4)",
    )?;
    for e in events {
        let n = ins.execute(params![
            node,
            epoch as i64,
            e.seq as i64,
            e.time,
            e.kind,
            e.severity,
            e.rule_id,
            e.path,
            e.body
        ])?;
        if n == 1 {
            findings::apply(tx, node, epoch, made_from, e)?;
        }
        if n == 1
            && e.kind == "spool_overflow"
            && let Some((first, last)) = overflow_range(&e.body)
        {
            gap.execute(params![node, epoch as i64, first as i64, last as i64])?;
        }
    }
    // What the agent no longer holds between where it read from and the batch's end, and
    // this store never got, was dropped from the agent's spool: a gap it explains.
    if let Some(last) = events.iter().map(|e| e.seq).max()
        && b.covers_from > 0
        && b.covers_from <= last
    {
        let mut sent: Vec<u64> = events.iter().map(|e| e.seq).collect();
        sent.sort_unstable();
        let mut from = b.covers_from.max(acked + 1);
        for seq in sent.into_iter().chain(std::iter::once(last + 1)) {
            if seq > from {
                let mut stored = tx.prepare_cached(
                    "SELECT seq FROM events WHERE node = ?1 AND epoch = ?2 AND seq >= ?3 AND seq < ?4 ORDER BY seq",
                )?;
                let present: Vec<u64> = stored
                    .query_map(params![node, epoch as i64, from as i64, seq as i64], |r| {
                        r.get::<_, i64>(0).map(|s| s as u64)
                    })?
                    .collect::<Result<_, _>>()?;
                for (first, last) in crate::ack::missing(from, seq, present) {
                    gap.execute(params![node, epoch as i64, first as i64, last as i64])?;
                }
            }
            from = from.max(seq + 1);
        }
    }
    let acked = advance(tx, node, epoch, acked)?;
    tx.execute(
        "UPDATE nodes SET epoch = ?2, acked = ?3 WHERE node = ?1",
        params![node, epoch as i64, acked as i64],
    )?;
    Ok(acked)
}

/// The highest sequence number reachable from `acked` through stored or explained events:
/// the contiguous-ack rule ([`crate::ack::advance`]) over this database.
fn advance(
    tx: &rusqlite::Transaction<'_>,
    node: &str,
    epoch: u64,
    acked: u64,
) -> rusqlite::Result<u64> {
    let mut has =
        tx.prepare_cached("SELECT 1 FROM events WHERE node = ?1 AND epoch = ?2 AND seq = ?3")?;
    let mut explained = tx.prepare_cached(
        "SELECT MAX(last_seq) FROM gaps WHERE node = ?1 AND epoch = ?2 AND first_seq <= ?3 AND last_seq >= ?3",
    )?;
    crate::ack::advance(
        acked,
        |seq| has.exists(params![node, epoch as i64, seq as i64]),
        |seq| {
            let last: Option<i64> = explained
                .query_row(params![node, epoch as i64, seq as i64], |r| r.get(0))
                .optional()?
                .flatten();
            Ok(last.map(|l| l as u64))
        },
    )
}

/// [`Store::settle`] inside a transaction.
fn settle(
    tx: &rusqlite::Transaction<'_>,
    node: &str,
    epoch: u64,
    first_unacked: u64,
    time: &str,
) -> rusqlite::Result<u64> {
    tx.execute("INSERT OR IGNORE INTO nodes(node) VALUES (?1)", [node])?;
    let (current, acked): (u64, u64) = tx.query_row(
        "SELECT epoch, acked FROM nodes WHERE node = ?1",
        [node],
        |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)),
    )?;
    let mut acked = if current == epoch { acked } else { 0 };
    acked = advance(tx, node, epoch, acked)?;
    let below = first_unacked.saturating_sub(1);
    if below > acked {
        let stored: Vec<u64> = tx
            .prepare_cached(
                "SELECT seq FROM events WHERE node = ?1 AND epoch = ?2 AND seq > ?3 AND seq <= ?4 ORDER BY seq",
            )?
            .query_map(params![node, epoch as i64, acked as i64, below as i64], |r| {
                r.get::<_, i64>(0).map(|s| s as u64)
            })?
            .collect::<Result<_, _>>()?;
        for (first, last) in crate::ack::missing(acked + 1, below + 1, stored) {
            let body = serde_json::json!({
                "kind": "acked_by_earlier_store",
                "node": node,
                "seq": last,
                "time": time,
                "first_seq": first,
                "last_seq": last,
                "count": last - first + 1,
                "reason": "the agent had these events acknowledged and trimmed them, but this store does not hold them (wiped, restored from an older copy, or replaced)",
            });
            tx.execute(
                "INSERT OR IGNORE INTO events(node, epoch, seq, time, kind, severity, rule_id, path, body)
                 VALUES (?1, ?2, ?3, ?4, 'acked_by_earlier_store', 'high', '', '', ?5)",
                params![node, epoch as i64, last as i64, time, body.to_string().into_bytes()],
            )?;
            tx.execute(
                "INSERT INTO gaps(node, epoch, first_seq, last_seq) VALUES (?1, ?2, ?3, ?4)",
                params![node, epoch as i64, first as i64, last as i64],
            )?;
        }
        acked = advance(tx, node, epoch, acked)?;
    }
    tx.execute(
        "UPDATE nodes SET epoch = ?2, acked = ?3 WHERE node = ?1",
        params![node, epoch as i64, acked as i64],
    )?;
    Ok(acked)
}

/// Stores an event of the collector's own (epoch 0, which no agent has; node "" when it is
/// about no node), numbered after the last one of its node.
fn collector_event(
    tx: &rusqlite::Transaction<'_>,
    node: &str,
    kind: &str,
    time: &str,
    rule_id: &str,
    path: &str,
    mut fields: serde_json::Value,
) -> rusqlite::Result<()> {
    let seq: i64 = tx.query_row(
        "SELECT COALESCE(MAX(seq), 0) + 1 FROM events WHERE node = ?1 AND epoch = 0",
        [node],
        |row| row.get(0),
    )?;
    fields["kind"] = kind.into();
    fields["node"] = node.into();
    fields["seq"] = seq.into();
    fields["time"] = time.into();
    tx.execute(
        "INSERT INTO events(node, epoch, seq, time, kind, severity, rule_id, path, body)
         VALUES (?1, 0, ?2, ?3, ?4, '', ?5, ?6, ?7)",
        params![
            node,
            seq,
            time,
            kind,
            rule_id,
            path,
            fields.to_string().into_bytes()
        ],
    )?;
    Ok(())
}

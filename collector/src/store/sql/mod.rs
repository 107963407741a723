//! The store's rules over SQL, once for both databases ([`db::Backend`]: SQLite in
//! `sqlite.rs`, PostgreSQL in `postgres.rs`).
//!
//! ## Tables
//!
//! ```text
//! events(cursor, node, epoch, seq, time, kind, severity, rule_id, path, body,
//!        UNIQUE(node, epoch, seq))           cursor = store-wide commit order
//! gaps(node, epoch, first_seq, last_seq)     ranges an agent's spool_overflow event says it
//!                                            dropped, or an earlier store acknowledged
//! nodes(node PRIMARY KEY, epoch, acked, cluster, agent_version, component_versions,
//!       open_findings, last_seen, findings_epoch, findings_as_of, checked_cis, last_seq)
//!                                            acked = highest seq of the current epoch below
//!                                            which all is stored; last_seq = the agent's
//!                                            newest, as of its last heartbeat
//! sinks(name PRIMARY KEY, cursor)            each sink's delivery cursor
//! findings(...), exceptions(...)             findings.rs, exceptions.rs
//! schema(version)                            the newest migration applied
//! ```
//!
//! Inserts skip a (node, epoch, seq) already stored (invariant 1); a transaction commits
//! durably before its acks are returned (invariant 2). Writers are serialised store-wide
//! ([`db::Backend::write`]): a cursor is assigned only while no other writer can commit, so
//! cursors are visible in the order they were assigned (invariant 4), also with several
//! collectors on one PostgreSQL.

use lockdown_proto::v1::Event;

use super::{
    Batch, EventStore, Exception, Filter, FindingCount, FindingCursor, FindingQuery, FindingRow,
    NodeInfo, Reconcile, Reconciled, SEVERITIES, StoreError, Stored, overflow_range,
};
use db::{Arg, Backend, Db, DbError, Dialect, args};

pub mod db;
mod exceptions;
mod findings;

/// The newest schema version this build knows (`schema.version`). 2: `nodes.last_seq`, and
/// events indexed by node and by kind.
pub const SCHEMA_VERSION: i64 = 2;

/// The tables of [`SCHEMA_VERSION`], for `dialect`: one text for both databases, with
/// `{id}` (an identity key that grows with each row), `{int}`, `{text}` (compared byte by
/// byte), `{blob}` and `{clustered}` (SQLite stores the table in key order) spelt each way.
pub fn schema(dialect: Dialect) -> String {
    const TABLES: &str = "
CREATE TABLE IF NOT EXISTS events(
    cursor {id},
    node {text} NOT NULL, epoch {int} NOT NULL, seq {int} NOT NULL, time {text} NOT NULL,
    kind {text} NOT NULL, severity {text} NOT NULL, rule_id {text} NOT NULL,
    path {text} NOT NULL, body {blob} NOT NULL, UNIQUE(node, epoch, seq));
CREATE INDEX IF NOT EXISTS events_time ON events(time);
CREATE INDEX IF NOT EXISTS events_node ON events(node, cursor);
CREATE INDEX IF NOT EXISTS events_kind ON events(kind, cursor);
CREATE TABLE IF NOT EXISTS gaps(node {text} NOT NULL, epoch {int} NOT NULL,
    first_seq {int} NOT NULL, last_seq {int} NOT NULL);
CREATE INDEX IF NOT EXISTS gaps_node ON gaps(node, epoch, first_seq);
CREATE TABLE IF NOT EXISTS nodes(
    node {text} PRIMARY KEY, epoch {int} NOT NULL DEFAULT 0, acked {int} NOT NULL DEFAULT 0,
    cluster {text} NOT NULL DEFAULT '',
    agent_version {text} NOT NULL DEFAULT '', component_versions {text} NOT NULL DEFAULT '{}',
    open_findings {text} NOT NULL DEFAULT '{}', last_seen {text} NOT NULL DEFAULT '',
    findings_epoch {int} NOT NULL DEFAULT 0, findings_as_of {int} NOT NULL DEFAULT 0,
    checked_cis {text} NOT NULL DEFAULT '[]', last_seq {int} NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS sinks(name {text} PRIMARY KEY, cursor {int} NOT NULL);
CREATE TABLE IF NOT EXISTS findings(
    node {text} NOT NULL, path {text} NOT NULL, key {text} NOT NULL,
    rule_id {text} NOT NULL, cis {text} NOT NULL, title {text} NOT NULL,
    severity {text} NOT NULL, rank {int} NOT NULL, status {text} NOT NULL,
    component {text} NOT NULL, flag {text} NOT NULL, observed {text} NOT NULL,
    expected {text} NOT NULL, since {text} NOT NULL,
    PRIMARY KEY(node, path, key)) {clustered};
CREATE INDEX IF NOT EXISTS findings_rule ON findings(rule_id);
CREATE TABLE IF NOT EXISTS exceptions(
    id {id},
    rule_id {text} NOT NULL, node {text} NOT NULL, cluster {text} NOT NULL,
    path {text} NOT NULL, max_severity {text} NOT NULL, max_rank {int} NOT NULL,
    reason {text} NOT NULL, author {text} NOT NULL, created {text} NOT NULL,
    expires {text} NOT NULL,
    removed_by {text} NOT NULL DEFAULT '', removed_at {text} NOT NULL DEFAULT '',
    announced {int} NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS exceptions_rule ON exceptions(rule_id);
";
    let words: [(&str, &str); 5] = match dialect {
        Dialect::Sqlite => [
            ("{id}", "INTEGER PRIMARY KEY AUTOINCREMENT"),
            ("{int}", "INTEGER"),
            ("{text}", "TEXT"),
            ("{blob}", "BLOB"),
            ("{clustered}", "WITHOUT ROWID"),
        ],
        Dialect::Postgres => [
            ("{id}", "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY"),
            ("{int}", "BIGINT"),
            ("{text}", "TEXT COLLATE \"C\""),
            ("{blob}", "BYTEA"),
            ("{clustered}", ""),
        ],
    };
    words.iter().fold(TABLES.to_string(), |sql, (word, spelt)| {
        sql.replace(word, spelt)
    })
}

/// A store on a SQL database.
#[derive(Debug)]
pub struct SqlStore<B> {
    backend: B,
}

impl<B: Backend> SqlStore<B> {
    /// A store on `backend`, whose schema is in place.
    pub(crate) fn new(backend: B) -> Self {
        SqlStore { backend }
    }

    fn err(&self) -> impl Fn(DbError) -> StoreError + '_ {
        |source| StoreError::Db {
            path: self.backend.name().to_string(),
            source,
        }
    }

    /// Runs `f` in one write transaction of the backend.
    pub(crate) fn write<T>(
        &mut self,
        f: impl FnOnce(&mut dyn Db) -> Result<T, DbError>,
    ) -> Result<T, StoreError> {
        let out = self.backend.write(f);
        out.map_err(self.err())
    }

    /// Runs `f` in one read of the backend.
    pub(crate) fn read<T>(
        &self,
        f: impl FnOnce(&mut dyn Db) -> Result<T, DbError>,
    ) -> Result<T, StoreError> {
        self.backend.read(f).map_err(self.err())
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

    /// The ack of a node in `epoch`: 0 when the node's current epoch is another one.
    pub fn acked_in(&self, node: &str, epoch: u64) -> Result<u64, StoreError> {
        self.read(|db| {
            db.int(
                "SELECT acked FROM nodes WHERE node = ?1 AND epoch = ?2",
                args![node, epoch],
            )
        })
        .map(|a| a as u64)
    }

    /// Every stored (node, seq), for tests and audits.
    pub fn keys(&self) -> Result<Vec<(String, u64)>, StoreError> {
        self.read(|db| {
            db.rows(
                "SELECT node, seq FROM events ORDER BY node, seq",
                &[],
                |r| Ok((r.text(0)?.to_string(), r.int(1)? as u64)),
            )
        })
    }

    /// Every stored (node, epoch, seq) of the agents' events (not the collector's own), for
    /// tests and audits.
    pub fn agent_keys(&self) -> Result<Vec<(String, u64, u64)>, StoreError> {
        self.read(|db| {
            db.rows(
                "SELECT node, epoch, seq FROM events WHERE epoch > 0 ORDER BY node, epoch, seq",
                &[],
                |r| Ok((r.text(0)?.to_string(), r.int(1)? as u64, r.int(2)? as u64)),
            )
        })
    }
}

/// The columns [`SqlStore::events`] reads.
const EVENT_COLUMNS: &str =
    "SELECT cursor, node, seq, time, kind, severity, rule_id, path, body, epoch FROM events";

/// `filter` (and one of `kinds`, when any is given) as SQL conditions, each starting with
/// " AND ", their values appended to `args`.
fn conditions<'a>(filter: &'a Filter, kinds: &[&'a str], args: &mut Vec<Arg<'a>>) -> String {
    let mut sql = String::new();
    for (clause, v) in [
        ("node =", &filter.node),
        ("kind =", &filter.kind),
        ("rule_id =", &filter.rule_id),
        ("time >=", &filter.since),
        ("time <", &filter.until),
    ] {
        if let Some(v) = v {
            args.push(v.into());
            sql.push_str(&format!(" AND {clause} ?{}", args.len()));
        }
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
    if !kinds.is_empty() {
        let mut marks = Vec::new();
        for k in kinds {
            args.push((*k).into());
            marks.push(format!("?{}", args.len()));
        }
        sql.push_str(&format!(" AND kind IN ({})", marks.join(",")));
    }
    sql
}

impl<B: Backend> SqlStore<B> {
    /// Events a query of [`EVENT_COLUMNS`] selects.
    fn events(&self, sql: &str, args: &[Arg<'_>]) -> Result<Vec<Stored>, StoreError> {
        self.read(|db| {
            db.rows(sql, args, |r| {
                Ok(Stored {
                    cursor: r.int(0)? as u64,
                    event: Event {
                        node: r.text(1)?.to_string(),
                        seq: r.int(2)? as u64,
                        time: r.text(3)?.to_string(),
                        kind: r.text(4)?.to_string(),
                        severity: r.text(5)?.to_string(),
                        rule_id: r.text(6)?.to_string(),
                        path: r.text(7)?.to_string(),
                        body: r.bytes(8)?.to_vec(),
                        epoch: r.int(9)? as u64,
                    },
                })
            })
        })
    }
}

impl<B: Backend> EventStore for SqlStore<B> {
    fn insert_many(
        &mut self,
        batches: &[Batch<'_>],
        touches: &[NodeInfo],
    ) -> Result<Vec<u64>, StoreError> {
        self.write(|db| {
            for info in touches {
                touch(db, info)?;
            }
            batches.iter().map(|b| insert_batch(db, b)).collect()
        })
    }

    fn settle(
        &mut self,
        node: &str,
        epoch: u64,
        first_unacked: u64,
        time: &str,
    ) -> Result<u64, StoreError> {
        self.write(|db| settle(db, node, epoch, first_unacked, time))
    }

    fn touch_node(&mut self, info: &NodeInfo) -> Result<(), StoreError> {
        self.write(|db| touch(db, info))
    }

    fn acked(&self, node: &str) -> Result<u64, StoreError> {
        self.read(|db| db.int("SELECT acked FROM nodes WHERE node = ?1", args![node]))
            .map(|a| a as u64)
    }

    fn list(
        &self,
        filter: &Filter,
        after_cursor: u64,
        limit: usize,
    ) -> Result<Vec<Stored>, StoreError> {
        let mut args: Vec<Arg<'_>> = vec![after_cursor.into()];
        let mut sql = format!(
            "{EVENT_COLUMNS} WHERE cursor > ?1{}",
            conditions(filter, &[], &mut args)
        );
        args.push(limit.into());
        sql.push_str(&format!(" ORDER BY cursor LIMIT ?{}", args.len()));
        self.events(&sql, &args)
    }

    fn recent(
        &self,
        filter: &Filter,
        kinds: &[&str],
        limit: usize,
    ) -> Result<Vec<Stored>, StoreError> {
        let mut args: Vec<Arg<'_>> = Vec::new();
        let mut sql = format!(
            "{EVENT_COLUMNS} WHERE 1 = 1{}",
            conditions(filter, kinds, &mut args)
        );
        args.push(limit.into());
        sql.push_str(&format!(" ORDER BY cursor DESC LIMIT ?{}", args.len()));
        self.events(&sql, &args)
    }

    fn nodes(&self) -> Result<Vec<NodeInfo>, StoreError> {
        let mut lists = crate::fnv::FnvMap::default();
        self.read(|db| {
            db.rows(
                "SELECT node, cluster, agent_version, component_versions, open_findings, last_seen,
                        acked, checked_cis, last_seq
                 FROM nodes ORDER BY node",
                &[],
                |r| {
                    Ok(NodeInfo {
                        node: r.text(0)?.to_string(),
                        cluster: r.text(1)?.to_string(),
                        agent_version: r.text(2)?.to_string(),
                        component_versions: serde_json::from_str(r.text(3)?).unwrap_or_default(),
                        open_findings: serde_json::from_str(r.text(4)?).unwrap_or_default(),
                        last_seen: r.text(5)?.to_string(),
                        acked: r.int(6)? as u64,
                        checked_cis: findings::checked_cis(r.text(7)?, &mut lists),
                        last_seq: r.int(8)? as u64,
                    })
                },
            )
        })
    }

    fn max_cursor(&self) -> Result<u64, StoreError> {
        self.read(|db| db.int("SELECT COALESCE(MAX(cursor), 0) FROM events", &[]))
            .map(|c| c as u64)
    }

    fn reconcile(&mut self, r: &Reconcile<'_>) -> Result<Reconciled, StoreError> {
        self.write(|db| findings::reconcile(db, r))
    }

    fn findings(
        &self,
        q: &FindingQuery,
        after: Option<&FindingCursor>,
        limit: usize,
    ) -> Result<Vec<FindingRow>, StoreError> {
        self.read(|db| findings::list(db, q, after, limit))
    }

    fn finding_counts(&self, now: &str) -> Result<Vec<FindingCount>, StoreError> {
        self.read(|db| findings::counts(db, now))
    }

    fn add_exception(&mut self, x: &Exception) -> Result<Exception, StoreError> {
        self.write(|db| exceptions::add(db, x, findings::rank(&x.max_severity)))
    }

    fn remove_exception(
        &mut self,
        id: u64,
        by: &str,
        time: &str,
    ) -> Result<Option<Exception>, StoreError> {
        self.write(|db| exceptions::remove(db, id, by, time))
    }

    fn exceptions(&self) -> Result<Vec<Exception>, StoreError> {
        self.read(exceptions::list)
    }

    fn expire_exceptions(&mut self, now: &str) -> Result<Vec<Exception>, StoreError> {
        self.write(|db| exceptions::expire(db, now))
    }

    fn note(
        &mut self,
        kind: &str,
        time: &str,
        fields: serde_json::Value,
    ) -> Result<(), StoreError> {
        self.write(|db| collector_event(db, "", kind, time, "", "", fields))
    }

    fn lead(&mut self, name: &str) -> Result<bool, StoreError> {
        self.backend
            .hold(&format!("sink {name}"))
            .map_err(self.err())
    }

    fn sink_cursor(&self, name: &str) -> Result<u64, StoreError> {
        self.read(|db| db.int("SELECT cursor FROM sinks WHERE name = ?1", args![name]))
            .map(|c| c as u64)
    }

    fn set_sink_cursor(&mut self, name: &str, cursor: u64) -> Result<(), StoreError> {
        self.write(|db| {
            db.exec(
                "INSERT INTO sinks(name, cursor) VALUES (?1, ?2)
                 ON CONFLICT(name) DO UPDATE SET cursor =
                   CASE WHEN excluded.cursor > sinks.cursor THEN excluded.cursor ELSE sinks.cursor END",
                args![name, cursor],
            )
            .map(drop)
        })
    }

    fn retain(
        &mut self,
        max_age: Option<std::time::Duration>,
        max_events: Option<u64>,
        sinks: &[String],
    ) -> Result<u64, StoreError> {
        self.write(|db| {
            // Nothing past the slowest sink's cursor (a sink never heard of delivered nothing).
            let mut delivered = i64::MAX;
            for name in sinks {
                let cursor = db.int("SELECT cursor FROM sinks WHERE name = ?1", args![name])?;
                delivered = delivered.min(cursor);
            }
            let mut n = 0;
            if let Some(age) = max_age {
                let cutoff = std::time::SystemTime::now()
                    .checked_sub(age)
                    .unwrap_or(std::time::UNIX_EPOCH);
                let cutoff = humantime::format_rfc3339_millis(cutoff).to_string();
                n += db.exec(
                    "DELETE FROM events WHERE time < ?1 AND cursor <= ?2",
                    args![&cutoff, delivered],
                )?;
            }
            if let Some(keep) = max_events {
                n += db.exec(
                    "DELETE FROM events
                     WHERE cursor <= (SELECT COALESCE(MAX(cursor), 0) FROM events) - ?1
                       AND cursor <= ?2",
                    args![keep, delivered],
                )?;
            }
            Ok(n)
        })
    }
}

fn touch(db: &mut dyn Db, info: &NodeInfo) -> Result<(), DbError> {
    let versions = serde_json::to_string(&info.component_versions).expect("map serialises");
    let findings = serde_json::to_string(&info.open_findings).expect("map serialises");
    db.exec(
        "INSERT INTO nodes(node, cluster, agent_version, component_versions, open_findings, last_seen,
                           last_seq)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT(node) DO UPDATE SET
           cluster = CASE WHEN excluded.cluster = '' THEN nodes.cluster ELSE excluded.cluster END,
           agent_version = CASE WHEN excluded.agent_version = '' THEN nodes.agent_version
                                ELSE excluded.agent_version END,
           component_versions = excluded.component_versions,
           open_findings = excluded.open_findings, last_seen = excluded.last_seen,
           last_seq = CASE WHEN excluded.last_seq = 0 THEN nodes.last_seq ELSE excluded.last_seq END",
        args![
            &info.node,
            &info.cluster,
            &info.agent_version,
            &versions,
            &findings,
            &info.last_seen,
            info.last_seq
        ],
    )?;
    Ok(())
}

/// The node's (current epoch, ack), creating its row.
fn node_ack(db: &mut dyn Db, node: &str) -> Result<(u64, u64), DbError> {
    db.exec(
        "INSERT INTO nodes(node) VALUES (?1) ON CONFLICT(node) DO NOTHING",
        args![node],
    )?;
    Ok(db
        .opt(
            "SELECT epoch, acked FROM nodes WHERE node = ?1",
            args![node],
            |r| Ok((r.int(0)? as u64, r.int(1)? as u64)),
        )?
        .unwrap_or_default())
}

fn add_gap(db: &mut dyn Db, node: &str, epoch: u64, first: u64, last: u64) -> Result<(), DbError> {
    db.exec(
        "INSERT INTO gaps(node, epoch, first_seq, last_seq) VALUES (?1, ?2, ?3, ?4)",
        args![node, epoch, first, last],
    )
    .map(drop)
}

/// The sequence numbers of a node's epoch stored in `from..until`, ascending.
fn stored_seqs(
    db: &mut dyn Db,
    node: &str,
    epoch: u64,
    from: u64,
    until: u64,
) -> Result<Vec<u64>, DbError> {
    db.rows(
        "SELECT seq FROM events WHERE node = ?1 AND epoch = ?2 AND seq >= ?3 AND seq < ?4 ORDER BY seq",
        args![node, epoch, from, until],
        |r| Ok(r.int(0)? as u64),
    )
}

fn insert_batch(db: &mut dyn Db, b: &Batch<'_>) -> Result<u64, DbError> {
    let (node, epoch, events) = (b.node, b.epoch, b.events);
    let (current, mut acked) = node_ack(db, node)?;
    if current != epoch {
        // A new spool on this node: its sequence numbers start again.
        acked = 0;
    }
    let made_from = findings::made_from(db, node)?;
    let new: Vec<&Event> = (events.iter())
        .zip(db.insert_events(node, epoch, events)?)
        .filter_map(|(e, new)| new.then_some(e))
        .collect();
    findings::apply(db, node, epoch, made_from, new.iter().copied())?;
    for e in new {
        if e.kind == "spool_overflow"
            && let Some((first, last)) = overflow_range(&e.body)
        {
            add_gap(db, node, epoch, first, last)?;
        }
    }
    // What the agent no longer holds between where it read from and the batch's end, and
    // this store never got, was dropped from the agent's spool: a gap it explains.
    if let Some(last) = events.iter().map(|e| e.seq).max()
        && b.covers_from > 0
        && b.covers_from <= last
    {
        let from = b.covers_from.max(acked + 1);
        let present = stored_seqs(db, node, epoch, from, last + 1)?;
        for (first, last) in crate::ack::missing(from, last + 1, present) {
            add_gap(db, node, epoch, first, last)?;
        }
    }
    let acked = advance(db, node, epoch, acked)?;
    db.exec(
        "UPDATE nodes SET epoch = ?2, acked = ?3 WHERE node = ?1",
        args![node, epoch, acked],
    )?;
    Ok(acked)
}

/// The highest sequence number reachable from `acked` through stored or explained events:
/// the contiguous-ack rule ([`crate::ack::advance`]) over this database, read a window of
/// sequence numbers at a time (one round trip each, not one per event).
fn advance(db: &mut dyn Db, node: &str, epoch: u64, mut acked: u64) -> Result<u64, DbError> {
    const WINDOW: usize = 8192;
    loop {
        let stored: Vec<u64> = db.rows(
            "SELECT seq FROM events WHERE node = ?1 AND epoch = ?2 AND seq > ?3 ORDER BY seq LIMIT ?4",
            args![node, epoch, acked, WINDOW],
            |r| Ok(r.int(0)? as u64),
        )?;
        let gaps: Vec<(u64, u64)> = db.rows(
            "SELECT first_seq, last_seq FROM gaps WHERE node = ?1 AND epoch = ?2 AND last_seq > ?3",
            args![node, epoch, acked],
            |r| Ok((r.int(0)? as u64, r.int(1)? as u64)),
        )?;
        let next = crate::ack::advance(
            acked,
            |seq| Ok::<_, DbError>(stored.binary_search(&seq).is_ok()),
            |seq| {
                Ok(gaps
                    .iter()
                    .filter(|(first, last)| *first <= seq && seq <= *last)
                    .map(|(_, last)| *last)
                    .max())
            },
        )?;
        // The window was full and the walk reached its end: what lies beyond it decides.
        match stored.last() {
            Some(&end) if stored.len() == WINDOW && next >= end => acked = next,
            _ => return Ok(next),
        }
    }
}

/// [`EventStore::settle`] inside a transaction.
fn settle(
    db: &mut dyn Db,
    node: &str,
    epoch: u64,
    first_unacked: u64,
    time: &str,
) -> Result<u64, DbError> {
    let (current, acked) = node_ack(db, node)?;
    let mut acked = if current == epoch { acked } else { 0 };
    acked = advance(db, node, epoch, acked)?;
    let below = first_unacked.saturating_sub(1);
    if below > acked {
        let stored = stored_seqs(db, node, epoch, acked + 1, below + 1)?;
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
            let body = body.to_string().into_bytes();
            db.exec(
                "INSERT INTO events(node, epoch, seq, time, kind, severity, rule_id, path, body)
                 VALUES (?1, ?2, ?3, ?4, 'acked_by_earlier_store', 'high', '', '', ?5)
                 ON CONFLICT(node, epoch, seq) DO NOTHING",
                args![node, epoch, last, time, body.as_slice()],
            )?;
            add_gap(db, node, epoch, first, last)?;
        }
        acked = advance(db, node, epoch, acked)?;
    }
    db.exec(
        "UPDATE nodes SET epoch = ?2, acked = ?3 WHERE node = ?1",
        args![node, epoch, acked],
    )?;
    Ok(acked)
}

/// Stores an event of the collector's own (epoch 0, which no agent has; node "" when it is
/// about no node), numbered after the last one of its node.
fn collector_event(
    db: &mut dyn Db,
    node: &str,
    kind: &str,
    time: &str,
    rule_id: &str,
    path: &str,
    mut fields: serde_json::Value,
) -> Result<(), DbError> {
    let seq = db.int(
        "SELECT COALESCE(MAX(seq), 0) + 1 FROM events WHERE node = ?1 AND epoch = 0",
        args![node],
    )?;
    fields["kind"] = kind.into();
    fields["node"] = node.into();
    fields["seq"] = seq.into();
    fields["time"] = time.into();
    let body = fields.to_string().into_bytes();
    db.exec(
        "INSERT INTO events(node, epoch, seq, time, kind, severity, rule_id, path, body)
         VALUES (?1, 0, ?2, ?3, ?4, '', ?5, ?6, ?7)",
        args![node, seq, time, kind, rule_id, path, body.as_slice()],
    )?;
    Ok(())
}

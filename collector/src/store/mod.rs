//! The collector's store: every agent event once, committed durably before it is
//! acknowledged. [`EventStore`] is what a store must do. Its rules are written once, over
//! SQL (`sql/`, with the tables); they run on SQLite ([`Store`], the embedded default) and on
//! PostgreSQL ([`PgStore`], for several collectors sharing one database). What does not
//! depend on a database at all lives outside: the contiguous-ack rule ([`crate::ack`]), what
//! an event says it dropped ([`overflow_range`]).
//!
//! ## What a backend guarantees
//!
//! An epoch identifies one agent spool. An agent whose state directory was wiped starts
//! again at seq 1 in a new epoch; its new events are new rows, not resends.
//!
//! 1. **Each (node, epoch, seq) is stored once.** A resend after a lost ack stores nothing
//!    twice.
//! 2. **An ack never runs ahead of the disk.** [`EventStore::insert_many`] returns the new
//!    acks only after the transaction that holds the events is durable.
//! 3. **An ack covers a contiguous prefix** ([`crate::ack::advance`]): `acked` moves past a
//!    sequence number only when that event is stored, or a stored `spool_overflow` event of
//!    the same node says it was dropped. A gap the agent did not explain holds the ack back,
//!    so the agent keeps (and resends) everything after it.
//! 4. **Cursors give the commit order**, store-wide and increasing: a reader that resumes
//!    after a cursor misses nothing committed later.

use std::collections::BTreeMap;

use lockdown_proto::v1::Event;

pub mod postgres;
pub mod sql;
mod sqlite;
pub use postgres::PgStore;
pub use sql::db::DbError;
pub use sqlite::Store;

/// Why the store failed. An agent keeps its events spooled and sends them again either way;
/// [`StoreError::retry_helps`] says whether that can succeed without an operator.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed (disk full, corrupt file, connection lost, ...).
    #[error("store {path}: {source}")]
    Db {
        /// Database file, or the PostgreSQL URL without its password.
        path: String,
        /// Cause.
        source: DbError,
    },
    /// The store cannot be set up as configured (a bad URL, an unreadable password file).
    #[error("store {path}: {reason}")]
    Config {
        /// What was configured.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl StoreError {
    /// Whether the same write can succeed later on its own (busy, locked, disk full and
    /// freed, an I/O error that passes, a database that went away and comes back); false
    /// when the database is corrupt, not a database, read-only, not permitted, or newer than
    /// this collector, which an operator must fix.
    pub fn retry_helps(&self) -> bool {
        use rusqlite::ErrorCode::{
            CannotOpen, DatabaseCorrupt, NotADatabase, PermissionDenied, ReadOnly,
        };
        match self {
            StoreError::Db { source, .. } => match source {
                DbError::Sqlite(e) => !matches!(
                    e.sqlite_error_code(),
                    Some(DatabaseCorrupt | NotADatabase | ReadOnly | PermissionDenied | CannotOpen)
                ),
                DbError::Pg(e) => postgres::retry_helps(e),
                DbError::NewerSchema { .. } => false,
            },
            StoreError::Config { .. } => false,
        }
    }

    /// The gRPC status an agent gets: `unavailable` when retrying helps, else `internal`.
    /// Both keep the agent's events spooled; neither is acknowledged.
    pub fn to_status(&self) -> tonic::Status {
        if self.retry_helps() {
            tonic::Status::unavailable(self.to_string())
        } else {
            tonic::Status::internal(format!("{self} (the collector's operator must act)"))
        }
    }
}

/// A finding open on a node, as agents send it.
pub use lockdown_proto::v1::OpenFinding;

/// A finding open on a node now, as the store keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct FindingRow {
    /// Node.
    pub node: String,
    /// The node's cluster label.
    pub cluster: String,
    /// The component's version as the node last reported it.
    pub version: String,
    /// RFC 3339: when the store learnt it is open.
    pub since: String,
    /// The active exception covering it, if one does.
    pub exception_id: Option<u64>,
    /// The finding.
    pub finding: OpenFinding,
}

/// Which open findings to list; `None` does not filter.
#[derive(Debug, Clone, Default)]
pub struct FindingQuery {
    /// Cluster label.
    pub cluster: Option<String>,
    /// Node.
    pub node: Option<String>,
    /// Rule id.
    pub rule_id: Option<String>,
    /// A CIS id, or a section (every id under it).
    pub cis: Option<String>,
    /// At or above this severity.
    pub min_severity: Option<String>,
    /// fail or warn.
    pub status: Option<String>,
    /// Only findings an active exception covers (`true`) or only the others.
    pub excepted: Option<bool>,
    /// RFC 3339: exceptions expiring at or before this do not cover (empty: none covers).
    pub now: String,
}

/// An accepted risk ([`lockdown_proto::v1::Exception`] holds the same, for the wire).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Exception {
    /// Its id.
    pub id: u64,
    /// The rule it covers.
    pub rule_id: String,
    /// Only this node ("" for any).
    pub node: String,
    /// Only this cluster ("" for any).
    pub cluster: String,
    /// Only this file ("" for any).
    pub path: String,
    /// The highest severity it covers.
    pub max_severity: String,
    /// Why the risk is accepted.
    pub reason: String,
    /// Who accepted it (the admin certificate's name).
    pub author: String,
    /// RFC 3339.
    pub created: String,
    /// RFC 3339.
    pub expires: String,
    /// Who removed it ("" while not removed).
    pub removed_by: String,
    /// When ("" while not removed).
    pub removed_at: String,
}

impl Exception {
    /// active, expired or removed, at `now` (RFC 3339, as the store writes times).
    pub fn state(&self, now: &str) -> &'static str {
        if !self.removed_at.is_empty() {
            "removed"
        } else if self.expires.as_str() <= now {
            "expired"
        } else {
            "active"
        }
    }
}

/// Where a page of findings ends: (node, path, key) of its last row.
pub type FindingCursor = (String, String, String);

/// Open findings of one node counted by CIS id, severity and status. The texts are shared:
/// a fleet has a few thousand distinct ones among tens of thousands of findings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FindingCount {
    /// Node.
    pub node: std::sync::Arc<str>,
    /// CIS id ("" when CIS has no such check).
    pub cis: std::sync::Arc<str>,
    /// Severity.
    pub severity: std::sync::Arc<str>,
    /// fail or warn.
    pub status: std::sync::Arc<str>,
    /// Covered by an active exception.
    pub excepted: bool,
    /// How many.
    pub count: u32,
}

/// What an agent's hello says is open on its node.
#[derive(Debug, Clone, Copy)]
pub struct Reconcile<'a> {
    /// Node.
    pub node: &'a str,
    /// The spool epoch the hello is of.
    pub epoch: u64,
    /// The agent's last sequence number when it took the set: later finding events apply
    /// on top of it, earlier ones are in it.
    pub as_of: u64,
    /// Every open finding.
    pub findings: &'a [OpenFinding],
    /// The CIS ids the agent evaluates.
    pub checked_cis: &'a [String],
    /// RFC 3339, for findings new to the store and the correction event.
    pub time: &'a str,
}

/// What a reconciliation changed in the store's set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reconciled {
    /// Findings the store did not have.
    pub added: usize,
    /// Findings the store had and the node no longer has.
    pub removed: usize,
    /// Findings whose severity, status or evidence differed.
    pub changed: usize,
    /// The store held every event the set was taken after and still differed: lost events
    /// or a replaced store, recorded as a `findings_reconciled` event. Otherwise a difference
    /// is events still on their way.
    pub drift: bool,
}

impl Reconciled {
    /// Whether the store's set differed from the node's.
    pub fn differs(&self) -> bool {
        self.added + self.removed + self.changed > 0
    }
}

/// What an agent last told the collector about itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeInfo {
    /// Node name.
    pub node: String,
    /// Cluster label.
    pub cluster: String,
    /// Agent version.
    pub agent_version: String,
    /// Component versions.
    pub component_versions: BTreeMap<String, String>,
    /// Open findings by severity.
    pub open_findings: BTreeMap<String, u32>,
    /// RFC 3339.
    pub last_seen: String,
    /// Highest contiguous stored sequence number.
    pub acked: u64,
    /// The CIS ids the agent evaluates (from its last hello; nodes with the same list share
    /// it).
    pub checked_cis: std::sync::Arc<[String]>,
    /// The agent's newest sequence number as of its last heartbeat (0: not said): what its
    /// spool holds beyond `acked` is on its way.
    pub last_seq: u64,
}

/// One agent batch to store.
#[derive(Debug, Clone, Copy)]
pub struct Batch<'a> {
    /// Node name.
    pub node: &'a str,
    /// Spool epoch.
    pub epoch: u64,
    /// The agent's spool holds nothing from here to the last event but what the batch
    /// carries (0: not said).
    pub covers_from: u64,
    /// The events, validated.
    pub events: &'a [Event],
}

/// A stored event with its cursor.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    /// Store-wide commit order.
    pub cursor: u64,
    /// The event.
    pub event: Event,
}

/// Which events to list.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Node name.
    pub node: Option<String>,
    /// Event kind.
    pub kind: Option<String>,
    /// Minimum severity (only events with a severity match).
    pub min_severity: Option<String>,
    /// Rule id.
    pub rule_id: Option<String>,
    /// RFC 3339, inclusive.
    pub since: Option<String>,
    /// RFC 3339, exclusive.
    pub until: Option<String>,
}

/// Severities, lowest first (what the collector accepts: `admit`, below the store).
pub use crate::admit::SEVERITIES;

/// What a store backend does. Writes come from one writer (group commit); reads may come
/// from another instance of the same backend on the same store.
pub trait EventStore: Send {
    /// Stores several batches, and what agents said about themselves, in one durable
    /// transaction, and returns each batch's ack, in order (invariants 1-3).
    fn insert_many(
        &mut self,
        batches: &[Batch<'_>],
        touches: &[NodeInfo],
    ) -> Result<Vec<u64>, StoreError>;

    /// Takes an agent at its word that every event of `epoch` below `first_unacked` was
    /// acknowledged (it trimmed them): each missing range below it is recorded as a gap,
    /// with an `acked_by_earlier_store` event at the range's last sequence number, and the
    /// ack moves on. Returns the ack.
    fn settle(
        &mut self,
        node: &str,
        epoch: u64,
        first_unacked: u64,
        time: &str,
    ) -> Result<u64, StoreError>;

    /// Records what an agent says about itself (hello, heartbeat).
    fn touch_node(&mut self, info: &NodeInfo) -> Result<(), StoreError>;

    /// The ack of a node's current epoch (0 when unknown).
    fn acked(&self, node: &str) -> Result<u64, StoreError>;

    /// Events after `after_cursor` that match, oldest first, at most `limit`.
    fn list(
        &self,
        filter: &Filter,
        after_cursor: u64,
        limit: usize,
    ) -> Result<Vec<Stored>, StoreError>;

    /// The newest `limit` events that match `filter` and, when `kinds` names any, are of one
    /// of them; newest first.
    fn recent(
        &self,
        filter: &Filter,
        kinds: &[&str],
        limit: usize,
    ) -> Result<Vec<Stored>, StoreError>;

    /// Every node the store has heard of.
    fn nodes(&self) -> Result<Vec<NodeInfo>, StoreError>;

    /// The highest cursor stored (0 when empty).
    fn max_cursor(&self) -> Result<u64, StoreError>;

    /// Makes the node's open findings exactly what its hello says, in one transaction, and
    /// records a `findings_reconciled` event (the collector's own, epoch 0) when that
    /// corrected drift ([`Reconciled::drift`]). Finding events of the same epoch up to
    /// `as_of` are not applied again.
    fn reconcile(&mut self, r: &Reconcile<'_>) -> Result<Reconciled, StoreError>;

    /// Open findings that match, ordered by (node, path, key), after `after`, at most `limit`.
    fn findings(
        &self,
        q: &FindingQuery,
        after: Option<&FindingCursor>,
        limit: usize,
    ) -> Result<Vec<FindingRow>, StoreError>;

    /// Every node's open findings counted by CIS id, severity, status and whether an
    /// exception active at `now` covers them.
    fn finding_counts(&self, now: &str) -> Result<Vec<FindingCount>, StoreError>;

    /// Stores a new exception (its id is assigned) and an `exception_added` event, in one
    /// transaction.
    fn add_exception(&mut self, x: &Exception) -> Result<Exception, StoreError>;

    /// Removes an exception (by `by`, at `time`) with an `exception_removed` event. `None`
    /// when there is no such exception, or it was removed already.
    fn remove_exception(
        &mut self,
        id: u64,
        by: &str,
        time: &str,
    ) -> Result<Option<Exception>, StoreError>;

    /// Every exception, newest first.
    fn exceptions(&self) -> Result<Vec<Exception>, StoreError>;

    /// Records an `exception_expired` event for each exception that expired at or before
    /// `now` and was not announced yet (a collector that was down announces them when it
    /// starts; with several replicas, each is announced once). Returns them.
    fn expire_exceptions(&mut self, now: &str) -> Result<Vec<Exception>, StoreError>;

    /// Records an event of the collector's own about no node (epoch 0, node ""), with
    /// `fields` in its body: what readers and sinks should hear (a sink lagging).
    fn note(&mut self, kind: &str, time: &str, fields: serde_json::Value)
    -> Result<(), StoreError>;

    /// Whether this instance may run the sink `name` now. With several collectors on one
    /// database only one at a time does (the others wait, and one takes over when it is
    /// gone), so that a receiver does not get every delivery once per replica. Asked before
    /// every read; a store only one process uses always says yes.
    fn lead(&mut self, name: &str) -> Result<bool, StoreError>;

    /// How far the sink `name` has delivered: every event up to this cursor (0: none yet).
    fn sink_cursor(&self, name: &str) -> Result<u64, StoreError>;

    /// Records, durably, that the sink `name` delivered every event up to `cursor`. A cursor
    /// never moves back (two runs of one sink cannot undo each other's progress).
    fn set_sink_cursor(&mut self, name: &str, cursor: u64) -> Result<(), StoreError>;

    /// Deletes events older than `max_age` and all but the newest `max_events`, but none a
    /// sink named in `sinks` has not delivered yet (a sink that is down holds retention back
    /// rather than lose events). Acks are kept, so a deleted event is never asked for again.
    /// Returns how many went.
    fn retain(
        &mut self,
        max_age: Option<std::time::Duration>,
        max_events: Option<u64>,
        sinks: &[String],
    ) -> Result<u64, StoreError>;
}

/// Every open finding `q` selects, read a page at a time.
pub fn all_findings(
    store: &dyn EventStore,
    q: &FindingQuery,
) -> Result<Vec<FindingRow>, StoreError> {
    let mut out: Vec<FindingRow> = Vec::new();
    loop {
        let after = out.last().map(|f| {
            (
                f.node.clone(),
                f.finding.path.clone(),
                f.finding.key.clone(),
            )
        });
        let page = store.findings(q, after.as_ref(), 1000)?;
        if page.is_empty() {
            return Ok(out);
        }
        out.extend(page);
    }
}

/// The dropped range a `spool_overflow` event's body names.
pub use crate::admit::overflow_range;

#[cfg(test)]
mod tests;

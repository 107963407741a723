//! # The spool: a durable, ordered, bounded event log with per-agent sequence numbers
//!
//! Everything the agent reports goes through here before anything may send it.
//!
//! ## On-disk format
//!
//! One SQLite database, `<state_dir>/spool.db`, in WAL mode with `synchronous=FULL` (every
//! commit fsyncs the WAL before it returns), next to an advisory lock file
//! `<state_dir>/agent.lock` that holds the owner's pid.
//!
//! ```text
//! meta(key TEXT PRIMARY KEY, value INTEGER)   format = 1; last_seq = highest seq ever
//!                                             assigned; acked = highest seq trimmed by an ack;
//!                                             epoch = this spool's identity, made at creation
//! events(seq INTEGER PRIMARY KEY, kind TEXT, body BLOB)   body = the Event as JSON
//! baseline(path TEXT PRIMARY KEY, state BLOB)             state = a PathState as JSON
//! ```
//!
//! ## Invariants
//!
//! 1. **Durable before visible.** [`Spool::commit`] returns only after its transaction is
//!    committed and fsynced; readers ([`Spool::read_from`], [`SpoolReader`]) see committed
//!    rows only. So nothing can be sent that a crash could take back.
//! 2. **Sequence numbers are strictly increasing with no gaps, across restarts and crashes.**
//!    A batch's numbers are assigned inside the transaction that inserts its events and
//!    stores `last_seq`; a crash keeps the whole batch or none of it, and a number is never
//!    reused, because `last_seq` survives trimming. A spool made afresh (the state directory
//!    wiped) gets a new `epoch`, and the collector keys events by (node, epoch, seq).
//! 3. **Events and the baseline they describe commit together**, in one transaction. After
//!    a crash the baseline never claims a state whose events were lost: the change is found
//!    again on restart and reported then.
//! 4. **Trimming frees only what was acknowledged.** [`Spool::ack`]`(n)` deletes events with
//!    `seq <= n`. Readers read from any sequence number on.
//! 5. **Bounded, never silently.** The events' bytes stay under `max_bytes`. When a commit
//!    would go over, the oldest unshipped events are deleted and a `spool_overflow` event,
//!    committed in the same transaction, says how many and which sequence numbers. Acks and
//!    overflow both take the oldest event, so the events held are always one contiguous run
//!    `first..=last_seq`, and each commit's dropped numbers are one contiguous range with
//!    nothing kept inside it. `meta.dropped_total` counts every event ever dropped; nothing
//!    evicts it, and each overflow event carries it. The shipper tells the collector where
//!    each batch starts (`covers_from`), so the collector sees exactly which numbers below
//!    the batch the agent no longer holds, whether or not their overflow event survived.
//! 6. **One writer.** An exclusive `flock` on `agent.lock` is taken before the database is
//!    opened; a second agent on the same state directory fails at once and is told who holds
//!    it.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};

use crate::baseline::PathState;
use crate::event::{Event, EventBody, now_rfc3339};

/// Database file name in the state directory.
pub const DB_FILE: &str = "spool.db";
/// Lock file name in the state directory.
pub const LOCK_FILE: &str = "agent.lock";
/// Smallest allowed bound, so that an overflow event always fits.
pub const MIN_MAX_BYTES: u64 = 64 * 1024;
/// Room kept free for the `spool_overflow` event itself.
const OVERFLOW_RESERVE: u64 = 512;

/// Why the spool cannot do what was asked. None of these is fixed by retrying at once.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// Another process holds the lock.
    #[error(
        "cannot open spool {dir}: locked by another lockdown-agent{holder} (stop it, or give this one its own --state-dir)"
    )]
    Locked {
        /// State directory.
        dir: PathBuf,
        /// " (pid N)" when the lock file names it.
        holder: String,
    },
    /// The state directory or lock file cannot be used.
    #[error("cannot open spool {dir}: {source}")]
    Io {
        /// State directory.
        dir: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// SQLite failed (disk full, corrupt database, ...).
    #[error("spool {dir}: {source}")]
    Db {
        /// State directory.
        dir: PathBuf,
        /// Cause.
        source: rusqlite::Error,
    },
    /// A stored event does not decode: the database was changed by something else.
    #[error("spool {dir}: event {seq} is corrupt: {message}")]
    Corrupt {
        /// State directory.
        dir: PathBuf,
        /// Its sequence number.
        seq: u64,
        /// Decoder message.
        message: String,
    },
}

/// How full the spool is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Depth {
    /// Events waiting for an ack.
    pub events: u64,
    /// Their bytes.
    pub bytes: u64,
    /// The bound.
    pub max_bytes: u64,
    /// Highest sequence number assigned so far (0: none yet).
    pub last_seq: u64,
    /// Highest sequence number acknowledged.
    pub acked: u64,
    /// Every event this spool ever dropped because it was full.
    #[serde(default)]
    pub dropped_total: u64,
}

/// A change to the baseline: a path's new state, or `None` when it is no longer tracked.
pub type BaselineWrite = (String, Option<PathState>);

/// The writer. See the module documentation for the invariants.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    conn: Connection,
    max_bytes: u64,
    last_seq: u64,
    acked: u64,
    bytes: u64,
    events: u64,
    dropped_total: u64,
    _lock: Flock<File>,
}

/// Creates the state directory if needed and makes it 0700, whoever created it: the spool,
/// the baseline, fix backups and the status socket are the agent's alone.
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    if fs::metadata(dir)?.permissions().mode() & 0o077 != 0 {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

impl Spool {
    /// Opens (creating if needed) the spool in `dir`, taking the lock.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Spool, SpoolError> {
        let io = |source| SpoolError::Io {
            dir: dir.to_path_buf(),
            source,
        };
        private_dir(dir).map_err(io)?;
        let lock_file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(dir.join(LOCK_FILE))
            .map_err(io)?;
        let mut lock = match Flock::lock(lock_file, FlockArg::LockExclusiveNonblock) {
            Ok(l) => l,
            Err((mut f, nix::errno::Errno::EWOULDBLOCK)) => {
                let mut pid = String::new();
                let _ = f.read_to_string(&mut pid);
                let pid = pid.trim();
                return Err(SpoolError::Locked {
                    dir: dir.to_path_buf(),
                    holder: if pid.is_empty() {
                        String::new()
                    } else {
                        format!(" (pid {pid})")
                    },
                });
            }
            Err((_, e)) => return Err(io(std::io::Error::from(e))),
        };
        lock.set_len(0).map_err(io)?;
        lock.rewind().map_err(io)?;
        writeln!(lock, "{}", std::process::id()).map_err(io)?;
        lock.sync_all().map_err(io)?;

        let db = |source| SpoolError::Db {
            dir: dir.to_path_buf(),
            source,
        };
        let conn = Connection::open(dir.join(DB_FILE)).map_err(db)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(db)?;
        // SQLite creates its files with the process umask; earlier versions left them 0644.
        for entry in fs::read_dir(dir).map_err(io)? {
            let path = entry.map_err(io)?.path();
            if fs::symlink_metadata(&path).is_ok_and(|m| m.is_file() && m.mode() & 0o077 != 0) {
                fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).map_err(io)?;
            }
        }
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(db)?;
        // The WAL is truncated back to this after each checkpoint, so a burst does not leave
        // the state directory larger than the bound for good.
        conn.pragma_update(None, "journal_size_limit", 4 << 20)
            .map_err(db)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS events(seq INTEGER PRIMARY KEY, kind TEXT NOT NULL, body BLOB NOT NULL);
             CREATE TABLE IF NOT EXISTS baseline(path TEXT PRIMARY KEY, state BLOB NOT NULL);
             INSERT OR IGNORE INTO meta VALUES ('format', 1), ('last_seq', 0), ('acked', 0), ('dropped_total', 0);",
        )
        .map_err(db)?;
        conn.execute(
            "INSERT OR IGNORE INTO meta VALUES ('epoch', ?1)",
            [new_epoch() as i64],
        )
        .map_err(db)?;
        let meta = |key: &str| -> Result<u64, SpoolError> {
            conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| {
                r.get::<_, i64>(0)
            })
            .map(|v| v as u64)
            .map_err(db)
        };
        let format = meta("format")?;
        if format != 1 {
            return Err(SpoolError::Corrupt {
                dir: dir.to_path_buf(),
                seq: 0,
                message: format!("unknown spool format {format} (this agent reads format 1)"),
            });
        }
        let (last_seq, acked) = (meta("last_seq")?, meta("acked")?);
        let dropped_total = meta("dropped_total")?;
        let (events, bytes): (i64, i64) = conn
            .query_row(
                "SELECT COUNT(*), COALESCE(SUM(length(body)), 0) FROM events",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(db)?;
        Ok(Spool {
            dir: dir.to_path_buf(),
            conn,
            max_bytes: max_bytes.max(MIN_MAX_BYTES),
            last_seq,
            acked,
            bytes: bytes as u64,
            events: events as u64,
            dropped_total,
            _lock: lock,
        })
    }

    fn db(&self) -> impl Fn(rusqlite::Error) -> SpoolError + '_ {
        |source| SpoolError::Db {
            dir: self.dir.clone(),
            source,
        }
    }

    /// Changes the bound (on config reload). Takes effect at the next commit.
    pub fn set_max_bytes(&mut self, max_bytes: u64) {
        self.max_bytes = max_bytes.max(MIN_MAX_BYTES);
    }

    /// How full the spool is.
    pub fn depth(&self) -> Depth {
        Depth {
            events: self.events,
            bytes: self.bytes,
            max_bytes: self.max_bytes,
            last_seq: self.last_seq,
            acked: self.acked,
            dropped_total: self.dropped_total,
        }
    }

    /// The persisted baseline. A state that no longer decodes (written by another version)
    /// is left out, so that its path is reported afresh rather than compared wrongly.
    pub fn baseline(&self) -> Result<BTreeMap<String, PathState>, SpoolError> {
        let mut stmt = self
            .conn
            .prepare("SELECT path, state FROM baseline")
            .map_err(self.db())?;
        let rows = stmt
            .query_map([], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?))
            })
            .map_err(self.db())?;
        let mut out = BTreeMap::new();
        for row in rows {
            let (path, blob) = row.map_err(self.db())?;
            match serde_json::from_slice(&blob) {
                Ok(state) => {
                    out.insert(path, state);
                }
                Err(e) => {
                    tracing::warn!(path, error = %e, "baseline entry does not decode; the path will be reported afresh")
                }
            }
        }
        Ok(out)
    }

    /// Appends events (numbering them) and applies baseline writes in one durable
    /// transaction. Returns the events as stored, including a `spool_overflow` event when
    /// older events had to go.
    pub fn commit(
        &mut self,
        node: &str,
        bodies: Vec<EventBody>,
        baseline: &[BaselineWrite],
    ) -> Result<Vec<Event>, SpoolError> {
        if bodies.is_empty() && baseline.is_empty() {
            return Ok(Vec::new());
        }
        let dir = self.dir.clone();
        let db = |source| SpoolError::Db {
            dir: dir.clone(),
            source,
        };
        let time = now_rfc3339();
        let max = self.max_bytes;
        let (mut last_seq, mut bytes, mut events) = (self.last_seq, self.bytes, self.events);
        let mut dropped_total = self.dropped_total;
        let mut stored = Vec::with_capacity(bodies.len());
        let mut dropped: Option<(u64, u64, u64)> = None; // count, first, last (contiguous)
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db)?;
        {
            let mut insert = tx
                .prepare_cached("INSERT INTO events(seq, kind, body) VALUES (?1, ?2, ?3)")
                .map_err(db)?;
            let mut oldest = tx
                .prepare_cached("SELECT seq, length(body) FROM events ORDER BY seq LIMIT 1")
                .map_err(db)?;
            let mut delete = tx
                .prepare_cached("DELETE FROM events WHERE seq = ?1")
                .map_err(db)?;
            // The oldest goes first, so what one commit drops is one contiguous range.
            let drop_one = |seq: u64, dropped: &mut Option<(u64, u64, u64)>| {
                *dropped = Some(match *dropped {
                    None => (1, seq, seq),
                    Some((count, first, _)) => (count + 1, first, seq),
                });
            };
            for body in bodies {
                last_seq += 1;
                let event = Event {
                    seq: last_seq,
                    node: node.to_string(),
                    time: time.clone(),
                    body,
                };
                let json = serde_json::to_vec(&event).expect("events serialise");
                let need = json.len() as u64 + OVERFLOW_RESERVE;
                while bytes + need > max {
                    let Some((seq, len)) = oldest
                        .query_row([], |r| {
                            Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64))
                        })
                        .optional()
                        .map_err(db)?
                    else {
                        break;
                    };
                    delete.execute([seq as i64]).map_err(db)?;
                    bytes -= len;
                    events -= 1;
                    drop_one(seq, &mut dropped);
                }
                if bytes + need > max {
                    drop_one(event.seq, &mut dropped); // larger than the whole spool
                    continue;
                }
                insert
                    .execute(params![event.seq as i64, event.body.kind(), json])
                    .map_err(db)?;
                bytes += json.len() as u64;
                events += 1;
                stored.push(event);
            }
            if let Some((count, first_seq, last)) = dropped {
                dropped_total += count;
                tx.execute(
                    "UPDATE meta SET value = ?1 WHERE key = 'dropped_total'",
                    [dropped_total as i64],
                )
                .map_err(db)?;
                last_seq += 1;
                let event = Event {
                    seq: last_seq,
                    node: node.to_string(),
                    time: time.clone(),
                    body: EventBody::SpoolOverflow {
                        dropped: count,
                        first_seq,
                        last_seq: last,
                        total_dropped: dropped_total,
                    },
                };
                let json = serde_json::to_vec(&event).expect("events serialise");
                insert
                    .execute(params![event.seq as i64, event.body.kind(), json])
                    .map_err(db)?;
                bytes += json.len() as u64;
                events += 1;
                stored.retain(|e| e.seq > last);
                stored.push(event);
            }
            let mut put = tx
                .prepare_cached("INSERT OR REPLACE INTO baseline(path, state) VALUES (?1, ?2)")
                .map_err(db)?;
            let mut remove = tx
                .prepare_cached("DELETE FROM baseline WHERE path = ?1")
                .map_err(db)?;
            for (path, state) in baseline {
                match state {
                    Some(s) => {
                        let json = serde_json::to_vec(s).expect("states serialise");
                        put.execute(params![path, json]).map_err(db)?;
                    }
                    None => {
                        remove.execute([path]).map_err(db)?;
                    }
                }
            }
            tx.execute(
                "UPDATE meta SET value = ?1 WHERE key = 'last_seq'",
                [last_seq as i64],
            )
            .map_err(db)?;
        }
        tx.commit().map_err(db)?;
        if let Some((count, first, last)) = dropped {
            tracing::warn!(
                dropped = count,
                first_seq = first,
                last_seq = last,
                "spool full: dropped the oldest unshipped events"
            );
        }
        self.last_seq = last_seq;
        self.bytes = bytes;
        self.events = events;
        self.dropped_total = dropped_total;
        Ok(stored)
    }

    /// Up to `limit` events with `seq >= from`, in order.
    pub fn read_from(&self, from: u64, limit: usize) -> Result<Vec<Event>, SpoolError> {
        read_events(&self.conn, &self.dir, from, limit)
    }

    /// Trims every event with `seq <= upto` (an acknowledgement). Returns how many went.
    pub fn ack(&mut self, upto: u64) -> Result<u64, SpoolError> {
        let upto = upto.min(self.last_seq);
        if upto <= self.acked {
            return Ok(0);
        }
        let dir = self.dir.clone();
        let db = |source| SpoolError::Db {
            dir: dir.clone(),
            source,
        };
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db)?;
        let (n, freed): (i64, i64) = tx
            .query_row(
                "SELECT COUNT(*), COALESCE(SUM(length(body)), 0) FROM events WHERE seq <= ?1",
                [upto as i64],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(db)?;
        tx.execute("DELETE FROM events WHERE seq <= ?1", [upto as i64])
            .map_err(db)?;
        tx.execute(
            "UPDATE meta SET value = ?1 WHERE key = 'acked'",
            [upto as i64],
        )
        .map_err(db)?;
        tx.commit().map_err(db)?;
        self.acked = upto;
        self.events -= n as u64;
        self.bytes -= freed as u64;
        Ok(n as u64)
    }
}

/// A new epoch: the creation time in nanoseconds mixed with the pid, never 0 and positive
/// as an SQLite integer. Unique enough: two spools of one node are not made in the same
/// nanosecond.
fn new_epoch() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64);
    ((nanos ^ (u64::from(std::process::id()) << 40)) & (i64::MAX as u64)).max(1)
}

fn read_events(
    conn: &Connection,
    dir: &Path,
    from: u64,
    limit: usize,
) -> Result<Vec<Event>, SpoolError> {
    let db = |source| SpoolError::Db {
        dir: dir.to_path_buf(),
        source,
    };
    let mut stmt = conn
        .prepare_cached("SELECT seq, body FROM events WHERE seq >= ?1 ORDER BY seq LIMIT ?2")
        .map_err(db)?;
    let rows = stmt
        .query_map(params![from as i64, limit as i64], |r| {
            Ok((r.get::<_, i64>(0)? as u64, r.get::<_, Vec<u8>>(1)?))
        })
        .map_err(db)?;
    let mut out = Vec::new();
    for row in rows {
        let (seq, body) = row.map_err(db)?;
        out.push(
            serde_json::from_slice(&body).map_err(|e| SpoolError::Corrupt {
                dir: dir.to_path_buf(),
                seq,
                message: e.to_string(),
            })?,
        );
    }
    Ok(out)
}

/// A read-only view of a spool that another process writes (`lockdown-agent spool`, tests).
/// It takes no lock and sees committed events only.
#[derive(Debug)]
pub struct SpoolReader {
    dir: PathBuf,
    conn: Connection,
}

impl SpoolReader {
    /// Opens the spool in `dir` for reading.
    pub fn open(dir: &Path) -> Result<SpoolReader, SpoolError> {
        let conn = Connection::open_with_flags(
            dir.join(DB_FILE),
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|source| SpoolError::Db {
            dir: dir.to_path_buf(),
            source,
        })?;
        Ok(SpoolReader {
            dir: dir.to_path_buf(),
            conn,
        })
    }

    /// Up to `limit` events with `seq >= from`, in order.
    pub fn read_from(&self, from: u64, limit: usize) -> Result<Vec<Event>, SpoolError> {
        read_events(&self.conn, &self.dir, from, limit)
    }

    /// This spool's epoch (see the module documentation).
    pub fn epoch(&self) -> Result<u64, SpoolError> {
        self.conn
            .query_row("SELECT value FROM meta WHERE key = 'epoch'", [], |r| {
                r.get::<_, i64>(0)
            })
            .map(|v| v as u64)
            .map_err(|source| SpoolError::Db {
                dir: self.dir.clone(),
                source,
            })
    }

    /// The highest sequence number assigned so far.
    pub fn last_seq(&self) -> Result<u64, SpoolError> {
        self.conn
            .query_row("SELECT value FROM meta WHERE key = 'last_seq'", [], |r| {
                r.get::<_, i64>(0)
            })
            .map(|v| v as u64)
            .map_err(|source| SpoolError::Db {
                dir: self.dir.clone(),
                source,
            })
    }
}

#[cfg(test)]
mod tests;

//! What the store's rules need of a SQL database, so that one implementation of them runs on
//! SQLite and on PostgreSQL alike.
//!
//! Statements are written once, in SQL both accept, with numbered parameters `?1`, `?2`, …
//! (PostgreSQL's connection turns them into `$1`, …). Integers are 64-bit and text is
//! compared byte for byte on both (PostgreSQL's columns are `COLLATE "C"`), so that orders and
//! page cursors agree. What the two cannot say alike is a [`Dialect`] method.

use lockdown_proto::v1::Event;

/// A statement's parameter.
#[derive(Debug, Clone, Copy)]
pub enum Arg<'a> {
    /// BIGINT / INTEGER.
    Int(i64),
    /// TEXT.
    Text(&'a str),
    /// BYTEA / BLOB.
    Bytes(&'a [u8]),
}

impl From<i64> for Arg<'_> {
    fn from(v: i64) -> Self {
        Arg::Int(v)
    }
}

impl From<u64> for Arg<'_> {
    fn from(v: u64) -> Self {
        Arg::Int(v.min(i64::MAX as u64) as i64)
    }
}

impl From<usize> for Arg<'_> {
    fn from(v: usize) -> Self {
        Arg::Int(v.min(i64::MAX as usize) as i64)
    }
}

impl<'a> From<&'a str> for Arg<'a> {
    fn from(v: &'a str) -> Self {
        Arg::Text(v)
    }
}

impl<'a> From<&'a String> for Arg<'a> {
    fn from(v: &'a String) -> Self {
        Arg::Text(v)
    }
}

impl<'a> From<&'a [u8]> for Arg<'a> {
    fn from(v: &'a [u8]) -> Self {
        Arg::Bytes(v)
    }
}

/// Parameters, each turned into an [`Arg`].
macro_rules! args {
    ($($a:expr),* $(,)?) => { &[$($crate::store::sql::db::Arg::from($a)),*][..] };
}
pub(crate) use args;

/// A database error, as the backend gave it.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// SQLite.
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    /// PostgreSQL, or the connection to it.
    #[error("{}", pg_message(.0))]
    Pg(#[from] tokio_postgres::Error),
    /// The database holds a newer schema than this collector knows.
    #[error(
        "the database's schema is version {found}; this collector knows up to {known} (upgrade the collector)"
    )]
    NewerSchema {
        /// In the database.
        found: i64,
        /// The newest this build knows.
        known: i64,
    },
}

/// A PostgreSQL error with the server's message (the driver's `Display` says only "db error").
fn pg_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({}): {}", db.severity(), db.code().code(), db.message()),
        None => {
            let mut s = e.to_string();
            if let Some(cause) = std::error::Error::source(e) {
                s.push_str(&format!(": {cause}"));
            }
            s
        }
    }
}

/// One result row; columns by position.
pub trait Row {
    /// An integer column.
    fn int(&self, i: usize) -> Result<i64, DbError>;
    /// An integer column that may be NULL.
    fn opt_int(&self, i: usize) -> Result<Option<i64>, DbError>;
    /// A text column.
    fn text(&self, i: usize) -> Result<&str, DbError>;
    /// A text column that may be NULL.
    fn opt_text(&self, i: usize) -> Result<Option<&str>, DbError>;
    /// A binary column.
    fn bytes(&self, i: usize) -> Result<&[u8], DbError>;
}

/// What the two databases say differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// SQLite.
    Sqlite,
    /// PostgreSQL.
    Postgres,
}

impl Dialect {
    /// The text of field `key` (an SQL text expression) of the JSON object in text column
    /// `col`, or NULL.
    pub fn json_text(self, col: &str, key: &str) -> String {
        match self {
            Dialect::Sqlite => format!("json_extract({col}, '$.\"' || {key} || '\"')"),
            Dialect::Postgres => format!("(({col})::jsonb ->> {key})"),
        }
    }
}

/// A connection inside a transaction (or, for reads, one that sees committed data).
pub trait Db {
    /// Which database it is.
    fn dialect(&self) -> Dialect;
    /// Runs a statement; how many rows it changed.
    fn exec(&mut self, sql: &str, args: &[Arg<'_>]) -> Result<u64, DbError>;
    /// Runs a query and hands each row to `f`, in order.
    fn each(
        &mut self,
        sql: &str,
        args: &[Arg<'_>],
        f: &mut dyn FnMut(&dyn Row) -> Result<(), DbError>,
    ) -> Result<(), DbError>;
    /// Stores one node's events of one epoch, each unless its (node, epoch, seq) is stored
    /// already, in the order given (which is their cursor order); which of them were new.
    fn insert_events(
        &mut self,
        node: &str,
        epoch: u64,
        events: &[Event],
    ) -> Result<Vec<bool>, DbError>;
}

impl dyn Db + '_ {
    /// Every row, each made into a `T`.
    pub fn rows<T>(
        &mut self,
        sql: &str,
        args: &[Arg<'_>],
        mut f: impl FnMut(&dyn Row) -> Result<T, DbError>,
    ) -> Result<Vec<T>, DbError> {
        let mut out = Vec::new();
        self.each(sql, args, &mut |r| {
            out.push(f(r)?);
            Ok(())
        })?;
        Ok(out)
    }

    /// The first row, if there is one.
    pub fn opt<T>(
        &mut self,
        sql: &str,
        args: &[Arg<'_>],
        mut f: impl FnMut(&dyn Row) -> Result<T, DbError>,
    ) -> Result<Option<T>, DbError> {
        let mut out = None;
        self.each(sql, args, &mut |r| {
            if out.is_none() {
                out = Some(f(r)?);
            }
            Ok(())
        })?;
        Ok(out)
    }

    /// The integer in the first column of the first row (0 when there is no row).
    pub fn int(&mut self, sql: &str, args: &[Arg<'_>]) -> Result<i64, DbError> {
        Ok(self.opt(sql, args, |r| r.int(0))?.unwrap_or(0))
    }

    /// Whether the query has a row.
    pub fn exists(&mut self, sql: &str, args: &[Arg<'_>]) -> Result<bool, DbError> {
        Ok(self.opt(sql, args, |_| Ok(()))?.is_some())
    }
}

/// A database the store runs on: transactions to write, connections to read.
pub trait Backend: Send + 'static {
    /// Where it is, for errors ("events.db", "postgres://db.example/lockdown").
    fn name(&self) -> &str;
    /// Runs `f` in one transaction and commits it durably. Writers are serialised store-wide,
    /// across processes too, so that cursors are assigned in commit order.
    fn write<T>(&mut self, f: impl FnOnce(&mut dyn Db) -> Result<T, DbError>)
    -> Result<T, DbError>;
    /// Runs `f` on one consistent view of what is committed.
    fn read<T>(&self, f: impl FnOnce(&mut dyn Db) -> Result<T, DbError>) -> Result<T, DbError>;
    /// Takes, or still holds, the lock `name` for as long as this instance's connection
    /// lives; false while another holds it. A database one process uses has no one to share
    /// with: always true.
    fn hold(&self, _name: &str) -> Result<bool, DbError> {
        Ok(true)
    }
}

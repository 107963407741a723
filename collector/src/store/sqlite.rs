//! SQLite under the store ([`super::sql`]): the embedded default, one file, WAL,
//! `synchronous=FULL`. One process writes (the collector's writer thread, `BEGIN IMMEDIATE`);
//! readers use their own connections.

use std::path::Path;

use lockdown_proto::v1::Event;
use rusqlite::{Connection, TransactionBehavior};

use super::StoreError;
use super::sql::db::{Arg, Backend, Db, DbError, Dialect, Row};
use super::sql::{SCHEMA_VERSION, SqlStore};

/// The SQLite store.
pub type Store = SqlStore<Sqlite>;

/// An open SQLite database.
#[derive(Debug)]
pub struct Sqlite {
    path: String,
    conn: Connection,
}

impl Store {
    /// Opens (creating) the database at `path`, bringing its schema up to date; refuses a
    /// database of a newer collector.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let p = path.display().to_string();
        let db = |source: rusqlite::Error| StoreError::Db {
            path: p.clone(),
            source: source.into(),
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
        let mut conn = conn;
        let migrated = (|| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            migrate(&tx)?;
            Ok(tx.commit()?)
        })();
        migrated.map_err(|source| StoreError::Db {
            path: p.clone(),
            source,
        })?;
        Ok(SqlStore::new(Sqlite { path: p, conn }))
    }
}

/// Brings the schema to [`SCHEMA_VERSION`], in an `IMMEDIATE` transaction (which keeps a
/// second collector on the same file out meanwhile).
fn migrate(conn: &Connection) -> Result<(), DbError> {
    conn.execute_batch(&super::sql::schema(Dialect::Sqlite))?;
    conn.execute_batch("CREATE TABLE IF NOT EXISTS schema(version INTEGER NOT NULL)")?;
    let found: i64 = conn.query_row("SELECT COALESCE(MAX(version), 0) FROM schema", [], |r| {
        r.get(0)
    })?;
    if found > SCHEMA_VERSION {
        return Err(DbError::NewerSchema {
            found,
            known: SCHEMA_VERSION,
        });
    }
    // Databases from before findings were kept lack these node columns (and got a nodes
    // table without them above).
    let columns: Vec<String> = conn
        .prepare("SELECT name FROM pragma_table_info('nodes')")?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    for (name, ddl) in [
        ("findings_epoch", "INTEGER NOT NULL DEFAULT 0"),
        ("findings_as_of", "INTEGER NOT NULL DEFAULT 0"),
        ("checked_cis", "TEXT NOT NULL DEFAULT '[]'"),
        ("last_seq", "INTEGER NOT NULL DEFAULT 0"),
    ] {
        if !columns.iter().any(|c| c == name) {
            conn.execute_batch(&format!("ALTER TABLE nodes ADD COLUMN {name} {ddl}"))?;
        }
    }
    if found < SCHEMA_VERSION {
        conn.execute("DELETE FROM schema", [])?;
        conn.execute("INSERT INTO schema(version) VALUES (?1)", [SCHEMA_VERSION])?;
    }
    Ok(())
}

/// A SQLite connection as a [`Db`].
struct Conn<'a>(&'a Connection);

impl rusqlite::ToSql for Arg<'_> {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(ToSqlOutput::Borrowed(match *self {
            Arg::Int(i) => ValueRef::Integer(i),
            Arg::Text(t) => ValueRef::Text(t.as_bytes()),
            Arg::Bytes(b) => ValueRef::Blob(b),
        }))
    }
}

fn params<'a>(args: &'a [Arg<'a>]) -> impl rusqlite::Params + 'a {
    rusqlite::params_from_iter(args.iter())
}

impl Row for rusqlite::Row<'_> {
    fn int(&self, i: usize) -> Result<i64, DbError> {
        Ok(self.get(i)?)
    }

    fn opt_int(&self, i: usize) -> Result<Option<i64>, DbError> {
        Ok(self.get(i)?)
    }

    fn text(&self, i: usize) -> Result<&str, DbError> {
        Ok(self.get_ref(i)?.as_str().map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, e.into())
        })?)
    }

    fn opt_text(&self, i: usize) -> Result<Option<&str>, DbError> {
        Ok(self.get_ref(i)?.as_str_or_null().map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, e.into())
        })?)
    }

    fn bytes(&self, i: usize) -> Result<&[u8], DbError> {
        Ok(self.get_ref(i)?.as_bytes().map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Blob, e.into())
        })?)
    }
}

impl Db for Conn<'_> {
    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }

    fn exec(&mut self, sql: &str, args: &[Arg<'_>]) -> Result<u64, DbError> {
        Ok(self.0.prepare_cached(sql)?.execute(params(args))? as u64)
    }

    fn each(
        &mut self,
        sql: &str,
        args: &[Arg<'_>],
        f: &mut dyn FnMut(&dyn Row) -> Result<(), DbError>,
    ) -> Result<(), DbError> {
        let mut stmt = self.0.prepare_cached(sql)?;
        let mut rows = stmt.query(params(args))?;
        while let Some(r) = rows.next()? {
            f(r)?;
        }
        Ok(())
    }

    fn insert_events(
        &mut self,
        node: &str,
        epoch: u64,
        events: &[Event],
    ) -> Result<Vec<bool>, DbError> {
        let mut ins = self.0.prepare_cached(
            "INSERT INTO events(node, epoch, seq, time, kind, severity, rule_id, path, body)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) ON CONFLICT(node, epoch, seq) DO NOTHING",
        )?;
        events
            .iter()
            .map(|e| {
                let n = ins.execute(rusqlite::params![
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
                Ok(n == 1)
            })
            .collect()
    }
}

impl Backend for Sqlite {
    fn name(&self) -> &str {
        &self.path
    }

    fn write<T>(
        &mut self,
        f: impl FnOnce(&mut dyn Db) -> Result<T, DbError>,
    ) -> Result<T, DbError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let out = f(&mut Conn(&tx))?;
        tx.commit()?;
        Ok(out)
    }

    fn read<T>(&self, f: impl FnOnce(&mut dyn Db) -> Result<T, DbError>) -> Result<T, DbError> {
        // One read transaction: every query of `f` sees the same commit.
        let tx = self.conn.unchecked_transaction()?;
        let out = f(&mut Conn(&tx))?;
        tx.finish()?;
        Ok(out)
    }
}

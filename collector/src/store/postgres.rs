//! PostgreSQL under the store ([`super::sql`]), for several collectors sharing one database.
//!
//! ## Commit order across replicas
//!
//! A reader resumes after the last cursor it saw, so a cursor must never become visible after
//! a higher one. A sequence alone does not give that when two replicas commit at once: one
//! transaction can take cursor 11, another 12, and 12 commit first; a reader then reads 12,
//! moves its cursor past 11, and never sees it. So every write transaction takes one
//! transaction-scoped advisory lock ([`WRITE_LOCK`]) before it assigns a cursor, and holds it
//! until its commit is visible (PostgreSQL makes a commit visible before it releases the
//! transaction's locks). Cursors are therefore assigned, and become visible, in commit order,
//! store-wide. The price is that replicas commit one at a time; each commit carries every
//! batch its replica's writer gathered meanwhile (group commit), so the database, not the lock,
//! sets the pace (BENCHMARKS.md).
//!
//! ## Waking readers
//!
//! Each write transaction sends `NOTIFY lockdown_commit`, delivered to every replica on
//! commit; [`listen`] turns it into the same wake-ups as the local writer's commits, and polls
//! as well, so a lost notification (a dropped listening connection) delays a reader by one
//! poll at most and loses nothing.
//!
//! ## Connections
//!
//! `postgres://user@host:port/db?sslmode=verify-full&sslrootcert=/path/ca.pem`. The password
//! never comes from the URL (it would sit in a config file or a process list): it comes from
//! a file ([`Password::File`], `LoadCredential=` in the unit) or the environment. TLS is
//! either off (`sslmode=disable`, the default: loopback, a Unix socket) or verified against
//! `sslrootcert` with the server's name (`require`, `verify-ca` and `verify-full` all verify;
//! `prefer` is refused, since it falls back to plain text).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use lockdown_proto::v1::Event;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, Statement};

use super::StoreError;
use super::sql::db::{Arg, Backend, Db, DbError, Dialect, Row};
use super::sql::{SCHEMA_VERSION, SqlStore};

mod tls;

/// The PostgreSQL store.
pub type PgStore = SqlStore<Postgres>;

/// The advisory lock every write transaction holds (commit order, above).
pub const WRITE_LOCK: i64 = 0x6c6f_636b_646f_776e; // "lockdown"
/// The advisory lock migrations run under, so that replicas starting together do not race.
const MIGRATE_LOCK: i64 = WRITE_LOCK + 1;
/// The first key of the locks a replica holds to run something alone (a sink).
const HOLD_CLASS: i32 = 0x6c6b; // "lk"
/// The channel commits are announced on.
pub const CHANNEL: &str = "lockdown_commit";

/// Where the database password comes from.
#[derive(Clone, PartialEq, Eq)]
pub enum Password {
    /// None (trust, peer or certificate authentication).
    None,
    /// The first line of this file.
    File(std::path::PathBuf),
    /// This value (from the environment).
    Value(String),
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Password::None => f.write_str("None"),
            Password::File(p) => write!(f, "File({})", p.display()),
            Password::Value(_) => f.write_str("Value(<withheld>)"),
        }
    }
}

/// Limits every session of the collector sets, so that nothing wedges a replica for good: a
/// replica stopped mid-transaction (SIGSTOP, a frozen VM) would hold the write lock and stall
/// every other one; the server ends its idle transaction, and a waiter gives up, fails its
/// write (retrying helps: the agents resend) and tries again.
const SESSION: &str = "SET lock_timeout = '10s'; SET statement_timeout = '300s'; \
                       SET idle_in_transaction_session_timeout = '30s'";

/// How to reach the database: the parsed URL, its TLS and its password.
#[derive(Clone)]
pub struct Target {
    config: tokio_postgres::Config,
    tls: Option<tls::MakeConnect>,
    /// The URL as shown in logs and errors (it never holds a password).
    shown: String,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

/// `url` without a password, in its user part or its parameters (for logs and errors).
fn redact(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let (rest, query) = rest
        .split_once('?')
        .map_or((rest, None), |(r, q)| (r, Some(q)));
    let (authority, path) = rest
        .split_once('/')
        .map_or((rest, None), |(a, p)| (a, Some(p)));
    let authority = match authority.rsplit_once('@') {
        Some((user, host)) => {
            let user = user.split_once(':').map_or(user, |(u, _)| u);
            format!("{user}@{host}")
        }
        None => authority.to_string(),
    };
    let mut out = format!("{scheme}://{authority}");
    if let Some(p) = path {
        out.push('/');
        out.push_str(p);
    }
    if let Some(q) = query {
        let kept: Vec<&str> = q
            .split('&')
            .filter(|kv| !kv.starts_with("password="))
            .collect();
        if !kept.is_empty() {
            out.push('?');
            out.push_str(&kept.join("&"));
        }
    }
    out
}

/// Whether `database` names a PostgreSQL database rather than a SQLite file.
pub fn is_url(database: &str) -> bool {
    database.starts_with("postgres://") || database.starts_with("postgresql://")
}

impl Target {
    /// Parses a `postgres://` URL and reads the password it needs.
    pub fn parse(url: &str, password: &Password) -> Result<Target, StoreError> {
        let shown = redact(url);
        let bad = |reason: String| StoreError::Config {
            path: shown.clone(),
            reason,
        };
        // The TLS files are ours to read; the driver does not know them.
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let mut rest = Vec::new();
        let (mut root, mut mode) = (None, "disable".to_string());
        let mut client = (None, None);
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            match k {
                "sslrootcert" => root = Some(std::path::PathBuf::from(v)),
                "sslcert" => client.0 = Some(std::path::PathBuf::from(v)),
                "sslkey" => client.1 = Some(std::path::PathBuf::from(v)),
                "sslmode" => mode = v.to_string(),
                "password" => {
                    return Err(bad(
                        "the URL carries a password; give it in a file (database_password_file) or the LOCKDOWN_DATABASE_PASSWORD environment variable".into(),
                    ));
                }
                _ => rest.push(pair),
            }
        }
        let driver_url = if rest.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", rest.join("&"))
        };
        let mut config: tokio_postgres::Config = driver_url
            .parse()
            .map_err(|e| bad(format!("not a PostgreSQL URL: {e}")))?;
        if config.get_password().is_some() {
            return Err(bad(
                "the URL carries a password; give it in a file (database_password_file) or the LOCKDOWN_DATABASE_PASSWORD environment variable".into(),
            ));
        }
        match password {
            Password::None => {}
            Password::Value(p) => {
                config.password(p.as_str());
            }
            Password::File(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    bad(format!(
                        "cannot read the password file {}: {e}",
                        path.display()
                    ))
                })?;
                config.password(text.lines().next().unwrap_or_default());
            }
        }
        let tls = match mode.as_str() {
            "disable" => None,
            "require" | "verify-ca" | "verify-full" => {
                let root = root.ok_or_else(|| {
                    bad(format!("sslmode={mode} needs sslrootcert=<the CA that signed the server's certificate>"))
                })?;
                Some(tls::MakeConnect::new(&root, client).map_err(bad)?)
            }
            other => {
                return Err(bad(format!(
                    "sslmode={other} is not accepted: use disable, or verify-full with sslrootcert"
                )));
            }
        };
        config.ssl_mode(if tls.is_some() {
            tokio_postgres::config::SslMode::Require
        } else {
            tokio_postgres::config::SslMode::Disable
        });
        // A database host that vanishes is noticed in seconds, not at TCP's leisure.
        config
            .connect_timeout(Duration::from_secs(5))
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(10))
            .tcp_user_timeout(Duration::from_secs(15))
            .application_name("lockdown-collector");
        Ok(Target { config, tls, shown })
    }

    /// A new connection, driven on the store's runtime.
    async fn connect(&self) -> Result<Client, tokio_postgres::Error> {
        let client = match &self.tls {
            None => {
                let (client, conn) = self.config.connect(tokio_postgres::NoTls).await?;
                tokio::spawn(drive(conn));
                client
            }
            Some(tls) => {
                let (client, conn) = self.config.connect(tls.clone()).await?;
                tokio::spawn(drive(conn));
                client
            }
        };
        // An ack must follow a durable commit: a server whose default is not to wait for the
        // disk is overruled for this session.
        client.batch_execute(SESSION).await?;
        let sync = client.query_one("SHOW synchronous_commit", &[]).await?;
        if sync.get::<_, &str>(0) == "off" {
            client.batch_execute("SET synchronous_commit TO on").await?;
        }
        Ok(client)
    }

    /// A connection whose notifications come to `tx` (for [`listen`]).
    async fn connect_listening(
        &self,
        tx: tokio::sync::mpsc::UnboundedSender<()>,
    ) -> Result<Client, tokio_postgres::Error> {
        async fn pump<S, T>(
            mut conn: tokio_postgres::Connection<S, T>,
            tx: tokio::sync::mpsc::UnboundedSender<()>,
        ) where
            S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
            T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
        {
            while let Some(Ok(m)) = std::future::poll_fn(|cx| conn.poll_message(cx)).await {
                if let tokio_postgres::AsyncMessage::Notification(_) = m
                    && tx.send(()).is_err()
                {
                    return;
                }
            }
        }
        let client = match &self.tls {
            None => {
                let (client, conn) = self.config.connect(tokio_postgres::NoTls).await?;
                tokio::spawn(pump(conn, tx));
                client
            }
            Some(tls) => {
                let (client, conn) = self.config.connect(tls.clone()).await?;
                tokio::spawn(pump(conn, tx));
                client
            }
        };
        client.batch_execute(&format!("LISTEN {CHANNEL}")).await?;
        Ok(client)
    }
}

async fn drive<F: std::future::Future<Output = Result<(), tokio_postgres::Error>>>(conn: F) {
    if let Err(e) = conn.await {
        tracing::debug!(error = %DbError::Pg(e), "database connection ended");
    }
}

/// The runtime the driver's connections run on (a task each, doing the I/O).
fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("postgres")
            .enable_all()
            .build()
            .expect("a runtime for the database connections")
    })
}

/// Polls `f` to completion on the calling thread. A statement's future only exchanges
/// messages with its connection's task (on [`runtime`]) and needs no reactor of its own, so
/// the store's callers block on it from any thread: the writer, a reader's `spawn_blocking`,
/// a sink's thread (inside its own runtime).
fn wait<F: std::future::Future>(f: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Arc::new(Unpark(std::thread::current())).into();
    let mut cx = std::task::Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    loop {
        if let std::task::Poll::Ready(out) = f.as_mut().poll(&mut cx) {
            return out;
        }
        std::thread::park();
    }
}

/// Whether retrying can succeed without an operator: a lost connection, a database shutting
/// down or starting, a full disk, a conflict; not a refused login, a missing database or
/// table, or a read-only server.
pub fn retry_helps(e: &tokio_postgres::Error) -> bool {
    match e.code() {
        None => true, // I/O, a closed connection, a timeout
        Some(code) => matches!(
            &code.code()[..2],
            "08" | "40" | "53" | "55" | "57" | "58" | "XX"
        ),
    }
}

/// A connection to one database, made again after it broke.
pub struct Postgres {
    target: Target,
    conn: Mutex<Option<Conn>>,
}

impl std::fmt::Debug for Postgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Postgres({:?})", self.target)
    }
}

/// A live connection, the statements prepared on it and the locks it holds.
struct Conn {
    client: Client,
    prepared: HashMap<String, Statement>,
    held: std::collections::HashSet<i64>,
}

impl PgStore {
    /// Connects, bringing the schema up to date under [`MIGRATE_LOCK`]; refuses a database
    /// of a newer collector.
    pub fn connect(target: &Target) -> Result<PgStore, StoreError> {
        let backend = Postgres {
            target: target.clone(),
            conn: Mutex::new(None),
        };
        backend
            .with_conn(|c| wait(migrate(&mut c.client)))
            .map_err(|source| StoreError::Db {
                path: target.shown.clone(),
                source,
            })?;
        Ok(SqlStore::new(backend))
    }
}

async fn migrate(client: &mut Client) -> Result<(), DbError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATE_LOCK])
        .await?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS schema(version BIGINT NOT NULL)")
        .await?;
    let found: i64 = tx
        .query_one("SELECT COALESCE(MAX(version), 0) FROM schema", &[])
        .await?
        .get(0);
    if found > SCHEMA_VERSION {
        return Err(DbError::NewerSchema {
            found,
            known: SCHEMA_VERSION,
        });
    }
    if found < SCHEMA_VERSION {
        // Tables and indexes of every version (CREATE ... IF NOT EXISTS), then what an older
        // database lacks: 2 added nodes.last_seq.
        tx.batch_execute(&super::sql::schema(Dialect::Postgres))
            .await?;
        tx.batch_execute(
            "ALTER TABLE nodes ADD COLUMN IF NOT EXISTS last_seq BIGINT NOT NULL DEFAULT 0",
        )
        .await?;
        tx.execute("DELETE FROM schema", &[]).await?;
        tx.execute(
            "INSERT INTO schema(version) VALUES ($1)",
            &[&SCHEMA_VERSION],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

impl Postgres {
    /// Runs `f` on the live connection, connecting first when there is none or it broke.
    fn with_conn<T>(&self, f: impl FnOnce(&mut Conn) -> Result<T, DbError>) -> Result<T, DbError> {
        let mut slot = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        if slot.as_ref().is_none_or(|c| c.client.is_closed()) {
            *slot = None;
            let (tx, rx) = std::sync::mpsc::channel();
            let target = self.target.clone();
            runtime().spawn(async move {
                let _ = tx.send(target.connect().await);
            });
            let client = rx.recv().expect("the connecting task answers")?;
            *slot = Some(Conn {
                client,
                prepared: HashMap::new(),
                held: Default::default(),
            });
        }
        let conn = slot.as_mut().expect("connected above");
        let out = f(conn);
        if out.is_err() && conn.client.is_closed() {
            *slot = None;
        }
        out
    }
}

impl Backend for Postgres {
    fn name(&self) -> &str {
        &self.target.shown
    }

    fn write<T>(
        &mut self,
        f: impl FnOnce(&mut dyn Db) -> Result<T, DbError>,
    ) -> Result<T, DbError> {
        self.with_conn(|c| {
            let tx = wait(c.client.transaction())?;
            wait(tx.execute("SELECT pg_advisory_xact_lock($1)", &[&WRITE_LOCK]))?;
            let out = f(&mut PgDb {
                tx: &tx,
                prepared: &mut c.prepared,
            })?;
            wait(tx.batch_execute(&format!("NOTIFY {CHANNEL}")))?;
            wait(tx.commit())?;
            Ok(out)
        })
    }

    fn hold(&self, name: &str) -> Result<bool, DbError> {
        // A session lock, released by PostgreSQL when the connection ends (the process died,
        // the network broke): another replica takes over then.
        // The two-key form, whose key space does not overlap the one-key locks above.
        let key = {
            use std::hash::Hasher;
            let mut h = crate::fnv::Fnv::default();
            h.write(name.as_bytes());
            h.finish() as u32 as i32
        };
        self.with_conn(|c| {
            if c.held.contains(&i64::from(key)) {
                return Ok(true);
            }
            let took: bool = wait(
                c.client
                    .query_one("SELECT pg_try_advisory_lock($1, $2)", &[&HOLD_CLASS, &key]),
            )?
            .get(0);
            if took {
                c.held.insert(i64::from(key));
            }
            Ok(took)
        })
    }

    fn read<T>(&self, f: impl FnOnce(&mut dyn Db) -> Result<T, DbError>) -> Result<T, DbError> {
        self.with_conn(|c| {
            let tx = wait(
                c.client
                    .build_transaction()
                    .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
                    .read_only(true)
                    .start(),
            )?;
            let out = f(&mut PgDb {
                tx: &tx,
                prepared: &mut c.prepared,
            })?;
            wait(tx.commit())?;
            Ok(out)
        })
    }
}

/// A transaction as a [`Db`].
struct PgDb<'a, 't> {
    tx: &'a tokio_postgres::Transaction<'t>,
    prepared: &'a mut HashMap<String, Statement>,
}

impl PgDb<'_, '_> {
    /// The statement for `sql` (written with `?N` parameters), prepared once per connection.
    fn statement(&mut self, sql: &str) -> Result<Statement, DbError> {
        if let Some(s) = self.prepared.get(sql) {
            return Ok(s.clone());
        }
        let mut text = String::with_capacity(sql.len());
        let mut chars = sql.chars().peekable();
        while let Some(c) = chars.next() {
            let numbered = c == '?' && chars.peek().is_some_and(char::is_ascii_digit);
            text.push(if numbered { '$' } else { c });
        }
        let s = wait(self.tx.prepare(&text))?;
        self.prepared.insert(sql.to_string(), s.clone());
        Ok(s)
    }
}

impl ToSql for Arg<'_> {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> Result<tokio_postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match *self {
            Arg::Int(i) if *ty == Type::INT8 => i.to_sql(ty, out),
            Arg::Int(i) if *ty == Type::INT4 => i32::try_from(i)?.to_sql(ty, out),
            Arg::Text(t) if <&str as ToSql>::accepts(ty) => t.to_sql(ty, out),
            Arg::Bytes(b) if *ty == Type::BYTEA => b.to_sql(ty, out),
            _ => Err(format!("{self:?} given for a parameter of type {ty}").into()),
        }
    }

    fn accepts(_: &Type) -> bool {
        true // checked per value in to_sql
    }

    tokio_postgres::types::to_sql_checked!();
}

fn params<'a>(args: &'a [Arg<'a>]) -> Vec<&'a (dyn ToSql + Sync)> {
    args.iter().map(|a| a as &(dyn ToSql + Sync)).collect()
}

impl Row for tokio_postgres::Row {
    fn int(&self, i: usize) -> Result<i64, DbError> {
        Ok(self.try_get(i)?)
    }

    fn opt_int(&self, i: usize) -> Result<Option<i64>, DbError> {
        Ok(self.try_get(i)?)
    }

    fn text(&self, i: usize) -> Result<&str, DbError> {
        Ok(self.try_get(i)?)
    }

    fn opt_text(&self, i: usize) -> Result<Option<&str>, DbError> {
        Ok(self.try_get(i)?)
    }

    fn bytes(&self, i: usize) -> Result<&[u8], DbError> {
        Ok(self.try_get(i)?)
    }
}

impl Db for PgDb<'_, '_> {
    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }

    fn exec(&mut self, sql: &str, args: &[Arg<'_>]) -> Result<u64, DbError> {
        let s = self.statement(sql)?;
        Ok(wait(self.tx.execute(&s, &params(args)))?)
    }

    fn each(
        &mut self,
        sql: &str,
        args: &[Arg<'_>],
        f: &mut dyn FnMut(&dyn Row) -> Result<(), DbError>,
    ) -> Result<(), DbError> {
        let s = self.statement(sql)?;
        for r in wait(self.tx.query(&s, &params(args)))? {
            f(&r)?;
        }
        Ok(())
    }

    fn insert_events(
        &mut self,
        node: &str,
        epoch: u64,
        events: &[Event],
    ) -> Result<Vec<bool>, DbError> {
        // One round trip for the whole batch; cursors are taken in the batch's order.
        let s = self.statement(
            "INSERT INTO events(node, epoch, seq, time, kind, severity, rule_id, path, body)
             SELECT ?1, ?2, u.seq, u.time, u.kind, u.severity, u.rule_id, u.path, u.body
             FROM unnest(?3::bigint[], ?4::text[], ?5::text[], ?6::text[], ?7::text[],
                         ?8::text[], ?9::bytea[])
                  WITH ORDINALITY AS u(seq, time, kind, severity, rule_id, path, body, ord)
             ORDER BY u.ord
             ON CONFLICT(node, epoch, seq) DO NOTHING RETURNING seq",
        )?;
        let seqs: Vec<i64> = events.iter().map(|e| e.seq as i64).collect();
        let col = |f: fn(&Event) -> &str| events.iter().map(f).collect::<Vec<&str>>();
        let (time, kind, severity) = (col(|e| &e.time), col(|e| &e.kind), col(|e| &e.severity));
        let (rule, path) = (col(|e| &e.rule_id), col(|e| &e.path));
        let body: Vec<&[u8]> = events.iter().map(|e| e.body.as_slice()).collect();
        let epoch = epoch as i64;
        let stored = wait(self.tx.query(
            &s,
            &[
                &node, &epoch, &seqs, &time, &kind, &severity, &rule, &path, &body,
            ],
        ))?;
        let mut new: std::collections::HashSet<i64> =
            stored.iter().map(|r| r.get::<_, i64>(0)).collect();
        // A sequence number twice in one batch is new once, at its first place.
        Ok(seqs.iter().map(|s| new.remove(s)).collect())
    }
}

/// Wakes `feed` on every commit any replica makes, and every `poll` in any case (a lost
/// notification costs a reader one poll). Runs until the process ends, reconnecting.
pub async fn listen(target: Target, feed: Arc<dyn crate::feed::CommitFeed>, poll: Duration) {
    let mut backoff = Duration::from_millis(200);
    loop {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let client = match target.connect_listening(tx).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(database = ?target, error = %DbError::Pg(e), "cannot listen for commits; polling");
                tokio::time::sleep(backoff.min(poll)).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                feed.committed();
                continue;
            }
        };
        backoff = Duration::from_millis(200);
        // Anything committed while no one listened is read now.
        feed.committed();
        let mut tick = tokio::time::interval(poll);
        loop {
            tokio::select! {
                n = rx.recv() => match n {
                    Some(()) => feed.committed(),
                    None => break, // the connection ended
                },
                _ = tick.tick() => {
                    if client.is_closed() {
                        break;
                    }
                    feed.committed();
                }
            }
        }
        tracing::warn!(database = ?target, "the connection listening for commits ended; reconnecting");
    }
}

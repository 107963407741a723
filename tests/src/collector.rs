//! A real `lockdown-collector serve` for end-to-end tests: a development PKI made by the
//! collector's own `dev-ca`, a database in a temp directory, a free loopback port, and a
//! read-only look at what it stored.

use std::fs;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lockdown_collector::store::Store;

use crate::bin;
use crate::node::WAIT;

/// Development certificates for a set of nodes.
#[derive(Debug)]
pub struct Pki {
    /// Keeps the directory alive.
    pub dir: tempfile::TempDir,
}

impl Pki {
    /// A CA, a collector certificate, one certificate per node, and two reader certificates:
    /// `reader`, and `admin` (the collectors here make it an admin).
    pub fn new(nodes: &[&str]) -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(bin("lockdown-collector"));
        cmd.args(["dev-ca", "--out"])
            .arg(dir.path())
            .args(["--reader", "reader", "--reader", "admin"]);
        for n in nodes {
            cmd.args(["--node", n]);
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Pki { dir }
    }

    /// A file of the PKI.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The agent config lines that ship to `addr` as `node`.
    pub fn agent_config(&self, addr: SocketAddr, node: &str) -> String {
        self.agent_config_to(&[addr], node)
    }

    /// The agent config lines that ship to the first of `addrs` that answers, as `node`.
    pub fn agent_config_to(&self, addrs: &[SocketAddr], node: &str) -> String {
        let list: Vec<String> = addrs
            .iter()
            .map(|a| format!("https://localhost:{}", a.port()))
            .collect();
        let address = match list.as_slice() {
            [one] => one.clone(),
            many => format!("[{}]", many.join(", ")),
        };
        format!(
            "collector:\n  address: {address}\n  ca: {ca}\n  cert: {cert}\n  key: {key}\n  backoff_max: 200ms\n  heartbeat: 1s\n",
            ca = self.path("ca.crt").display(),
            cert = self.path(&format!("{node}.crt")).display(),
            key = self.path(&format!("{node}.key")).display(),
        )
    }
}

impl Pki {
    /// Agent config lines that trust this PKI's collector but present `cert_from`'s
    /// certificate for `node` (a foreign CA, or the readers' CA).
    pub fn agent_config_presenting(&self, addr: SocketAddr, node: &str, cert_from: &Pki) -> String {
        let swap = |name: String| {
            (
                self.path(&name).display().to_string(),
                cert_from.path(&name).display().to_string(),
            )
        };
        let (crt, key) = (swap(format!("{node}.crt")), swap(format!("{node}.key")));
        self.agent_config(addr, node)
            .replace(&crt.0, &crt.1)
            .replace(&key.0, &key.1)
    }

    /// `lockdown-collector <args>` against `addr`, trusting this PKI's collector and
    /// presenting the `reader` certificate of `reader`.
    pub fn reader_command(&self, addr: SocketAddr, reader: &Pki, args: &[&str]) -> Command {
        self.command_as(addr, reader, "reader", args)
    }

    /// `lockdown-collector <args>` presenting this PKI's `admin` certificate.
    pub fn admin_command(&self, addr: SocketAddr, args: &[&str]) -> Command {
        self.command_as(addr, self, "admin", args)
    }

    fn command_as(&self, addr: SocketAddr, from: &Pki, name: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new(bin("lockdown-collector"));
        cmd.args(args)
            .args(["--addr", &format!("https://localhost:{}", addr.port())])
            .arg("--ca")
            .arg(self.path("ca.crt"))
            .arg("--cert")
            .arg(from.path(&format!("{name}.crt")))
            .arg("--key")
            .arg(from.path(&format!("{name}.key")));
        cmd
    }
}

impl Pki {
    /// Every (node, seq) a reader lists through the query API (`lockdown-collector events
    /// --format json`), in the order listed, duplicates kept: what "stored once" means at
    /// the protocol level, whatever the schema enforces.
    pub fn listed(&self, addr: SocketAddr) -> Vec<(String, u64)> {
        let out = self
            .reader_command(addr, self, &["events", "--format", "json"])
            .output()
            .expect("lockdown-collector events");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).expect("one JSON event a line");
                (
                    v["node"].as_str().unwrap_or_default().to_string(),
                    v["seq"].as_u64().unwrap_or_default(),
                )
            })
            .collect()
    }
}

/// A free loopback port (bound and released; the server binds it next), below the kernel's
/// range for outgoing connections (`ip_local_port_range`): a port the kernel handed out for
/// `bind(0)` can be taken by any outgoing connection before the server binds it. Each test
/// process starts at its own place in the range, so that parallel tests rarely meet.
pub fn free_addr() -> SocketAddr {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let ephemeral_low: u32 = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768);
    let (low, high) = (10_000u32, ephemeral_low.clamp(11_000, 65_535));
    let span = high - low;
    let start = std::process::id().wrapping_mul(7919) % span;
    for _ in 0..span {
        let port = low + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % span;
        let addr = SocketAddr::from(([127, 0, 0, 1], port as u16));
        if TcpListener::bind(addr).is_ok() {
            return addr;
        }
    }
    panic!("no free loopback port in {low}..{high}");
}

/// A running collector.
#[derive(Debug)]
pub struct Collector {
    /// The process.
    pub child: Option<Child>,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its SQLite database (unused on PostgreSQL).
    pub db: PathBuf,
    /// Its PostgreSQL database's URL, if it stores there.
    pub postgres: Option<String>,
    config: PathBuf,
    log: PathBuf,
    _dir: Option<tempfile::TempDir>,
}

impl Collector {
    /// Starts a collector with mutual TLS from `pki` on a free loopback port, storing in a
    /// temp directory of its own; `extra` config lines.
    pub fn new(pki: &Pki, extra: &str) -> Collector {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Collector::start(pki, dir.path(), free_addr(), extra);
        c._dir = Some(dir);
        c
    }

    /// Like [`Collector::new`], with readers' certificates coming from their own CA.
    pub fn with_reader_ca(pki: &Pki, readers: &Pki) -> Collector {
        let dir = tempfile::tempdir().unwrap();
        let tls_extra = format!(", reader_ca: {}", readers.path("ca.crt").display());
        let mut c = Collector::launch(pki, dir.path(), free_addr(), &tls_extra, "");
        c._dir = Some(dir);
        c
    }

    /// Starts a collector with mutual TLS from `pki`, storing in `dir`; `extra` config lines.
    pub fn start(pki: &Pki, dir: &Path, addr: SocketAddr, extra: &str) -> Collector {
        Collector::launch(pki, dir, addr, "", extra)
    }

    /// A collector replica storing in the PostgreSQL database at `url`.
    pub fn on_postgres(pki: &Pki, url: &str, extra: &str) -> Collector {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Collector::launch(
            pki,
            dir.path(),
            free_addr(),
            "",
            &format!("database: {url}\n{extra}"),
        );
        c.postgres = Some(url.to_string());
        c._dir = Some(dir);
        c
    }

    fn launch(pki: &Pki, dir: &Path, addr: SocketAddr, tls_extra: &str, extra: &str) -> Collector {
        let config = dir.join("collector.yaml");
        let db = dir.join("events.db");
        // A database given in `extra` replaces the file.
        let database = if extra.contains("database:") {
            String::new()
        } else {
            format!("database: {}\n", db.display())
        };
        fs::write(
            &config,
            format!(
                "listen: {addr}\n{database}tls: {{cert: {cert}, key: {key}, client_ca: {ca}{tls_extra}}}\nreaders: [reader, admin]\nadmins: [admin]\n{extra}\n",
                cert = pki.path("collector.crt").display(),
                key = pki.path("collector.key").display(),
                ca = pki.path("ca.crt").display(),
            ),
        )
        .unwrap();
        let mut c = Collector {
            child: None,
            addr,
            db,
            postgres: None,
            config,
            log: dir.join("collector.log"),
            _dir: None,
        };
        c.restart();
        c
    }

    /// Starts the process again (after [`Collector::kill9`] or [`Collector::stop`]).
    pub fn restart(&mut self) {
        let child = Command::new(bin("lockdown-collector"))
            .args(["serve", "--config"])
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.log)
                    .unwrap(),
            ))
            .spawn()
            .expect("start lockdown-collector");
        self.child = Some(child);
        let deadline = Instant::now() + WAIT;
        while TcpStream::connect(self.addr).is_err() {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("collector exited {status}:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "collector not listening:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// kill -9.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// SIGTERM, then waits (at most [`WAIT`]) for the process to exit; `None` if it did not.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.child = Some(child); // killed on drop
        None
    }

    /// Every stored (node, seq), sorted.
    pub fn keys(&self) -> Vec<(String, u64)> {
        match &self.postgres {
            Some(url) => crate::collector::postgres(url).keys().unwrap_or_default(),
            None => Store::open(&self.db)
                .and_then(|s| s.keys())
                .unwrap_or_default(),
        }
    }

    /// Waits until the stored keys satisfy `done`.
    pub fn wait_for(&self, done: impl Fn(&[(String, u64)]) -> bool) -> Vec<(String, u64)> {
        let deadline = Instant::now() + WAIT;
        loop {
            let keys = self.keys();
            if done(&keys) {
                return keys;
            }
            assert!(
                Instant::now() < deadline,
                "timed out; stored {} keys, last {:?}\ncollector log:\n{}",
                keys.len(),
                keys.last(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A store on the PostgreSQL database at `url` (no password).
pub fn postgres(url: &str) -> lockdown_collector::store::PgStore {
    use lockdown_collector::store::postgres::{Password, Target};
    let target = Target::parse(url, &Password::None).expect("a PostgreSQL URL");
    lockdown_collector::store::PgStore::connect(&target).expect("connect to PostgreSQL")
}

/// Whether `keys` are exactly `node`'s 1..=n for some n of at least `last`: everything up to
/// `last` stored once and in order, and whatever the agent spooled after a test read `last`
/// (a write's events may land in two scans under load) does not make the wait fail.
pub fn holds_through(keys: &[(String, u64)], node: &str, last: u64) -> bool {
    let n = keys.len() as u64;
    n >= last && keys == range(node, n).as_slice()
}

/// The exact keys `1..=last` of `node`.
pub fn range(node: &str, last: u64) -> Vec<(String, u64)> {
    (1..=last).map(|s| (node.to_string(), s)).collect()
}

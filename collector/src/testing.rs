//! A real PostgreSQL server for tests (the `testing` feature): the Debian package's binaries,
//! a data directory of its own, loopback on a free port. As root (CI), the server runs as
//! `nobody`, since PostgreSQL refuses root; it dies with the thread that started it.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// A running PostgreSQL server; stopped (killed) on drop.
#[derive(Debug)]
pub struct PgServer {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    /// `-c` settings beyond the defaults.
    settings: Vec<String>,
    child: Option<Child>,
    made: std::sync::atomic::AtomicU32,
}

/// The directory holding `initdb` and `postgres`: on PATH, else the newest Debian version.
pub fn pg_bin() -> Option<PathBuf> {
    // Through links on PATH to the directory that holds the other programs too (createdb).
    if let Some(dir) = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .filter_map(|d| {
                d.join("initdb")
                    .canonicalize()
                    .ok()?
                    .parent()
                    .map(Path::to_path_buf)
            })
            .find(|d| d.join("postgres").is_file() && d.join("createdb").is_file())
    }) {
        return Some(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, bin): &(u32, PathBuf)| bin.join("initdb").is_file())
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

fn is_root() -> bool {
    // The owner of our own /proc entry is our effective user.
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

/// `cmd` as the user the server runs as, dying with the calling thread.
fn as_server_user(program: &Path) -> Command {
    let mut c = Command::new("setpriv");
    c.arg("--pdeathsig=KILL");
    if is_root() {
        c.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"]);
    }
    c.arg(program);
    c
}

fn chown_nobody(path: &Path) {
    if is_root() {
        let ok = Command::new("chown")
            .args(["-R", "nobody:nogroup"])
            .arg(path)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "chown {} to nobody", path.display());
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

impl PgServer {
    /// A new cluster (`initdb`, trust on loopback, the C locale), started.
    pub fn start() -> PgServer {
        let mut server = PgServer::init();
        server.run();
        server
    }

    /// Like [`PgServer::start`], serving TLS too with a certificate for `localhost` from a
    /// development CA; the CA's file, for `sslrootcert`.
    pub fn start_tls() -> (PgServer, PathBuf) {
        let mut server = PgServer::init();
        let pki = server.dir.path().join("pki");
        crate::certs::write_dev_ca(&pki, &["localhost".to_string()], &[], &[])
            .expect("a development CA");
        chown_nobody(&pki);
        // PostgreSQL wants its key readable by its own user only.
        let key = pki.join("collector.key");
        std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .expect("chmod the server key");
        server.settings = vec![
            "ssl=on".into(),
            format!("ssl_cert_file={}", pki.join("collector.crt").display()),
            format!("ssl_key_file={}", key.display()),
        ];
        server.run();
        (server, pki.join("ca.crt"))
    }

    fn init() -> PgServer {
        let bin = pg_bin().expect(
            "PostgreSQL's binaries (initdb, postgres): install the Debian package postgresql",
        );
        let dir = tempfile::Builder::new()
            .prefix("lockdown-pg")
            .tempdir()
            .expect("a temporary directory");
        chown_nobody(dir.path());
        let data = dir.path().join("data");
        let out = as_server_user(&bin.join("initdb"))
            .args(["-D"])
            .arg(&data)
            .args(["-U", "postgres", "--auth=trust", "--locale=C", "-E", "UTF8"])
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        PgServer {
            bin,
            dir,
            port: free_port(),
            settings: Vec::new(),
            child: None,
            made: Default::default(),
        }
    }

    /// Starts the server on its directory and waits until it accepts connections.
    fn run(&mut self) {
        let mut child = as_server_user(&self.bin.join("postgres"))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-p", &self.port.to_string(), "-k"])
            .arg(self.dir.path())
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "max_connections=300",
                "-c",
                "logging_collector=off",
            ])
            .args(self.settings.iter().flat_map(|s| ["-c", s.as_str()]))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start postgres");
        let (ready_tx, ready) = mpsc::channel();
        let stderr = child.stderr.take().expect("piped");
        std::thread::spawn(move || {
            let mut log = Vec::new();
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if line.contains("ready to accept connections") {
                    let _ = ready_tx.send(Ok(()));
                }
                log.push(line);
                if log.len() > 200 {
                    log.remove(0);
                }
            }
            let _ = ready_tx.send(Err(log.join("\n")));
        });
        match ready.recv_timeout(Duration::from_secs(60)) {
            Ok(Ok(())) => {}
            Ok(Err(log)) => panic!("postgres stopped before it was ready:\n{log}"),
            Err(_) => panic!("postgres not ready within 60 s"),
        }
        self.child = Some(child);
    }

    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A new, empty database on it; its URL.
    pub fn database(&self) -> String {
        let n = self.made.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let name = format!("t{n}");
        let out = Command::new(self.bin.join("createdb"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
            ])
            .arg(&name)
            .output()
            .expect("run createdb");
        assert!(
            out.status.success(),
            "createdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.url(&name)
    }

    /// The URL of database `name`.
    pub fn url(&self, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    /// Kills the server at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            // Its backends too: a killed postmaster's children would otherwise hold its shared
            // memory until they notice, and keep the successor from starting.
            let children = children_of(c.id());
            let _ = c.kill();
            for pid in children {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
            let _ = c.wait();
        }
    }

    /// Starts it again on the same directory and port (after [`PgServer::kill`]).
    pub fn restart(&mut self) {
        self.kill();
        self.run();
    }
}

/// The processes whose parent is `pid`.
fn children_of(pid: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let child: u32 = e.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            // pid (comm) state ppid ...: the command may hold spaces, the last ')' ends it.
            let ppid: u32 = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            (ppid == pid).then_some(child)
        })
        .collect()
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SIGINT: fast shutdown, so that the directory can be removed.
            let _ = Command::new("kill")
                .args(["-INT", &c.id().to_string()])
                .status();
            let _ = c.wait();
        }
    }
}

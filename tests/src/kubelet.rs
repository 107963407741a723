//! A test double for the kubelet's static pod source, to test the fixer against.
//!
//! Like the kubelet (`pkg/kubelet/config/file.go`), it watches the manifests directory with
//! inotify and re-lists it (every 100 ms here, 20 s there), ignores dot files, reads every
//! other regular file (following symlinks) as a pod, and keeps the old pod when a file does
//! not parse. A changed spec kills the old "container" and starts the new one; a container
//! that exits is restarted after a short back-off.
//!
//! A "container" is `fake-component` started with the manifest's flags, so it refuses the
//! flags its version does not accept and serves the manifest's probe paths (see
//! `src/bin/fake-component.rs`).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lockdown_agent::fix::health;
use lockdown_agent::integrity::sha256_hex;
use lockdown_agent::manifest::expand::Expanded;
use lockdown_agent::manifest::flags::ArgSource;
use lockdown_agent::rules::Catalogue;
use lockdown_agent::rules::parse_manifest;
use notify::Watcher;

use crate::bin;
use crate::node::{Node, WAIT};

const RELIST: Duration = Duration::from_millis(100);
const BACKOFF: Duration = Duration::from_millis(300);

struct Pod {
    sha: String,
    child: Child,
    exited_at: Option<Instant>,
}

#[derive(Default)]
struct State {
    pods: BTreeMap<String, Pod>,
    /// Every file name ever run as a pod.
    ran: BTreeSet<String>,
    /// (file, sha256) of every start.
    starts: Vec<(String, String)>,
    /// A changed spec not acted on yet, and since when it was seen.
    changed: BTreeMap<String, (String, Instant)>,
}

/// The running double. Stops its containers when dropped.
pub struct Kubelet {
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    log: PathBuf,
}

impl Kubelet {
    /// Starts watching `dir`; containers log to `log`. Argv words in `refuse` make the
    /// component exit at start.
    pub fn start(dir: &Path, log: &Path, refuse: &[&str]) -> Kubelet {
        Kubelet::start_slow(dir, log, refuse, Duration::ZERO)
    }

    /// Like [`Kubelet::start`], replacing a container only `replace_after` after its spec
    /// changed: meanwhile the old one goes on answering its probes, as a real kubelet's old
    /// pod does until it is killed (or kube-apiserver during `--shutdown-delay-duration`).
    pub fn start_slow(dir: &Path, log: &Path, refuse: &[&str], replace_after: Duration) -> Kubelet {
        Kubelet::start_with(
            dir,
            log,
            Options {
                refuse: refuse.join(","),
                replace_after,
                real: false,
            },
        )
    }

    /// Like [`Kubelet::start`], running each manifest's own command (the real executable,
    /// which must be installed here, as Debian's `etcd-server` installs `etcd`) instead of
    /// `fake-component`.
    pub fn start_real(dir: &Path, log: &Path) -> Kubelet {
        Kubelet::start_with(
            dir,
            log,
            Options {
                refuse: String::new(),
                replace_after: Duration::ZERO,
                real: true,
            },
        )
    }

    fn start_with(dir: &Path, log: &Path, opts: Options) -> Kubelet {
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel();
        let mut watcher = notify::recommended_watcher(move |e| {
            let _ = tx.send(e);
        })
        .expect("inotify");
        watcher
            .watch(dir, notify::RecursiveMode::NonRecursive)
            .expect("watch the manifests directory");
        let (d, l, s, st) = (
            dir.to_path_buf(),
            log.to_path_buf(),
            Arc::clone(&state),
            Arc::clone(&stop),
        );
        let thread = std::thread::spawn(move || {
            let _watcher = watcher;
            while !st.load(Ordering::SeqCst) {
                // An event or the re-list period, whichever first; then sync with the directory.
                let _ = rx.recv_timeout(RELIST);
                while rx.try_recv().is_ok() {}
                sync(&d, &l, &s, &opts);
            }
            let mut state = s.lock().unwrap();
            for pod in state.pods.values_mut() {
                let _ = pod.child.kill();
                let _ = pod.child.wait();
            }
        });
        Kubelet {
            state,
            stop,
            thread: Some(thread),
            log: log.to_path_buf(),
        }
    }

    /// The sha256 of the spec running for `file`, if a container for it is up.
    pub fn running(&self, file: &str) -> Option<String> {
        let s = self.state.lock().unwrap();
        s.pods
            .get(file)
            .filter(|p| p.exited_at.is_none())
            .map(|p| p.sha.clone())
    }

    /// Waits until the container for `file` runs the spec with sha256 `sha`.
    pub fn wait_running(&self, file: &str, sha: &str) {
        let deadline = Instant::now() + WAIT;
        while self.running(file).as_deref() != Some(sha) {
            assert!(
                Instant::now() < deadline,
                "{file} with {sha} not running; containers log:\n{}",
                fs::read_to_string(&self.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Every file name that was ever run as a pod.
    pub fn ran(&self) -> BTreeSet<String> {
        self.state.lock().unwrap().ran.clone()
    }

    /// How many times a container was started for `file` with spec `sha`.
    pub fn starts(&self, file: &str, sha: &str) -> usize {
        let s = self.state.lock().unwrap();
        s.starts
            .iter()
            .filter(|(f, h)| f == file && h == sha)
            .count()
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// How the double runs containers.
struct Options {
    /// Argv words that make `fake-component` exit at start (comma-separated).
    refuse: String,
    /// How long a changed spec waits before its container is replaced.
    replace_after: Duration,
    /// Run the manifest's own command instead of `fake-component`.
    real: bool,
}

fn sync(dir: &Path, log: &Path, state: &Mutex<State>, opts: &Options) {
    let replace_after = opts.replace_after;
    let mut st = state.lock().unwrap();
    let mut present = BTreeSet::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let Ok(bytes) = fs::read(e.path()) else {
            continue; // a directory, or gone
        };
        present.insert(name.clone());
        let sha = sha256_hex(&bytes);
        let current = st.pods.get(&name).map(|p| p.sha.clone());
        if current.is_some() && current.as_deref() != Some(sha.as_str()) && !replace_after.is_zero()
        {
            let since = match st.changed.get(&name) {
                Some((s, t)) if *s == sha => *t,
                _ => {
                    st.changed
                        .insert(name.clone(), (sha.clone(), Instant::now()));
                    Instant::now()
                }
            };
            if since.elapsed() < replace_after {
                continue;
            }
        }
        if current.as_deref() != Some(sha.as_str()) {
            st.changed.remove(&name);
            let Some(mut cmd) = container(&bytes, log, opts) else {
                continue; // does not parse: keep the old pod, as the kubelet's inotify path does
            };
            if let Some(mut old) = st.pods.remove(&name) {
                let _ = old.child.kill();
                let _ = old.child.wait();
            }
            let Ok(child) = cmd.spawn() else { continue };
            st.ran.insert(name.clone());
            st.starts.push((name.clone(), sha.clone()));
            st.pods.insert(
                name,
                Pod {
                    sha,
                    child,
                    exited_at: None,
                },
            );
        }
    }
    let gone: Vec<String> = st
        .pods
        .keys()
        .filter(|k| !present.contains(*k))
        .cloned()
        .collect();
    for name in gone {
        if let Some(mut p) = st.pods.remove(&name) {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }
    // Restart exited containers after a back-off.
    let names: Vec<String> = st.pods.keys().cloned().collect();
    for name in names {
        let path = dir.join(&name);
        let pod = st.pods.get_mut(&name).unwrap();
        if pod.exited_at.is_none() {
            if let Ok(Some(_)) = pod.child.try_wait() {
                pod.exited_at = Some(Instant::now());
            }
        } else if pod.exited_at.is_some_and(|t| t.elapsed() >= BACKOFF)
            && let Ok(bytes) = fs::read(&path)
            && let Some(Ok(child)) = container(&bytes, log, opts).map(|mut c| c.spawn())
        {
            pod.child = child;
            pod.exited_at = None;
            let sha = pod.sha.clone();
            st.starts.push((name, sha));
        }
    }
}

/// The container a manifest describes (`fake-component` with its flags, serving its
/// probes); `None` when it does not parse.
/// The `fake-component` container a manifest describes, as the double starts it; `None` when
/// the manifest does not parse.
pub fn fake_container(bytes: &[u8], log: &Path) -> Option<Command> {
    container(
        bytes,
        log,
        &Options {
            refuse: String::new(),
            replace_after: Duration::ZERO,
            real: false,
        },
    )
}

fn container(bytes: &[u8], log: &Path, opts: &Options) -> Option<Command> {
    let cat = Catalogue::builtin();
    let m = parse_manifest(cat, bytes).ok()?;
    let cp = m.control_plane.clone()?;
    let out = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .ok()?;
    if opts.real {
        let c = &m.pod.containers[cp.container];
        // As the kubelet: `$(VAR)` expanded from the container's env, which the process gets.
        let env = lockdown_agent::manifest::expand::Env::resolve(&c.env, c.env_from);
        let argv: Vec<String> = c
            .command
            .iter()
            .chain(&c.args)
            .map(|a| match env.expand(&a.text) {
                Expanded::Known(t) => t.into_owned(),
                Expanded::RunTime(_) => a.text.clone(),
            })
            .collect();
        let mut cmd = Command::new(argv.first()?);
        for (k, _) in &c.env {
            if let Some(Some(v)) = env.get(k) {
                cmd.env(k, v);
            }
        }
        cmd.args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(out));
        return Some(cmd);
    }
    let refuse = opts.refuse.as_str();
    let gate = health::plan(&m, &cp, None).ok();
    let serve: BTreeSet<String> = gate
        .iter()
        .flat_map(|g| [&g.up, &g.live])
        .map(|t| format!("{}:{}", t.scheme, t.port))
        .collect();
    let paths: BTreeSet<String> = gate
        .iter()
        .flat_map(|g| [&g.up, &g.live])
        .map(|t| t.path.split('?').next().unwrap_or_default().to_string())
        .collect();
    let mut cmd = Command::new(bin("fake-component"));
    cmd.args(
        cp.flags
            .args
            .iter()
            .filter(|a| a.source != ArgSource::Env)
            .map(|a| a.text.clone()),
    )
    .env("FAKE_COMPONENT", cp.component.name())
    .env(
        "FAKE_VERSION",
        cp.version.map(|v| v.to_string()).unwrap_or_default(),
    )
    .env(
        "FAKE_SERVE",
        serve.into_iter().collect::<Vec<_>>().join(","),
    )
    .env(
        "FAKE_PATHS",
        paths.into_iter().collect::<Vec<_>>().join(","),
    )
    .env("FAKE_REFUSE", refuse)
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::from(out));
    Some(cmd)
}

/// The kube-scheduler manifest in [`fix_node`].
pub const SCHED: &str = "kube-scheduler.yaml";

/// [`fix_node`]'s manifest after the scheduler-profiling fix.
pub fn hardened(original: &str) -> String {
    original.replace(
        "    - --leader-elect=true\n",
        "    - --leader-elect=true\n    - --profiling=false\n",
    )
}

/// A kubeadm manifest made runnable by the kubelet double: its probes on 127.0.0.1 and a free
/// port (kubeadm's 6443, 10257, 10259 and 2381), 1 s periods and timeouts, the given initial
/// delay and liveness failure threshold (startup: twice that).
pub fn sandbox_manifest(text: &str, initial_delay: u32, failure_threshold: u32) -> String {
    let port = crate::collector::free_addr().port();
    // The serving port is also a flag, as it is for the real components: it makes each
    // sandbox's processes tell apart in /proc, where the health gate looks for the new
    // instance (tests run side by side with the same manifests).
    let mut out = text
        .replace("host: 10.0.0.10", "host: 127.0.0.1")
        .replace("--secure-port=6443\n", &format!("--secure-port={port}\n"))
        .replace(
            "    - --leader-elect=true\n",
            &format!("    - --leader-elect=true\n    - --secure-port={port}\n"),
        );
    for kubeadm_port in [6443, 10257, 10259, 2381] {
        out = out.replace(
            &format!("port: {kubeadm_port}\n"),
            &format!("port: {port}\n"),
        );
    }
    out.replace(
        "initialDelaySeconds: 10",
        &format!("initialDelaySeconds: {initial_delay}"),
    )
    .replace("periodSeconds: 10", "periodSeconds: 1")
    .replace(
        "failureThreshold: 8",
        &format!("failureThreshold: {failure_threshold}"),
    )
    .replace(
        "failureThreshold: 24",
        &format!("failureThreshold: {}", 2 * failure_threshold),
    )
    .replace("timeoutSeconds: 15", "timeoutSeconds: 1")
}

/// The kubeadm 1.31 kube-scheduler manifest, through [`sandbox_manifest`].
pub fn scheduler_manifest(initial_delay: u32, failure_threshold: u32) -> String {
    sandbox_manifest(
        include_str!("../data/kubeadm/v1.31/kube-scheduler.yaml"),
        initial_delay,
        failure_threshold,
    )
}

/// A node whose manifests directory holds only [`scheduler_manifest`]`(1, 2)` (no --profiling,
/// so scheduler-profiling fails and its safe fix adds --profiling=false). Fixing is
/// configured by `fix` (YAML lines under `fix:`).
pub fn fix_node(fix: &str) -> Node {
    let node = Node::new(&format!("rescan_interval: 0s\nfix:\n{fix}"));
    for e in fs::read_dir(&node.manifests).unwrap() {
        fs::remove_file(e.unwrap().path()).unwrap();
    }
    write_manifest(&node, SCHED, &scheduler_manifest(1, 2));
    node
}

/// Replaces a manifest atomically (a dot temp file renamed into place), mode 0600.
pub fn write_manifest(node: &Node, name: &str, text: &str) {
    let path = node.manifest(name);
    let tmp = node.manifests.join(format!(".{name}.test"));
    fs::write(&tmp, text).unwrap();
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o600)).unwrap();
    fs::rename(&tmp, &path).unwrap();
}

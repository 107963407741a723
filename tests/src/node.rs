//! A sandbox control-plane node for daemon tests: kubeadm-style `/etc/kubernetes` in a temp
//! directory, an agent config pointing at it, and a running `lockdown-agent run` whose spool
//! the test reads.
//!
//! Tests wait for events, never for time: [`Agent::wait_for`] polls the spool (a committed,
//! fsynced event is exactly what the tests assert on) until a predicate holds, and fails
//! with everything spooled when it does not within [`WAIT`].

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use lockdown_agent::event::{Event, EventBody};
use lockdown_agent::spool::SpoolReader;
use lockdown_agent::status::{Status, query_status};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::bin;
use crate::pki::{self, Ca};

/// Writes `text` to `path` with kubeadm's mode for it: 0644 for certificates and public
/// keys, 0600 for the rest (keys, kubeconfigs).
fn write_mode(path: &Path, text: &str) {
    fs::write(path, text).unwrap();
    let name = path.to_string_lossy();
    let mode = if name.ends_with(".crt") || name.ends_with(".pub") {
        0o644
    } else {
        0o600
    };
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// Longest a test waits for something the agent should do in milliseconds. Generous, so
/// that a loaded CI machine does not fail a correct agent; a missing feature still fails.
pub const WAIT: Duration = Duration::from_secs(20);

/// The sandbox.
#[derive(Debug)]
pub struct Node {
    /// Keeps the temp directory alive.
    pub root: tempfile::TempDir,
    /// `<root>/etc/kubernetes`.
    pub kubernetes: PathBuf,
    /// `<root>/etc/kubernetes/manifests`.
    pub manifests: PathBuf,
    /// `<root>/etc/kubernetes/pki`.
    pub pki: PathBuf,
    /// The agent's state directory.
    pub state: PathBuf,
    /// The agent's config file.
    pub config: PathBuf,
    /// The cluster CA (`pki/ca.crt`), to issue more certificates.
    pub ca: Ca,
}

impl Node {
    /// A kubeadm 1.31 node (manifests 0600, kubeconfigs 0600, a CA pair) with an agent config
    /// whose extra lines are `extra` (YAML, one key per line).
    pub fn new(extra: &str) -> Node {
        Node::named("cp-1", extra)
    }

    /// Like [`Node::new`], for node `name`.
    pub fn named(name: &str, extra: &str) -> Node {
        let root = tempfile::tempdir().expect("temp dir");
        let r = root.path();
        let kubernetes = r.join("etc/kubernetes");
        let manifests = kubernetes.join("manifests");
        let pki = kubernetes.join("pki");
        fs::create_dir_all(&manifests).unwrap();
        fs::create_dir_all(&pki).unwrap();
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/kubeadm/v1.31");
        for e in fs::read_dir(&fixtures).unwrap() {
            let e = e.unwrap();
            let to = manifests.join(e.file_name());
            // etcd's data directory inside the sandbox, never the host's /var/lib/etcd (which
            // the etcd-server package creates): the tests must not depend on this machine.
            // So are the PKI and the kubeconfigs the pods mount.
            let mut text = fs::read_to_string(e.path()).unwrap().replace(
                "      path: /var/lib/etcd\n",
                &format!("      path: {}/var/lib/etcd\n", r.display()),
            );
            for mounted in [
                "pki\n",
                "pki/etcd\n",
                "scheduler.conf\n",
                "controller-manager.conf\n",
            ] {
                text = text.replace(
                    &format!("      path: /etc/kubernetes/{mounted}"),
                    &format!("      path: {}/{mounted}", kubernetes.display()),
                );
            }
            fs::write(&to, text).unwrap();
            fs::set_permissions(&to, fs::Permissions::from_mode(0o600)).unwrap();
        }
        let ca = Ca::new("kubernetes");
        let kubeconfig = |user: &str| {
            let client = ca.issue(user, &[]);
            pki::kubeconfig("https://10.0.0.10:6443", &ca, user, &client)
        };
        for (name, text) in [
            ("admin.conf", kubeconfig("kubernetes-admin")),
            ("scheduler.conf", kubeconfig("system:kube-scheduler")),
            (
                "controller-manager.conf",
                kubeconfig("system:kube-controller-manager"),
            ),
            ("pki/ca.crt", ca.pem.clone()),
            ("pki/ca.key", ca.key_pem.clone()),
        ] {
            write_mode(&kubernetes.join(name), &text);
        }
        let state = r.join("state");
        let config = r.join("agent.yaml");
        // The sandbox runs no API server: probing one is for the tests that start one.
        let live = if extra.contains("live:") {
            ""
        } else {
            "live:\n  enabled: false\n"
        };
        fs::write(
            &config,
            format!(
                "manifests_dir: {m}\nkubernetes_dir: {k}\npki_dir: {p}\netcd_data_dir: {r}/var/lib/etcd\ncni_dirs: []\nstate_dir: {s}\nnode_name: {name}\n{live}{extra}\n",
                m = manifests.display(),
                k = kubernetes.display(),
                p = pki.display(),
                r = r.display(),
                s = state.display(),
            ),
        )
        .unwrap();
        Node {
            root,
            kubernetes,
            manifests,
            pki,
            state,
            config,
            ca,
        }
    }

    /// Like [`Node::new`], with the whole file set kubeadm writes: every PKI file, all five
    /// kubeconfigs, and an etcd data directory that the etcd manifest's hostPath points at.
    pub fn kubeadm_full(extra: &str) -> Node {
        let node = Node::new(extra);
        let ca = &node.ca;
        let etcd_ca = Ca::new("etcd-ca");
        let front_proxy_ca = Ca::new("front-proxy-ca");
        let kubeconfig = |user: &str| {
            let client = ca.issue(user, &[]);
            pki::kubeconfig("https://10.0.0.10:6443", ca, user, &client)
        };
        let mut files = vec![
            (
                "super-admin.conf".to_string(),
                kubeconfig("kubernetes-super-admin"),
            ),
            ("kubelet.conf".to_string(), kubeconfig("system:node:cp-1")),
            ("pki/etcd/ca.crt".to_string(), etcd_ca.pem.clone()),
            ("pki/etcd/ca.key".to_string(), etcd_ca.key_pem.clone()),
            (
                "pki/front-proxy-ca.crt".to_string(),
                front_proxy_ca.pem.clone(),
            ),
            (
                "pki/front-proxy-ca.key".to_string(),
                front_proxy_ca.key_pem.clone(),
            ),
        ];
        let serving = [
            "cp-1",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
            "10.96.0.1",
            "10.0.0.10",
        ];
        let etcd_names = ["cp-1", "localhost", "10.0.0.10", "127.0.0.1", "::1"];
        for (name, signer, cn, names) in [
            ("apiserver", ca, "kube-apiserver", &serving[..]),
            (
                "apiserver-kubelet-client",
                ca,
                "kube-apiserver-kubelet-client",
                &[][..],
            ),
            (
                "apiserver-etcd-client",
                &etcd_ca,
                "kube-apiserver-etcd-client",
                &[][..],
            ),
            (
                "front-proxy-client",
                &front_proxy_ca,
                "front-proxy-client",
                &[][..],
            ),
            ("etcd/server", &etcd_ca, "cp-1", &etcd_names[..]),
            ("etcd/peer", &etcd_ca, "cp-1", &etcd_names[..]),
            (
                "etcd/healthcheck-client",
                &etcd_ca,
                "kube-etcd-healthcheck-client",
                &[][..],
            ),
        ] {
            let pair = signer.issue(cn, names);
            files.push((format!("pki/{name}.crt"), pair.cert));
            files.push((format!("pki/{name}.key"), pair.key));
        }
        // The service-account signing key pair.
        let sa = rcgen::KeyPair::generate().expect("key");
        files.push(("pki/sa.key".into(), sa.serialize_pem()));
        files.push(("pki/sa.pub".into(), sa.public_key_pem()));
        for (name, text) in &files {
            let p = node.kubernetes.join(name);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            write_mode(&p, text);
        }
        // Not the config's etcd_data_dir: the agent must find it through the manifest.
        let data = node.root.path().join("data/etcd");
        fs::create_dir_all(data.join("member/snap")).unwrap();
        fs::set_permissions(&data, fs::Permissions::from_mode(0o700)).unwrap();
        let etcd = node.manifest("etcd.yaml");
        let text = fs::read_to_string(&etcd).unwrap().replace(
            &format!("      path: {}/var/lib/etcd\n", node.root.path().display()),
            &format!("      path: {}\n", data.display()),
        );
        fs::write(&etcd, text).unwrap();
        node
    }

    /// A manifest's path.
    pub fn manifest(&self, name: &str) -> PathBuf {
        self.manifests.join(name)
    }

    /// Sets the scheduler's flag `name` (`--profiling`) to `value` in its manifest, in
    /// place of every value it had, or removes it (`None`): a file change, and findings
    /// raised or resolved.
    pub fn scheduler_flag(&self, name: &str, value: Option<&str>) {
        let path = self.manifest("kube-scheduler.yaml");
        let text: String = fs::read_to_string(&path)
            .unwrap()
            .lines()
            .filter(|l| {
                let arg = l.trim_start().trim_start_matches("- ");
                arg != name && !arg.starts_with(&format!("{name}="))
            })
            .map(|l| match (l, value) {
                ("    - kube-scheduler", Some(v)) => format!("{l}\n    - {name}={v}\n"),
                _ => format!("{l}\n"),
            })
            .collect();
        fs::write(&path, text).unwrap();
    }

    /// Starts `lockdown-agent run` and waits until it answers status (it answers only once
    /// the spool is open, the baseline compared and the watches armed).
    pub fn start(&self) -> Agent {
        self.start_with_env(&[])
    }

    /// [`Node::start`] with extra environment variables.
    pub fn start_with_env(&self, env: &[(&str, &str)]) -> Agent {
        let child = Command::new(bin("lockdown-agent"))
            .env_remove("JOURNAL_STREAM")
            .env_remove("NOTIFY_SOCKET")
            .envs(env.iter().copied())
            .arg("--config")
            .arg(&self.config)
            .args(["run", "--log-level", "debug"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(self.root.path().join("agent.log"))
                    .unwrap(),
            ))
            .spawn()
            .expect("start lockdown-agent");
        let mut agent = Agent {
            child,
            state: self.state.clone(),
            log: self.root.path().join("agent.log"),
        };
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(s) = query_status(&self.state)
                && s.pid == agent.child.id()
            {
                return agent;
            }
            if let Ok(Some(status)) = agent.child.try_wait() {
                panic!(
                    "agent exited {status} before it was ready:\n{}",
                    agent.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "agent not ready:\n{}",
                agent.log()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// All events in the spool (the tests never ack, so this is everything).
    pub fn events(&self) -> Vec<Event> {
        let Ok(r) = SpoolReader::open(&self.state) else {
            return Vec::new();
        };
        r.read_from(0, usize::MAX >> 1).unwrap_or_default()
    }
}

/// A running agent. Killed (SIGKILL) when dropped if still running.
#[derive(Debug)]
pub struct Agent {
    /// The process.
    pub child: Child,
    state: PathBuf,
    log: PathBuf,
}

impl Agent {
    /// The agent's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends a signal.
    pub fn signal(&self, sig: Signal) {
        kill(Pid::from_raw(self.child.id() as i32), sig).expect("signal the agent");
    }

    /// Sends SIGTERM and waits for the exit.
    pub fn stop(mut self) -> ExitStatus {
        self.signal(Signal::SIGTERM);
        self.wait_exit()
    }

    /// kill -9 and reap.
    pub fn kill9(mut self) {
        self.child.kill().expect("kill -9");
        self.child.wait().expect("reap");
    }

    /// Waits for the process to exit.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "agent did not exit:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// The agent's status.
    pub fn status(&self) -> Status {
        query_status(&self.state).expect("status")
    }

    /// Waits until the events after `after` satisfy `done`; returns those events.
    pub fn wait_for(&self, after: u64, done: impl Fn(&[Event]) -> bool) -> Vec<Event> {
        self.wait_for_within(WAIT, after, done)
    }

    /// [`Agent::wait_for`] with a longer limit, for waits that include health gates.
    pub fn wait_for_within(
        &self,
        limit: Duration,
        after: u64,
        done: impl Fn(&[Event]) -> bool,
    ) -> Vec<Event> {
        let deadline = Instant::now() + limit;
        loop {
            let events: Vec<Event> = SpoolReader::open(&self.state)
                .and_then(|r| r.read_from(after + 1, usize::MAX >> 1))
                .unwrap_or_default();
            if done(&events) {
                return events;
            }
            if Instant::now() >= deadline {
                panic!(
                    "timed out; events after {after}:\n{}\nlog:\n{}",
                    events
                        .iter()
                        .map(|e| serde_json::to_string(e).expect("events serialise"))
                        .collect::<Vec<_>>()
                        .join("\n"),
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// The highest sequence number spooled so far.
    pub fn last_seq(&self) -> u64 {
        SpoolReader::open(&self.state)
            .and_then(|r| r.last_seq())
            .unwrap_or(0)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Events about `path` of kind `kind`.
pub fn about<'a>(events: &'a [Event], kind: &str, path: &Path) -> Vec<&'a Event> {
    let p = path.display().to_string();
    events
        .iter()
        .filter(|e| e.body.kind() == kind && e.body.path() == Some(p.as_str()))
        .collect()
}

/// Whether some event is `kind` about `path`.
pub fn has(events: &[Event], kind: &str, path: &Path) -> bool {
    !about(events, kind, path).is_empty()
}

/// The rule id of a finding event.
pub fn rule_id(e: &Event) -> Option<&str> {
    match &e.body {
        EventBody::FindingRaised { finding, .. } | EventBody::FindingResolved { finding, .. } => {
            Some(&finding.rule_id)
        }
        _ => None,
    }
}

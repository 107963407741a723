//! The packages under a systemd that is PID 1: a Debian 12 root (made once with debootstrap
//! and cached under `~/.cache/kube-lockdown`), booted with `systemd-nspawn` on a clean
//! overlay and a private network, the two `.deb` packages installed as a user installs them,
//! and the units checked through `systemctl`, `journalctl` and the collector's own CLI.
//! See `../shared/reference/booted-systemd.md`. Needs root, `systemd-nspawn`
//! (systemd-container) and `debootstrap`; `.ci/run` installs them. Each assertion names the
//! issue-15 defect it guards; with the units of the commit before those fixes this test
//! fails at the collector being enabled on first install.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use lockdown_e2e::bin;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Whether this machine can boot a container here; says why not otherwise.
fn can_boot() -> bool {
    if !lockdown_e2e::needs_root("systemd-nspawn boots a container") {
        return false;
    }
    for tool in ["systemd-nspawn", "debootstrap", "nsenter", "dpkg-deb"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            assert!(
                std::env::var_os("CI").is_none(),
                "{tool} is missing; .ci/run installs it"
            );
            eprintln!(
                "skipped: {tool} is not installed (apt-get install systemd-container debootstrap)"
            );
            return false;
        }
    }
    true
}

/// The Debian mirror the host's apt already uses.
fn mirror() -> String {
    let mut texts = Vec::new();
    if let Ok(dir) = fs::read_dir("/etc/apt/sources.list.d") {
        for e in dir.flatten() {
            texts.push(fs::read_to_string(e.path()).unwrap_or_default());
        }
    }
    texts.push(fs::read_to_string("/etc/apt/sources.list").unwrap_or_default());
    for text in texts {
        for line in text.lines() {
            let url = line.strip_prefix("URIs:").map(str::trim).or_else(|| {
                line.strip_prefix("deb ")
                    .and_then(|r| r.split_whitespace().next())
            });
            if let Some(url) = url
                && url.ends_with("/debian")
            {
                return url.to_string();
            }
        }
    }
    "http://deb.debian.org/debian".into()
}

/// The cached bookworm root, made if missing.
fn root() -> PathBuf {
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
    let cache = home.join(".cache/kube-lockdown");
    let root = cache.join("bookworm-root");
    if root.join("usr/lib/systemd/systemd").exists() {
        return root;
    }
    fs::create_dir_all(&cache).unwrap();
    let tmp = cache.join(format!("bookworm-root.{}", std::process::id()));
    let out = Command::new("debootstrap")
        .args([
            "--variant=minbase",
            "--include=systemd,systemd-sysv,dbus,procps",
            "bookworm",
        ])
        .arg(&tmp)
        .arg(mirror())
        .output()
        .unwrap();
    assert!(out.status.success(), "debootstrap: {out:?}");
    // debootstrap writes no /etc/hosts: without one, localhost does not resolve inside.
    fs::write(
        tmp.join("etc/hosts"),
        "127.0.0.1 localhost\n::1 localhost ip6-localhost\n",
    )
    .unwrap();
    fs::rename(&tmp, &root).unwrap();
    root
}

/// The two packages, built from this build's binaries, as `version`.
fn debs(dir: &Path, version: &str) {
    let bins = bin("lockdown-agent").parent().unwrap().to_path_buf();
    bin("lockdown-collector");
    let out = Command::new(workspace().join("systemd/package-deb"))
        .env("DEB_COMPRESSION", "none")
        .env("DEB_VERSION", version)
        .arg(&bins)
        .arg(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "package-deb: {out:?}");
}

/// A booted container; powered off (and killed if need be) when dropped.
struct Booted {
    nspawn: Child,
    leader: u32,
}

impl Booted {
    fn boot(root: &Path, debs: &Path, fixtures: &Path) -> Booted {
        let mut nspawn = Command::new("systemd-nspawn")
            .args(["--register=no", "--keep-unit", "--volatile=overlay"])
            .args(["--private-network", "--quiet", "-D"])
            .arg(root)
            .arg(format!("--bind-ro={}:/debs", debs.display()))
            .arg(format!("--bind-ro={}:/fixtures", fixtures.display()))
            .arg("-b")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("systemd-nspawn");
        let deadline = Instant::now() + Duration::from_secs(60);
        let leader = loop {
            let children = fs::read_to_string(format!("/proc/{0}/task/{0}/children", nspawn.id()))
                .unwrap_or_default();
            if let Some(pid) = children.split_whitespace().next() {
                break pid.parse().unwrap();
            }
            if let Ok(Some(status)) = nspawn.try_wait() {
                panic!("systemd-nspawn exited {status}");
            }
            assert!(Instant::now() < deadline, "no container init");
            std::thread::sleep(Duration::from_millis(50));
        };
        let b = Booted { nspawn, leader };
        b.wait_for("the system to boot", || {
            let s = b.sh("systemctl is-system-running").stdout;
            let s = String::from_utf8_lossy(&s);
            s.starts_with("running") || s.starts_with("degraded")
        });
        b
    }

    /// Runs `script` with sh inside the container (all its namespaces).
    fn sh(&self, script: &str) -> Output {
        Command::new("nsenter")
            .args(["-t", &self.leader.to_string(), "-a", "sh", "-c", script])
            .output()
            .unwrap()
    }

    /// Runs `script` and returns its stdout; it must succeed.
    fn ok(&self, script: &str) -> String {
        let out = self.sh(script);
        assert!(
            out.status.success(),
            "{script}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn wait_for(&self, what: &str, done: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !done() {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; journal:\n{}",
                String::from_utf8_lossy(&self.sh("journalctl -n 60 --no-pager").stdout)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn prop(&self, unit: &str, prop: &str) -> String {
        self.ok(&format!("systemctl show -P {prop} {unit}"))
            .trim()
            .to_string()
    }
}

impl Drop for Booted {
    fn drop(&mut self) {
        let _ = self.sh("systemctl poweroff");
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.nspawn.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.nspawn.kill();
        let _ = self.nspawn.wait();
    }
}

const READER: &str = "lockdown-collector events --format json --addr https://localhost:7443 \
    --ca /etc/kube-lockdown/pki/ca.crt --cert /root/pki/reader.crt --key /root/pki/reader.key";

#[test]
fn the_packages_install_and_run_under_a_booted_systemd() {
    if !can_boot() {
        return;
    }
    let root = root();
    let debs_dir = tempfile::tempdir().unwrap();
    let version = env!("CARGO_PKG_VERSION");
    debs(debs_dir.path(), version);
    // The same build as a later version, to upgrade to.
    debs(&debs_dir.path().join("next"), &format!("{version}+next1"));
    let fixtures = workspace().join("tests/data/kubeadm/v1.31");
    let c = Booted::boot(&root, debs_dir.path(), &fixtures);

    // Before the packages: a control plane's manifests, as kubeadm writes them.
    c.ok(
        "mkdir -p /etc/kubernetes/manifests && cp /fixtures/*.yaml /etc/kubernetes/manifests/ \
          && chmod 600 /etc/kubernetes/manifests/*",
    );
    // As a user installs them (everything they depend on is in the root already).
    c.ok(&format!(
        "apt-get install -y -q /debs/lockdown-agent_{version}_*.deb \
         /debs/lockdown-collector_{version}_*.deb"
    ));

    // The agent is up once ready, and says what it watches.
    c.wait_for("the agent to be active", || {
        c.prop("lockdown-agent", "ActiveState") == "active"
    });
    let status = c.prop("lockdown-agent", "StatusText");
    assert!(status.contains("watching"), "{status}");

    // Issue 15 (2): not enabled on first install; a start without certificates is skipped by
    // its conditions, not a restart loop.
    assert_eq!(
        String::from_utf8_lossy(&c.sh("systemctl is-enabled lockdown-collector").stdout).trim(),
        "disabled"
    );
    c.ok("systemctl start lockdown-collector");
    assert_eq!(c.prop("lockdown-collector", "ConditionResult"), "no");
    assert_eq!(c.prop("lockdown-collector", "NRestarts"), "0");

    // Certificates (a development CA made by the installed binary), then the collector.
    let node = c.ok("hostname").trim().to_lowercase();
    c.ok(&format!(
        "lockdown-collector dev-ca --out /root/pki --node {node} --reader reader --collector-name localhost \
         && mkdir -p /etc/kube-lockdown/pki && cd /root/pki \
         && install -m 0644 ca.crt collector.crt /etc/kube-lockdown/pki/ \
         && install -m 0600 collector.key /etc/kube-lockdown/pki/ \
         && install -m 0600 {node}.crt /etc/kube-lockdown/pki/node.crt \
         && install -m 0600 {node}.key /etc/kube-lockdown/pki/node.key"
    ));
    // The packaged collector config reads them from its credentials directory.
    // Issue 15 (1): the packaged unit's command line starts the collector.
    c.ok("systemctl enable --now lockdown-collector");
    c.wait_for("the collector to listen", || {
        c.sh(&format!("{READER} --since 1m")).status.success()
    });

    // Issue 15 (5): reload through the unit; the agent now ships to the collector.
    c.ok(
        "printf '%s\\n' 'collector:' '  address: https://localhost:7443' \
          '  ca: /etc/kube-lockdown/pki/ca.crt' '  cert: /etc/kube-lockdown/pki/node.crt' \
          '  key: /etc/kube-lockdown/pki/node.key' >>/etc/kube-lockdown/agent.yaml",
    );
    c.ok("systemctl reload lockdown-agent");
    c.wait_for("config_reloaded at the collector", || {
        String::from_utf8_lossy(&c.sh(READER).stdout).contains("\"kind\":\"config_reloaded\"")
    });

    // A bad config on reload is refused, reported, and the old one stays in force.
    c.ok("cp /etc/kube-lockdown/agent.yaml /root/agent.yaml.good \
          && echo 'manifest_dir: /typo' >>/etc/kube-lockdown/agent.yaml \
          && systemctl reload lockdown-agent");
    c.wait_for("config_rejected at the collector", || {
        String::from_utf8_lossy(&c.sh(READER).stdout).contains("\"kind\":\"config_rejected\"")
    });
    assert_eq!(c.prop("lockdown-agent", "ActiveState"), "active");
    c.ok(
        "cp /root/agent.yaml.good /etc/kube-lockdown/agent.yaml && systemctl reload lockdown-agent",
    );

    // Drift is detected, stored at the collector with its diff.
    c.ok(
        "sed -i 's/--bind-address=127.0.0.1/--bind-address=0.0.0.0/' \
          /etc/kubernetes/manifests/kube-scheduler.yaml",
    );
    c.wait_for("the drift at the collector", || {
        let events = String::from_utf8_lossy(&c.sh(READER).stdout).into_owned();
        events.lines().any(|l| {
            l.contains("\"kind\":\"file_modified\"")
                && l.contains("kube-scheduler.yaml")
                && l.contains("+    - --bind-address=0.0.0.0")
        })
    });

    // An upgrade restarts the agent and keeps its state: the same spool goes on numbering,
    // the edited config stays.
    let status = |c: &Booted| -> serde_json::Value {
        serde_json::from_str(&c.ok("lockdown-agent status --format json")).unwrap()
    };
    let before = status(&c)["spool"]["last_seq"].as_u64().unwrap();
    let pid_before = c.prop("lockdown-agent", "MainPID");
    c.ok("apt-get install -y -q /debs/next/lockdown-agent_*+next1_*.deb");
    c.wait_for("the upgraded agent", || {
        c.prop("lockdown-agent", "ActiveState") == "active"
            && c.prop("lockdown-agent", "MainPID") != pid_before
    });
    assert!(c.ok("dpkg-query -W lockdown-agent").contains("+next1"));
    assert!(
        c.ok("cat /etc/kube-lockdown/agent.yaml")
            .contains("localhost:7443")
    );
    c.wait_for("the spool to go on numbering", || {
        status(&c)["spool"]["last_seq"].as_u64().unwrap() > before
    });

    // The watchdog: an agent whose loop hangs (stopped with SIGSTOP) is restarted.
    let restarts = c.prop("lockdown-agent", "NRestarts");
    let pid = c.prop("lockdown-agent", "MainPID");
    c.ok(&format!("kill -STOP {pid}"));
    c.wait_for("the watchdog to restart the agent", || {
        c.prop("lockdown-agent", "NRestarts") != restarts
            && c.prop("lockdown-agent", "ActiveState") == "active"
    });

    // Issue 15 (4): the agent cannot write its configuration directory (nor anything but its
    // state directory), even as root inside its mount namespace.
    let pid = c.prop("lockdown-agent", "MainPID");
    for (path, writable) in [
        ("/etc/kube-lockdown/x", false),
        ("/etc/kubernetes/manifests/x", false),
        ("/var/lib/kube-lockdown/x", true),
    ] {
        let out = c.sh(&format!("nsenter -t {pid} -m touch {path} && rm -f {path}"));
        assert_eq!(out.status.success(), writable, "{path}: {out:?}");
    }
    // Its sandbox as the unit says: one capability, a seccomp filter.
    let caps = c.ok(&format!("grep -E '^(CapEff|Seccomp):' /proc/{pid}/status"));
    assert!(caps.contains("CapEff:\t0000000000000004"), "{caps}");
    assert!(caps.contains("Seccomp:\t2"), "{caps}");

    // Issue 15 (3): the collector's journal entries are plain text, not colour codes
    // (journald stores a message with control characters as a byte array).
    let journal = c.ok("journalctl -u lockdown-collector -o json --no-pager");
    let messages: Vec<serde_json::Value> = journal
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v.get("MESSAGE").cloned())
        .collect();
    assert!(!messages.is_empty());
    assert!(
        messages.iter().all(serde_json::Value::is_string),
        "{messages:?}"
    );
    // The agent logs to the journal with fields: each spooled event's kind and number
    // (tracing-journald prefixes event fields with F_).
    let journal = c.ok("journalctl -u lockdown-agent -o json --no-pager");
    assert!(
        journal.lines().any(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .is_ok_and(|v| v.get("F_KIND").is_some() && v.get("F_SEQ").is_some())
        }),
        "no F_KIND and F_SEQ fields (tracing-journald's prefix) in the agent's journal entries"
    );

    // Enforce without the drop-in: the agent says it cannot write the manifests.
    c.ok("sed -i 's/^  mode: off$/  mode: enforce\\n  health_timeout: 3s/' /etc/kube-lockdown/agent.yaml \
          && grep -q 'mode: enforce' /etc/kube-lockdown/agent.yaml \
          && systemctl restart lockdown-agent");
    c.wait_for("fix_skipped: not writable", || {
        String::from_utf8_lossy(&c.sh(READER).stdout)
            .lines()
            .any(|l| l.contains("\"kind\":\"fix_skipped\"") && l.contains("not writable"))
    });

    // Issue 15 (6): the enforce drop-in with no manifests directory yet (before kubeadm
    // init): the unit still starts.
    c.ok("mkdir -p /etc/systemd/system/lockdown-agent.service.d \
          && cp /usr/share/doc/lockdown-agent/enforce.conf.example \
                /etc/systemd/system/lockdown-agent.service.d/enforce.conf \
          && mv /etc/kubernetes/manifests /etc/kubernetes/manifests.away \
          && systemctl daemon-reload && systemctl restart lockdown-agent");
    c.wait_for("the agent to be active with the drop-in", || {
        c.prop("lockdown-agent", "ActiveState") == "active"
    });
    assert_eq!(c.prop("lockdown-agent", "Result"), "success");

    // With the drop-in the agent can write: the scheduler's safe fix is applied through the
    // sandbox (owner and mode kept), and with no kubelet here to run the component, its
    // health gate fails and the original bytes come back.
    // (ReadWritePaths= binds what exists at start: the directory is back before the restart,
    // as after kubeadm init; the README says to restart the agent then.)
    // (Its probes' 10 s initial delays shortened, so the gate fails sooner.)
    c.ok(
        "sed -i 's/initialDelaySeconds: 10/initialDelaySeconds: 1/' \
          /etc/kubernetes/manifests.away/kube-scheduler.yaml",
    );
    let before = c.ok("sha256sum /etc/kubernetes/manifests.away/kube-scheduler.yaml");
    let before = before.split_whitespace().next().unwrap().to_string();
    c.ok("mv /etc/kubernetes/manifests.away /etc/kubernetes/manifests && systemctl restart lockdown-agent");
    let fix_events = |kind: &str| {
        String::from_utf8_lossy(&c.sh(READER).stdout)
            .lines()
            .filter(|l| {
                l.contains(&format!("\"kind\":\"{kind}\"")) && l.contains("kube-scheduler.yaml")
            })
            .count()
    };
    let fixes = || {
        String::from_utf8_lossy(&c.sh(READER).stdout)
            .lines()
            .filter(|l| l.contains("\"kind\":\"fix_"))
            .map(|l| l.chars().take(400).collect::<String>())
            .collect::<Vec<_>>()
            .join("\n")
    };
    let deadline = Instant::now() + Duration::from_secs(90);
    while !(fix_events("fix_applied") > 0 && fix_events("fix_rolled_back") > 0) {
        assert!(
            Instant::now() < deadline,
            "no fix applied and rolled back; fix events:\n{}",
            fixes()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let after = c.ok("sha256sum /etc/kubernetes/manifests/kube-scheduler.yaml");
    assert_eq!(
        after.split_whitespace().next().unwrap(),
        before,
        "identical bytes"
    );
    assert_eq!(
        c.ok("stat -c '%U:%G %a' /etc/kubernetes/manifests/kube-scheduler.yaml")
            .trim(),
        "root:root 600"
    );

    // Purge removes the state.
    c.ok("apt-get purge -y -q lockdown-agent");
    assert!(!c.sh("test -e /var/lib/kube-lockdown").status.success());
}

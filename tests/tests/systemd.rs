//! How the agent runs under systemd: readiness, watchdog and status over the notify socket,
//! journal logging, and the capabilities its units grant (exercised with setpriv, as the
//! unit's User= and AmbientCapabilities= would).

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::Instant;

use lockdown_agent::integrity::sha256_hex;
use lockdown_agent::status::query_status;
use lockdown_e2e::bin;
use lockdown_e2e::kubelet::{Kubelet, SCHED, fix_node, hardened};
use lockdown_e2e::node::{Node, WAIT};

/// Datagrams from the agent until `done` holds for the latest one.
fn receive_until(sock: &UnixDatagram, mut done: impl FnMut(&str) -> bool) -> Vec<String> {
    let deadline = Instant::now() + WAIT;
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "timed out; received {all:?}");
        sock.set_read_timeout(Some(left)).unwrap();
        let n = sock.recv(&mut buf).expect("a notification");
        let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
        all.push(msg.clone());
        if done(&msg) {
            return all;
        }
    }
}

#[test]
fn ready_only_when_watching_then_watchdog_and_status_then_stopping() {
    let node = Node::new("");
    let path = node.root.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    let agent = node.start_with_env(&[
        ("NOTIFY_SOCKET", path.to_str().unwrap()),
        ("WATCHDOG_USEC", "200000"),
    ]);
    let got = receive_until(&sock, |m| m.contains("READY=1"));
    let ready = got.last().unwrap();
    // Nothing before READY=1, and by then the agent is doing its job: it answers status,
    // its baseline is in the spool and its watches are armed.
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(ready.contains("STATUS=watching "), "{ready}");
    assert!(ready.contains("open findings"), "{ready}");
    let status = query_status(&node.state).unwrap();
    assert!(!status.watched_dirs.is_empty());
    assert!(
        node.events()
            .iter()
            .any(|e| e.body.kind() == "agent_started")
    );
    // Watchdog pings every WATCHDOG_USEC / 2, from the main loop, with a fresh STATUS=.
    let mut pings = 0;
    receive_until(&sock, |m| {
        if m.contains("WATCHDOG=1") {
            assert!(m.contains("STATUS=watching "), "{m}");
            pings += 1;
        }
        pings == 3
    });
    agent.signal(nix::sys::signal::Signal::SIGTERM);
    receive_until(&sock, |m| m.contains("STOPPING=1"));
    let mut agent = agent;
    assert!(agent.wait_exit().success());
}

#[test]
fn the_journal_format_uses_the_journal_or_says_there_is_none() {
    let node = Node::new("");
    let agent = node.start_with_env(&[("LOCKDOWN_LOG_FORMAT", "journal")]);
    let log = agent.log();
    if std::path::Path::new("/run/systemd/journal/socket").exists() {
        assert!(!log.contains("agent started"), "logged to stderr: {log}");
    } else {
        assert!(log.contains("no journal"), "{log}");
        assert!(log.contains("agent started"), "{log}");
    }
}

/// `lockdown-agent <args>` as user nobody with exactly `caps` (ambient, as the unit's
/// AmbientCapabilities= gives them).
fn as_nobody(caps: &[&str], config: &std::path::Path, args: &[&str]) -> std::process::Output {
    nobody(caps, config, args)
        .output()
        .expect("setpriv (util-linux)")
}

fn nobody(caps: &[&str], config: &std::path::Path, args: &[&str]) -> Command {
    let list: String = caps.iter().map(|c| format!(",+{c}")).collect();
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(format!("--inh-caps=-all{list}"))
        .arg(format!("--ambient-caps=-all{list}"))
        .arg(format!("--bounding-set=-all{list}"))
        .arg("--")
        .arg(bin("lockdown-agent"))
        .arg("--config")
        .arg(config)
        .args(args);
    cmd
}

#[test]
fn detection_needs_only_cap_dac_read_search() {
    if !lockdown_e2e::needs_root("setpriv switches to nobody with chosen capabilities") {
        return;
    }
    let node = Node::new("");
    // The sandbox is root-owned: manifests 0600 in a 0700 directory, as kubeadm writes them.
    fs::set_permissions(&node.manifests, fs::Permissions::from_mode(0o700)).unwrap();
    let manifest = node.manifest("kube-apiserver.yaml");
    let path = manifest.to_str().unwrap();
    let denied = as_nobody(&[], &node.config, &["check", path, "--format", "json"]);
    assert!(
        String::from_utf8_lossy(&denied.stdout).contains("permission denied"),
        "{denied:?}"
    );
    let read = as_nobody(
        &["dac_read_search"],
        &node.config,
        &["check", path, "--format", "json"],
    );
    let out = String::from_utf8_lossy(&read.stdout);
    let report: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(
        report["files"][0]["component"], "kube-apiserver",
        "{read:?}"
    );
    assert!(!out.contains("permission denied"), "{out}");
}

#[test]
fn enforce_needs_exactly_the_capabilities_of_the_drop_in() {
    if !lockdown_e2e::needs_root("setpriv switches to nobody with chosen capabilities") {
        return;
    }
    let node = fix_node("  health_timeout: 10s");
    fs::set_permissions(&node.manifests, fs::Permissions::from_mode(0o700)).unwrap();
    // The agent's state directory belongs to its user, as StateDirectory= makes it.
    fs::create_dir_all(&node.state).unwrap();
    nix::unistd::chown(&node.state, Some(65534.into()), Some(65534.into())).unwrap();
    let path = node.manifest(SCHED);
    let original = fs::read_to_string(&path).unwrap();
    let _k = Kubelet::start(
        &node.manifests,
        &node.root.path().join("containers.log"),
        &[],
    );
    let full = ["dac_read_search", "dac_override", "chown", "fowner"];
    // Without any one of them, nothing is written and the manifest stays as it was.
    for missing in &full[1..] {
        let caps: Vec<&str> = full.iter().copied().filter(|c| c != missing).collect();
        let out = as_nobody(&caps, &node.config, &["fix", "--apply"]);
        assert_eq!(out.status.code(), Some(1), "without {missing}: {out:?}");
        let why = String::from_utf8_lossy(&out.stderr);
        let expected = match *missing {
            "dac_override" => "cannot create temp file",
            "chown" => "cannot chown",
            _ => "cannot chmod",
        };
        assert!(why.contains(expected), "without {missing}: {why}");
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            original,
            "without {missing}"
        );
        let names: Vec<String> = fs::read_dir(&node.manifests)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, [SCHED], "without {missing}");
    }
    // With all four: applied, healthy, owner root:root and mode 0600 kept.
    let out = as_nobody(&full, &node.config, &["fix", "--apply"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(fs::read_to_string(&path).unwrap(), hardened(&original));
    let meta = fs::metadata(&path).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid(), meta.mode() & 0o7777),
        (0, 0, 0o600)
    );
    _k.wait_running(SCHED, &sha256_hex(hardened(&original).as_bytes()));
}

#[test]
fn enforce_without_the_drop_in_says_so_at_start() {
    if !lockdown_e2e::needs_root("setpriv switches to nobody with chosen capabilities") {
        return;
    }
    let node = fix_node("  mode: enforce");
    fs::set_permissions(&node.manifests, fs::Permissions::from_mode(0o700)).unwrap();
    fs::create_dir_all(&node.state).unwrap();
    nix::unistd::chown(&node.state, Some(65534.into()), Some(65534.into())).unwrap();
    // The detection-only unit: CAP_DAC_READ_SEARCH, no write access to the manifests.
    let log = node.root.path().join("nobody.log");
    let mut agent = nobody(&["dac_read_search"], &node.config, &["run"])
        .stdout(std::process::Stdio::null())
        .stderr(fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + WAIT;
    // Read the spool only once the agent has it open: a reader running as root that got
    // there first would create SQLite's shared-memory file as root, which the agent (nobody)
    // then could not write.
    while query_status(&node.state).is_err() {
        assert!(
            Instant::now() < deadline,
            "agent not ready:\n{}",
            fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let dir = node.manifests.display().to_string();
    loop {
        let said = node.events().iter().any(|e| {
            matches!(&e.body, lockdown_agent::event::EventBody::FixSkipped { path, reason, .. }
                if *path == dir && reason.contains("not writable") && reason.contains("enforce.conf"))
        });
        if said {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no warning; events: {:?}\nlog:\n{}",
            node.events(),
            fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let _ = agent.kill();
    let _ = agent.wait();
}

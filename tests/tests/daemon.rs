//! The agent daemon end to end: the real `lockdown-agent run` on a sandbox node, real
//! inotify, real files, real signals; assertions on the events it spooled.

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;

use lockdown_agent::event::{Event, EventBody};
use lockdown_agent::integrity::sha256_hex;
use lockdown_e2e::node::{Node, about, has, rule_id};
use nix::sys::signal::Signal;

/// Settle long enough that an editor's multi-step save is one change even on a loaded
/// machine (the default is 2ms).
const SLOW_SETTLE: &str = "settle: 50ms\nsettle_max: 500ms";

const BIND_LOOPBACK: &str = "--bind-address=127.0.0.1";
const BIND_ANY: &str = "--bind-address=0.0.0.0";

fn insecure_scheduler(node: &Node) -> String {
    fs::read_to_string(node.manifest("kube-scheduler.yaml"))
        .unwrap()
        .replace(BIND_LOOPBACK, BIND_ANY)
}

fn raised(events: &[Event], rule: &str) -> bool {
    events
        .iter()
        .any(|e| e.body.kind() == "finding_raised" && rule_id(e) == Some(rule))
}

fn resolved(events: &[Event], rule: &str) -> bool {
    events
        .iter()
        .any(|e| e.body.kind() == "finding_resolved" && rule_id(e) == Some(rule))
}

fn after_sha(e: &Event) -> Option<&str> {
    match &e.body {
        EventBody::FileCreated { after, .. }
        | EventBody::FileModified { after, .. }
        | EventBody::PermissionDrift { after, .. } => after.sha256.as_deref(),
        _ => None,
    }
}

#[test]
fn write_in_place_is_reported_with_a_diff_and_secrets_redacted() {
    let node = Node::new("");
    let agent = node.start();
    let seq = agent.last_seq();
    let etcd = node.manifest("etcd.yaml");
    let text = fs::read_to_string(&etcd).unwrap().replace(
        "    - etcd\n",
        "    - etcd\n    - --initial-cluster-token=hunter2\n",
    );
    let mut f = fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&etcd)
        .unwrap();
    f.write_all(text.as_bytes()).unwrap();
    drop(f);
    let events = agent.wait_for(seq, |ev| has(ev, "file_modified", &etcd));
    let EventBody::FileModified {
        diff: Some(diff), ..
    } = &about(&events, "file_modified", &etcd)[0].body
    else {
        panic!("no diff: {events:?}")
    };
    assert!(
        diff.contains("+    - --initial-cluster-token=<redacted>"),
        "{diff}"
    );
    let everything = format!("{:?}", node.events());
    assert!(!everything.contains("hunter2"), "a secret left the node");
}

#[test]
fn rename_over_like_kubeadm_is_one_modification_with_its_finding() {
    let node = Node::new(SLOW_SETTLE);
    let agent = node.start();
    let seq = agent.last_seq();
    let target = node.manifest("kube-scheduler.yaml");
    let tmp = node.manifests.join(".kube-scheduler.yaml.tmp");
    fs::write(&tmp, insecure_scheduler(&node)).unwrap();
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o600)).unwrap();
    fs::rename(&tmp, &target).unwrap();
    let events = agent.wait_for(seq, |ev| raised(ev, "scheduler-bind-address"));
    assert_eq!(
        about(&events, "file_modified", &target).len(),
        1,
        "{events:?}"
    );
    assert!(
        events
            .iter()
            .all(|e| e.body.path() != Some(tmp.to_str().unwrap())),
        "dot files are not manifests: {events:?}"
    );
}

#[test]
fn vim_save_with_backup_file_is_one_modification_and_no_backup_event() {
    // vim with backupcopy=no: rename the file to file~, write a new file, remove file~.
    let node = Node::new(SLOW_SETTLE);
    let agent = node.start();
    let seq = agent.last_seq();
    let target = node.manifest("kube-scheduler.yaml");
    let backup = node.manifests.join("kube-scheduler.yaml~");
    let new = insecure_scheduler(&node);
    fs::rename(&target, &backup).unwrap();
    let mut f = fs::File::create(&target).unwrap();
    f.write_all(new.as_bytes()).unwrap();
    f.sync_all().unwrap();
    drop(f);
    fs::set_permissions(&target, fs::Permissions::from_mode(0o600)).unwrap();
    fs::remove_file(&backup).unwrap();
    let events = agent.wait_for(seq, |ev| raised(ev, "scheduler-bind-address"));
    let modified = about(&events, "file_modified", &target);
    assert_eq!(modified.len(), 1, "{events:?}");
    assert_eq!(
        after_sha(modified[0]),
        Some(sha256_hex(new.as_bytes()).as_str())
    );
    assert!(
        events
            .iter()
            .all(|e| e.body.path() != Some(backup.to_str().unwrap())),
        "{events:?}"
    );
}

#[test]
fn delete_then_recreate_is_seen_as_deleted_then_created() {
    let node = Node::new("");
    let agent = node.start();
    let target = node.manifest("kube-scheduler.yaml");
    let original = fs::read(&target).unwrap();
    let seq = agent.last_seq();
    fs::remove_file(&target).unwrap();
    let events = agent.wait_for(seq, |ev| has(ev, "file_deleted", &target));
    assert!(
        events.iter().any(|e| e.body.kind() == "finding_resolved"),
        "a deleted manifest's findings are resolved: {events:?}"
    );
    let seq = agent.last_seq();
    // Created whole (written aside, renamed in), so that the agent cannot catch it empty.
    let tmp = node.manifests.join(".kube-scheduler.yaml.new");
    fs::write(&tmp, &original).unwrap();
    fs::rename(&tmp, &target).unwrap();
    let events = agent.wait_for(seq, |ev| has(ev, "file_created", &target));
    let EventBody::FileCreated { diff: Some(d), .. } =
        &about(&events, "file_created", &target)[0].body
    else {
        panic!("{events:?}")
    };
    assert!(d.contains("+    - kube-scheduler"), "{d}");
}

#[test]
fn delete_and_recreate_within_the_settle_time_is_one_modification() {
    let node = Node::new(SLOW_SETTLE);
    let agent = node.start();
    let target = node.manifest("kube-scheduler.yaml");
    let seq = agent.last_seq();
    let new = insecure_scheduler(&node);
    fs::remove_file(&target).unwrap();
    fs::write(&target, &new).unwrap();
    fs::set_permissions(&target, fs::Permissions::from_mode(0o600)).unwrap();
    let events = agent.wait_for(seq, |ev| has(ev, "file_modified", &target));
    assert!(!has(&events, "file_deleted", &target), "{events:?}");
}

#[test]
fn chmod_and_chown_only_are_permission_drift_with_findings() {
    if !lockdown_e2e::needs_root("chown to another user") {
        return;
    }
    let node = Node::new(SLOW_SETTLE);
    let agent = node.start();
    let key = node.pki.join("ca.key");
    let seq = agent.last_seq();
    fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
    let events = agent.wait_for(seq, |ev| raised(ev, "file-pki-key-mode"));
    let drift = about(&events, "permission_drift", &key);
    assert_eq!(drift.len(), 1, "{events:?}");
    let EventBody::PermissionDrift { before, after, .. } = &drift[0].body else {
        unreachable!()
    };
    assert_eq!(
        (before.mode.as_str(), after.mode.as_str()),
        ("0600", "0644")
    );
    assert_eq!(before.sha256, after.sha256);

    let seq = agent.last_seq();
    std::os::unix::fs::chown(&key, Some(65534), Some(65534)).unwrap();
    let events = agent.wait_for(seq, |ev| raised(ev, "file-pki-owner"));
    let EventBody::PermissionDrift { after, .. } =
        &about(&events, "permission_drift", &key)[0].body
    else {
        panic!("{events:?}")
    };
    assert_eq!((after.uid, after.gid), (65534, 65534));

    let seq = agent.last_seq();
    std::os::unix::fs::chown(&key, Some(0), Some(0)).unwrap();
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
    agent.wait_for(seq, |ev| {
        resolved(ev, "file-pki-owner") && resolved(ev, "file-pki-key-mode")
    });
}

#[test]
fn manifests_directory_removed_and_recreated_is_watched_again() {
    let node = Node::new(SLOW_SETTLE);
    let agent = node.start();
    let saved = tempfile::tempdir().unwrap();
    for e in fs::read_dir(&node.manifests).unwrap() {
        let e = e.unwrap();
        fs::copy(e.path(), saved.path().join(e.file_name())).unwrap();
    }
    let apiserver = node.manifest("kube-apiserver.yaml");
    let seq = agent.last_seq();
    fs::remove_dir_all(&node.manifests).unwrap();
    let events = agent.wait_for(seq, |ev| {
        has(ev, "file_deleted", &apiserver) && has(ev, "file_deleted", &node.manifests)
    });
    assert_eq!(
        events
            .iter()
            .filter(|e| e.body.kind() == "file_deleted")
            .count(),
        5,
        "four manifests and the directory: {events:?}"
    );

    let seq = agent.last_seq();
    fs::create_dir(&node.manifests).unwrap();
    for e in fs::read_dir(saved.path()).unwrap() {
        let e = e.unwrap();
        fs::copy(e.path(), node.manifests.join(e.file_name())).unwrap();
    }
    agent.wait_for(seq, |ev| has(ev, "file_created", &apiserver));

    // The new directory is watched: an in-place change is heard without a rescan.
    let seq = agent.last_seq();
    fs::write(
        node.manifest("kube-scheduler.yaml"),
        insecure_scheduler(&node),
    )
    .unwrap();
    let events = agent.wait_for(seq, |ev| raised(ev, "scheduler-bind-address"));
    assert!(
        events.iter().all(|e| e.body.kind() != "rescan"),
        "{events:?}"
    );
}

#[test]
fn symlinked_manifest_is_followed_and_its_target_watched() {
    let node = Node::new(SLOW_SETTLE);
    let elsewhere = node.root.path().join("opt/manifests");
    fs::create_dir_all(&elsewhere).unwrap();
    let link = node.manifest("kube-scheduler.yaml");
    let target = elsewhere.join("kube-scheduler.yaml");
    fs::rename(&link, &target).unwrap();
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let agent = node.start();
    let seq = agent.last_seq();
    fs::write(&target, insecure_scheduler(&node)).unwrap();
    let events = agent.wait_for(seq, |ev| raised(ev, "scheduler-bind-address"));
    let m = about(&events, "file_modified", &link);
    assert_eq!(m.len(), 1, "{events:?}");
    let EventBody::FileModified { after, .. } = &m[0].body else {
        unreachable!()
    };
    assert_eq!(after.symlink.as_deref(), target.to_str());
}

#[test]
fn burst_of_1000_writes_ends_in_the_right_state_with_few_events() {
    let node = Node::new("settle: 10ms\nsettle_max: 100ms");
    let agent = node.start();
    let target = node.manifest("kube-scheduler.yaml");
    let base = fs::read_to_string(&target).unwrap();
    let seq = agent.last_seq();
    let mut last = String::new();
    for i in 0..1000 {
        last = base.replace(
            "    - kube-scheduler\n",
            &format!("    - kube-scheduler\n    - --v={i}\n"),
        );
        fs::write(&target, &last).unwrap();
    }
    let want = sha256_hex(last.as_bytes());
    let events = agent.wait_for(seq, |ev| {
        about(ev, "file_modified", &target)
            .last()
            .is_some_and(|e| after_sha(e) == Some(want.as_str()))
    });
    let n = about(&events, "file_modified", &target).len();
    assert!(n <= 50, "1000 writes gave {n} file_modified events");
}

#[test]
fn queue_overflow_triggers_a_rescan_that_finds_the_change() {
    let node = Node::new("");
    let agent = node.start();
    let max: usize = fs::read_to_string("/proc/sys/fs/inotify/max_queued_events")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let seq = agent.last_seq();
    agent.signal(Signal::SIGSTOP);
    // Each created file queues at least IN_CREATE and IN_CLOSE_WRITE; dot files are not
    // manifests, so only the overflow and the real change can produce events.
    for i in 0..max / 2 + 1000 {
        fs::File::create(node.manifests.join(format!(".noise-{i}"))).unwrap();
    }
    let target = node.manifest("kube-scheduler.yaml");
    fs::write(&target, insecure_scheduler(&node)).unwrap();
    agent.signal(Signal::SIGCONT);
    let overflow = |e: &Event| {
        matches!(&e.body,
            EventBody::Rescan { reason, .. } if reason == "inotify queue overflow")
    };
    // Reading the 16k queued events can outlast the settle window on a loaded machine: the
    // agent's own cap on pending paths may rescan first, and the kernel's overflow marker
    // then brings its own rescan. Wait for both the finding and that one.
    let events = agent.wait_for(seq, |ev| {
        raised(ev, "scheduler-bind-address") && ev.iter().any(overflow)
    });
    assert!(events.iter().any(overflow), "{events:?}");
    assert_eq!(about(&events, "file_modified", &target).len(), 1);
}

#[test]
fn kill_9_during_a_burst_then_restart_leaves_no_gap_and_reports_the_final_state() {
    let node = Node::new("");
    let agent = node.start();
    let target = node.manifest("kube-scheduler.yaml");
    let base = fs::read_to_string(&target).unwrap();
    let write = |i: usize| {
        let text = base.replace(
            "    - kube-scheduler\n",
            &format!("    - kube-scheduler\n    - --v={i}\n"),
        );
        fs::write(&target, &text).unwrap();
        text
    };
    let seq = agent.last_seq();
    for i in 0..200 {
        write(i);
    }
    // Mid-burst: once at least one change is spooled, kill -9, and keep writing.
    agent.wait_for(seq, |ev| has(ev, "file_modified", &target));
    let killed_at = agent.last_seq();
    for i in 200..400 {
        write(i);
    }
    agent.kill9();
    let mut last = String::new();
    for i in 400..600 {
        last = write(i);
    }
    let agent = node.start();
    let want = sha256_hex(last.as_bytes());
    agent.wait_for(killed_at, |ev| {
        about(ev, "file_modified", &target)
            .last()
            .is_some_and(|e| after_sha(e) == Some(want.as_str()))
    });
    let all = node.events();
    let seqs: Vec<u64> = all.iter().map(|e| e.seq).collect();
    let expected: Vec<u64> = (1..=agent.last_seq()).collect();
    assert_eq!(seqs, expected, "sequence numbers with no gap and no repeat");
    let starts: Vec<&str> = all
        .iter()
        .filter_map(|e| match &e.body {
            EventBody::AgentStarted { baseline, .. } => Some(baseline.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(starts, ["created", "loaded"]);
    assert!(
        agent
            .status()
            .files
            .iter()
            .any(|f| f.path == target.to_str().unwrap())
    );
}

#[test]
fn changes_made_while_the_agent_was_stopped_are_reported_on_start() {
    let node = Node::new("");
    let agent = node.start();
    assert!(agent.stop().success());
    let seq = node.events().last().unwrap().seq;
    fs::write(
        node.manifest("kube-scheduler.yaml"),
        insecure_scheduler(&node),
    )
    .unwrap();
    fs::set_permissions(
        node.kubernetes.join("admin.conf"),
        fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    fs::remove_file(node.pki.join("ca.crt")).unwrap();
    let new_key = node.pki.join("front-proxy-ca.key");
    fs::write(&new_key, "k").unwrap();
    fs::set_permissions(&new_key, fs::Permissions::from_mode(0o600)).unwrap();
    let agent = node.start();
    let events = agent.wait_for(seq, |ev| {
        ev.iter().any(|e| e.body.kind() == "agent_started")
    });
    assert!(
        matches!(&events[0].body, EventBody::AgentStarted { baseline, .. } if baseline == "loaded")
    );
    assert!(has(
        &events,
        "file_modified",
        &node.manifest("kube-scheduler.yaml")
    ));
    assert!(has(
        &events,
        "permission_drift",
        &node.kubernetes.join("admin.conf")
    ));
    assert!(has(&events, "file_deleted", &node.pki.join("ca.crt")));
    assert!(has(&events, "file_created", &new_key));
    assert!(raised(&events, "scheduler-bind-address"));
    assert!(raised(&events, "file-admin-kubeconfig-mode"));
}

#[test]
fn a_restart_with_nothing_changed_reports_nothing_but_the_restart() {
    // Probes on, and no API server where the manifest says: its probe finding is open, and a
    // restart keeps it open (it is not resolved until a probe says so).
    let node = Node::new("live:\n  timeout: 1s");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let api = node.manifest("kube-apiserver.yaml");
    let text = fs::read_to_string(&api).unwrap().replace(
        "    - --secure-port=6443\n",
        &format!("    - --secure-port={port}\n"),
    );
    fs::write(&api, text).unwrap();
    let agent = node.start();
    agent.wait_for(0, |ev| raised(ev, "live-apiserver-answers"));
    assert!(agent.stop().success());
    let seq = node.events().last().unwrap().seq;
    let agent = node.start();
    let events = agent.wait_for(seq, |ev| !ev.is_empty());
    assert!(agent.stop().success());
    let after: Vec<&str> = node
        .events()
        .iter()
        .filter(|e| e.seq > seq)
        .map(|e| e.body.kind())
        .collect();
    assert_eq!(after, ["agent_started", "agent_stopping"], "{events:?}");
}

#[test]
fn full_spool_drops_the_oldest_and_counts_them_in_an_overflow_event() {
    let node = Node::new("spool_max_bytes: 65536");
    assert!(node.start().stop().success());
    // While the agent is down, 150 world-readable keys appear: on start, one commit of
    // about 300 events, far more than 64 KiB.
    for i in 0..150 {
        let k = node.pki.join(format!("extra-{i:03}.key"));
        fs::write(&k, "k").unwrap();
        fs::set_permissions(&k, fs::Permissions::from_mode(0o644)).unwrap();
    }
    let agent = node.start();
    agent.wait_for(0, |ev| ev.iter().any(|e| e.body.kind() == "spool_overflow"));
    let kept = node.events();
    let overflow: Vec<&Event> = kept
        .iter()
        .filter(|e| e.body.kind() == "spool_overflow")
        .collect();
    assert_eq!(overflow.len(), 1, "one commit overflowed once");
    let EventBody::SpoolOverflow {
        dropped,
        first_seq,
        last_seq,
        total_dropped,
    } = overflow[0].body
    else {
        unreachable!()
    };
    // Everything before the first kept event was dropped, and the event says exactly that.
    assert_eq!(first_seq, 1);
    assert_eq!(last_seq, kept[0].seq - 1);
    assert_eq!(dropped, last_seq);
    assert_eq!(total_dropped, dropped);
    assert_eq!(agent.status().spool.dropped_total, dropped);
    assert!(
        kept.windows(2).all(|w| w[1].seq == w[0].seq + 1),
        "no other gap"
    );
    let bytes: usize = kept
        .iter()
        .map(|e| serde_json::to_vec(e).unwrap().len())
        .sum();
    assert!(bytes <= 65536, "{bytes}");
}

#[test]
fn malformed_manifest_is_an_error_event_and_the_agent_keeps_going() {
    let node = Node::new(SLOW_SETTLE);
    let mut agent = node.start();
    let seq = agent.last_seq();
    let bad = node.manifest("broken.yaml");
    fs::write(&bad, "apiVersion: v1\nkind: Pod\nspec: [unclosed\n").unwrap();
    let binary = node.manifest("blob.yaml");
    fs::write(&binary, [0u8, 159, 146, 150, 0, 1]).unwrap();
    let events = agent.wait_for(seq, |ev| {
        has(ev, "file_invalid", &bad) && has(ev, "file_invalid", &binary)
    });
    assert!(has(&events, "file_created", &bad));
    let seq = agent.last_seq();
    fs::write(
        node.manifest("kube-scheduler.yaml"),
        insecure_scheduler(&node),
    )
    .unwrap();
    agent.wait_for(seq, |ev| raised(ev, "scheduler-bind-address"));
    assert!(agent.alive());
    let status = agent.status();
    let broken = status
        .files
        .iter()
        .find(|f| f.path == bad.to_str().unwrap())
        .unwrap();
    assert!(
        broken
            .error
            .as_deref()
            .unwrap_or("")
            .contains("invalid YAML"),
        "{broken:?}"
    );
}

#[test]
fn second_agent_on_the_same_state_directory_fails_at_once_and_says_why() {
    let node = Node::new("");
    let first = node.start();
    let out = std::process::Command::new(lockdown_e2e::bin("lockdown-agent"))
        .arg("--config")
        .arg(&node.config)
        .arg("run")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "locked by another lockdown-agent (pid {})",
            first.child.id()
        )),
        "{err}"
    );
}

#[test]
fn sigterm_flushes_an_agent_stopping_event_and_exits_zero() {
    let node = Node::new("");
    let agent = node.start();
    assert!(agent.stop().success());
    let last = node.events().pop().unwrap();
    assert!(matches!(&last.body, EventBody::AgentStopping { reason, .. } if reason == "SIGTERM"));
    assert!(!node.state.join("agent.sock").exists());
}

#[test]
fn sighup_reloads_the_config_and_a_bad_config_is_refused() {
    let node = Node::new("");
    let mut agent = node.start();
    assert!(
        agent
            .status()
            .open_findings
            .iter()
            .any(|f| f.finding.rule_id == "scheduler-profiling")
    );
    let seq = agent.last_seq();
    let good = fs::read_to_string(&node.config).unwrap();
    fs::write(
        &node.config,
        format!("{good}rules: {{disable: [scheduler-profiling]}}\n"),
    )
    .unwrap();
    agent.signal(Signal::SIGHUP);
    let events = agent.wait_for(seq, |ev| resolved(ev, "scheduler-profiling"));
    assert!(events.iter().any(|e| e.body.kind() == "config_reloaded"));

    let seq = agent.last_seq();
    fs::write(&node.config, format!("{good}manifest_dir: /typo\n")).unwrap();
    agent.signal(Signal::SIGHUP);
    let events = agent.wait_for(seq, |ev| {
        ev.iter().any(|e| e.body.kind() == "config_rejected")
    });
    let EventBody::ConfigRejected { error } = &events[0].body else {
        panic!("{events:?}")
    };
    assert!(error.contains("manifest_dir"), "{error}");
    assert!(agent.alive());
    assert!(
        !agent
            .status()
            .open_findings
            .iter()
            .any(|f| f.finding.rule_id == "scheduler-profiling")
    );
}

#[test]
fn status_shows_files_findings_spool_and_last_event() {
    let node = Node::kubeadm_full("");
    let _agent = node.start();
    let out = std::process::Command::new(lockdown_e2e::bin("lockdown-agent"))
        .arg("--config")
        .arg(&node.config)
        .args(["status", "--format", "json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["node"], "cp-1");
    let files: Vec<&str> = s["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    let data_dir = node.root.path().join("data/etcd");
    for want in [
        node.kubernetes.join("kubelet.conf"),
        node.pki.join("etcd/server.key"),
        data_dir,
    ] {
        assert!(
            files.contains(&want.to_str().unwrap()),
            "{want:?} not in {files:?}"
        );
    }
    assert!(!s["open_findings"].as_array().unwrap().is_empty());
    assert!(s["spool"]["events"].as_u64().unwrap() > 0);
    assert_eq!(s["last_event"]["seq"], s["spool"]["last_seq"]);
    assert!(!s["watched_dirs"].as_array().unwrap().is_empty());
    let table = std::process::Command::new(lockdown_e2e::bin("lockdown-agent"))
        .arg("--config")
        .arg(&node.config)
        .arg("status")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.contains("open findings:") && text.contains("spool:"),
        "{text}"
    );
}

#[test]
fn periodic_rescan_finds_what_inotify_cannot_see_and_is_silent_otherwise() {
    // A write through a hard link in an unwatched directory raises no inotify event in the
    // manifests directory (the kubelet is blind to it too, until its own re-list).
    let node = Node::new("rescan_interval: 200ms");
    let target = node.manifest("kube-scheduler.yaml");
    let hidden = node.root.path().join("hidden-link.yaml");
    fs::hard_link(&target, &hidden).unwrap();
    let agent = node.start();
    let seq = agent.last_seq();
    let text = insecure_scheduler(&node);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&hidden)
        .unwrap();
    f.write_all(text.as_bytes()).unwrap();
    drop(f);
    let events = agent.wait_for(seq, |ev| raised(ev, "scheduler-bind-address"));
    assert!(
        events.iter().any(
            |e| matches!(&e.body, EventBody::Rescan { reason, changes: 1 }
            if reason.starts_with("periodic"))
        ),
        "{events:?}"
    );
    assert!(has(&events, "file_modified", &target));
    // Three more rescans that find nothing add no event.
    let seq = agent.last_seq();
    let rescans = agent.status().rescans;
    let deadline = std::time::Instant::now() + lockdown_e2e::node::WAIT;
    while agent.status().rescans < rescans + 3 {
        assert!(std::time::Instant::now() < deadline, "no periodic rescans");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(agent.last_seq(), seq, "{:?}", node.events());
}

#[test]
fn a_broken_etcd_manifest_does_not_make_its_data_directory_look_deleted() {
    let node = Node::kubeadm_full(SLOW_SETTLE);
    let agent = node.start();
    let etcd = node.manifest("etcd.yaml");
    let good = fs::read(&etcd).unwrap();
    let seq = agent.last_seq();
    fs::write(&etcd, "apiVersion: v1\nkind: Pod\nspec: [unclosed\n").unwrap();
    agent.wait_for(seq, |ev| has(ev, "file_invalid", &etcd));
    fs::write(&etcd, &good).unwrap();
    let events = agent.wait_for(seq, |ev| about(ev, "file_modified", &etcd).len() == 2);
    let data_dir = node.root.path().join("data/etcd");
    assert!(
        events
            .iter()
            .all(|e| e.body.path() != Some(data_dir.to_str().unwrap())),
        "{events:?}"
    );
    assert!(
        events.iter().all(|e| e.body.kind() != "finding_resolved"),
        "findings of an unparseable manifest stay open: {events:?}"
    );
}

/// A small tmpfs mounted for the test, unmounted when dropped (after the agent using it).
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(at: &std::path::Path, size: &str) -> Tmpfs {
        fs::create_dir_all(at).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mount needs root (as CI runs): {out:?}"
        );
        Tmpfs(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn events_no_rescan_finds_again_survive_a_full_disk() {
    if !lockdown_e2e::needs_root("mount a small tmpfs") {
        return;
    }
    let node = Node::new("rescan_interval: 0s");
    let _disk = Tmpfs::mount(&node.state, "2m");
    let agent = node.start();
    let seq = agent.last_seq();
    // Fill the state directory's filesystem: the next commits fail.
    let filler = node.state.join("filler");
    {
        let mut f = fs::File::create(&filler).unwrap();
        let block = vec![0u8; 64 * 1024];
        while f.write_all(&block).is_ok() {}
    }
    // A reload (its config_reloaded event happens once) and a change (a rescan finds it
    // again) while the disk is full.
    agent.signal(Signal::SIGHUP);
    let path = node.manifest("kube-scheduler.yaml");
    let text = insecure_scheduler(&node);
    fs::write(&path, &text).unwrap();
    let log_says = || agent.log().contains("database or disk is full");
    let deadline = std::time::Instant::now() + lockdown_e2e::node::WAIT;
    while !log_says() {
        assert!(std::time::Instant::now() < deadline, "{}", agent.log());
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    fs::remove_file(&filler).unwrap();
    let events = agent.wait_for(seq, |ev| {
        ev.iter().any(|e| e.body.kind() == "config_reloaded") && has(ev, "file_modified", &path)
    });
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    let expected: Vec<u64> = (seq + 1..=seq + seqs.len() as u64).collect();
    assert_eq!(seqs, expected, "gap in the sequence");
}

#[test]
fn a_non_manifest_linked_or_copied_into_the_manifests_directory_leaves_no_content() {
    // Issue 11 (1): `ln -s /etc/shadow manifests/x.yaml` shipped every line of the file in the
    // file_created diff. Fails on the commit before the fix: the diff held the file.
    let node = Node::new("");
    let agent = node.start();
    let seq = agent.last_seq();
    let secret_dir = node.root.path().join("secrets");
    fs::create_dir_all(&secret_dir).unwrap();
    let shadow = secret_dir.join("shadow");
    fs::write(&shadow, "root:$6$SHADOWSECRET:19000:0:99999:7:::\n").unwrap();
    let kubeconfig = "apiVersion: v1\nkind: Config\nusers:\n- name: admin\n  user:\n    token: KUBECONFIGSECRET\n";
    let linked = node.manifests.join("x.yaml");
    let copied = node.manifests.join("admin.conf");
    std::os::unix::fs::symlink(&shadow, &linked).unwrap();
    fs::write(&copied, kubeconfig).unwrap();
    let events = agent.wait_for(seq, |ev| {
        has(ev, "file_created", &linked) && has(ev, "file_created", &copied)
    });
    for path in [&linked, &copied] {
        let created = about(&events, "file_created", path);
        let EventBody::FileCreated { diff, after, .. } = &created[0].body else {
            unreachable!()
        };
        assert_eq!(diff, &None, "{path:?}: {created:?}");
        assert!(after.sha256.is_some(), "hashes are kept: {after:?}");
    }
    fs::write(&copied, kubeconfig.replace("KUBECONFIG", "OTHER")).unwrap();
    agent.wait_for(seq, |ev| has(ev, "file_modified", &copied));
    let everything = format!("{:?}", node.events());
    for secret in ["SHADOWSECRET", "KUBECONFIGSECRET", "OTHERSECRET"] {
        assert!(!everything.contains(secret), "{secret} left the node");
    }
}

#[test]
fn the_state_directory_and_everything_in_it_are_the_agents_alone() {
    // Issue 11: `pause` before the first run made the state directory 0755, and the spool files
    // were 0644 and agent.sock 0755 in every run. On the commit before the fix this test
    // failed at the first assertion (0755).
    use std::os::unix::fs::PermissionsExt as _;
    let node = Node::new("");
    let out = std::process::Command::new(lockdown_e2e::bin("lockdown-agent"))
        .args(["pause", "--for", "1m", "--config"])
        .arg(&node.config)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let mode = |p: &std::path::Path| fs::symlink_metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&node.state), 0o700);
    let agent = node.start();
    agent.status(); // the socket answers
    let mut seen = 0;
    for e in fs::read_dir(&node.state).unwrap() {
        let p = e.unwrap().path();
        assert_eq!(mode(&p) & 0o077, 0, "{} is {:o}", p.display(), mode(&p));
        seen += 1;
    }
    assert!(seen >= 4, "spool, its WAL, the lock and the socket");
    assert_eq!(mode(&node.state), 0o700);
}

#[test]
fn many_large_manifests_bound_memory_and_disk_as_a_whole() {
    // Issue 11 (9): 200 valid 1 MB manifests took the agent from 11 MB to 566 MB RSS, which
    // stayed after they were deleted, and the state directory to 316 MB. On the commit
    // before the fix this run peaked at 285 MB RSS with a 182 MB state directory (measured
    // with a debug build). Now a manifest's text is kept only up to 64 KiB and the number of
    // tracked manifests is bounded.
    let node = Node::new("");
    let agent = node.start();
    let seq = agent.last_seq();
    let pad: String = (0..16_000)
        .map(|i| format!("# padding line {i:06} {}\n", "x".repeat(40)))
        .collect();
    let n = 150;
    for i in 0..n {
        fs::write(
            node.manifests.join(format!("big-{i:03}.yaml")),
            format!(
                "{}apiVersion: v1\nkind: Pod\nmetadata:\n  name: p{i}\nspec:\n  containers:\n  - name: c\n    image: busybox\n",
                &pad[..1_000_000]
            ),
        )
        .unwrap();
    }
    agent.wait_for(seq, |ev| {
        ev.iter()
            .filter(|e| e.body.kind() == "file_created")
            .count()
            >= n
    });
    let status = fs::read_to_string(format!("/proc/{}/status", agent.child.id())).unwrap();
    let hwm_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap();
    assert!(
        hwm_kb < 100 * 1024,
        "peak RSS {hwm_kb} kB for {n} MB of manifests"
    );
    let state_bytes: u64 = fs::read_dir(&node.state)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert!(
        state_bytes < 16 << 20,
        "state directory {state_bytes} bytes"
    );
}

#[test]
fn a_log_file_beside_the_watched_directories_does_not_wake_the_agent() {
    // Issue 11: the sandbox node's root is watched (the parent of missing directories), the
    // agent's debug log lives there, and each log line woke the agent, which logged again:
    // 21-25% of a core at rest. On the commit before the fix the log grew by hundreds of
    // lines in this one second of quiet.
    let node = Node::kubeadm_full("");
    let agent = node.start();
    agent.status(); // ready, first scan done
    let lines = |a: &lockdown_e2e::node::Agent| a.log().lines().count();
    let before = lines(&agent);
    // Quiet is the absence of events, so it takes a window to see: nothing is written here.
    std::thread::sleep(std::time::Duration::from_secs(1));
    let after = lines(&agent);
    assert!(
        after <= before + 2,
        "{} log lines in a second of quiet:\n{}",
        after - before,
        agent
            .log()
            .lines()
            .skip(before)
            .take(20)
            .collect::<Vec<_>>()
            .join("\n")
    );
    // And a real change is still seen.
    let seq = agent.last_seq();
    fs::write(
        node.manifest("kube-scheduler.yaml"),
        insecure_scheduler(&node),
    )
    .unwrap();
    agent.wait_for(seq, |ev| raised(ev, "scheduler-bind-address"));
}

#[test]
fn two_unsupported_flags_in_one_file_are_two_findings() {
    // Issue 11: the daemon kept one open finding per (file, rule), so the second unsupported
    // flag was never reported. On the commit before the fix one finding_raised came.
    let node = Node::new("");
    let agent = node.start();
    let seq = agent.last_seq();
    let sched = node.manifest("kube-scheduler.yaml");
    let text = fs::read_to_string(&sched).unwrap().replace(
        "    - kube-scheduler\n",
        "    - kube-scheduler\n    - --address=127.0.0.1\n    - --port=0\n",
    );
    fs::write(&sched, text).unwrap();
    let events = agent.wait_for(seq, |ev| {
        ev.iter()
            .filter(|e| e.body.kind() == "finding_raised" && rule_id(e) == Some("unsupported-flag"))
            .count()
            >= 2
    });
    let flags: BTreeSet<String> = events
        .iter()
        .filter_map(|e| match &e.body {
            EventBody::FindingRaised { finding, .. } if finding.rule_id == "unsupported-flag" => {
                finding.flag.clone()
            }
            _ => None,
        })
        .collect();
    assert_eq!(flags.len(), 2, "{flags:?}");
    let open = agent.status().open_findings;
    assert_eq!(
        open.iter()
            .filter(|f| f.finding.rule_id == "unsupported-flag")
            .count(),
        2
    );
    // Removing one resolves exactly that one.
    let seq = agent.last_seq();
    let text = fs::read_to_string(&sched)
        .unwrap()
        .replace("    - --port=0\n", "");
    fs::write(&sched, text).unwrap();
    let events = agent.wait_for(seq, |ev| {
        ev.iter().any(|e| e.body.kind() == "finding_resolved")
    });
    let resolved: Vec<_> = events
        .iter()
        .filter(|e| e.body.kind() == "finding_resolved")
        .collect();
    assert_eq!(resolved.len(), 1, "{resolved:?}");
}

#[test]
fn sed_in_place_edits_never_report_a_vanished_file_as_invalid() {
    // Issue 11: about 1.5% of `sed -i` edits also reported sed's temporary file, as created,
    // "file is empty" or "no such file", and deleted. A file gone between the listing and the
    // read is not reported at all now; one seen while it exists is named for what it is.
    // A race: on the commit before the fix this failed in one run of three here.
    let node = Node::new("settle: 1ms");
    let agent = node.start();
    let seq = agent.last_seq();
    let target = node.manifest("kube-scheduler.yaml");
    let secure = fs::read_to_string(&target).unwrap();
    let insecure = insecure_scheduler(&node);
    for i in 0..300 {
        let tmp = node
            .manifests
            .join(format!("sed{:06}", i % 1000).replace('0', "X"));
        let text = if i % 2 == 0 { &insecure } else { &secure };
        let mut f = fs::File::create(&tmp).unwrap(); // sed: open(O_CREAT), then write
        f.write_all(text.as_bytes()).unwrap();
        drop(f);
        fs::rename(&tmp, &target).unwrap();
    }
    // 300 edits end on the secure version: wait until the agent saw the last one.
    let want = sha256_hex(secure.as_bytes());
    let events = agent.wait_for(seq, |ev| {
        ev.iter()
            .rev()
            .find(|e| e.body.path() == Some(target.to_str().unwrap()) && after_sha(e).is_some())
            .and_then(after_sha)
            == Some(want.as_str())
    });
    for e in &events {
        if let EventBody::FileInvalid { path, error } = &e.body {
            assert!(!error.contains("no such file"), "{path}: {error}");
            if path.contains("/sed") {
                assert!(
                    error.contains("temporary file of `sed -i`"),
                    "{path}: {error}"
                );
            }
        }
    }
}

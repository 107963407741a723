//! The fixer end to end: the real agent binary, real files, and the kubelet double running
//! `fake-component` for each manifest (see `src/kubelet.rs`).
//!
//! The manifests are kubeadm 1.31 files with their probes scaled down (1 s periods), so that
//! a health gate takes seconds. Every test asserts the manifests directory listing after each
//! step: no temp file and no backup ever stays there.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use lockdown_agent::event::{Event, EventBody};
use lockdown_agent::integrity::sha256_hex;
use lockdown_e2e::bin;
use lockdown_e2e::kubelet::{Kubelet, SCHED, fix_node, hardened, write_manifest};
use lockdown_e2e::node::{Agent, Node, about, has};

/// Waits that include health gates and rollbacks.
const GATE_WAIT: Duration = Duration::from_secs(60);

fn kubelet(node: &Node, refuse: &[&str]) -> Kubelet {
    let k = Kubelet::start(
        &node.manifests,
        &node.root.path().join("containers.log"),
        refuse,
    );
    let sha = sha256_hex(&fs::read(node.manifest(SCHED)).unwrap());
    k.wait_running(SCHED, &sha);
    k
}

/// The manifests directory holds exactly `names`.
fn assert_listing(node: &Node, names: &[&str]) {
    let mut found: Vec<String> = fs::read_dir(&node.manifests)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    found.sort();
    assert_eq!(found, names, "manifests directory listing");
}

fn kinds(events: &[Event], path: &Path) -> Vec<&'static str> {
    let p = path.display().to_string();
    events
        .iter()
        .filter(|e| e.body.kind().starts_with("fix_") && e.body.path() == Some(p.as_str()))
        .map(|e| e.body.kind())
        .collect()
}

fn agent_cli(node: &Node, args: &[&str]) -> std::process::Output {
    Command::new(bin("lockdown-agent"))
        .arg("--config")
        .arg(&node.config)
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn a_safe_fix_is_applied_and_verified_healthy() {
    let node = fix_node("  mode: enforce");
    let path = node.manifest(SCHED);
    let original = fs::read_to_string(&path).unwrap();
    let k = kubelet(&node, &[]);
    let agent = node.start();
    let events = agent.wait_for_within(GATE_WAIT, 0, |ev| has(ev, "fix_verified", &path));
    assert_listing(&node, &[SCHED]);
    assert_eq!(
        kinds(&events, &path),
        ["fix_planned", "fix_applied", "fix_verified"]
    );
    // Exactly the planned bytes, with the original's owner and mode.
    let now = fs::read_to_string(&path).unwrap();
    assert_eq!(now, hardened(&original));
    let meta = fs::metadata(&path).unwrap();
    assert_eq!(meta.mode() & 0o7777, 0o600);
    // The kubelet runs the hardened spec and it is healthy.
    k.wait_running(SCHED, &sha256_hex(now.as_bytes()));
    // The agent's own write is not reported as drift.
    assert!(
        !has(&events, "file_modified", &path),
        "own write reported as drift"
    );
    let applied = about(&events, "fix_applied", &path)[0];
    let EventBody::FixApplied {
        backup,
        diff,
        rules,
        ..
    } = &applied.body
    else {
        unreachable!()
    };
    assert_eq!(rules, &["scheduler-profiling"]);
    assert!(diff.contains("+    - --profiling=false"), "{diff}");
    // The backup holds the original bytes, outside the manifests directory, 0600.
    assert!(!Path::new(backup).starts_with(&node.manifests));
    assert_eq!(fs::read_to_string(backup).unwrap(), original);
    assert_eq!(fs::metadata(backup).unwrap().mode() & 0o777, 0o600);
    // The finding is resolved by the fix.
    let resolved = about(&events, "finding_resolved", &path);
    assert!(
        resolved
            .iter()
            .any(|e| lockdown_e2e::node::rule_id(e) == Some("scheduler-profiling"))
    );
    assert_listing(&node, &[SCHED]);
    assert_eq!(k.ran(), [SCHED.to_string()].into());
    drop(agent);
}

#[test]
fn a_fix_that_breaks_the_component_is_rolled_back_to_identical_bytes() {
    let node = fix_node("  mode: enforce\n  health_timeout: 3s");
    let path = node.manifest(SCHED);
    let original = fs::read(&path).unwrap();
    let k = kubelet(&node, &["--profiling=false"]);
    let agent = node.start();
    let events = agent.wait_for_within(GATE_WAIT, 0, |ev| has(ev, "fix_quarantined", &path));
    assert_listing(&node, &[SCHED]);
    assert_eq!(
        kinds(&events, &path),
        [
            "fix_planned",
            "fix_applied",
            "fix_rolled_back",
            "fix_quarantined"
        ]
    );
    assert_eq!(
        fs::read(&path).unwrap(),
        original,
        "not restored byte for byte"
    );
    let rolled = about(&events, "fix_rolled_back", &path)[0];
    let EventBody::FixRolledBack {
        attempts,
        restored_healthy,
        reason,
        ..
    } = &rolled.body
    else {
        unreachable!()
    };
    assert!(*restored_healthy, "original not healthy again");
    assert!(reason.contains("did not succeed"), "{reason}");
    assert!(attempts.iter().all(|a| !a.ok), "{attempts:?}");
    assert!(!attempts.is_empty());
    k.wait_running(SCHED, &sha256_hex(&original));
    assert!(
        agent
            .status()
            .fix
            .quarantined
            .contains_key(&path.display().to_string())
    );
    // Quarantined: a reload (which re-evaluates every file) does not try again; a change by
    // someone else does, once. The fixer handles requests in order, so the one fix_applied
    // after the reload is the one the outside change asked for.
    let before_reload = agent.last_seq();
    agent.signal(nix::sys::signal::Signal::SIGHUP);
    agent.wait_for(before_reload, |ev| {
        ev.iter().any(|e| e.body.kind() == "config_reloaded")
    });
    let changed = String::from_utf8(original.clone())
        .unwrap()
        .replace("kind: Pod\n", "kind: Pod\n# edited by hand\n");
    write_manifest(&node, SCHED, &changed);
    let events = agent.wait_for_within(GATE_WAIT, before_reload, |ev| {
        has(ev, "fix_quarantined", &path)
    });
    assert_eq!(
        about(&events, "fix_applied", &path).len(),
        1,
        "{:?}",
        kinds(&events, &path)
    );
    assert_eq!(fs::read_to_string(&path).unwrap(), changed);
    assert_listing(&node, &[SCHED]);
}

#[test]
fn an_unknown_version_gets_no_additions() {
    let node = fix_node("  mode: enforce");
    let path = node.manifest(SCHED);
    let text = fs::read_to_string(&path)
        .unwrap()
        .replace(":v1.31.4", ":latest");
    write_manifest(&node, SCHED, &text);
    let agent = node.start();
    let events = agent.wait_for(0, |ev| has(ev, "fix_skipped", &path));
    let skipped = about(&events, "fix_skipped", &path);
    assert!(
        skipped.iter().any(|e| matches!(&e.body,
            EventBody::FixSkipped { rule_id: Some(r), reason, .. }
                if r == "scheduler-profiling" && reason.contains("version is unknown"))),
        "{skipped:?}"
    );
    assert!(!has(&events, "fix_applied", &path));
    assert_eq!(fs::read_to_string(&path).unwrap(), text);
    assert_listing(&node, &[SCHED]);
}

#[test]
fn the_fight_guard_stops_fixing_a_file_that_keeps_drifting_back() {
    let node = fix_node("  mode: enforce\n  fight_max: 2\n  fight_window: 10m");
    let path = node.manifest(SCHED);
    let original = fs::read_to_string(&path).unwrap();
    let _k = kubelet(&node, &[]);
    let agent = node.start();
    let mut seq = 0;
    for round in 1..=2 {
        let events = agent.wait_for_within(GATE_WAIT, seq, |ev| has(ev, "fix_verified", &path));
        assert_eq!(fs::read_to_string(&path).unwrap(), hardened(&original));
        assert_listing(&node, &[SCHED]);
        seq = events.last().unwrap().seq;
        // Something else puts the insecure version back.
        write_manifest(&node, SCHED, &original);
        let _ = round;
    }
    let events = agent.wait_for_within(GATE_WAIT, seq, |ev| has(ev, "fix_quarantined", &path));
    let q = about(&events, "fix_quarantined", &path)[0];
    let EventBody::FixQuarantined { reason, .. } = &q.body else {
        unreachable!()
    };
    assert!(reason.contains("came back"), "{reason}");
    assert!(!has(&events, "fix_applied", &path));
    // Detection goes on: the drift is reported and the file left as the other writer put it.
    assert!(has(&events, "file_modified", &path));
    assert_eq!(fs::read_to_string(&path).unwrap(), original);
    assert_listing(&node, &[SCHED]);
    // Issue 11 (11): the guard survives a restart (Restart=always must not make the agent
    // fight forever). On the commit before the fix the restarted agent fixed the file again.
    let seq = agent.last_seq();
    assert!(agent.stop().success());
    let drifted = original.replace("kind: Pod\n", "kind: Pod\n# rewritten again\n");
    write_manifest(&node, SCHED, &drifted);
    let agent = node.start();
    let events = agent.wait_for_within(GATE_WAIT, seq, |ev| {
        about(ev, "fix_skipped", &path).iter().any(|e| {
            matches!(&e.body, EventBody::FixSkipped { reason, .. } if reason.contains("fight guard"))
        })
    });
    assert!(!has(&events, "fix_applied", &path), "{events:?}");
    assert_eq!(fs::read_to_string(&path).unwrap(), drifted);
}

#[test]
fn pause_stops_fixing_but_not_detecting_and_resume_catches_up() {
    let node = fix_node("  mode: enforce");
    let path = node.manifest(SCHED);
    let original = fs::read_to_string(&path).unwrap();
    let out = agent_cli(&node, &["pause", "--for", "1h"]);
    assert!(out.status.success(), "{out:?}");
    let _k = kubelet(&node, &[]);
    let agent = node.start();
    let events = agent.wait_for(0, |ev| has(ev, "fix_skipped", &path));
    let skipped = about(&events, "fix_skipped", &path);
    assert!(
        skipped.iter().any(|e| matches!(&e.body,
            EventBody::FixSkipped { reason, .. } if reason.starts_with("paused until"))),
        "{skipped:?}"
    );
    assert!(has(&events, "finding_raised", &path), "detection stopped");
    let status = agent.status();
    assert!(
        status
            .fix
            .paused
            .as_deref()
            .is_some_and(|p| p.starts_with("paused until")),
        "{:?}",
        status.fix
    );
    assert_eq!(fs::read_to_string(&path).unwrap(), original);
    let seq = agent.last_seq();
    let out = agent_cli(&node, &["resume"]);
    assert!(out.status.success(), "{out:?}");
    agent.wait_for_within(GATE_WAIT, seq, |ev| has(ev, "fix_verified", &path));
    assert_eq!(fs::read_to_string(&path).unwrap(), hardened(&original));
    assert_listing(&node, &[SCHED]);
}

#[test]
fn a_symlinked_manifest_is_refused() {
    let node = fix_node("  mode: enforce");
    let path = node.manifest(SCHED);
    let original = fs::read_to_string(&path).unwrap();
    let target = node.root.path().join("elsewhere.yaml");
    fs::rename(&path, &target).unwrap();
    std::os::unix::fs::symlink(&target, &path).unwrap();
    let agent = node.start();
    let events = agent.wait_for(0, |ev| has(ev, "fix_skipped", &path));
    let skipped = about(&events, "fix_skipped", &path);
    assert!(
        skipped.iter().any(|e| matches!(&e.body,
            EventBody::FixSkipped { reason, .. } if reason.contains("symlink"))),
        "{skipped:?}"
    );
    assert!(!has(&events, "fix_applied", &path));
    assert_eq!(fs::read_to_string(&target).unwrap(), original);
    assert!(
        fs::symlink_metadata(&path)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_listing(&node, &[SCHED]);
}

#[test]
fn kill_9_between_write_and_verdict_is_finished_after_restart() {
    // The component refuses the fix, and the gate waits 5 s for it: time to kill the agent.
    let node = fix_node("  mode: enforce\n  health_timeout: 5s");
    let path = node.manifest(SCHED);
    let original = fs::read(&path).unwrap();
    let _k = kubelet(&node, &["--profiling=false"]);
    let agent: Agent = node.start();
    agent.wait_for_within(GATE_WAIT, 0, |ev| has(ev, "fix_applied", &path));
    agent.kill9();
    // The hardened (broken) file is in place and the journal says so.
    assert_eq!(
        fs::read_to_string(&path).unwrap(),
        hardened(std::str::from_utf8(&original).unwrap())
    );
    assert!(node.state.join("fix-journal.json").exists());
    assert_listing(&node, &[SCHED]);
    let seq = Node::events(&node).last().unwrap().seq;
    let agent = node.start();
    let events = agent.wait_for_within(GATE_WAIT, seq, |ev| has(ev, "fix_rolled_back", &path));
    assert_eq!(fs::read(&path).unwrap(), original);
    // Quarantined after the restart too: the rolled-back fix is not applied again.
    agent.wait_for_within(GATE_WAIT, seq, |ev| has(ev, "fix_quarantined", &path));
    // The journal goes last, once the verdict's events are out (a crash before that finishes
    // the rollback again rather than losing its events).
    let deadline = std::time::Instant::now() + GATE_WAIT;
    while node.state.join("fix-journal.json").exists() {
        assert!(std::time::Instant::now() < deadline, "journal left behind");
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(!has(&events, "fix_applied", &path));
    assert_listing(&node, &[SCHED]);
}

#[test]
fn dry_run_reports_the_diff_and_writes_nothing() {
    let node = fix_node("  mode: dry-run");
    let path = node.manifest(SCHED);
    let original = fs::read_to_string(&path).unwrap();
    // The command line first.
    let out = agent_cli(&node, &["fix", "--dry-run"]);
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("+    - --profiling=false"), "{stdout}");
    assert_eq!(fs::read_to_string(&path).unwrap(), original);
    // Then the daemon.
    let agent = node.start();
    let events = agent.wait_for(0, |ev| has(ev, "fix_planned", &path));
    let planned = about(&events, "fix_planned", &path)[0];
    let EventBody::FixPlanned { mode, diff, .. } = &planned.body else {
        unreachable!()
    };
    assert_eq!(mode, "dry-run");
    assert!(diff.contains("+    - --profiling=false"), "{diff}");
    assert_eq!(fs::read_to_string(&path).unwrap(), original);
    assert!(!node.state.join("backups").exists());
    assert_listing(&node, &[SCHED]);
}

#[test]
fn fix_apply_on_the_command_line_gates_and_rolls_back() {
    let node = fix_node("  health_timeout: 3s");
    let path = node.manifest(SCHED);
    let original = fs::read(&path).unwrap();
    {
        let _k = kubelet(&node, &["--profiling=false"]);
        let out = agent_cli(&node, &["fix", "--apply"]);
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        assert_eq!(fs::read(&path).unwrap(), original);
        assert!(String::from_utf8_lossy(&out.stderr).contains("fix_rolled_back"));
        assert_listing(&node, &[SCHED]);
        let out = agent_cli(&node, &["fix", "--apply"]);
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("quarantined"),
            "{out:?}"
        );
        assert_eq!(fs::read(&path).unwrap(), original);
    }
    // The quarantine holds for the command line too; a changed file lifts it.
    let changed = String::from_utf8(original)
        .unwrap()
        .replace("kind: Pod\n", "kind: Pod\n# edited by hand\n");
    write_manifest(&node, SCHED, &changed);
    let k = kubelet(&node, &[]);
    let out = agent_cli(&node, &["fix", "--apply"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(fs::read_to_string(&path).unwrap(), hardened(&changed));
    k.wait_running(SCHED, &sha256_hex(hardened(&changed).as_bytes()));
    assert_listing(&node, &[SCHED]);
    // Issue 11 (12): the manual fixes reach the spool (and so the collector), rollback and
    // verdict alike; on the commit before the fix they went to stderr only.
    let spooled: Vec<&str> = node
        .events()
        .iter()
        .map(|e| e.body.kind())
        .collect::<Vec<_>>();
    for kind in ["fix_applied", "fix_rolled_back", "fix_verified"] {
        assert!(spooled.contains(&kind), "{kind} not spooled: {spooled:?}");
    }
}

#[test]
fn anonymous_auth_on_1_33_is_restricted_to_the_health_endpoints() {
    if !lockdown_e2e::needs_root("chown to another user") {
        return;
    }
    let node = fix_node("  mode: enforce\n  rules:\n    apiserver-anonymous-auth: enforce");
    fs::remove_file(node.manifest(SCHED)).unwrap();
    let port = lockdown_e2e::collector::free_addr().port();
    let src = include_str!("../data/kubeadm/v1.31/kube-apiserver.yaml")
        .replace(":v1.31.4", ":v1.33.1")
        .replace(
            "    - --allow-privileged=true\n",
            "    - --allow-privileged=true\n    - --anonymous-auth=true\n",
        )
        .replace("host: 10.0.0.10", "host: 127.0.0.1")
        .replace("port: 6443", &format!("port: {port}"))
        .replace("initialDelaySeconds: 10", "initialDelaySeconds: 1")
        .replace("periodSeconds: 10", "periodSeconds: 1")
        .replace("failureThreshold: 8", "failureThreshold: 2")
        .replace("failureThreshold: 24", "failureThreshold: 4")
        .replace("timeoutSeconds: 15", "timeoutSeconds: 1")
        .replace(
            "      path: /etc/kubernetes/pki\n",
            &format!("      path: {}\n", node.pki.display()),
        );
    let api = "kube-apiserver.yaml";
    write_manifest(&node, api, &src);
    // The created file is owned like its directory (root:root on a real node), whoever the
    // agent runs as: give the sandbox's directory another owner to tell the two apart.
    nix::unistd::chown(&node.pki, Some(65534.into()), Some(65534.into())).unwrap();
    let path = node.manifest(api);
    let k = Kubelet::start(
        &node.manifests,
        &node.root.path().join("containers.log"),
        &[],
    );
    k.wait_running(api, &sha256_hex(src.as_bytes()));
    let agent = node.start();
    let events = agent.wait_for_within(GATE_WAIT, 0, |ev| has(ev, "fix_verified", &path));
    let now = fs::read_to_string(&path).unwrap();
    assert!(!now.contains("--anonymous-auth"), "{now}");
    assert!(now.contains(
        "    - --authentication-config=/etc/kubernetes/pki/kube-lockdown-authentication-config.yaml\n"
    ));
    let config = node.pki.join("kube-lockdown-authentication-config.yaml");
    let text = fs::read_to_string(&config).unwrap();
    assert!(
        text.contains("apiVersion: apiserver.config.k8s.io/v1beta1"),
        "{text}"
    );
    assert!(text.contains("  - path: /livez\n  - path: /readyz\n  - path: /healthz\n"));
    let meta = fs::metadata(&config).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid(), meta.mode() & 0o777),
        (65534, 65534, 0o600)
    );
    // The finding is resolved; the file the fix created is not reported as drift.
    let resolved = about(&events, "finding_resolved", &path);
    assert!(
        resolved
            .iter()
            .any(|e| lockdown_e2e::node::rule_id(e) == Some("apiserver-anonymous-auth")),
        "{resolved:?}"
    );
    assert!(!has(&events, "file_created", &config));
    let EventBody::FixApplied { created, diff, .. } = &about(&events, "fix_applied", &path)[0].body
    else {
        unreachable!()
    };
    assert_eq!(created, &[config.display().to_string()]);
    assert!(diff.contains("+  - path: /livez"), "{diff}");
    k.wait_running(api, &sha256_hex(now.as_bytes()));
    assert_listing(&node, &[api]);
}

#[test]
fn a_file_replaced_during_a_passing_gate_is_not_reported_verified() {
    // Issue 11 (11): another writer replaced the file while the gate ran; the gate passed on
    // what the other writer's version answered and reported fix_verified for a fix no longer
    // in place. On the commit before the fix this test saw fix_verified.
    let node = fix_node("  mode: enforce\n  health_timeout: 5s");
    let path = node.manifest(SCHED);
    let original = fs::read_to_string(&path).unwrap();
    let _k = kubelet(&node, &[]);
    let agent = node.start();
    let events = agent.wait_for_within(GATE_WAIT, 0, |ev| has(ev, "fix_applied", &path));
    let seq = events.last().unwrap().seq;
    let theirs = original.replace("kind: Pod\n", "kind: Pod\n# theirs, during the gate\n");
    write_manifest(&node, SCHED, &theirs);
    // The first fix ends without a verdict of its own: the gate passed on their version
    // ("replaced by another writer"), or, when the gate could tell their instance from ours,
    // it failed and the rollback found the file changed. Never fix_verified or a rollback
    // over their file.
    let replaced = |e: &Event| {
        matches!(&e.body, EventBody::FixSkipped { reason, .. }
            if reason.contains("replaced by another writer") || reason.contains("changed by someone else during the health gate"))
    };
    let events = agent.wait_for_within(GATE_WAIT, seq, |ev| {
        ev.iter().any(replaced) || has(ev, "fix_verified", &path)
    });
    let end = events.iter().position(replaced).unwrap_or(events.len());
    let first_fix = &events[..end];
    assert!(end < events.len(), "{events:?}");
    assert!(!has(first_fix, "fix_verified", &path), "{events:?}");
    assert!(!has(first_fix, "fix_rolled_back", &path), "{events:?}");
    assert!(fs::read_to_string(&path).unwrap().contains("# theirs"));
}

#[test]
fn the_old_instance_answering_after_the_write_does_not_pass_the_gate() {
    // Issue 11 (10): with a kubelet that replaces the container 2.5 s after the write and 1 s
    // probes, the gate took the old process's 200s, reported fix_verified, and the fixed
    // component then crash-looped on the kept fix. On the commit before the fix this test saw
    // fix_verified.
    let node = fix_node("  mode: enforce\n  health_timeout: 8s");
    let path = node.manifest(SCHED);
    let original = fs::read(&path).unwrap();
    let k = Kubelet::start_slow(
        &node.manifests,
        &node.root.path().join("containers.log"),
        &["--profiling=false"], // the fixed component refuses to start
        Duration::from_millis(2500),
    );
    k.wait_running(SCHED, &sha256_hex(&original));
    let agent = node.start();
    let events = agent.wait_for_within(GATE_WAIT, 0, |ev| {
        has(ev, "fix_rolled_back", &path) || has(ev, "fix_verified", &path)
    });
    assert!(
        !has(&events, "fix_verified", &path),
        "{:?}",
        kinds(&events, &path)
    );
    assert_eq!(
        fs::read(&path).unwrap(),
        original,
        "rolled back byte for byte"
    );
    let rolled = about(&events, "fix_rolled_back", &path)[0];
    let EventBody::FixRolledBack { attempts, .. } = &rolled.body else {
        unreachable!()
    };
    // The old instance did answer 200 after the write; those answers were not credited.
    assert!(attempts.iter().any(|a| a.ok), "{attempts:?}");
}

#[test]
fn the_fake_component_judges_flags_by_its_own_table_not_the_agents() {
    // Issue 11: fake-component took its version rules from the agent's catalogue, so a wrong
    // rule there passed the end-to-end tests. Its own table now decides.
    let run = |component: &str, version: &str, args: &[&str]| {
        Command::new(bin("fake-component"))
            .args(args)
            .env("FAKE_COMPONENT", component)
            .env("FAKE_VERSION", version)
            .env("FAKE_SERVE", "")
            .output()
            .unwrap()
    };
    let out = run("kube-apiserver", "1.31.0", &["--insecure-port=0"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("removed in 1.24"));
    assert!(
        run("kube-apiserver", "1.23.0", &["--insecure-port=0"])
            .status
            .success()
    );
    let out = run(
        "kube-apiserver",
        "1.28.0",
        &["--enable-admission-plugins=NodeRestriction,SecurityContextDeny"],
    );
    assert!(out.status.success(), "{out:?}");
    let out = run(
        "kube-apiserver",
        "1.30.0",
        &["--enable-admission-plugins=NodeRestriction,SecurityContextDeny"],
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let out = run(
        "kube-apiserver",
        "1.18.0",
        &["--service-account-extend-token-expiration=true"],
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("does not exist before 1.19"),
        "{out:?}"
    );
}

#[test]
fn stopping_during_a_health_gate_rolls_the_fix_back_before_exiting() {
    // Issue 15 (7): the agent stopped with a fix waiting for its gate, and restarted without
    // write access (the enforce drop-in removed) could not roll it back: the unverified fix
    // stayed. Now the stop rolls it back while it still can, and says so. On the commit
    // before the fix the file kept the fix after the agent exited.
    let node = fix_node("  mode: enforce");
    let path = node.manifest(SCHED);
    let original = fs::read(&path).unwrap();
    // A kubelet slow to replace the container: the gate is still waiting when the stop comes.
    let k = Kubelet::start_slow(
        &node.manifests,
        &node.root.path().join("containers.log"),
        &[],
        Duration::from_secs(60),
    );
    k.wait_running(SCHED, &sha256_hex(&original));
    let agent = node.start();
    let events = agent.wait_for_within(GATE_WAIT, 0, |ev| has(ev, "fix_applied", &path));
    let seq = events.last().unwrap().seq;
    assert_ne!(fs::read(&path).unwrap(), original, "the fix is in place");
    assert!(agent.stop().success());
    assert_eq!(
        fs::read(&path).unwrap(),
        original,
        "rolled back before the exit"
    );
    let after: Vec<Event> = node.events().into_iter().filter(|e| e.seq > seq).collect();
    let kinds: Vec<&str> = after.iter().map(|e| e.body.kind()).collect();
    let rolled = kinds.iter().position(|k| *k == "fix_rolled_back");
    let stopping = kinds.iter().position(|k| *k == "agent_stopping");
    assert!(
        rolled.is_some() && rolled < stopping,
        "rolled back, then stopped: {kinds:?}"
    );
    let EventBody::FixRolledBack { reason, .. } = &after[rolled.unwrap()].body else {
        unreachable!()
    };
    assert!(
        reason.contains("stopped before the health gate finished"),
        "{reason}"
    );
    assert_listing(&node, &[SCHED]);
}

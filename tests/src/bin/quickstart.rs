//! The quick start: the whole pipeline on one machine, on an embedded default.
//!
//! ```text
//! cargo run -q -p lockdown-e2e --bin quickstart
//! ```
//!
//! 1. builds the binaries (the same profile as this one);
//! 2. makes a development CA, and starts `lockdown-collector serve` on loopback with SQLite
//!    and mutual TLS;
//! 3. makes a sandbox copy of a kubeadm 1.31 node's manifests, with the kubelet double
//!    running a stand-in component for each (it serves the manifest's probes);
//! 4. starts `lockdown-agent run` on it, shipping to the collector, with `fix.mode: enforce`;
//! 5. follows the collector's event stream (`lockdown-collector events --follow`) and prints
//!    what arrives: the safe fixes made at start, then the drift when the test makes
//!    kube-scheduler insecure, and its fix behind the health gate;
//! 6. asks the collector the morning question (`nodes`, `summary`, `findings`);
//! 7. stops everything and removes the sandbox.

use std::fs;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use lockdown_e2e::collector::{Collector, Pki};
use lockdown_e2e::kubelet::{Kubelet, sandbox_manifest, write_manifest};
use lockdown_e2e::node::Node;

const NODE: &str = "cp-1";

fn main() {
    build_binaries();
    println!("== kube-lockdown quick start ==");
    let pki = Pki::new(&[NODE]);
    let collector = Collector::new(&pki, "");
    println!(
        "collector: https://{} (SQLite {}, mutual TLS with a development CA)",
        collector.addr,
        collector.db.display()
    );
    let node = Node::named(
        NODE,
        &format!(
            "{}\nfix:\n  mode: enforce\n  health_timeout: 15s",
            pki.agent_config(collector.addr, NODE)
        ),
    );
    for name in [
        "kube-apiserver.yaml",
        "kube-controller-manager.yaml",
        "kube-scheduler.yaml",
        "etcd.yaml",
    ] {
        let text = fs::read_to_string(node.manifest(name)).unwrap();
        write_manifest(&node, name, &sandbox_manifest(&text, 1, 2));
    }
    let kubelet = Kubelet::start(
        &node.manifests,
        &node.root.path().join("containers.log"),
        &[],
    );
    println!(
        "node {NODE}: kubeadm 1.31 manifests in {} (a kubelet double runs a stand-in for each)",
        node.manifests.display()
    );

    // Follow the collector's stream.
    let mut follow = pki
        .reader_command(
            collector.addr,
            &pki,
            &["events", "--follow", "--format", "json"],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("lockdown-collector events --follow");
    let (tx, rx) = mpsc::channel::<serde_json::Value>();
    let out = follow.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                print_event(&v);
                if tx.send(v).is_err() {
                    break;
                }
            }
        }
    });

    println!("\n-- starting lockdown-agent run (fix.mode: enforce) --");
    let agent = node.start();
    // Every safe fix at start, one component at a time, each behind its health gate.
    let scheduler = node.manifest("kube-scheduler.yaml").display().to_string();
    wait(&rx, Duration::from_secs(120), |seen| {
        let count = |kinds: &[&str]| {
            seen.iter()
                .filter(|e| kinds.iter().any(|k| e["kind"] == *k))
                .count()
        };
        let scheduler_done = seen
            .iter()
            .any(|e| e["kind"] == "fix_verified" && e["path"] == scheduler.as_str());
        scheduler_done && count(&["fix_applied"]) == count(&["fix_verified", "fix_rolled_back"])
    });

    println!("\n-- making kube-scheduler insecure: --profiling=true, --bind-address=0.0.0.0 --");
    let path = node.manifest("kube-scheduler.yaml");
    let text = fs::read_to_string(&path)
        .unwrap()
        .replace("--profiling=false", "--profiling=true")
        .replace("--bind-address=127.0.0.1", "--bind-address=0.0.0.0");
    write_manifest(&node, "kube-scheduler.yaml", &text);
    // As long as the first wait: on a loaded 2-core machine (CI runs the booted-systemd test
    // alongside) a fix and its health gate have taken over a minute.
    wait(&rx, Duration::from_secs(120), |seen| {
        seen.iter()
            .any(|e| e["kind"] == "fix_verified" && e["path"] == scheduler.as_str())
    });

    println!("\n-- lockdown-collector nodes --");
    let out = pki
        .reader_command(collector.addr, &pki, &["nodes"])
        .output()
        .unwrap();
    print!("{}", String::from_utf8_lossy(&out.stdout));
    for (title, args) in [
        ("lockdown-collector summary", &["summary"][..]),
        (
            "lockdown-collector findings --min-severity medium",
            &["findings", "--min-severity", "medium"][..],
        ),
    ] {
        println!("\n-- {title} --");
        let out = pki
            .reader_command(collector.addr, &pki, args)
            .output()
            .unwrap();
        print!("{}", String::from_utf8_lossy(&out.stdout));
    }
    println!("\n-- lockdown-agent status --");
    let out = Command::new(lockdown_e2e::bin("lockdown-agent"))
        .arg("--config")
        .arg(&node.config)
        .arg("status")
        .output()
        .unwrap();
    print!("{}", String::from_utf8_lossy(&out.stdout));

    let _ = follow.kill();
    let _ = follow.wait();
    drop(agent);
    drop(kubelet);
    drop(collector);
    println!(
        "\nDone. The bind-address drift stays a finding: its fix is not marked safe unattended \
         (name it in fix.rules to apply it). Try it on your copy: README, \"Fixing\"."
    );
}

/// Builds the agent, the collector and the stand-ins, so that this one command is enough.
fn build_binaries() {
    // The tests run this with everything built already (and a build with another package
    // selection could change feature sets and replace binaries other tests are running).
    if std::env::var_os("QUICKSTART_NO_BUILD").is_some() {
        return;
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args([
        "build",
        "-q",
        "-p",
        "lockdown-agent",
        "-p",
        "lockdown-collector",
        "-p",
        "lockdown-e2e",
        "--bins",
    ]);
    if !cfg!(debug_assertions) {
        cmd.arg("--release");
    }
    let status = cmd.status().expect("cargo build");
    assert!(status.success(), "cargo build failed");
}

/// Waits until `done` holds for the events seen so far.
fn wait(
    rx: &mpsc::Receiver<serde_json::Value>,
    limit: Duration,
    mut done: impl FnMut(&[serde_json::Value]) -> bool,
) {
    let deadline = Instant::now() + limit;
    let mut seen = Vec::new();
    while !done(&seen) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(v) => seen.push(v),
            Err(_) => panic!("timed out waiting for the collector's events"),
        }
    }
}

fn print_event(e: &serde_json::Value) {
    let kind = e["kind"].as_str().unwrap_or("?");
    let path = e["path"]
        .as_str()
        .and_then(|p| p.rsplit('/').next())
        .unwrap_or("");
    let detail = match kind {
        "finding_raised" | "finding_resolved" => format!(
            "{} [{}] {}",
            e["finding"]["rule_id"].as_str().unwrap_or(""),
            e["finding"]["severity"].as_str().unwrap_or(""),
            e["finding"]["title"].as_str().unwrap_or("")
        ),
        "fix_planned" | "fix_applied" | "fix_quarantined" => {
            e["rules"].to_string().replace('"', "")
        }
        "fix_verified" => e["health"].as_str().unwrap_or("").to_string(),
        "fix_rolled_back" => e["reason"].as_str().unwrap_or("").to_string(),
        "fix_skipped" => format!(
            "{}: {}",
            e["rule_id"].as_str().unwrap_or("-"),
            e["reason"].as_str().unwrap_or("")
        ),
        "agent_started" => format!("{} files tracked", e["files"]),
        _ => String::new(),
    };
    println!("  #{:<4} {:<17} {:<29} {detail}", e["seq"], kind, path);
    if kind == "file_modified"
        && let Some(diff) = e["diff"].as_str()
    {
        for line in diff.lines().filter(|l| {
            (l.starts_with('+') || l.starts_with('-'))
                && !l.starts_with("+++")
                && !l.starts_with("---")
        }) {
            println!("          {line}");
        }
    }
}

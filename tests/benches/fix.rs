//! Fix benchmark (issue 5): an insecure write → the hardened file on disk, with the health
//! gate's wait excluded (each iteration waits for the verdict before the next write).
//!
//! ```text
//! cargo build --release -p lockdown-agent
//! cargo bench -p lockdown-e2e --bench fix    # FIX_RUNS=100 by default
//! ```
//!
//! fake-component serves the manifest's probes (started once, as the kubelet double would
//! start it, but not restarted on every write), with 1 s probe periods and a failure
//! threshold of 1, so that a gate takes about a second. Two figures per write:
//! - renamed: the hardened file is in place (seen through inotify on the directory);
//! - durable: renamed, then the benchmark's own fsync of the directory has returned (whoever
//!   fsyncs it makes the rename durable, so this bounds the agent's own fsync from above);
//! - committed: `fix_applied` is committed in the spool, which the agent writes only after the
//!   file and the directory are fsynced (so this adds the spool's own commit).
//!
//! Prints markdown for BENCHMARKS.md.

use std::fs;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use lockdown_agent::spool::SpoolReader;
use lockdown_e2e::kubelet::{
    SCHED, fake_container, fix_node, hardened, scheduler_manifest, write_manifest,
};
use lockdown_e2e::measure::machine;
use notify::Watcher;

fn main() {
    let runs: usize = std::env::var("FIX_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100);
    println!("machine: {}", machine());
    let node = fix_node("  mode: enforce\n  fight_max: 1000000");
    let insecure = scheduler_manifest(0, 1);
    let secure = hardened(&insecure);
    write_manifest(&node, SCHED, &insecure);
    let path = node.manifest(SCHED);
    // The component runs once, for the whole run: the gate finds it healthy, and the machine
    // is not also busy restarting it on every write (a kubelet would; that is its cost, not
    // the agent's).
    let mut component = fake_container(secure.as_bytes(), &node.root.path().join("containers.log"))
        .unwrap()
        .spawn()
        .unwrap();
    let agent = node.start();
    let reader = SpoolReader::open(&node.state).unwrap();
    let verified = |after: u64| {
        agent.wait_for_within(Duration::from_secs(60), after, |ev| {
            ev.iter().any(|e| e.body.kind() == "fix_verified")
        })
    };
    verified(0);
    let (tx, rx) = mpsc::channel();
    let mut watcher = notify::recommended_watcher(move |e| {
        let _ = tx.send(e);
    })
    .unwrap();
    // The manifests directory: the wait for the rename is woken by inotify, so the benchmark
    // does not spin against the agent.
    watcher
        .watch(&node.manifests, notify::RecursiveMode::NonRecursive)
        .unwrap();
    let mut renamed = Vec::with_capacity(runs);
    let mut synced = Vec::with_capacity(runs);
    let mut durable = Vec::with_capacity(runs);
    for _ in 0..runs {
        let from = reader.last_seq().unwrap();
        while rx.try_recv().is_ok() {}
        let t0 = Instant::now();
        write_manifest(&node, SCHED, &insecure);
        loop {
            let _ = rx.recv_timeout(Duration::from_millis(50));
            if fs::read_to_string(&path).is_ok_and(|t| t == secure) {
                renamed.push(t0.elapsed());
                // Whoever fsyncs the directory makes the rename durable: once this returns,
                // the hardened file is on disk (an upper bound of the agent's own fsync).
                fs::File::open(&node.manifests).unwrap().sync_all().unwrap();
                synced.push(t0.elapsed());
                break;
            }
            assert!(t0.elapsed() < Duration::from_secs(30), "not fixed");
        }
        loop {
            let events = reader.read_from(from + 1, 10_000).unwrap();
            if events.iter().any(|e| e.body.kind() == "fix_applied") {
                durable.push(t0.elapsed());
                break;
            }
            // Polled every millisecond: the spool's WAL writes do not reliably wake an
            // inotify wait here, which made this row 50 ms slower than the agent's own log.
            std::thread::sleep(Duration::from_millis(1));
        }
        verified(from);
    }
    let _ = component.kill();
    let _ = component.wait();
    println!();
    println!("| measure | p50 | p99 | max | n |");
    println!("|---|---|---|---|---|");
    row(
        "insecure write → hardened file renamed into place",
        &mut renamed,
    );
    row(
        "insecure write → hardened file durable (renamed, directory fsynced)",
        &mut synced,
    );
    row(
        "insecure write → fix_applied committed in the spool (after the agent's fsyncs)",
        &mut durable,
    );
}

fn row(name: &str, v: &mut [Duration]) {
    v.sort();
    let q = |p: f64| v[((v.len() as f64 - 1.0) * p).round() as usize];
    println!(
        "| {name} | {:.2} ms | {:.2} ms | {:.2} ms | {} |",
        q(0.5).as_secs_f64() * 1e3,
        q(0.99).as_secs_f64() * 1e3,
        v[v.len() - 1].as_secs_f64() * 1e3,
        v.len()
    );
}

//! Daemon benchmark (issue 3): write → event durable in the spool, agent memory and CPU at
//! rest and under a write storm, and in the same run the detection latency of inotifywait
//! and of AIDE on the same directory.
//!
//! ```text
//! cargo build --release -p lockdown-agent
//! cargo bench -p lockdown-e2e --bench daemon    # REST_SECS=60 STORM_SECS=10 SETTLE=2ms by default
//! ```
//!
//! Needs the Debian packages inotify-tools and aide for the comparison rows (skipped with a
//! note when absent). Prints markdown for BENCHMARKS.md.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lockdown_agent::integrity::sha256_hex;
use lockdown_agent::spool::SpoolReader;
use lockdown_e2e::measure::{cpu_ns, machine, rss_kb};
use lockdown_e2e::node::Node;

const WRITES: usize = 1000;

fn main() {
    let rest = env_secs("REST_SECS", 60);
    let storm = env_secs("STORM_SECS", 10);
    println!("machine: {}", machine());
    println!();
    println!("| measure | p50 | p99 | max | n |");
    println!("|---|---|---|---|---|");

    // SETTLE=1ms runs with a shorter settle time than the default 2ms.
    let settle = std::env::var("SETTLE")
        .map(|s| format!("settle: {s}"))
        .unwrap_or_default();
    println!(
        "settle: {}",
        if settle.is_empty() {
            "default (2ms)"
        } else {
            &settle
        }
    );
    let node = Node::kubeadm_full(&settle);
    let agent = node.start();
    let target = node.manifest("kube-scheduler.yaml");
    let base = fs::read_to_string(&target).unwrap();
    let text = |i: usize| {
        base.replace(
            "    - kube-scheduler\n",
            &format!("    - kube-scheduler\n    - --v={i}\n"),
        )
    };
    let reader = SpoolReader::open(&node.state).unwrap();

    // 1. write -> event durable in the spool.
    let mut lat = Vec::with_capacity(WRITES);
    for i in 0..WRITES {
        let t = text(i);
        let want = sha256_hex(t.as_bytes());
        let from = reader.last_seq().unwrap() + 1;
        let t0 = Instant::now();
        fs::write(&target, &t).unwrap();
        wait_for_sha(&reader, from, &want);
        lat.push(t0.elapsed());
    }
    row("lockdown-agent: write → event durable in spool", &mut lat);

    // 2. Same writes, inotifywait -m on the same directory: write → line printed.
    match inotifywait_latency(&node.manifests, &target, &text) {
        Some(mut l) => row(
            "inotifywait -m: write → event line (no hash, no diff, not durable)",
            &mut l,
        ),
        None => println!("| inotifywait | not installed (apt-get install inotify-tools) | | | |"),
    }

    // 3. AIDE: aide --check back to back (the tightest timer possible): write → report.
    match aide_latency(&node, &target, &text) {
        Some((mut runs, mut l)) => {
            row("aide --check: one run over the manifests dir", &mut runs);
            row(
                "aide --check in a back-to-back loop: write → report",
                &mut l,
            );
        }
        None => println!("| aide | not installed (apt-get install aide) | | | |"),
    }
    println!();

    // 4. At rest.
    let pid = agent.child.id();
    let cpu0 = cpu_ns(pid);
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(rest));
    let at_rest = (cpu_ns(pid) - cpu0) as f64 / t0.elapsed().as_nanos() as f64 * 100.0;
    let (rss, hwm) = rss_kb(pid);
    println!(
        "at rest for {rest} s ({} tracked paths, {} watched directories, one periodic rescan per 60 s): CPU {at_rest:.3}% of a core (10 ms tick resolution), RSS {} KiB (peak {} KiB)",
        agent.status().files.len(),
        agent.status().watched_dirs.len(),
        rss,
        hwm
    );

    // 5. Storm: 1000 writes per second.
    let seq0 = reader.last_seq().unwrap();
    let cpu0 = cpu_ns(pid);
    let t0 = Instant::now();
    let mut n = 0usize;
    let mut last = String::new();
    while t0.elapsed() < Duration::from_secs(storm) {
        last = text(100_000 + n);
        fs::write(&target, &last).unwrap();
        n += 1;
        let next = t0 + Duration::from_micros(1000 * n as u64);
        if let Some(d) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
    }
    let wall = t0.elapsed();
    wait_for_sha(&reader, seq0 + 1, &sha256_hex(last.as_bytes()));
    let storm_cpu = (cpu_ns(pid) - cpu0) as f64 / wall.as_nanos() as f64 * 100.0;
    let events = reader.last_seq().unwrap() - seq0;
    let (rss, hwm) = rss_kb(pid);
    println!(
        "storm: {n} writes in {:.1} s ({:.0}/s): agent CPU {storm_cpu:.1}% of a core, {events} events (coalesced), final state correct, RSS {rss} KiB (peak {hwm} KiB)",
        wall.as_secs_f64(),
        n as f64 / wall.as_secs_f64()
    );

    // 6. Stop: SIGTERM → exit, after flushing agent_stopping.
    let t0 = Instant::now();
    let status = agent.stop();
    println!(
        "SIGTERM → exit {status}: {:.1} ms",
        t0.elapsed().as_secs_f64() * 1000.0
    );
}

fn env_secs(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn wait_for_sha(reader: &SpoolReader, from: u64, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = from - 1;
    loop {
        // A one-row query while nothing is new, so that the poller steals little CPU from the
        // agent on a two-core machine.
        let last = reader.last_seq().unwrap();
        if last == seen {
            assert!(Instant::now() < deadline, "no event for {want}");
            std::thread::sleep(Duration::from_micros(50));
            continue;
        }
        seen = last;
        for e in reader.read_from(from, 1000).unwrap() {
            let json = serde_json::to_string(&e).unwrap();
            if e.body.kind() == "file_modified"
                && json.contains(&format!(
                    "\"after\":{{\"kind\":\"file\",\"sha256\":\"{want}\""
                ))
            {
                return;
            }
        }
        assert!(Instant::now() < deadline, "no event for {want}");
        std::thread::sleep(Duration::from_micros(50));
    }
}

fn row(name: &str, lat: &mut [Duration]) {
    lat.sort();
    let ms = |d: Duration| format!("{:.2} ms", d.as_secs_f64() * 1000.0);
    let pct = |p: f64| {
        lat[((lat.len() as f64 * p).ceil() as usize)
            .saturating_sub(1)
            .min(lat.len() - 1)]
    };
    println!(
        "| {name} | {} | {} | {} | {} |",
        ms(pct(0.50)),
        ms(pct(0.99)),
        ms(*lat.last().unwrap()),
        lat.len()
    );
}

fn inotifywait_latency(
    dir: &Path,
    target: &Path,
    text: &dyn Fn(usize) -> String,
) -> Option<Vec<Duration>> {
    let mut child = Command::new("inotifywait")
        .args([
            "-m",
            "-e",
            "close_write,moved_to,create,delete,attrib",
            "--format",
            "%w%f",
        ])
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .ok()?;
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    while !line.contains("Watches established") {
        line.clear();
        if err.read_line(&mut line).ok()? == 0 {
            return None;
        }
    }
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut lat = Vec::with_capacity(WRITES);
    for i in 0..WRITES {
        let t = text(200_000 + i);
        let t0 = Instant::now();
        let mut f = fs::File::create(target).unwrap();
        f.write_all(t.as_bytes()).unwrap();
        drop(f); // close_write
        line.clear();
        out.read_line(&mut line).unwrap();
        lat.push(t0.elapsed());
    }
    let _ = child.kill();
    let _ = child.wait();
    Some(lat)
}

fn aide_latency(
    node: &Node,
    target: &Path,
    text: &dyn Fn(usize) -> String,
) -> Option<(Vec<Duration>, Vec<Duration>)> {
    Command::new("aide").arg("--version").output().ok()?;
    let dir = node.root.path().join("aide");
    fs::create_dir_all(&dir).unwrap();
    let conf = dir.join("aide.conf");
    fs::write(
        &conf,
        format!(
            "database_in=file:{d}/aide.db\ndatabase_out=file:{d}/aide.db.new\ndatabase_new=file:{d}/aide.db.new\ngzip_dbout=no\nreport_url=stdout\nKL = p+i+n+u+g+s+m+c+sha256\n{m} KL\n{k} KL\n",
            d = dir.display(),
            m = node.manifests.display(),
            k = node.kubernetes.display(),
        ),
    )
    .unwrap();
    let aide = |args: &[&str]| {
        Command::new("aide")
            .arg("--config")
            .arg(&conf)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap()
    };
    aide(&["--init"]);
    fs::rename(dir.join("aide.db.new"), dir.join("aide.db")).unwrap();
    let mut runs = Vec::new();
    for _ in 0..20 {
        let t0 = Instant::now();
        aide(&["--check"]);
        runs.push(t0.elapsed());
    }
    // Back-to-back checks; a write lands at a random point in a run and is reported by the
    // next run that starts after it (exit code != 0 means differences found).
    let mut lat = Vec::new();
    for i in 0..20 {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let conf2 = conf.clone();
        let s2 = stop.clone();
        let looper = std::thread::spawn(move || {
            while !s2.load(std::sync::atomic::Ordering::SeqCst) {
                let st = Command::new("aide")
                    .arg("--config")
                    .arg(&conf2)
                    .arg("--check")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .unwrap();
                if !st.success() {
                    let _ = tx.send(Instant::now());
                    return;
                }
            }
        });
        std::thread::sleep(Duration::from_millis(3 + (i * 7 % 23) as u64));
        let t0 = Instant::now();
        fs::write(target, text(300_000 + i)).unwrap();
        let seen = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("aide reports the change");
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        looper.join().unwrap();
        lat.push(seen - t0);
        aide(&["--init"]);
        fs::rename(dir.join("aide.db.new"), dir.join("aide.db")).unwrap();
    }
    Some((runs, lat))
}

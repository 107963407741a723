//! Collector benchmark (issue 4): manifest write → event committed at the collector over
//! mTLS; durable ingest rate with 1, 10 and 100 agents streaming at once; collector memory
//! with 1,000 idle connected agents.
//!
//! ```text
//! cargo build --release -p lockdown-agent -p lockdown-collector
//! cargo bench -p lockdown-e2e --bench collector
//! ```
//!
//! The ingest and idle rows use simulated agents (real gRPC streams over mTLS, each with its
//! own node certificate, sending synthetic events) so that the collector, not the agents, is
//! what is measured. Prints markdown for BENCHMARKS.md.

use std::time::Duration;

use lockdown_e2e::collector::{Collector, Pki, free_addr};
use lockdown_e2e::measure::{machine, rss_kb};
use lockdown_e2e::node::Node;
use lockdown_e2e::sim::{open_stream, stream_all, tls, write_to_commit};
use tokio::sync::mpsc;

const NO_RATE_LIMIT: &str = "limits: {max_events_per_second_per_node: 100000000}";

fn main() {
    println!("machine: {}", machine());
    latency();
    let rt = tokio::runtime::Runtime::new().unwrap();
    ingest(&rt);
    idle(&rt);
}

fn latency() {
    let pki = Pki::new(&["cp-1"]);
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let col = Collector::start(&pki, dir.path(), addr, "");
    let node = Node::new(&pki.agent_config(addr, "cp-1"));
    let agent = node.start();
    use lockdown_collector::store::EventStore as _;
    let store = lockdown_collector::store::Store::open(&col.db).unwrap();
    let lat = write_to_commit(&node, &agent, || store.acked("cp-1").unwrap(), 500);
    let ms = |d: Duration| format!("{:.2} ms", d.as_secs_f64() * 1000.0);
    println!(
        "\nmanifest write → event committed at the collector (mTLS, loopback), n={}: p50 {}, p99 {}, max {}",
        lat.len(),
        ms(lat[lat.len() / 2]),
        ms(lat[lat.len() * 99 / 100]),
        ms(*lat.last().unwrap())
    );
}

fn ingest(rt: &tokio::runtime::Runtime) {
    println!("\n| agents streaming at once | events | batch | wall | durable ingest rate |");
    println!("|---|---|---|---|---|");
    let names: Vec<String> = (0..100).map(|i| format!("n{i:03}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let pki = Pki::new(&refs);
    for (agents, per_agent) in [(1usize, 200_000u64), (10, 20_000), (100, 2_000)] {
        let dir = tempfile::tempdir().unwrap();
        let addr = free_addr();
        let _col = Collector::start(&pki, dir.path(), addr, NO_RATE_LIMIT);
        let address = format!("https://localhost:{}", addr.port());
        let wall = stream_all(rt, &pki, &names[..agents], &[address], per_agent);
        let total = agents as u64 * per_agent;
        println!(
            "| {agents} | {total} | 500 | {:.2} s | {:.0} events/s |",
            wall.as_secs_f64(),
            total as f64 / wall.as_secs_f64()
        );
    }
}

fn idle(rt: &tokio::runtime::Runtime) {
    let names: Vec<String> = (0..1000).map(|i| format!("idle{i:04}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let pki = Pki::new(&refs);
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let col = Collector::start(&pki, dir.path(), addr, "");
    let pid = col.child.as_ref().unwrap().id();
    let before = rss_kb(pid);
    let address = format!("https://localhost:{}", addr.port());
    let (ready_tx, mut ready_rx) = mpsc::channel::<()>(1000);
    let _streams: Vec<_> = names
        .iter()
        .map(|n| {
            let (address, tls, n, ready) =
                (address.clone(), tls(&pki, n), n.clone(), ready_tx.clone());
            rt.spawn(async move {
                let (tx, mut inbound) = open_stream(&address, &tls, &n).await;
                let _ = inbound.message().await; // the first ack: the stream is accepted
                ready.send(()).await.unwrap();
                let _keep = tx;
                let _ = inbound.message().await;
            })
        })
        .collect();
    rt.block_on(async {
        for _ in 0..names.len() {
            ready_rx.recv().await.unwrap();
        }
    });
    std::thread::sleep(Duration::from_secs(2));
    let (rss, hwm) = rss_kb(pid);
    println!(
        "\ncollector with {} idle connected agents (mTLS streams): RSS {} KiB (peak {} KiB); before any connection {} KiB",
        names.len(),
        rss,
        hwm,
        before.0
    );
}

//! Replicas benchmark (issue 17): durable ingest with 10 and 100 agents on PostgreSQL with
//! one and two collector replicas, beside SQLite in the same run; manifest write → event
//! committed on each backend; the memory of 10,000 connected agents spread over two replicas.
//!
//! ```text
//! cargo build --release -p lockdown-agent -p lockdown-collector
//! cargo bench -p lockdown-e2e --bench replicas
//! ```
//!
//! PostgreSQL is the Debian package's, started by the bench in a temporary directory with its
//! defaults (fsync on, `synchronous_commit=on`): an ack follows a durable commit, as with
//! SQLite's `synchronous=FULL`. Everything shares the same two cores. Prints markdown.

use std::time::{Duration, Instant};

use lockdown_collector::testing::PgServer;
use lockdown_e2e::collector::{Collector, Pki, postgres};
use lockdown_e2e::measure::{machine, rss_kb};
use lockdown_e2e::node::Node;
use lockdown_e2e::sim::{open_stream, stream_all, tls, write_to_commit};
use tokio::sync::mpsc;

const NO_RATE_LIMIT: &str = "limits: {max_events_per_second_per_node: 100000000}";

fn main() {
    println!("machine: {}", machine());
    let rt = tokio::runtime::Runtime::new().unwrap();
    ingest(&rt);
    latency();
    idle(&rt);
}

/// Where a row's collectors store.
#[derive(Clone, Copy, PartialEq)]
enum Backend {
    Sqlite,
    Postgres,
}

fn ingest(rt: &tokio::runtime::Runtime) {
    println!("\n| store | replicas | agents | events | wall | durable ingest rate |");
    println!("|---|---|---|---|---|---|");
    let names: Vec<String> = (0..100).map(|i| format!("n{i:03}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let pki = Pki::new(&refs);
    let pg = PgServer::start();
    for (backend, replicas) in [
        (Backend::Sqlite, 1),
        (Backend::Postgres, 1),
        (Backend::Postgres, 2),
    ] {
        for (agents, per_agent) in [(10usize, 20_000u64), (100, 2_000)] {
            let url = pg.database();
            let collectors: Vec<Collector> = (0..replicas)
                .map(|_| match backend {
                    Backend::Sqlite => Collector::new(&pki, NO_RATE_LIMIT),
                    Backend::Postgres => Collector::on_postgres(&pki, &url, NO_RATE_LIMIT),
                })
                .collect();
            let addresses: Vec<String> = collectors
                .iter()
                .map(|c| format!("https://localhost:{}", c.addr.port()))
                .collect();
            let wall = stream_all(rt, &pki, &names[..agents], &addresses, per_agent);
            let total = agents as u64 * per_agent;
            println!(
                "| {} | {replicas} | {agents} | {total} | {:.2} s | {:.0} events/s |",
                if backend == Backend::Sqlite {
                    "SQLite"
                } else {
                    "PostgreSQL"
                },
                wall.as_secs_f64(),
                total as f64 / wall.as_secs_f64()
            );
        }
    }
}

/// A real agent editing a manifest; the time until its event is committed (the node's ack
/// in the store moves past it).
fn latency() {
    let pki = Pki::new(&["cp-1"]);
    let pg = PgServer::start();
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let url = pg.database();
        let col = match backend {
            Backend::Sqlite => Collector::new(&pki, ""),
            Backend::Postgres => Collector::on_postgres(&pki, &url, ""),
        };
        let store: Box<dyn lockdown_collector::store::EventStore> = match backend {
            Backend::Sqlite => Box::new(lockdown_collector::store::Store::open(&col.db).unwrap()),
            Backend::Postgres => Box::new(postgres(&url)),
        };
        let node = Node::new(&pki.agent_config(col.addr, "cp-1"));
        let agent = node.start();
        let lat = write_to_commit(&node, &agent, || store.acked("cp-1").unwrap(), 300);
        let ms = |d: Duration| format!("{:.2} ms", d.as_secs_f64() * 1000.0);
        println!(
            "\n{}: manifest write → event committed (real agent, one replica), n={}: p50 {}, p99 {}, max {}",
            if backend == Backend::Sqlite {
                "SQLite"
            } else {
                "PostgreSQL"
            },
            lat.len(),
            ms(lat[lat.len() / 2]),
            ms(lat[lat.len() * 99 / 100]),
            ms(*lat.last().unwrap())
        );
    }
}

/// 10,000 agents connected, half to each of two replicas on one PostgreSQL.
fn idle(rt: &tokio::runtime::Runtime) {
    const AGENTS: usize = 10_000;
    let names: Vec<String> = (0..AGENTS).map(|i| format!("idle{i:05}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let pki = Pki::new(&refs);
    let pg = PgServer::start();
    let url = pg.database();
    let replicas = [
        Collector::on_postgres(&pki, &url, ""),
        Collector::on_postgres(&pki, &url, ""),
    ];
    let pids: Vec<u32> = replicas
        .iter()
        .map(|c| c.child.as_ref().unwrap().id())
        .collect();
    let before: Vec<u64> = pids.iter().map(|p| rss_kb(*p).0).collect();
    let (ready_tx, mut ready_rx) = mpsc::channel::<()>(AGENTS);
    let t0 = Instant::now();
    let _streams: Vec<_> = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let address = format!("https://localhost:{}", replicas[i % 2].addr.port());
            let (tls, n, ready) = (tls(&pki, n), n.clone(), ready_tx.clone());
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
        for _ in 0..AGENTS {
            ready_rx.recv().await.unwrap();
        }
    });
    let connected_in = t0.elapsed();
    std::thread::sleep(Duration::from_secs(2));
    for (i, pid) in pids.iter().enumerate() {
        let (rss, hwm) = rss_kb(*pid);
        println!(
            "\nreplica {} with {} connected agents (mTLS streams, PostgreSQL store): RSS {rss} KiB (peak {hwm} KiB); before any connection {} KiB",
            i + 1,
            AGENTS / 2,
            before[i]
        );
    }
    println!(
        "all {AGENTS} connected (hello answered) in {:.1} s",
        connected_in.as_secs_f64()
    );
}

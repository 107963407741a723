//! Sinks benchmark (issue 18): an event's way from the agent's send to a webhook on loopback,
//! and the ingest rate with three sinks on (webhook, syslog, Alertmanager) against none, in
//! the same run.
//!
//! ```text
//! cargo build --release -p lockdown-collector
//! cargo bench -p lockdown-e2e --bench sinks
//! ```
//!
//! The receivers are in this process: an HTTP server that answers every request 200 and
//! notes when each event id arrived, and a TCP reader that discards a syslog stream. The
//! senders are simulated agents (real gRPC over mutual TLS). Prints markdown.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lockdown_e2e::collector::{Collector, Pki};
use lockdown_e2e::measure::machine;
use lockdown_e2e::sim::{event, open_stream, stream_all, tls};
use lockdown_proto::v1::{AgentMessage, EventBatch, agent_message, collector_message};

const NO_RATE_LIMIT: &str = "limits: {max_events_per_second_per_node: 100000000}\n";

/// When each event (by seq) reached the HTTP receiver.
type Arrivals = Arc<Mutex<HashMap<u64, Instant>>>;

/// An HTTP receiver on a free port: 200 to everything, arrival times of webhook events.
fn http_receiver(arrivals: Arrivals) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let arrivals = Arc::clone(&arrivals);
            std::thread::spawn(move || {
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut line = String::new();
                let mut length = 0usize;
                loop {
                    line.clear();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let l = line.trim_end().to_ascii_lowercase();
                    if l.is_empty() {
                        break;
                    }
                    if let Some(v) = l.strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap();
                    }
                }
                let mut body = vec![0; length];
                reader.read_exact(&mut body).unwrap();
                let now = Instant::now();
                if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body)
                    && let Some(events) = v["events"].as_array()
                {
                    let mut a = arrivals.lock().unwrap();
                    for e in events {
                        a.entry(e["seq"].as_u64().unwrap()).or_insert(now);
                    }
                }
                let _ = conn.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
            });
        }
    });
    addr
}

/// A TCP reader that discards what it gets.
fn syslog_receiver() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            std::thread::spawn(move || {
                let mut buf = vec![0; 1 << 16];
                while conn.read(&mut buf).is_ok_and(|n| n > 0) {}
            });
        }
    });
    addr
}

fn main() {
    println!("machine: {}", machine());
    let rt = tokio::runtime::Runtime::new().unwrap();
    latency(&rt);
    ingest(&rt);
}

/// One event at a time from a simulated agent: send → ack, and send → at the webhook.
fn latency(rt: &tokio::runtime::Runtime) {
    let pki = Pki::new(&["cp-1"]);
    let arrivals: Arrivals = Default::default();
    let hook = http_receiver(Arc::clone(&arrivals));
    let col = Collector::new(
        &pki,
        &format!(
            "{NO_RATE_LIMIT}sinks:\n- {{name: hook, type: webhook, url: 'http://{hook}/hook'}}\n"
        ),
    );
    let address = format!("https://localhost:{}", col.addr.port());
    let (acked, delivered) = rt.block_on(async {
        let (tx, mut inbound) = open_stream(&address, &tls(&pki, "cp-1"), "cp-1").await;
        let _ = inbound.message().await; // the hello's ack
        let (mut acked, mut delivered) = (Vec::new(), Vec::new());
        for seq in 1..=520u64 {
            let t0 = Instant::now();
            tx.send(AgentMessage {
                msg: Some(agent_message::Msg::Events(EventBatch {
                    events: vec![event("cp-1", seq)],
                    covers_from: 0,
                })),
            })
            .await
            .unwrap();
            loop {
                match inbound.message().await.unwrap().unwrap().msg {
                    Some(collector_message::Msg::Ack(a)) if a.seq >= seq => break,
                    _ => {}
                }
            }
            let ack = t0.elapsed();
            let deadline = Instant::now() + Duration::from_secs(30);
            let at = loop {
                if let Some(t) = arrivals.lock().unwrap().get(&seq) {
                    break *t;
                }
                assert!(Instant::now() < deadline, "event {seq} never delivered");
                tokio::time::sleep(Duration::from_micros(100)).await;
            };
            if seq > 20 {
                acked.push(ack);
                delivered.push(at.duration_since(t0));
            }
        }
        (acked, delivered)
    });
    let pct = |v: &mut Vec<Duration>, p: usize| {
        v.sort();
        v[v.len() * p / 100].as_secs_f64() * 1000.0
    };
    let (mut acked, mut delivered) = (acked, delivered);
    println!(
        "\n| n={} (after 20 to warm up) | p50 | p99 |\n|---|---|---|\n| agent send → ack (committed) | {:.2} ms | {:.2} ms |\n| agent send → delivered to the webhook | {:.2} ms | {:.2} ms |",
        acked.len(),
        pct(&mut acked, 50),
        pct(&mut acked, 99),
        pct(&mut delivered, 50),
        pct(&mut delivered, 99),
    );
}

/// 10 simulated agents × 20,000 events with no sink, then with three.
fn ingest(rt: &tokio::runtime::Runtime) {
    let names: Vec<String> = (0..10).map(|i| format!("n{i:02}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let pki = Pki::new(&refs);
    let arrivals: Arrivals = Default::default();
    let http = http_receiver(arrivals);
    let syslog = syslog_receiver();
    let three = format!(
        "sinks:\n- {{name: hook, type: webhook, url: 'http://{http}/hook'}}\n- {{name: siem, type: syslog, url: 'tcp://{syslog}'}}\n- {{name: alerts, type: alertmanager, url: 'http://{http}'}}\n"
    );
    println!("\n| sinks | agents | events | wall | durable ingest rate |\n|---|---|---|---|---|");
    let mut rates = Vec::new();
    for round in 0..2 {
        for (label, extra) in [
            ("none", String::new()),
            ("webhook, syslog, alertmanager", three.clone()),
        ] {
            let col = Collector::new(&pki, &format!("{NO_RATE_LIMIT}{extra}"));
            let address = format!("https://localhost:{}", col.addr.port());
            let per_agent = 20_000u64;
            let wall = stream_all(rt, &pki, &names, &[address], per_agent);
            let total = names.len() as u64 * per_agent;
            let rate = total as f64 / wall.as_secs_f64();
            rates.push((round, label, rate));
            println!(
                "| {label} (round {}) | {} | {total} | {:.2} s | {rate:.0} events/s |",
                round + 1,
                names.len(),
                wall.as_secs_f64()
            );
        }
    }
    let mean = |l: &str| {
        let v: Vec<f64> = rates.iter().filter(|r| r.1 == l).map(|r| r.2).collect();
        v.iter().sum::<f64>() / v.len() as f64
    };
    let (none, three) = (mean("none"), mean("webhook, syslog, alertmanager"));
    println!(
        "\nwith three sinks: {:.2}× the ingest rate with none (mean of two rounds each)",
        three / none
    );
}

//! Fleet posture benchmark (issue 16): `ListFindings` and `Summary` answered by a real
//! collector over mTLS for 1,000 nodes with 30 open findings each (10 exceptions in force),
//! the cost of reconciling a hello's set in the store, and the dashboard's pages (issue 19)
//! for the same fleet, with their weight.
//!
//! ```text
//! cargo build --release -p lockdown-collector
//! cargo bench -p lockdown-e2e --bench posture
//! ```
//!
//! Prints markdown for BENCHMARKS.md.

use std::time::{Duration, Instant};

use lockdown_collector::store::{EventStore, Exception, NodeInfo, OpenFinding, Reconcile, Store};
use lockdown_e2e::collector::{Collector, Pki, free_addr};
use lockdown_e2e::measure::machine;
use lockdown_proto::ClientTls;
use lockdown_proto::v1::query_service_client::QueryServiceClient;
use lockdown_proto::v1::{FindingFilter, ListFindingsRequest, SummaryRequest};

const NODES: usize = 1_000;
const PER_NODE: usize = 30;
const SEVERITIES: [&str; 5] = ["info", "low", "medium", "high", "critical"];

/// A node's 30 open findings: 30 rules with CIS ids across sections 1.1 to 2.
fn findings(variant: usize) -> Vec<OpenFinding> {
    (0..PER_NODE)
        .map(|i| OpenFinding {
            path: format!("/etc/kubernetes/manifests/component-{}.yaml", i % 4),
            key: format!("rule-{i}"),
            rule_id: format!("rule-{i}"),
            cis: format!("1.{}.{}", 1 + i % 4, 1 + i / 4),
            title: format!("Check {i}"),
            severity: SEVERITIES[(i + variant) % 5].into(),
            status: if i % 7 == 0 { "warn" } else { "fail" }.into(),
            component: "kube-apiserver".into(),
            flag: format!("--flag-{i}"),
            observed: "true".into(),
            expected: "false".into(),
        })
        .collect()
}

fn cis_ids() -> Vec<String> {
    (0..40)
        .map(|i| format!("1.{}.{}", 1 + i % 4, 1 + i / 4))
        .collect()
}

fn pct(mut v: Vec<Duration>, p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn main() {
    println!("machine: {}\n", machine());
    let pki = Pki::new(&[]);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("events.db");
    let now = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
    let cis = cis_ids();
    let (mut added, mut moved, mut same) = (Vec::new(), Vec::new(), Vec::new());
    {
        let mut store = Store::open(&db).unwrap();
        for n in 0..NODES {
            let node = format!("cp-{n:04}");
            store
                .touch_node(&NodeInfo {
                    node: node.clone(),
                    cluster: format!("cluster-{}", n % 10),
                    last_seen: now.clone(),
                    component_versions: [("kube-apiserver".to_string(), "1.31.4".to_string())]
                        .into(),
                    ..Default::default()
                })
                .unwrap();
            let mut hello = |set: &[OpenFinding], out: &mut Vec<Duration>| {
                let t0 = Instant::now();
                store
                    .reconcile(&Reconcile {
                        node: &node,
                        epoch: 1,
                        as_of: 1,
                        findings: set,
                        checked_cis: &cis,
                        time: &now,
                    })
                    .unwrap();
                out.push(t0.elapsed());
            };
            hello(&findings(1), &mut added); // into an empty set
            hello(&findings(0), &mut moved); // every severity moved
            hello(&findings(0), &mut same); // the usual reconnect
        }
        for i in 0..10 {
            store
                .add_exception(&Exception {
                    rule_id: format!("rule-{i}"),
                    cluster: format!("cluster-{i}"),
                    max_severity: "critical".into(),
                    reason: "bench".into(),
                    author: "admin".into(),
                    created: now.clone(),
                    expires: "2099-01-01T00:00:00.000Z".into(),
                    ..Default::default()
                })
                .unwrap();
        }
    }
    println!("| reconcile a hello of {PER_NODE} findings (SQLite, synchronous=FULL) | p50 | p99 |");
    println!("|---|---|---|");
    for (what, v) in [
        ("first hello of a node (30 added)", added),
        ("30 differ (severities moved)", moved),
        ("nothing differs (the usual reconnect)", same),
    ] {
        println!(
            "| {what} | {} | {} |",
            ms(pct(v.clone(), 0.5)),
            ms(pct(v, 0.99))
        );
    }

    // Where a Summary's time goes, in this process (the store read twice first, warm).
    {
        let store = Store::open(&db).unwrap();
        let _ = store.finding_counts(&now).unwrap();
        let t0 = Instant::now();
        let counts = store.finding_counts(&now).unwrap();
        let t1 = Instant::now();
        let nodes = store.nodes().unwrap();
        let members = lockdown_collector::posture::members(
            nodes,
            &[],
            std::time::SystemTime::now(),
            Duration::from_secs(3600),
        );
        let t2 = Instant::now();
        let _ = lockdown_collector::posture::summarize(&members, &counts);
        println!(
            "\nSummary's parts in process: counting {} open findings {}, nodes {}, summing up {}",
            counts.iter().map(|c| c.count).sum::<u32>(),
            ms(t1 - t0),
            ms(t2 - t1),
            ms(t2.elapsed())
        );
    }
    let addr = free_addr();
    let dash = free_addr();
    let col = Collector::start(
        &pki,
        dir.path(),
        addr,
        &format!("nodes: {{stale_after: 1h}}\ndashboard: {{listen: {dash}}}"),
    );
    let mut summary_p50 = Duration::ZERO;
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let tls = ClientTls {
            ca: pki.path("ca.crt"),
            cert: pki.path("reader.crt"),
            key: pki.path("reader.key"),
            server_name: Some("localhost".into()),
        };
        let channel = lockdown_proto::endpoint(&format!("https://127.0.0.1:{}", addr.port()), Some(&tls))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut c = QueryServiceClient::new(channel).max_decoding_message_size(64 << 20);
        let total = NODES * PER_NODE;
        let all = c
            .summary(SummaryRequest {})
            .await
            .unwrap()
            .into_inner();
        let fleet = all.fleet.unwrap();
        let open: u32 = fleet.open_by_severity.values().sum();
        assert_eq!(open as usize, total);
        assert!(fleet.excepted > 0);
        println!(
            "\n{NODES} nodes x {PER_NODE} open findings = {total}; {} excepted; over mTLS on loopback, 300 calls each after 20 warm-up:\n",
            fleet.excepted
        );
        println!("| query | p50 | p99 | target |");
        println!("|---|---|---|---|");
        let filters = [
            ("ListFindings, first page of 100, no filter", FindingFilter::default()),
            (
                "ListFindings, one node",
                FindingFilter {
                    node: "cp-0500".into(),
                    ..Default::default()
                },
            ),
            (
                "ListFindings, CIS section 1.2, high and up, one cluster",
                FindingFilter {
                    cis: "1.2".into(),
                    min_severity: "high".into(),
                    cluster: "cluster-3".into(),
                    ..Default::default()
                },
            ),
            (
                "ListFindings, excepted only",
                FindingFilter {
                    excepted: "yes".into(),
                    ..Default::default()
                },
            ),
        ];
        for (what, filter) in filters {
            let mut v = Vec::new();
            for i in 0..320 {
                let t0 = Instant::now();
                let page = c
                    .list_findings(ListFindingsRequest {
                        filter: Some(filter.clone()),
                        page_size: 100,
                        page_token: String::new(),
                    })
                    .await
                    .unwrap()
                    .into_inner();
                assert!(!page.findings.is_empty());
                if i >= 20 {
                    v.push(t0.elapsed());
                }
            }
            println!("| {what} | {} | {} | < 50 ms |", ms(pct(v.clone(), 0.5)), ms(pct(v, 0.99)));
        }
        let mut v = Vec::new();
        for i in 0..320 {
            let t0 = Instant::now();
            let s = c.summary(SummaryRequest {}).await.unwrap().into_inner();
            assert_eq!(s.clusters.len(), 10);
            if i >= 20 {
                v.push(t0.elapsed());
            }
        }
        summary_p50 = pct(v.clone(), 0.5);
        println!("| Summary (fleet and 10 clusters, 40 CIS checks) | {} | {} | < 50 ms |", ms(pct(v.clone(), 0.5)), ms(pct(v, 0.99)));
    });
    dashboard(&pki, dash, summary_p50);
    drop(col);
}

/// The dashboard's pages for the same fleet: HTTPS with a reader's certificate, a new
/// connection (and TLS handshake) per request, as a browser's first visit.
fn dashboard(pki: &Pki, dash: std::net::SocketAddr, summary_p50: Duration) {
    let reader = (pki.path("reader.crt"), pki.path("reader.key"));
    let get = |path: &str| {
        lockdown_e2e::browser::https(
            dash,
            &pki.path("ca.crt"),
            Some((&reader.0, &reader.1)),
            &format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"),
        )
    };
    println!(
        "\nDashboard pages for the same fleet, 100 requests each after 10 warm-up (HTTPS, a new connection each):\n"
    );
    println!("| page | p50 | p99 | weight | target |");
    println!("|---|---|---|---|---|");
    for (what, path) in [
        ("fleet (`/`)", "/"),
        (
            "findings, first page of 100 with facets of all 30,000",
            "/findings",
        ),
        (
            "findings, CIS 1.2, high, one cluster",
            "/findings?cis=1.2&severity=high&cluster=cluster-3",
        ),
        ("findings, free text", "/findings?q=flag-7"),
        ("a node", "/nodes/cp-0500"),
        ("nodes, first page of 100", "/nodes"),
        (
            "nodes failing CIS section 1.2",
            "/nodes?section=1.2&result=fail",
        ),
        ("exceptions", "/exceptions"),
    ] {
        let mut v = Vec::new();
        let mut weight = 0;
        for i in 0..110 {
            let t0 = Instant::now();
            let (status, _, body) = get(path);
            assert_eq!(status, 200, "{path}: {body}");
            if i >= 10 {
                v.push(t0.elapsed());
            }
            weight = body.len();
        }
        let p50 = pct(v.clone(), 0.5);
        let ratio = if path == "/" {
            format!(
                " ({:.1}x Summary's p50)",
                p50.as_secs_f64() / summary_p50.as_secs_f64()
            )
        } else {
            String::new()
        };
        println!(
            "| {what} | {}{ratio} | {} | {:.1} KB | < 100 ms, < 200 KB |",
            ms(p50),
            ms(pct(v, 0.99)),
            weight as f64 / 1024.0
        );
    }
}

//! Simulated agents for the collector benchmarks: real gRPC streams over mutual TLS, each
//! with its own node certificate, sending synthetic finding events, so that the collector,
//! not the agents, is what is measured.

use std::time::Duration;

use lockdown_proto::ClientTls;
use lockdown_proto::v1::agent_service_client::AgentServiceClient;
use lockdown_proto::v1::{AgentMessage, EventBatch, Hello, agent_message, collector_message};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::collector::Pki;

/// The mutual TLS files of `node`.
pub fn tls(pki: &Pki, node: &str) -> ClientTls {
    ClientTls {
        ca: pki.path("ca.crt"),
        cert: pki.path(&format!("{node}.crt")),
        key: pki.path(&format!("{node}.key")),
        server_name: Some("localhost".into()),
    }
}

/// A finding event of about 450 bytes.
pub fn event(node: &str, seq: u64) -> lockdown_proto::v1::Event {
    let body = format!(
        r#"{{"seq":{seq},"node":"{node}","time":"2026-11-26T10:00:00.000Z","kind":"finding_raised","path":"/etc/kubernetes/manifests/kube-apiserver.yaml","finding":{{"rule_id":"apiserver-profiling","cis":"1.2.15","title":"Profiling is disabled","severity":"low","status":"fail","flag":"--profiling","observed":"true","expected":"false","remediation":"Set --profiling=false"}}}}"#
    );
    lockdown_proto::v1::Event {
        node: node.into(),
        seq,
        time: "2026-11-26T10:00:00.000Z".into(),
        kind: "finding_raised".into(),
        severity: "low".into(),
        rule_id: "apiserver-profiling".into(),
        path: "/etc/kubernetes/manifests/kube-apiserver.yaml".into(),
        body: body.into_bytes(),
        epoch: 0,
    }
}

/// Opens a Report stream as `node` and says hello; returns the sender and the answers.
pub async fn open_stream(
    address: &str,
    tls: &ClientTls,
    node: &str,
) -> (
    mpsc::Sender<AgentMessage>,
    tonic::Streaming<lockdown_proto::v1::CollectorMessage>,
) {
    let ch = lockdown_proto::endpoint(address, Some(tls))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = AgentServiceClient::new(ch)
        .max_decoding_message_size(16 << 20)
        .max_encoding_message_size(16 << 20);
    let (tx, rx) = mpsc::channel(8);
    tx.send(AgentMessage {
        msg: Some(agent_message::Msg::Hello(Hello {
            node: node.to_string(),
            first_unacked_seq: 1,
            spool_epoch: 1,
            ..Default::default()
        })),
    })
    .await
    .unwrap();
    let inbound = client
        .report(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    (tx, inbound)
}

/// One simulated agent: sends `total` events in batches of `batch`, keeping up to `window`
/// batches unacknowledged, and returns when the last is acknowledged.
pub async fn agent(address: String, tls: ClientTls, node: String, total: u64, batch: u64) {
    let (tx, mut inbound) = open_stream(&address, &tls, &node).await;
    let sender = tokio::spawn(async move {
        let mut seq = 0;
        while seq < total {
            let events = (seq + 1..=(seq + batch).min(total))
                .map(|s| event(&node, s))
                .collect();
            seq = (seq + batch).min(total);
            if tx
                .send(AgentMessage {
                    msg: Some(agent_message::Msg::Events(EventBatch {
                        events,
                        covers_from: 0,
                    })),
                })
                .await
                .is_err()
            {
                return;
            }
        }
        // keep the stream open until acks are in
        tokio::time::sleep(Duration::from_secs(3600)).await;
    });
    while let Some(m) = inbound.message().await.unwrap() {
        if let Some(collector_message::Msg::Ack(a)) = m.msg
            && a.seq >= total
        {
            break;
        }
    }
    sender.abort();
}

/// Edits `node`'s scheduler manifest `n` times, each after the last one's event was
/// committed; the time from each write until `acked()` (the node's ack in the store) passed
/// its event.
pub fn write_to_commit(
    node: &crate::node::Node,
    agent: &crate::node::Agent,
    acked: impl Fn() -> u64,
    n: usize,
) -> Vec<Duration> {
    use std::time::Instant;
    let target = node.manifest("kube-scheduler.yaml");
    let base = std::fs::read_to_string(&target).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while acked() < agent.last_seq() {
        assert!(
            Instant::now() < deadline,
            "the agent's first events were not committed"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut lat = Vec::with_capacity(n);
    for i in 0..n {
        let want = acked() + 1;
        let t0 = Instant::now();
        std::fs::write(
            &target,
            base.replace(
                "    - kube-scheduler\n",
                &format!("    - kube-scheduler\n    - --v={i}\n"),
            ),
        )
        .unwrap();
        while acked() < want {
            assert!(t0.elapsed() < Duration::from_secs(30), "no commit");
            std::thread::sleep(Duration::from_micros(50));
        }
        lat.push(t0.elapsed());
    }
    lat.sort();
    lat
}

/// Sends `per_agent` events from each of `names` at once (agent `i` to `addresses[i % n]`),
/// in batches of 500; the wall time until every one is acknowledged.
pub fn stream_all(
    rt: &tokio::runtime::Runtime,
    pki: &Pki,
    names: &[String],
    addresses: &[String],
    per_agent: u64,
) -> Duration {
    let t0 = std::time::Instant::now();
    rt.block_on(async {
        let tasks: Vec<_> = names
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let address = addresses[i % addresses.len()].clone();
                tokio::spawn(agent(address, tls(pki, n), n.clone(), per_agent, 500))
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    });
    t0.elapsed()
}

//! Agent → collector end to end: the real binaries, mutual TLS on loopback, kills and
//! restarts on both sides. Every test asserts the exact set of (node, seq) stored.

use std::fs;
use std::time::{Duration, Instant};

use lockdown_collector::store::{EventStore, Filter, Store};
use lockdown_e2e::collector::{Collector, Pki, holds_through, range};
use lockdown_e2e::node::{Agent, Node, WAIT};

fn scheduler_with(node: &Node, i: usize) -> String {
    fs::read_to_string(node.manifest("kube-scheduler.yaml"))
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("    - --v="))
        .map(|l| {
            if l == "    - kube-scheduler" {
                format!("{l}\n    - --v={i}\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect()
}

/// Writes a change and waits until the agent has spooled it. It watches the spool's last
/// sequence number, not the events: with a collector attached they may be shipped and
/// trimmed before the test looks.
fn change(node: &Node, agent: &Agent, i: usize) {
    let seq = agent.last_seq();
    fs::write(
        node.manifest("kube-scheduler.yaml"),
        scheduler_with(node, i),
    )
    .unwrap();
    let deadline = Instant::now() + WAIT;
    while agent.last_seq() <= seq {
        assert!(
            Instant::now() < deadline,
            "change {i} not spooled:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The shipper's last connection error, from the agent's status.
fn last_error(s: &lockdown_agent::status::Status) -> Option<&str> {
    s.collector.as_ref().and_then(|c| c.last_error.as_deref())
}

fn wait_status(agent: &Agent, what: &str, done: impl Fn(&lockdown_agent::status::Status) -> bool) {
    let deadline = Instant::now() + WAIT;
    loop {
        let s = agent.status();
        if done(&s) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: {s:?}\n{}", agent.log());
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn events_arrive_in_order_over_mtls_and_the_spool_is_trimmed() {
    let pki = Pki::new(&["cp-1"]);
    let col = Collector::new(&pki, "");
    let addr = col.addr;
    let node = Node::new(&pki.agent_config(addr, "cp-1"));
    let agent = node.start();
    for i in 0..3 {
        change(&node, &agent, i);
    }
    let last = agent.last_seq();
    col.wait_for(|k| holds_through(k, "cp-1", last));
    wait_status(&agent, "spool trimmed after the acks", |s| {
        s.spool.events == 0
            && s.collector
                .as_ref()
                .is_some_and(|c| c.connected && c.acked >= last)
    });
    let stored = Store::open(&col.db)
        .unwrap()
        .list(&Filter::default(), 0, 10_000)
        .unwrap();
    let seqs: Vec<u64> = stored.iter().map(|s| s.event.seq).collect();
    assert!(seqs.len() as u64 >= last, "{seqs:?}");
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "stored in sequence order"
    );

    // The readers' side, through the collector's own client.
    let reader = |args: &[&str]| {
        let out = pki
            .reader_command(addr, &pki, args)
            .args(["--format", "json"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let nodes: serde_json::Value = serde_json::from_str(reader(&["nodes"]).trim()).unwrap();
    assert_eq!(nodes["node"], "cp-1");
    assert_eq!(nodes["connected"], true);
    assert_eq!(nodes["last_seq"], last);
    assert!(
        nodes["component_versions"]["kube-apiserver"]
            .as_str()
            .unwrap()
            .starts_with("1.31"),
        "{nodes}"
    );
    assert!(
        nodes["open_findings"]["high"].as_u64().unwrap() > 0,
        "{nodes}"
    );
    let events = reader(&["events", "--node", "cp-1", "--kind", "file_modified"]);
    assert_eq!(events.lines().count(), 3, "{events}");
    let first: serde_json::Value = serde_json::from_str(events.lines().next().unwrap()).unwrap();
    assert_eq!(first["kind"], "file_modified");
}

#[test]
fn collector_away_for_a_while_then_everything_arrives_once() {
    let pki = Pki::new(&["cp-1"]);
    let mut col = Collector::new(&pki, "");
    let addr = col.addr;
    let node = Node::new(&pki.agent_config(addr, "cp-1"));
    let agent = node.start();
    let first = agent.last_seq();
    col.wait_for(|k| k == range("cp-1", first));
    col.kill9();
    for i in 0..5 {
        change(&node, &agent, i); // the agent keeps detecting and spooling
    }
    wait_status(&agent, "the agent notices the collector is gone", |s| {
        s.collector.as_ref().is_some_and(|c| !c.connected)
    });
    let last = agent.last_seq();
    assert!(last > first);
    col.restart();
    col.wait_for(|k| k == range("cp-1", last));
}

#[test]
fn collector_killed_mid_stream_loses_nothing_and_stores_nothing_twice() {
    let pki = Pki::new(&["cp-1"]);
    let mut col = Collector::new(&pki, "");
    let addr = col.addr;
    let node = Node::new(&format!("settle: 1ms\n{}", pki.agent_config(addr, "cp-1")));
    let agent = node.start();
    for i in 0..40 {
        change(&node, &agent, i);
        if i == 20 {
            col.kill9();
            col.restart();
        }
    }
    let last = agent.last_seq();
    col.wait_for(|k| k == range("cp-1", last));
    wait_status(&agent, "acked to the end", |s| s.spool.acked == last);
    assert_eq!(pki.listed(addr), range("cp-1", last));
}

#[test]
fn agent_killed_mid_stream_loses_nothing_and_stores_nothing_twice() {
    let pki = Pki::new(&["cp-1"]);
    let col = Collector::new(&pki, "");
    let addr = col.addr;
    let node = Node::new(&pki.agent_config(addr, "cp-1"));
    let agent = node.start();
    for i in 0..20 {
        change(&node, &agent, i);
    }
    agent.kill9();
    for i in 20..30 {
        fs::write(
            node.manifest("kube-scheduler.yaml"),
            scheduler_with(&node, i),
        )
        .unwrap();
    }
    let agent = node.start();
    change(&node, &agent, 30);
    let last = agent.last_seq();
    col.wait_for(|k| k == range("cp-1", last));
    // At the protocol level: the agent is acked to its end and a reader lists each once.
    wait_status(&agent, "acked to the end", |s| s.spool.acked == last);
    assert_eq!(pki.listed(addr), range("cp-1", last));
}

#[test]
fn a_certificate_from_another_ca_is_rejected() {
    let pki = Pki::new(&["cp-1"]);
    let other = Pki::new(&["cp-1"]);
    let col = Collector::new(&pki, "");
    let addr = col.addr;
    // Trusts the real collector, but presents a certificate the collector's CA never signed.
    let cfg = pki.agent_config_presenting(addr, "cp-1", &other);
    let node = Node::new(&cfg);
    let agent = node.start();
    wait_status(&agent, "the handshake fails", |s| {
        s.collector
            .as_ref()
            .is_some_and(|c| !c.connected && c.last_error.is_some())
    });
    assert!(col.keys().is_empty());
    // Issue 11: the agent said "unknown: transport error" and the collector nothing. Each side
    // now says what it saw: the collector which certificate check failed, the agent that the
    // collector closed the connection and where to look.
    let error = last_error(&agent.status()).unwrap_or_default().to_string();
    assert!(error.contains("its log says why"), "{error}");
    let deadline = std::time::Instant::now() + lockdown_e2e::node::WAIT;
    while !col.log().contains("invalid peer certificate") {
        assert!(std::time::Instant::now() < deadline, "{}", col.log());
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_node_claiming_another_nodes_name_is_rejected() {
    let pki = Pki::new(&["cp-1", "cp-2"]);
    let col = Collector::new(&pki, "");
    let addr = col.addr;
    // Node cp-1 presenting cp-2's (valid) certificate.
    let cfg = pki.agent_config(addr, "cp-2");
    let node = Node::named("cp-1", &cfg);
    let agent = node.start();
    wait_status(&agent, "permission denied", |s| {
        last_error(s).is_some_and(|e| e.contains("refused this agent: permissiondenied"))
    });
    assert!(col.keys().is_empty());
    assert!(
        col.log().contains("certificate does not carry"),
        "{}",
        col.log()
    );

    // A certificate named like a reader cannot stream as an agent either.
    let node = Node::named("reader", &pki.agent_config(addr, "reader"));
    let agent = node.start();
    wait_status(&agent, "a reader name is not a node", |s| {
        last_error(s).is_some_and(|e| e.contains("is a reader name"))
    });
    assert!(col.keys().is_empty());
}

#[test]
fn fifty_agents_at_once_each_store_exactly_their_events() {
    let names: Vec<String> = (0..50).map(|i| format!("cp-{i:02}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let pki = Pki::new(&refs);
    let col = Collector::new(&pki, "");
    let addr = col.addr;
    let nodes: Vec<Node> = names
        .iter()
        .map(|n| Node::named(n, &pki.agent_config(addr, n)))
        .collect();
    let agents: Vec<Agent> = nodes.iter().map(Node::start).collect();
    let mut want: Vec<(String, u64)> = names
        .iter()
        .zip(&agents)
        .flat_map(|(n, a)| range(n, a.last_seq()))
        .collect();
    want.sort();
    col.wait_for(|k| k == want);
}

#[test]
fn garbage_malformed_and_oversized_input_is_refused_while_others_keep_streaming() {
    use lockdown_proto::v1::agent_service_client::AgentServiceClient;
    use lockdown_proto::v1::{AgentMessage, EventBatch, Hello, agent_message};
    use std::io::Write;

    let pki = Pki::new(&["cp-1", "cp-2"]);
    let mut col = Collector::new(&pki, "limits: {max_message_bytes: 65536}");
    let addr = col.addr;
    let node = Node::new(&pki.agent_config(addr, "cp-1"));
    let agent = node.start();

    // Not TLS at all.
    let mut raw = std::net::TcpStream::connect(addr).unwrap();
    let _ = raw.write_all(&[0x16, 0x03, 0x01, 0xff, 0xff, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    drop(raw);

    let rt = tokio::runtime::Runtime::new().unwrap();
    let tls = lockdown_proto::ClientTls {
        ca: pki.path("ca.crt"),
        cert: pki.path("cp-2.crt"),
        key: pki.path("cp-2.key"),
        server_name: Some("localhost".into()),
    };
    let address = format!("https://localhost:{}", addr.port());
    let hello = |node: &str| AgentMessage {
        msg: Some(agent_message::Msg::Hello(Hello {
            node: node.into(),
            first_unacked_seq: 1,
            spool_epoch: 1,
            ..Default::default()
        })),
    };
    let event = |node: &str, seq: u64, body: Vec<u8>| lockdown_proto::v1::Event {
        node: node.into(),
        seq,
        time: "2026-11-26T10:00:00.000Z".into(),
        kind: "rescan".into(),
        body,
        ..Default::default()
    };
    let batch = |events| AgentMessage {
        msg: Some(agent_message::Msg::Events(EventBatch {
            events,
            covers_from: 0,
        })),
    };
    let statuses: Vec<(tonic::Code, String)> = rt.block_on(async {
        let mut out = Vec::new();
        for messages in [
            // no hello first
            vec![batch(vec![event("cp-2", 1, b"{}".to_vec())])],
            // an event of another node on cp-2's stream
            vec![hello("cp-2"), batch(vec![event("cp-1", 1, b"{}".to_vec())])],
            // sequence number 0
            vec![hello("cp-2"), batch(vec![event("cp-2", 0, b"{}".to_vec())])],
            // bad time
            vec![
                hello("cp-2"),
                batch(vec![lockdown_proto::v1::Event {
                    time: "yesterday".into(),
                    ..event("cp-2", 1, b"{}".to_vec())
                }]),
            ],
            // larger than max_message_bytes
            vec![
                hello("cp-2"),
                batch(vec![event("cp-2", 1, vec![b'x'; 200_000])]),
            ],
        ] {
            let channel = lockdown_proto::endpoint(&address, Some(&tls))
                .unwrap()
                .connect()
                .await
                .unwrap();
            let mut client = AgentServiceClient::new(channel);
            let stream = tokio_stream::iter(messages);
            let code = match client.report(stream).await {
                Err(s) => (s.code(), s.message().to_string()),
                Ok(resp) => {
                    let mut inbound = resp.into_inner();
                    loop {
                        match inbound.message().await {
                            Ok(Some(_)) => continue, // the initial ack
                            Ok(None) => break (tonic::Code::Ok, String::new()),
                            Err(s) => break (s.code(), s.message().to_string()),
                        }
                    }
                }
            };
            out.push(code);
        }
        out
    });
    let codes: Vec<tonic::Code> = statuses.iter().map(|s| s.0).collect();
    assert_eq!(
        codes[..4],
        [tonic::Code::InvalidArgument; 4],
        "{statuses:?}"
    );
    for (i, why) in [
        "opens with a Hello",
        "names node",
        "no sequence number",
        "not RFC 3339",
    ]
    .iter()
    .enumerate()
    {
        assert!(statuses[i].1.contains(why), "{i}: {statuses:?}");
    }
    assert_ne!(
        codes[4],
        tonic::Code::Ok,
        "an oversized message is refused: {codes:?}"
    );

    // Nothing of cp-2 was stored, the collector is alive, and cp-1 still streams.
    change(&node, &agent, 1);
    let last = agent.last_seq();
    col.wait_for(|k| k == range("cp-1", last));
    assert!(col.child.as_mut().unwrap().try_wait().unwrap().is_none());
}

#[test]
fn a_network_cut_that_heals_loses_nothing() {
    let pki = Pki::new(&["cp-1"]);
    let col = Collector::new(&pki, "");
    let addr = col.addr;
    let proxy = lockdown_e2e::proxy::Proxy::start(addr);
    let node = Node::new(&pki.agent_config(proxy.addr, "cp-1"));
    let agent = node.start();
    let first = agent.last_seq();
    col.wait_for(|k| k == range("cp-1", first));
    proxy.cut();
    wait_status(&agent, "the agent sees the cut", |s| {
        s.collector.as_ref().is_some_and(|c| !c.connected)
    });
    for i in 0..5 {
        change(&node, &agent, i);
    }
    assert_eq!(
        col.keys(),
        range("cp-1", first),
        "nothing crosses a cut network"
    );
    proxy.heal();
    let last = agent.last_seq();
    col.wait_for(|k| k == range("cp-1", last));
}

#[test]
fn streams_over_the_limit_wait_their_turn_and_lose_nothing() {
    let pki = Pki::new(&["cp-1", "cp-2"]);
    let col = Collector::new(&pki, "limits: {max_streams: 1}");
    let addr = col.addr;
    let n1 = Node::named("cp-1", &pki.agent_config(addr, "cp-1"));
    let a1 = n1.start();
    let last1 = a1.last_seq();
    col.wait_for(|k| k == range("cp-1", last1));
    let n2 = Node::named("cp-2", &pki.agent_config(addr, "cp-2"));
    let a2 = n2.start();
    wait_status(&a2, "the second stream is refused", |s| {
        last_error(s).is_some_and(|e| e.starts_with("resourceexhausted"))
    });
    assert!(a1.stop().success());
    let last2 = a2.last_seq();
    // cp-1 flushed its agent_stopping event before it exited.
    let mut want = range("cp-1", last1 + 1);
    want.extend(range("cp-2", last2));
    col.wait_for(|k| k == want);
}

#[test]
fn a_node_over_its_rate_is_slowed_down_not_dropped() {
    let pki = Pki::new(&["cp-1"]);
    let col = Collector::new(&pki, "limits: {max_events_per_second_per_node: 20}");
    let addr = col.addr;
    let node = Node::new(&pki.agent_config(addr, "cp-1"));
    let agent = node.start();
    for i in 0..5 {
        change(&node, &agent, i);
    }
    let last = agent.last_seq();
    assert!(last > 20);
    col.wait_for(|k| k == range("cp-1", last));
    assert!(
        agent.log().contains("collector asks to slow down"),
        "{}",
        agent.log()
    );
}

#[test]
fn health_and_reflection_answer_over_mtls() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    let pki = Pki::new(&[]);
    let col = Collector::new(&pki, "");
    let addr = col.addr;
    let tls = lockdown_proto::ClientTls {
        ca: pki.path("ca.crt"),
        cert: pki.path("reader.crt"),
        key: pki.path("reader.key"),
        server_name: Some("localhost".into()),
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let statuses: Vec<i32> = rt.block_on(async {
        let ch =
            lockdown_proto::endpoint(&format!("https://localhost:{}", addr.port()), Some(&tls))
                .unwrap()
                .connect()
                .await
                .unwrap();
        let mut h = HealthClient::new(ch);
        let mut out = Vec::new();
        for service in ["", "lockdown.v1.AgentService", "lockdown.v1.QueryService"] {
            let r = h
                .check(HealthCheckRequest {
                    service: service.into(),
                })
                .await
                .unwrap();
            out.push(r.into_inner().status);
        }
        out
    });
    assert_eq!(statuses, [ServingStatus::Serving as i32; 3]);

    // Server reflection, as grpcurl uses it: list the services.
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let services: Vec<String> = rt.block_on(async {
        let ch =
            lockdown_proto::endpoint(&format!("https://localhost:{}", addr.port()), Some(&tls))
                .unwrap()
                .connect()
                .await
                .unwrap();
        let mut r = ServerReflectionClient::new(ch);
        let req = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut stream = r
            .server_reflection_info(tokio_stream::iter([req]))
            .await
            .unwrap()
            .into_inner();
        match stream.message().await.unwrap().unwrap().message_response {
            Some(MessageResponse::ListServicesResponse(l)) => {
                l.service.into_iter().map(|s| s.name).collect()
            }
            other => panic!("{other:?}"),
        }
    });
    for want in [
        "lockdown.v1.AgentService",
        "lockdown.v1.QueryService",
        "grpc.health.v1.Health",
    ] {
        assert!(
            services.iter().any(|s| s == want),
            "{want} not in {services:?}"
        );
    }
}

#[test]
fn events_follow_tails_new_events_as_they_are_committed() {
    let (pki, col, node, agent, _) = streaming("", "");
    let (mut follow, mut lines) = follow_modified(&pki, col.addr);
    // Nothing matches yet; the next change arrives through the live tail.
    change(&node, &agent, 1);
    let line = lines.next().unwrap().unwrap();
    let ev: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(ev["kind"], "file_modified");
    assert_eq!(ev["node"], "cp-1");
    change(&node, &agent, 2);
    let line = lines.next().unwrap().unwrap();
    let ev2: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert!(ev2["seq"].as_u64() > ev["seq"].as_u64());
    let _ = follow.kill();
    let _ = follow.wait();
}

#[test]
fn events_follow_on_an_empty_store_delivers_from_the_first_event() {
    use std::io::{BufRead, BufReader};
    let pki = Pki::new(&["cp-1"]);
    let col = Collector::new(&pki, "");
    let mut follow = pki
        .reader_command(col.addr, &pki, &["events", "--follow", "--format", "json"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    kill_after_wait(&follow);
    let node = Node::new(&pki.agent_config(col.addr, "cp-1"));
    let _agent = node.start();
    let line = BufReader::new(follow.stdout.take().unwrap())
        .lines()
        .next()
        .unwrap()
        .unwrap();
    let ev: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(
        (ev["seq"].as_u64(), ev["kind"].as_str()),
        (Some(1), Some("agent_started"))
    );
    let _ = follow.kill();
    let _ = follow.wait();
}

#[test]
fn a_wiped_state_directory_starts_a_new_epoch_and_nothing_is_mistaken_for_a_resend() {
    let pki = Pki::new(&["cp-1"]);
    let col = Collector::new(&pki, "");
    let addr = col.addr;
    let node = Node::new(&pki.agent_config(addr, "cp-1"));
    let agent = node.start();
    change(&node, &agent, 1);
    let first = agent.last_seq();
    col.wait_for(|k| k == range("cp-1", first));
    agent.kill9();
    fs::remove_dir_all(&node.state).unwrap();
    // Numbering starts again at 1; those events are new, not resends of the old ones.
    let agent = node.start();
    let second = agent.last_seq();
    let mut want = range("cp-1", first);
    want.extend(range("cp-1", second));
    want.sort();
    col.wait_for(|k| k == want);
}

#[test]
fn with_a_separate_reader_ca_only_its_certificates_read_and_none_of_them_streams() {
    let agents = Pki::new(&["cp-1"]);
    let readers = Pki::new(&["cp-1"]); // the reader CA also issues a "cp-1" certificate
    let col = Collector::with_reader_ca(&agents, &readers);
    let addr = col.addr;
    // The collector's own certificate comes from the agents' PKI; trust it with that CA.
    let list = |reader: &Pki| {
        agents
            .reader_command(addr, reader, &["nodes"])
            .output()
            .unwrap()
    };
    let from_reader_ca = list(&readers);
    assert!(
        from_reader_ca.status.success(),
        "{}",
        String::from_utf8_lossy(&from_reader_ca.stderr)
    );
    // Same name, issued by the agents' CA: not a reader.
    let from_agent_ca = list(&agents);
    assert!(!from_agent_ca.status.success());
    assert!(
        String::from_utf8_lossy(&from_agent_ca.stderr)
            .contains("not one of the collector's readers")
    );

    // A reader-CA certificate named cp-1 cannot stream as cp-1.
    let cfg = agents.agent_config_presenting(addr, "cp-1", &readers);
    let node = Node::new(&cfg);
    let agent = node.start();
    wait_status(&agent, "refused: not issued by the agents' CA", |s| {
        last_error(s).is_some_and(|e| e.contains("issued by the agents' CA"))
    });
    assert!(col.keys().is_empty());
    // And a real agent still streams.
    let good = Node::named("cp-1", &agents.agent_config(addr, "cp-1"));
    let _ = fs::remove_dir_all(&good.state);
    let a = good.start();
    let last = a.last_seq();
    col.wait_for(|k| k == range("cp-1", last));
}

#[test]
fn a_network_that_silently_drops_everything_is_detected_and_nothing_is_lost() {
    let pki = Pki::new(&["cp-1"]);
    let col = Collector::new(&pki, "");
    let proxy = lockdown_e2e::proxy::Proxy::start(col.addr);
    let node = Node::new(&format!(
        "{}  ack_timeout: 1s\n",
        pki.agent_config(proxy.addr, "cp-1")
    ));
    let agent = node.start();
    let first = agent.last_seq();
    col.wait_for(|k| k == range("cp-1", first));
    proxy.stall(); // no reset, no FIN: packets just vanish
    change(&node, &agent, 1);
    wait_status(
        &agent,
        "the silent stall is noticed by the ack timeout",
        |s| last_error(s).is_some_and(|e| e.contains("no answer from the collector")),
    );
    assert_eq!(col.keys(), range("cp-1", first));
    proxy.heal();
    let last = agent.last_seq();
    col.wait_for(|k| k == range("cp-1", last));
}

/// Kills `child` after [`WAIT`]: a tail that never delivers must fail the test, not hang it.
/// A collector (with `collector_extra` config lines) and the agent of node cp-1 (with
/// `agent_extra` lines) streaming to it, the agent's first events already stored.
fn streaming(collector_extra: &str, agent_extra: &str) -> (Pki, Collector, Node, Agent, u64) {
    let pki = Pki::new(&["cp-1"]);
    let col = Collector::new(&pki, collector_extra);
    let node = Node::new(&format!(
        "{agent_extra}{}",
        pki.agent_config(col.addr, "cp-1")
    ));
    let agent = node.start();
    let first = agent.last_seq();
    col.wait_for(|k| k == range("cp-1", first));
    (pki, col, node, agent, first)
}

/// `lockdown-collector events --follow` for file_modified events, as JSON lines.
fn follow_modified(
    pki: &Pki,
    addr: std::net::SocketAddr,
) -> (
    std::process::Child,
    std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
) {
    use std::io::BufRead;
    let args = [
        "events",
        "--follow",
        "--format",
        "json",
        "--kind",
        "file_modified",
    ];
    let mut follow = pki
        .reader_command(addr, pki, &args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    kill_after_wait(&follow);
    let lines = std::io::BufReader::new(follow.stdout.take().unwrap()).lines();
    (follow, lines)
}

/// The bodies of the events of `kind` the collector stored, in commit order.
fn stored_of_kind(col: &Collector, kind: &str) -> Vec<serde_json::Value> {
    Store::open(&col.db)
        .unwrap()
        .list(
            &Filter {
                kind: Some(kind.into()),
                ..Filter::default()
            },
            0,
            100,
        )
        .unwrap()
        .iter()
        .map(|s| serde_json::from_slice(&s.event.body).unwrap())
        .collect()
}

fn kill_after_wait(child: &std::process::Child) {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    std::thread::spawn(move || {
        std::thread::sleep(WAIT);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
    });
}

#[test]
fn a_collector_that_lost_its_database_records_what_it_missed_and_goes_on() {
    // Issue 11 (4): the collector ignored the hello's first unacknowledged sequence number, so
    // after losing its database it acked 0 forever below what the agent had trimmed; the agent
    // resent one window without end. On the commit before the fix this test timed out waiting
    // for the ack to pass `first`.
    let (_pki, mut col, node, agent, first) = streaming("", "");
    wait_status(&agent, "the agent trims what was acked", |s| {
        s.spool.acked >= first
    });
    col.kill9();
    for suffix in ["", "-wal", "-shm"] {
        let _ = fs::remove_file(format!("{}{suffix}", col.db.display()));
    }
    col.restart();
    for i in 0..3 {
        change(&node, &agent, i);
    }
    let last = agent.last_seq();
    // The store holds what it received, and one event at `first` that says 1..=first were
    // acknowledged by an earlier store.
    let mut want = vec![("cp-1".to_string(), first)];
    want.extend((first + 1..=last).map(|s| ("cp-1".to_string(), s)));
    col.wait_for(|k| k == want);
    wait_status(&agent, "the agent is acked to its last event", |s| {
        s.spool.acked == last && s.collector.as_ref().is_some_and(|c| c.acked == last)
    });
    let notes = stored_of_kind(&col, "acked_by_earlier_store");
    assert_eq!(notes.len(), 1, "{notes:?}");
    let body = &notes[0];
    assert_eq!(body["first_seq"], 1);
    assert_eq!(body["last_seq"], first);
}

#[test]
fn a_new_node_name_is_refused_on_reload_and_a_restart_with_it_ships_the_old_spool() {
    // Issue 11 (6): SIGHUP with a new node_name was accepted, the spooled events kept the old
    // name and the collector refused the stream forever. On the commit before the fix the
    // reload reported config_reloaded, and the restarted agent never got past the first batch.
    let pki = Pki::new(&["cp-1", "cp-2"]);
    let mut col = Collector::new(&pki, "");
    let addr = col.addr;
    let node = Node::new(&pki.agent_config(addr, "cp-1"));
    let agent = node.start();
    let first = agent.last_seq();
    col.wait_for(|k| k == range("cp-1", first));

    let good = fs::read_to_string(&node.config).unwrap();
    let renamed = good.replace("cp-1", "cp-2"); // node_name and the certificate
    fs::write(&node.config, &renamed).unwrap();
    let seq = agent.last_seq();
    agent.signal(nix::sys::signal::Signal::SIGHUP);
    let events = agent.wait_for(seq, |ev| {
        ev.iter().any(|e| e.body.kind() == "config_rejected")
    });
    let lockdown_agent::event::EventBody::ConfigRejected { error } = &events[0].body else {
        panic!("{events:?}")
    };
    assert!(error.contains("node_name"), "{error}");
    assert_eq!(agent.status().node, "cp-1");
    change(&node, &agent, 1);
    let last = agent.last_seq();
    col.wait_for(|k| k == range("cp-1", last));

    // The collector is away while the agent spools under cp-1, then the agent restarts as cp-2.
    col.kill9();
    change(&node, &agent, 2);
    let spooled = agent.last_seq();
    assert!(agent.stop().success());
    let agent = node.start(); // reads the renamed config
    assert_eq!(agent.status().node, "cp-2");
    col.restart();
    let last = agent.last_seq();
    assert!(last > spooled);
    // cp-2 ships everything its spool still holds; what cp-1 had acked is settled below it.
    // (>=: the restarted agent may spool more while this waits, a rescan's findings say.)
    let keys = col
        .wait_for(|k| k.iter().filter(|(n, _)| n == "cp-2").map(|(_, s)| *s).max() >= Some(last));
    let cp2: Vec<u64> = keys
        .iter()
        .filter(|(n, _)| n == "cp-2")
        .map(|(_, s)| *s)
        .collect();
    assert!(cp2.contains(&spooled), "{cp2:?}");
    wait_status(&agent, "the renamed agent is acked", |s| {
        s.spool.acked >= last
    });
}

#[test]
fn a_stopping_collector_closes_its_streams_and_exits() {
    // Issue 11 (7): on SIGTERM with an agent connected, the collector logged "stopping" and
    // went on serving the open stream (and acking into its database) indefinitely. On the
    // commit before the fix `stop()` timed out with the process still running.
    let (_pki, mut col, node, agent, first) = streaming("", "");
    wait_status(&agent, "the agent is connected", |s| {
        s.collector.as_ref().is_some_and(|c| c.connected)
    });
    let status = col
        .stop()
        .expect("the collector exits while an agent is connected");
    assert!(status.success(), "{status}\n{}", col.log());
    wait_status(&agent, "the agent sees the stream end", |s| {
        s.collector.as_ref().is_some_and(|c| !c.connected)
    });
    change(&node, &agent, 1);
    let last = agent.last_seq();
    assert_eq!(
        col.keys(),
        range("cp-1", first),
        "nothing stored after the stop"
    );
    assert!(
        agent.status().spool.acked < last,
        "nothing acked after the stop"
    );
    col.restart();
    col.wait_for(|k| k == range("cp-1", last));
}

#[test]
fn a_spool_that_overflowed_while_the_collector_was_away_is_acked_to_its_end() {
    // Issue 11 (8): overflow accounting was itself evicted, so the collector's gap rule could
    // not explain every hole. Now the agent says where each batch was read from, and the
    // ack reaches the spool's end whatever overflow events survived.
    let (_pki, mut col, node, agent, _) = streaming("", "spool_max_bytes: 65536\n");
    col.kill9();
    wait_status(&agent, "the agent notices the collector is gone", |s| {
        s.collector.as_ref().is_some_and(|c| !c.connected)
    });
    let mut i = 0;
    while agent.status().spool.dropped_total < 50 {
        change(&node, &agent, i);
        i += 1;
    }
    let last = agent.last_seq();
    col.restart();
    wait_status(&agent, "acked to the end", |s| s.spool.acked == last);
    let status = agent.status();
    let stored = col.keys();
    // What is stored and what was dropped are disjoint and together make 1..=last.
    assert_eq!(
        stored.len() as u64 + status.spool.dropped_total,
        last,
        "{stored:?}"
    );
}

#[test]
fn an_event_too_large_for_the_collector_goes_as_a_placeholder_and_the_rest_follows() {
    // Issue 11 (5): batches were capped by count, every refusal looked like "collector away",
    // and a batch the collector refused was resent forever. On the commit before the fix this
    // test timed out with the agent resending the same window.
    let (_pki, col, node, agent, _) = streaming("limits: {max_message_bytes: 20000}", "");
    // A valid pod whose diff alone is larger than the collector takes.
    let comment: String = (0..1500)
        .map(|i| format!("# padding line {i:04} .....\n"))
        .collect();
    let big = format!(
        "{comment}apiVersion: v1\nkind: Pod\nmetadata:\n  name: pad\nspec:\n  containers:\n  - name: pad\n    image: busybox\n"
    );
    let path = node.manifests.join("pad.yaml");
    fs::write(&path, &big).unwrap();
    change(&node, &agent, 1);
    let last = agent.last_seq();
    col.wait_for(|k| holds_through(k, "cp-1", last));
    wait_status(&agent, "acked to the end", |s| s.spool.acked >= last);
    let withheld = stored_of_kind(&col, "event_withheld");
    assert_eq!(withheld.len(), 1, "{withheld:?}");
    let body = &withheld[0];
    assert_eq!(body["original_kind"], "file_created");
    assert_eq!(body["path"], path.display().to_string());
    assert!(body["after"]["sha256"].is_string(), "{body}");
    assert!(
        body["reason"].as_str().unwrap().contains("refused"),
        "{body}"
    );
}

#[test]
fn events_follow_resumes_after_the_collector_restarts() {
    // Issue 11: `events --follow` exited 1 when the collector restarted. Now it reconnects and
    // resumes after the last event it printed. On the commit before the fix the follower
    // exited before the change after the restart could be printed.
    let (pki, mut col, node, agent, _) = streaming("", "");
    let (mut follow, mut lines) = follow_modified(&pki, col.addr);
    change(&node, &agent, 1);
    let seq1 = serde_json::from_str::<serde_json::Value>(&lines.next().unwrap().unwrap()).unwrap()
        ["seq"]
        .as_u64()
        .unwrap();
    assert!(col.stop().is_some(), "the collector stops");
    col.restart();
    change(&node, &agent, 2);
    let line = lines.next().expect("the follower is still there").unwrap();
    let seq2 = serde_json::from_str::<serde_json::Value>(&line).unwrap()["seq"]
        .as_u64()
        .unwrap();
    assert!(
        seq2 > seq1,
        "resumed after {seq1}, not from the start: {seq2}"
    );
    assert!(follow.try_wait().unwrap().is_none(), "still following");
    let _ = follow.kill();
    let _ = follow.wait();
}

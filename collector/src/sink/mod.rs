//! Sinks: outputs into the tools operators already run (alerts, webhooks, syslog). Each sink
//! reads the store from its own durable cursor, delivers in commit order, and moves its
//! cursor only past what it delivered: a sink that is down, slow or restarted loses nothing
//! and holds nothing else up (the agents' acks never wait for a sink). A delivery that
//! fails is tried again, from the same cursor, after a pause.
//!
//! A sink runs on its own thread with its own store handle: store reads and its cursor's
//! write are blocking calls, and a slow sink must not take a runtime worker. The commit feed
//! wakes it; a missed wake-up costs at most the idle re-read.

use std::time::Duration;

use tokio::sync::watch;

use crate::store::{EventStore, Filter, FindingQuery, FindingRow, Stored};

pub mod alertmanager;
pub mod config;
pub mod falcosidekick;
pub mod filter;
pub mod syslog;
pub mod webhook;

use filter::SinkFilter;

/// Events handed to a sink at once, at most.
pub const BATCH: usize = 500;

/// An output of stored events.
pub trait Sink: Send + 'static {
    /// Its name: the key of its cursor in the store (stable across restarts).
    fn name(&self) -> &str;

    /// Delivers `events` (cursor order, at least one). `Ok`: all of them were taken; `Err`:
    /// none is counted delivered, and the same events come again after a pause.
    fn deliver(
        &mut self,
        events: &[Stored],
    ) -> impl std::future::Future<Output = anyhow::Result<()>> + Send;

    /// Whether it takes events at all (a sink kept in step with the open findings may not:
    /// then events only tell it when to look again).
    fn takes_events(&self) -> bool {
        true
    }

    /// For a sink kept in step with what is open now (Alertmanager): how often it must hear
    /// every open finding its filter selects. `None`: it only takes events.
    fn findings_every(&self) -> Option<Duration> {
        None
    }

    /// The open findings its filter selects (not those an active exception covers, unless
    /// the filter asks): all of them every [`Sink::findings_every`] (`full`), and after
    /// events changed them. `Err`: it hears them again after a pause.
    fn findings(
        &mut self,
        open: &[FindingRow],
        full: bool,
    ) -> impl std::future::Future<Output = anyhow::Result<()>> + Send {
        let _ = (open, full);
        async { Ok(()) }
    }
}

/// Event kinds after which the open findings, or what covers them, may have changed.
const CHANGES_FINDINGS: [&str; 6] = [
    "finding_raised",
    "finding_resolved",
    "findings_reconciled",
    "exception_added",
    "exception_removed",
    "exception_expired",
];

/// How a sink runs.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    /// After a failed delivery (or store error), wait this long before trying again; each
    /// failure in a row doubles it, up to `retry_max`.
    pub retry: Duration,
    /// The longest wait between tries.
    pub retry_max: Duration,
    /// With nothing new, read again after this long even without a wake-up.
    pub idle: Duration,
    /// Woken sooner than this after its last read, a sink waits out the rest: under a burst
    /// it reads and delivers fewer, larger batches, and costs ingest less; after a quiet
    /// spell it reads at once.
    pub linger: Duration,
    /// How often a replica that does not run the sink (another does) looks again.
    pub standby: Duration,
    /// When the oldest event the sink has not delivered is older than this, it says so: a
    /// `sink_lagging` event (and a `sink_caught_up` one when it is).
    pub lag_after: Duration,
}

impl Default for Pace {
    fn default() -> Self {
        Pace {
            retry: Duration::from_secs(1),
            retry_max: Duration::from_secs(30),
            idle: Duration::from_secs(30),
            linger: Duration::from_millis(50),
            standby: Duration::from_secs(5),
            lag_after: Duration::from_secs(600),
        }
    }
}

/// Whether `host` (a name or an address) is this machine's loopback: where a sink may send
/// without TLS.
pub(crate) fn loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// What a sink runs with, beside itself.
pub struct Context {
    /// Which events it gets.
    pub filter: SinkFilter,
    /// Where its failures are counted.
    pub metrics: std::sync::Arc<crate::metrics::Metrics>,
    /// Its own store instance.
    pub store: Box<dyn EventStore>,
    /// Commit wake-ups.
    pub feed: watch::Receiver<u64>,
    /// Turns true when it must stop.
    pub stop: watch::Receiver<bool>,
    /// Its pace.
    pub pace: Pace,
}

/// Starts the sink `cfg` configures.
pub fn start(
    cfg: &config::SinkConfig,
    ctx: Context,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    use config::SinkOutput;
    let name = cfg.name.clone();
    match &cfg.output {
        SinkOutput::Webhook(h) => spawn(webhook::WebhookSink::new(name, h.clone()), ctx),
        SinkOutput::Falcosidekick(h) => {
            spawn(falcosidekick::FalcosidekickSink::new(name, h.clone()), ctx)
        }
        SinkOutput::Syslog(to) => spawn(syslog::SyslogSink::new(name, to.clone()), ctx),
        SinkOutput::Alertmanager(h, resend) => spawn(
            alertmanager::AlertmanagerSink::new(name, h.clone(), *resend),
            ctx,
        ),
    }
}

/// Runs `sink` on a thread of its own until `ctx.stop` turns true.
pub fn spawn<S: Sink>(sink: S, ctx: Context) -> std::io::Result<std::thread::JoinHandle<()>> {
    let name = format!("sink-{}", sink.name());
    std::thread::Builder::new().name(name).spawn(move || {
        match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt.block_on(run(
                sink,
                ctx.filter,
                &ctx.metrics,
                ctx.store,
                ctx.feed,
                ctx.stop,
                ctx.pace,
            )),
            Err(e) => tracing::error!(error = %e, "cannot start a sink's runtime"),
        }
    })
}

/// The sink's loop: read from the cursor, deliver what the filter selects, advance the
/// cursor (past what it left out too); wait for a commit when caught up.
pub async fn run<S: Sink>(
    mut sink: S,
    filter: SinkFilter,
    metrics: &crate::metrics::Metrics,
    mut store: Box<dyn EventStore>,
    mut feed: watch::Receiver<u64>,
    mut stop: watch::Receiver<bool>,
    pace: Pace,
) {
    let all = Filter::default();
    let mut failures = 0u32;
    let every = sink.findings_every();
    // When the sink last heard every open finding, and whether events changed them since.
    let mut last_full: Option<tokio::time::Instant> = None;
    let mut dirty = false;
    // Whether it has said it lags (and not yet that it caught up).
    let mut lagging = false;
    loop {
        if *stop.borrow() {
            return;
        }
        // Marks what this read sees: a commit after it wakes the wait below.
        feed.borrow_and_update();
        let read_at = tokio::time::Instant::now();
        // With several replicas on one database, one runs the sink; the others look again
        // now and then, and one takes over when the one running it is gone.
        match store.lead(sink.name()) {
            Ok(true) => {}
            Ok(false) => {
                tokio::select! {
                    _ = stop.wait_for(|s| *s) => return,
                    () = tokio::time::sleep(pace.standby) => {}
                }
                continue;
            }
            Err(e) => {
                tracing::warn!(sink = sink.name(), error = %e, "cannot tell whether this replica runs the sink");
                tokio::select! {
                    _ = stop.wait_for(|s| *s) => return,
                    () = tokio::time::sleep(pace.retry_max.min(pace.standby)) => {}
                }
                continue;
            }
        }
        let step = async {
            let cursor = store.sink_cursor(sink.name())?;
            let events = store.list(&all, cursor, BATCH)?;
            let read = events.last().map(|e| e.cursor);
            let behind = events.first().map(|e| age(&e.event.time));
            if behind.is_some_and(|a| a > pace.lag_after) != lagging {
                lagging = !lagging;
                say_lag(store.as_mut(), sink.name(), lagging, behind, cursor)?;
            }
            if let Some(last) = read {
                dirty |= events
                    .iter()
                    .any(|e| CHANGES_FINDINGS.contains(&e.event.kind.as_str()));
                let wanted = if sink.takes_events() {
                    select(&filter, store.as_ref(), events)?
                } else {
                    Vec::new()
                };
                if !wanted.is_empty() {
                    sink.deliver(&wanted).await?;
                }
                store.set_sink_cursor(sink.name(), last)?;
            }
            if let Some(every) = every {
                let full = last_full.is_none_or(|t| t.elapsed() >= every);
                if full || (dirty && read.is_none()) {
                    let open = open_findings(&filter, store.as_ref())?;
                    sink.findings(&open, full).await?;
                    dirty = false;
                    if full {
                        last_full = Some(tokio::time::Instant::now());
                    }
                }
            }
            anyhow::Ok(read.is_some())
        };
        let wait = match step.await {
            Ok(true) => {
                failures = 0;
                continue;
            }
            Ok(false) => match (every, last_full) {
                (Some(every), Some(t)) => pace.idle.min(every.saturating_sub(t.elapsed())),
                _ => pace.idle,
            },
            Err(e) => {
                let wait = pace
                    .retry
                    .saturating_mul(1 << failures.min(16))
                    .min(pace.retry_max);
                failures += 1;
                metrics.delivery_failed(sink.name());
                tracing::warn!(sink = sink.name(), error = %format!("{e:#}"), failures, retry_in = ?wait, "delivery failed; trying again");
                wait
            }
        };
        let woken = tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = feed.changed(), if failures == 0 => true,
            () = tokio::time::sleep(wait) => false,
        };
        if woken {
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                () = tokio::time::sleep_until(read_at + pace.linger) => {}
            }
        }
    }
}

/// How long ago `time` (RFC 3339) was; zero when it cannot be read or is ahead.
fn age(time: &str) -> Duration {
    humantime::parse_rfc3339(time)
        .ok()
        .and_then(|t| std::time::SystemTime::now().duration_since(t).ok())
        .unwrap_or_default()
}

/// Records that sink `name` fell behind (`lagging`), or caught up: an event of the
/// collector's own that readers and the other sinks see.
fn say_lag(
    store: &mut dyn EventStore,
    name: &str,
    lagging: bool,
    behind: Option<Duration>,
    cursor: u64,
) -> Result<(), crate::store::StoreError> {
    let (kind, oldest) = match (lagging, behind) {
        (true, Some(b)) => ("sink_lagging", b.as_secs()),
        _ => ("sink_caught_up", 0),
    };
    if lagging {
        tracing::warn!(
            sink = name,
            oldest_undelivered_s = oldest,
            "a sink is falling behind"
        );
    } else {
        tracing::info!(sink = name, "a sink caught up");
    }
    let now = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
    store.note(
        kind,
        &now,
        serde_json::json!({"sink": name, "oldest_undelivered_seconds": oldest, "cursor": cursor}),
    )
}

/// Every open finding `filter` selects, those an active exception covers only if it asks.
fn open_findings(
    filter: &SinkFilter,
    store: &dyn EventStore,
) -> Result<Vec<FindingRow>, crate::store::StoreError> {
    let q = FindingQuery {
        min_severity: filter.min_severity().map(str::to_string),
        excepted: (!filter.excepted).then_some(false),
        now: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
        ..Default::default()
    };
    Ok(crate::store::all_findings(store, &q)?
        .into_iter()
        .filter(|f| filter.wants_finding(f))
        .collect())
}

/// The events `filter` selects; a finding an active exception covers only if it asks for
/// them.
fn select(
    filter: &SinkFilter,
    store: &dyn EventStore,
    events: Vec<Stored>,
) -> Result<Vec<Stored>, crate::store::StoreError> {
    let clusters: std::collections::HashMap<String, String> = if filter.by_cluster() {
        (store.nodes()?.into_iter())
            .map(|n| (n.node, n.cluster))
            .collect()
    } else {
        Default::default()
    };
    let now = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
    // Exceptions are few: with none in force, no finding is looked up; with some, each
    // (node, rule, path) once per batch.
    let any_active = !filter.excepted
        && store
            .exceptions()?
            .iter()
            .any(|x| x.state(&now) == "active");
    let mut known: std::collections::HashMap<(String, String, String), bool> = Default::default();
    let mut out = Vec::new();
    for s in events {
        let cluster = clusters.get(&s.event.node).map_or("", String::as_str);
        if !filter.wants(&s.event, cluster) {
            continue;
        }
        if any_active && s.event.kind == "finding_raised" {
            let e = &s.event;
            let key = (e.node.clone(), e.rule_id.clone(), e.path.clone());
            let covered = match known.get(&key) {
                Some(c) => *c,
                None => {
                    let c = excepted(store, &s, &now)?;
                    known.insert(key, c);
                    c
                }
            };
            if covered {
                continue;
            }
        }
        out.push(s);
    }
    Ok(out)
}

/// Whether the finding a `finding_raised` event opened is still open and an active exception
/// covers it.
fn excepted(
    store: &dyn EventStore,
    s: &Stored,
    now: &str,
) -> Result<bool, crate::store::StoreError> {
    let q = FindingQuery {
        node: Some(s.event.node.clone()),
        rule_id: Some(s.event.rule_id.clone()),
        excepted: Some(true),
        now: now.to_string(),
        ..Default::default()
    };
    Ok(store
        .findings(&q, None, 1000)?
        .iter()
        .any(|r| r.finding.path == s.event.path))
}

/// One line of what an event says, for receivers that show text: "finding raised on cp-1:
/// rule (title) in path".
pub fn summary(s: &Stored) -> String {
    let e = &s.event;
    let body: serde_json::Value = serde_json::from_slice(&e.body).unwrap_or_default();
    let mut text = format!("{} on {}", e.kind.replace('_', " "), e.node);
    if !e.rule_id.is_empty() {
        text.push_str(&format!(": {}", e.rule_id));
        if let Some(title) = body["finding"]["title"].as_str() {
            text.push_str(&format!(" ({title})"));
        }
    }
    if !e.path.is_empty() {
        text.push_str(&format!(" in {}", e.path));
    }
    text
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use lockdown_proto::v1::Event;
    use tokio::sync::mpsc;

    use super::*;
    use crate::feed::{CommitFeed, InProcess};
    use crate::store::Store;

    /// Takes what it is given, refusing its first delivery.
    struct Collect {
        got: Arc<Mutex<Vec<u64>>>,
        refuse_first: bool,
        tell: mpsc::UnboundedSender<usize>,
    }

    impl Sink for Collect {
        fn name(&self) -> &str {
            "collect"
        }

        async fn deliver(&mut self, events: &[Stored]) -> anyhow::Result<()> {
            if std::mem::take(&mut self.refuse_first) {
                anyhow::bail!("the receiver is down");
            }
            let mut got = self.got.lock().unwrap();
            got.extend(events.iter().map(|e| e.event.seq));
            let _ = self.tell.send(got.len());
            Ok(())
        }
    }

    fn event(seq: u64) -> Event {
        Event {
            seq,
            node: "cp-1".into(),
            time: "2026-12-02T00:00:00.000Z".into(),
            kind: "file_modified".into(),
            body: b"{}".to_vec(),
            ..Default::default()
        }
    }

    /// Until the sink holds `n` events; a sink that never gets there fails the test.
    async fn until(rx: &mut mpsc::UnboundedReceiver<usize>, n: usize) {
        let reached = async { while rx.recv().await.expect("sink running") < n {} };
        tokio::time::timeout(Duration::from_secs(20), reached)
            .await
            .unwrap_or_else(|_| panic!("the sink never held {n} events"));
    }

    #[tokio::test]
    async fn a_sink_gets_every_event_once_in_order_across_a_failure_and_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("events.db");
        let mut writer = Store::open(&db).unwrap();
        writer
            .insert("cp-1", 1, &(1..=3).map(event).collect::<Vec<_>>())
            .unwrap();
        let feed = InProcess::default();
        let pace = Pace {
            retry: Duration::from_millis(10),
            retry_max: Duration::from_millis(10),
            idle: Duration::from_secs(3600),
            linger: Duration::ZERO,
            standby: Duration::from_millis(10),
            lag_after: Duration::MAX,
        };
        // The sink's run on its own store instance, and what stops it.
        let start = |sink: Collect| {
            let (stop, stopped) = watch::channel(false);
            let task = tokio::spawn(run(
                sink,
                SinkFilter::default(),
                Box::leak(Box::default()),
                Box::new(Store::open(&db).unwrap()),
                feed.subscribe(),
                stopped,
                pace,
            ));
            (stop, task)
        };
        let got = Arc::new(Mutex::new(Vec::new()));
        let (tell, mut told) = mpsc::unbounded_channel();
        let sink = Collect {
            got: Arc::clone(&got),
            refuse_first: true,
            tell: tell.clone(),
        };
        let (stop, task) = start(sink);
        until(&mut told, 3).await;
        // A commit wakes it (the idle re-read is an hour away).
        writer.insert("cp-1", 1, &[event(4)]).unwrap();
        feed.committed();
        until(&mut told, 4).await;
        stop.send_replace(true);
        task.await.unwrap();
        assert_eq!(*got.lock().unwrap(), [1, 2, 3, 4]);
        assert_eq!(
            writer.sink_cursor("collect").unwrap(),
            writer.max_cursor().unwrap()
        );

        // A new run resumes from the stored cursor: only what came since.
        writer.insert("cp-1", 1, &[event(5)]).unwrap();
        got.lock().unwrap().clear();
        let sink = Collect {
            got: Arc::clone(&got),
            refuse_first: false,
            tell,
        };
        let (stop, task) = start(sink);
        until(&mut told, 1).await;
        stop.send_replace(true);
        task.await.unwrap();
        assert_eq!(*got.lock().unwrap(), [5]);
    }

    #[tokio::test]
    async fn a_sink_behind_says_so_once_and_again_when_it_caught_up() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("events.db");
        let mut writer = Store::open(&db).unwrap();
        // Events from hours ago, over the lag threshold of a minute.
        writer
            .insert("cp-1", 1, &(1..=3).map(event).collect::<Vec<_>>())
            .unwrap();
        let pace = Pace {
            retry: Duration::from_millis(10),
            retry_max: Duration::from_millis(10),
            idle: Duration::from_millis(50),
            linger: Duration::ZERO,
            standby: Duration::from_millis(10),
            lag_after: Duration::from_secs(60),
        };
        let (tell, mut told) = mpsc::unbounded_channel();
        let sink = Collect {
            got: Arc::new(Mutex::new(Vec::new())),
            refuse_first: true,
            tell,
        };
        let (stop, stopped) = watch::channel(false);
        let store = Box::new(Store::open(&db).unwrap());
        let task = tokio::spawn(run(
            sink,
            SinkFilter::default(),
            Box::leak(Box::default()),
            store,
            InProcess::default().subscribe(),
            stopped,
            pace,
        ));
        let kinds = || -> Vec<String> {
            (writer.list(&Filter::default(), 0, 100).unwrap().into_iter())
                .map(|e| e.event.kind)
                .filter(|k| k.starts_with("sink_"))
                .collect()
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while kinds() != ["sink_lagging", "sink_caught_up"] {
            assert!(tokio::time::Instant::now() < deadline, "{:?}", kinds());
            let _ = tokio::time::timeout(Duration::from_millis(50), told.recv()).await;
        }
        // Caught up, it stays so: no flapping on its own fresh events.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(kinds(), ["sink_lagging", "sink_caught_up"]);
        stop.send_replace(true);
        task.await.unwrap();
    }

    #[test]
    fn a_finding_an_exception_covers_is_left_out_unless_the_filter_asks() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("events.db")).unwrap();
        let raised = |seq: u64, rule: &str| Event {
            kind: "finding_raised".into(),
            severity: "high".into(),
            rule_id: rule.into(),
            path: "/etc/kubernetes/manifests/kube-apiserver.yaml".into(),
            body: serde_json::json!({
                "kind": "finding_raised", "key": rule,
                "path": "/etc/kubernetes/manifests/kube-apiserver.yaml",
                "finding": {"rule_id": rule, "severity": "high", "status": "fail"},
            })
            .to_string()
            .into_bytes(),
            ..event(seq)
        };
        store
            .insert("cp-1", 1, &[raised(1, "accepted"), raised(2, "open")])
            .unwrap();
        store
            .add_exception(&crate::store::Exception {
                rule_id: "accepted".into(),
                node: "cp-1".into(),
                max_severity: "high".into(),
                reason: "a test".into(),
                author: "admin".into(),
                created: "2026-12-01T00:00:00.000Z".into(),
                expires: "2099-01-01T00:00:00.000Z".into(),
                ..Default::default()
            })
            .unwrap();
        let events = store.list(&Filter::default(), 0, 100).unwrap();
        let rules = |f: &SinkFilter| -> Vec<String> {
            select(f, &store, events.clone())
                .unwrap()
                .into_iter()
                .filter(|e| e.event.kind == "finding_raised")
                .map(|e| e.event.rule_id)
                .collect()
        };
        assert_eq!(rules(&SinkFilter::default()), ["open"]);
        let mut all = SinkFilter::default();
        all.excepted = true;
        assert_eq!(rules(&all), ["accepted", "open"]);
    }
}

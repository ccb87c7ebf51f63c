//! The shipper against a real moto_server through the real SDK, with the fault-layer fixture in
//! front of it (it counts requests per operation and injects faults). Nothing leaves 127.0.0.1:
//! env credentials, `AWS_EC2_METADATA_DISABLED=true`, endpoint on loopback.

#[path = "shipper_fixtures/fault_proxy.rs"]
mod fault_proxy;
#[path = "shipper_fixtures/moto.rs"]
mod moto;

use std::path::Path;
use std::time::{Duration, Instant};

use fault_proxy::{Fault, FaultProxy};
use moto::{read_back, record, sequences, Moto};
use notebook_agent::audit::change::now_ms;
use notebook_agent::audit::shipper::{
    build_client, ClientSettings, MemorySpool, Shipper, ShipperConfig, ShipperEvent, Stats,
};
use notebook_agent::config::SecretUrl;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

const GROUP: &str = "/aws/sagemaker/NotebookInstances";
const STREAM: &str = "nb-test/audit";

struct Running {
    handle: JoinHandle<(Stats, MemorySpool)>,
    stop: watch::Sender<bool>,
    events: mpsc::UnboundedReceiver<ShipperEvent>,
}

fn fast_config(state: &Path) -> ShipperConfig {
    let mut c = ShipperConfig::new(GROUP, STREAM, state.to_path_buf());
    c.flush = Duration::from_millis(200);
    c.poll = Duration::from_millis(20);
    c.backoff_base = Duration::from_millis(50);
    c.backoff_cap = Duration::from_millis(800);
    c.stats_every = Duration::from_millis(200);
    c
}

async fn start(endpoint: &str, cfg: ShipperConfig, spool: &MemorySpool) -> Running {
    moto::set_test_env();
    let mut settings = ClientSettings::new(moto::REGION);
    settings.endpoint_url = Some(SecretUrl::new(endpoint));
    settings.connect_timeout = Duration::from_secs(2);
    settings.read_timeout = Duration::from_secs(10);
    settings.attempt_timeout = Duration::from_secs(15);
    let client = build_client(&settings).await.expect("client");
    let (stop, rx) = watch::channel(false);
    let (tx, events) = mpsc::unbounded_channel();
    let shipper = Shipper::new(client, cfg, spool.clone(), rx).with_events(tx);
    Running {
        handle: tokio::spawn(shipper.run()),
        stop,
        events,
    }
}

async fn wait_acked(spool: &MemorySpool, seq: u64, within: Duration) {
    let t = Instant::now();
    while spool.acked() < Some(seq) {
        assert!(
            t.elapsed() < within,
            "acked {:?}, wanted {seq} within {within:?}",
            spool.acked()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn stop(r: Running) -> (Stats, Vec<ShipperEvent>) {
    let _ = r.stop.send(true);
    let (stats, _) = r.handle.await.expect("shipper task");
    let mut events = r.events;
    let mut out = Vec::new();
    while let Ok(e) = events.try_recv() {
        out.push(e);
    }
    (stats, out)
}

/// Appends `n` records whose payload carries their own spool sequence number.
fn push_records(spool: &MemorySpool, first: u64, n: u64, pad: usize) -> u64 {
    let t = now_ms();
    let mut last = 0;
    for i in 0..n {
        let seq = spool.push(t, record(first + i, pad));
        assert_eq!(seq, first + i, "the test numbers records like the spool");
        last = seq;
    }
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_and_stream_created_on_first_put_without_describe() {
    let moto = Moto::start();
    let proxy = FaultProxy::start(moto.port).await;
    let state = tempfile::tempdir().expect("tempdir");
    let spool = MemorySpool::new();
    let mut cfg = fast_config(state.path());
    cfg.retention_days = Some(7);
    cfg.kms_key_id = Some("arn:aws:kms:eu-west-1:123456789012:key/test".into());
    let r = start(&proxy.endpoint(), cfg, &spool).await;

    push_records(&spool, 1, 10, 0);
    wait_acked(&spool, 10, Duration::from_secs(20)).await;
    // Steady state: one PutLogEvents per flush, nothing else.
    push_records(&spool, 11, 10, 0);
    wait_acked(&spool, 20, Duration::from_secs(20)).await;
    let (stats, events) = stop(r).await;

    println!("requests: {:?}", proxy.log());
    assert_eq!(proxy.count("DescribeLogStreams"), 0);
    assert_eq!(proxy.count("DescribeLogGroups"), 0);
    assert_eq!(proxy.count("CreateLogGroup"), 1);
    assert_eq!(
        proxy.count("CreateLogStream"),
        2,
        "stream first, group missing, stream again"
    );
    assert_eq!(proxy.count("PutRetentionPolicy"), 1);
    assert_eq!(
        proxy.count("PutLogEvents"),
        3,
        "not found, then one per batch"
    );
    assert_eq!(stats.shipped, 20);
    assert_eq!(stats.created, 2);
    assert!(events.contains(&ShipperEvent::DestinationCreated {
        group: true,
        stream: false
    }));

    let groups = moto::aws_logs(
        moto.port,
        &["describe-log-groups", "--log-group-name-prefix", GROUP],
    );
    let g = &groups["logGroups"][0];
    assert_eq!(g["retentionInDays"], 7);
    assert_eq!(g["kmsKeyId"], "arn:aws:kms:eu-west-1:123456789012:key/test");
    let back = read_back(moto.port, GROUP, STREAM);
    assert_eq!(sequences(&back), (1..=20).collect::<Vec<u64>>());
    let persisted = Stats::load(state.path()).expect("load").expect("persisted");
    assert_eq!(persisted.shipped, 20);
    assert_eq!(persisted.acked_seq, Some(20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_25000_arrive_in_order_exactly_once() {
    let moto = Moto::start();
    let proxy = FaultProxy::start(moto.port).await;
    let state = tempfile::tempdir().expect("tempdir");
    let spool = MemorySpool::new();
    let r = start(&proxy.endpoint(), fast_config(state.path()), &spool).await;
    let n = push_records(&spool, 1, 25_000, 60);
    wait_acked(&spool, n, Duration::from_secs(120)).await;
    let (stats, _) = stop(r).await;

    let back = read_back(moto.port, GROUP, STREAM);
    let seqs = sequences(&back);
    println!(
        "shipped {} events in {} batches; read back {}; PutLogEvents calls {}",
        stats.shipped,
        stats.batches,
        seqs.len(),
        proxy.count("PutLogEvents")
    );
    assert_eq!(seqs, (1..=n).collect::<Vec<u64>>(), "each once, in order");
    assert_eq!(stats.shipped, n);
    assert_eq!(
        stats.retried, 0,
        "ResourceNotFound creates; it is not a retry"
    );
    assert_eq!(proxy.count("DescribeLogStreams"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moto_killed_mid_run_and_restarted_nothing_lost() {
    let mut moto = Moto::start();
    let proxy = FaultProxy::start(moto.port).await;
    let state = tempfile::tempdir().expect("tempdir");
    let spool = MemorySpool::new();
    let r = start(&proxy.endpoint(), fast_config(state.path()), &spool).await;

    // A producer that keeps writing through the outage: 50 records every 50 ms.
    let producer_spool = spool.clone();
    let producer = tokio::spawn(async move {
        let mut next = 1u64;
        for _ in 0..80 {
            next = push_records(&producer_spool, next, 50, 100) + 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        next - 1
    });
    wait_acked(&spool, 200, Duration::from_secs(20)).await;
    moto.kill();
    // A response read just before the kill may still be acked: let that settle.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let acked_at_kill = spool.acked().unwrap_or(0);
    assert!(acked_at_kill > 0, "something was shipped before the kill");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        spool.acked().unwrap_or(0),
        acked_at_kill,
        "no ack while down"
    );
    let moto2 = Moto::start();
    proxy.set_upstream(moto2.port);
    let last = producer.await.expect("producer");
    wait_acked(&spool, last, Duration::from_secs(60)).await;
    let (stats, _) = stop(r).await;

    // moto lost its memory: the new one must hold every record not acknowledged before the kill.
    let seqs = sequences(&read_back(moto2.port, GROUP, STREAM));
    println!(
        "acked at kill {acked_at_kill}, last {last}, new moto holds {} (first {:?}), retried {}",
        seqs.len(),
        seqs.first(),
        stats.retried
    );
    let wanted: Vec<u64> = ((acked_at_kill + 1)..=last).collect();
    assert_eq!(
        seqs, wanted,
        "every unacked record once, in order; nothing acked re-sent"
    );
    assert!(stats.retried >= 2, "retried through the outage");
    assert_eq!(
        proxy.count("CreateLogGroup"),
        2,
        "re-created after the restart"
    );
    assert_eq!(proxy.count("DescribeLogStreams"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_and_5xx_storm_backs_off_and_delivers() {
    let moto = Moto::start();
    let proxy = FaultProxy::start(moto.port).await;
    let state = tempfile::tempdir().expect("tempdir");
    let spool = MemorySpool::new();
    // Group and stream exist already: every fault hits PutLogEvents.
    moto::aws_logs(moto.port, &["create-log-group", "--log-group-name", GROUP]);
    moto::aws_logs(
        moto.port,
        &[
            "create-log-stream",
            "--log-group-name",
            GROUP,
            "--log-stream-name",
            STREAM,
        ],
    );
    proxy.push(Fault::Throttle, 3);
    proxy.push(Fault::Unavailable, 2);
    proxy.push(Fault::Internal, 1);
    proxy.push(Fault::Reset, 1);
    proxy.push(Fault::Slow(Duration::from_millis(300)), 1);
    let t = Instant::now();
    let r = start(&proxy.endpoint(), fast_config(state.path()), &spool).await;
    let n = push_records(&spool, 1, 100, 0);
    wait_acked(&spool, n, Duration::from_secs(60)).await;
    let took = t.elapsed();
    let (stats, _) = stop(r).await;

    println!("fault log: {:?}", proxy.log());
    println!("delivered after {took:?} with {} retries", stats.retried);
    assert_eq!(stats.retried, 7, "3 throttles + 2 x 503 + 500 + reset");
    assert_eq!(
        proxy.count("PutLogEvents"),
        8,
        "7 failures, then the slow one succeeds"
    );
    assert!(
        took >= Duration::from_millis(300),
        "backoff and the slow answer take time"
    );
    assert_eq!(
        sequences(&read_back(moto.port, GROUP, STREAM)),
        (1..=n).collect::<Vec<_>>()
    );
    assert_eq!(proxy.count("DescribeLogStreams"), 0);
    let persisted = Stats::load(state.path()).expect("load").expect("persisted");
    assert_eq!(persisted.retried, 7);
    assert!(persisted.last_error.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_what_it_can_within_the_bound() {
    let moto = Moto::start();
    let proxy = FaultProxy::start(moto.port).await;
    let state = tempfile::tempdir().expect("tempdir");
    let spool = MemorySpool::new();
    // A long flush: only the drain can ship these.
    let mut cfg = fast_config(state.path());
    cfg.flush = Duration::from_secs(600);
    let r = start(&proxy.endpoint(), cfg.clone(), &spool).await;
    let n = push_records(&spool, 1, 3000, 0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(spool.acked(), None, "nothing flushed yet");
    let t = Instant::now();
    let (stats, _) = stop(r).await;
    println!("drained {} events in {:?}", stats.shipped, t.elapsed());
    assert_eq!(spool.acked(), Some(n), "drain shipped everything");

    // Endpoint down: the drain gives up at its bound, the rest stays unacknowledged.
    proxy.set_down(true);
    let more = push_records(&spool, n + 1, 100, 0);
    cfg.drain_timeout = Duration::from_secs(2);
    let r = start(&proxy.endpoint(), cfg.clone(), &spool).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = Instant::now();
    let _ = stop(r).await;
    let took = t.elapsed();
    println!("drain against a dead endpoint returned after {took:?}");
    assert!(took < Duration::from_secs(4), "bounded: {took:?}");
    assert_eq!(spool.acked(), Some(n));
    assert_eq!(spool.unacked(), 100);

    // Next start (cursor back at the ack): delivered.
    proxy.set_down(false);
    spool.rewind_to_ack();
    let r = start(&proxy.endpoint(), fast_config(state.path()), &spool).await;
    wait_acked(&spool, more, Duration::from_secs(20)).await;
    let _ = stop(r).await;
    assert_eq!(
        sequences(&read_back(moto.port, GROUP, STREAM)),
        (1..=more).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_starts_the_drain() {
    let moto = Moto::start();
    let state = tempfile::tempdir().expect("tempdir");
    let spool = MemorySpool::new();
    moto::set_test_env();
    let mut settings = ClientSettings::new(moto::REGION);
    settings.endpoint_url = Some(SecretUrl::new(moto.endpoint()));
    let client = build_client(&settings).await.expect("client");
    let rx = notebook_agent::audit::shipper::shutdown_on_signals().expect("signals");
    let mut cfg = fast_config(state.path());
    cfg.flush = Duration::from_secs(600);
    let n = push_records(&spool, 1, 500, 0);
    let handle = tokio::spawn(Shipper::new(client, cfg, spool.clone(), rx).run());
    tokio::time::sleep(Duration::from_millis(300)).await;
    nix::sys::signal::kill(nix::unistd::getpid(), nix::sys::signal::Signal::SIGTERM)
        .expect("SIGTERM self");
    let (stats, _) = tokio::time::timeout(Duration::from_secs(20), handle)
        .await
        .expect("returned after SIGTERM")
        .expect("task");
    assert_eq!(stats.shipped, n);
    assert_eq!(spool.acked(), Some(n));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_truncated_and_too_old_rejected_locally() {
    let moto = Moto::start();
    let state = tempfile::tempdir().expect("tempdir");
    let spool = MemorySpool::new();
    let now = now_ms();
    spool.push(now - 15 * 86_400_000, record(1, 0)); // too old
    spool.push(now, record(2, 300_000)); // oversize
    spool.push(now, record(3, 0));
    let r = start(&moto.endpoint(), fast_config(state.path()), &spool).await;
    wait_acked(&spool, 3, Duration::from_secs(20)).await;
    let (stats, events) = stop(r).await;

    assert_eq!(stats.rejected, 1);
    assert_eq!(stats.truncated, 1);
    assert_eq!(stats.shipped, 2);
    assert!(events.iter().any(|e| matches!(
        e,
        ShipperEvent::RejectedLocally {
            seq: 1,
            reason: "too_old",
            ..
        }
    )));
    let back = read_back(moto.port, GROUP, STREAM);
    assert_eq!(sequences(&back), vec![2, 3]);
    let wrapper: serde_json::Value = serde_json::from_str(&back[0].1).expect("JSON");
    assert_eq!(wrapper["truncated"], true);
    assert_eq!(wrapper["uid"], "uid-2");
    assert!(wrapper["original_bytes"]
        .as_u64()
        .is_some_and(|b| b > 300_000));
    assert!(back[0].1.len() <= 262_118);
    let dead = std::fs::read_to_string(state.path().join("shipper-rejected.jsonl"))
        .expect("dead-letter file");
    let line: serde_json::Value = serde_json::from_str(dead.trim()).expect("JSON line");
    assert_eq!(line["sequence"], 1);
    assert_eq!(line["reason"], "too_old");
}

/// Regression (issue 13, "the suite can hang"): the read-back paged with one `aws` process per
/// page until a page came back empty, so a writer adding events about as fast as one page call
/// took kept it going for ever. It must end (at the end of the stream as one call found it) while
/// a writer keeps adding, within a bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_back_ends_while_a_writer_keeps_adding_events() {
    let moto = Moto::start();
    let client = moto::sdk_client(moto.port);
    client
        .create_log_group()
        .log_group_name(GROUP)
        .send()
        .await
        .expect("create group");
    client
        .create_log_stream()
        .log_group_name(GROUP)
        .log_stream_name(STREAM)
        .send()
        .await
        .expect("create stream");
    let writer_client = client.clone();
    let put = move |seq: u64| {
        let c = writer_client.clone();
        async move {
            let ev = aws_sdk_cloudwatchlogs::types::InputLogEvent::builder()
                .timestamp(now_ms())
                .message(String::from_utf8(record(seq, 10)).expect("UTF-8"))
                .build()
                .expect("event");
            c.put_log_events()
                .log_group_name(GROUP)
                .log_stream_name(STREAM)
                .log_events(ev)
                .send()
                .await
                .expect("put");
        }
    };
    // 20,000 events first (more than one page), then a writer that never stops while the
    // read-back runs: one event every 5 ms.
    let mut seq = 0;
    for chunk in 0..2 {
        let events: Vec<_> = (1..=10_000)
            .map(|i| {
                aws_sdk_cloudwatchlogs::types::InputLogEvent::builder()
                    .timestamp(now_ms())
                    .message(String::from_utf8(record(chunk * 10_000 + i, 10)).expect("UTF-8"))
                    .build()
                    .expect("event")
            })
            .collect();
        client
            .put_log_events()
            .log_group_name(GROUP)
            .log_stream_name(STREAM)
            .set_log_events(Some(events))
            .send()
            .await
            .expect("put 10,000");
        seq += 10_000;
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writing = std::sync::Arc::clone(&stop);
    let writer = tokio::spawn(async move {
        let mut seq = seq;
        while !writing.load(std::sync::atomic::Ordering::SeqCst) {
            seq += 1;
            put(seq).await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        seq
    });
    let port = moto.port;
    let t = Instant::now();
    let reading = tokio::task::spawn_blocking(move || read_back(port, GROUP, STREAM));
    let read = tokio::time::timeout(Duration::from_secs(90), reading).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let written = writer.await.expect("writer");
    let events = read
        .unwrap_or_else(|_| panic!("read-back still going after 90 s while a writer adds events"))
        .expect("read-back task");
    println!(
        "read-back: {} events in {:.1} s while the writer went on to {written}",
        events.len(),
        t.elapsed().as_secs_f64()
    );
    let seqs = sequences(&events);
    assert!(
        seqs.len() >= 20_000,
        "at least what was there: {}",
        seqs.len()
    );
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "a prefix of the stream, in order"
    );
}

//! Benchmark: 100,000 OCSF-sized records through the shipper service into a real moto_server
//! (loopback, the pinned venv from tests/moto.sh). Prints events/s (first record pushed → last
//! ack), the per-batch PutLogEvents latency seen by the spool (push → ack, p50/p99) and the
//! process's peak RSS (VmHWM). `cargo bench --bench ship`; `SHIP_BENCH_EVENTS=N` to change N.

#[path = "../tests/shipper_fixtures/moto.rs"]
mod moto;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use notebook_agent::audit::change::now_ms;
use notebook_agent::audit::shipper::{
    build_client, ClientSettings, MemorySpool, Shipper, ShipperConfig,
};
use notebook_agent::config::SecretUrl;
use tokio::sync::watch;

fn vm_hwm_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this as a quick smoke test.
    let benching = std::env::args().any(|a| a == "--bench");
    let n: u64 = std::env::var("SHIP_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if benching { 100_000 } else { 2_000 });
    moto::set_test_env();
    let server = moto::Moto::start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let state = tempfile::tempdir().expect("tempdir");
        let mut settings = ClientSettings::new(moto::REGION);
        settings.endpoint_url = Some(SecretUrl::new(server.endpoint()));
        let client = build_client(&settings).await.expect("client");
        let cfg = ShipperConfig::new(
            "/aws/sagemaker/NotebookInstances",
            "bench/audit",
            state.path().to_path_buf(),
        );
        let spool = MemorySpool::new();
        let (stop, rx) = watch::channel(false);
        let handle = tokio::spawn(Shipper::new(client, cfg, spool.clone(), rx).run());

        // Produce in chunks of 1000 as fast as the shipper takes them, keeping at most 20,000
        // unshipped in memory (the real spool keeps its backlog on disk, so RSS here is the
        // shipper's, not the backlog's). Remember when each chunk was pushed: push → ack latency.
        let start = Instant::now();
        let pushed_at: Arc<Mutex<Vec<(u64, Instant)>>> = Arc::default();
        // The monitor: every 2 ms, the chunks whose last record is now acked.
        let monitor = {
            let spool = spool.clone();
            let pushed_at = pushed_at.clone();
            tokio::spawn(async move {
                let mut latencies: Vec<Duration> = Vec::new();
                let mut next = 0usize;
                loop {
                    let acked = spool.acked().unwrap_or(0);
                    {
                        let p = pushed_at.lock().expect("lock");
                        while next < p.len() && p[next].0 <= acked {
                            latencies.push(p[next].1.elapsed());
                            next += 1;
                        }
                    }
                    if acked >= n {
                        return latencies;
                    }
                    assert!(
                        start.elapsed() < Duration::from_secs(600),
                        "stalled at {acked}"
                    );
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            })
        };
        let t = now_ms();
        let mut seq = 0;
        while seq < n {
            while spool.unacked() >= 20_000 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            for _ in 0..1000.min(n - seq) {
                seq = spool.push(t, moto::record(seq + 1, 350));
            }
            pushed_at.lock().expect("lock").push((seq, Instant::now()));
            tokio::task::yield_now().await;
        }
        let mut latencies = monitor.await.expect("monitor");
        let took = start.elapsed();
        let _ = stop.send(true);
        let (stats, _) = handle.await.expect("shipper");
        latencies.sort();
        let pct = |p: f64| latencies[((latencies.len() as f64 - 1.0) * p) as usize];
        let record_bytes = moto::record(1, 350).len();
        println!(
            "ship: {n} events of {record_bytes} B in {:.2} s = {:.0} events/s; {} batches; \
             push->ack p50 {:?} p99 {:?}; peak RSS (VmHWM) {} KiB",
            took.as_secs_f64(),
            n as f64 / took.as_secs_f64(),
            stats.batches,
            pct(0.5),
            pct(0.99),
            vm_hwm_kib()
        );
        assert_eq!(stats.shipped, n);
    });
}

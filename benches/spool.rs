//! Spool append throughput: N ~600-byte OCSF-like JSON records, `sync()` every 100 ms or every
//! 1,000 records (whichever comes first), as the watch daemon does; then the shipper's side, read
//! in CloudWatch-sized batches and ack. Run on a journaled filesystem: `benches/spool.sh` sets up
//! a loop-mounted ext4 image and points `SPOOL_BENCH_DIR` at it (default: a tempdir in /tmp).
//! `SPOOL_BENCH_N` overrides the record count.

use std::error::Error;
use std::time::{Duration, Instant};

use notebook_agent::audit::spool::{open, Appended, SpoolOptions};

const SYNC_EVERY: u64 = 1_000;
const SYNC_INTERVAL: Duration = Duration::from_millis(100);

fn payload(seq: u64, i: u64) -> Vec<u8> {
    format!(
        concat!(
            r#"{{"activity_id":3,"category_uid":1,"class_uid":1001,"type_uid":100103,"severity_id":1,"#,
            r#""time":{time},"actor":{{"user":{{"name":"ec2-user","uid":"1000"}}}},"#,
            r#""file":{{"path":"/home/ec2-user/SageMaker/project/notebooks/analysis-{i:08}.ipynb","#,
            r#""name":"analysis-{i:08}.ipynb","type_id":1,"size":48213,"owner":{{"uid":"1000"}},"#,
            r#""mode":"0644","uid":"{inode}","modified_time":{time},"#,
            r#""hashes":[{{"algorithm_id":3,"value":"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"}}]}},"#,
            r#""device":{{"hostname":"nb-bench","region":"eu-west-1"}},"#,
            r#""metadata":{{"version":"1.1.0","product":{{"name":"notebook-agent","version":"0.1.0"}},"#,
            r#""uid":"c4f1f8f2-6a39-4d0e-8d4b-{i:012}","sequence":{seq}}}}}"#
        ),
        time = 1_700_000_000_000u64 + i,
        i = i,
        inode = 1_000_000 + i,
        seq = seq,
    )
    .into_bytes()
}

fn main() -> Result<(), Box<dyn Error>> {
    let n: u64 = match std::env::var("SPOOL_BENCH_N") {
        Ok(v) => v.parse()?,
        Err(_) => 200_000,
    };
    let tmp;
    let base = match std::env::var_os("SPOOL_BENCH_DIR") {
        Some(d) => tempfile::tempdir_in(d)?,
        None => {
            tmp = tempfile::tempdir()?;
            tempfile::tempdir_in(tmp.path())?
        }
    };
    let dir = base.path().join("spool");
    let opts = SpoolOptions {
        max_bytes: 4 << 30,
        sync_interval: SYNC_INTERVAL,
        ..SpoolOptions::default()
    };
    let (mut w, mut r, _) = open(&dir, opts)?;

    let mut bytes = 0u64;
    let mut syncs = 0u64;
    let mut sync_time = Duration::ZERO;
    let mut max_sync = Duration::ZERO;
    let mut since_sync = 0u64;
    let mut last_sync = Instant::now();
    let start = Instant::now();
    for i in 0..n {
        let mut len = 0;
        let out = w.append(1_700_000_000_000 + i as i64, |seq| {
            let p = payload(seq, i);
            len = p.len();
            p
        })?;
        if out == Appended::Dropped {
            return Err("record dropped; raise max_bytes".into());
        }
        bytes += len as u64;
        since_sync += 1;
        if since_sync >= SYNC_EVERY || last_sync.elapsed() >= SYNC_INTERVAL {
            let t = Instant::now();
            w.sync()?;
            let d = t.elapsed();
            sync_time += d;
            max_sync = max_sync.max(d);
            syncs += 1;
            since_sync = 0;
            last_sync = Instant::now();
        }
    }
    w.sync()?;
    let elapsed = start.elapsed().as_secs_f64();
    println!(
        "spool append: {n} records, {:.1} MB payload, avg {} B/record, in {elapsed:.3} s",
        bytes as f64 / 1e6,
        bytes / n.max(1)
    );
    println!(
        "spool append: {:.0} records/s, {:.1} MB/s; {syncs} syncs, mean {:.2} ms, max {:.2} ms",
        n as f64 / elapsed,
        bytes as f64 / 1e6 / elapsed,
        sync_time.as_secs_f64() * 1e3 / syncs.max(1) as f64,
        max_sync.as_secs_f64() * 1e3
    );

    // The shipper's side: batches as CloudWatch takes them, acked (segments deleted as they go).
    let start = Instant::now();
    let mut after = 0;
    let mut read = 0u64;
    loop {
        let batch = r.read_from(after, 10_000, 1_048_576 - 26 * 10_000)?;
        let Some(last) = batch.last() else { break };
        after = last.seq;
        read += batch.len() as u64;
        r.ack(after)?;
    }
    let elapsed = start.elapsed().as_secs_f64();
    if read != n {
        return Err(format!("read back {read} of {n} records").into());
    }
    println!(
        "spool read+ack: {:.0} records/s, {:.1} MB/s",
        read as f64 / elapsed,
        bytes as f64 / 1e6 / elapsed
    );
    drop((w, r));
    Ok(())
}

//! Watch setup for 10,000 directories / 100,000 files (target ≤ 1 s) and the snapshot's size and
//! times. Run through `benches/watch_setup.sh`, which sets `WATCH_BENCH_DIR` to a fresh journaled
//! ext4 image; without it a tempdir is used (on this machine's journal-less root fs the creation
//! figures are not representative).
#![allow(clippy::print_stdout)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use notebook_agent::audit::snapshot::{catch_up, Loaded, Snapshot};
use notebook_agent::audit::source::SourceKind;
use notebook_agent::audit::watcher::{WatchConfig, Watcher};

const TOP: usize = 100;
const SUB: usize = 100;
const FILES_PER_DIR: usize = 10;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let _tmp;
    let base = match std::env::var_os("WATCH_BENCH_DIR") {
        Some(d) => PathBuf::from(d),
        None => {
            _tmp = tempfile::tempdir()?;
            _tmp.path().to_path_buf()
        }
    };
    let root = base.join("SageMaker");
    let spool = base.join("spool");
    std::fs::create_dir_all(&root)?;
    std::fs::create_dir_all(&spool)?;

    let t = Instant::now();
    let mut dirs = 0;
    let mut files = 0;
    for a in 0..TOP {
        for b in 0..SUB {
            let d = root
                .join(format!("project{a:03}"))
                .join(format!("data{b:03}"));
            std::fs::create_dir_all(&d)?;
            dirs += 1;
            for f in 0..FILES_PER_DIR {
                std::fs::write(d.join(format!("part-{f:02}.csv")), b"a,b,c\n1,2,3\n")?;
                files += 1;
            }
        }
    }
    let dirs_total = dirs + TOP + 1;
    println!(
        "tree: {dirs_total} directories, {files} files under {} (created in {:.2} s)",
        root.display(),
        t.elapsed().as_secs_f64()
    );

    let cfg = WatchConfig {
        roots: vec![root.clone()],
        exclude_paths: vec![spool.clone()],
        ..WatchConfig::default()
    };
    let mut setups = Vec::new();
    let mut last = None;
    for _ in 0..3 {
        let t = Instant::now();
        let (w, rx, info) = Watcher::start(cfg.clone(), None)?;
        setups.push(t.elapsed());
        // inotify watches every directory; fanotify's one filesystem mark needs none.
        let want = match info.source {
            SourceKind::Inotify => dirs_total,
            SourceKind::Fanotify => 0,
        };
        assert_eq!(info.watches as usize, want, "watches for {:?}", info.source);
        last = Some((w, rx, info));
    }
    let (w, rx, info) = last.ok_or("no run")?;
    setups.sort();
    println!(
        "watch setup ({:?}: marks + scan of every directory): median {:.3} s, min {:.3} s, max {:.3} s; {} watches, {} known paths (target <= 1 s)",
        info.source,
        setups[1].as_secs_f64(),
        setups[0].as_secs_f64(),
        setups[2].as_secs_f64(),
        info.watches,
        info.known_paths
    );

    let t = Instant::now();
    let snap = w.snapshot().ok_or("snapshot")?;
    let copy = t.elapsed();
    let t = Instant::now();
    let bytes = snap.encode();
    let encode = t.elapsed();
    let t = Instant::now();
    let path = snap.save(&spool)?;
    let save = t.elapsed();
    let t = Instant::now();
    let loaded = match Snapshot::load(&spool) {
        Loaded::Found(s) => s,
        other => return Err(format!("snapshot not loaded: {other:?}").into()),
    };
    let load = t.elapsed();
    let t = Instant::now();
    let changes = catch_up(&loaded, &snap);
    let diff = t.elapsed();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "snapshot: {} entries, {} bytes ({:.1} bytes/entry) at {}; copy {:.1} ms, encode {:.1} ms, save (fsync+rename) {:.1} ms, load+decode {:.1} ms, catch_up (no change) {:.1} ms -> {} changes",
        snap.len(),
        bytes.len(),
        bytes.len() as f64 / snap.len() as f64,
        path.display(),
        ms(copy),
        ms(encode),
        ms(save),
        ms(load),
        ms(diff),
        changes.len()
    );
    let json_estimate = serde_json::to_vec(
        &snap
            .entries
            .iter()
            .take(1000)
            .map(|(p, f)| {
                (
                    p.to_string_lossy(),
                    f.inode,
                    f.size,
                    f.mtime_ms,
                    f.mode,
                    f.uid,
                )
            })
            .collect::<Vec<_>>(),
    )?
    .len();
    println!(
        "for comparison: compact JSON of the same fields ~ {} bytes/entry",
        json_estimate / 1000
    );
    w.stop();
    drop(rx);
    Ok(())
}

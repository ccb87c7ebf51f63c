use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::*;
use crate::audit::change::{Digest, FileFacts, FileKind};

type Model = BTreeMap<PathBuf, FileFacts>;

fn facts(inode: u64) -> FileFacts {
    FileFacts {
        kind: if inode % 7 == 0 {
            FileKind::Directory
        } else {
            FileKind::Regular
        },
        size: inode * 13,
        uid: 1000,
        gid: 1000,
        mode: 0o644,
        inode,
        mtime_ms: 1_700_000_000_000 + inode as i64,
        sha256: (inode % 5 == 0).then(|| Digest::from_hex(&format!("{:064x}", inode)).unwrap()),
        hash_note: None,
        link_target: (inode % 11 == 0).then(|| PathBuf::from(format!("../t{inode}"))),
    }
}

fn small() -> TreeOptions {
    TreeOptions {
        cache_bytes: 4 << 10,
        compact_min_bytes: 4 << 10,
    }
}

fn dump(t: &mut Tree) -> Model {
    let mut m = Model::new();
    t.visit(Path::new("/"), &mut |p, f| {
        m.insert(p.to_path_buf(), f.clone());
    });
    m
}

fn below<'a>(m: &'a Model, top: &'a Path) -> impl Iterator<Item = &'a PathBuf> + 'a {
    m.range(top.to_path_buf()..)
        .take_while(move |(p, _)| p.starts_with(top))
        .map(|(p, _)| p)
}

fn model_remove_subtree(m: &mut Model, top: &Path) -> Vec<PathBuf> {
    let keys: Vec<PathBuf> = below(m, top).cloned().collect();
    for k in &keys {
        m.remove(k);
    }
    keys.into_iter().rev().collect()
}

fn model_rename(m: &mut Model, from: &Path, to: &Path) {
    if from == to || to.starts_with(from) || from.starts_with(to) {
        return;
    }
    model_remove_subtree(m, to);
    let keys: Vec<PathBuf> = below(m, from).cloned().collect();
    for k in keys {
        if let (Some(f), Ok(rel)) = (m.remove(&k), k.strip_prefix(from)) {
            let np = if rel.as_os_str().is_empty() {
                to.to_path_buf()
            } else {
                to.join(rel)
            };
            m.insert(np, f);
        }
    }
}

fn fill(t: &mut Tree, m: &mut Model, dirs: usize, files: usize) {
    for d in 0..dirs {
        let dir = PathBuf::from(format!("/data/set/d{d:04}"));
        t.upsert(&dir, facts(7 * (d as u64 + 1)));
        m.insert(dir.clone(), facts(7 * (d as u64 + 1)));
        for f in 0..files {
            let p = dir.join(format!("f{f:04}.jpg"));
            let x = facts((d * files + f) as u64 * 7 + 1);
            t.upsert(&p, x.clone());
            m.insert(p, x);
        }
        if d % 20 == 19 {
            let n = t.checkpoint().expect("checkpoint").expect("dirty");
            t.commit(n).expect("commit");
        }
    }
    if let Some(n) = t.checkpoint().expect("checkpoint") {
        t.commit(n).expect("commit");
    }
}

#[test]
fn round_trip_through_the_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut t, report) = Tree::open(dir.path(), small()).expect("open");
    assert!(report.created);
    let mut m = Model::new();
    fill(&mut t, &mut m, 5, 20);
    let odd = PathBuf::from(std::ffi::OsString::from_vec(
        b"/data/bad\xff\nname".to_vec(),
    ));
    t.upsert(&odd, facts(3));
    m.insert(odd.clone(), facts(3));
    let n = t.checkpoint().expect("cp").expect("dirty");
    t.commit(n).expect("commit");
    assert_eq!(t.len(), m.len() as u64);
    drop(t);
    let (mut t, report) = Tree::open(dir.path(), small()).expect("reopen");
    assert!(!report.created && !report.suspicious(), "{report:?}");
    assert_eq!(report.truncated_bytes, 0);
    assert_eq!(report.entries, m.len() as u64);
    assert_eq!(t.len(), m.len() as u64);
    assert_eq!(dump(&mut t), m);
    assert_eq!(t.lookup(&odd), Some(facts(3)));
    assert_eq!(t.lookup(Path::new("/data/set/d0001/nothing")), None);
    assert_eq!(t.lookup(Path::new("/nowhere/at/all")), None);
    assert_eq!(t.list_dir(Path::new("/data/set/d0002")).len(), 20);
}

use std::os::unix::ffi::OsStringExt;

#[test]
fn an_uncommitted_checkpoint_is_not_opened() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut t, _) = Tree::open(dir.path(), small()).expect("open");
    let mut m = Model::new();
    fill(&mut t, &mut m, 2, 10);
    t.upsert(Path::new("/data/set/new"), facts(99));
    t.remove(Path::new("/data/set/d0000/f0001.jpg"));
    assert!(t.checkpoint().expect("cp").is_some());
    drop(t);
    let (mut t, report) = Tree::open(dir.path(), small()).expect("reopen");
    assert!(
        report.truncated_bytes > 0 && !report.suspicious(),
        "{report:?}"
    );
    assert_eq!(dump(&mut t), m);
    // Numbering continues from the commit: the next checkpoint and commit work.
    t.upsert(Path::new("/data/set/again"), facts(98));
    m.insert(PathBuf::from("/data/set/again"), facts(98));
    let n = t.checkpoint().expect("cp").expect("dirty");
    t.commit(n).expect("commit");
    drop(t);
    let (mut t, _) = Tree::open(dir.path(), small()).expect("reopen");
    assert_eq!(dump(&mut t), m);
}

/// Every prefix of the log from the state before an update to the commit of that update opens as
/// the previous state; only the whole of it opens as the new one.
#[test]
fn a_crash_at_any_byte_of_an_update_opens_the_previous_state() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut t, _) = Tree::open(dir.path(), small()).expect("open");
    let mut before = Model::new();
    fill(&mut t, &mut before, 3, 6);
    let start = t.log_bytes();
    let mut after = before.clone();
    t.rename(Path::new("/data/set/d0001"), Path::new("/data/moved"));
    model_rename(
        &mut after,
        Path::new("/data/set/d0001"),
        Path::new("/data/moved"),
    );
    t.upsert(Path::new("/data/set/d0000/new.txt"), facts(500));
    after.insert(PathBuf::from("/data/set/d0000/new.txt"), facts(500));
    let mut seen = Vec::new();
    t.remove_subtree(Path::new("/data/set/d0002"), &mut |p, _| {
        seen.push(p.to_path_buf())
    });
    model_remove_subtree(&mut after, Path::new("/data/set/d0002"));
    let n = t.checkpoint().expect("cp").expect("dirty");
    t.commit(n).expect("commit");
    let end = t.log_bytes();
    drop(t);
    let full = std::fs::read(dir.path().join(FILE)).expect("read log");
    assert_eq!(full.len() as u64, end);
    for cut in start..=end {
        let d = tempfile::tempdir().expect("tempdir");
        std::fs::write(d.path().join(FILE), &full[..cut as usize]).expect("write");
        let (mut t, report) = Tree::open(d.path(), small()).expect("open cut");
        assert!(!report.suspicious(), "cut {cut}: {report:?}");
        let want = if cut == end { &after } else { &before };
        assert_eq!(&dump(&mut t), want, "cut at {cut} of {start}..{end}");
    }
}

#[test]
fn a_frame_with_a_bad_checksum_is_reported_and_not_trusted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut t, _) = Tree::open(dir.path(), small()).expect("open");
    let mut m = Model::new();
    fill(&mut t, &mut m, 2, 5);
    let mid = t.log_bytes();
    t.upsert(Path::new("/data/set/d0000/late"), facts(77));
    let n = t.checkpoint().expect("cp").expect("dirty");
    t.commit(n).expect("commit");
    t.upsert(Path::new("/data/set/d0001/later"), facts(78));
    let n = t.checkpoint().expect("cp").expect("dirty");
    t.commit(n).expect("commit");
    drop(t);
    // Flip a byte inside the payload of the first frame after `mid` (d0000's new entries).
    let path = dir.path().join(FILE);
    let mut bytes = std::fs::read(&path).expect("read");
    bytes[mid as usize + 20] ^= 0x40;
    std::fs::write(&path, &bytes).expect("write");
    let (mut t, report) = Tree::open(dir.path(), small()).expect("open");
    assert!(report.suspicious(), "{report:?}");
    assert!(report.damaged[0].contains("not intact"), "{report:?}");
    // The damaged record's directory is as before it; the later, intact one is there.
    assert_eq!(t.lookup(Path::new("/data/set/d0000/late")), None);
    assert_eq!(
        t.lookup(Path::new("/data/set/d0001/later")),
        Some(facts(78))
    );
    assert_eq!(
        t.lookup(Path::new("/data/set/d0000/f0003.jpg")),
        m.get(Path::new("/data/set/d0000/f0003.jpg")).cloned()
    );
    drop(t);
    // The damage was rewritten away at open: reported once.
    let (_, report) = Tree::open(dir.path(), small()).expect("open");
    assert!(!report.suspicious(), "{report:?}");
}

#[test]
fn a_bad_header_is_kept_aside_and_the_tree_starts_empty() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join(FILE), b"NBSNAP1\nwhatever").expect("write");
    let (t, report) = Tree::open(dir.path(), small()).expect("open");
    assert!(report.suspicious() && report.created, "{report:?}");
    assert!(t.is_empty());
    assert!(dir.path().join("watch.tree.bad").exists());
}

#[test]
fn compaction_keeps_exactly_the_live_state_and_survives_a_crash_before_the_rename() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut t, _) = Tree::open(dir.path(), small()).expect("open");
    let mut m = Model::new();
    fill(&mut t, &mut m, 4, 30);
    // Rewrite one directory many times: the log grows, the live state does not.
    let mut peak = 0;
    for i in 0..200u64 {
        let p = PathBuf::from(format!("/data/set/d0002/f{:04}.jpg", i % 30));
        t.upsert(&p, facts(10_000 + i));
        m.insert(p, facts(10_000 + i));
        if i % 3 == 0 {
            let gone = PathBuf::from(format!("/data/set/d0003/f{:04}.jpg", i % 30));
            t.remove(&gone);
            m.remove(&gone);
        }
        let n = t.checkpoint().expect("cp").expect("dirty");
        peak = peak.max(t.log_bytes());
        t.commit(n).expect("commit");
    }
    assert!(
        t.log_bytes() < peak,
        "the log was never rewritten ({} bytes)",
        t.log_bytes()
    );
    assert_eq!(dump(&mut t), m);
    // A crash between the fsync of the new log and its rename: the old log opens, the temp file
    // is removed.
    t.upsert(Path::new("/data/uncommitted"), facts(1));
    let temp = t.compact_without_rename_for_test().expect("write");
    assert!(temp.exists());
    drop(t);
    let (mut t, report) = Tree::open(dir.path(), small()).expect("reopen");
    assert!(!report.suspicious(), "{report:?}");
    assert!(!temp.exists(), "leftover temp file {}", temp.display());
    assert_eq!(dump(&mut t), m);
    t.compact_for_test().expect("compact");
    drop(t);
    let (mut t, _) = Tree::open(dir.path(), small()).expect("reopen");
    assert_eq!(dump(&mut t), m);
}

#[test]
fn a_tree_larger_than_the_cache_behaves_like_the_map() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = TreeOptions {
        cache_bytes: 64 << 10,
        compact_min_bytes: 1 << 20,
    };
    let (mut t, _) = Tree::open(dir.path(), opts.clone()).expect("open");
    let mut m = Model::new();
    fill(&mut t, &mut m, 200, 500);
    assert_eq!(t.len(), 200 * 501);
    // The budget, plus the directories in use (the last RECENT_OPS = 4 used are never evicted;
    // here 500 entries, ~91 KB each).
    assert!(
        t.cached_bytes() <= (64 << 10) + 5 * 100_000,
        "{}",
        t.cached_bytes()
    );
    let mut rng = Rng(7);
    for _ in 0..5_000 {
        let d = rng.below(200);
        let f = rng.below(520);
        let p = PathBuf::from(format!("/data/set/d{d:04}/f{f:04}.jpg"));
        assert_eq!(t.lookup(&p), m.get(&p).cloned(), "{}", p.display());
        if rng.below(4) == 0 {
            t.upsert(&p, facts(1_000_000 + f));
            m.insert(p.clone(), facts(1_000_000 + f));
        }
        if rng.below(8) == 0 {
            assert_eq!(t.remove(&p), m.remove(&p));
        }
        if rng.below(100) == 0 {
            if let Some(n) = t.checkpoint().expect("cp") {
                t.commit(n).expect("commit");
            }
        }
    }
    if let Some(n) = t.checkpoint().expect("cp") {
        t.commit(n).expect("commit");
    }
    // The budget, plus the directories in use (the last RECENT_OPS = 4 used are never evicted;
    // here 500 entries, ~91 KB each).
    assert!(
        t.cached_bytes() <= (64 << 10) + 5 * 100_000,
        "{}",
        t.cached_bytes()
    );
    assert_eq!(t.len(), m.len() as u64);
    assert_eq!(dump(&mut t), m);
    drop(t);
    let (mut t, _) = Tree::open(dir.path(), opts).expect("reopen");
    assert_eq!(dump(&mut t), m);
}

#[test]
fn renaming_a_large_directory_writes_a_few_records_not_the_subtree() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut t, _) = Tree::open(dir.path(), TreeOptions::default()).expect("open");
    let mut m = Model::new();
    for d in 0..50 {
        for f in 0..200 {
            let p = PathBuf::from(format!("/r/big/d{d:02}/f{f:03}"));
            t.upsert(&p, facts((d * 200 + f) as u64 + 1));
            m.insert(p, facts((d * 200 + f) as u64 + 1));
        }
    }
    t.upsert(Path::new("/r/big"), facts(7));
    m.insert(PathBuf::from("/r/big"), facts(7));
    let n = t.checkpoint().expect("cp").expect("dirty");
    t.commit(n).expect("commit");
    let before = t.log_bytes();
    t.rename(Path::new("/r/big"), Path::new("/r/other/moved"));
    model_rename(&mut m, Path::new("/r/big"), Path::new("/r/other/moved"));
    let n = t.checkpoint().expect("cp").expect("dirty");
    t.commit(n).expect("commit");
    let written = t.log_bytes() - before;
    assert!(
        written < 400,
        "a rename of 10,000 entries wrote {written} bytes"
    );
    assert_eq!(
        t.lookup(Path::new("/r/other/moved/d07/f100")),
        Some(facts(7 * 200 + 100 + 1))
    );
    assert_eq!(t.lookup(Path::new("/r/big/d07/f100")), None);
    drop(t);
    let (mut t, _) = Tree::open(dir.path(), TreeOptions::default()).expect("reopen");
    assert_eq!(dump(&mut t), m);
}

#[test]
fn remove_subtree_visits_children_first_and_forgets_empty_directories() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut t, _) = Tree::open(dir.path(), small()).expect("open");
    let mut m = Model::new();
    for p in [
        "/r", "/r/a", "/r/a/x", "/r/a/y", "/r/a/y/z", "/r/a-b", "/r/a.txt", "/r/ab", "/r/b",
    ] {
        t.upsert(Path::new(p), facts(p.len() as u64));
        m.insert(PathBuf::from(p), facts(p.len() as u64));
    }
    let mut seen = Vec::new();
    t.remove_subtree(Path::new("/r/a"), &mut |p, f| {
        assert_eq!(f, facts(p.as_os_str().len() as u64));
        seen.push(p.to_path_buf());
    });
    assert_eq!(seen, model_remove_subtree(&mut m, Path::new("/r/a")));
    assert_eq!(
        seen,
        ["/r/a/y/z", "/r/a/y", "/r/a/x", "/r/a"]
            .iter()
            .map(PathBuf::from)
            .collect::<Vec<_>>()
    );
    assert_eq!(dump(&mut t), m);
    let dirs = t.dirs();
    let mut all = Vec::new();
    t.remove_subtree(Path::new("/r"), &mut |p, _| all.push(p.to_path_buf()));
    assert_eq!(all, model_remove_subtree(&mut m, Path::new("/r")));
    assert!(
        t.is_empty() && t.dirs() == 0,
        "{} dirs (was {dirs})",
        t.dirs()
    );
}

#[test]
fn merge_dir_is_a_sorted_merge_of_stored_and_live() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut t, _) = Tree::open(dir.path(), small()).expect("open");
    for (n, i) in [("a", 1), ("b", 2), ("d", 4)] {
        t.upsert(&Path::new("/r").join(n), facts(i));
    }
    let live: Vec<(std::ffi::OsString, FileFacts)> = [("b", 20), ("c", 3), ("d", 4)]
        .iter()
        .map(|(n, i)| (n.into(), facts(*i)))
        .collect();
    let mut got = Vec::new();
    t.merge_dir(Path::new("/r"), &live, |m| {
        got.push(match m {
            Merged::Stored(n, f) => format!("-{}{}", n.to_string_lossy(), f.inode),
            Merged::Live(n, f) => format!("+{}{}", n.to_string_lossy(), f.inode),
            Merged::Both(n, o, f) => format!("={}{}/{}", n.to_string_lossy(), o.inode, f.inode),
        })
    });
    assert_eq!(got, ["-a1", "=b2/20", "+c3", "=d4/4"]);
    let mut got = 0;
    t.merge_dir(Path::new("/unknown"), &live, |m| {
        assert!(matches!(m, Merged::Live(..)));
        got += 1;
    });
    assert_eq!(got, 3);
}

/// Deterministic xorshift: the property test must fail the same way every time.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn random_path(rng: &mut Rng) -> PathBuf {
    const NAMES: [&str; 5] = ["a", "b", "a-b", "a.b", "c"];
    let depth = 1 + rng.below(4);
    let mut p = PathBuf::from("/r");
    for _ in 0..depth {
        p.push(NAMES[rng.below(NAMES.len() as u64) as usize]);
    }
    p
}

/// Random operation sequences against a `BTreeMap` model, with checkpoints, commits, rewrites and
/// reopenings (which must give the state of the last commit).
#[test]
fn random_operations_match_a_map_model_across_commits_and_reopens() {
    for seed in 1..=12u64 {
        let dir = tempfile::tempdir().expect("tempdir");
        let opts = TreeOptions {
            cache_bytes: 1 << 10,
            compact_min_bytes: 2 << 10,
        };
        let (mut t, _) = Tree::open(dir.path(), opts.clone()).expect("open");
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let mut m = Model::new();
        let mut at: BTreeMap<u64, Model> = BTreeMap::new();
        at.insert(0, Model::new());
        let (mut checkpoint, mut committed) = (0u64, 0u64);
        for step in 0..1500 {
            let ctx = format!("seed {seed} step {step}");
            match rng.below(100) {
                0..=39 => {
                    let p = random_path(&mut rng);
                    let f = facts(rng.below(1000));
                    t.upsert(&p, f.clone());
                    m.insert(p, f);
                }
                40..=47 => {
                    let p = random_path(&mut rng);
                    assert_eq!(t.remove(&p), m.remove(&p), "{ctx}: remove {}", p.display());
                }
                48..=55 => {
                    let p = random_path(&mut rng);
                    let mut seen = Vec::new();
                    t.remove_subtree(&p, &mut |q, _| seen.push(q.to_path_buf()));
                    assert_eq!(seen, model_remove_subtree(&mut m, &p), "{ctx}");
                }
                56..=65 => {
                    let (a, b) = (random_path(&mut rng), random_path(&mut rng));
                    t.rename(&a, &b);
                    model_rename(&mut m, &a, &b);
                }
                66..=80 => {
                    let p = random_path(&mut rng);
                    assert_eq!(t.lookup(&p), m.get(&p).cloned(), "{ctx}: {}", p.display());
                    assert_eq!(t.contains(&p), m.contains_key(&p), "{ctx}");
                }
                81..=84 => {
                    let p = random_path(&mut rng);
                    let want: Vec<(std::ffi::OsString, FileFacts)> = m
                        .iter()
                        .filter(|(q, _)| q.parent() == Some(&p))
                        .filter_map(|(q, f)| Some((q.file_name()?.to_os_string(), f.clone())))
                        .collect();
                    assert_eq!(t.list_dir(&p), want, "{ctx}: list {}", p.display());
                }
                85..=91 => {
                    if let Some(n) = t.checkpoint().expect("checkpoint") {
                        assert_eq!(n, checkpoint + 1, "{ctx}");
                        checkpoint = n;
                        at.insert(n, m.clone());
                    }
                }
                92..=95 => {
                    if checkpoint > committed {
                        let n = committed + 1 + rng.below(checkpoint - committed);
                        t.commit(n).expect("commit");
                        committed = n;
                    }
                }
                96 => t.compact_for_test().expect("compact"),
                _ => {
                    drop(t);
                    let (t2, report) = Tree::open(dir.path(), opts.clone()).expect("reopen");
                    assert!(!report.suspicious(), "{ctx}: {report:?}");
                    t = t2;
                    m = at.get(&committed).cloned().expect("committed state");
                    at.retain(|n, _| *n <= committed);
                    checkpoint = committed;
                    assert_eq!(dump(&mut t), m, "{ctx}: reopened");
                }
            }
            assert_eq!(t.len(), m.len() as u64, "{ctx}: len");
        }
        assert_eq!(dump(&mut t), m, "seed {seed}: final");
    }
}

/// Regression (found by the model test): `commit(n)` while checkpoint n+1 is already written, then
/// a crash. The records of n+1 lie before the commit frame and cannot be cut off; the next
/// process numbers its own checkpoint n+1 again, and its commit must not revive the old ones.
#[test]
fn records_of_a_checkpoint_left_uncommitted_before_a_commit_never_come_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut t, _) = Tree::open(dir.path(), small()).expect("open");
    t.upsert(Path::new("/r/a"), facts(1));
    let one = t.checkpoint().expect("cp").expect("dirty");
    t.upsert(Path::new("/r/ghost"), facts(2));
    let two = t.checkpoint().expect("cp").expect("dirty");
    assert_eq!(two, one + 1);
    t.commit(one).expect("commit");
    drop(t);
    let (mut t, report) = Tree::open(dir.path(), small()).expect("reopen");
    assert!(!report.suspicious(), "{report:?}");
    assert_eq!(t.lookup(Path::new("/r/ghost")), None);
    t.upsert(Path::new("/r/b"), facts(3));
    let n = t.checkpoint().expect("cp").expect("dirty");
    assert_eq!(n, two);
    t.commit(n).expect("commit");
    drop(t);
    let (mut t, _) = Tree::open(dir.path(), small()).expect("reopen");
    let want: Model = [("/r/a", facts(1)), ("/r/b", facts(3))]
        .into_iter()
        .map(|(p, f)| (PathBuf::from(p), f))
        .collect();
    assert_eq!(dump(&mut t), want);
}

//! The opt-in read audit (`audit.reads`): reads of sensitive files, aggregated so the volume stays
//! bounded, as OCSF File System Activity Read (activity 2) records naming the process.
//!
//! The fanotify source reports a read when a reader closes the file (`FAN_CLOSE_NOWRITE`, one
//! event per open/close, whatever was read in between). The processor hands reads of files the
//! globs match to an [`Aggregator`]; every `window_secs` the aggregator yields what it gathered:
//!
//! - one [`ReadRecord::File`] per (process, file): how often it was read, first and last time;
//! - when one process read more than `summary_after` files of one directory in the window, one
//!   [`ReadRecord::Dir`] for that directory instead: how many reads and distinct files, first and
//!   last time, and a sample of names (a training job over a dataset is a few records a minute,
//!   not one per image).
//!
//! **Memory is bounded** whatever the workload: per-file entries exist only up to `summary_after`
//! per (process, directory); a summarised directory keeps its distinct names as 8-byte hashes,
//! at most [`MAX_DISTINCT`] (beyond that the file count is a lower bound and says so); and at most
//! [`MAX_GROUPS`] (process, directory) groups are kept per window — reads beyond that are counted
//! per process in one record for the audit root (`ReadRecord::Dir` with `overflow: true`), never
//! dropped silently.
//!
//! The actor key `K` is whatever the caller uses to name a process (pid + start time, say); the
//! caller resolves it into an OCSF actor when it encodes the record ([`encode`]).

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::hash::{BuildHasher, Hash};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

use super::attribution::{ActorFields, ActorKey, Attributor};
use super::ocsf::{self, encode_path, Context};
use crate::config::ReadsConfig;

/// Names kept as a sample in a directory summary.
pub const SAMPLE_NAMES: usize = 10;
/// Distinct file names a directory summary counts exactly (as hashes) before its count becomes a
/// lower bound.
pub const MAX_DISTINCT: usize = 65_536;
/// (process, directory) groups kept per window.
pub const MAX_GROUPS: usize = 4096;

/// One aggregated read record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadRecord<K> {
    /// One process read one file `reads` times in the window.
    File {
        actor: K,
        path: PathBuf,
        reads: u64,
        first_ms: i64,
        last_ms: i64,
    },
    /// One process read many files of `dir` in the window.
    Dir {
        actor: K,
        dir: PathBuf,
        reads: u64,
        files: u64,
        /// `files` counts at least this many distinct files (more than [`MAX_DISTINCT`]).
        files_lower_bound: bool,
        first_ms: i64,
        last_ms: i64,
        sample: Vec<OsString>,
        /// The window had more groups than [`MAX_GROUPS`]: `dir` is the audit root and the counts
        /// cover every directory that did not get a group of its own.
        overflow: bool,
    },
}

#[derive(Debug, Default)]
struct Span {
    reads: u64,
    first_ms: i64,
    last_ms: i64,
}

impl Span {
    fn add(&mut self, time_ms: i64, reads: u64) {
        if self.reads == 0 || time_ms < self.first_ms {
            self.first_ms = time_ms;
        }
        self.last_ms = self.last_ms.max(time_ms);
        self.reads += reads;
    }
    fn merge(&mut self, o: &Span) {
        if o.reads > 0 {
            self.add(o.first_ms, o.reads);
            self.last_ms = self.last_ms.max(o.last_ms);
        }
    }
}

/// A directory summary in the making.
#[derive(Debug, Default)]
struct Summary {
    span: Span,
    distinct: HashSet<u64>,
    lower_bound: bool,
    sample: Vec<OsString>,
}

impl Summary {
    fn add(&mut self, name: &OsString, hash: u64, time_ms: i64, reads: u64) {
        self.span.add(time_ms, reads);
        if self.distinct.len() < MAX_DISTINCT {
            if self.distinct.insert(hash) && self.sample.len() < SAMPLE_NAMES {
                self.sample.push(name.clone());
            }
        } else if !self.distinct.contains(&hash) {
            self.lower_bound = true;
        }
    }
}

#[derive(Debug)]
enum Group {
    Files(HashMap<OsString, Span>),
    Summary(Box<Summary>),
}

/// Gathers reads for one window at a time.
#[derive(Debug)]
pub struct Aggregator<K> {
    window_ms: i64,
    summary_after: usize,
    /// Where the overflow record points: the first audit root.
    root: PathBuf,
    window_start: Option<i64>,
    groups: HashMap<(K, PathBuf), Group>,
    overflow: HashMap<K, Summary>,
    hasher: std::collections::hash_map::RandomState,
}

impl<K: Clone + Eq + Hash> Aggregator<K> {
    pub fn new(window_secs: u64, summary_after: u32, root: PathBuf) -> Self {
        Self {
            window_ms: i64::try_from(window_secs.saturating_mul(1000)).unwrap_or(i64::MAX),
            summary_after: summary_after.max(1) as usize,
            root,
            window_start: None,
            groups: HashMap::new(),
            overflow: HashMap::new(),
            hasher: Default::default(),
        }
    }

    /// Notes one read of `path` (absolute, already matched by the globs) by `actor`.
    pub fn read(&mut self, actor: K, path: &Path, time_ms: i64) {
        self.window_start.get_or_insert(time_ms);
        let (dir, name) = match (path.parent(), path.file_name()) {
            (Some(d), Some(n)) => (d.to_path_buf(), n.to_os_string()),
            _ => (path.to_path_buf(), OsString::new()),
        };
        let hash = self.hasher.hash_one(name.as_bytes());
        let key = (actor, dir);
        if !self.groups.contains_key(&key) && self.groups.len() >= MAX_GROUPS {
            let o = self.overflow.entry(key.0).or_default();
            o.add(&name, hash, time_ms, 1);
            return;
        }
        let group = self
            .groups
            .entry(key)
            .or_insert_with(|| Group::Files(HashMap::new()));
        match group {
            Group::Files(files) => {
                files.entry(name).or_default().add(time_ms, 1);
                if files.len() > self.summary_after {
                    *group = Group::Summary(Box::new(summarise(&self.hasher, files)));
                }
            }
            Group::Summary(s) => s.add(&name, hash, time_ms, 1),
        }
    }

    /// Whether the current window has ended at `now_ms` (the caller then calls [`take`](Self::take)).
    pub fn due(&self, now_ms: i64) -> bool {
        self.window_start
            .is_some_and(|s| now_ms.saturating_sub(s) >= self.window_ms)
    }

    /// Everything gathered so far, ordered by directory then file name (overflow records
    /// last); starts a new window.
    pub fn take(&mut self) -> Vec<ReadRecord<K>> {
        self.window_start = None;
        let mut out = Vec::new();
        let mut groups: Vec<_> = self.groups.drain().collect();
        groups.sort_by(|a, b| a.0 .1.cmp(&b.0 .1));
        for ((actor, dir), group) in groups {
            match group {
                Group::Files(files) => {
                    let mut files: Vec<_> = files.into_iter().collect();
                    files.sort_by(|a, b| a.0.cmp(&b.0));
                    out.extend(files.into_iter().map(|(name, s)| ReadRecord::File {
                        actor: actor.clone(),
                        path: dir.join(name),
                        reads: s.reads,
                        first_ms: s.first_ms,
                        last_ms: s.last_ms,
                    }));
                }
                Group::Summary(s) => out.push(dir_record(actor, dir, *s, false)),
            }
        }
        for (actor, s) in self.overflow.drain() {
            out.push(dir_record(actor, self.root.clone(), s, true));
        }
        out
    }

    /// (process, directory) groups held now (for `status` and tests).
    pub fn groups(&self) -> usize {
        self.groups.len()
    }
}

/// The per-file entries of a group, folded into a summary (names in order, so the sample is stable).
fn summarise(hasher: &impl BuildHasher, files: &mut HashMap<OsString, Span>) -> Summary {
    let mut s = Summary::default();
    let mut names: Vec<_> = files.drain().collect();
    names.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, span) in names {
        s.add(&name, hasher.hash_one(name.as_bytes()), span.first_ms, 0);
        s.span.merge(&span);
    }
    s
}

fn dir_record<K>(actor: K, dir: PathBuf, s: Summary, overflow: bool) -> ReadRecord<K> {
    ReadRecord::Dir {
        actor,
        dir,
        reads: s.span.reads,
        files: s.distinct.len() as u64,
        files_lower_bound: s.lower_bound,
        first_ms: s.span.first_ms,
        last_ms: s.span.last_ms,
        sample: s.sample,
        overflow,
    }
}

fn file_object(path: &Path, type_id: u8, type_name: &str) -> (Value, Option<String>) {
    let (disp, hex) = encode_path(path.as_os_str().as_bytes());
    let name = path
        .file_name()
        .map(|n| encode_path(n.as_bytes()).0)
        .unwrap_or_else(|| disp.clone());
    (
        json!({"path": disp, "name": name, "type_id": type_id, "type": type_name}),
        hex,
    )
}

/// The OCSF record of `rec` (class 1001, activity 2 Read), with `actor` as its OCSF actor and
/// `actor_extra` added to `unmapped` (both from `ocsf_actor::actor`).
pub fn encode<K>(
    rec: &ReadRecord<K>,
    actor: Value,
    actor_extra: Map<String, Value>,
    ctx: &Context,
    seq: u64,
    uid: &str,
) -> Value {
    let mut unmapped = actor_extra;
    let (mut r, file, hex) = match rec {
        ReadRecord::File {
            path,
            reads,
            first_ms,
            last_ms,
            ..
        } => {
            let (f, hex) = file_object(path, 1, "Regular File");
            let msg = format!("Read Regular File ({reads} reads)");
            unmapped.insert(
                "read".into(),
                json!({"reads": reads, "first_time": first_ms, "last_time": last_ms}),
            );
            (ocsf::file_base(2, *last_ms, msg, ctx, seq, uid), f, hex)
        }
        ReadRecord::Dir {
            dir,
            reads,
            files,
            files_lower_bound,
            first_ms,
            last_ms,
            sample,
            overflow,
            ..
        } => {
            let (f, hex) = file_object(dir, 2, "Folder");
            let more = if *files_lower_bound { "+" } else { "" };
            let msg = format!("Read {files}{more} files in a folder ({reads} reads)");
            let sample: Vec<String> = sample.iter().map(|n| encode_path(n.as_bytes()).0).collect();
            unmapped.insert(
                "read".into(),
                json!({
                    "summary": true,
                    "reads": reads,
                    "files": files,
                    "files_lower_bound": files_lower_bound,
                    "first_time": first_ms,
                    "last_time": last_ms,
                    "sample": sample,
                    "overflow": overflow,
                }),
            );
            (ocsf::file_base(2, *last_ms, msg, ctx, seq, uid), f, hex)
        }
    };
    r.insert("actor".into(), actor);
    r.insert("file".into(), file);
    if let Some(h) = hex {
        unmapped.insert("file".into(), json!({"path_hex": h}));
    }
    unmapped.insert("source".into(), json!("fanotify"));
    r.insert("unmapped".into(), Value::Object(unmapped));
    Value::Object(r)
}

/// The daemon's read audit: reads from the watcher in, aggregated records out. Each process is
/// resolved into its OCSF actor at its first read in a window (it may be gone by the window's
/// end), and the actor is kept with the window's groups.
pub struct ReadAudit {
    agg: Aggregator<ActorKey>,
    actors: HashMap<ActorKey, ActorFields>,
}

impl ReadAudit {
    pub fn new(cfg: &ReadsConfig, root: PathBuf) -> Self {
        Self {
            agg: Aggregator::new(cfg.window_secs, cfg.summary_after, root),
            actors: HashMap::new(),
        }
    }

    /// One read of `path` by `pid` (the watcher already matched the globs).
    pub fn read(
        &mut self,
        path: &Path,
        pid: Option<u32>,
        time_ms: i64,
        who: &Attributor,
        ctx: &Context,
    ) {
        let (key, fields) = who.actor_of(pid, time_ms, ctx);
        self.actors.entry(key).or_insert(fields);
        self.agg.read(key, path, time_ms);
    }

    pub fn due(&self, now_ms: i64) -> bool {
        self.agg.due(now_ms)
    }

    /// The window's records with their actors; starts a new window.
    pub fn take(&mut self) -> Vec<(ReadRecord<ActorKey>, ActorFields)> {
        let recs = self.agg.take();
        let actors = std::mem::take(&mut self.actors);
        let unknown = || (json!({"user": {"name": "unknown"}}), Map::new());
        recs.into_iter()
            .map(|r| {
                let key = match &r {
                    ReadRecord::File { actor, .. } | ReadRecord::Dir { actor, .. } => *actor,
                };
                let fields = actors.get(&key).cloned().unwrap_or_else(unknown);
                (r, fields)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agg(summary_after: u32) -> Aggregator<u32> {
        Aggregator::new(60, summary_after, PathBuf::from("/h/SageMaker"))
    }

    #[test]
    fn reads_of_one_file_by_one_process_are_one_record() {
        let mut a = agg(20);
        a.read(7, Path::new("/h/SageMaker/data/a.csv"), 1000);
        a.read(7, Path::new("/h/SageMaker/data/a.csv"), 1500);
        a.read(8, Path::new("/h/SageMaker/data/a.csv"), 1200);
        assert!(!a.due(60_999));
        assert!(a.due(61_000));
        let mut out = a.take();
        out.sort_by_key(|r| match r {
            ReadRecord::File { actor, .. } | ReadRecord::Dir { actor, .. } => *actor,
        });
        assert_eq!(
            out,
            [
                ReadRecord::File {
                    actor: 7,
                    path: "/h/SageMaker/data/a.csv".into(),
                    reads: 2,
                    first_ms: 1000,
                    last_ms: 1500
                },
                ReadRecord::File {
                    actor: 8,
                    path: "/h/SageMaker/data/a.csv".into(),
                    reads: 1,
                    first_ms: 1200,
                    last_ms: 1200
                },
            ]
        );
        assert!(a.take().is_empty(), "a new window starts empty");
        assert!(!a.due(i64::MAX), "an empty window is never due");
    }

    #[test]
    fn a_process_reading_a_dataset_yields_one_summary_per_directory() {
        let mut a = agg(20);
        for i in 0..10_000u32 {
            let dir = format!("/h/SageMaker/imagenet/n{:03}", i % 4);
            a.read(
                42,
                &Path::new(&dir).join(format!("{i:05}.JPEG")),
                5_000 + i64::from(i),
            );
        }
        // a second epoch over the first directory's files: reads double, files do not.
        for i in (0..10_000u32).step_by(4) {
            a.read(
                42,
                Path::new(&format!("/h/SageMaker/imagenet/n000/{i:05}.JPEG")),
                20_000,
            );
        }
        let out = a.take();
        assert_eq!(out.len(), 4, "one summary per directory: {out:?}");
        match &out[0] {
            ReadRecord::Dir {
                dir,
                reads,
                files,
                files_lower_bound,
                first_ms,
                last_ms,
                sample,
                overflow,
                ..
            } => {
                assert_eq!(dir, Path::new("/h/SageMaker/imagenet/n000"));
                assert_eq!((*reads, *files), (5_000, 2_500));
                assert!(!files_lower_bound && !overflow);
                assert_eq!((*first_ms, *last_ms), (5_000, 20_000));
                assert_eq!(sample.len(), SAMPLE_NAMES);
            }
            other => panic!("expected a summary, got {other:?}"),
        }
    }

    #[test]
    fn groups_are_bounded_and_the_rest_is_counted_not_dropped() {
        let mut a = agg(20);
        let extra = 100u64;
        for i in 0..(MAX_GROUPS as u64 + extra) {
            a.read(1, Path::new(&format!("/h/SageMaker/d{i}/f.csv")), 1);
        }
        assert_eq!(a.groups(), MAX_GROUPS);
        let out = a.take();
        let total: u64 = out
            .iter()
            .map(|r| match r {
                ReadRecord::File { reads, .. } | ReadRecord::Dir { reads, .. } => *reads,
            })
            .sum();
        assert_eq!(total, MAX_GROUPS as u64 + extra, "every read is counted");
        assert!(out.iter().any(|r| matches!(
            r,
            ReadRecord::Dir { overflow: true, reads, dir, .. }
                if *reads == extra && dir == Path::new("/h/SageMaker")
        )));
    }

    #[test]
    fn the_encoded_record_is_an_ocsf_read_naming_counts_and_sample() {
        let ctx = Context::new("host", Some("nb".into()), None, None, None);
        let mut a = agg(2);
        for n in ["a.csv", "b.csv", "c\u{1}.csv"] {
            a.read(5, &Path::new("/h/SageMaker/data").join(n), 10);
        }
        a.read(5, Path::new("/h/SageMaker/x.csv"), 11);
        let out = a.take();
        let dir = out
            .iter()
            .find(|r| matches!(r, ReadRecord::Dir { .. }))
            .unwrap();
        let file = out
            .iter()
            .find(|r| matches!(r, ReadRecord::File { .. }))
            .unwrap();
        let v = encode(
            dir,
            json!({"user": {"name": "ec2-user"}}),
            Map::new(),
            &ctx,
            1,
            "u",
        );
        assert_eq!(v["class_uid"], 1001);
        assert_eq!(v["activity_id"], 2);
        assert_eq!(v["type_uid"], 100102);
        assert_eq!(v["file"]["type"], "Folder");
        assert_eq!(v["unmapped"]["read"]["files"], 3);
        assert_eq!(v["unmapped"]["read"]["sample"][2], "c\u{1}.csv");
        assert_eq!(v["actor"]["user"]["name"], "ec2-user");
        let v = encode(file, json!({}), Map::new(), &ctx, 2, "u2");
        assert_eq!(v["file"]["path"], "/h/SageMaker/x.csv");
        assert_eq!(v["unmapped"]["read"]["reads"], 1);
        assert!(!ocsf::to_line(&v).contains(&b'\n'));
    }
}

//! The reader thread: it reads the source and only `try_send`s each event to the processor.
//! When the channel is full the event is counted as lost and where it happened remembered (the
//! watch descriptor, or the directory), and the processor rescans those trees.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, TrySendError};
use std::sync::Mutex;
use std::time::Duration;

use nix::sys::inotify::InotifyEvent;

use super::{PidHook, WatchStats};
use crate::audit::queue::Sender;
use crate::audit::snapshot::Snapshot;
use crate::audit::source::fanotify::FanotifySource;
use crate::audit::source::inotify::{self, InotifyReader};
use crate::audit::source::{Op, RawEvent, Source};

/// One event as the reader hands it over. inotify's are decoded by the processor, in order (see
/// `source::inotify`); fanotify's arrive decoded.
pub(super) enum Wire {
    Raw(RawEvent),
    Inotify(InotifyEvent),
}

pub(super) enum Msg {
    Event(Wire),
    Snapshot(mpsc::Sender<Snapshot>),
    Stats(mpsc::Sender<WatchStats>),
    /// Every change up to checkpoint n is durable downstream: commit it.
    Commit(u64),
    Stop,
}

#[derive(Default)]
pub(super) struct Shared {
    pub(super) stop: AtomicBool,
    /// Someone acknowledges checkpoints (`Watcher::checkpoint_acks`): commit only on their word.
    pub(super) acks: AtomicBool,
    pub(super) lost: AtomicU64,
    pub(super) lost_total: AtomicU64,
    /// inotify: watch descriptors of lost events (`-1`: everything).
    pub(super) lost_wds: Mutex<HashSet<i32>>,
    /// fanotify: directories of lost events.
    pub(super) lost_dirs: Mutex<HashSet<PathBuf>>,
    /// fanotify: events not named, their directory gone when read ([`FanotifySource::stats`]).
    pub(super) unresolved: AtomicU64,
}

impl Shared {
    fn lost(&self, wd: Option<i32>, dirs: &[&PathBuf]) {
        self.lost.fetch_add(1, Ordering::SeqCst);
        self.lost_total.fetch_add(1, Ordering::SeqCst);
        if let Some(wd) = wd {
            if let Ok(mut set) = self.lost_wds.lock() {
                set.insert(wd);
            }
        }
        if let Ok(mut set) = self.lost_dirs.lock() {
            for d in dirs {
                set.insert((*d).clone());
            }
        }
    }
}

/// The reader half of the source that runs.
pub(super) enum ReaderHalf {
    Inotify(InotifyReader),
    Fanotify(Box<FanotifySource>),
}

pub(super) fn read_loop(
    reader: ReaderHalf,
    tx: &Sender<Msg>,
    shared: &Shared,
    pid_seen: Option<&PidHook>,
) {
    match reader {
        ReaderHalf::Inotify(r) => read_inotify(r, tx, shared),
        ReaderHalf::Fanotify(s) => read_fanotify(*s, tx, shared, pid_seen),
    }
}

fn read_inotify(mut r: InotifyReader, tx: &Sender<Msg>, shared: &Shared) {
    loop {
        let events = match r.read() {
            Ok(ev) => ev,
            Err(e) => {
                tracing::error!(error = %e, "Reading inotify failed; watcher reader stops.");
                return;
            }
        };
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        for ev in events {
            match tx.try_send(Msg::Event(Wire::Inotify(ev))) {
                Ok(()) => {}
                Err(TrySendError::Full(Msg::Event(Wire::Inotify(ev)))) => {
                    shared.lost(Some(inotify::lost_key(&ev)), &[]);
                }
                Err(TrySendError::Full(_)) => {}
                Err(TrySendError::Disconnected(_)) => return,
            }
        }
    }
}

fn read_fanotify(
    mut s: FanotifySource,
    tx: &Sender<Msg>,
    shared: &Shared,
    pid_seen: Option<&PidHook>,
) {
    // A bounded wait, so a stop is seen without an event to wake the reader.
    const WAKE: Duration = Duration::from_millis(200);
    let mut batch = Vec::new();
    loop {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        if let Err(e) = s.read(&mut batch, Some(WAKE)) {
            tracing::error!(error = %e, "Reading fanotify failed; watcher reader stops.");
            return;
        }
        shared
            .unresolved
            .store(s.stats().unresolved, Ordering::Relaxed);
        if let Some(hook) = pid_seen {
            let mut last = None;
            for pid in batch.iter().filter_map(|ev| ev.pid) {
                if last != Some(pid) {
                    (hook.0)(pid);
                    last = Some(pid);
                }
            }
        }
        for ev in batch.drain(..) {
            match tx.try_send(Msg::Event(Wire::Raw(ev))) {
                Ok(()) => {}
                Err(TrySendError::Full(Msg::Event(Wire::Raw(ev)))) => match &ev.op {
                    Op::Overflow => shared.lost(Some(-1), &[]),
                    Op::Rename { from_dir, .. } => shared.lost(None, &[&ev.dir, from_dir]),
                    _ => shared.lost(None, &[&ev.dir]),
                },
                Err(TrySendError::Full(_)) => {}
                Err(TrySendError::Disconnected(_)) => return,
            }
        }
    }
}

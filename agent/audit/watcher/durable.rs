//! Durability of the known tree: checkpoints written as the tree changes, announced to the
//! consumer in order with the changes, committed once the consumer says everything before them
//! is durable (docs/WATCHER-DESIGN.md, "The tree as built").

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::processor::Processor;
use super::{Output, CHECKPOINT_EVERY};

impl Processor {
    /// Checkpoint the tree when it changed and the time has come (a pause in the events is the
    /// other moment, see `next_msg`).
    pub(super) fn maybe_checkpoint(&mut self) {
        if !self.tree.is_dirty() {
            return;
        }
        if self.checkpoint_for_memory() || self.last_checkpoint.elapsed() >= CHECKPOINT_EVERY {
            self.checkpoint();
        }
    }

    /// Dirty directories exceed the cache budget: checkpoint to free them, but not more often
    /// than every `CHECKPOINT_EVERY / 5` (a single directory larger than the budget stays dirty
    /// whatever we do, and re-encoding it after every event would make a burst quadratic).
    pub(super) fn checkpoint_for_memory(&self) -> bool {
        self.tree.wants_checkpoint() && self.last_checkpoint.elapsed() >= CHECKPOINT_EVERY / 5
    }

    pub(super) fn checkpoint(&mut self) {
        self.last_checkpoint = Instant::now();
        match self.tree.checkpoint() {
            Ok(Some(n)) if self.holding => self.held = Some(n),
            Ok(Some(n)) => self.announce(n),
            Ok(None) => {}
            Err(e) => {
                tracing::error!(error = %e, "Cannot write the watch tree; the next start may report changes twice.")
            }
        }
        if !self.holding {
            self.tree_faults();
        }
    }

    pub(super) fn announce(&mut self, n: u64) {
        if self.shared.acks.load(Ordering::SeqCst) {
            self.emit(Output::Checkpoint(n));
        } else {
            self.commit(n);
        }
    }

    /// The changes of a reconcile were sent: checkpoints it wrote may be announced now.
    pub(super) fn release_checkpoints(&mut self) {
        self.holding = false;
        if let Some(n) = self.held.take() {
            self.announce(n);
        }
    }

    pub(super) fn commit(&mut self, n: u64) {
        if let Err(e) = self.tree.commit(n) {
            tracing::error!(error = %e, "Cannot commit the watch tree; the next start may report changes twice.");
        }
    }

    /// Records of the tree that no longer check when read back: reported, and their directories
    /// rescanned (they were taken as empty).
    pub(super) fn tree_faults(&mut self) {
        let (faults, dirs) = self.tree.take_faults();
        if faults.is_empty() {
            return;
        }
        let path = self.tree_path();
        for f in faults {
            self.tamper(&path, format!("watch tree record unusable: {f}"));
        }
        for d in dirs {
            if !self.is_excluded_abs(&d) {
                self.rescan(&d, "watch tree record unusable", 0, true);
            }
        }
    }

    pub(super) fn tree_path(&self) -> PathBuf {
        PathBuf::from(format!("{:?}", self.tree))
    }
}

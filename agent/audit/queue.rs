//! A bounded multi-producer, single-consumer queue whose memory follows what it holds.
//!
//! `std::sync::mpsc::sync_channel(n)` allocates and initialises all `n` slots when it is created:
//! the watcher's two 65,536-slot channels cost 12 MB of resident memory while the agent sat idle
//! (docs/BENCHMARKS.md). This queue keeps the same contract (a capacity, `try_send` that refuses
//! when full, `send` that blocks while full, disconnection on either side) over a `VecDeque` that
//! grows with a burst and is released once the queue drains.
//!
//! The error types are std's, so callers handle it exactly like an mpsc channel.

use std::collections::VecDeque;
use std::sync::mpsc::{RecvError, RecvTimeoutError, SendError, TryRecvError, TrySendError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// A drained queue whose buffer grew beyond this many items gives the buffer back.
const KEEP_ITEMS: usize = 1024;

struct State<T> {
    items: VecDeque<T>,
    senders: usize,
    receiver: bool,
    /// The receiver is waiting for an item / this many senders wait for room: only then is a
    /// condition variable signalled (a signal is a futex system call).
    receiver_waits: bool,
    senders_waiting: usize,
}

struct Shared<T> {
    state: Mutex<State<T>>,
    not_empty: Condvar,
    not_full: Condvar,
    cap: usize,
}

impl<T> Shared<T> {
    /// A poisoned lock only means another thread panicked while holding it; the queue itself is
    /// always consistent (every critical section is a single push or pop).
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub struct Sender<T> {
    shared: Arc<Shared<T>>,
}

pub struct Receiver<T> {
    shared: Arc<Shared<T>>,
}

/// A queue holding at most `cap` items (at least 1).
pub fn bounded<T>(cap: usize) -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            items: VecDeque::new(),
            senders: 1,
            receiver: true,
            receiver_waits: false,
            senders_waiting: 0,
        }),
        not_empty: Condvar::new(),
        not_full: Condvar::new(),
        cap: cap.max(1),
    });
    (
        Sender {
            shared: Arc::clone(&shared),
        },
        Receiver { shared },
    )
}

impl<T> Sender<T> {
    /// Queue `item` unless the queue is full or the receiver is gone; never blocks on space.
    pub fn try_send(&self, item: T) -> Result<(), TrySendError<T>> {
        let st = self.shared.lock();
        if !st.receiver {
            return Err(TrySendError::Disconnected(item));
        }
        if st.items.len() >= self.shared.cap {
            return Err(TrySendError::Full(item));
        }
        self.push(st, item);
        Ok(())
    }

    /// Queue `item`, waiting while the queue is full. `Err` once the receiver is gone.
    pub fn send(&self, item: T) -> Result<(), SendError<T>> {
        let mut st = self.shared.lock();
        loop {
            if !st.receiver {
                return Err(SendError(item));
            }
            if st.items.len() < self.shared.cap {
                break;
            }
            st.senders_waiting += 1;
            st = self
                .shared
                .not_full
                .wait(st)
                .unwrap_or_else(|p| p.into_inner());
            st.senders_waiting -= 1;
        }
        self.push(st, item);
        Ok(())
    }

    /// Appends under the lock held by the caller, then wakes a waiting receiver.
    fn push(&self, mut st: MutexGuard<'_, State<T>>, item: T) {
        st.items.push_back(item);
        let wake = st.receiver_waits;
        drop(st);
        if wake {
            self.shared.not_empty.notify_one();
        }
    }
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        self.shared.lock().senders += 1;
        Sender {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        st.senders -= 1;
        let last = st.senders == 0;
        drop(st);
        if last {
            self.shared.not_empty.notify_all();
        }
    }
}

impl<T> Receiver<T> {
    fn pop(&self, st: &mut State<T>) -> Option<T> {
        let item = st.items.pop_front()?;
        if st.items.is_empty() && st.items.capacity() > KEEP_ITEMS {
            st.items = VecDeque::new();
        }
        if st.senders_waiting > 0 {
            self.shared.not_full.notify_one();
        }
        Some(item)
    }

    pub fn try_recv(&self) -> Result<T, TryRecvError> {
        let mut st = self.shared.lock();
        match self.pop(&mut st) {
            Some(item) => Ok(item),
            None if st.senders == 0 => Err(TryRecvError::Disconnected),
            None => Err(TryRecvError::Empty),
        }
    }

    pub fn recv(&self) -> Result<T, RecvError> {
        let mut st = self.shared.lock();
        loop {
            if let Some(item) = self.pop(&mut st) {
                return Ok(item);
            }
            if st.senders == 0 {
                return Err(RecvError);
            }
            st.receiver_waits = true;
            st = self
                .shared
                .not_empty
                .wait(st)
                .unwrap_or_else(|p| p.into_inner());
            st.receiver_waits = false;
        }
    }

    pub fn recv_timeout(&self, timeout: Duration) -> Result<T, RecvTimeoutError> {
        let deadline = Instant::now().checked_add(timeout);
        let mut st = self.shared.lock();
        loop {
            if let Some(item) = self.pop(&mut st) {
                return Ok(item);
            }
            if st.senders == 0 {
                return Err(RecvTimeoutError::Disconnected);
            }
            let left = match deadline {
                Some(d) => d.saturating_duration_since(Instant::now()),
                None => Duration::from_secs(3600),
            };
            if left.is_zero() {
                return Err(RecvTimeoutError::Timeout);
            }
            st.receiver_waits = true;
            st = self
                .shared
                .not_empty
                .wait_timeout(st, left)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
            st.receiver_waits = false;
        }
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        st.receiver = false;
        // What was queued is dropped now, not when the last sender goes.
        let items = std::mem::take(&mut st.items);
        drop(st);
        self.shared.not_full.notify_all();
        drop(items);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn try_send_refuses_when_full_and_accepts_after_a_recv() {
        let (tx, rx) = bounded(2);
        assert!(tx.try_send(1).is_ok());
        assert!(tx.try_send(2).is_ok());
        assert!(matches!(tx.try_send(3), Err(TrySendError::Full(3))));
        assert_eq!(rx.recv().ok(), Some(1));
        assert!(tx.try_send(3).is_ok());
        assert_eq!(rx.try_recv().ok(), Some(2));
        assert_eq!(rx.try_recv().ok(), Some(3));
        assert!(matches!(rx.try_recv(), Err(TryRecvError::Empty)));
    }

    #[test]
    fn send_blocks_while_full_until_the_receiver_takes_one() {
        let (tx, rx) = bounded(1);
        tx.send(0u32).expect("first");
        let t = std::thread::spawn(move || {
            let started = Instant::now();
            tx.send(1).expect("second");
            started.elapsed()
        });
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(
            rx.shared.lock().items.len(),
            1,
            "the second send must wait for room"
        );
        assert_eq!(rx.recv().ok(), Some(0));
        let waited = t.join().expect("sender thread");
        assert!(
            waited >= Duration::from_millis(50),
            "send returned after {waited:?}"
        );
        assert_eq!(rx.recv().ok(), Some(1));
    }

    #[test]
    fn the_receiver_sees_disconnection_only_after_the_last_sender_and_the_last_item() {
        let (tx, rx) = bounded(4);
        let tx2 = tx.clone();
        tx.send(1).expect("send");
        drop(tx);
        assert!(matches!(rx.recv_timeout(Duration::from_millis(1)), Ok(1)));
        assert!(matches!(
            rx.recv_timeout(Duration::from_millis(10)),
            Err(RecvTimeoutError::Timeout)
        ));
        tx2.send(2).expect("send");
        drop(tx2);
        assert_eq!(rx.recv().ok(), Some(2));
        assert!(rx.recv().is_err());
        assert!(matches!(
            rx.recv_timeout(Duration::from_millis(1)),
            Err(RecvTimeoutError::Disconnected)
        ));
    }

    #[test]
    fn senders_fail_once_the_receiver_is_gone_even_a_blocked_one() {
        let (tx, rx) = bounded(1);
        tx.send(1).expect("send");
        let tx2 = tx.clone();
        let t = std::thread::spawn(move || tx2.send(2).is_err());
        std::thread::sleep(Duration::from_millis(50));
        drop(rx);
        assert!(
            t.join().expect("thread"),
            "a blocked send must fail when the receiver goes"
        );
        assert!(matches!(tx.try_send(3), Err(TrySendError::Disconnected(3))));
    }

    #[test]
    fn a_drained_queue_gives_its_buffer_back() {
        let (tx, rx) = bounded(100_000);
        for i in 0..50_000 {
            tx.try_send(i).expect("room");
        }
        assert!(rx.shared.lock().items.capacity() >= 50_000);
        while rx.try_recv().is_ok() {}
        assert_eq!(rx.shared.lock().items.capacity(), 0);
    }

    #[test]
    fn many_producers_deliver_everything_in_per_producer_order() {
        let (tx, rx) = bounded(16);
        let threads: Vec<_> = (0..4u64)
            .map(|p| {
                let tx = tx.clone();
                std::thread::spawn(move || {
                    for i in 0..10_000u64 {
                        tx.send((p, i)).expect("send");
                    }
                })
            })
            .collect();
        drop(tx);
        let mut next = [0u64; 4];
        while let Ok((p, i)) = rx.recv() {
            assert_eq!(next[p as usize], i, "producer {p} out of order");
            next[p as usize] += 1;
        }
        for t in threads {
            t.join().expect("producer");
        }
        assert_eq!(next, [10_000; 4]);
    }
}

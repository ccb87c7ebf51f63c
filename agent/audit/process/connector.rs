//! The kernel's process-events connector (`NETLINK_CONNECTOR`, `CN_IDX_PROC`,
//! `PROC_CN_MCAST_LISTEN`; linux/cn_proc.h): a netlink multicast of every fork, exec, uid change
//! and exit on the host, fed into the [`ProcessTable`] so that a process is read from `/proc` the
//! moment it execs and stays known after it exits.
//!
//! Where it is refused, [`ConnectorUnavailable`] says why, so the watcher can name it in `status`
//! and the table reads `/proc` at event time instead (and says, per record, what it could not
//! know): `EPERM`/`EACCES` (joining the multicast group needs `CAP_NET_ADMIN`), `ECONNREFUSED`
//! (the connector exists only in the initial network namespace: a container with a private
//! network, such as `systemd-nspawn --private-network`), `EPROTONOSUPPORT` (a kernel without
//! `CONFIG_PROC_EVENTS`).
//!
//! Messages lost because the socket buffer overflowed (`ENOBUFS`) are reported as
//! [`ProcEvent::Lost`]; the table then rescans `/proc` once the socket is empty, so that no
//! exit is missed for good.
//!
//! nix has no `NETLINK_CONNECTOR` socket protocol, so the socket is made with `libc::socket`
//! (the one `unsafe` here); binding, sending and receiving go through nix. Messages are parsed
//! from the byte buffer with plain slice reads.
#![allow(unsafe_code)]

use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{bind, recv, send, setsockopt, sockopt, MsgFlags, NetlinkAddr};

use super::table::ProcessTable;
use crate::audit::change::now_ms;

const NETLINK_CONNECTOR: libc::c_int = 11;
const NLMSG_HDR: usize = 16;
const CN_MSG: usize = 20;
const NLMSG_DONE: u16 = 3;
const NLMSG_ERROR: u16 = 2;
const NLMSG_OVERRUN: u16 = 4;

const PROC_EVENT_FORK: u32 = 0x0000_0001;
const PROC_EVENT_EXEC: u32 = 0x0000_0002;
const PROC_EVENT_UID: u32 = 0x0000_0004;
const PROC_EVENT_EXIT: u32 = 0x8000_0000;

/// Why the connector cannot feed the table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("process-events connector unavailable ({kind}): {reason}")]
pub struct ConnectorUnavailable {
    pub kind: ConnectorRefusal,
    pub reason: String,
    pub errno: Option<Errno>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectorRefusal {
    /// `EPERM`/`EACCES`: needs `CAP_NET_ADMIN`.
    Permission,
    /// `ECONNREFUSED`: not the initial network namespace.
    NetworkNamespace,
    /// `EPROTONOSUPPORT`: the kernel has no process events.
    Kernel,
    Other,
}

impl std::fmt::Display for ConnectorRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ConnectorRefusal::Permission => "permission",
            ConnectorRefusal::NetworkNamespace => "network namespace",
            ConnectorRefusal::Kernel => "kernel",
            ConnectorRefusal::Other => "other",
        })
    }
}

fn refused(step: &str, e: Errno) -> ConnectorUnavailable {
    let (kind, why) = match e {
        Errno::EPERM | Errno::EACCES => (
            ConnectorRefusal::Permission,
            "joining the process-events multicast group needs CAP_NET_ADMIN",
        ),
        Errno::ECONNREFUSED => (
            ConnectorRefusal::NetworkNamespace,
            "the connector exists only in the host's initial network namespace (a container with a private network refuses it)",
        ),
        Errno::EPROTONOSUPPORT | Errno::EAFNOSUPPORT => (
            ConnectorRefusal::Kernel,
            "the kernel has no process-events connector (CONFIG_PROC_EVENTS)",
        ),
        _ => (ConnectorRefusal::Other, ""),
    };
    let reason = if why.is_empty() {
        format!("{step}: {e}")
    } else {
        format!("{step}: {e}: {why}")
    };
    ConnectorUnavailable {
        kind,
        reason,
        errno: Some(e),
    }
}

/// One message of the connector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcEvent {
    Fork {
        parent: u32,
        child: u32,
        ts_ns: u64,
    },
    Exec {
        pid: u32,
        ts_ns: u64,
    },
    Uid {
        pid: u32,
        real_uid: u32,
        uid: u32,
    },
    Exit {
        pid: u32,
        ts_ns: u64,
    },
    /// Messages were lost (receive buffer overrun).
    Lost,
}

/// A listening connector socket.
#[derive(Debug)]
pub struct Connector {
    fd: OwnedFd,
    buf: Vec<u8>,
}

impl Connector {
    /// Opens the socket, joins the group and asks the kernel to send process events.
    pub fn open() -> Result<Self, ConnectorUnavailable> {
        // SAFETY: plain socket(2); the returned fd is checked and then owned by us alone.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                NETLINK_CONNECTOR,
            )
        };
        if raw < 0 {
            return Err(refused("socket(NETLINK_CONNECTOR)", Errno::last()));
        }
        // SAFETY: `raw` is a new fd returned by the kernel, owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // A larger receive buffer rides out a burst of forks while the table reads /proc; the
        // forced variant needs CAP_NET_ADMIN, which listening needs anyway.
        if setsockopt(&fd, sockopt::RcvBufForce, &(4 << 20)).is_err() {
            let _ = setsockopt(&fd, sockopt::RcvBuf, &(4 << 20));
        }
        bind(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            &NetlinkAddr::new(0, libc::CN_IDX_PROC),
        )
        .map_err(|e| refused("bind(CN_IDX_PROC)", e))?;
        let c = Self {
            fd,
            buf: vec![0; 64 << 10],
        };
        c.control(libc::PROC_CN_MCAST_LISTEN)
            .map_err(|e| refused("send(PROC_CN_MCAST_LISTEN)", e))?;
        Ok(c)
    }

    fn control(&self, op: u32) -> Result<(), Errno> {
        let len = NLMSG_HDR + CN_MSG + 4;
        let mut m = Vec::with_capacity(len);
        m.extend_from_slice(&(len as u32).to_ne_bytes());
        m.extend_from_slice(&NLMSG_DONE.to_ne_bytes());
        m.extend_from_slice(&0u16.to_ne_bytes()); // flags
        m.extend_from_slice(&0u32.to_ne_bytes()); // seq
        m.extend_from_slice(&std::process::id().to_ne_bytes());
        m.extend_from_slice(&libc::CN_IDX_PROC.to_ne_bytes());
        m.extend_from_slice(&libc::CN_VAL_PROC.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes()); // seq
        m.extend_from_slice(&0u32.to_ne_bytes()); // ack
        m.extend_from_slice(&4u16.to_ne_bytes()); // len
        m.extend_from_slice(&0u16.to_ne_bytes()); // flags
        m.extend_from_slice(&op.to_ne_bytes());
        send(
            std::os::fd::AsRawFd::as_raw_fd(&self.fd),
            &m,
            MsgFlags::empty(),
        )?;
        Ok(())
    }

    /// Waits up to `timeout` for a datagram and appends its messages to `out`. Ok(true) when one
    /// was received (or lost): `out` may still be empty, since messages of no interest (threads,
    /// comm changes, …) are skipped; Ok(false) only when the socket had nothing.
    pub fn read(&mut self, out: &mut Vec<ProcEvent>, timeout: Duration) -> std::io::Result<bool> {
        let t = PollTimeout::try_from(timeout).unwrap_or(PollTimeout::MAX);
        let ready = {
            let mut fds = [PollFd::new(self.fd.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, t) {
                Ok(n) => n > 0,
                Err(Errno::EINTR) => false,
                Err(e) => return Err(std::io::Error::other(format!("connector: poll: {e}"))),
            }
        };
        if !ready {
            return Ok(false);
        }
        match recv(
            std::os::fd::AsRawFd::as_raw_fd(&self.fd),
            &mut self.buf,
            MsgFlags::MSG_DONTWAIT,
        ) {
            Ok(n) => {
                parse(&self.buf[..n], out);
                Ok(true)
            }
            Err(Errno::ENOBUFS) => {
                out.push(ProcEvent::Lost);
                Ok(true)
            }
            Err(Errno::EINTR | Errno::EAGAIN) => Ok(false),
            Err(e) => Err(std::io::Error::other(format!("connector: recv: {e}"))),
        }
    }
}

impl Drop for Connector {
    fn drop(&mut self) {
        // The kernel counts listeners and sends events while any is left.
        let _ = self.control(libc::PROC_CN_MCAST_IGNORE);
    }
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_ne_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// The process events in one datagram (several netlink messages may share it). Threads are not
/// processes: a fork that makes a thread, or a thread's exit, is skipped.
pub fn parse(mut b: &[u8], out: &mut Vec<ProcEvent>) {
    while b.len() >= NLMSG_HDR {
        let Some(len) = u32_at(b, 0).map(|l| l as usize) else {
            return;
        };
        let kind = u16::from_ne_bytes([b[4], b[5]]);
        if len < NLMSG_HDR || len > b.len() {
            return;
        }
        let msg = &b[..len];
        // Messages are 4-byte aligned within the datagram.
        b = b.get((len + 3) & !3..).unwrap_or(&[]);
        if kind == NLMSG_OVERRUN || kind == NLMSG_ERROR {
            out.push(ProcEvent::Lost);
            continue;
        }
        // proc_event: what (u32), cpu (u32), timestamp_ns (u64), then the event's fields.
        let ev = NLMSG_HDR + CN_MSG;
        let (Some(what), Some(ts_ns)) = (u32_at(msg, ev), u64_at(msg, ev + 8)) else {
            continue;
        };
        let d = ev + 16;
        let f = |i: usize| u32_at(msg, d + 4 * i);
        let e = match what {
            PROC_EVENT_FORK => match (f(1), f(2), f(3)) {
                (Some(parent), Some(child_pid), Some(child)) if child_pid == child => {
                    Some(ProcEvent::Fork {
                        parent,
                        child,
                        ts_ns,
                    })
                }
                _ => None,
            },
            PROC_EVENT_EXEC => f(1).map(|pid| ProcEvent::Exec { pid, ts_ns }),
            PROC_EVENT_UID => match (f(1), f(2), f(3)) {
                (Some(pid), Some(real_uid), Some(uid)) => {
                    Some(ProcEvent::Uid { pid, real_uid, uid })
                }
                _ => None,
            },
            PROC_EVENT_EXIT => match (f(0), f(1)) {
                (Some(p), Some(pid)) if p == pid => Some(ProcEvent::Exit { pid, ts_ns }),
                _ => None,
            },
            _ => None,
        };
        out.extend(e);
    }
}

/// Applies one message to the table.
pub fn apply(table: &ProcessTable, ev: ProcEvent) {
    match ev {
        ProcEvent::Fork {
            parent,
            child,
            ts_ns,
        } => table.on_fork(parent, child, ts_ns),
        ProcEvent::Exec { pid, ts_ns } => table.on_exec(pid, ts_ns),
        ProcEvent::Uid { pid, real_uid, uid } => table.on_uid(pid, real_uid, uid),
        ProcEvent::Exit { pid, ts_ns } => table.on_exit(pid, ts_ns),
        ProcEvent::Lost => table.on_lost(),
    }
}

/// The feeder's scheduling. It races instant processes (a `touch` lives about a millisecond) to
/// their `/proc` entry, and only a realtime thread reliably wins: measured (docs/BENCHMARKS.md),
/// 1,000 `touch` are 99.2–99.8 % complete with `SCHED_FIFO` 1 (idle machine) and 86–94 % at
/// nice 0 or -10 (a nice value competes only inside a CPU group, and the unit is a group of its
/// own). The lowest
/// realtime priority is enough: it only has to run before a normal process, not before any
/// other realtime one. Per message its work is small and never loops (a lock and a clone, or
/// one `/proc` read per exec); a loss of messages costs one `/proc` scan once the socket is
/// empty, at most one per second ([`ProcessTable::rescan_if_lost`]). In a sustained storm of
/// forks it can keep one CPU busy for as long as the storm lasts; the kernel's realtime
/// throttling (`sched_rt_runtime_us`) leaves 5 % of that CPU to the rest, and the other CPUs.
const FEEDER_RT_PRIORITY: i32 = 1;

/// Where realtime is refused (no CAP_SYS_NICE, or a cgroup with no realtime budget), nice -10.
const FEEDER_NICE: i32 = -10;

/// Gives the calling thread (the feeder) [`FEEDER_RT_PRIORITY`] under `SCHED_FIFO`, else
/// [`FEEDER_NICE`]; says which in the log, and returns whether it is realtime. Both need
/// CAP_SYS_NICE (root has it).
fn raise_priority() -> bool {
    let tid = nix::unistd::gettid().as_raw();
    // SAFETY: sched_param is plain integers (musl's has more fields than glibc's): zero is valid.
    let mut param: libc::sched_param = unsafe { std::mem::zeroed() };
    param.sched_priority = FEEDER_RT_PRIORITY;
    // The system call itself: musl's sched_setscheduler() always fails with ENOSYS (POSIX's is
    // per process, Linux's per thread). SAFETY: `param` outlives the call; a tid changes that
    // thread only.
    let r = unsafe {
        libc::syscall(
            libc::SYS_sched_setscheduler,
            tid,
            libc::SCHED_FIFO | libc::SCHED_RESET_ON_FORK,
            &raw const param,
        )
    };
    if r == 0 {
        tracing::debug!(
            priority = FEEDER_RT_PRIORITY,
            "The process-events thread runs SCHED_FIFO."
        );
        return true;
    }
    let rt = std::io::Error::last_os_error();
    // SAFETY: setpriority takes plain integers; PRIO_PROCESS with a tid changes that thread only.
    let r = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, FEEDER_NICE) };
    let nice = (r != 0).then(std::io::Error::last_os_error);
    tracing::info!(realtime = %rt, nice = ?nice.map(|e| e.to_string()), "The process-events thread cannot run SCHED_FIFO: instant processes (cp, rm, touch) are named less often.");
    false
}

/// A thread that feeds the table from the connector until [`Feeder::stop`].
#[derive(Debug)]
pub struct Feeder {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Feeder {
    /// Opens the connector, scans `/proc` once (what runs already), then feeds the table. When
    /// the connector is refused the table is told why (`set_feed`) and the error returned.
    pub fn start(table: Arc<ProcessTable>) -> Result<Self, ConnectorUnavailable> {
        // Listen first, then scan: a process started in between is seen by one or the other.
        let mut conn = match Connector::open() {
            Ok(c) => c,
            Err(e) => {
                table.set_feed(Err(e.reason.clone()));
                table.scan();
                return Err(e);
            }
        };
        table.set_feed(Ok(()));
        table.scan();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("proc-connector".into())
            .spawn(move || {
                table.set_feeder_realtime(raise_priority());
                let mut evs = Vec::new();
                while !flag.load(Ordering::SeqCst) {
                    evs.clear();
                    // First without waiting: an empty socket means every event sent before
                    // `t` is applied (lookups of a just-forked pid wait for that).
                    let t = now_ms();
                    let mut r = conn.read(&mut evs, Duration::ZERO);
                    if matches!(r, Ok(false)) {
                        if table.rescan_if_lost() {
                            continue;
                        }
                        table.set_drained(t);
                        r = conn.read(&mut evs, Duration::from_millis(200));
                        table.set_woken();
                    }
                    if let Err(e) = r {
                        tracing::error!(error = %e, "Reading the process-events connector failed; attribution falls back to /proc at event time.");
                        table.set_feed(Err(e.to_string()));
                        return;
                    }
                    for ev in evs.drain(..) {
                        apply(&table, ev);
                    }
                }
            })
            .map_err(|e| ConnectorUnavailable {
                kind: ConnectorRefusal::Other,
                reason: format!("cannot start the connector thread: {e}"),
                errno: None,
            })?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }

    pub fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Feeder {
    fn drop(&mut self) {
        self.stop_inner();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(what: u32, fields: &[u32]) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend_from_slice(&libc::CN_IDX_PROC.to_ne_bytes());
        body.extend_from_slice(&libc::CN_VAL_PROC.to_ne_bytes());
        body.extend_from_slice(&[0; 8]);
        body.extend_from_slice(&((16 + fields.len() * 4) as u16).to_ne_bytes());
        body.extend_from_slice(&[0; 2]);
        body.extend_from_slice(&what.to_ne_bytes());
        body.extend_from_slice(&0u32.to_ne_bytes());
        body.extend_from_slice(&77u64.to_ne_bytes());
        for f in fields {
            body.extend_from_slice(&f.to_ne_bytes());
        }
        let mut m = Vec::new();
        m.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
        m.extend_from_slice(&NLMSG_DONE.to_ne_bytes());
        m.extend_from_slice(&[0; 10]);
        m.extend_from_slice(&body);
        m
    }

    #[test]
    fn messages_parse_and_threads_are_skipped() {
        let mut b = msg(PROC_EVENT_FORK, &[10, 10, 11, 11]);
        b.extend(msg(PROC_EVENT_FORK, &[10, 10, 12, 10])); // a thread
        b.extend(msg(PROC_EVENT_EXEC, &[11, 11]));
        b.extend(msg(PROC_EVENT_UID, &[11, 11, 1000, 0]));
        b.extend(msg(PROC_EVENT_EXIT, &[12, 10, 0, 17])); // a thread's exit
        b.extend(msg(PROC_EVENT_EXIT, &[11, 11, 0, 17, 10, 10]));
        let mut out = Vec::new();
        parse(&b, &mut out);
        assert_eq!(
            out,
            vec![
                ProcEvent::Fork {
                    parent: 10,
                    child: 11,
                    ts_ns: 77
                },
                ProcEvent::Exec { pid: 11, ts_ns: 77 },
                ProcEvent::Uid {
                    pid: 11,
                    real_uid: 1000,
                    uid: 0
                },
                ProcEvent::Exit { pid: 11, ts_ns: 77 },
            ]
        );
        for cut in 0..b.len() {
            let mut o = Vec::new();
            parse(&b[..cut], &mut o);
        }
    }
}

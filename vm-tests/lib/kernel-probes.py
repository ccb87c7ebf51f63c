"""Kernel facilities the agent's event sources use, probed from inside the booted sandbox.

TEST FIXTURE for vm-tests/scenarios/smoke.sh, run as root in a transient unit with the agent's
hardening (packaging/notebook-agent.service), so it sees what the agent would see:

  python3 kernel-probes.py fanotify DIR   a fanotify group with FAN_REPORT_DFID_NAME and a
                                          FAN_MARK_FILESYSTEM mark on DIR's filesystem; a file made
                                          in DIR must come back as a FAN_CREATE event with its name
                                          and our pid, and the directory handle must open again
                                          (open_by_handle_at). Exit 0 when all of that works.
  python3 kernel-probes.py connector      the process-events connector (NETLINK_CONNECTOR,
                                          CN_IDX_PROC): bind, PROC_CN_MCAST_LISTEN, and an exec
                                          event for a child. Prints "connector: works" or
                                          "connector: refused (...)"; exit 0 on either definite
                                          answer, 1 when it cannot tell.
"""
import ctypes
import errno
import os
import select
import socket
import struct
import subprocess
import sys
import time

libc = ctypes.CDLL(None, use_errno=True)

FAN_CLOEXEC, FAN_NONBLOCK = 0x1, 0x2
FAN_REPORT_DFID_NAME = 0x400 | 0x800  # FAN_REPORT_DIR_FID | FAN_REPORT_NAME
FAN_MARK_ADD, FAN_MARK_FILESYSTEM = 0x1, 0x100
FAN_ATTRIB, FAN_MOVED_FROM, FAN_MOVED_TO = 0x4, 0x40, 0x80
FAN_CLOSE_WRITE, FAN_CREATE, FAN_DELETE = 0x8, 0x100, 0x200
FAN_RENAME, FAN_ONDIR = 0x10000000, 0x40000000
FAN_EVENT_INFO_TYPE_DFID_NAME = 2
AT_FDCWD = -100
O_LARGEFILE, O_DIRECTORY, O_PATH = 0o100000, 0o200000, 0o10000000


def err(what):
    e = ctypes.get_errno()
    return "%s: %s (%s)" % (what, errno.errorcode.get(e, e), os.strerror(e))


def fanotify(d):
    libc.fanotify_mark.argtypes = [ctypes.c_int, ctypes.c_uint, ctypes.c_uint64, ctypes.c_int, ctypes.c_char_p]
    fd = libc.fanotify_init(FAN_CLOEXEC | FAN_NONBLOCK | FAN_REPORT_DFID_NAME, os.O_RDONLY | O_LARGEFILE)
    if fd < 0:
        print(err("fanotify_init(FAN_REPORT_DFID_NAME)"))
        return 1
    print("fanotify_init(FAN_REPORT_DFID_NAME): ok")
    base = FAN_CREATE | FAN_DELETE | FAN_MOVED_FROM | FAN_MOVED_TO | FAN_CLOSE_WRITE | FAN_ATTRIB | FAN_ONDIR
    for mask, what in ((base | FAN_RENAME, "with FAN_RENAME"), (base, "without FAN_RENAME")):
        if libc.fanotify_mark(fd, FAN_MARK_ADD | FAN_MARK_FILESYSTEM, mask, AT_FDCWD, d.encode()) == 0:
            print("fanotify_mark(FAN_MARK_FILESYSTEM, %s) on %s: ok" % (what, d))
            break
        print(err("fanotify_mark(FAN_MARK_FILESYSTEM, %s) on %s" % (what, d)))
    else:
        return 1
    name = ".smoke-fanotify-%d" % os.getpid()
    with open(os.path.join(d, name), "w") as f:
        f.write("probe\n")
    os.unlink(os.path.join(d, name))
    deadline = time.monotonic() + 5
    found = None
    while found is None and time.monotonic() < deadline:
        select.select([fd], [], [], 0.2)
        try:
            buf = os.read(fd, 65536)
        except BlockingIOError:
            continue
        off = 0
        while off + 24 <= len(buf) and found is None:
            ev_len, _vers, _res, meta_len, mask, ev_fd, pid = struct.unpack_from("<IBBHQii", buf, off)
            info = off + meta_len
            while info + 4 <= off + ev_len:
                itype, _pad, ilen = struct.unpack_from("<BBH", buf, info)
                if itype == FAN_EVENT_INFO_TYPE_DFID_NAME:
                    hbytes, htype = struct.unpack_from("<Ii", buf, info + 12)
                    handle = buf[info + 12:info + 20 + hbytes]
                    ename = buf[info + 20 + hbytes:info + ilen].split(b"\0")[0].decode()
                    if mask & FAN_CREATE and ename == name:
                        found = (mask, pid, handle, htype)
                info += ilen
            off += ev_len
    if found is None:
        print("no FAN_CREATE event for %s within 5 s" % name)
        return 1
    mask, pid, handle, htype = found
    print("event: mask 0x%x name %s pid %d (the probe is pid %d)" % (mask, name, pid, os.getpid()))
    if pid != os.getpid():
        return 1
    mount_fd = os.open(d, os.O_RDONLY | O_DIRECTORY)
    hbuf = ctypes.create_string_buffer(handle, len(handle))
    dfd = libc.open_by_handle_at(mount_fd, hbuf, O_PATH | O_DIRECTORY)
    if dfd < 0:
        print(err("open_by_handle_at (handle type %d)" % htype))
        return 1
    path = os.readlink("/proc/self/fd/%d" % dfd)
    print("open_by_handle_at: ok -> %s" % path)
    return 0 if path == d else 1


def connector():
    NETLINK_CONNECTOR, CN_IDX_PROC, CN_VAL_PROC = 11, 1, 1
    PROC_CN_MCAST_LISTEN, PROC_EVENT_EXEC, NLMSG_DONE = 1, 0x2, 3
    caps = [line.split()[1] for line in open("/proc/self/status") if line.startswith("CapEff:")][0]
    net_admin = "CAP_NET_ADMIN %s" % ("yes" if int(caps, 16) >> 12 & 1 else "no")
    print("CapEff %s: %s" % (caps, net_admin))
    for step in ("socket", "bind"):
        try:
            if step == "socket":
                s = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_CONNECTOR)
            else:
                s.bind((0, CN_IDX_PROC))
        except OSError as e:
            print("connector: refused (%s: %s; %s)" % (step, errno.errorcode.get(e.errno, e.errno), net_admin))
            return 0
    print("socket(NETLINK_CONNECTOR) + bind(CN_IDX_PROC): ok")
    cn = struct.pack("=IIIIHH", CN_IDX_PROC, CN_VAL_PROC, 0, 0, 4, 0) + struct.pack("=I", PROC_CN_MCAST_LISTEN)
    msg = struct.pack("=IHHII", 16 + len(cn), NLMSG_DONE, 0, 0, 0) + cn
    try:
        s.send(msg)
    except OSError as e:
        print("connector: refused (send PROC_CN_MCAST_LISTEN: %s; %s)" % (errno.errorcode.get(e.errno, e.errno), net_admin))
        return 0
    print("send PROC_CN_MCAST_LISTEN: ok")
    child = subprocess.Popen(["/bin/true"])
    child.wait()
    s.settimeout(0.5)
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        try:
            data = s.recv(65536)
        except socket.timeout:
            continue
        except OSError as e:
            print("connector: refused (recv: %s)" % errno.errorcode.get(e.errno, e.errno))
            return 0
        if len(data) >= 16 + 20 + 16:
            what, _cpu, _ts = struct.unpack_from("=IIQ", data, 36)
            if what == PROC_EVENT_EXEC and struct.unpack_from("=i", data, 52)[0] == child.pid:
                print("connector: works (exec event for pid %d)" % child.pid)
                return 0
    print("connector: cannot tell (bound and listening, but no exec event for pid %d in 3 s)" % child.pid)
    return 1


if __name__ == "__main__":
    if sys.argv[1:2] == ["fanotify"] and len(sys.argv) == 3:
        sys.exit(fanotify(sys.argv[2]))
    if sys.argv[1:] == ["connector"]:
        sys.exit(connector())
    sys.exit("usage: kernel-probes.py fanotify DIR | connector")

"""The measuring half of vm-tests/bench (see that script and docs/BENCHMARKS.md).

`cell` runs one contender against one workload on a freshly mounted tree and appends one JSON line
of results; `report` turns those lines into the markdown table. Runs with the bench-peers venv's
Python (it has boto3, used to read moto back).

One cell:
  1. a fresh moto_server on a free 127.0.0.1 port;
  2. the contender started alone in its own cgroups (v1 memory, v2 unified for cpu.stat — this
     host has cgroup v1 controllers with an empty v2 hierarchy beside them), so CPU covers every
     process it spawns, including exited ones (the shell pipeline's `aws` runs);
  3. once it is ready (and, for `rm`, once the tree to delete has been created and the contender
     is idle again): CPU baseline, memory peaks reset, RSS sampler on;
  4. the workload, run by this driver outside the contender's cgroups;
  5. moto polled (incrementally, by next token) until every expected event is in, or nothing new
     arrived for STALL_SECS while the contender was idle, or TIMEOUT_SECS passed;
  6. the contender's trailing work is let finish (idle), CPU read, everything stopped.
"""

import argparse
import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import boto3
import botocore.config

GROUP = "/aws/sagemaker/NotebookInstances"
NOTEBOOK = "bench-nb"
STREAMS = {
    "agent": f"{NOTEBOOK}/audit",
    "inotifywait": f"{NOTEBOOK}/inotifywait",
    "watchdog": f"{NOTEBOOK}/watchdog",
}
LABELS = {
    "agent": "notebook-agent",
    "inotifywait": "inotifywait + aws CLI",
    "watchdog": "watchdog + boto3",
}
REGION = "eu-west-1"
CG_MEMORY = "/sys/fs/cgroup/memory"
CG_UNIFIED = "/sys/fs/cgroup/unified"
STALL_SECS = 20
IDLE_CPU_SECS = 0.05  # CPU per second below which a contender counts as idle


def aws_env():
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "LC_ALL": "C",
        "HOME": "/nonexistent",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": REGION,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_EC2_METADATA_SERVICE_ENDPOINT": "http://127.0.0.1:9",
        "AWS_CONFIG_FILE": "/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
        "NO_PROXY": "127.0.0.1,localhost",
    }
    return env


# ---------------------------------------------------------------------------------- workloads

def workload_parts(spec):
    kind, _, n = spec.partition(":")
    return kind, int(n)


def workload_label(spec):
    kind, n = workload_parts(spec)
    if kind == "create":
        return f"{n:,} creations"
    if kind == "rm":
        return f"rm -r of {n:,} files"
    if kind == "dirs":
        return f"{n:,} files in {dirs_layout(n)[0]} new dirs"
    if kind == "copy":
        return f"{n / 2**30:g} GiB copy" if n >= 2**30 else f"{n // 2**20} MiB copy"
    raise SystemExit(f"unknown workload {spec}")


def rm_layout(n):
    dirs = max(1, n // 1000)
    return dirs, n // dirs


def dirs_layout(n):
    """The dirs workload: 100 files per new directory (issue 14: 10,000 files in 100 dirs)."""
    dirs = max(1, n // 100)
    return dirs, n // dirs


def expected_paths(spec):
    """Paths relative to the watched directory whose expected event must reach moto."""
    kind, n = workload_parts(spec)
    if kind == "create":
        return {f"work/f{i:06d}" for i in range(1, n + 1)}
    if kind == "rm":
        dirs, per = rm_layout(n)
        out = {"rmtree"}
        for d in range(dirs):
            out.add(f"rmtree/d{d:02d}")
            out.update(f"rmtree/d{d:02d}/f{i:04d}" for i in range(1, per + 1))
        return out
    if kind == "dirs":
        dirs, per = dirs_layout(n)
        return {f"work/d{d:03d}/f{i:04d}" for d in range(dirs) for i in range(1, per + 1)}
    if kind == "copy":
        return {"work/big.bin"}
    raise SystemExit(f"unknown workload {spec}")


def prepare(spec, watch):
    """The tree as it is before the contender starts."""
    kind, _ = workload_parts(spec)
    if kind in ("create", "copy", "dirs"):
        os.mkdir(os.path.join(watch, "work"))


def build_rm_tree(spec, watch):
    """With the contender running: the tree the rm workload deletes."""
    _, n = workload_parts(spec)
    dirs, per = rm_layout(n)
    script = ("set -e; mkdir rmtree; for d in $(seq -f 'd%02g' 0 $((DIRS-1))); do "
              "mkdir rmtree/$d; (cd rmtree/$d && seq -f 'f%04g' 1 $PER | xargs touch); done")
    subprocess.run(["bash", "-c", script], cwd=watch, check=True,
                   env={"PATH": "/usr/bin:/bin", "DIRS": str(dirs), "PER": str(per)})


def run_workload(spec, watch, source):
    kind, n = workload_parts(spec)
    if kind == "create":
        cmd = f"seq -f 'f%06g' 1 {n} | xargs touch"
        cwd = os.path.join(watch, "work")
    elif kind == "rm":
        cmd, cwd = "rm -r rmtree", watch
    elif kind == "dirs":
        dirs, per = dirs_layout(n)
        cmd = (f"for d in $(seq -f 'd%03g' 0 {dirs - 1}); do mkdir $d; "
               f"(cd $d && seq -f 'f%04g' 1 {per} | xargs touch); done")
        cwd = os.path.join(watch, "work")
    else:
        cmd, cwd = f"cp '{source}' work/big.bin", watch
    subprocess.run(["bash", "-c", cmd], cwd=cwd, check=True, env={"PATH": "/usr/bin:/bin"})


def matcher(contender, spec):
    """message -> (its file's path or None, whether it is the workload's expected kind)."""
    kind, n = workload_parts(spec)
    if contender == "agent":
        def m(msg):
            try:
                v = json.loads(msg)
            except ValueError:
                return None, False
            if v.get("class_uid") != 1001:
                return None, False
            f = v.get("file") or {}
            a = v.get("activity_id")
            ok = (kind in ("create", "dirs") and a == 1 or kind == "rm" and a == 4
                  or kind == "copy" and a in (1, 3) and f.get("size") == n)
            return f.get("path"), ok
    elif contender == "inotifywait":
        want = {"create": "CREATE", "dirs": "CREATE", "rm": "DELETE",
                "copy": "CLOSE_WRITE"}[kind]

        def m(msg):
            parts = msg.split(" ", 2)
            if len(parts) < 3:
                return None, False
            return parts[2], want in parts[1].split(",")
    else:
        want = {"create": "created", "dirs": "created", "rm": "deleted",
                "copy": "closed"}[kind]

        def m(msg):
            try:
                v = json.loads(msg)
            except ValueError:
                return None, False
            return v.get("path"), v.get("event") == want
    return m


# ---------------------------------------------------------------------------------- plumbing

def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port, secs=30):
    until = time.time() + secs
    while time.time() < until:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"moto_server did not listen on 127.0.0.1:{port} within {secs} s")


class Cgroup:
    """v1 memory + v2 (unified) cgroup named NAME, for one contender's whole process tree."""

    def __init__(self, name):
        self.mem = os.path.join(CG_MEMORY, name)
        self.uni = os.path.join(CG_UNIFIED, name)
        for d in (self.mem, self.uni):
            os.mkdir(d)

    def join(self):  # in the child, before exec
        for d in (self.mem, self.uni):
            with open(os.path.join(d, "cgroup.procs"), "w") as f:
                f.write("0")

    def cpu_usec(self):
        with open(os.path.join(self.uni, "cpu.stat")) as f:
            for line in f:
                k, v = line.split()
                if k == "usage_usec":
                    return int(v)
        return 0

    def pids(self):
        with open(os.path.join(self.mem, "cgroup.procs")) as f:
            return [int(p) for p in f.read().split()]

    def mem_peak(self):
        with open(os.path.join(self.mem, "memory.max_usage_in_bytes")) as f:
            return int(f.read())

    def reset_peaks(self):
        with open(os.path.join(self.mem, "memory.max_usage_in_bytes"), "w") as f:
            f.write("0")
        for pid in self.pids():
            try:  # 5: reset the process's peak RSS (VmHWM)
                with open(f"/proc/{pid}/clear_refs", "w") as f:
                    f.write("5")
            except OSError:
                pass

    def kill_all(self):
        for sig, wait in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 10.0)):
            for pid in self.pids():
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            until = time.time() + wait
            while self.pids() and time.time() < until:
                time.sleep(0.05)
            if not self.pids():
                break

    def remove(self):
        for d in (self.mem, self.uni):
            try:
                os.rmdir(d)
            except OSError as e:
                print(f"bench: cannot remove cgroup {d}: {e}", file=sys.stderr)


def proc_status(pid, key):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class RssSampler(threading.Thread):
    """Peak of the summed VmRSS of the cgroup's processes, sampled every 50 ms."""

    def __init__(self, cg):
        super().__init__(daemon=True)
        self.cg, self.peak, self.stop = cg, 0, threading.Event()

    def run(self):
        while not self.stop.wait(0.05):
            self.peak = max(self.peak, sum(proc_status(p, "VmRSS") for p in self.cg.pids()))


def wait_idle(cg, secs, quiet=2, cap=300):
    """Until the cgroup used < IDLE_CPU_SECS per second for `quiet` consecutive seconds."""
    until, calm, last = time.time() + cap, 0, cg.cpu_usec()
    while time.time() < until and calm < quiet:
        time.sleep(secs)
        now = cg.cpu_usec()
        calm = calm + 1 if (now - last) / 1e6 < IDLE_CPU_SECS * secs else 0
        last = now
    return calm >= quiet


class Reader:
    """Incremental reader of one moto stream: new events since the last call."""

    def __init__(self, port, stream):
        self.client = boto3.client(
            "logs", endpoint_url=f"http://127.0.0.1:{port}", region_name=REGION,
            aws_access_key_id="testing", aws_secret_access_key="testing",
            config=botocore.config.Config(retries={"max_attempts": 2}))
        self.stream, self.token = stream, None

    def read_all(self):
        """Every event of the stream, paginated from the head; moves the token to the end."""
        self.token = None
        return self.new_events()

    def new_events(self):
        out = []
        while True:
            kw = {"logGroupName": GROUP, "logStreamName": self.stream, "startFromHead": True}
            if self.token:
                kw["nextToken"] = self.token
            try:
                r = self.client.get_log_events(**kw)
            except self.client.exceptions.ResourceNotFoundException:
                return out
            events, nxt = r.get("events", []), r.get("nextForwardToken")
            out.extend(events)
            if not events or not nxt or nxt == self.token:
                if nxt:
                    self.token = nxt
                return out
            self.token = nxt


# ---------------------------------------------------------------------------------- contenders

def agent_root(root, watch, port):
    """The notebook shape `notebook-agent watch --root` needs (as tests/common TempRoot)."""
    files = {
        "etc/passwd": "root:x:0:0:root:/root:/bin/bash\n"
                      "ec2-user:x:1000:1000:EC2 Default User:/home/ec2-user:/bin/bash\n",
        "etc/group": "root:x:0:\nwheel:x:10:ec2-user\ndocker:x:992:ec2-user\nec2-user:x:1000:\n",
        "etc/sudoers": "Defaults env_reset\nroot ALL=(ALL) ALL\n%wheel ALL=(ALL) ALL\n"
                       "#includedir /etc/sudoers.d\n",
        "etc/sudoers.d/90-cloud-init-users": "ec2-user ALL=(ALL) NOPASSWD:ALL\n",
        "opt/ml/metadata/resource-metadata.json": json.dumps({
            "ResourceArn": f"arn:aws:sagemaker:us-east-1:123456789012:notebook-instance/{NOTEBOOK}",
            "ResourceName": NOTEBOOK}),
        "etc/notebook-agent/config.json": json.dumps({"audit": {
            "paths": ["/" + os.path.relpath(watch, root)],
            "endpoint_url": f"http://127.0.0.1:{port}",
            "region": REGION}}),
    }
    for rel, text in files.items():
        p = os.path.join(root, rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "w") as f:
            f.write(text)
    os.makedirs(os.path.join(root, "home/ec2-user"), exist_ok=True)


def start_contender(args, contender, cg, port, logdir):
    env = aws_env()
    stream = STREAMS[contender]
    if contender == "agent":
        agent_root(args.root, args.watch, port)
        env["RUST_LOG"] = "warn"
        # NOTEBOOK_AGENT_SOURCE=inotify forces the fallback source (fanotify vs inotify runs).
        # MIMALLOC_PURGE_DELAY compares the allocator's purge delays (agent/alloc.rs).
        for var in ("NOTEBOOK_AGENT_SOURCE", "MIMALLOC_PURGE_DELAY"):
            if os.environ.get(var):
                env[var] = os.environ[var]
        cmd = [args.agent_bin, "watch", "--root", args.root]
    elif contender == "inotifywait":
        env["ENDPOINT_URL"] = f"http://127.0.0.1:{port}"
        env["PATH"] = f"{args.aws_bin_dir}:{env['PATH']}"
        cmd = ["bash", os.path.join(args.peers, "inotifywait-shipper.sh"), args.watch, GROUP, stream]
    else:
        env["ENDPOINT_URL"] = f"http://127.0.0.1:{port}"
        cmd = [sys.executable, os.path.join(args.peers, "watchdog_shipper.py"),
               args.watch, GROUP, stream]
    out = open(os.path.join(logdir, f"{contender}.out"), "w")
    err = open(os.path.join(logdir, f"{contender}.err"), "w")
    return subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                            preexec_fn=cg.join, start_new_session=True)


def wait_ready(args, contender, proc, logdir, secs=60):
    until = time.time() + secs
    while time.time() < until:
        if proc.poll() is not None:
            raise SystemExit(f"bench: {contender} exited with {proc.returncode}; see {logdir}")
        if contender == "agent":
            if os.path.exists(os.path.join(args.root, "var/lib/notebook-agent/shipper.json")):
                return
        else:
            name = "err" if contender == "inotifywait" else "out"
            with open(os.path.join(logdir, f"{contender}.{name}")) as f:
                if ("Watches established" if contender == "inotifywait" else "READY") in f.read():
                    return
        time.sleep(0.05)
    raise SystemExit(f"bench: {contender} not ready within {secs} s; see {logdir}")


def restart_agent(args, cg, proc, port, logdir, reader, prefixes, missing):
    """Diagnosis when the agent missed files: stop it (it saves its tree snapshot), start it
    again and see which missing paths its catch-up scan reports. Reported there = the watcher's
    in-memory tree never had them; not reported = it had them but never emitted their event."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    restarted_ms = time.time() * 1000
    proc2 = start_contender(args, "agent", cg, port, logdir)
    time.sleep(15)
    found, records = {}, 0
    for e in reader.read_all():
        if e["ingestionTime"] < restarted_ms:
            continue
        records += 1
        try:
            v = json.loads(e["message"])
        except ValueError:
            continue
        p = (v.get("file") or {}).get("path") or ""
        rel = next((p[len(pre):] for pre in prefixes if p.startswith(pre)), None)
        if rel in missing:
            found[rel] = {"activity_id": v.get("activity_id"),
                          "source": (v.get("unmapped") or {}).get("source")}
    proc2.send_signal(signal.SIGTERM)
    proc2.wait()
    return {"records": records, "missing_reported": found,
            "missing_not_reported": sorted(missing - found.keys())}


# ---------------------------------------------------------------------------------- one cell

def cell(args):
    contender, spec = args.contender, args.workload
    logdir = args.logdir
    os.makedirs(logdir, exist_ok=True)
    expected = expected_paths(spec)
    match = matcher(contender, spec)
    prefixes = [args.watch.rstrip("/") + "/"]
    if contender == "agent":  # the agent reports paths as seen inside --root
        prefixes.append("/" + os.path.relpath(args.watch, args.root) + "/")

    port = free_port()
    moto_log = open(os.path.join(logdir, "moto.log"), "w")
    moto = subprocess.Popen([os.path.join(args.moto_bin_dir, "moto_server"), "-H", "127.0.0.1",
                             "-p", str(port)], env=aws_env(), stdin=subprocess.DEVNULL,
                            stdout=moto_log, stderr=subprocess.STDOUT, start_new_session=True)
    cg = proc = None
    try:
        wait_port(port)
        prepare(spec, args.watch)
        cg = Cgroup(f"nbbench-{os.getpid()}-{contender}")
        proc = start_contender(args, contender, cg, port, logdir)
        wait_ready(args, contender, proc, logdir)
        if workload_parts(spec)[0] == "rm":
            build_rm_tree(spec, args.watch)
            time.sleep(1)
            wait_idle(cg, 1.0, quiet=3, cap=args.timeout)
        time.sleep(1)
        wait_idle(cg, 0.5, quiet=2, cap=30)
        reader = Reader(port, STREAMS[contender])
        cpu0 = cg.cpu_usec()
        cg.reset_peaks()
        sampler = RssSampler(cg)
        sampler.start()

        t0 = time.time()
        run_workload(spec, args.watch, args.source)
        t1 = time.time()

        def tally(events):
            """Records ingested since the workload began, against the expected set."""
            t = {"delivered": {}, "others": {}, "duplicates": 0, "stray": [], "records": 0}
            for e in events:
                if e["ingestionTime"] < t0 * 1000:
                    continue
                t["records"] += 1
                p, ok = match(e["message"])
                rel = next((p[len(pre):] for pre in prefixes if p and p.startswith(pre)), None)
                if rel not in expected or not ok:
                    if len(t["stray"]) < 1000:
                        t["stray"].append(e["message"])
                    if rel in expected:
                        t["others"].setdefault(rel, []).append(e["message"])
                elif rel in t["delivered"]:
                    t["duplicates"] += 1
                    t["delivered"][rel] = min(t["delivered"][rel], e["ingestionTime"])
                else:
                    t["delivered"][rel] = e["ingestionTime"]
            return t

        # Progress by next token; a stream read that way can skip events: GetLogEvents orders by
        # timestamp, so a batch older than the tail already read lands before the token. Hence a
        # full read from the head whenever progress stalls, and for the final figures.
        seen, events = 0, []
        last_new = last_full = time.time()
        calm, last_cpu = 0, cg.cpu_usec()
        stop_reason = "complete"
        while True:
            new = reader.new_events()
            events.extend(new)
            n = len(tally(new)["delivered"]) if new else 0
            now = time.time()
            if n:
                seen, last_new = seen + n, now
            if seen >= len(expected) or (now - last_new > 3 and now - last_full > 5):
                events, last_full = reader.read_all(), time.time()
                seen = len(tally(events)["delivered"])
                if seen == len(expected):
                    break
            if now - t0 > args.timeout:
                stop_reason = f"timeout {args.timeout} s"
                break
            cpu = cg.cpu_usec()
            calm = calm + 1 if (cpu - last_cpu) / 1e6 < IDLE_CPU_SECS else 0
            last_cpu = cpu
            if now - last_new > STALL_SECS and calm >= 5:
                stop_reason = f"idle, nothing new for {STALL_SECS} s"
                break
            if proc.poll() is not None:
                stop_reason = f"exited with {proc.returncode}"
                break
            time.sleep(1)
        # Work the contender still does for this workload (e.g. shipping the other events) counts.
        wait_idle(cg, 1.0, quiet=2, cap=120)
        cpu_s = (cg.cpu_usec() - cpu0) / 1e6
        sampler.stop.set()
        sampler.join()
        hwm = max([proc_status(p, "VmHWM") for p in cg.pids()] or [0])
        final = tally(reader.read_all())
        delivered = final["delivered"]
        result = {
            "contender": contender,
            "workload": spec,
            "expected": len(expected),
            "delivered": len(delivered),
            "complete": len(delivered) == len(expected),
            "stop": stop_reason,
            "wall_s": round((max(delivered.values()) / 1000 - t0), 3) if delivered else None,
            "workload_s": round(t1 - t0, 3),
            # The last change (the workload's end) -> accepted by CloudWatch (moto).
            "latency_s": round(max(delivered.values()) / 1000 - t1, 3) if delivered else None,
            "cpu_s": round(cpu_s, 3),
            "peak_rss_mb": round(max(sampler.peak, hwm) / 2**20, 1),
            "cgroup_mem_peak_mb": round(cg.mem_peak() / 2**20, 1),
            "records_in_moto": final["records"],
            "duplicates": final["duplicates"],
            "missing_sample": sorted(expected - delivered.keys())[:10],
        }
        missing = sorted(expected - delivered.keys())
        if missing:  # what moto did get for them, to tell a loss from a misclassification
            with open(os.path.join(logdir, "missing.json"), "w") as f:
                json.dump({rel: final["others"].get(rel, []) for rel in missing[:1000]}, f,
                          indent=1)
        with open(os.path.join(logdir, "other-records.json"), "w") as f:
            json.dump(final["stray"], f, indent=1)  # not an expected event (first 1,000)
        if contender == "agent":
            for name in ("daemon.json", "shipper.json"):
                try:
                    with open(os.path.join(args.root, "var/lib/notebook-agent", name)) as f:
                        result[name] = json.load(f)
                except (OSError, ValueError):
                    pass
            if missing and proc.poll() is None:
                result["after_restart"] = restart_agent(args, cg, proc, port, logdir, reader,
                                                        prefixes, set(missing))
                proc = None
        with open(args.out, "a") as f:
            f.write(json.dumps(result) + "\n")
        print(f"bench: {LABELS[contender]:22} {workload_label(spec):22} "
              f"{result['delivered']:>7}/{result['expected']:<7} wall {result['wall_s']} s, "
              f"cpu {result['cpu_s']} s, peak RSS {result['peak_rss_mb']} MB ({stop_reason})",
              flush=True)
    finally:
        if cg is not None:
            cg.kill_all()
            cg.remove()
        if proc is not None:
            proc.wait()
        moto.terminate()
        try:
            moto.wait(10)
        except subprocess.TimeoutExpired:
            moto.kill()
            moto.wait()


# ---------------------------------------------------------------------------------- report

def fmt(v, digits=1):
    return "—" if v is None else f"{v:,.{digits}f}"


def ratio(v, base):
    if v is None or not base:
        return "—"
    return f"{v / base:.1f}×" if v / base < 100 else f"{v / base:,.0f}×"


def report(args):
    rows = [json.loads(line) for line in open(args.out) if line.strip()]
    order = []
    for r in rows:
        if r["workload"] not in order:
            order.append(r["workload"])
    print("| workload | contender | delivered / expected | wall s | peak RSS MB | CPU s "
          "| wall × | RSS × | CPU × |")
    print("|---|---|---|---|---|---|---|---|---|")
    for w in order:
        cells = {r["contender"]: r for r in rows if r["workload"] == w}
        base = cells.get("agent")
        for c in ("agent", "inotifywait", "watchdog"):
            r = cells.get(c)
            if r is None:
                continue
            pct = math.floor(10000 * r["delivered"] / r["expected"]) / 100  # never rounds up to 100
            deliv = f"{r['delivered']:,} / {r['expected']:,}"
            deliv += " (100%)" if r["complete"] else f" (**{pct:.2f}%**)"
            wall = fmt(r["wall_s"], 2) + ("" if r["complete"] else " †")
            cols = [workload_label(w), LABELS[c], deliv, wall, fmt(r["peak_rss_mb"]),
                    fmt(r["cpu_s"], 2)]
            if base is None or c == "agent":
                cols += ["1.0×" if base else "—"] * 3
            else:
                # A wall time is only comparable when both delivered everything.
                comparable = r["complete"] and base["complete"]
                cols += [ratio(r["wall_s"], base["wall_s"]) if comparable else "—",
                         ratio(r["peak_rss_mb"], base["peak_rss_mb"]),
                         ratio(r["cpu_s"], base["cpu_s"])]
            print("| " + " | ".join(cols) + " |")
    print()
    print("| workload | contender | workload s | last change → CloudWatch s | records in moto "
          "| cgroup memory peak MB | stopped because |")
    print("|---|---|---|---|---|---|---|")
    for w in order:
        for r in [r for r in rows if r["workload"] == w]:
            lat = fmt(r.get("latency_s"), 2) + ("" if r["complete"] else " †")
            print(f"| {workload_label(w)} | {LABELS[r['contender']]} | {r['workload_s']:.2f} "
                  f"| {lat} | {r['records_in_moto']:,} | {fmt(r['cgroup_mem_peak_mb'])} | {r['stop']} |")
    bad = [r for r in rows if r["contender"] == "agent" and not r["complete"]]
    for r in bad:
        print(f"\nnotebook-agent did not deliver every event of {workload_label(r['workload'])}: "
              f"{r['delivered']}/{r['expected']}; missing e.g. {r['missing_sample']}",
              file=sys.stderr)
    return 1 if bad else 0


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("cell")
    c.add_argument("--contender", choices=sorted(STREAMS), required=True)
    c.add_argument("--workload", required=True, help="create:N | rm:N | copy:BYTES")
    c.add_argument("--root", required=True, help="the agent's --root (holds WATCH)")
    c.add_argument("--watch", required=True, help="the watched directory (a fresh ext4 mount)")
    c.add_argument("--agent-bin", required=True)
    c.add_argument("--moto-bin-dir", required=True, help="bin dir with moto_server and aws")
    c.add_argument("--aws-bin-dir", required=True, help="bin dir with the peer's aws CLI")
    c.add_argument("--peers", required=True, help="vm-tests/bench-peers")
    c.add_argument("--source", default="", help="the file the copy workload copies")
    c.add_argument("--timeout", type=int, default=300)
    c.add_argument("--logdir", required=True)
    c.add_argument("--out", required=True, help="JSON lines file to append to")
    r = sub.add_parser("report")
    r.add_argument("--out", required=True)
    args = p.parse_args()
    if args.cmd == "cell":
        cell(args)
        return 0
    return report(args)


if __name__ == "__main__":
    sys.exit(main())

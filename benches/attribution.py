#!/usr/bin/env python3
"""Attribution and read-audit figures of a notebook-agent binary (issue 15), run by
benches/attribution.sh as root (fanotify needs CAP_SYS_ADMIN):

1. coverage: N short-lived processes (`touch <file>` exec'd one after another by this script)
   each create one file; of their Create records, how many name the process with the right exe
   (…/touch), cmd_line (`touch <file>`) and uid (this script's), how many say `unknown`, and how
   many name anything else (must be 0);
2. read audit: a tree of M files under data/, every file read once by `cat` processes
   (`find data -type f -exec cat {} +`): Read records produced, their bytes, and reads counted.

Usage: attribution.py BINARY WORKDIR [N=1000] [M=100000]
The daemon prints its records on stdout (`watch --stdout --root`): nothing is shipped.
"""
import json
import os
import subprocess
import sys
import threading
import time

ENV = {
    "PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "RUST_LOG": "warn",
    "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x", "AWS_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true", "AWS_EC2_METADATA_SERVICE_ENDPOINT": "http://127.0.0.1:9",
}


def make_root(base, reads):
    root = os.path.join(base, "root")
    sm = os.path.join(root, "home/ec2-user/SageMaker")
    for d in ("etc/notebook-agent", "opt/ml/metadata", "tmp", "run"):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    os.makedirs(sm, exist_ok=True)
    with open(os.path.join(root, "etc/passwd"), "w") as f:
        f.write("root:x:0:0:root:/root:/bin/bash\nec2-user:x:1000:1000::/home/ec2-user:/bin/bash\n")
    with open(os.path.join(root, "etc/group"), "w") as f:
        f.write("root:x:0:\nec2-user:x:1000:\n")
    with open(os.path.join(root, "opt/ml/metadata/resource-metadata.json"), "w") as f:
        f.write('{"ResourceArn":"arn:aws:sagemaker:us-east-1:123456789012:notebook-instance/b",'
                '"ResourceName":"b"}')
    audit = {"endpoint_url": "http://127.0.0.1:9", "drain_secs": 1}
    if reads:
        audit["reads"] = {"globs": ["data/**"], "window_secs": 5}
    path = os.path.join(root, "etc/notebook-agent/config.json")
    with open(path, "w") as f:
        json.dump({"audit": audit}, f)
    os.chmod(path, 0o600)
    return root, sm


class Daemon:
    def __init__(self, binary, root):
        # As under systemd, the daemon runs in a session of its own (and so, with autogroup
        # scheduling, a CPU group of its own) unless BENCH_SHARED_SESSION=1 keeps it in this
        # script's, where its nice competes directly with the touch processes'.
        own = os.environ.get("BENCH_SHARED_SESSION") != "1"
        self.p = subprocess.Popen([binary, "watch", "--stdout", "--root", root], env=ENV,
                                  stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                  start_new_session=own)
        self.records = []
        self.bytes = 0
        self.t = threading.Thread(target=self._read, daemon=True)
        self.t.start()
        self.wait_for(lambda r: r.get("class_uid") == 6002 and r.get("activity_id") == 3, 60)
        start = next(r for r in self.records if r.get("class_uid") == 6002)
        self.source = start["unmapped"].get("source")
        self.actors = start["unmapped"].get("actors")

    def _read(self):
        for line in self.p.stdout:
            self.bytes += len(line)
            self.records.append(json.loads(line))

    def wait_for(self, pred, secs):
        t0 = time.time()
        while not any(pred(r) for r in list(self.records)):
            if time.time() - t0 > secs:
                raise SystemExit("no such record within %d s" % secs)
            time.sleep(0.05)

    def cpu(self):
        with open("/proc/%d/stat" % self.p.pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def hwm_kb(self):
        with open("/proc/%d/status" % self.p.pid) as f:
            return int(next(l for l in f if l.startswith("VmHWM")).split()[1])

    def stop(self):
        self.p.terminate()
        self.p.wait(60)
        self.t.join(10)


def coverage(binary, base, n):
    root, sm = make_root(os.path.join(base, "coverage"), reads=False)
    d = Daemon(binary, root)
    cpu0 = d.cpu()
    t0 = time.time()
    for i in range(n):
        subprocess.run(["/usr/bin/touch", "f%05d" % i], cwd=sm, check=True)
    made = time.time() - t0
    last = os.path.join(sm, "f%05d" % (n - 1))
    d.wait_for(lambda r: r.get("file", {}).get("path") == last, 60)
    time.sleep(1)
    cpu = d.cpu() - cpu0
    hwm = d.hwm_kb()
    d.stop()
    uid = str(os.getuid())
    right = unknown = wrong = 0
    wrongs = []
    for r in d.records:
        if r.get("class_uid") != 1001 or r.get("activity_id") != 1:
            continue
        name = os.path.basename(r["file"]["path"])
        p = r.get("actor", {}).get("process", {})
        basis = r.get("unmapped", {}).get("actor_basis", "")
        if basis.startswith("unknown"):
            unknown += 1
        elif (p.get("file", {}).get("path", "").endswith("/touch")
              and p.get("cmd_line") == "/usr/bin/touch %s" % name
              and p.get("user", {}).get("uid") == uid):
            right += 1
        else:
            wrong += 1
            if len(wrongs) < 3:
                wrongs.append({"basis": basis, "process": p, "note": r["unmapped"].get("actor_note")})
    print("| coverage | %d short-lived `touch` processes (%.1f s) | source %s, actors: %s |"
          % (n, made, d.source, d.actors))
    print("| | exe + cmd_line + uid right: %d (%.1f %%) | unknown: %d | incomplete or wrong: %d |"
          % (right, 100.0 * right / n, unknown, wrong))
    print("| | daemon CPU %.2f s (%.0f µs per process) | VmHWM %.1f MB | |"
          % (cpu, cpu * 1e6 / n, hwm / 1024))
    for w in wrongs:
        print("  e.g. %s" % json.dumps(w)[:400])


def read_audit(binary, base, m):
    root, sm = make_root(os.path.join(base, "reads"), reads=True)
    per_dir = 1000
    for d in range(max(1, m // per_dir)):
        p = os.path.join(sm, "data", "d%03d" % d)
        os.makedirs(p)
        for f in range(min(per_dir, m)):
            with open(os.path.join(p, "img%04d.jpg" % f), "wb") as fh:
                fh.write(b"x" * 64)
    d = Daemon(binary, root)
    cpu0, bytes0, n0 = d.cpu(), d.bytes, len(d.records)
    t0 = time.time()
    subprocess.run("find data -type f -exec cat {} + >/dev/null", shell=True, cwd=sm, check=True)
    read_s = time.time() - t0
    time.sleep(6.5)  # one read window (5 s) and its flush
    cpu = d.cpu() - cpu0
    hwm = d.hwm_kb()
    d.stop()
    recs = [r for r in d.records[n0:] if r.get("class_uid") == 1001 and r.get("activity_id") == 2]
    reads = sum(r["unmapped"]["read"]["reads"] for r in recs)
    size = sum(len(json.dumps(r, separators=(",", ":"))) for r in recs)
    summaries = sum(1 for r in recs if r["unmapped"]["read"].get("summary"))
    print("| read audit | %d files read once by `cat` (%.1f s) | %d Read records (%d folder summaries), %d bytes | reads counted %d |"
          % (m, read_s, len(recs), summaries, size, reads))
    print("| | daemon CPU %.2f s (%.1f µs per read) | VmHWM %.1f MB | all stdout %d bytes |"
          % (cpu, cpu * 1e6 / max(1, m), hwm / 1024, d.bytes - bytes0))


def main():
    binary, base = sys.argv[1], sys.argv[2]
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 1000
    m = int(sys.argv[4]) if len(sys.argv) > 4 else 100000
    coverage(binary, base, n)
    read_audit(binary, base, m)


if __name__ == "__main__":
    main()

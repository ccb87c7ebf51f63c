#!/usr/bin/env bash
# Quick RSS figures of a notebook-agent binary (issue 14): a temp root shaped like benches/watch.rs
# make_root with DIRS directories × FILES files under the SageMaker directory; then
#   1. start, VmRSS 3 s after daemon.json appears (idle), VmHWM (startup peak);
#   2. SIGTERM, CHANGES creates / rewrites / deletes while stopped, restart: VmHWM once idle
#      (catch-up peak) and the catch-up count from the Started record;
#   3. a burst of BURST creates in one new directory, then its `rm -r`: VmHWM and VmRSS after.
# Usage: benches/watch_rss.sh BINARY DIRS FILES [CHANGES=3000] [BURST=50000]
# Runs in $WATCH_BENCH_DIR (default: a temp dir; the root fs here has no journal, so times are
# not representative, memory is).
set -euo pipefail

bin="$1" dirs="$2" files="$3" changes="${4:-3000}" burst="${5:-50000}"
base="${WATCH_BENCH_DIR:-$(mktemp -d)}"
root="$(mktemp -d "$base/rss.XXXXXX")"
sm="$root/home/ec2-user/SageMaker"
mkdir -p "$root/etc/notebook-agent" "$root/opt/ml/metadata" "$sm" "$root/tmp" "$root/run"
printf 'root:x:0:0:root:/root:/bin/bash\nec2-user:x:1000:1000::/home/ec2-user:/bin/bash\n' >"$root/etc/passwd"
printf 'root:x:0:\nec2-user:x:1000:\n' >"$root/etc/group"
echo '{"ResourceArn":"arn:aws:sagemaker:us-east-1:123456789012:notebook-instance/test-nb","ResourceName":"test-nb"}' >"$root/opt/ml/metadata/resource-metadata.json"
echo '{"audit": {"endpoint_url": "http://127.0.0.1:9", "drain_secs": 1}}' >"$root/etc/notebook-agent/config.json"
chmod 600 "$root/etc/notebook-agent/config.json"
python3 - "$sm" "$dirs" "$files" <<'EOF'
import os, sys
sm, dirs, files = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for d in range(dirs):
    p = os.path.join(sm, f"d{d:04d}")
    os.mkdir(p)
    for f in range(files):
        with open(os.path.join(p, f"f{f:04d}.csv"), "wb") as fh:
            fh.write(b"a,b,c\n1,2,3\n")
EOF

state="$root/var/lib/notebook-agent"
start() {
    rm -f "$state/daemon.json"
    env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin RUST_LOG=warn AWS_ACCESS_KEY_ID=x AWS_SECRET_ACCESS_KEY=x \
        AWS_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true AWS_EC2_METADATA_SERVICE_ENDPOINT=http://127.0.0.1:9 \
        "$bin" watch --root "$root" </dev/null >/dev/null 2>>"$root/daemon.stderr" &
    pid=$!
    t0=$(date +%s.%N)
    until [ -s "$state/daemon.json" ]; do sleep 0.01; done
    echo "setup $(echo "$(date +%s.%N) - $t0" | bc) s"
}
mem() { grep -E '^(VmRSS|VmHWM)' "/proc/$pid/status" | tr -s ' \n' ' '; echo; }
idle() { # until the process used no CPU for 1.5 s
    local last now quiet=0
    last=$(awk '{print $14+$15}' "/proc/$pid/stat")
    while [ "$quiet" -lt 15 ]; do
        sleep 0.1
        now=$(awk '{print $14+$15}' "/proc/$pid/stat")
        if [ "$now" = "$last" ]; then quiet=$((quiet + 1)); else quiet=0; fi
        last=$now
    done
}
stop() { kill -TERM "$pid"; wait "$pid" || true; }

echo "== $bin: $dirs dirs x $files files"
start
sleep 3
echo "idle: $(mem)"
stop
stat -c '%n %s bytes' "$sm"/.notebook-agent/watch.* 2>/dev/null || true
python3 - "$sm" "$dirs" "$files" "$changes" <<'EOF'
import os, sys
sm, dirs, files, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
for i in range(n):
    d = os.path.join(sm, f"d{(i * 7) % dirs:04d}")
    k = i % 3
    if k == 0:
        open(os.path.join(d, f"new{i:05d}.csv"), "wb").write(b"x")
    elif k == 1:
        p = os.path.join(d, f"f{(i // 3) % files:04d}.csv")
        if os.path.exists(p):
            open(p, "ab").write(b"more\n")
    else:
        p = os.path.join(d, f"f{(i // 3 + 1) % files:04d}.csv")
        if os.path.exists(p):
            os.remove(p)
EOF
start
idle
echo "restart after $changes changes while stopped, idle: $(mem)"
mkdir "$sm/burst"
python3 -c "
import sys
for i in range($burst):
    open('$sm/burst/f%06d' % i, 'wb').write(b'a,b,c\n')
"
idle
rm -r "$sm/burst"
idle
echo "after $burst creates + rm -r: $(mem)"
stop
stat -c '%n %s bytes' "$sm"/.notebook-agent/watch.* 2>/dev/null || true
grep -c '"catch_up"' "$sm"/.notebook-agent/seg-*.log | paste -sd' ' | sed 's/^/catch_up records per segment: /'
rm -rf "$root"

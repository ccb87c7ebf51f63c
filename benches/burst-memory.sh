#!/usr/bin/env bash
# The 100,000-file burst alone (issue 14's burst phase, docs/BENCHMARKS.md "Burst memory"): a
# 100 x 100 tree in a temporary directory, the release binary watching it, then N creates in a new
# directory, a rename of it and its rm -r; each phase's peak RSS (VmHWM, reset before the phase
# with `echo 5 > /proc/PID/clear_refs`), VmRSS when the agent is idle again, and its CPU ticks.
# Not part of CI. Run as root for the fanotify source (else the agent falls back to inotify).
# Usage: benches/burst-memory.sh BIN [N, default 100000] [NAME=VALUE ... for the agent's environment]
set -euo pipefail

bin=$(realpath "${1:?usage: benches/burst-memory.sh BIN [N] [NAME=VALUE ...]}")
n=${2:-100000}
shift $(($# >= 2 ? 2 : 1))
work=$(mktemp -d /tmp/burst-memory.XXXXXX)
pid=''
cleanup() {
  [[ -n $pid ]] && kill -TERM "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

mkdir -p "$work/etc/notebook-agent" "$work/home/ec2-user/SageMaker"
echo '{"audit": {"endpoint_url": "http://127.0.0.1:9", "drain_secs": 1, "log_stream": "bench/audit", "region": "us-east-1", "spool_max_bytes": 4294967296}}' \
  >"$work/etc/notebook-agent/config.json"
sm=$work/home/ec2-user/SageMaker
for d in $(seq 100); do
  mkdir "$sm/d$d"
  (cd "$sm/d$d" && seq -f f%g.jpg 100 | xargs touch)
done

env -i PATH=/usr/bin:/bin RUST_LOG=warn AWS_ACCESS_KEY_ID=x AWS_SECRET_ACCESS_KEY=x \
  AWS_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true \
  AWS_EC2_METADATA_SERVICE_ENDPOINT=http://127.0.0.1:9 "$@" \
  "$bin" watch --root "$work" 2>"$work/stderr" &
pid=$!
# Started: daemon.json names this pid (60 s at most).
for _ in $(seq 600); do
  grep -qs "\"pid\": *$pid\b" "$work/var/lib/notebook-agent/daemon.json" && break
  kill -0 "$pid" 2>/dev/null || { echo "burst-memory: the agent exited: $(tail -3 "$work/stderr")" >&2; exit 1; }
  sleep 0.1
done
grep -qs "\"pid\": *$pid\b" "$work/var/lib/notebook-agent/daemon.json" ||
  { echo "burst-memory: the agent did not start within 60 s" >&2; exit 1; }

mem() { awk '/VmHWM|VmRSS/ { printf "%s %.1f MB  ", $1, $2 / 1024 }' "/proc/$pid/status"; }
ticks() { awk '{ print $14 + $15 }' "/proc/$pid/stat"; }
# Idle: no CPU used for one second (120 s at most).
idle() {
  local last=-1 cur
  for _ in $(seq 120); do
    cur=$(ticks)
    [[ $cur == "$last" ]] && return 0
    last=$cur
    sleep 1
  done
  echo "burst-memory: still busy after 120 s" >&2
  return 1
}
phase() {
  local name=$1 t0
  shift
  idle
  echo 5 >"/proc/$pid/clear_refs"
  t0=$(ticks)
  "$@"
  idle
  echo "$name: $(mem) cpu $(($(ticks) - t0)) ticks"
}
burst() { mkdir "$sm/burst" && (cd "$sm/burst" && seq -f b%g.jpg "$n" | xargs touch); }

echo "binary: $bin ($(stat -c %s "$bin") bytes); $n files; $(nproc) cores; kernel $(uname -r); environment: ${*:-none}"
echo "started: $(mem)"
phase "burst of $n" burst
phase "rename" mv "$sm/burst" "$sm/burst-renamed"
phase "rm -r" rm -r "$sm/burst-renamed"

#!/usr/bin/env bash
# PEER FIXTURE for vm-tests/bench — NOT product code, not shipped.
#
# The file-audit pipeline many SageMaker lifecycle scripts install instead of an agent:
# `inotifywait -mr` piped into a `while read` loop that batches lines and ships each batch with
# `aws logs put-log-events`. Written the way such a script usually is — fairly (it batches: up to
# MAX_LINES lines, a batch is shipped once no line arrived for 1 s or it is full; events as JSON
# with the path escaped), not heroically (no retry queue, no overflow handling, no rescan: a failed
# put is logged and the batch dropped, as in the scripts it stands for).
#
# Usage: inotifywait-shipper.sh DIR LOG_GROUP LOG_STREAM
# Environment: the AWS CLI on PATH with AWS_* credentials; ENDPOINT_URL (moto) optional;
# MAX_LINES (default 5000: well inside PutLogEvents' 10,000 events / 1 MiB for paths this long).
set -u

dir=$1 group=$2 stream=$3
max_lines=${MAX_LINES:-5000}
endpoint=()
if [[ -n "${ENDPOINT_URL:-}" ]]; then endpoint=(--endpoint-url "$ENDPOINT_URL"); fi

aws "${endpoint[@]}" logs create-log-group --log-group-name "$group" 2>/dev/null || true
aws "${endpoint[@]}" logs create-log-stream --log-group-name "$group" \
  --log-stream-name "$stream" 2>/dev/null || true

batch_file=$(mktemp /tmp/inotify-shipper.XXXXXX)
trap 'rm -f "$batch_file"' EXIT

ship() { # ship "${events[@]}" as one PutLogEvents call
  local IFS=,
  printf '[%s]' "${events[*]}" > "$batch_file"
  aws "${endpoint[@]}" logs put-log-events --log-group-name "$group" --log-stream-name "$stream" \
    --log-events "file://$batch_file" > /dev/null \
    || echo "inotifywait-shipper: put-log-events failed, ${#events[@]} events dropped" >&2
}

# "Watches established." on stderr tells the benchmark the peer is ready.
inotifywait -mr -e create,modify,close_write,delete,move \
  --timefmt '%Y-%m-%dT%H:%M:%S%z' --format '%T %e %w%f' "$dir" |
  while true; do
    events=()
    eof=0
    while (( ${#events[@]} < max_lines )); do
      IFS= read -r -t 1 line
      rc=$?
      if (( rc == 1 )); then eof=1; break; fi   # inotifywait exited
      if (( rc > 128 )); then break; fi         # 1 s without a line: ship what we have
      line=${line//\\/\\\\}
      line=${line//\"/\\\"}
      now=${EPOCHREALTIME/./}
      events+=("{\"timestamp\":${now:0:-3},\"message\":\"$line\"}")
    done
    if (( ${#events[@]} > 0 )); then ship; fi
    if (( eof )); then break; fi
  done

# shellcheck shell=bash
# Degraded scenario (issue 13): CloudWatch refuses the agent, then the spool fills, and `status`
# must say so (FAIL, exit 4, with what to do) instead of PASS; after recovery it returns to PASS
# only with the loss on record in CloudWatch. A new notebook instance gets the lifecycle
# configuration (lib/notebook.sh) with a 1 MiB spool, 10 s heartbeats and `audit.endpoint_url`
# pointing at fixtures/cloudwatch-deny-proxy.py (TEST FIXTURE) in front of moto:
#
#   1. pass-through: file work is in moto;
#   2. deny (PutLogEvents answered AccessDeniedException): status exit 4, Shipping FAIL
#      `waiting_for_operator` naming AccessDeniedException and logs:PutLogEvents; a heartbeat is
#      spooled meanwhile;
#   3. ec2-user creates files until the spool is full: status exit 4, Audit daemon FAIL
#      `spool_dropping` ("DROPPING: N audit events dropped since HH:MM UTC (spool full)");
#   4. pass-through again: status exit 0 within DG_RECOVER_SECS, the Audit daemon evidence
#      keeping the loss by name ("N dropped HH:MM–HH:MM UTC, recorded");
#   5. read back from moto: the "Spool full: N audit events dropped" record, every created file
#      recorded by path (live or by the rescan when room returned), a heartbeat sent while
#      shipping was refused (audit not healthy, waiting_for_operator) and one after recovery
#      (healthy, the loss "recorded").
#
# Sourced by vm-tests/run after boot; needs lib/infra.sh's services and the release artifact.

# shellcheck source=../lib/notebook.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib/notebook.sh"
# shellcheck disable=SC2034  # read by lib/notebook.sh
LC_SCENARIO=degraded
DG_T0=$SECONDS
# shellcheck disable=SC2034  # read by lib/notebook.sh (audit.endpoint_url)
LC_MOTO=http://$INFRA_HOST_ADDR:$INFRA_CW_PROXY_PORT
# shellcheck disable=SC2034
LC_AUDIT_EXTRA='"spool_max_bytes": 1048576, "heartbeat_secs": 10, '
DG_FILL_DIR=$LC_SM/fill
DG_FILL_BATCH=${DG_FILL_BATCH:-500}
DG_FILL_MAX_BATCHES=20
DG_RECOVER_SECS=${DG_RECOVER_SECS:-120}
DG_FILES=0 DG_DROPPED=0  # (within dg_fill)

if ! lc_have_release; then
  lc_say "no release artifact (the agent binary is not built): degraded scenario skipped"
  return 0
fi

# --- helpers -------------------------------------------------------------------------------------

# dg_until SECS WHAT CMD...: CMD until it succeeds (every 0.5 s), at most SECS seconds; then its
# last output and "WHAT: not within SECS s".
dg_until() {
  local secs=$1 what=$2 t0=$SECONDS out; shift 2
  while :; do
    if out=$("$@" 2>&1); then
      echo "$out"; echo "$what: after $((SECONDS - t0)) s"; return 0
    fi
    ((SECONDS - t0 < secs)) || break
    sleep 0.5
  done
  echo "$out"; echo "$what: not within $secs s"; return 1
}

# dg_status RC [CODE...]: `status --json` exits RC, every control is compliant and
# audit_problems holds every CODE and nothing else (a ?CODE may be there or not); prints the
# audit rows.
dg_status() {
  local want=$1 rc=0 json; shift
  json=$(sandbox_exec env RUST_LOG=warn notebook-agent status --json 2>/dev/null) || rc=$?
  python3 -c "$DG_STATUS_PY" "$rc" "$want" "$@" <<<"$json"
}
DG_STATUS_PY='
import json, sys
rc, want, codes = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
must = {c for c in codes if not c.startswith("?")}
may = must | {c[1:] for c in codes if c.startswith("?")}
try:
    s = json.load(sys.stdin)
except ValueError as e:
    print("status --json (exit %d) is not JSON: %s" % (rc, e)); sys.exit(1)
for r in s["audit"]:
    print("%-13s %-4s %s" % (r["title"], r["status"], r["evidence"]))
got = set(s.get("audit_problems", []))
print("exit %d (want %d), compliant %s, audit_problems %s (want %s)" % (rc, want, s["compliant"], sorted(got), codes))
sys.exit(0 if rc == want and must <= got <= may and s["compliant"] else 1)'

# dg_evidence ROW REGEX: the evidence of audit row ROW (audit_daemon, shipping) matches REGEX.
dg_evidence() {
  local json
  json=$(sandbox_exec env RUST_LOG=warn notebook-agent status --json 2>/dev/null) || true  # exit 3/4 expected
  python3 -c 'import json, re, sys
s = json.load(sys.stdin)
ev = [r["evidence"] for r in s["audit"] if r["control"] == sys.argv[1]][0]
print(sys.argv[1] + ": " + ev)
sys.exit(0 if re.search(sys.argv[2], ev) else 1)' "$1" "$2" <<<"$json"
}

dg_daemon_field() {  # $1 = a number field of daemon.json
  sandbox_exec python3 -c 'import json, sys; print(json.load(open("/var/lib/notebook-agent/daemon.json")).get(sys.argv[1]) or 0)' "$1"
}

# The whole audit stream (filter-log-events: the CLI pages through it), as one JSON document.
dg_stream_json() {
  infra_aws --region "$LC_REGION" logs filter-log-events --log-group-name "$LC_GROUP" \
    --log-stream-names "$LC_STREAM" --output json
}

# --- the steps -----------------------------------------------------------------------------------

dg_file_shipped() {  # $1 = file name under SageMaker: created as ec2-user, then in moto ≤ 10 s
  lc_as_terminal "printf 'x\n' >$LC_SM/$1" || return 1
  lc_events_within 10 "Create +$LC_SM/${1//./\\.} \[live\]" | tail -n 3
}

dg_denied() {
  local t0=$SECONDS
  infra_cloudwatch_mode deny
  lc_as_terminal "printf 'while denied\n' >$LC_SM/denied-1.txt" || return 1
  dg_until 60 "status exit 4, shipping waiting for the operator" dg_status 4 waiting_for_operator || return 1
  dg_evidence shipping 'CloudWatch refuses the agent since [0-9]{2}:[0-9]{2} UTC \(AccessDeniedException\): .*logs:PutLogEvents.*nothing is lost' || return 1
  grep -q 'PutLogEvents -> 400 AccessDeniedException' "$INFRA_STATE/cwproxy.log" || { echo "the proxy never denied"; return 1; }
  echo "denied for $((SECONDS - t0)) s"
}

# A heartbeat taken while shipping is refused waits in the spool: the drift monitor sends one as
# soon as the audit's problems change (at most 1 s after status shows them), so one naming
# waiting_for_operator is in a spool segment before the fill begins.
dg_heartbeat_spooled() {
  dg_until 15 "a heartbeat naming waiting_for_operator in the spool" dg_spool_has waiting_for_operator
}
dg_spool_has() {  # $1 = a string some spooled record holds
  local n
  n=$(sandbox_exec sh -c 'cat "$1"/seg-*.log 2>/dev/null | grep -ac "$2"' _ "$LC_SM/.notebook-agent" "$1") || true
  echo "${n:-0} spooled records hold $1"; ((${n:-0} > 0))
}

# Create files as ec2-user, DG_FILL_BATCH at a time, until the daemon counts drops.
dg_fill() {
  local i
  for ((i = 0; i < DG_FILL_MAX_BATCHES; i++)); do
    sandbox_exec_as ec2-user python3 -c '
import os, sys
d, first, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
os.makedirs(d, exist_ok=True)
for k in range(first, first + n):
    with open(os.path.join(d, "f%05d.txt" % k), "w") as f:
        f.write("row %d\n" % k)
' "$DG_FILL_DIR" "$DG_FILES" "$DG_FILL_BATCH" || return 1
    DG_FILES=$((DG_FILES + DG_FILL_BATCH))
    sleep 1   # the watcher and the spool catch up
    DG_DROPPED=$(dg_daemon_field events_dropped) || return 1
    echo "$DG_FILES files created: $(sandbox_exec du -sh "$LC_SM/.notebook-agent" | cut -f1) spooled, $DG_DROPPED dropped"
    ((DG_DROPPED == 0)) || return 0
  done
  echo "the spool never filled"; return 1
}

dg_dropping() {
  dg_until 30 "status exit 4, dropping and waiting for the operator" \
    dg_status 4 spool_dropping waiting_for_operator '?loss_not_recorded' || return 1
  dg_evidence audit_daemon 'DROPPING: [0-9,]+ audit events dropped since [0-9]{2}:[0-9]{2} UTC \(spool full\): make shipping work'
}

dg_recovered() {
  infra_cloudwatch_mode pass
  dg_until "$DG_RECOVER_SECS" "status exit 0 after pass-through" dg_status 0 || return 1
  dg_evidence audit_daemon '[0-9,]+ dropped [0-9]{2}:[0-9]{2}–[0-9]{2}:[0-9]{2} UTC, recorded'
}

# The loss on record in moto: the "Spool full" record, and every file of the fill directory by
# path (live, or by the rescan when room returned).
dg_loss_in_moto() {
  local json
  sandbox_exec find "$DG_FILL_DIR" -type f >"$INFRA_STATE/degraded-files.txt" || return 1
  json=$(dg_stream_json) || { echo "$json"; return 1; }
  echo "$json" >"$INFRA_STATE/degraded-stream.json"
  python3 -c '
import json, re, sys
d = sys.argv[1]
files = sorted(open(sys.argv[2]).read().split())
recs = [json.loads(e["message"]) for e in json.load(sys.stdin)["events"]]
drops = [r for r in recs if re.match(r"Spool full: \d+ audit events dropped", r.get("message", ""))]
for r in drops:
    print("seq %s: %s" % (r["metadata"]["sequence"], r["message"]))
seen, sources = set(), {}
for r in recs:
    p = r.get("file", {}).get("path", "") if r.get("class_uid") == 1001 else ""
    if p.startswith(d + "/"):
        seen.add(p)
        src = r.get("unmapped", {}).get("source", "?")
        sources[src] = sources.get(src, 0) + 1
missing = [p for p in files if p not in seen]
print("%d records in the stream; %d of the %d files in %s recorded by path (events by source: %s)"
      % (len(recs), len(files) - len(missing), len(files), d, sources))
if missing:
    print("not recorded:", ", ".join(missing[:5]), "..." if len(missing) > 5 else "")
sys.exit(0 if drops and files and not missing else 1)' "$DG_FILL_DIR" "$INFRA_STATE/degraded-files.txt" <"$INFRA_STATE/degraded-stream.json"
}

# Heartbeats in moto: one from while shipping was refused (not healthy, waiting for the operator)
# and one after recovery (healthy, the loss recorded).
dg_heartbeats_in_moto() {
  local json
  json=$(dg_stream_json) || { echo "$json"; return 1; }
  python3 -c '
import json, re, sys
recs = [json.loads(e["message"]) for e in json.load(sys.stdin)["events"]]
hb = [r for r in recs if r.get("class_uid") == 2003 and r.get("message", "").startswith("Heartbeat:")]
refused = recovered = None
for r in hb:
    st = r.get("unmapped", {}).get("status", {})
    probs = st.get("audit_problems", [])
    daemon = [x["evidence"] for x in st.get("audit", []) if x["control"] == "audit_daemon"]
    print("seq %s %s | audit_problems %s" % (r["metadata"]["sequence"], r["message"], probs))
    if not st.get("audit_healthy", True) and "waiting_for_operator" in probs:
        refused = refused or r
    if st.get("audit_healthy") and daemon and re.search(r"dropped .* UTC, recorded", daemon[0]):
        recovered = recovered or r
print("%d heartbeats; refused: %s; recovered with the loss recorded: %s" % (
    len(hb), refused and refused["metadata"]["sequence"], recovered and recovered["metadata"]["sequence"]))
sys.exit(0 if refused and recovered else 1)' <<<"$json"
}

# --- the scenario --------------------------------------------------------------------------------
lc_step "a new notebook instance; CloudWatch through a switchable deny proxy (1 MiB spool, 10 s heartbeats)"
lc_new_instance
[[ -n ${INFRA_PIDS[cwproxy]:-} ]] || infra_cloudwatch_proxy_start
infra_cloudwatch_mode pass
check dg-render-lifecycle-config lc_render
check dg-platform-imds-dropin lc_platform
check dg-on-create-exit-0 lc_lifecycle_script on-create >/dev/null
check dg-on-start-exit-0 lc_lifecycle_script on-start >/dev/null
check dg-status-exit-0 dg_until 20 "status exit 0" dg_status 0
check dg-shipping-through-the-proxy dg_file_shipped before-deny.txt

lc_step "CloudWatch answers AccessDenied to PutLogEvents"
check dg-denied-status-exit-4-waiting-for-operator dg_denied
check dg-denied-heartbeat-spooled dg_heartbeat_spooled

lc_step "as ec2-user: files created until the spool ($LC_SM/.notebook-agent, 1 MiB) is full"
check dg-spool-fills dg_fill
check dg-full-status-exit-4-dropping dg_dropping
lc_say "$(sandbox_exec env RUST_LOG=warn notebook-agent status 2>&1 | sed 's/^/  /')"

lc_step "recovery: the proxy passes PutLogEvents through again"
check dg-recovered-status-exit-0-loss-recorded dg_recovered
lc_say "$(sandbox_exec env RUST_LOG=warn notebook-agent status 2>&1 | sed 's/^/  /')"
check dg-loss-in-moto-spool-full-and-every-path dg_loss_in_moto
check dg-heartbeats-in-moto dg_until 30 "both heartbeats in moto" dg_heartbeats_in_moto
{ dg_heartbeats_in_moto || true; } | tail -n 4 | sed 's/^/     /'
lc_say "degraded scenario: $((SECONDS - DG_T0)) s ($(sandbox_exec find "$DG_FILL_DIR" -type f | wc -l) files created, $(dg_daemon_field events_dropped) events dropped)"

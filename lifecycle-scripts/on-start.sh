#!/bin/bash
# notebook-agent: SageMaker notebook lifecycle configuration, OnStart (runs as root on every start,
# including the first one right after OnCreate). The system volume is new on every start, so this
# installs the pinned agent, hardens the notebook (`notebook-agent apply`), starts the audit daemon
# and proves the result (`notebook-agent status`) every time. Output goes to CloudWatch Logs,
# /aws/sagemaker/NotebookInstances, stream <notebook>/LifecycleConfigOnStart.
# Render it with packaging/render-lifecycle-config (or the CloudFormation stack); it only edits
# the settings block below.
set -euo pipefail

# ---- settings (rendered) ----------------------------------------------------------------------
# The release tarball: s3://bucket/key (aws s3 cp: VPC endpoint, the notebook role) or https://...
ARTIFACT_URL='s3://example-bucket/notebook-agent/notebook-agent-0.1.0-x86_64-linux-musl.tar.gz'
# Its SHA-256 (dist/SHA256SUMS). Nothing from the artifact runs unless it matches.
ARTIFACT_SHA256='0000000000000000000000000000000000000000000000000000000000000000'
# Where to fetch the agent config (s3:// or https://); empty: use CONFIG_JSON below. Prefer a URL
# when the config holds a secret (an index token): lifecycle configs are readable by anyone
# allowed sagemaker:DescribeNotebookInstanceLifecycleConfig.
CONFIG_URL=''
# Proxy for the downloads (http://host:port); empty: direct (VPC endpoints).
PROXY_URL=''
# 1: any failure to install, apply or prove the hardening fails the start, so an unhardened notebook
# never serves users. 0 (explicit opt-out, e.g. for a pilot): log it loudly and let it start.
# A SHA-256 mismatch and broken settings fail the start either way.
FAIL_CLOSED=1
CONFIG_JSON=$(cat <<'NOTEBOOK_AGENT_CONFIG_JSON'
{}
NOTEBOOK_AGENT_CONFIG_JSON
)
# ---- end of settings --------------------------------------------------------------------------

BIN=/usr/local/bin/notebook-agent
CONF=/etc/notebook-agent/config.json
UNIT=/etc/systemd/system/notebook-agent.service
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C
umask 022

log() { printf '%s notebook-agent on-start: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*"; }
step() { log "== $*"; }
# Deterministic problems (tampering, broken settings) fail the start whatever FAIL_CLOSED says.
die() { log "FAILED: $*" >&2; exit 1; }
fail() {
  if [ "$FAIL_CLOSED" = 0 ]; then
    log "WARNING: $* -- FAIL_CLOSED=0: the notebook starts NOT HARDENED" >&2
    exit 0
  fi
  log "FAILED: $* -- failing the start (FAIL_CLOSED=1)" >&2
  exit 1
}
trap 'log "command failed (line $LINENO): $BASH_COMMAND" >&2' ERR

step "settings"
case "$FAIL_CLOSED" in 0 | 1) ;; *) die "FAIL_CLOSED must be 0 or 1, not '$FAIL_CLOSED'" ;; esac
[[ $ARTIFACT_SHA256 =~ ^[0-9a-f]{64}$ ]] || die "ARTIFACT_SHA256 is not 64 lowercase hex digits"
[[ $ARTIFACT_URL =~ ^(s3|https?)://. ]] || die "ARTIFACT_URL must be s3://, https:// or http://"
[[ -z $CONFIG_URL || $CONFIG_URL =~ ^(s3|https?)://. ]] || die "CONFIG_URL must be s3:// or http(s)://"
log "artifact $ARTIFACT_URL sha256 $ARTIFACT_SHA256 fail_closed=$FAIL_CLOSED"

if [ -n "$PROXY_URL" ]; then
  # IMDS (the role's credentials) and loopback never go through the proxy.
  export http_proxy=$PROXY_URL https_proxy=$PROXY_URL HTTP_PROXY=$PROXY_URL HTTPS_PROXY=$PROXY_URL
  export no_proxy=127.0.0.1,localhost,169.254.169.254 NO_PROXY=127.0.0.1,localhost,169.254.169.254
  log "downloads through proxy ${PROXY_URL%%://*}://${PROXY_URL##*@}"
fi

work=$(mktemp -d /tmp/notebook-agent-on-start.XXXXXX)
trap 'rm -rf "$work"' EXIT

aws_cli() {
  local a
  for a in aws /usr/local/bin/aws /home/ec2-user/anaconda3/bin/aws; do
    command -v "$a" >/dev/null 2>&1 && { echo "$a"; return 0; }
  done
  return 1
}

# fetch URL DEST: bounded in time, so the 5-minute lifecycle limit is never approached.
fetch() {
  case "$1" in
    s3://*)
      local aws region
      aws=$(aws_cli) || { log "no aws CLI on PATH for $1" >&2; return 1; }
      # The notebook's region (S3 gateway endpoints are regional); from its ARN.
      region=$(sed -n 's/.*"ResourceArn" *: *"arn:[^:]*:sagemaker:\([^:]*\):.*/\1/p' \
        /opt/ml/metadata/resource-metadata.json 2>/dev/null || true)
      timeout 120 "$aws" ${region:+--region "$region"} --only-show-errors \
        --cli-connect-timeout 10 s3 cp "$1" "$2"
      ;;
    *)
      timeout 120 curl -fsS --retry 3 --retry-connrefused --connect-timeout 10 --max-time 110 \
        -o "$2" "$1"
      ;;
  esac
}

step "fetch $ARTIFACT_URL"
t0=$SECONDS
fetch "$ARTIFACT_URL" "$work/artifact.tar.gz" || fail "could not fetch $ARTIFACT_URL"
log "fetched $(stat -c %s "$work/artifact.tar.gz") bytes in $((SECONDS - t0)) s"

step "verify sha256"
actual=$(sha256sum "$work/artifact.tar.gz" | cut -d' ' -f1)
[ "$actual" = "$ARTIFACT_SHA256" ] ||
  die "sha256 mismatch: expected $ARTIFACT_SHA256, got $actual; nothing was installed"
log "sha256 OK"

step "unpack"
mkdir "$work/x"
tar -xzf "$work/artifact.tar.gz" -C "$work/x" --no-same-owner --strip-components=1 ||
  fail "artifact is not a notebook-agent release tarball"
for f in notebook-agent notebook-agent.service; do
  [ -f "$work/x/$f" ] || fail "artifact has no $f"
done
"$work/x/notebook-agent" --version || fail "the artifact's binary does not run on this host"

step "install $BIN"
install -d -o root -g root -m 0755 /usr/local/bin
install -o root -g root -m 0755 "$work/x/notebook-agent" "$BIN.new"
mv -f "$BIN.new" "$BIN"

step "write $CONF"
install -d -o root -g root -m 0755 /etc/notebook-agent
if [ -n "$CONFIG_URL" ]; then
  fetch "$CONFIG_URL" "$work/config.json" || fail "could not fetch $CONFIG_URL"
  log "config from $CONFIG_URL"
else
  printf '%s\n' "$CONFIG_JSON" >"$work/config.json"
  log "config inline ($(wc -c <"$work/config.json") bytes)"
fi
install -o root -g root -m 0600 "$work/config.json" "$CONF.new"
mv -f "$CONF.new" "$CONF"

step "notebook-agent apply"
rc=0
timeout 150 "$BIN" apply || rc=$?
[ "$rc" = 0 ] || fail "notebook-agent apply exited $rc"

step "install $UNIT"
install -o root -g root -m 0644 "$work/x/notebook-agent.service" "$UNIT"
if [ -d /run/systemd/system ]; then
  # enable, then start --no-block (rather than enable --now --no-block): the same on systemd 219
  # (AL2) and 252, and the start is queued, never waited for.
  systemctl daemon-reload
  systemctl enable notebook-agent.service 2>&1
  systemctl start --no-block notebook-agent.service
  log "notebook-agent.service enabled, start queued"
else
  log "WARNING: systemd is not running (no /run/systemd/system): unit installed, not started" >&2
fi

step "notebook-agent status"
# 4 = every control passes but the daemon is not healthy (yet): it was started a moment ago, so
# give it a few seconds; then it is a warning, not a failed start (Restart=always, and the
# "silent notebooks" query and heartbeat alarm watch it). 3 (not compliant), 1 and 2 fail.
rc=0
if [ -d /run/systemd/system ]; then
  for _ in 1 2 3 4 5 6 7 8 9 10; do
    rc=0
    timeout 60 "$BIN" status >/dev/null 2>&1 || rc=$?
    [ "$rc" = 4 ] || break
    sleep 1
  done
fi
rc=0
timeout 60 "$BIN" status || rc=$?
case "$rc" in
  0) log "compliant" ;;
  4) log "WARNING: hardened, but the audit daemon is not healthy yet (status exit 4)" >&2 ;;
  *) fail "notebook-agent status exited $rc" ;;
esac
step "done in $SECONDS s"

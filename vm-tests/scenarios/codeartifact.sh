# shellcheck shell=bash
# CodeArtifact scenario (issue 16): the agent owns the CodeArtifact token so that `pip install`
# keeps working with no action by anyone. A new notebook instance gets the lifecycle
# configuration (lib/notebook.sh) with `pip.codeartifact` instead of `pip.index_url`, pointed at
# fixtures/fake-codeartifact.py (TEST FIXTURE): its API on the host side of the veth (reached
# directly: the host address is in no_proxy) hands out tokens that live CA_TOKEN_SECS (default
# 90 s) and names its repository, which is the sandbox's pypiserver behind a check that accepts
# only live tokens, reached through squid as codeartifact.mirror.internal:8081.
#
#   1. the API answers AccessDenied: on-start fails (apply exit 1) with the IAM line, and the
#      host is unchanged (no pip.conf, no sudo change, no state);
#   2. the API answers: on-start exit 0, status PASS with the token's expiry, `pip install` as
#      ec2-user works at once;
#   3. nobody acts: the first token expires (the repository refuses it), the daemon has
#      refreshed at half-life, `pip install` still works, TokenRefreshed is read back from moto;
#   4. the API is unreachable at the next refresh: status first shows the expiry approaching
#      (PASS), the refresh fails and is retried (TokenRefreshFailed), status FAIL (exit 3) naming
#      the VPC endpoints; pip still works with the live token;
#   5. the API answers again: the retry succeeds, status PASS, pip works;
#   6. no token ever in the agent's output, journal, state, spool or CloudWatch (the token sweep
#      lives here, not in hostile.sh: only this scenario has CodeArtifact tokens).
#
# The platform's IMDS stand-in is also in on-start's environment here (apply itself calls AWS
# with the role's credentials). Sourced by vm-tests/run after boot; needs lib/infra.sh's
# services and the release artifact.

# shellcheck source=../lib/notebook.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib/notebook.sh"
# shellcheck disable=SC2034  # read by lib/notebook.sh
LC_SCENARIO=codeartifact
CA_T0=$SECONDS
CA_TOKEN_SECS=${CA_TOKEN_SECS:-90}
CA_DOMAIN=corp CA_OWNER=111122223333 CA_REPO=pypi-mirror
CA_TOKENS=$INFRA_STATE/codeartifact-tokens.jsonl
CA_LOG=$INFRA_STATE/codeartifact.log
CA_PY=$LC_HOME/anaconda3/envs/python3
# The pip row's evidence while the token is fine.
CA_EXPIRES='CodeArtifact token expires at [0-9T:.-]+Z \(in ([0-9]+m)?[0-9]+s\)$'

if ! lc_have_release; then
  lc_say "no release artifact (the agent binary is not built): codeartifact scenario skipped"
  return 0
fi

# --- helpers -------------------------------------------------------------------------------------

# The lifecycle config with pip.codeartifact in place of the index URL (and no conda channels).
ca_render() {
  mkdir -p "$LC_DIR"
  lc_config | python3 -c '
import json, sys
c = json.load(sys.stdin)
h, api, repo_host, domain, owner, repo, region = sys.argv[1:]
c["pip"] = {
    "codeartifact": {"domain": domain, "domain_owner": owner, "repository": repo, "region": region,
                     "endpoint_url": "http://%s" % api, "duration_secs": 900},
    "trusted_hosts": [repo_host],
    "timeout_secs": 15,
}
print(json.dumps(c, indent=2))' "$INFRA_HOST_ADDR" "$INFRA_HOST_ADDR:$INFRA_CA_API_PORT" \
    "$INFRA_CA_REPO_HOST:$INFRA_CA_REPO_PORT" "$CA_DOMAIN" "$CA_OWNER" "$CA_REPO" "$LC_REGION" \
    >"$LC_DIR/config.json" || return 1
  sed 's/^/   /' "$LC_DIR/config.json"
  "$HERE/../packaging/render-lifecycle-config" \
    --artifact-url "http://$INFRA_HOST_ADDR:$INFRA_DIST_PORT/$LC_TARBALL" --sha256 "$LC_SHA256" \
    --config "$LC_DIR/config.json" --name sandbox --out "$LC_DIR" | sed -n '1,2p'
}

# ca_on_start LOGNAME: on-start.sh as lc_lifecycle_script runs it, with the platform's IMDS
# (the fake) in its environment: apply calls CodeArtifact with the role's credentials.
ca_on_start() {
  local t0=$SECONDS rc=0
  sandbox_exec env -i PATH="$LC_SAGEMAKER_PATH" LANG=C.UTF-8 AWS_EC2_METADATA_SERVICE_ENDPOINT="$LC_IMDS" \
    sh -c "cd / && exec timeout 300 /var/lib/sagemaker-lifecycle/on-start.sh" >"$INFRA_STATE/$1.log" 2>&1 || rc=$?
  echo "on-start.sh: exit $rc after $((SECONDS - t0)) s"
  return "$rc"
}
ca_agent() {  # notebook-agent ARGS as root, with the platform's IMDS
  sandbox_exec env RUST_LOG=warn AWS_EC2_METADATA_SERVICE_ENDPOINT="$LC_IMDS" notebook-agent "$@"
}

# What apply may change, hashed: /etc (but the agent's own config), /usr/local (but the
# binary), ec2-user's home (but SageMaker, the conda trees and ~/.local, where jupyter-server
# writes its runtime files as it starts after boot) and the envs' pip.conf, the groups and sudo
# rights of ec2-user, the agent's state.
ca_host_state() {
  sandbox_exec sh -c 'cd / && skip="-path etc/notebook-agent -o -path usr/local/bin/notebook-agent -o
      -path home/ec2-user/SageMaker -o -path home/ec2-user/anaconda3 -o -path home/ec2-user/.local
      -o -path etc/ld.so.cache"
    find etc usr/local home/ec2-user -xdev \( $skip \) -prune -o -printf "%p %y %m %u:%g\n" | sort
    find etc usr/local home/ec2-user -xdev \( $skip \) -prune -o -type f -print0 | sort -z | xargs -0 sha256sum
    ls -l /home/ec2-user/anaconda3/pip.conf /home/ec2-user/anaconda3/envs/*/pip.conf 2>&1
    id ec2-user; sudo -l -U ec2-user 2>&1; ls -A /var/lib/notebook-agent 2>&1; true'
}

ca_denied_apply() {
  local before after rc=0
  before=$(ca_host_state) || return 1
  infra_codeartifact_mode denied
  ca_on_start on-start-denied || rc=$?
  infra_codeartifact_mode normal
  after=$(ca_host_state) || return 1
  grep -E 'notebook-agent apply exited|codeartifact|FAILED' "$INFRA_STATE/on-start-denied.log"
  ((rc == 1)) || { echo "on-start: exit $rc, want 1"; return 1; }
  grep -q 'notebook-agent apply exited 1' "$INFRA_STATE/on-start-denied.log" || { echo "apply did not exit 1"; return 1; }
  grep -qE "pip.codeartifact: GetAuthorizationToken on domain $CA_DOMAIN .*was denied \(AccessDeniedException\): the notebook's execution role needs codeartifact:GetAuthorizationToken, codeartifact:GetRepositoryEndpoint, codeartifact:ReadFromRepository and sts:GetServiceBearerToken" \
    "$INFRA_STATE/on-start-denied.log" || { echo "no IAM line in on-start's output"; return 1; }
  if [[ $before != "$after" ]]; then
    echo "the host changed:"; diff <(echo "$before") <(echo "$after") | head -n 20; return 1
  fi
  echo "host unchanged ($(wc -l <<<"$before") lines of state compared)"
}

# ca_token N: the Nth token the fake handed out (0-based; -1 the last); ca_token_field N FIELD.
ca_token_field() {
  python3 -c 'import json, sys
t = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print(t[int(sys.argv[2])][sys.argv[3]])' "$CA_TOKENS" "$1" "$2"
}
ca_tokens_issued() { grep -c . "$CA_TOKENS"; }

# ca_pip SHELL: pip install of a mirror package (and its dependency) as ec2-user; the fake
# repository must have served it with a live token.
ca_pip() {
  local before after
  before=$(wc -l <"$CA_LOG")
  "$1" "$CA_PY/bin/pip install --no-input --no-cache-dir --force-reinstall --disable-pip-version-check nb-demo-tools" || return 1
  "$1" "$CA_PY/bin/python -c 'import nb_demo_tools as m; print(m.__file__)'" || return 1
  after=$(tail -n +$((before + 1)) "$CA_LOG")
  echo "fake repository:"; echo "$after"
  grep -qE "GET /pypi/$CA_REPO/simple/nb-demo-tools/ \(token #[0-9]+ valid\) -> 200" <<<"$after" &&
    grep -qE "GET /pypi/$CA_REPO/packages/nb_demo_greeting-.*\.whl.* \(token #[0-9]+ valid\) -> 200" <<<"$after"
}

# ca_status RC REGEX: status exits RC and the pip row's evidence matches REGEX.
ca_status() {
  local rc=0 json
  json=$(sandbox_exec env RUST_LOG=warn notebook-agent status --json 2>/dev/null) || rc=$?
  python3 -c 'import json, re, sys
rc, want, regex = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
s = json.load(sys.stdin)
row = [r for r in s["controls"] if r["control"] == "pip"][0]
print("pip mirror %s %s" % (row["status"], row["evidence"]))
print("exit %d (want %d)" % (rc, want))
sys.exit(0 if rc == want and re.search(regex, row["evidence"]) else 1)' "$rc" "$1" "$2" <<<"$json"
}

# ca_until SECS WHAT CMD...: CMD until it succeeds (every 0.5 s), at most SECS seconds.
ca_until() {
  local secs=$1 what=$2 t0=$SECONDS out; shift 2
  while :; do
    if out=$("$@" 2>&1); then echo "$out"; echo "$what: after $((SECONDS - t0)) s"; return 0; fi
    ((SECONDS - t0 < secs)) || break
    sleep 0.5
  done
  echo "$out"; echo "$what: not within $secs s"; return 1
}

# Until the first token has expired (no action: the daemon refreshes on its own), then: the
# repository refuses it, pip.conf no longer holds it.
ca_first_token_expired() {
  local exp tok now code
  exp=$(ca_token_field 0 expires) || return 1
  now=$(date +%s.%N)
  echo "token #1 expires in $(awk -v a="$exp" -v b="$now" 'BEGIN { printf "%.0f", a - b }') s; waiting"
  ca_until $((CA_TOKEN_SECS + 15)) "token #1 expired" \
    awk -v e="$exp" 'BEGIN { "date +%s.%N" | getline n; exit !(n > e + 1) }' | tail -n 1 || return 1
  tok=$(ca_token_field 0 token) || return 1
  code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 -u "aws:$tok" \
    "http://$INFRA_MIRROR_ADDR:$INFRA_CA_REPO_PORT/pypi/$CA_REPO/simple/nb-demo-tools/")
  echo "the repository answers token #1 with HTTP $code"
  [[ $code == 401 ]] || return 1
  if sandbox_exec grep -qF -- "$tok" /etc/pip.conf; then echo "/etc/pip.conf still holds token #1"; return 1; fi
  echo "$(ca_tokens_issued) tokens issued so far; /etc/pip.conf holds a newer one"
}

# Until just before the refresher's next attempt (half-way through the newest token's life).
ca_until_refresh_due() {
  local exp due
  exp=$(ca_token_field -1 expires) || return 1
  due=$(awk -v e="$exp" -v l="$CA_TOKEN_SECS" 'BEGIN { printf "%.0f", e - l / 2 }')
  echo "newest token #$(ca_tokens_issued) is refreshed at $(date -u -d "@$due" +%T) UTC"
  ca_until $((CA_TOKEN_SECS / 2 + 10)) "4 s before the refresh" \
    awk -v d="$due" 'BEGIN { "date +%s" | getline n; exit !(n >= d - 4) }' | tail -n 1
}

ca_refresh_failed_twice() {
  sandbox_exec python3 -c 'import json, sys
s = json.load(open("/var/lib/notebook-agent/codeartifact.json"))
r = s.get("last_refresh") or {}
print("last refresh:", r)
sys.exit(0 if r.get("ok") is False else 1)' || return 1
  sandbox_exec journalctl --no-pager -u notebook-agent.service -o cat | grep -c 'Cannot refresh the CodeArtifact token' |
    { read -r n; echo "$n failed attempts in the journal"; ((n >= 2)); }
}

# The tokens never in what the agent reports: each token's middle part (any encoding of the
# token keeps it whole: it is base64url) searched in the journal (every field), status, status
# --json, apply and apply --dry-run output, on-start's output, the stream in moto, the spool and
# /var/lib/notebook-agent. It is in the pip.conf files by necessity (docs/THREAT-MODEL.md G4).
ca_token_sweep() {
  local where=() out parts n
  out=$INFRA_STATE/codeartifact-sweep.txt
  {
    sandbox_exec journalctl --no-pager -o json -u notebook-agent.service
    sandbox_exec journalctl --no-pager -o json -t notebook-agent || true
  } >"$out.journal"
  sandbox_exec env RUST_LOG=warn notebook-agent status >"$out.status" 2>&1 || true
  sandbox_exec env RUST_LOG=warn notebook-agent status --json >"$out.status-json" 2>&1 || true
  ca_agent apply --dry-run >"$out.dry-run" 2>&1 || true
  ca_agent apply >"$out.apply" 2>&1 || true
  lc_events_json >"$out.moto" 2>&1 || return 2
  grep -q 'REDACTED' "$out.dry-run" || { echo "the dry run shows no redaction:"; head -n 20 "$out.dry-run"; return 1; }
  mapfile -t parts < <(python3 -c 'import json, sys
for l in open(sys.argv[1]):
    if l.strip():
        print(json.loads(l)["token"].split(".")[1])' "$CA_TOKENS")
  n=${#parts[@]}
  ((n >= 3)) || { echo "only $n tokens issued"; return 1; }
  # The test itself must be able to find a token: pip.conf holds one, by necessity.
  sandbox_exec grep -qF -f <(printf '%s\n' "${parts[@]}") /etc/pip.conf ||
    { echo "/etc/pip.conf holds none of the tokens: the sweep could not see one"; return 1; }
  local f p
  for f in "$out.journal" "$out.status" "$out.status-json" "$out.dry-run" "$out.apply" "$out.moto" \
    "$INFRA_STATE/on-start.log" "$INFRA_STATE/on-start-denied.log"; do
    for p in "${parts[@]}"; do
      if grep -qF -- "$p" "$f"; then where+=("${f##*/}"); break; fi
    done
  done
  for p in "${parts[@]}"; do
    if sandbox_exec grep -rlaF -- "$p" "$LC_SM/.notebook-agent" /var/lib/notebook-agent; then
      where+=("spool or /var/lib/notebook-agent"); break
    fi
  done
  echo "$n tokens looked for in: journal ($(wc -l <"$out.journal") records), status, status --json, apply --dry-run, apply, on-start output (both runs), moto, the spool, /var/lib/notebook-agent"
  ((${#where[@]} == 0)) || { echo "a token is in: ${where[*]}"; return 1; }
}

# --- the scenario --------------------------------------------------------------------------------
lc_step "a new notebook instance; pip.codeartifact with a fake CodeArtifact (tokens live $CA_TOKEN_SECS s)"
lc_new_instance
[[ -n ${INFRA_PIDS[codeartifact]:-} ]] || infra_codeartifact_start "$CA_TOKEN_SECS"
infra_codeartifact_mode normal
check ca-render-lifecycle-config ca_render
check ca-platform-imds-dropin lc_platform
check ca-on-create-exit-0 lc_lifecycle_script on-create >/dev/null

lc_step "the role lacks the CodeArtifact permissions: the API answers AccessDenied"
check ca-denied-apply-exit-1-iam-line-host-unchanged ca_denied_apply

lc_step "the API answers: on-start, status, pip install as ec2-user"
check ca-on-start-exit-0 ca_on_start on-start
check ca-status-token-expiry ca_until 20 "status exit 0 with the token's expiry" \
  ca_status 0 "index-url http://REDACTED:REDACTED@codeartifact\\.mirror\\.internal:8081/pypi/$CA_REPO/simple/ in [0-9]+ pip\\.conf files; $CA_EXPIRES"
check ca-pip-install-right-after-apply ca_pip lc_as_login

lc_step "no action by anyone: the first token expires"
check ca-first-token-expired ca_first_token_expired
check ca-pip-install-after-first-token-expired ca_pip lc_as_terminal
check ca-token-refreshed-in-moto lc_events_within 10 \
  "Token Refresh +CodeArtifact token for $CA_DOMAIN/$CA_REPO refreshed"
check ca-status-after-refresh ca_status 0 "$CA_EXPIRES"

lc_step "the CodeArtifact API is unreachable at the next refresh"
check ca-until-refresh-due ca_until_refresh_due
infra_codeartifact_mode unreachable
check ca-outage-status-expiry-approaching ca_status 0 "$CA_EXPIRES"
check ca-outage-refresh-retried ca_until 40 "two failed refreshes" ca_refresh_failed_twice
check ca-outage-status-fail-exit-3 ca_status 3 \
  'CodeArtifact token expires at [0-9T:.-]+Z and the last refresh failed: .*unreachable.*codeartifact\.api'
check ca-outage-pip-works-with-the-live-token ca_pip lc_as_terminal
check ca-token-refresh-failed-in-moto lc_events_within 15 \
  "Token Refresh +CodeArtifact token for $CA_DOMAIN/$CA_REPO not refreshed \(attempt 2"

lc_step "the API answers again"
infra_codeartifact_mode normal
check ca-recovered-status-exit-0 ca_until 45 "status exit 0 after recovery" \
  ca_status 0 "$CA_EXPIRES"
check ca-recovered-pip-install ca_pip lc_as_login
{ lc_events --last 8 || true; } | sed 's/^/     /'

lc_step "the token in everything the agent reports"
check ca-token-never-reported ca_token_sweep
lc_say "codeartifact scenario: $((SECONDS - CA_T0)) s, $(ca_tokens_issued) tokens issued"

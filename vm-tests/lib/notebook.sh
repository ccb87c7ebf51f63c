# shellcheck shell=bash
# A notebook instance as SageMaker runs it, for the scenarios that need one (lifecycle, hostile):
# the lifecycle configuration rendered from the release artifact ($INFRA_DIST) with a config that
# points pip at the pypiserver mirror through squid, the audit at moto and discovery at the fake
# IMDS; the platform's IMDS stand-in; on-create/on-start run as SageMaker runs them; ec2-user's
# two kinds of shell; the audit stream read back from moto.
#
# Sourced by a scenario (after vm-tests/run booted the sandbox and started lib/infra.sh's
# services). Settings a scenario may change before lc_render: LC_PROXY (proxy.http and
# proxy.https), LC_AUDIT_EXTRA (more members of the config's "audit" object, JSON, each followed
# by a comma), LC_SCENARIO (the name lc_step prints).

LC_HOME=/home/ec2-user
# shellcheck disable=SC2034  # for the scenarios
LC_SM=$LC_HOME/SageMaker
# shellcheck disable=SC2034
LC_ENVS=("$LC_HOME/anaconda3" "$LC_HOME/anaconda3/envs/python3" "$LC_HOME/anaconda3/envs/JupyterSystemEnv")
LC_REGION=eu-west-1                       # audit.region (the notebook's ARN says us-east-1)
LC_GROUP=/aws/sagemaker/NotebookInstances
LC_STREAM=demo-notebook/audit
LC_SAGEMAKER_PATH=/sbin:/bin:/usr/sbin:/usr/bin
LC_PROXY=http://$INFRA_HOST_ADDR:$INFRA_SQUID_PORT
LC_AUDIT_EXTRA=''
LC_SCENARIO=lifecycle
LC_MIRROR=http://$INFRA_MIRROR_HOST:$INFRA_MIRROR_PORT/simple/
LC_IMDS=http://$INFRA_HOST_ADDR:$INFRA_IMDS_PORT
LC_MOTO=http://$INFRA_HOST_ADDR:$INFRA_MOTO_PORT
LC_DIR=$INFRA_STATE/lifecycle-config
LC_EVENTS_PY=$HERE/lib/audit-events.py
LC_OUT=''
LC_TARBALL='' LC_SHA256=''

lc_step() { printf '\n── %s: %s\n' "$LC_SCENARIO" "$*"; }
lc_say() { printf '   %s\n' "$*"; }

# lc_have_release: is the release artifact there (vm-tests/run built it from the agent binary)?
# Sets LC_TARBALL and LC_SHA256.
lc_have_release() {
  [[ -n ${INFRA_DIST:-} && -f $INFRA_DIST/SHA256SUMS ]] || return 1
  LC_TARBALL=$(cd "$INFRA_DIST" && ls notebook-agent-*-x86_64-linux-musl.tar.gz)
  LC_SHA256=$(awk -v f="$LC_TARBALL" '$2 == f { print $1 }' "$INFRA_DIST/SHA256SUMS")
}

# lc_new_instance: a new notebook instance, unless this is the first scenario of the boot: power
# off what ran before, fresh system volume, empty SageMaker volume, a fresh (empty) moto.
lc_new_instance() {
  local t0=$SECONDS
  ((PASSES + FAILS > 0)) || return 0
  sandbox_cleanup
  sandbox_volume_fresh
  infra_moto_stop; infra_moto_start
  sandbox_boot
  lc_say "rebooted as $SANDBOX_MACHINE (run dir $SANDBOX_RUN_DIR) in $((SECONDS - t0)) s"
}

# --- the lifecycle configuration ---------------------------------------------------------------
lc_config() {
  cat <<EOF
{
  "pip": {
    "index_url": "$LC_MIRROR",
    "trusted_hosts": ["$INFRA_MIRROR_HOST:$INFRA_MIRROR_PORT"],
    "timeout_secs": 15,
    "conda_channels": ["http://$INFRA_MIRROR_HOST:$INFRA_MIRROR_PORT/conda/main"]
  },
  "proxy": { "http": "$LC_PROXY", "https": "$LC_PROXY", "no_proxy": ["$INFRA_HOST_ADDR"] },
  "environment": {
    "kms_key_id": "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab",
    "data_bucket": "sandbox-ml-data",
    "model_bucket": "sandbox-ml-models",
    "extra": { "COST_CENTER": "ml-research" },
    "discover": true,
    "imds_endpoint": "$LC_IMDS"
  },
  "audit": { ${LC_AUDIT_EXTRA}"region": "$LC_REGION", "endpoint_url": "$LC_MOTO", "drain_secs": 3 }
}
EOF
}

lc_render() {
  mkdir -p "$LC_DIR"
  lc_config >"$LC_DIR/config.json"
  "$HERE/../packaging/render-lifecycle-config" \
    --artifact-url "http://$INFRA_HOST_ADDR:$INFRA_DIST_PORT/$LC_TARBALL" --sha256 "$LC_SHA256" \
    --config "$LC_DIR/config.json" --name sandbox --out "$LC_DIR" | sed -n '1,2p'
}

# The platform's part, not the lifecycle configuration's: on an instance the SDK finds the role's
# credentials at 169.254.169.254; here a drop-in points the SDK's default chain at the fake IMDS
# (AWS_EC2_METADATA_SERVICE_ENDPOINT). Written before on-start on every boot (the system volume
# is new each time), as the platform's IMDS is always there.
lc_platform() {
  sandbox_exec sh -c 'mkdir -p /etc/systemd/system/notebook-agent.service.d &&
    cat >/etc/systemd/system/notebook-agent.service.d/10-sandbox-imds.conf &&
    mkdir -p /var/lib/sagemaker-lifecycle' <<EOF
# vm-tests platform stand-in: the instance metadata service is the fake IMDS on the host side.
[Service]
Environment=AWS_EC2_METADATA_SERVICE_ENDPOINT=$LC_IMDS
EOF
  local s
  for s in on-create on-start; do
    sandbox_exec sh -c "cat >/var/lib/sagemaker-lifecycle/$s.sh && chmod 0700 /var/lib/sagemaker-lifecycle/$s.sh" \
      <"$LC_DIR/$s.sh" || return 1
  done
}

# lc_lifecycle_script NAME: as SageMaker runs it: root, cwd /, its PATH, killed after 5 minutes.
lc_lifecycle_script() {
  local t0=$SECONDS rc=0
  sandbox_exec env -i PATH="$LC_SAGEMAKER_PATH" LANG=C.UTF-8 \
    sh -c "cd / && exec timeout 300 /var/lib/sagemaker-lifecycle/$1.sh" >"$INFRA_STATE/$1.log" 2>&1 || rc=$?
  sed 's/^/     | /' "$INFRA_STATE/$1.log"
  echo "   $1.sh: exit $rc after $((SECONDS - t0)) s"
  return "$rc"
}

# --- ec2-user's shells, the agent ----------------------------------------------------------------
lc_as_login() { sandbox_login_as ec2-user "$*"; }        # like jupyter-server (su -l)
lc_as_terminal() { sandbox_exec_as ec2-user bash -ic "$* 2>&1" 2>/dev/null; }  # a Jupyter terminal

lc_agent_pid() { sandbox_exec systemctl show -p MainPID --value notebook-agent.service; }

lc_status() {
  sandbox_exec env RUST_LOG=warn notebook-agent status
}

# --- audit events in moto ------------------------------------------------------------------------
lc_events_json() {  # this notebook's audit stream in moto, as get-log-events prints it
  infra_aws --region "$LC_REGION" logs get-log-events --log-group-name "$LC_GROUP" \
    --log-stream-name "$LC_STREAM" --start-from-head --output json
}
lc_events() {  # audit-events.py ARGS: this notebook's audit stream in moto, summarised
  local json
  json=$(lc_events_json 2>&1) || { echo "$json"; return 1; }
  python3 "$LC_EVENTS_PY" "$@" <<<"$json"
}
# lc_events_within SECONDS REGEX...: until every REGEX matches an event (polling), or time is up.
lc_events_within() {
  local secs=$1 t0=$SECONDS arg; shift
  local -a args=()
  for arg in "$@"; do args+=(--expect "$arg"); done
  while :; do
    if LC_OUT=$(lc_events "${args[@]}"); then
      echo "$LC_OUT"; echo "all ${#args[@]} expected events in moto after $((SECONDS - t0)) s"; return 0
    fi
    ((SECONDS - t0 < secs)) || break
    sleep 0.25
  done
  echo "$LC_OUT"; echo "after ${secs} s"; return 1
}

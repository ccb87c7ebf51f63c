# shellcheck shell=bash
# Lifecycle scenario: the notebook as SageMaker runs it. A new notebook instance (fresh system
# volume, empty SageMaker volume) gets the real lifecycle configuration: the release artifact
# built by packaging/build.sh, served from the host (like S3 behind a VPC endpoint), on-start.sh
# rendered by packaging/render-lifecycle-config with its SHA-256 and a config that points pip at
# the pypiserver mirror through squid, the audit at moto, and discovery at the fake IMDS. Both
# scripts run as root, cwd /, SageMaker's PATH, under a 5-minute timeout. Then a data scientist's
# day is checked, file work is read back from moto, and the notebook is stopped and started.
#
# Sourced by vm-tests/run after boot; needs lib/infra.sh's services (INFRA_*) and the release
# artifact ($INFRA_DIST). See vm-tests/README.md for the network layout.

# shellcheck source=../lib/notebook.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib/notebook.sh"
# shellcheck disable=SC2034  # read by lib/notebook.sh
LC_SCENARIO=lifecycle LC_T0=0

if ! lc_have_release; then
  lc_say "no release artifact (the agent binary is not built): lifecycle scenario skipped"
  return 0
fi

# What every env's `import sagemaker_environment` must say: the config's values, and the
# network of the customer ENI as the fake IMDS describes it.
LC_EXPECT_ENV="demo-notebook|123456789012|vpc-0a1b2c3d4e5f60718|['subnet-0123456789abcdef0']|['sg-0123456789abcdef0', 'sg-0fedcba9876543210']|arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab|sandbox-ml-data|sandbox-ml-models|ml-research"

# --- probes --------------------------------------------------------------------------------------

lc_sudo_denied() { ! "$1" 'sudo -n true'; }
lc_not_in_root_groups() {
  local out; out=$("$1" id) || return 1; echo "$out"
  ! grep -qE '\((wheel|docker)\)' <<<"$out"
}

# pip install of a mirror package (and its dependency) as ec2-user; squid must have seen it.
lc_pip_install() {  # $1 = lc_as_login|lc_as_terminal, $2 = env, $3 = package
  local before after
  before=$(wc -l <"$INFRA_STATE/squid/access.log")
  "$1" "$2/bin/pip install --no-cache-dir --force-reinstall --disable-pip-version-check $3" || return 1
  "$1" "$2/bin/python -c 'import ${3//-/_} as m; print(m.__file__)'" || return 1
  after=$(tail -n +$((before + 1)) "$INFRA_STATE/squid/access.log")
  echo "squid access.log:"; echo "$after"
  grep -qE "$INFRA_GUEST_ADDR TCP_[A-Z_]+/200 .* GET http://$INFRA_MIRROR_HOST:$INFRA_MIRROR_PORT/simple/$3/" <<<"$after" &&
    grep -qE "$INFRA_GUEST_ADDR TCP_[A-Z_]+/200 .* GET http://$INFRA_MIRROR_HOST:$INFRA_MIRROR_PORT/packages/${3//-/_}-.*\.whl" <<<"$after"
}

# Without the proxy, the mirror cannot be reached: its name does not resolve in the notebook and
# its port is not on the veth.
lc_pip_without_proxy_fails() {
  local rc=0
  lc_as_login "env -u http_proxy -u https_proxy -u HTTP_PROXY -u HTTPS_PROXY \
    $LC_HOME/anaconda3/envs/python3/bin/pip install --proxy '' --retries 0 --timeout 3 \
    --no-cache-dir --force-reinstall nb-demo-greeting" || rc=$?
  echo "pip without the proxy: exit $rc"
  ((rc != 0)) || return 1
  rc=0
  sandbox_exec curl -sS --max-time 3 "http://$INFRA_HOST_ADDR:$INFRA_MIRROR_PORT/simple/" || rc=$?
  echo "direct to $INFRA_HOST_ADDR:$INFRA_MIRROR_PORT: curl exit $rc"
  ((rc != 0))
}

lc_git_conda() {
  lc_as_terminal git config --get https.proxy | tee /dev/stderr | grep -qxF "$LC_PROXY" || return 1
  lc_as_login git config --get http.proxy | grep -qxF "$LC_PROXY" || return 1
  sandbox_exec sh -c 'head -n 50 /etc/conda/condarc.d/*.yml' | tee /dev/stderr |
    grep -qF "http://$INFRA_MIRROR_HOST:$INFRA_MIRROR_PORT/conda/main" || return 1
  sandbox_exec grep -qF "$LC_PROXY" /etc/conda/condarc.d/notebook-agent-proxy.yml
}

# The jupyter-server apply restarted (--no-block) runs with the proxy; kernels inherit it.
lc_jupyter_proxy() {
  local pid i
  for ((i = 0; i < 120; i++)); do
    pid=$(sandbox_jupyter_pids 2>/dev/null | head -n1) || pid=''
    if [[ -n $pid ]] && sandbox_exec grep -qz "^https_proxy=$LC_PROXY\$" "/proc/$pid/environ" 2>/dev/null; then
      echo "jupyter-server pid $pid:"; sandbox_exec cat "/proc/$pid/environ" | tr '\0' '\n' | grep -i '_proxy='
      return 0
    fi
    sleep 0.25
  done
  echo "no jupyter-server with https_proxy=$LC_PROXY (pid ${pid:-none})"; return 1
}

lc_env_module() {  # $1 = python
  local got
  got=$(sandbox_exec_as ec2-user "$1" -c 'import sagemaker_environment as e; print("|".join(str(x) for x in (
    e.SAGEMAKER_NOTEBOOK_NAME, e.SAGEMAKER_ACCOUNT_ID, e.SAGEMAKER_VPC, e.SAGEMAKER_SUBNETS,
    e.SAGEMAKER_SECURITY_GROUPS, e.SAGEMAKER_KMS_KEY_ID, e.SAGEMAKER_DATA_BUCKET,
    e.SAGEMAKER_MODEL_BUCKET, e.COST_CENTER)))') || return 1
  echo "got:      $got"; echo "expected: $LC_EXPECT_ENV"
  [[ $got == "$LC_EXPECT_ENV" ]]
}

lc_cannot_stop_agent() {
  local pid rc=0
  pid=$(lc_agent_pid)
  lc_as_terminal systemctl stop notebook-agent || rc=$?
  echo "systemctl stop as ec2-user: exit $rc"
  ((rc != 0)) && sandbox_exec systemctl is-active notebook-agent && [[ $(lc_agent_pid) == "$pid" ]]
}
lc_cannot_kill_agent() {
  local pid rc=0
  pid=$(lc_agent_pid); [[ -n $pid && $pid != 0 ]] || { echo "agent not running"; return 1; }
  lc_as_terminal kill -9 "$pid" || rc=$?
  echo "kill -9 $pid as ec2-user: exit $rc"
  ((rc != 0)) && sleep 0.2 && [[ $(lc_agent_pid) == "$pid" ]]
}
lc_cannot_edit() {  # $1 = file
  local rc=0
  lc_as_terminal "echo '# tampered' >>$1" || rc=$?
  echo "append to $1 as ec2-user: exit $rc"
  ((rc != 0)) || return 1
  rc=0; lc_as_terminal "mv -f $1 $1.moved" || rc=$?
  ((rc != 0)) && ! sandbox_exec grep -q '# tampered' "$1"
}

lc_file_work() {
  lc_as_terminal "cd $LC_SM &&
    printf '{\"cells\": [], \"metadata\": {}, \"nbformat\": 4, \"nbformat_minor\": 5}\n' >analysis.ipynb &&
    sleep 0.3 && printf '\n' >>analysis.ipynb && sleep 0.3 &&
    mv analysis.ipynb analysis-v2.ipynb && sleep 0.3 &&
    printf 'scratch\n' >scratch.txt && sleep 0.3 && rm scratch.txt &&
    rm -rf /tmp/lc-repo && git init -q /tmp/lc-repo && cd /tmp/lc-repo &&
    printf '# model code\n' >README.md && git add README.md &&
    git -c user.name=ds -c user.email=ds@example.com commit -qm init &&
    cd $LC_SM && git clone -q /tmp/lc-repo model-code && ls -la $LC_SM"
}

# --- the scenario --------------------------------------------------------------------------------
LC_T0=$SECONDS
lc_step "a new notebook instance: fresh system volume, empty SageMaker volume, nothing in CloudWatch"
lc_new_instance
lc_say "artifact http://$INFRA_HOST_ADDR:$INFRA_DIST_PORT/$LC_TARBALL (sha256 $LC_SHA256)"
check lc-render-lifecycle-config lc_render
lc_say "config (inline in on-start.sh):"; sed 's/^/     /' "$LC_DIR/config.json"
check lc-platform-imds-dropin lc_platform

lc_step "on-create.sh, then on-start.sh (root, cwd /, PATH=$LC_SAGEMAKER_PATH, timeout 300)"
check lc-on-create-exit-0 lc_lifecycle_script on-create
check lc-on-start-exit-0 lc_lifecycle_script on-start
sed -n '/notebook-agent on-start: == notebook-agent status/,$p' "$INFRA_STATE/on-start.log" | sed 's/^/     /'
check lc-agent-daemon-active sandbox_exec systemctl is-active notebook-agent.service
# The SDK's default chain fetches the role's credentials lazily, at the first shipment.
lc_agent_used_imds() {
  local i re="$INFRA_GUEST_ADDR \"GET /latest/meta-data/iam/security-credentials/[a-z-]+ HTTP/1.1\" 200"
  for ((i = 0; i < 40; i++)); do
    grep -E "$re" "$INFRA_STATE/imds.log" && return 0
    sleep 0.25
  done
  echo "no credentials request in the fake IMDS's log:"; tail -n 5 "$INFRA_STATE/imds.log"; return 1
}
check lc-agent-credentials-from-imds lc_agent_used_imds

lc_step "the data scientist: su -l (like jupyter-server) and a non-login shell (a Jupyter terminal)"
check lc-login-sudo-denied lc_sudo_denied lc_as_login
check lc-terminal-sudo-denied lc_sudo_denied lc_as_terminal
check lc-login-no-wheel-docker lc_not_in_root_groups lc_as_login
check lc-terminal-no-wheel-docker lc_not_in_root_groups lc_as_terminal
check lc-login-pip-install-via-squid lc_pip_install lc_as_login "$LC_HOME/anaconda3/envs/python3" nb-demo-tools
check lc-terminal-pip-install-via-squid lc_pip_install lc_as_terminal "$LC_HOME/anaconda3" nb-demo-greeting
check lc-pip-without-proxy-fails lc_pip_without_proxy_fails
check lc-git-conda-settings lc_git_conda
check lc-jupyter-server-environ-proxy lc_jupyter_proxy
for lc_env in "${LC_ENVS[@]}"; do
  check "lc-sagemaker-environment-${lc_env##*/}" lc_env_module "$lc_env/bin/python"
done
unset lc_env
check lc-sagemaker-environment-system-python3 lc_env_module /usr/bin/python3
check lc-cannot-stop-agent lc_cannot_stop_agent
check lc-cannot-kill-agent lc_cannot_kill_agent
check lc-cannot-edit-pip-conf lc_cannot_edit /etc/pip.conf
check lc-cannot-edit-agent-config lc_cannot_edit /etc/notebook-agent/config.json
check lc-cannot-edit-environment-module lc_cannot_edit /usr/local/lib/notebook-agent/python/sagemaker_environment.py
check lc-status-exit-0 lc_status
lc_say "$(lc_status 2>&1 | sed 's/^/  /')"

lc_step "file work in $LC_SM as ec2-user, read back from moto ($LC_GROUP, $LC_STREAM, $LC_REGION)"
check lc-file-work lc_file_work
check lc-file-events-in-moto-within-5s lc_events_within 5 \
  "Create +$LC_SM/analysis\.ipynb \[live\]" \
  "Update +$LC_SM/analysis\.ipynb \[live\]" \
  "Rename +$LC_SM/analysis\.ipynb -> $LC_SM/analysis-v2\.ipynb \[live\]" \
  "Create +$LC_SM/scratch\.txt" "Delete +$LC_SM/scratch\.txt" \
  "Create +$LC_SM/model-code/README\.md \[live\]" "Create +$LC_SM/model-code/\.git/HEAD"
{ lc_events --last 12 || true; } | sed 's/^/     /'

lc_step "stop/start: CloudWatch unreachable, work spooled, power off, system volume thrown away"
infra_moto_stop
check lc-offline-file-work lc_as_terminal "cd $LC_SM && printf 'x = 1\n' >offline-1.py && printf 'y = 2\n' >offline-2.py && mv offline-2.py offline-2-renamed.py"
sleep 1   # the watcher spools within 100 ms; give the shipper a failed attempt or two
T_STOP=$SECONDS
sandbox_cleanup
lc_say "powered off, system volume deleted in $((SECONDS - T_STOP)) s; the SageMaker volume is kept"
printf 'written from the host while the notebook was stopped\n' >"$SANDBOX_VOLUME_DIR/made-while-stopped.txt"
chown 1000:1000 "$SANDBOX_VOLUME_DIR/made-while-stopped.txt"
rm -f "$SANDBOX_VOLUME_DIR/analysis-v2.ipynb"
lc_say "while stopped: created made-while-stopped.txt, deleted analysis-v2.ipynb (from the host)"
infra_moto_start
sandbox_boot
lc_say "started again as $SANDBOX_MACHINE; moto is back (empty: it keeps nothing across restarts)"
check lc-restart-platform lc_platform
check lc-restart-on-start-exit-0 lc_lifecycle_script on-start
check lc-restart-status-exit-0 lc_status
check lc-spooled-and-catch-up-events-in-moto lc_events_within 15 \
  "Create +$LC_SM/offline-1\.py \[live\]" \
  "Rename +$LC_SM/offline-2\.py -> $LC_SM/offline-2-renamed\.py \[live\]" \
  "Create +$LC_SM/made-while-stopped\.txt \[catch_up\]" \
  "Delete +$LC_SM/analysis-v2\.ipynb \[catch_up\]" \
  "Start +notebook-agent [^ ]+ started: .* [1-9][0-9]* changes while down"
{ lc_events --last 12 || true; } | sed 's/^/     /'
lc_say "lifecycle scenario: $((SECONDS - LC_T0)) s"

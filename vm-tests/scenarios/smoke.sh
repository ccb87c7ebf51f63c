# shellcheck shell=bash
# Smoke scenario: the booted sandbox looks like a fresh SageMaker notebook
# instance before notebook-agent hardens it. Sourced by vm-tests/run after
# sandbox_boot; uses `check NAME FUNCTION|COMMAND [ARGS...]`.

JSE=/home/ec2-user/anaconda3/envs/JupyterSystemEnv

smoke_pid1_is_systemd() {
  [[ $(sandbox_exec cat /proc/1/comm) == systemd ]] &&
    [[ $(sandbox_exec readlink /proc/1/exe) == */systemd ]]
}

smoke_system_running() {
  local s
  s=$(sandbox_exec systemctl is-system-running) || { echo "state: $s"; sandbox_exec systemctl --failed --no-legend; return 1; }
}

smoke_marker() {
  sandbox_exec grep -q 'Amazon Linux notebook' /etc/notebook-sandbox
}

smoke_ec2_user() {
  local out
  out=$(sandbox_exec getent passwd ec2-user) && echo "$out" &&
    [[ $out == ec2-user:x:1000:1000:*:/home/ec2-user:/bin/bash ]]
}

smoke_ec2_user_groups() {
  local groups
  groups=" $(sandbox_exec id -nG ec2-user) " && echo "groups:$groups" &&
    [[ $groups == *" wheel "* && $groups == *" docker "* ]]
}

smoke_sudoers() {
  sandbox_exec visudo -c &&
    [[ $(sandbox_exec stat -c %a /etc/sudoers.d/90-cloud-init-users) == 440 ]] &&
    sandbox_exec grep -qxF 'ec2-user ALL=(ALL) NOPASSWD:ALL' /etc/sudoers.d/90-cloud-init-users &&
    sandbox_exec grep -qE '^%wheel[[:space:]]+ALL=\(ALL\)[[:space:]]+ALL' /etc/sudoers
}

# The not-yet-hardened baseline: passwordless sudo through a login shell.
smoke_sudo_baseline() {
  sandbox_login_as ec2-user 'sudo -n true'
}

smoke_resource_metadata() {
  sandbox_exec python3 -c '
import json
m = json.load(open("/opt/ml/metadata/resource-metadata.json"))
assert m["ResourceName"] == "demo-notebook", m
assert m["ResourceArn"].startswith("arn:aws:sagemaker:us-east-1:123456789012:notebook-instance/"), m
print(m)'
}

smoke_jupyter_active() {
  sandbox_exec systemctl is-active jupyter-server.service &&
    sandbox_exec systemctl is-enabled jupyter-server.service
}

smoke_jupyter_user() {
  local main pids p user
  main=$(sandbox_exec systemctl show -p MainPID --value jupyter-server.service)
  pids=$(sandbox_jupyter_pids) || return 1
  echo "MainPID $main: $(sandbox_exec ps -o user=,args= -p "$main")"
  [[ -n $pids ]] || { echo "no jupyter-server child of MainPID"; return 1; }
  [[ $(sandbox_exec ps -o comm= -p "$main") == su ]] || return 1
  for p in $pids; do
    user=$(sandbox_exec ps -o user= -p "$p") || return 1
    echo "jupyter-server pid $p runs as $user"
    [[ $user == ec2-user ]] || return 1
  done
}

smoke_jupyter_http() {
  local i
  for ((i = 0; i < 60; i++)); do
    sandbox_exec curl -fsS --max-time 2 http://127.0.0.1:8888/api 2>/dev/null && return 0
    sleep 0.5
  done
  return 1
}

# jupyter-server starts through a login shell, so /etc/profile.d reaches it
# after a restart (what the agent's environment control relies on).
smoke_jupyter_login_env() {
  local pid i
  sandbox_exec sh -c 'echo "export NB_SANDBOX_SMOKE=profile-d-applied" >/etc/profile.d/zz-sandbox-smoke.sh' || return 1
  sandbox_exec systemctl restart jupyter-server.service || return 1
  for ((i = 0; i < 40; i++)); do
    pid=$(sandbox_jupyter_pids | head -n1)
    [[ -n $pid ]] && sandbox_exec grep -qz '^NB_SANDBOX_SMOKE=profile-d-applied$' "/proc/$pid/environ" && break
    pid=''; sleep 0.25
  done
  sandbox_exec rm -f /etc/profile.d/zz-sandbox-smoke.sh
  [[ -n $pid ]] && smoke_jupyter_http >/dev/null
}

smoke_env_python() {  # $1 = env prefix
  local prefix
  prefix=$(sandbox_exec_as ec2-user "$1/bin/python" -c 'import sys; print(sys.prefix)') &&
    echo "$prefix" && [[ $prefix == "$1" ]]
}

smoke_conda_layout_owned() {
  [[ $(sandbox_exec stat -c %U /home/ec2-user/anaconda3 "$JSE" "$JSE/bin/jupyter-server" | sort -u) == ec2-user ]]
}

# The SageMaker volume is a filesystem of its own, as the notebook's EBS volume is (what a fanotify
# filesystem mark covers): ext4 on a (loop) block device, not /home's device, its root ec2-user's.
smoke_sagemaker_volume() {
  local out fstype source dev_sm dev_home
  out=$(sandbox_exec findmnt -n -o FSTYPE,SOURCE,SIZE --mountpoint /home/ec2-user/SageMaker) ||
    { echo "/home/ec2-user/SageMaker is not a mount point"; return 1; }
  echo "findmnt: $out"
  read -r fstype source _ <<<"$out"
  dev_sm=$(sandbox_exec stat -c %d /home/ec2-user/SageMaker) && dev_home=$(sandbox_exec stat -c %d /home/ec2-user) || return 1
  echo "st_dev: SageMaker $dev_sm, /home/ec2-user $dev_home; owner $(sandbox_exec stat -c %u:%g /home/ec2-user/SageMaker)"
  [[ $fstype == ext4 && $source == /dev/loop* && $dev_sm != "$dev_home" ]] &&
    [[ $(sandbox_exec stat -c %u:%g /home/ec2-user/SageMaker) == 1000:1000 ]]
}

# What ec2-user writes there is on the volume the host keeps (what lifecycle's stop/start uses).
smoke_sagemaker_bind() {
  local f
  f=.sandbox-smoke-$$-$RANDOM
  sandbox_exec_as ec2-user sh -c "echo ok >/home/ec2-user/SageMaker/$f" &&
    [[ $(cat "$SANDBOX_VOLUME_DIR/$f") == ok ]] && rm -f "$SANDBOX_VOLUME_DIR/$f"
}

# Run lib/kernel-probes.py as root in a transient unit of the sandbox's systemd with the agent
# unit's hardening (every Key=Value of packaging/notebook-agent.service's [Service] section after
# "--- Hardening ---"), i.e. with the container's capability set and seccomp filter and the unit's:
# what notebook-agent watch gets. (sandbox_exec alone runs with the host's full privileges.)
SMOKE_UNIT=$(dirname "${BASH_SOURCE[0]}")/../../packaging/notebook-agent.service
SMOKE_PROBES=$(dirname "${BASH_SOURCE[0]}")/../lib/kernel-probes.py
smoke_probe_as_agent() {
  local -a props=()
  local line
  while IFS= read -r line; do props+=(-p "$line"); done < <(
    sed -n '/^# --- Hardening ---/,/^\[Install\]/p' "$SMOKE_UNIT" | grep -E '^[A-Za-z]+=')
  ((${#props[@]} >= 10)) || { echo "no hardening found in $SMOKE_UNIT"; return 2; }
  sandbox_exec systemd-run --quiet --wait --pipe --collect --service-type=exec "${props[@]}" -- \
    python3 - "$@" <"$SMOKE_PROBES"
}

# fanotify as the agent will use it: a filesystem mark on the SageMaker volume with directory handle +
# name reporting, an event naming our pid, the handle opened again.
smoke_fanotify() {
  smoke_probe_as_agent fanotify /home/ec2-user/SageMaker
}

# The process-events connector inside the sandbox's network namespace. Either answer passes (it is a
# kernel fact, recorded in docs/WATCHER-DESIGN.md); the answer is printed after the check (which
# runs in a subshell: the answer goes through a file).
SMOKE_CONNECTOR_FILE=$SANDBOX_RUN_DIR/proc-connector-answer
smoke_connector() {
  local out rc=0 answer
  out=$(smoke_probe_as_agent connector 2>&1) || rc=$?
  echo "$out"
  answer=$(grep -m1 '^connector: ' <<<"$out") || true
  echo "$answer" >"$SMOKE_CONNECTOR_FILE"
  ((rc == 0)) && [[ $answer == "connector: works"* || $answer == "connector: refused"* ]]
}

# The sandbox's network: lo, plus (when vm-tests/run made one, lib/infra.sh) eth0 on the /30
# shared with the host-side services; no default route, no route anywhere else, no IPv6.
smoke_private_network() {
  local links routes want_links=lo want_routes=''
  if [[ -n ${INFRA_GUEST_ADDR:-} ]]; then
    want_links=$'lo\neth0@if'
    want_routes="${INFRA_HOST_ADDR%.1}.0/30 dev eth0 proto kernel scope link src $INFRA_GUEST_ADDR"
  fi
  links=$(sandbox_exec ip -o link show | awk -F': ' '{print $2}' | sed 's/@if[0-9]*$/@if/')
  routes=$(sandbox_exec ip -4 route show table all | grep -v '^local \|^broadcast ' | sed 's/ *$//' || true)
  echo "links: $links"; echo "routes: $routes"
  [[ $links == "$want_links" ]] && [[ $routes == "$want_routes" ]] &&
    [[ -z $(sandbox_exec ip -6 route show table all 2>/dev/null | grep -v '^local \|^multicast \|^anycast ' || true) ]]
}

check systemd-is-pid1            smoke_pid1_is_systemd
check system-running             smoke_system_running
check sandbox-marker             smoke_marker
check ec2-user-uid-1000          smoke_ec2_user
check ec2-user-in-wheel-docker   smoke_ec2_user_groups
check sudoers-profile            smoke_sudoers
check ec2-user-sudo-nopasswd     smoke_sudo_baseline
check resource-metadata          smoke_resource_metadata
check jupyter-server-active      smoke_jupyter_active
check jupyter-server-as-ec2-user smoke_jupyter_user
check jupyter-server-http        smoke_jupyter_http
check jupyter-login-shell-env    smoke_jupyter_login_env
check python-base                smoke_env_python /home/ec2-user/anaconda3
check python-env-python3         smoke_env_python /home/ec2-user/anaconda3/envs/python3
check python-JupyterSystemEnv    smoke_env_python "$JSE"
check anaconda-owned-by-ec2-user smoke_conda_layout_owned
check sagemaker-volume-ext4      smoke_sagemaker_volume
check sagemaker-dir-bind-mount   smoke_sagemaker_bind
check fanotify-filesystem-mark   smoke_fanotify
check proc-connector-probe       smoke_connector
echo "     proc connector in the sandbox's network namespace: $(cat "$SMOKE_CONNECTOR_FILE" 2>/dev/null || echo '(no answer)')"
check network-only-the-test-link smoke_private_network

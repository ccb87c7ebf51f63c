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

smoke_sagemaker_bind() {
  local f
  f=.sandbox-smoke-$$-$RANDOM
  sandbox_exec findmnt -n /home/ec2-user/SageMaker &&
    sandbox_exec_as ec2-user sh -c "echo ok >/home/ec2-user/SageMaker/$f" &&
    [[ $(cat "$SANDBOX_VOLUME/$f") == ok ]] && rm -f "$SANDBOX_VOLUME/$f"
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
check sagemaker-dir-bind-mount   smoke_sagemaker_bind
check network-only-the-test-link smoke_private_network

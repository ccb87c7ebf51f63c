# shellcheck shell=bash
# Demo scenario: what a SageMaker admin gets from notebook-agent, narrated and
# checked, in the booted notebook sandbox. Sourced by vm-tests/run after
# sandbox_boot (`vm-tests/run demo`, or `vm-tests/demo`, which builds the
# binary first). Needs the static agent binary bind-mounted read-only at
# $NB_AGENT_DST (vm-tests/run does that from $NB_AGENT_BIN or the release build).
#
# Every expected outcome is a `check`: the run exits non-zero if one fails.
# The sandbox's only network is the veth to the test services on the host side
# (lib/infra.sh): the pip mirror behind squid, moto as CloudWatch Logs, the fake
# IMDS. Nothing here contacts any other address.

# shellcheck source=../lib/demo-audit.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib/demo-audit.sh"

DEMO_HOME=/home/ec2-user
DEMO_ENVS=("$DEMO_HOME/anaconda3" "$DEMO_HOME/anaconda3/envs/python3" "$DEMO_HOME/anaconda3/envs/JupyterSystemEnv")
DEMO_MIRROR=http://$INFRA_MIRROR_HOST:$INFRA_MIRROR_PORT/simple/
DEMO_PROXY=http://$INFRA_HOST_ADDR:$INFRA_SQUID_PORT
DEMO_MOTO=http://$INFRA_HOST_ADDR:$INFRA_MOTO_PORT
DEMO_AGENT_SRC=${NB_AGENT_DST:-/opt/artifacts/notebook-agent}
DEMO_STEP=0 DEMO_OUT='' DEMO_RC=0

# --- narration helpers -------------------------------------------------------
demo_step() { DEMO_STEP=$((DEMO_STEP + 1)); printf '\n── %d. %s\n' "$DEMO_STEP" "$*"; }
demo_say() { printf '   %s\n' "$*"; }

# demo_show [-x] [-t N] DISPLAY CMD [ARGS...]: print "$ DISPLAY", run CMD,
# print its output (stdout+stderr) indented, keep it in DEMO_OUT and its exit
# status in DEMO_RC for the checks that follow. -x: always print the exit
# status (else only when non-zero); -t N: print only the last N lines.
demo_show() {
  local always_rc=0 tail_n=0 shown lines
  while [[ $1 == -* ]]; do
    case $1 in
      -x) always_rc=1 ;;
      -t) tail_n=$2; shift ;;
    esac
    shift
  done
  shown=$1; shift
  printf '   $ %s\n' "$shown"
  DEMO_RC=0
  DEMO_OUT=$("$@" 2>&1) || DEMO_RC=$?
  if [[ -z $DEMO_OUT ]]; then
    printf '     (no output)\n'
  elif ((tail_n > 0)); then
    lines=$(wc -l <<<"$DEMO_OUT")
    ((lines <= tail_n)) || printf '     (… %d lines)\n' $((lines - tail_n))
    tail -n "$tail_n" <<<"$DEMO_OUT" | sed 's/^/     /'
  else
    sed 's/^/     /' <<<"$DEMO_OUT"
  fi
  if ((always_rc || DEMO_RC != 0)); then printf '     → exit %d\n' "$DEMO_RC"; fi
}

demo_rc_is() { [[ $DEMO_RC == "$1" ]] || { echo "exit $DEMO_RC, expected $1"; return 1; }; }
demo_out_has() { grep -qE -- "$1" <<<"$DEMO_OUT" || { echo "no line matches /$1/ in:"; echo "$DEMO_OUT"; return 1; }; }
demo_out_lacks() { ! grep -qE -- "$1" <<<"$DEMO_OUT" || { echo "a line matches /$1/:"; echo "$DEMO_OUT"; return 1; }; }
demo_out_is() { [[ $DEMO_OUT == "$1" ]] || { echo "expected '$1', got:"; echo "$DEMO_OUT"; return 1; }; }
demo_out_empty() { [[ -z $DEMO_OUT ]] || { echo "expected no output, got:"; echo "$DEMO_OUT"; return 1; }; }

# The agent as an admin runs it. INFO log lines (they also go to journald)
# repeat the report line by line: keep the terminal to the report itself.
demo_agent() { sandbox_exec env RUST_LOG=warn notebook-agent "$@"; }

# --- probes ----------------------------------------------------------------------
demo_groups() { sandbox_exec id ec2-user; }
demo_sudo() { sandbox_login_as ec2-user 'sudo -n id -un'; }
demo_pip_config() { sandbox_exec_as ec2-user "$1/bin/pip" config list; }
demo_env_uses_mirror() {
  DEMO_OUT=$(demo_pip_config "$1") && demo_out_has "^global.index-url='$DEMO_MIRROR'\$"
}
demo_pip_all_envs() {  # prints each env's `pip config list`, fails if one fails
  local env rc=0
  for env in "${DEMO_ENVS[@]}"; do
    echo "[${env#"$DEMO_HOME"/}]"
    demo_pip_config "$env" || rc=1
  done
  return "$rc"
}

# The proxy variables in the environment of the running jupyter-server (the
# child of the unit's MainPID, the `su -l` wrapper), as kernels inherit it.
demo_jupyter_proxy_env() {
  local pid
  pid=$(sandbox_jupyter_pids 2>/dev/null | head -n1) || pid=''
  [[ -n $pid ]] || { echo "no jupyter-server process"; return 1; }
  echo "jupyter-server pid $pid"
  sandbox_exec cat "/proc/$pid/environ" | tr '\0' '\n' | grep -i '_proxy=' || true
}

# Wait (up to 30 s) until jupyter-server answers on 127.0.0.1:8888. (Applying
# while it is still starting races the agent's restart against the proxy
# files being written: see vm-tests/README.md, "Known agent issues".)
demo_jupyter_api() {
  local i
  for ((i = 0; i < 60; i++)); do
    sandbox_exec curl -fsS --max-time 2 http://127.0.0.1:8888/api 2>/dev/null && { echo; return 0; }
    sleep 0.5
  done
  echo "jupyter-server did not answer on 127.0.0.1:8888 within 30 s"; return 1
}

# Wait (up to 30 s) until a jupyter-server other than pid $1 runs with the
# proxy in its environment: apply restarts the unit with --no-block.
demo_wait_jupyter_restarted() {
  local old=$1 pid i
  for ((i = 0; i < 120; i++)); do
    pid=$(sandbox_jupyter_pids 2>/dev/null | head -n1) || pid=''
    if [[ -n $pid && $pid != "$old" ]] &&
        sandbox_exec grep -qz "^https_proxy=$DEMO_PROXY\$" "/proc/$pid/environ" 2>/dev/null; then
      echo "restarted by apply (--no-block): pid ${old:-none} → $pid"
      demo_jupyter_proxy_env | tail -n +2
      return 0
    fi
    sleep 0.25
  done
  echo "no restarted jupyter-server with https_proxy=$DEMO_PROXY within 30 s (pid now: ${pid:-none})"
  demo_jupyter_proxy_env
  return 1
}

demo_write_config() {
  sandbox_exec sh -c 'install -d -m 0755 /etc/notebook-agent &&
    (umask 077 && cat >/etc/notebook-agent/config.json) &&
    chmod 0600 /etc/notebook-agent/config.json && chown root:root /etc/notebook-agent/config.json' <<EOF
{
  "pip":   { "index_url": "$DEMO_MIRROR", "trusted_hosts": ["$INFRA_MIRROR_HOST:$INFRA_MIRROR_PORT"] },
  "proxy": { "http": "$DEMO_PROXY", "https": "$DEMO_PROXY", "no_proxy": ["$INFRA_HOST_ADDR"] },
  "environment": {
    "kms_key_id": "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab",
    "data_bucket": "demo-ml-data",
    "discover": true,
    "imds_endpoint": "http://$INFRA_HOST_ADDR:$INFRA_IMDS_PORT"
  },
  "audit": {
    "endpoint_url": "$DEMO_MOTO", "drain_secs": 3,
    "reads": { "globs": ["data/**"], "window_secs": 5 }
  }
}
EOF
  sandbox_exec stat -c '%A %U:%G %n' /etc/notebook-agent/config.json
  sandbox_exec cat /etc/notebook-agent/config.json
}

# --- the demo ---------------------------------------------------------------------
demo_step "The sandbox: a booted SageMaker notebook look-alike"
demo_say "Debian 12 rootfs with the Amazon Linux notebook profile, systemd as PID 1,"
demo_say "jupyter-server as ec2-user, conda-like envs. Its network: lo and one veth to"
demo_say "the test services on the host ($INFRA_HOST_ADDR: squid, moto, fake IMDS), no default route."
demo_show "ip -4 -o addr; ip route" sandbox_exec sh -c "ip -4 -o addr | awk '{print \$2, \$4}'; ip route"
check demo-network-only-the-test-link demo_out_is "lo 127.0.0.1/8
eth0 $INFRA_GUEST_ADDR/30
${INFRA_HOST_ADDR%.1}.0/30 dev eth0 proto kernel scope link src $INFRA_GUEST_ADDR "
demo_show "ls -l $DEMO_AGENT_SRC   # the release binary, bind-mounted read-only" \
  sandbox_exec ls -l "$DEMO_AGENT_SRC"
check demo-agent-binary-injected demo_rc_is 0
if ((DEMO_RC != 0)); then
  demo_say "No agent binary: build it (cargo build --release --locked --target x86_64-unknown-linux-musl)"
  demo_say "and run vm-tests/demo, or set NB_AGENT_BIN. Skipping the rest of the demo."
  return 0
fi

demo_step "BEFORE: ec2-user is root in all but name"
demo_show "id ec2-user" demo_groups
check before-ec2-user-in-wheel-docker demo_out_has 'groups=.*\(wheel\).*\(docker\)'
demo_show "su -l ec2-user -c 'sudo -n id -un'   # passwordless sudo (cloud-init)" demo_sudo
check before-sudo-nopasswd demo_out_has '^root$'
demo_show "su ec2-user -c '~/anaconda3/envs/python3/bin/pip config list'   # pip talks to pypi.org" \
  demo_pip_config "$DEMO_HOME/anaconda3/envs/python3"
check before-pip-config-empty demo_out_empty
demo_show "curl -s http://127.0.0.1:8888/api   # jupyter-server is up" demo_jupyter_api
check before-jupyter-answers demo_out_has '"version"'
demo_show "tr '\\0' '\\n' </proc/<jupyter-server pid>/environ | grep -i _proxy=" demo_jupyter_proxy_env
check before-jupyter-no-proxy demo_out_lacks '_proxy='
DEMO_JUPYTER_PID=$(sandbox_jupyter_pids | head -n1) || DEMO_JUPYTER_PID=''

demo_step "Install the agent and its config (what the lifecycle configuration does)"
demo_show "install -m 0755 $DEMO_AGENT_SRC /usr/local/bin/notebook-agent && notebook-agent --version" \
  sandbox_exec sh -c "install -m 0755 '$DEMO_AGENT_SRC' /usr/local/bin/notebook-agent && notebook-agent --version"
check agent-installed demo_rc_is 0
demo_say "Config: the pip mirror (pypiserver, reachable only through squid), the proxy (squid), and"
demo_say "the audit's CloudWatch endpoint (moto on the host)."
demo_show "umask 077; cat >/etc/notebook-agent/config.json; ls -l …; cat …" demo_write_config
check config-root-0600 demo_out_has '^-rw------- root:root /etc/notebook-agent/config.json$'

demo_step "notebook-agent apply"
demo_show -t 1 "notebook-agent apply --dry-run   # every change as a diff; nothing written" demo_agent apply --dry-run
check apply-dry-run demo_rc_is 0
demo_show -x "notebook-agent apply" demo_agent apply
check apply-exit-0 demo_rc_is 0
check apply-every-control-passes demo_out_has '^apply: .*every managed control passes$'
demo_show -x "notebook-agent status" demo_agent status
check status-all-pass-exit-0 demo_rc_is 0
check status-root-rights-pass demo_out_has '^Root rights +PASS'
check status-pip-pass demo_out_has '^pip mirror +PASS'
check status-proxy-pass demo_out_has '^Proxy +PASS'

demo_step "AFTER: no root, every tool pointed at the mirror and the proxy"
demo_show "id ec2-user" demo_groups
check after-not-in-wheel-docker demo_out_lacks '\((wheel|docker)\)'
demo_show "su -l ec2-user -c 'sudo -n id -un'" demo_sudo
check after-sudo-denied demo_out_lacks '^root$'
demo_show "sudo -l -U ec2-user   # as root: what sudo itself says" sandbox_exec sudo -l -U ec2-user
check after-sudo-no-rules demo_out_has 'is not allowed to run sudo'
demo_show "for env in ~/anaconda3 ~/anaconda3/envs/*; do \$env/bin/pip config list; done   # as ec2-user" \
  demo_pip_all_envs
check after-pip-mirror-every-env demo_rc_is 0
for demo_env in "${DEMO_ENVS[@]}"; do
  check "after-pip-mirror-${demo_env##*/}" demo_env_uses_mirror "$demo_env"
done
unset demo_env
# shellcheck disable=SC2016  # expanded by ec2-user's login shell
demo_show "su -l ec2-user -c 'echo \$https_proxy'   # login shell" \
  sandbox_login_as ec2-user 'echo $https_proxy'
check after-login-shell-proxy demo_out_has "^$DEMO_PROXY\$"
demo_show "su ec2-user -c 'bash -ic \"echo \$https_proxy\"'   # a Jupyter terminal (non-login)" \
  sandbox_exec su -s /bin/bash ec2-user -c "bash -ic 'echo \$https_proxy' 2>/dev/null"
check after-terminal-proxy demo_out_has "^$DEMO_PROXY\$"
demo_show "su ec2-user -c 'git config --get https.proxy'" \
  sandbox_exec_as ec2-user git config --get https.proxy
check after-git-proxy demo_out_has "^$DEMO_PROXY"
demo_say "jupyter-server's environment (kernels inherit it), once apply's non-blocking restart is done:"
demo_show "tr '\\0' '\\n' </proc/<jupyter-server pid>/environ | grep -i _proxy=" \
  demo_wait_jupyter_restarted "$DEMO_JUPYTER_PID"
check after-jupyter-restarted-with-proxy demo_rc_is 0

demo_step "Drift: someone puts ec2-user back into wheel"
demo_show "usermod -aG wheel ec2-user" sandbox_exec usermod -aG wheel ec2-user
check drift-usermod demo_rc_is 0
demo_show -x "notebook-agent status" demo_agent status
check drift-status-exit-3 demo_rc_is 3
check drift-status-root-rights-fail demo_out_has '^Root rights +FAIL +.*wheel'
demo_show -x "notebook-agent apply   # repairs it" demo_agent apply
check drift-apply-exit-0 demo_rc_is 0
demo_show -x "notebook-agent status" demo_agent status
check drift-repaired-status-exit-0 demo_rc_is 0
demo_show "id ec2-user" demo_groups
check drift-repaired-not-in-wheel demo_out_lacks '\((wheel|docker)\)'

demo_step "Revert: the admin's undo (restores every backed-up file, removes what apply created)"
demo_show -t 1 "notebook-agent revert" demo_agent revert
check revert-exit-0 demo_rc_is 0
demo_show "su -l ec2-user -c 'sudo -n id -un'" demo_sudo
check revert-sudo-works-again demo_out_has '^root$'
demo_show "id ec2-user" demo_groups
check revert-wheel-docker-back demo_out_has 'groups=.*\(wheel\).*\(docker\)'
demo_show -x "notebook-agent status" demo_agent status
check revert-status-exit-3 demo_rc_is 3

demo_step "Apply again: the state every notebook start ends in"
demo_show -x -t 1 "notebook-agent apply" demo_agent apply
check reapply-exit-0 demo_rc_is 0
demo_show -x "notebook-agent status" demo_agent status
check reapply-status-exit-0 demo_rc_is 0
demo_show "su -l ec2-user -c 'sudo -n id -un'" demo_sudo
check reapply-sudo-denied demo_out_lacks '^root$'

demo_audit

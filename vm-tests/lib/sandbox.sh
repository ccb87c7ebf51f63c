#!/usr/bin/env bash
# Helper library for the booted notebook sandbox. Source it:
#
#   . vm-tests/lib/sandbox.sh
#   sandbox_add_bind --ro "$PWD/dist/notebook-agent:/opt/artifacts/notebook-agent"
#   sandbox_boot                        # overlay of the cached rootfs + systemd-nspawn --boot
#   sandbox_exec systemctl is-active jupyter-server        # as root, status + output returned
#   sandbox_exec_as ec2-user id -nG                         # argv, non-login (like a Jupyter terminal)
#   sandbox_login_as ec2-user 'sudo -n true'                # string, through `su -l` (profile.d applies)
#   sandbox_poweroff                    # clean shutdown, then sandbox_cleanup removes the run dir
#
# The container runs in its own network namespace: with $SANDBOX_NETNS_PATH (made by
# lib/infra.sh) that is lo plus one veth to the test services on the host side, with no
# default route; without it, --private-network (loopback only). Either way nothing inside
# can reach 169.254.169.254 or any address outside this machine. The system volume (the overlay's
# upper dir) is thrown away per run; $SANDBOX_VOLUME is persistent and mounted
# at /home/ec2-user/SageMaker, like a notebook's EBS volume.
#
# Commands run through nsenter into the container's namespaces with the host's
# root privileges (full capability set, no container seccomp filter): use
# sandbox_exec_unit to run something the way the container's systemd would.
set -euo pipefail

_SANDBOX_LIB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib/rootfs.sh
. "$_SANDBOX_LIB_DIR/rootfs.sh"

SANDBOX_RUNS_DIR=${SANDBOX_RUNS_DIR:-$NB_CACHE_DIR/runs}
SANDBOX_VOLUME=${SANDBOX_VOLUME:-$NB_CACHE_DIR/volumes/SageMaker}
SANDBOX_BOOT_TIMEOUT=${SANDBOX_BOOT_TIMEOUT:-90}
SANDBOX_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
# Extra systemd-nspawn options (--bind=, --bind-ro=, --setenv=, ...). Callers
# append before sandbox_boot, directly or via sandbox_add_bind; the run entry
# point also takes them from --bind/--bind-ro and from $SANDBOX_EXTRA_NSPAWN_ARGS
# (whitespace-separated, for CI wrappers).
declare -a SANDBOX_NSPAWN_ARGS=()
if [[ -n ${SANDBOX_EXTRA_NSPAWN_ARGS:-} ]]; then
  read -r -a SANDBOX_NSPAWN_ARGS <<<"$SANDBOX_EXTRA_NSPAWN_ARGS"
fi

SANDBOX_RUN_DIR='' SANDBOX_ROOT='' SANDBOX_NSPAWN_PID='' SANDBOX_LEADER='' SANDBOX_MACHINE=''
SANDBOX_OVERLAY=0

_sb_log() { printf '[sandbox] %s\n' "$*" >&2; }

# Is PID alive? (An exited but unreaped child is a zombie: kill -0 still works.)
_sb_alive() {
  local st
  [[ -n ${1:-} ]] && st=$(ps -o stat= -p "$1" 2>/dev/null) && [[ $st != Z* ]]
}

# sandbox_add_bind [--ro] SRC[:DST[:OPTS]]  (DST defaults to SRC)
sandbox_add_bind() {
  local opt=--bind
  if [[ ${1:-} == --ro ]]; then opt=--bind-ro; shift; fi
  [[ -e ${1%%:*} ]] || { _sb_log "bind source missing: ${1%%:*}"; return 2; }
  SANDBOX_NSPAWN_ARGS+=("$opt=$1")
}

# Fresh system volume: an overlay whose lower layer is the cached rootfs
# (never written), falling back to a full copy if overlayfs is unavailable.
sandbox_prepare() {
  local lower id
  lower=$(rootfs_ensure)
  install -d -m 0755 "$SANDBOX_RUNS_DIR"
  SANDBOX_RUN_DIR=$(mktemp -d "$SANDBOX_RUNS_DIR/run-XXXXXX")
  id=${SANDBOX_RUN_DIR##*/run-}
  SANDBOX_MACHINE=nb-${id,,}
  SANDBOX_ROOT=$SANDBOX_RUN_DIR/root
  mkdir -p "$SANDBOX_RUN_DIR"/{upper,work,root}
  if mount -t overlay overlay \
      -o "lowerdir=$lower,upperdir=$SANDBOX_RUN_DIR/upper,workdir=$SANDBOX_RUN_DIR/work" \
      "$SANDBOX_ROOT" 2>/dev/null; then
    SANDBOX_OVERLAY=1
  else
    _sb_log "overlayfs unavailable, copying the rootfs (slower)"
    rmdir "$SANDBOX_ROOT"; cp -a --reflink=auto "$lower" "$SANDBOX_ROOT"
  fi
  if [[ ! -d $SANDBOX_VOLUME ]]; then
    install -d -m 0755 -o 1000 -g 1000 "$SANDBOX_VOLUME"
  fi
  _sandbox_save_state
}

_sandbox_save_state() {
  [[ -n $SANDBOX_RUN_DIR ]] || return 0
  local v  # plain assignments (not declare -p): sourcing inside a function sets globals
  for v in SANDBOX_RUN_DIR SANDBOX_ROOT SANDBOX_NSPAWN_PID SANDBOX_LEADER \
      SANDBOX_MACHINE SANDBOX_OVERLAY SANDBOX_VOLUME; do
    printf '%s=%q\n' "$v" "${!v}"
  done >"$SANDBOX_RUN_DIR/state"
  # What vm-tests/run --stop also has to undo: the network slot (lib/infra.sh) and a per-run volume.
  printf 'INFRA_IDX=%q\nRUN_VOLUME=%q\n' "${INFRA_IDX:-}" "${RUN_VOLUME:-}" >>"$SANDBOX_RUN_DIR/state"
}

# Re-attach to a sandbox left running (run --keep) from another shell.
sandbox_attach() {  # $1 = run dir
  [[ -f $1/state ]] || { _sb_log "no sandbox state in $1"; return 2; }
  # shellcheck disable=SC1091
  . "$1/state"
  _sb_alive "$SANDBOX_LEADER" || { _sb_log "sandbox in $1 is not running"; return 1; }
}

# The container's PID 1 is the child of systemd-nspawn whose NSpid ends in 1.
_sandbox_find_leader() {
  local c ns
  for c in $(ps -o pid= --ppid "$SANDBOX_NSPAWN_PID" 2>/dev/null); do
    ns=$(awk '/^NSpid:/ {print $NF}' "/proc/$c/status" 2>/dev/null) || continue
    if [[ $ns == 1 ]]; then echo "$c"; return 0; fi
  done
  return 1
}

sandbox_boot() {
  [[ -n $SANDBOX_ROOT ]] || sandbox_prepare
  local log=$SANDBOX_RUN_DIR/console.log i state
  # The network: a namespace prepared by lib/infra.sh (a veth to the host-side services, no
  # default route), else loopback only.
  local net=--private-network
  [[ -z ${SANDBOX_NETNS_PATH:-} ]] || net=--network-namespace-path=$SANDBOX_NETNS_PATH
  systemd-nspawn --quiet -D "$SANDBOX_ROOT" --boot --register=no --keep-unit \
    "$net" --console=pipe --machine="$SANDBOX_MACHINE" \
    --hostname=demo-notebook --resolv-conf=off --timezone=off --link-journal=no \
    --bind="$SANDBOX_VOLUME:/home/ec2-user/SageMaker" \
    "${SANDBOX_NSPAWN_ARGS[@]}" </dev/null >"$log" 2>&1 &
  SANDBOX_NSPAWN_PID=$!
  for ((i = 0; i < 200; i++)); do
    SANDBOX_LEADER=$(_sandbox_find_leader) && break
    _sb_alive "$SANDBOX_NSPAWN_PID" || break
    sleep 0.05
  done
  if [[ -z $SANDBOX_LEADER ]]; then
    _sb_log "container did not start; console log:"; cat "$log" >&2; return 1
  fi
  _sandbox_save_state
  # is-system-running says "offline" until PID 1 listens on its private
  # socket; then --wait blocks until boot finished (running/degraded/...).
  local deadline=$((SECONDS + SANDBOX_BOOT_TIMEOUT))
  while ((SECONDS < deadline)); do
    state=$(sandbox_exec_timeout $((deadline - SECONDS + 1)) systemctl is-system-running --wait 2>/dev/null) || true
    [[ $state == offline || -z $state ]] || break
    _sb_alive "$SANDBOX_LEADER" || break
    sleep 0.05
  done
  case $state in
    running) ;;
    degraded)
      _sb_log "system is degraded; failed units:"
      sandbox_exec systemctl --failed --no-legend --plain >&2 || true ;;
    *) _sb_log "boot did not finish within ${SANDBOX_BOOT_TIMEOUT}s (state: '${state:-none}')"
       cat "$log" >&2; return 1 ;;
  esac
}

sandbox_running() {
  _sb_alive "$SANDBOX_LEADER"
}

# sandbox_exec CMD [ARGS...]: run as root inside the container (all its
# namespaces, its root dir, a clean environment). Returns CMD's exit status;
# stdin/stdout/stderr are the caller's.
sandbox_exec() {
  sandbox_running || { _sb_log "sandbox is not running"; return 125; }
  "${_SB_TIMEOUT[@]}" nsenter -t "$SANDBOX_LEADER" -m -u -i -n -p -C -r -w -- \
    /usr/bin/env -i PATH="$SANDBOX_PATH" HOME=/root USER=root LOGNAME=root \
    LANG=C.UTF-8 TERM="${TERM:-dumb}" "$@"
}
declare -a _SB_TIMEOUT=()

# sandbox_exec_timeout SECONDS CMD [ARGS...]: sandbox_exec with a time limit
# (exit 124 when it expires).
sandbox_exec_timeout() {
  local -a _SB_TIMEOUT=(timeout --kill-after=5 "$1"); shift
  sandbox_exec "$@"
}

# sandbox_exec_as USER CMD [ARGS...]: non-login shell environment for USER
# (HOME, USER, SHELL set; no /etc/profile), like a Jupyter terminal.
sandbox_exec_as() {
  local user=$1; shift
  # shellcheck disable=SC2016  # "$@" is expanded by the inner shell
  sandbox_exec su -s /bin/bash -c 'cd ~ && exec "$@"' -- "$user" sandbox "$@"
}

# sandbox_login_as USER 'shell string': through `su -l`, like jupyter-server.
sandbox_login_as() {
  local user=$1; shift
  sandbox_exec su -l "$user" -c "$*"
}

# sandbox_jupyter_pids: the jupyter-server process(es) of the jupyter-server
# unit, i.e. the children of its MainPID (the `su -l` wrapper). Fails when
# the unit has no main process. (cgroup v1 on some hosts: use ps, not cgroups.)
sandbox_jupyter_pids() {
  local main
  main=$(sandbox_exec systemctl show -p MainPID --value jupyter-server.service) || return 1
  [[ -n $main && $main != 0 ]] || return 1
  sandbox_exec ps -o pid=,args= --ppid "$main" | awk '$3 ~ /\/jupyter-server$/ {print $1}'
}

# sandbox_exec_unit CMD [ARGS...]: run as a transient unit of the container's
# systemd (its cgroup, capabilities and sandboxing); waits, pipes output.
sandbox_exec_unit() {
  sandbox_exec systemd-run --quiet --wait --pipe --collect --service-type=exec -- "$@"
}

# sandbox_shell [USER]: interactive login shell inside (root by default).
sandbox_shell() {
  local user=${1:-root}
  if [[ $user == root ]]; then sandbox_exec /bin/bash -l; else sandbox_exec su -l "$user"; fi
}

# Print how to reach a sandbox left running.
sandbox_describe() {
  local self
  self=$(cd "$_SANDBOX_LIB_DIR/.." && pwd)/run
  cat <<EOF
sandbox running: machine $SANDBOX_MACHINE, PID 1 = host pid $SANDBOX_LEADER, run dir $SANDBOX_RUN_DIR
  enter (root):      $self --enter $SANDBOX_RUN_DIR
  enter (ec2-user):  $self --enter $SANDBOX_RUN_DIR ec2-user
  raw:               nsenter -t $SANDBOX_LEADER -m -u -i -n -p -C -r -w /bin/bash -l
  stop + clean:      $self --stop $SANDBOX_RUN_DIR
EOF
}

_sandbox_wait_exit() {  # $1 = seconds
  local i
  for ((i = 0; i < $1 * 20; i++)); do
    _sb_alive "$SANDBOX_NSPAWN_PID" || return 0
    sleep 0.05
  done
  return 1
}

# Clean shutdown: systemctl poweroff inside; SIGTERM to nspawn (it halts the
# container) if that fails or takes over 30 s; SIGKILL after 10 more.
sandbox_poweroff() {
  [[ -n $SANDBOX_NSPAWN_PID ]] || return 0
  if _sb_alive "$SANDBOX_NSPAWN_PID"; then
    if ! sandbox_exec systemctl --no-block poweroff >/dev/null 2>&1 || ! _sandbox_wait_exit 30; then
      _sb_log "poweroff failed or timed out, SIGTERM to systemd-nspawn"
      kill -TERM "$SANDBOX_NSPAWN_PID" 2>/dev/null || true
    fi
    _sandbox_wait_exit 10 || { _sb_log "halt timed out, SIGKILL"; kill -KILL "$SANDBOX_NSPAWN_PID" 2>/dev/null || true; }
    _sandbox_wait_exit 5 || true
  fi
  wait "$SANDBOX_NSPAWN_PID" 2>/dev/null || true
  # nspawn refuses to rm its propagate dir when /run is not a tmpfs.
  rmdir "/run/systemd/nspawn/propagate/$SANDBOX_MACHINE" 2>/dev/null || true
  SANDBOX_LEADER='' SANDBOX_NSPAWN_PID=''
}

# Power off (if needed) and delete the run dir (the system volume). Safe to
# call twice and from traps. The persistent volume is never touched.
sandbox_cleanup() {
  sandbox_poweroff || true
  [[ -n $SANDBOX_RUN_DIR && -d $SANDBOX_RUN_DIR ]] || return 0
  if [[ $SANDBOX_OVERLAY == 1 ]] && mountpoint -q "$SANDBOX_ROOT"; then
    umount "$SANDBOX_ROOT" 2>/dev/null || umount -l "$SANDBOX_ROOT"
  fi
  if findmnt -rn -o TARGET | grep -qF -- "$SANDBOX_RUN_DIR"; then
    _sb_log "not deleting $SANDBOX_RUN_DIR: still has mounts"; return 1
  fi
  rm -rf --one-file-system -- "$SANDBOX_RUN_DIR"
  SANDBOX_RUN_DIR='' SANDBOX_ROOT=''
}

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
# upper dir) is thrown away per run. The SageMaker volume is its own ext4 filesystem, as the
# notebook's EBS volume is: $SANDBOX_VOLUME is an image file (the volume itself; it survives a
# power-off and a boot), loop-mounted on the host at $SANDBOX_VOLUME_DIR by sandbox_volume_up and
# bind-mounted at /home/ec2-user/SageMaker; sandbox_volume_down unmounts it and frees the loop device.
#
# Commands run through nsenter into the container's namespaces with the host's
# root privileges (full capability set, no container seccomp filter): use
# sandbox_exec_unit to run something the way the container's systemd would.
set -euo pipefail

_SANDBOX_LIB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib/rootfs.sh
. "$_SANDBOX_LIB_DIR/rootfs.sh"

SANDBOX_RUNS_DIR=${SANDBOX_RUNS_DIR:-$NB_CACHE_DIR/runs}
SANDBOX_VOLUME=${SANDBOX_VOLUME:-$NB_CACHE_DIR/volumes/SageMaker.img}
# Size of a new volume image (sparse: a fresh one takes ~35 MB of the host's disk). 1 GiB leaves
# room for the hostile suite's spool fill (audit.spool_max_bytes defaults to 512 MiB).
SANDBOX_VOLUME_SIZE=${SANDBOX_VOLUME_SIZE:-1G}
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
# What the agent's fanotify source needs, which a notebook's root has on the host kernel: nspawn's
# seccomp filter refuses fanotify_init and fanotify_mark (EPERM) unless they are allowed by name,
# with CAP_SYS_ADMIN in the container's set (../shared/DESIGN.md), and open_by_handle_at (EPERM;
# the source opens an event's directory handle with it). docs/WATCHER-DESIGN.md, "What the kernel
# does"; scenarios/smoke.sh proves all three work in the booted sandbox, as the agent's unit.
declare -a SANDBOX_FANOTIFY_ARGS=(--capability=CAP_SYS_ADMIN
  '--system-call-filter=fanotify_init fanotify_mark open_by_handle_at')

SANDBOX_RUN_DIR='' SANDBOX_ROOT='' SANDBOX_NSPAWN_PID='' SANDBOX_LEADER='' SANDBOX_MACHINE=''
SANDBOX_OVERLAY=0
# The volume while a run holds it: a per-run directory ($SANDBOX_RUNS_DIR/volume-*) with the mount
# point mnt/ (and the image itself when the run made a throw-away one).
SANDBOX_VOLUME_RUN_DIR='' SANDBOX_VOLUME_DIR=''

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
  if [[ -z $SANDBOX_VOLUME_DIR ]] || ! mountpoint -q "$SANDBOX_VOLUME_DIR"; then
    _sb_log "no SageMaker volume mounted: call sandbox_volume_up before sandbox_boot"; return 1
  fi
  _sandbox_save_state
}

_sandbox_save_state() {
  [[ -n $SANDBOX_RUN_DIR ]] || return 0
  local v  # plain assignments (not declare -p): sourcing inside a function sets globals
  for v in SANDBOX_RUN_DIR SANDBOX_ROOT SANDBOX_NSPAWN_PID SANDBOX_LEADER \
      SANDBOX_MACHINE SANDBOX_OVERLAY SANDBOX_VOLUME SANDBOX_VOLUME_RUN_DIR SANDBOX_VOLUME_DIR; do
    printf '%s=%q\n' "$v" "${!v}"
  done >"$SANDBOX_RUN_DIR/state"
  # What vm-tests/run --stop also has to undo: the network slot (lib/infra.sh); the volume's mount
  # and loop device are SANDBOX_VOLUME_RUN_DIR above.
  printf 'INFRA_IDX=%q\n' "${INFRA_IDX:-}" >>"$SANDBOX_RUN_DIR/state"
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
    --bind="$SANDBOX_VOLUME_DIR:/home/ec2-user/SageMaker" \
    "${SANDBOX_FANOTIFY_ARGS[@]}" "${SANDBOX_NSPAWN_ARGS[@]}" </dev/null >"$log" 2>&1 &
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

# --- the SageMaker volume ---------------------------------------------------------------------------
# An ext4 image file, loop-mounted on the host and bind-mounted into the container: a filesystem of
# its own like the notebook's EBS volume (what a fanotify filesystem mark covers; what the notebook
# user can fill). The loop device is set up by `mount -o loop` (autoclear: freed by the unmount).

# _sb_volume_mkfs IMAGE: a new sparse ext4 image whose root directory belongs to ec2-user (uid and
# gid 1000), with lost+found as on a notebook. Made beside the image and renamed into place, so an
# interrupted mkfs never leaves half a volume.
_sb_volume_mkfs() {
  local img=$1 tmp
  install -d -m 0755 "$(dirname "$img")"
  tmp=$(mktemp "$img.tmp-XXXXXX")
  if truncate -s "$SANDBOX_VOLUME_SIZE" "$tmp" &&
      mkfs.ext4 -q -F -L SageMaker -E root_owner=1000:1000 "$tmp" &&
      mv -f -- "$tmp" "$img"; then
    return 0
  fi
  rm -f -- "$tmp"
  _sb_log "cannot make the volume image $img ($SANDBOX_VOLUME_SIZE)"; return 1
}

_sb_volume_mount() {
  mount -o loop "$SANDBOX_VOLUME" "$SANDBOX_VOLUME_DIR" ||
    { _sb_log "cannot loop-mount $SANDBOX_VOLUME at $SANDBOX_VOLUME_DIR"; return 1; }
}

_sb_volume_umount() {
  mountpoint -q "$SANDBOX_VOLUME_DIR" || return 0
  umount "$SANDBOX_VOLUME_DIR" && return 0
  _sb_log "the volume at $SANDBOX_VOLUME_DIR is busy: lazy unmount (its loop device goes with the last user)"
  umount -l "$SANDBOX_VOLUME_DIR"
}

# _sb_volume_detach_leftovers: loop devices still backed by the image or by a file in the run's
# volume dir (a lazy unmount, a run killed between losetup and mount) are detached; a busy one is
# marked to go when its last user does.
_sb_volume_detach_leftovers() {
  local dev back
  while read -r dev back; do
    back=${back% (deleted)}
    [[ $back == "$SANDBOX_VOLUME" || ( -n $SANDBOX_VOLUME_RUN_DIR && $back == "$SANDBOX_VOLUME_RUN_DIR"/* ) ]] || continue
    losetup -d "$dev" 2>/dev/null || _sb_log "cannot detach $dev ($back)"
  done < <(losetup -l -n -O NAME,BACK-FILE 2>/dev/null)
}

# sandbox_volume_up [--fresh|--temp]: attach the volume and mount it at $SANDBOX_VOLUME_DIR (in a
# new per-run dir $SANDBOX_VOLUME_RUN_DIR). The image $SANDBOX_VOLUME is made when missing, made
# anew with --fresh; --temp makes a throw-away image inside the per-run dir instead. Refuses an image
# that is already attached: two mounts of one ext4 filesystem would corrupt it.
sandbox_volume_up() {
  local mode=${1:-} used
  install -d -m 0755 "$SANDBOX_RUNS_DIR"
  SANDBOX_VOLUME_RUN_DIR=$(mktemp -d "$SANDBOX_RUNS_DIR/volume-XXXXXX")
  echo "$$" >"$SANDBOX_VOLUME_RUN_DIR/owner"  # --gc leaves a volume alone while this process lives
  SANDBOX_VOLUME_DIR=$SANDBOX_VOLUME_RUN_DIR/mnt
  mkdir "$SANDBOX_VOLUME_DIR"
  [[ $mode != --temp ]] || SANDBOX_VOLUME=$SANDBOX_VOLUME_RUN_DIR/SageMaker.img
  if [[ -d $SANDBOX_VOLUME ]]; then
    _sb_log "SANDBOX_VOLUME=$SANDBOX_VOLUME is a directory: the volume is an ext4 image file now" \
      "(vm-tests/README.md, \"The SageMaker volume\"); name a file, e.g. $SANDBOX_VOLUME.img"
    return 2
  fi
  used=$(losetup -n -O NAME -j "$SANDBOX_VOLUME" 2>/dev/null | tr '\n' ' ') || true
  if [[ -n $used ]]; then
    _sb_log "the volume $SANDBOX_VOLUME is attached already ($used): another run has it" \
      "(vm-tests/run --list, --stop RUNDIR, --gc)"
    return 1
  fi
  if [[ $mode == --fresh || ! -f $SANDBOX_VOLUME ]]; then _sb_volume_mkfs "$SANDBOX_VOLUME" || return 1; fi
  _sb_volume_mount
}

# sandbox_volume_fresh: a new, empty volume in place of the current one (a new notebook instance).
# The sandbox must be off.
sandbox_volume_fresh() {
  if sandbox_running; then _sb_log "sandbox_volume_fresh: power the sandbox off first"; return 1; fi
  _sb_volume_umount && _sb_volume_mkfs "$SANDBOX_VOLUME" && _sb_volume_mount
}

# sandbox_volume_down: unmount the volume, free its loop device and remove the per-run dir (with a
# --temp image; a persistent $SANDBOX_VOLUME stays). The sandbox must be off. Safe to call twice and
# from traps.
sandbox_volume_down() {
  [[ -n $SANDBOX_VOLUME_RUN_DIR && -d $SANDBOX_VOLUME_RUN_DIR ]] || return 0
  SANDBOX_VOLUME_DIR=$SANDBOX_VOLUME_RUN_DIR/mnt
  _sb_volume_umount || true
  _sb_volume_detach_leftovers
  if mountpoint -q "$SANDBOX_VOLUME_DIR"; then
    _sb_log "not deleting $SANDBOX_VOLUME_RUN_DIR: the volume is still mounted"; return 1
  fi
  rm -rf --one-file-system -- "$SANDBOX_VOLUME_RUN_DIR"
  SANDBOX_VOLUME_RUN_DIR='' SANDBOX_VOLUME_DIR=''
}

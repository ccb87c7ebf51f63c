# shellcheck shell=bash
# Hostile-user scenario: the notebook user attacks the agent that constrains them (issue 9,
# docs/THREAT-MODEL.md). A new notebook instance gets the real lifecycle configuration (as in
# scenarios/lifecycle.sh, through lib/notebook.sh), with a proxy URL that carries a password. Then
# every attempt runs as ec2-user, through `su -l` (like jupyter-server and its kernels) and/or a
# non-login shell (a Jupyter terminal), and is classified:
#
#   BLOCKED    it failed, and the state it aimed at is checked to be unchanged
#   RECORDED   it worked, and the agent recorded it (read back from moto, or from the spool where
#              said) and, for drift, repaired it
#   SILENT     it worked and nothing recorded it: the check fails
#   KNOWN GAP  a SILENT outcome listed in HX_GAPS, documented in docs/THREAT-MODEL.md; printed,
#              does not fail the run
#
# The table (attempt, outcome) is printed at the end. Each attempt is also a check
# (`hostile-<attempt>`), so a SILENT one fails vm-tests/run.
#
# Sourced by vm-tests/run after boot; needs lib/infra.sh's services and the release artifact.

# shellcheck source=../lib/notebook.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib/notebook.sh"
# shellcheck disable=SC2034  # read by lib/notebook.sh
LC_SCENARIO=hostile
HX_T0=$SECONDS
HX_SECRET=s3cr3t-PASS
# shellcheck disable=SC2034  # read by lib/notebook.sh
LC_PROXY=http://nbuser:$HX_SECRET@$INFRA_HOST_ADDR:$INFRA_SQUID_PORT
HX_SPOOL=$LC_SM/.notebook-agent
HX_TABLE=$INFRA_STATE/hostile-table.tsv
HX_FLOOD_EVENTS=${HX_FLOOD_EVENTS:-1000000}
# Attempts that are known to succeed unrecorded: name -> where docs/THREAT-MODEL.md explains it.
declare -A HX_GAPS=(
  [hide-in-excluded-dir]="G3"
  [proxy-password-user-readable]="G4"
)

if ! lc_have_release; then
  lc_say "no release artifact (the agent binary is not built): hostile scenario skipped"
  return 0
fi
: >"$HX_TABLE"

# --- the classification ---------------------------------------------------------------------------
HX_BLOCKED=0 HX_RECORDED=10

# hx NAME FUNCTION [ARGS...]: one attempt, as the check hostile-NAME. FUNCTION returns
# HX_BLOCKED or HX_RECORDED when the defence held, 1 when the attempt succeeded unrecorded
# (SILENT), anything else when the probe itself could not tell (ERROR).
hx() {
  local name=$1; shift
  check "hostile-$name" _hx_run "$name" "$@"
}
_hx_run() {
  local name=$1 rc=0 outcome log=$INFRA_STATE/hostile-$1.log; shift
  "$@" >"$log" 2>&1 || rc=$?
  cat "$log"
  case $rc in
    "$HX_BLOCKED") outcome=BLOCKED ;;
    "$HX_RECORDED") outcome=RECORDED ;;
    1) outcome=SILENT ;;
    *) outcome="ERROR (probe exit $rc)" ;;
  esac
  if [[ -n ${HX_GAPS[$name]:-} ]]; then
    if [[ $outcome == SILENT ]]; then
      outcome="KNOWN GAP: docs/THREAT-MODEL.md ${HX_GAPS[$name]}"
    else
      outcome="$outcome (listed as a known gap: update HX_GAPS and the threat model)"
    fi
  fi
  # The evidence: the probe's last line that says something.
  printf '%s\t%s\t%s\n' "$name" "$outcome" "$(grep -av '^outcome:' "$log" | tr -d '\000' | tr '\t' ' ' | grep -v '^ *$' | tail -n1 | cut -c1-110)" >>"$HX_TABLE"
  echo "outcome: $outcome"
  [[ $outcome == BLOCKED* || $outcome == RECORDED* || $outcome == KNOWN\ GAP* ]]
}

hx_table() {
  printf '\n   %-30s %s\n' ATTEMPT OUTCOME
  printf '   %-30s %s\n' ------------------------------ -------
  awk -F'\t' '{ printf "   %-30s %s\n   %-30s   %s\n", $1, $2, "", $3 }' "$HX_TABLE"
  local silent
  silent=$(grep -cvE $'\t(BLOCKED|RECORDED|KNOWN GAP)' "$HX_TABLE") || true
  printf '   %s attempts: %s blocked, %s recorded, %s known gaps, %s silent or undetermined\n' \
    "$(wc -l <"$HX_TABLE")" "$(grep -c $'\tBLOCKED' "$HX_TABLE")" "$(grep -c $'\tRECORDED' "$HX_TABLE")" \
    "$(grep -c $'\tKNOWN GAP' "$HX_TABLE")" "$silent"
}

# --- probes ----------------------------------------------------------------------------------------
# hx_denied_both 'CMD': CMD fails as ec2-user in a login shell and in a non-login shell.
hx_denied_both() {
  local sh rc
  for sh in lc_as_login lc_as_terminal; do
    rc=0; "$sh" "$1" </dev/null || rc=$?
    echo "$sh: $1 -> exit $rc"
    ((rc != 0)) || return 1
  done
}
# hx_denied_all 'CMD'...: each CMD fails in both shells.
hx_denied_all() {
  local c
  for c in "$@"; do hx_denied_both "$c" || return 1; done
}

# hx_state PATH...: owner, mode and content hash of each path (as root), for before/after.
hx_state() {
  sandbox_exec sh -c 'for p; do
      if [ -e "$p" ] || [ -L "$p" ]; then
        printf "%s %s " "$p" "$(stat -c "%U:%G %a %F" "$p")"
        if [ -f "$p" ]; then sha256sum <"$p" | cut -c1-16; elif [ -d "$p" ]; then ls -A "$p" | sha256sum | cut -c1-16; else echo; fi
      else echo "$p absent"; fi
    done' sh "$@"
}
# hx_unchanged BEFORE PATH...: the state of PATHs is still BEFORE.
hx_unchanged() {
  local before=$1 after; shift
  after=$(hx_state "$@")
  [[ $after == "$before" ]] && return 0
  echo "state changed:"; diff <(echo "$before") <(echo "$after") || true
  return 1
}

hx_agent_alive_as() {  # $1 = pid it had
  local pid
  pid=$(lc_agent_pid)
  sandbox_exec systemctl is-active --quiet notebook-agent.service && [[ $pid == "$1" ]] ||
    { echo "agent pid $1 -> ${pid:-none}, $(sandbox_exec systemctl is-active notebook-agent.service)"; return 1; }
  sandbox_exec sh -c "grep -E '^State:' /proc/$pid/status"
}

# hx_recorded SECONDS REGEX...: every REGEX matches an event in moto within SECONDS.
hx_recorded() {
  lc_events_within "$@" | tail -n 8
  return "${PIPESTATUS[0]}"
}

# --- before apply: the attempts would work on an unhardened notebook --------------------------------
# The docker socket as on a notebook instance (root:docker 0660). Nothing listens: connect() checks
# the permission first (EACCES), then finds no listener (ECONNREFUSED), which tells the two apart.
hx_docker_socket_setup() {
  sandbox_exec python3 -c '
import os, socket, grp
p = "/run/docker.sock"
if os.path.exists(p): os.unlink(p)
s = socket.socket(socket.AF_UNIX); s.bind(p)
os.chown(p, 0, grp.getgrnam("docker").gr_gid); os.chmod(p, 0o660)'
  sandbox_exec ls -l /run/docker.sock
}
HX_DOCKER_PROBE='python3 -c "import socket
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(\"/var/run/docker.sock\")
except PermissionError:
    print(\"docker.sock: permission denied\"); raise SystemExit(1)
except ConnectionRefusedError:
    print(\"docker.sock: permission granted (nothing listens here)\"); raise SystemExit(0)
print(\"docker.sock: connected\")"'
hx_baseline() {
  lc_as_login 'sudo -n true && echo "sudo works" && id' || return 1
  lc_as_terminal "$HX_DOCKER_PROBE"
}

# --- root rights -------------------------------------------------------------------------------------
hx_sudo() {
  hx_denied_all 'sudo -n true' 'sudo -n -u root id' 'sudo -n -s id' 'sudo -n -i id' 'sudoedit -n /etc/sudoers' ||
    return 1
  sandbox_exec sudo -l -U ec2-user | tee /dev/stderr | grep -q 'not allowed to run sudo' || return 1
  echo "5 sudo forms denied in both shells; sudo -l -U ec2-user: not allowed"
  return "$HX_BLOCKED"
}

# Every file sudo reads: /etc/sudoers, what it includes (files and directories) and the files in
# those directories, plus a new drop-in in each directory.
hx_sudoers_paths() {
  sandbox_exec sh -c 'echo /etc/sudoers
    sed -n "s/^[@#]include\(dir\)\{0,1\}[[:space:]]\{1,\}//p" /etc/sudoers | while read -r p; do
      echo "$p"; [ -d "$p" ] && find "$p" -mindepth 1 -maxdepth 1
    done; true' | sort -u
}
hx_sudoers() {
  local -a paths=() cmds=()
  local p before rule='ec2-user ALL=(ALL) NOPASSWD:ALL'
  mapfile -t paths < <(hx_sudoers_paths)
  before=$(hx_state "${paths[@]}")
  echo "sudoers paths:"; printf '  %s\n' "${paths[@]}"
  for p in "${paths[@]}"; do
    if sandbox_exec test -d "$p"; then
      cmds+=("echo '$rule' >$p/zz-hostile" "ln -s /tmp/x $p/zz-hostile-link" "cp /etc/hostname $p/")
    else
      cmds+=("echo '$rule' >>$p" "mv -f $p $p.moved" "rm -f $p" "chmod 666 $p")
    fi
  done
  hx_denied_all "${cmds[@]}" >/dev/null || { echo "one of them worked"; hx_unchanged "$before" "${paths[@]}"; return 1; }
  hx_unchanged "$before" "${paths[@]}" || return 1
  echo "${#cmds[@]} attempts on ${#paths[@]} paths denied in both shells; contents unchanged"
  return "$HX_BLOCKED"
}

hx_su() {
  # root's password is locked on a notebook; su from a non-tty reads the password from stdin.
  hx_denied_all 'echo | timeout 10 su -c id root' 'echo | timeout 10 su - root -c id' \
    "echo '' | timeout 10 su -s /bin/sh root -c id" || return 1
  sandbox_exec sh -c 'getent shadow root | cut -d: -f2 | cut -c1-1' | grep -qE '^[!*]' ||
    { echo "root has a password set"; return 2; }
  echo "su to root denied in both shells (root's password is locked)"
  return "$HX_BLOCKED"
}

hx_pkexec() {
  if ! sandbox_exec sh -c 'command -v pkexec' >/dev/null; then
    echo "pkexec is not installed (as on a notebook instance without polkit)"
    # Nothing to attack; setuid programs are checked by hx_setuid.
    return "$HX_BLOCKED"
  fi
  hx_denied_both 'timeout 10 pkexec id' || return 1
  return "$HX_BLOCKED"
}

hx_docker() {
  hx_denied_both "$HX_DOCKER_PROBE" || return 1
  echo "connect(/var/run/docker.sock): permission denied in both shells (granted before apply)"
  return "$HX_BLOCKED"
}

hx_groups() {
  local before
  before=$(hx_state /etc/group /etc/gshadow /etc/passwd /etc/shadow)
  hx_denied_all 'gpasswd -a ec2-user wheel' 'usermod -aG wheel,docker ec2-user' \
    'echo | sg wheel -c id' 'echo | sg docker -c id' 'echo | newgrp docker </dev/null' \
    'echo "wheel:x:10:ec2-user" >>/etc/group' 'cp /etc/group /tmp/g && mv /tmp/g /etc/group' || return 1
  hx_unchanged "$before" /etc/group /etc/gshadow /etc/passwd /etc/shadow || return 1
  sandbox_exec id ec2-user | tee /dev/stderr | grep -qvE '\((wheel|docker)\)' || return 1
  # Processes started before apply (jupyter-server, its kernels) kept their groups: none is left.
  local stale
  stale=$(sandbox_exec sh -c 'w=$(getent group wheel | cut -d: -f3); d=$(getent group docker | cut -d: -f3)
    for s in /proc/[0-9]*/status; do
      awk -v w="$w" -v d="$d" '"'"'/^Uid:/ && $2 == 1000 { u = 1 }
        /^Groups:/ { for (i = 2; i <= NF; i++) if ($i == w || $i == d) g = 1 }
        END { exit !(u && g) }'"'"' "$s" 2>/dev/null && echo "${s%/status}"
    done; true')
  [[ -z $stale ]] || { echo "ec2-user processes still in wheel/docker: $stale"; return 1; }
  echo "7 group edits denied; /etc/group, gshadow, passwd, shadow unchanged; no ec2-user process in wheel/docker"
  return "$HX_BLOCKED"
}

# No setuid/setgid program an unprivileged user could abuse was added: the set is the base
# system's (sudo, su, passwd, ...), and none of them is writable.
hx_setuid() {
  local list
  list=$(sandbox_exec find / -xdev \( -perm -4000 -o -perm -2000 \) -type f -printf '%m %u %p\n')
  echo "$list"
  if sandbox_exec find / -xdev \( -perm -4000 -o -perm -2000 \) -type f -perm /022 -print | grep -q .; then
    echo "a setuid/setgid program is group- or world-writable"; return 1
  fi
  echo "$(grep -c . <<<"$list") setuid/setgid programs, none writable by ec2-user"
  return "$HX_BLOCKED"
}

# --- the agent process -----------------------------------------------------------------------------
hx_stop_agent() {
  local pid; pid=$(lc_agent_pid)
  hx_denied_all 'systemctl stop notebook-agent' 'systemctl kill notebook-agent' \
    'systemctl disable notebook-agent' 'systemctl mask notebook-agent' \
    'systemctl restart notebook-agent' 'systemctl daemon-reload' || return 1
  hx_agent_alive_as "$pid" || return 1
  sandbox_exec systemctl is-enabled notebook-agent.service || return 1
  echo "systemctl stop/kill/disable/mask/restart/daemon-reload denied; same pid, active, enabled"
  return "$HX_BLOCKED"
}

hx_kill_agent() {
  local pid; pid=$(lc_agent_pid)
  hx_denied_all "kill -9 $pid" "kill -STOP $pid" "kill -TERM $pid" || return 1
  sleep 0.3
  hx_agent_alive_as "$pid" || return 1
  echo "kill -9/-STOP/-TERM denied; agent pid $pid still running"
  return "$HX_BLOCKED"
}

hx_ptrace_agent() {
  local pid; pid=$(lc_agent_pid)
  hx_denied_all "python3 -c 'import ctypes, sys
libc = ctypes.CDLL(None, use_errno=True)
r = libc.ptrace(16, $pid, None, None)  # PTRACE_ATTACH
print(\"ptrace:\", r, ctypes.get_errno()); sys.exit(0 if r == 0 else 1)'" \
    "head -c 16 /proc/$pid/mem" "cat /proc/$pid/environ" "ls /proc/$pid/fd" "cat /proc/$pid/maps" || return 1
  hx_agent_alive_as "$pid" || return 1
  echo "PTRACE_ATTACH: EPERM; /proc/$pid/mem, environ, fd, maps unreadable"
  return "$HX_BLOCKED"
}

# --- the agent's files ------------------------------------------------------------------------------
# hx_files_immutable PATH...: no way in for ec2-user: append, replace by rename, delete, chmod, and a
# new file next to each; every path unchanged afterwards.
hx_files_immutable() {
  local before p d
  local -a cmds=()
  before=$(hx_state "$@")
  for p in "$@"; do
    d=${p%/*}
    cmds+=("echo '# tampered' >>$p" "cp /etc/hostname /tmp/hx-r && mv -f /tmp/hx-r $p" "rm -f $p"
      "chmod 777 $p" "mv -f $p $p.moved" "touch $d/hx-hostile-new")
  done
  hx_denied_all "${cmds[@]}" >/dev/null || { hx_unchanged "$before" "$@"; return 1; }
  hx_unchanged "$before" "$@" || return 1
  echo "${#cmds[@]} attempts on $# paths denied in both shells; unchanged"
  return "$HX_BLOCKED"
}

hx_config() {
  hx_denied_both 'cat /etc/notebook-agent/config.json' || return 1
  hx_files_immutable /etc/notebook-agent/config.json
}

hx_unit() {
  local -a units
  mapfile -t units < <(sandbox_exec sh -c 'ls -d /etc/systemd/system/notebook-agent.service \
    /etc/systemd/system/notebook-agent.service.d/*.conf /etc/systemd/system/jupyter-server.service.d/*.conf 2>/dev/null')
  hx_denied_all 'mkdir /etc/systemd/system/hx-hostile.service.d' \
    "printf '[Service]\nExecStart=\nExecStart=/bin/true\n' >/run/systemd/system/notebook-agent.service.d/zz.conf" \
    "printf '[Service]\nExecStart=\nExecStart=/bin/true\n' >/etc/systemd/system/notebook-agent.service.d/zz.conf" ||
    return 1
  hx_files_immutable "${units[@]}"
}

# The .pth files live in ec2-user's own conda envs, so ec2-user can delete or rewrite them: the
# drift monitor must notice, record and repair.
hx_pth() {
  local pth
  pth=$(sandbox_exec find "$LC_HOME/anaconda3/envs/python3" -name notebook-agent-environment.pth -print -quit)
  [[ -n $pth ]] || { echo "no .pth in the python3 env"; return 2; }
  lc_as_terminal "printf 'import os\n' >$pth.hx && mv -f $pth.hx $pth && cat $pth" || { echo "could not replace $pth"; return "$HX_BLOCKED"; }
  hx_recorded 10 "Control environment drifted .*" "Control environment repaired" || return 1
  sandbox_exec grep -q 'notebook-agent' "$pth" || { echo "$pth not repaired"; return 1; }
  lc_as_terminal "$LC_HOME/anaconda3/envs/python3/bin/python -c 'import sagemaker_environment'" || return 1
  echo "DriftFound + DriftRepaired (environment) in moto; the .pth file restored"
  return "$HX_RECORDED"
}

hx_user_pip_conf() {
  lc_as_terminal "mkdir -p ~/.config/pip && printf '[global]\nindex-url = http://evil.example/simple/\n' >~/.config/pip/pip.conf.hx &&
    mv -f ~/.config/pip/pip.conf.hx ~/.config/pip/pip.conf" || return "$HX_BLOCKED"
  hx_recorded 10 "Control pip drifted .*" "Control pip repaired" || return 1
  lc_as_terminal "$LC_HOME/anaconda3/bin/pip config list" | tee /dev/stderr | grep -q evil.example && return 1
  echo "DriftFound + DriftRepaired (pip) in moto; ~/.config/pip/pip.conf points at the mirror again"
  return "$HX_RECORDED"
}

# --- the spool and the snapshot ---------------------------------------------------------------------
hx_spool_delete() {
  local before
  before=$(hx_state "$HX_SPOOL" "$HX_SPOOL/watch.tree" "$HX_SPOOL/ack.json")
  hx_denied_all "rm -rf $HX_SPOOL" "rm -f $HX_SPOOL/watch.tree" "truncate -s 0 $HX_SPOOL/ack.json" \
    "ls $HX_SPOOL" "chmod 777 $HX_SPOOL" "touch $HX_SPOOL/hx" >/dev/null || return 1
  sandbox_exec stat -c '%U %a %n' "$HX_SPOOL" | tee /dev/stderr | grep -q '^root 700 ' || return 1
  sandbox_exec test -f "$HX_SPOOL/watch.tree" || return 1
  echo "spool and snapshot still there, root 0700"
  return "$HX_BLOCKED"
}

# The SageMaker directory is ec2-user's: renaming the spool directory inside it cannot be refused.
hx_spool_rename() {
  local rc=0
  lc_as_terminal "mv $HX_SPOOL $LC_SM/.hx-spool-moved" || rc=$?
  if ((rc != 0)); then
    sandbox_exec test -d "$HX_SPOOL" && return "$HX_BLOCKED"
    return 2
  fi
  lc_events | grep -E -m 12 'hx-spool-moved|notebook-agent' || true
  hx_recorded 5 "Tamper .*\.notebook-agent" ||
    { echo "renamed to .hx-spool-moved: no Tamper record in 5 s"; return 1; }
  return "$HX_RECORDED"
}

# With the spool renamed away, its name is free: a directory of that name made by ec2-user must be
# audited like any other (only the spool's own inode is excluded).
hx_fake_spool() {
  local rc=0
  lc_as_terminal "mkdir $HX_SPOOL && printf 'exfil\n' >$HX_SPOOL/hidden-in-fake-spool.csv && ls -la $HX_SPOOL" || rc=$?
  ((rc == 0)) || { sandbox_exec stat -c '%U %a %n' "$HX_SPOOL"; return "$HX_BLOCKED"; }
  hx_recorded 5 "hidden-in-fake-spool\.csv" ||
    { echo "ec2-user's own .notebook-agent/hidden-in-fake-spool.csv: no event in 5 s"; return 1; }
  return "$HX_RECORDED"
}

# --- the watched tree ---------------------------------------------------------------------------------
hx_tree_rename() {
  hx_denied_both "mv $LC_SM $LC_HOME/SageMaker-moved" || return 1
  sandbox_exec mountpoint -q "$LC_SM" || return 2
  echo "mv of the watched tree: EBUSY (a mount point, like the notebook's EBS volume)"
  return "$HX_BLOCKED"
}

# Symlinks and hard links to files ec2-user cannot read: the agent must not hash or ship what is
# behind them (it opens below the tree with O_NOFOLLOW and refuses anything but regular files).
HX_ROOT_SECRET=hx-root-only-$RANDOM$RANDOM
hx_symlinks() {
  local sha json
  sandbox_exec sh -c "umask 077 && mkdir -p /root/hx-dir-$HX_ROOT_SECRET &&
    printf '%s\n' $HX_ROOT_SECRET >/root/hx-secret.txt && cp /root/hx-secret.txt /etc/hx-secret.txt" || return 2
  sha=$(sandbox_exec sha256sum /root/hx-secret.txt | cut -d' ' -f1)
  lc_as_terminal "cd $LC_SM && ln -s /etc/hx-secret.txt link-to-secret && ln -s /root link-to-root-dir &&
    ln -s /etc/notebook-agent link-to-agent-conf && mkdir swapdir && ls -la link-to-secret" || return 2
  # A hard link to a root-only file (fs.protected_hardlinks must refuse it).
  hx_denied_both "ln /etc/hx-secret.txt $LC_SM/hardlink-to-secret" || echo "NOTE: hard link to a root-only file allowed"
  # Race: swap a regular file for a symlink to the secret while the agent hashes it.
  lc_as_terminal "cd $LC_SM/swapdir && for i in \$(seq 300); do
      printf 'decoy %s\n' \$i >f.tmp && mv -f f.tmp target && ln -sfn /etc/hx-secret.txt target; done; ls -la target" >/dev/null
  hx_recorded 10 "Create +$LC_SM/link-to-secret " "Create +$LC_SM/link-to-root-dir " || return 1
  json=$(lc_events_json) || return 2
  if grep -q "$sha" <<<"$json"; then echo "the secret's sha256 was shipped"; return 1; fi
  if grep -q "$HX_ROOT_SECRET" <<<"$json"; then echo "a name or content from /root was shipped"; return 1; fi
  python3 -c '
import json, sys
for e in json.load(sys.stdin)["events"]:
    r = json.loads(e["message"])
    f = r.get("file") or {}
    if f.get("name") == "link-to-secret":
        print("link-to-secret:", f.get("type"), "hashes:", f.get("hashes"), r.get("unmapped", {}).get("file"))
        assert f.get("type") == "Symbolic Link" and not f.get("hashes"), "symlink hashed"
' <<<"$json" || return 1
  echo "symlink creations recorded, never followed: no hash or name of the root-only file shipped"
  return "$HX_BLOCKED"
}

# Names chosen to break the one-JSON-object-per-line format, Logs Insights field extraction, or
# the display: newline, quotes, backslashes, a forged JSON tail, terminal escapes, invalid UTF-8,
# the 255-byte maximum.
hx_names() {
  sandbox_exec_as ec2-user python3 - "$LC_SM/hx-names" <<'PY' || return 2
import os, sys
d = sys.argv[1]
os.makedirs(d, exist_ok=True)
names = [b'a\nb', b'quote"brace}{', b'back\\slash\\', b'forged","class_uid":2003,"x":"',
         b'\x1b[31mred\x1b[0m', b'bad-utf8-\xff\xfe', b'| filter @message like "x" | stats count(*)',
         b'tab\there\r', b'L' * 255, 'ünï-çødé-🙂'.encode()]
for n in names:
    with open(os.path.join(os.fsencode(d), n), 'wb') as f:
        f.write(b'x')
print(len(names), "files created")
PY
  local t0=$SECONDS
  while :; do
    lc_events_json >"$INFRA_STATE/hx-events.json" || return 2
    if python3 - "$LC_SM/hx-names" "$INFRA_STATE/hx-events.json" <<'PY'; then break; fi
import json, os, sys
d = os.fsencode(sys.argv[1]) + b'/'
want = {b'a\nb', b'quote"brace}{', b'back\\slash\\', b'forged","class_uid":2003,"x":"',
        b'\x1b[31mred\x1b[0m', b'bad-utf8-\xff\xfe', b'| filter @message like "x" | stats count(*)',
        b'tab\there\r', b'L' * 255, 'ünï-çødé-🙂'.encode()}
seen = set()
for e in json.load(open(sys.argv[2]))["events"]:
    m = e["message"]
    assert "\n" not in m, "an event spans lines"
    r = json.loads(m)
    assert r["class_uid"] in (1001, 1008, 2003, 6002), r["class_uid"]
    f = r.get("file") or {}
    hexp = (r.get("unmapped", {}).get("file") or {}).get("path_hex")
    raw = bytes.fromhex(hexp) if hexp else f.get("path", "").encode()
    if raw.startswith(d) and r["class_uid"] == 1001 and r["activity_name"] == "Create":
        seen.add(raw[len(d):])
missing = want - seen
print("exact paths recovered: %d of %d" % (len(want & seen), len(want)))
for n in missing:
    print("missing:", n)
sys.exit(1 if missing else 0)
PY
    ((SECONDS - t0 < 10)) || return 1
    sleep 0.5
  done
  return "$HX_RECORDED"
}

# Hiding a file where the default configuration does not look: an excluded name (.ipynb_checkpoints).
hx_excluded_dir() {
  lc_as_terminal "mkdir -p $LC_SM/.ipynb_checkpoints && printf 'exfil\n' >$LC_SM/.ipynb_checkpoints/hidden-data.csv" || return 2
  hx_recorded 5 "hidden-data\.csv" || { echo ".ipynb_checkpoints/hidden-data.csv: no event in 5 s"; return 1; }
  return "$HX_RECORDED"
}

# --- who did it -------------------------------------------------------------------------------------
# ec2-user acts through processes that exit at once (touch, cp, rm), a spoofed argv[0]
# (`exec -a jupyter cp`), a copied and renamed binary, a write hidden in a flood of 10,000
# short-lived processes, a write from inside a user namespace (`unshare -r`, when the kernel
# allows it) and a secret on a command line. Each record must name the real process and
# ec2-user — or say `unknown: <why>` — never the spoofed name, another process or another user,
# and the secret must not reach CloudWatch (docs/THREAT-MODEL.md T24–T26).
hx_evade_attribution() {
  local tag=evade-$RANDOM who='\[[0-9]+\] ec2-user' unknown='\? \(unknown: ' userns=yes sh_by
  # sh writes and exits at once. With the process-events connector the agent has its exec on
  # record and must name it; without it (the sandbox: another network namespace, no CAP_NET_ADMIN,
  # docs/WATCHER-DESIGN.md) /proc is read when the event is, and on a loaded machine (CI's 2 cores
  # running 10,000 /bin/true) sh can be gone by then: "unknown: process N exited before it could
  # be read", never another process (T24).
  sh_by="sh$who"
  if sandbox_exec notebook-agent status 2>&1 | grep -qF '/proc at event time only'; then
    sh_by="(sh$who|${unknown}process [0-9]+ exited before it could be read)"
    echo "the connector is refused here (status: /proc at event time only): sh may be unknown with the exit named"
  fi
  lc_as_terminal "cd $LC_SM && touch $tag-a.txt && cp $tag-a.txt $tag-b.txt && rm -f $tag-a.txt &&
    sh -c 'echo x >\$0' $tag-c.txt --password hx-cmdline-$HX_SECRET &&
    (exec -a jupyter cp $tag-b.txt $tag-d.txt) &&
    cp /usr/bin/touch /tmp/pdf-viewer && /tmp/pdf-viewer $tag-e.txt &&
    { for i in \$(seq 10000); do /bin/true; done & sleep 1; sh -c 'echo x >\$0' $tag-f.txt; wait; }" || return 2
  local -a expect=(
    "Create +$LC_SM/$tag-a\.txt .* by (touch$who|$unknown)"
    "Create +$LC_SM/$tag-b\.txt .* by (cp$who|$unknown)"
    "Delete +$LC_SM/$tag-a\.txt .* by (rm$who|$unknown)"
    "Create +$LC_SM/$tag-c\.txt .* by $sh_by"
    "Create +$LC_SM/$tag-d\.txt .* by (cp$who|$unknown)"
    "Create +$LC_SM/$tag-e\.txt .* by (pdf-viewer$who|$unknown)"
    "Create +$LC_SM/$tag-f\.txt .* by $sh_by"
  )
  if lc_as_terminal "unshare -r true" >/dev/null 2>&1; then
    lc_as_terminal "cd $LC_SM && unshare -r sh -c 'echo x >\$0' $tag-g.txt" || return 2
    expect+=("Create +$LC_SM/$tag-g\.txt .* by (sh$who|$unknown)")
  else
    userns=no
    echo "user namespaces are not available to ec2-user here: the unshare attempt is not made"
  fi
  hx_recorded 20 "${expect[@]}" || return 1
  if lc_events_json | grep -F "hx-cmdline-"; then
    echo "the secret on sh's command line reached CloudWatch"; return 1
  fi
  echo "${#expect[@]} records name the real process and ec2-user (or unknown with why; unshare: $userns); the secret is not in moto"
  return "$HX_RECORDED"
}

# --- the proxy password ---------------------------------------------------------------------------------
# It must be in the root-only config (and in the files the user's tools read to use the proxy), and
# nowhere the agent reports: the journal, status, apply's output, CloudWatch, the spool, its state.
hx_secret_nowhere() {
  local where=() rc=0
  sandbox_exec grep -qF "$HX_SECRET" /etc/notebook-agent/config.json || { echo "the config lacks the password"; return 2; }
  # Every field (-o json), not only MESSAGE: tracing's structured fields are journal fields.
  sandbox_exec journalctl --no-pager -o json -u notebook-agent.service >"$INFRA_STATE/hx-journal.txt" || return 2
  sandbox_exec journalctl --no-pager -o json -t notebook-agent >>"$INFRA_STATE/hx-journal.txt" || true
  grep -qF "$HX_SECRET" "$INFRA_STATE/hx-journal.txt" && where+=("journal")
  sandbox_exec notebook-agent status 2>&1 | grep -qF "$HX_SECRET" && where+=("status")
  sandbox_exec notebook-agent status --json 2>&1 | grep -qF "$HX_SECRET" && where+=("status --json")
  sandbox_exec notebook-agent apply 2>&1 | grep -qF "$HX_SECRET" && where+=("apply output")
  sandbox_exec notebook-agent apply --dry-run 2>&1 | grep -qF "$HX_SECRET" && where+=("apply --dry-run output")
  grep -qF "$HX_SECRET" "$INFRA_STATE/on-start.log" && where+=("on-start output")
  lc_events_json | grep -qF "$HX_SECRET" && where+=("CloudWatch (moto)")
  sandbox_exec grep -rlaF "$HX_SECRET" "$HX_SPOOL" /var/lib/notebook-agent && where+=("spool or /var/lib/notebook-agent")
  # Passwords the generated files escape (profile.d '\'', systemd %% and \", JSON/YAML \" and \\)
  # and conda channel credentials (u:pw@ and a /t/<token>/ path): the dry run prints the files'
  # text, so it must hide every encoding. Each secret holds HXKRIT, which no escaping changes.
  local c n=0 cfg out
  for c in "'" '"' '%' '%5C' '$' "'\"%%5C\$"; do
    n=$((n + 1))
    cfg=$(C=$c python3 -c 'import json, os; c = os.environ["C"]
pw = lambda i: "p" + c + "HXKRIT" + str(i) + c + "w"
print(json.dumps({"proxy": {"http": "http://nbuser:%s@proxy.corp:3128" % pw(1), "no_proxy": [".corp"]},
  "pip": {"index_url": "https://tok:%s@mirror.corp/simple" % pw(2),
          "conda_channels": ["https://cu:%s@conda.corp/main" % pw(3), "https://conda.corp/t/%s/main" % pw(4)]}}))') || return 2
    sandbox_exec sh -c 'umask 077; cat >/root/hx-nasty.json' <<<"$cfg" || return 2
    out=$(sandbox_exec notebook-agent --config /root/hx-nasty.json apply --dry-run 2>&1)
    grep -q 'REDACTED' <<<"$out" || { echo "nasty password $n ($c): the dry run shows no redaction: $out"; return 2; }
    grep -qF HXKRIT <<<"$out" && where+=("apply --dry-run output (password with $c: $(grep -oE ".{0,30}HXKRIT.{0,10}" <<<"$out" | head -1))")
  done
  sandbox_exec rm -f /root/hx-nasty.json
  echo "looked in: journal ($(wc -l <"$INFRA_STATE/hx-journal.txt") lines), status, status --json, apply, apply --dry-run (also with passwords holding ' \" % \\ \$ and conda channel credentials), on-start output, moto, $HX_SPOOL, /var/lib/notebook-agent (daemon.json, shipper.json, state.json, backups)"
  ((${#where[@]} == 0)) || { echo "the password is in: ${where[*]}"; rc=1; }
  return "$rc"
}

# The files ec2-user can read that carry the password. The user's own tools must authenticate to the
# proxy, so some must: this lists them for docs/THREAT-MODEL.md and fails only on a file that is
# not meant to have it.
HX_SECRET_EXPECTED='^(/etc/pip\.conf|/home/ec2-user/(anaconda3(/envs/[^/]+)?|\.pip|\.config/pip)/pip\.conf|/etc/profile\.d/notebook-agent-proxy\.sh|/etc/gitconfig|/etc/conda/condarc\.d/notebook-agent-proxy\.yml|/etc/systemd/system/jupyter-server\.service\.d/[^/]+\.conf|/etc/bash\.bashrc|/etc/environment|/home/ec2-user/\.ipython/profile_default/startup/[^/]+\.py|/proc/[0-9]+/environ)$'
hx_secret_readable() {
  local files
  files=$(lc_as_terminal "grep -rlsF '$HX_SECRET' /etc /usr/local /opt /var/lib /run /home/ec2-user --exclude-dir=SageMaker 2>/dev/null
    for e in /proc/[0-9]*/environ; do grep -qsF '$HX_SECRET' \$e && echo \$e; done; true")
  echo "files ec2-user can read that contain the proxy password:"
  printf '  %s\n' "${files:-none}"
  echo "$files" >"$INFRA_STATE/hx-secret-readable.txt"
  if grep -vE "$HX_SECRET_EXPECTED" <<<"$files" | grep -q .; then
    echo "unexpected:"; grep -vE "$HX_SECRET_EXPECTED" <<<"$files"; return 1
  fi
  [[ -z $files ]] && return "$HX_BLOCKED"
  echo "$(grep -c . <<<"$files") files readable by ec2-user hold it (pip.conf, profile.d, gitconfig, condarc, drop-in, IPython, environ)"
  return 1   # readable by design: a known gap (docs/THREAT-MODEL.md)
}

# --- the flood ------------------------------------------------------------------------------------------
# HX_FLOOD_EVENTS inotify events from create/write/close/delete cycles of small files (IN_CREATE,
# IN_MODIFY, IN_CLOSE_WRITE, IN_DELETE: 4 counted per cycle, IN_OPEN besides), as ec2-user, with one file of a unique name created half-way and kept. That file must be
# recorded: as its own Create, or (if the spool filled and dropped it) covered by a "spool full"
# record. Read from the spool, not moto: moto (Python, in memory) cannot absorb a million events in
# the time this suite may take, so moto is stopped during the flood and the spool is searched.
HX_FLOOD_NAME=hx-needle-$RANDOM$RANDOM.txt
hx_flood() {
  local cycles=$((HX_FLOOD_EVENTS / 4)) t0=$SECONDS out
  infra_moto_stop
  out=$(sandbox_exec_as ec2-user python3 - "$LC_SM/hx-flood" "$cycles" "$LC_SM/$HX_FLOOD_NAME" <<'PY'
import os, sys, time
d, cycles, needle = sys.argv[1], int(sys.argv[2]), sys.argv[3]
os.makedirs(d, exist_ok=True)
t = time.time()
names = [os.path.join(d, "f%03d" % i) for i in range(64)]
for i in range(cycles):
    p = names[i % 64]
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)  # IN_CREATE, IN_OPEN
    os.write(fd, b"x")                                               # IN_MODIFY
    os.close(fd)                                                     # IN_CLOSE_WRITE
    os.unlink(p)                                                     # IN_DELETE
    if i == cycles // 2:
        with open(needle, "w") as f:
            f.write("hidden in the flood\n")
print("%d create/write/close/delete cycles (%d inotify events) in %.1f s" % (cycles, 4 * cycles, time.time() - t))
PY
  ) || { echo "$out"; return 2; }
  echo "$out"
  # The agent works through what it was told, rescans after an overflow, and spools.
  local i found=''
  for ((i = 0; i < 120; i++)); do
    found=$(sandbox_exec sh -c "grep -la -F '$HX_FLOOD_NAME' $HX_SPOOL/seg-*.log 2>/dev/null | head -n1") || true
    [[ -z $found ]] || break
    sleep 1
  done
  sandbox_exec cat /var/lib/notebook-agent/daemon.json 2>/dev/null | head -c 600; echo
  sandbox_exec sh -c "ls -la $HX_SPOOL; du -sh $HX_SPOOL"
  local rescans drops
  rescans=$(sandbox_exec sh -c "grep -aoc '\"activity_name\":\"Rescan\"' $HX_SPOOL/seg-*.log | awk -F: '{ s += \$NF } END { print s + 0 }'")
  drops=$(sandbox_exec sh -c "grep -aoc '\"activity_name\":\"Drop\"' $HX_SPOOL/seg-*.log | awk -F: '{ s += \$NF } END { print s + 0 }'")
  echo "in the spool: $rescans rescan records, $drops spool-full records; flood took $((SECONDS - t0)) s"
  # moto stays down: the last attempt, and shipping the flood to it would only load the machine.
  if [[ -n $found ]]; then
    local src
    src=$(sandbox_exec sh -c "grep -aoE '$HX_FLOOD_NAME\".{0,900}\"source\":\"[a-z_]+\"' $found" |
      grep -o '"source":"[a-z_]*"' | head -n1) || true
    echo "$HX_FLOOD_NAME is in the spool as a Create record ($src) in ${found##*/}"
    return "$HX_RECORDED"
  fi
  ((drops > 0)) && { echo "not found itself, but spool-full records cover the flood"; return "$HX_RECORDED"; }
  echo "$HX_FLOOD_NAME is not in the spool and nothing says events were dropped"
  return 1
}

# The next step of G1/G2: a spool segment of the user's making in that directory, with a frame
# that passes the CRC. At the agent's next start (every notebook start; here a restart by root)
# the directory is taken over: its records must not be shipped as the agent's, and the take-over
# must be recorded.
hx_forge_spool() {
  local rc=0
  if sandbox_exec test -d "$HX_SPOOL" && sandbox_exec test -O "$HX_SPOOL"; then
    echo "the spool is still the agent's"; return "$HX_BLOCKED"
  fi
  sandbox_exec_as ec2-user python3 - "$HX_SPOOL" <<'PY' || rc=$?
import json, struct, sys, time, zlib
seq, t = 999999, int(time.time() * 1000)
p = json.dumps({"class_uid": 1001, "class_name": "File System Activity", "category_uid": 1,
    "activity_id": 4, "activity_name": "Delete", "type_uid": 100104, "time": t, "severity_id": 1,
    "message": "FORGED-BY-EC2-USER", "metadata": {"version": "1.3.0", "product": {"name": "notebook-agent"},
    "uid": "forged", "sequence": seq}, "file": {"path": "/home/ec2-user/SageMaker/forged.txt"}}).encode()
body = struct.pack("<IQq", len(p), seq, t) + p
frame = b"\xf7SP\x01" + struct.pack("<II", len(p), zlib.crc32(body)) + struct.pack("<Qq", seq, t) + p
open("%s/seg-%020d.log" % (sys.argv[1], seq), "wb").write(frame)
print("forged segment written")
PY
  ((rc == 0)) || return "$HX_BLOCKED"
  sandbox_exec systemctl restart notebook-agent.service || return 2
  hx_recorded 10 "Tamper .*\.notebook-agent DirOwner" || return 1
  sleep 1
  if lc_events_json | grep -q FORGED-BY-EC2-USER; then
    echo "the take-over is recorded as tampering, but the forged record was shipped as the agent's"; return 1
  fi
  lc_events | grep -E 'Tamper .*ForeignSegment' || { echo "no ForeignSegment record"; return 1; }
  echo "take-over recorded (DirOwner, ForeignSegment); the forged record was not shipped"
  return "$HX_RECORDED"
}

# Put a renamed spool back and restart the agent, so the flood starts from a clean spool.
hx_spool_restore() {
  if sandbox_exec test -d "$LC_SM/.hx-spool-moved"; then
    sandbox_exec sh -c "rm -rf $HX_SPOOL.hx-old; [ ! -e $HX_SPOOL ] || mv $HX_SPOOL $HX_SPOOL.hx-old; mv $LC_SM/.hx-spool-moved $HX_SPOOL" || return 1
  fi
  sandbox_exec systemctl restart notebook-agent.service && sleep 1 && sandbox_exec systemctl is-active notebook-agent.service
}

# Fill the spool: keep flooding (moto is still down, nothing drains) until the spool reaches
# audit.spool_max_bytes. What does not fit must be counted and reported, not lost silently; the
# "spool full" record itself is stored when room returns (tests/watch.rs covers that part).
hx_fill_spool() {
  local i dropped=0 st
  for ((i = 0; i < 4; i++)); do
    sandbox_exec_as ec2-user python3 -c '
import os, sys
d = sys.argv[1]
for i in range(300000):
    p = os.path.join(d, "g%02d" % (i % 64))
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644); os.write(fd, b"x"); os.close(fd); os.unlink(p)
' "$LC_SM/hx-flood" || return 2
    sleep 3
    dropped=$(sandbox_exec sed -n 's/^ *"events_dropped": *\([0-9]*\).*/\1/p' /var/lib/notebook-agent/daemon.json)
    echo "burst $((i + 1)): $(sandbox_exec du -sh "$HX_SPOOL" | cut -f1) spooled, ${dropped:-?} dropped"
    ((${dropped:-0} == 0)) || break
  done
  ((${dropped:-0} > 0)) || { echo "the spool never filled"; return 2; }
  st=$(sandbox_exec notebook-agent status 2>&1) || true
  echo "$st" | grep -E '^(Audit daemon|Shipping)'
  grep -qE "Audit daemon .* [1-9][0-9]* dropped" <<<"$st" || return 1
  echo "spool full: $dropped events counted as dropped, shown by status"
  return "$HX_RECORDED"
}

# --- the SageMaker volume filled (x-sandbox) ----------------------------------------------------------
# The volume is its own ext4 filesystem (lib/sandbox.sh), as on a notebook, and the spool lives on it
# ($HX_SPOOL). ec2-user fills it (fallocate the bulk, then dd to ENOSPC) and then renames, deletes and
# creates files. The agent writes as root, into ext4's root-reserved blocks (mkfs's default 5%): the
# changes made while the volume is full must reach moto; if the spool could not take them they must be
# counted as dropped (status), never lost silently.
hx_fill_volume() {
  local pid out dropped rc=0 i
  pid=$(lc_agent_pid)
  tune2fs -l "$SANDBOX_VOLUME" | grep -E '^(Block count|Reserved block count|Block size):' | tr -s ' ' | paste -sd ';'
  lc_as_terminal "cd $LC_SM && echo a >hx-full-before.txt && echo b >hx-full-gone.txt" >/dev/null || return 2
  # shellcheck disable=SC2016  # expanded by the shell inside
  out=$(sandbox_exec_as ec2-user sh -c 'cd "$1" || exit 2
    avail=$(df -B1 --output=avail . | tail -n1)
    fallocate -l $((avail - 8 * 1048576)) hx-fill.bin || exit 2
    dd if=/dev/zero of=hx-fill-tail.bin bs=64k 2>&1 | grep -o "No space left on device" | head -n1
    echo "as ec2-user: $(df -h --output=used,avail . | tail -n1 | tr -s " ") used/avail after the fill"
    mv hx-full-before.txt hx-full-renamed.txt && rm hx-full-gone.txt && echo "rename and delete worked"
    echo c >hx-full-new.txt 2>/dev/null && echo "a new 2-byte file was written" || echo "writing a new file failed (ENOSPC)"' sh "$LC_SM") || rc=$?
  echo "$out"
  ((rc == 0)) && grep -q 'No space left on device' <<<"$out" || { echo "the volume did not fill (exit $rc)"; return 2; }
  hx_recorded 20 "Create +$LC_SM/hx-fill\.bin " "Rename +$LC_SM/hx-full-before\.txt -> $LC_SM/hx-full-renamed\.txt" \
    "Delete +$LC_SM/hx-full-gone\.txt " || rc=1
  hx_agent_alive_as "$pid" || rc=1
  dropped=$(sandbox_exec sed -n 's/^ *"events_dropped": *\([0-9]*\).*/\1/p' /var/lib/notebook-agent/daemon.json)
  echo "the spool: $(sandbox_exec du -sh "$HX_SPOOL" | cut -f1), ${dropped:-?} events dropped"
  # Room again for the flood and the spool fill that follow (the hasher may still hold hx-fill.bin).
  lc_as_terminal "rm -f $LC_SM/hx-fill.bin $LC_SM/hx-fill-tail.bin" >/dev/null
  for ((i = 0; i < 60; i++)); do
    (($(sandbox_exec df -B1M --output=avail "$LC_SM" | tail -n1) > 700)) && break
    sleep 0.5
  done
  if ((rc == 0)); then echo "the changes made on a full volume are in moto; the agent kept running"; return "$HX_RECORDED"; fi
  ((${dropped:-0} == 0)) || { echo "not shipped, but $dropped events are counted as dropped"; return "$HX_RECORDED"; }
  return 1
}

# --- the scenario ----------------------------------------------------------------------------------------
lc_step "a new notebook instance with the lifecycle configuration; the proxy URL carries a password"
lc_new_instance
check hx-render-lifecycle-config lc_render
check hx-platform-imds-dropin lc_platform
check hx-docker-socket hx_docker_socket_setup
check hx-baseline-root-before-apply hx_baseline
check hx-on-create-exit-0 lc_lifecycle_script on-create
check hx-on-start-exit-0 lc_lifecycle_script on-start >/dev/null
check hx-status-exit-0 lc_status

lc_step "as ec2-user: regain root"
hx sudo hx_sudo
hx sudoers-every-path hx_sudoers
hx su-root hx_su
hx pkexec hx_pkexec
hx docker-socket hx_docker
hx group-edits hx_groups
hx setuid-programs hx_setuid

lc_step "as ec2-user: stop, kill, ptrace the agent"
hx stop-agent hx_stop_agent
hx kill-agent hx_kill_agent
hx ptrace-agent hx_ptrace_agent

lc_step "as ec2-user: the agent's config, binary, unit, environment module, .pth and pip.conf files"
hx edit-config hx_config
hx replace-binary hx_files_immutable /usr/local/bin/notebook-agent
hx edit-unit hx_unit
hx edit-environment-module hx_files_immutable /usr/local/lib/notebook-agent/python/sagemaker_environment.py
hx replace-pth-file hx_pth
hx user-pip-conf hx_user_pip_conf

lc_step "as ec2-user: the watched tree, symlinks, crafted names, excluded names"
hx rename-watched-tree hx_tree_rename
hx symlink-to-root-only-file hx_symlinks
hx crafted-file-names hx_names
hx hide-in-excluded-dir hx_excluded_dir
hx evade-attribution hx_evade_attribution

lc_step "the proxy password"
hx proxy-password-not-reported hx_secret_nowhere
hx proxy-password-user-readable hx_secret_readable

lc_step "as ec2-user: the spool and the snapshot"
hx spool-delete hx_spool_delete
hx spool-rename hx_spool_rename
hx hide-in-fake-spool-dir hx_fake_spool
hx forge-spool-records hx_forge_spool
check hx-spool-restore hx_spool_restore

check hx-status-after-attacks lc_status

lc_step "as ec2-user: fill the SageMaker volume (its own ext4 filesystem), then change files"
hx fill-sagemaker-volume hx_fill_volume

lc_step "as ec2-user: hide one change in a flood of $HX_FLOOD_EVENTS inotify events (the last attempt: moto is stopped)"
hx flood-hides-a-change hx_flood
hx fill-spool hx_fill_spool

lc_step "hostile attempts and outcomes ($((SECONDS - HX_T0)) s)"
hx_table

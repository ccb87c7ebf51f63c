# shellcheck shell=bash
# The infrastructure a notebook talks to, for the booted sandbox: real programs on addresses
# this machine owns, nothing else.
#
#   host                                             sandbox (its own network namespace)
#   ----                                             -------
#   nbv<N>  10.213.<N>.1/30  <--- veth pair --->     eth0  10.213.<N>.2/30   (no default route)
#     :3128  squid            the proxy (only allows the sandbox to pypi.mirror.internal:8080)
#     :4566  moto_server      CloudWatch Logs
#     :80    fake-imds.py     TEST FIXTURE: IMDSv2 token, role credentials, network/interfaces
#     :8000  http.server      the release artifact (dist/), like the S3 bucket behind a VPC endpoint
#   lo      127.1.<N>.1
#     :8080  pypiserver       the mirror: not on the veth, so the sandbox reaches it only via squid
#                             (squid's hosts_file maps pypi.mirror.internal to it)
#
# Started only by the scenarios that need them (TEST FIXTURES in fixtures/):
#   nbv<N>  :4567  cloudwatch-deny-proxy.py  moto behind a switch that answers AccessDenied to
#                                            PutLogEvents (degraded)
#           :8090  fake-codeartifact.py      the CodeArtifact API (codeartifact)
#   lo      :8081  fake-codeartifact.py      the repository: pypiserver behind the token check, via
#                                            squid as codeartifact.mirror.internal:8081
#
# IPv4 forwarding is off on nbv<N> (whatever the host's global setting) and IPv6 is off on both
# ends, so the sandbox reaches these services and nothing else. <N> is a free slot 0..63, taken by
# an atomic mkdir under /run, so parallel runs do not collide.
#
#   infra_setup           venvs and wheels (cached; the only step that may use the registries)
#   infra_net_up          netns + veth; sets INFRA_* (SANDBOX_NETNS_PATH for sandbox_boot)
#   infra_services_up     starts every service and waits until each answers
#   infra_moto_stop / infra_moto_start
#   infra_cloudwatch_proxy_start, infra_cloudwatch_mode pass|deny
#   infra_codeartifact_start TOKEN_SECS, infra_codeartifact_mode normal|denied|unreachable
#   infra_down            stops what infra_* started (by pid), deletes the netns, frees the slot
# Sourced by vm-tests/run; needs NB_CACHE_DIR (lib/rootfs.sh).

_INFRA_LIB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
_INFRA_REPO=$(cd "$_INFRA_LIB_DIR/../.." && pwd)

# The mirror's server, pinned (with what `pip wheel` needs to build the fixture wheels).
INFRA_PYPI_REQUIREMENTS='pypiserver==2.4.2
defusedxml==0.7.1
importlib_resources==7.1.0
packaging==26.3
setuptools==75.8.0
wheel==0.45.1'
INFRA_MIRROR_HOST=pypi.mirror.internal
INFRA_MIRROR_PORT=8080
INFRA_SQUID_PORT=3128
INFRA_MOTO_PORT=4566
INFRA_IMDS_PORT=80
INFRA_DIST_PORT=8000
INFRA_CW_PROXY_PORT=4567
INFRA_CA_API_PORT=8090
INFRA_CA_REPO_HOST=codeartifact.mirror.internal
INFRA_CA_REPO_PORT=8081
INFRA_LOCK_ROOT=/run/notebook-agent-vmtests

INFRA_IDX='' INFRA_NETNS='' INFRA_HOST_IF='' INFRA_HOST_ADDR='' INFRA_GUEST_ADDR='' INFRA_MIRROR_ADDR=''
INFRA_STATE='' INFRA_MOTO_BIN='' INFRA_PYPI_VENV='' INFRA_WHEELS='' INFRA_DIST_DIR=''
# shellcheck disable=SC2034  # read by lib/sandbox.sh
SANDBOX_NETNS_PATH=''
declare -A INFRA_PIDS=()

_infra_log() { printf '[infra] %s\n' "$*" >&2; }

# infra_setup: moto + awscli venv (tests/moto.sh), pypiserver venv, fixture wheels. Idempotent;
# silent and offline when cached.
infra_setup() {
  local hash wheels_key
  INFRA_MOTO_BIN=$(NOTEBOOK_AGENT_DEV_CACHE=$NB_CACHE_DIR "$_INFRA_REPO/tests/moto.sh")
  hash=$(printf '%s\n' "$INFRA_PYPI_REQUIREMENTS" | sha256sum | cut -c1-16)
  INFRA_PYPI_VENV=$NB_CACHE_DIR/venv-pypiserver-$hash
  if [[ ! -f $INFRA_PYPI_VENV/.complete ]]; then
    _infra_log "installing pypiserver into $INFRA_PYPI_VENV"
    rm -rf "$INFRA_PYPI_VENV"
    python3 -m venv "$INFRA_PYPI_VENV" >&2
    printf '%s\n' "$INFRA_PYPI_REQUIREMENTS" >"$INFRA_PYPI_VENV/requirements.txt"
    "$INFRA_PYPI_VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
      -r "$INFRA_PYPI_VENV/requirements.txt" >&2
    touch "$INFRA_PYPI_VENV/.complete"
  fi
  # Wheels of the fixture packages, built offline; keyed by their sources.
  wheels_key=$( (cd "$_INFRA_REPO/vm-tests/fixtures/mirror-packages" &&
    find . -type f -print0 | sort -z | xargs -0 sha256sum; echo "$hash") | sha256sum | cut -c1-16)
  INFRA_WHEELS=$NB_CACHE_DIR/mirror-wheels-$wheels_key
  if [[ ! -f $INFRA_WHEELS/.complete ]]; then
    local tmp pkg
    rm -rf "$INFRA_WHEELS"; tmp=$(mktemp -d)
    mkdir -p "$INFRA_WHEELS"
    for pkg in "$_INFRA_REPO"/vm-tests/fixtures/mirror-packages/*/; do
      cp -r "$pkg" "$tmp/"
      "$INFRA_PYPI_VENV/bin/python" -m pip wheel --quiet --disable-pip-version-check --no-deps \
        --no-build-isolation --no-index -w "$INFRA_WHEELS" "$tmp/$(basename "$pkg")" >&2
    done
    rm -rf "$tmp"
    touch "$INFRA_WHEELS/.complete"
  fi
}

# infra_net_up: a network namespace with one veth to the host, on a free 10.213.<N>.0/30.
infra_net_up() {
  local i
  install -d -m 0755 "$INFRA_LOCK_ROOT"
  for ((i = 0; i < 64; i++)); do
    if [[ -d $INFRA_LOCK_ROOT/net-$i ]]; then
      # A slot whose owner died (kill -9) is reclaimed.
      local owner
      owner=$(cat "$INFRA_LOCK_ROOT/net-$i/owner" 2>/dev/null) || owner=''
      if [[ -n $owner ]] && ! kill -0 "$owner" 2>/dev/null; then
        _infra_log "reclaiming slot $i of dead pid $owner"
        _infra_release "$i"
      fi
    fi
    if mkdir "$INFRA_LOCK_ROOT/net-$i" 2>/dev/null; then INFRA_IDX=$i; break; fi
  done
  [[ -n $INFRA_IDX ]] || { _infra_log "no free network slot under $INFRA_LOCK_ROOT"; return 1; }
  echo "$$" >"$INFRA_LOCK_ROOT/net-$INFRA_IDX/owner"
  INFRA_STATE=$INFRA_LOCK_ROOT/net-$INFRA_IDX
  INFRA_NETNS=nb-vmtest-$INFRA_IDX
  INFRA_HOST_IF=nbv$INFRA_IDX
  INFRA_HOST_ADDR=10.213.$INFRA_IDX.1
  INFRA_GUEST_ADDR=10.213.$INFRA_IDX.2
  INFRA_MIRROR_ADDR=127.1.$INFRA_IDX.1
  # Leftovers of a crashed run in this slot.
  ip netns del "$INFRA_NETNS" 2>/dev/null || true
  ip link del "$INFRA_HOST_IF" 2>/dev/null || true
  ip netns add "$INFRA_NETNS"
  ip netns exec "$INFRA_NETNS" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
  ip link add "$INFRA_HOST_IF" type veth peer name eth0 netns "$INFRA_NETNS"
  sysctl -qw "net.ipv6.conf.$INFRA_HOST_IF.disable_ipv6=1" "net.ipv4.conf.$INFRA_HOST_IF.forwarding=0"
  ip addr add "$INFRA_HOST_ADDR/30" dev "$INFRA_HOST_IF"
  ip link set "$INFRA_HOST_IF" up
  ip -n "$INFRA_NETNS" addr add "$INFRA_GUEST_ADDR/30" dev eth0
  ip -n "$INFRA_NETNS" link set lo up
  ip -n "$INFRA_NETNS" link set eth0 up
  SANDBOX_NETNS_PATH=/run/netns/$INFRA_NETNS
}

_infra_release() {  # $1 = slot: delete its netns/veth (if any) and the slot dir
  ip netns del "nb-vmtest-$1" 2>/dev/null || true
  ip link del "nbv$1" 2>/dev/null || true
  rm -rf --one-file-system -- "${INFRA_LOCK_ROOT:?}/net-$1"
}

# _infra_start NAME LOG CMD...: in its own session (so its helpers die with it), remembered by pid.
_infra_start() {
  local name=$1 log=$2; shift 2
  setsid "$@" >"$log" 2>&1 </dev/null &
  INFRA_PIDS[$name]=$!
  _infra_save
}

# The pids, for infra_attach (vm-tests/run --stop of a sandbox left by --keep).
_infra_save() {
  local n
  for n in "${!INFRA_PIDS[@]}"; do echo "$n ${INFRA_PIDS[$n]}"; done >"$INFRA_STATE/pids"
}

# infra_attach SLOT: take over the services of a run that exited (--keep), to stop them.
infra_attach() {
  local n p
  INFRA_IDX=$1 INFRA_STATE=$INFRA_LOCK_ROOT/net-$1
  INFRA_PIDS=()
  [[ -f $INFRA_STATE/pids ]] || return 0
  while read -r n p; do INFRA_PIDS[$n]=$p; done <"$INFRA_STATE/pids"
}

# infra_handover PID: the slot now belongs to PID (the kept sandbox's systemd-nspawn), so no
# other run reclaims it while that sandbox runs.
infra_handover() {
  [[ -z $INFRA_IDX ]] || echo "$1" >"$INFRA_STATE/owner"
}

# _infra_wait NAME ADDR PORT: until ADDR:PORT accepts a connection (10 s).
_infra_wait() {
  local name=$1 i
  for ((i = 0; i < 200; i++)); do
    if (exec 3<>"/dev/tcp/$2/$3") 2>/dev/null; then return 0; fi
    if ! kill -0 "${INFRA_PIDS[$name]}" 2>/dev/null; then break; fi
    sleep 0.05
  done
  _infra_log "$name did not come up on $2:$3; its log:"
  tail -n 20 "$INFRA_STATE/$name.log" >&2 || true
  return 1
}

_infra_stop() {  # $1 = name: TERM its process group, KILL after 5 s
  local pid=${INFRA_PIDS[$1]:-} i
  [[ -n $pid ]] || return 0
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 100; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.05
  done
  kill -KILL -- "-$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  unset "INFRA_PIDS[$1]"
  [[ ! -d $INFRA_STATE ]] || _infra_save
}

_infra_start_moto() {
  _infra_start moto "$INFRA_STATE/moto.log" \
    "$INFRA_MOTO_BIN/moto_server" -H "$INFRA_HOST_ADDR" -p "$INFRA_MOTO_PORT"
}
# A restarted moto_server starts empty (it keeps nothing on disk).
infra_moto_start() {
  _infra_start_moto
  _infra_wait moto "$INFRA_HOST_ADDR" "$INFRA_MOTO_PORT"
}
infra_moto_stop() { _infra_stop moto; }

# infra_cloudwatch_proxy_start: fixtures/cloudwatch-deny-proxy.py in front of moto, on
# $INFRA_HOST_ADDR:$INFRA_CW_PROXY_PORT, passing everything through until infra_cloudwatch_mode deny.
infra_cloudwatch_proxy_start() {
  infra_cloudwatch_mode pass
  _infra_start cwproxy "$INFRA_STATE/cwproxy.log" \
    python3 "$_INFRA_REPO/vm-tests/fixtures/cloudwatch-deny-proxy.py" --bind "$INFRA_HOST_ADDR" \
    --port "$INFRA_CW_PROXY_PORT" --upstream "http://$INFRA_HOST_ADDR:$INFRA_MOTO_PORT" \
    --mode-file "$INFRA_STATE/cloudwatch-mode"
  _infra_wait cwproxy "$INFRA_HOST_ADDR" "$INFRA_CW_PROXY_PORT"
}
infra_cloudwatch_mode() { echo "$1" >"$INFRA_STATE/cloudwatch-mode"; }

# infra_codeartifact_start TOKEN_SECS: fixtures/fake-codeartifact.py, its API on
# $INFRA_HOST_ADDR:$INFRA_CA_API_PORT, the repository (pypiserver behind the token check) on
# $INFRA_MIRROR_ADDR:$INFRA_CA_REPO_PORT, which squid serves as $INFRA_CA_REPO_HOST. Tokens live
# TOKEN_SECS; each one is logged to $INFRA_STATE/codeartifact-tokens.jsonl.
infra_codeartifact_start() {
  infra_codeartifact_mode normal
  : >"$INFRA_STATE/codeartifact-tokens.jsonl"
  chmod 0600 "$INFRA_STATE/codeartifact-tokens.jsonl"
  _infra_start codeartifact "$INFRA_STATE/codeartifact.log" \
    python3 "$_INFRA_REPO/vm-tests/fixtures/fake-codeartifact.py" \
    --api-bind "$INFRA_HOST_ADDR" --api-port "$INFRA_CA_API_PORT" \
    --repo-bind "$INFRA_MIRROR_ADDR" --repo-port "$INFRA_CA_REPO_PORT" --repo-host "$INFRA_CA_REPO_HOST" \
    --upstream "http://$INFRA_MIRROR_ADDR:$INFRA_MIRROR_PORT" --token-secs "$1" \
    --mode-file "$INFRA_STATE/codeartifact-mode" --tokens-file "$INFRA_STATE/codeartifact-tokens.jsonl"
  _infra_wait codeartifact "$INFRA_HOST_ADDR" "$INFRA_CA_API_PORT" &&
    _infra_wait codeartifact "$INFRA_MIRROR_ADDR" "$INFRA_CA_REPO_PORT"
}
infra_codeartifact_mode() { echo "$1" >"$INFRA_STATE/codeartifact-mode"; }

# infra_aws ARGS...: the venv's AWS CLI against moto (fake keys; nothing else is reachable).
infra_aws() {
  env -i PATH=/usr/bin:/bin HOME="$INFRA_STATE" AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing \
    AWS_EC2_METADATA_DISABLED=true AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null \
    "$INFRA_MOTO_BIN/aws" --cli-connect-timeout 5 --cli-read-timeout 30 \
    --endpoint-url "http://$INFRA_HOST_ADDR:$INFRA_MOTO_PORT" "$@"
}

_infra_squid_conf() {
  cat <<EOF
# vm-tests squid: the sandbox's only way to the package mirror.
http_port $INFRA_HOST_ADDR:$INFRA_SQUID_PORT
acl sandbox src $INFRA_GUEST_ADDR/32
acl mirror dstdomain $INFRA_MIRROR_HOST
acl mirror_port port $INFRA_MIRROR_PORT
http_access allow sandbox mirror mirror_port
# The fake CodeArtifact repository (fixtures/fake-codeartifact.py), when a scenario starts it.
acl ca_repo dstdomain $INFRA_CA_REPO_HOST
acl ca_repo_port port $INFRA_CA_REPO_PORT
http_access allow sandbox ca_repo ca_repo_port
http_access deny all
# The mirror's name resolves only here; DNS stays on loopback (nothing answers there).
hosts_file $INFRA_STATE/squid/hosts
dns_nameservers 127.0.0.1
cache deny all
access_log stdio:$INFRA_STATE/squid/access.log
cache_log $INFRA_STATE/squid/cache.log
cache_store_log none
pid_filename none
coredump_dir $INFRA_STATE/squid
shutdown_lifetime 0 seconds
EOF
}

# infra_services_up [DIST_DIR]: every service; DIST_DIR (the release artifacts) served when given.
infra_services_up() {
  INFRA_DIST_DIR=${1:-}
  _infra_start_moto
  install -d -o proxy -g proxy -m 0755 "$INFRA_STATE/squid"
  printf '%s %s\n' "$INFRA_MIRROR_ADDR" "$INFRA_MIRROR_HOST" "$INFRA_MIRROR_ADDR" "$INFRA_CA_REPO_HOST" \
    >"$INFRA_STATE/squid/hosts"
  _infra_squid_conf >"$INFRA_STATE/squid.conf"
  _infra_start squid "$INFRA_STATE/squid.log" squid -N -f "$INFRA_STATE/squid.conf"
  _infra_start pypiserver "$INFRA_STATE/pypiserver.log" \
    "$INFRA_PYPI_VENV/bin/pypi-server" run -i "$INFRA_MIRROR_ADDR" -p "$INFRA_MIRROR_PORT" \
    --disable-fallback -a . -P . "$INFRA_WHEELS"
  _infra_start imds "$INFRA_STATE/imds.log" \
    python3 "$_INFRA_REPO/vm-tests/fixtures/fake-imds.py" --bind "$INFRA_HOST_ADDR" --port "$INFRA_IMDS_PORT"
  if [[ -n $INFRA_DIST_DIR ]]; then
    _infra_start dist "$INFRA_STATE/dist.log" \
      python3 -m http.server --bind "$INFRA_HOST_ADDR" --directory "$INFRA_DIST_DIR" "$INFRA_DIST_PORT"
  fi
  _infra_wait moto "$INFRA_HOST_ADDR" "$INFRA_MOTO_PORT"
  _infra_wait squid "$INFRA_HOST_ADDR" "$INFRA_SQUID_PORT"
  _infra_wait pypiserver "$INFRA_MIRROR_ADDR" "$INFRA_MIRROR_PORT"
  _infra_wait imds "$INFRA_HOST_ADDR" "$INFRA_IMDS_PORT"
  [[ -z $INFRA_DIST_DIR ]] || _infra_wait dist "$INFRA_HOST_ADDR" "$INFRA_DIST_PORT"
}

# infra_down: safe to call twice and from traps.
infra_down() {
  local n
  for n in "${!INFRA_PIDS[@]}"; do _infra_stop "$n"; done
  if [[ -n $INFRA_IDX ]]; then
    _infra_release "$INFRA_IDX"
    # shellcheck disable=SC2034  # read by lib/sandbox.sh
    INFRA_IDX='' SANDBOX_NETNS_PATH=''
  fi
}

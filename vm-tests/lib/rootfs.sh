#!/usr/bin/env bash
# Build and cache the notebook rootfs in two layers:
#   rootfs-base-<key>      debootstrap minbase + packages     (key: suite, packages, recipe)
#   rootfs-<key>           base + Amazon Linux notebook profile (key: base key, profile script, recipe)
# under $NB_CACHE_DIR (default /var/cache/notebook-agent-dev). Each layer is
# built in a .tmp-* directory and renamed into place only when complete, so an
# interrupted build is never used (leftovers are removed by the next build).
#
# Sourced:   . lib/rootfs.sh; dir=$(rootfs_ensure)
# Executed:  lib/rootfs.sh            -> builds if needed, prints the rootfs path
#            lib/rootfs.sh --key      -> prints the profile-layer key only
set -euo pipefail

NB_CACHE_DIR=${NB_CACHE_DIR:-/var/cache/notebook-agent-dev}
NB_SUITE=${NB_SUITE:-bookworm}
# Same mirror as the host's apt (Debian's CDN); override for a local mirror.
NB_MIRROR=${NB_MIRROR:-http://deb.debian.org/debian}
NB_PACKAGES=${NB_PACKAGES:-sudo,systemd,systemd-sysv,dbus,passwd,python3,python3-pip,python3-venv,git,curl,procps,iproute2,ca-certificates,less,util-linux,inotify-tools}
_ROOTFS_LIB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
NB_PROFILE_SCRIPT=${NB_PROFILE_SCRIPT:-$_ROOTFS_LIB_DIR/profile-amazon-linux.sh}

_rootfs_log() { printf '[rootfs] %s\n' "$*" >&2; }

rootfs_base_key() {
  { printf 'suite=%s\npackages=%s\n' "$NB_SUITE" "$NB_PACKAGES"
    declare -f _rootfs_build_base; } | sha256sum | cut -c1-16
}

rootfs_key() {
  { printf 'base=%s\n' "$(rootfs_base_key)"
    cat "$NB_PROFILE_SCRIPT"
    declare -f _rootfs_build_profile; } | sha256sum | cut -c1-16
}

# Remove a half-built layer. --one-file-system: never follow a stray mount.
_rootfs_rm() {
  local d
  for d in "$@"; do
    [[ -e $d ]] || continue
    if findmnt -rn -o TARGET | grep -qF -- "$d"; then
      _rootfs_log "refusing to delete $d: something is mounted below it"
      return 1
    fi
    rm -rf --one-file-system -- "$d"
  done
}

_rootfs_build_base() {  # $1 = target dir (must not exist)
  debootstrap --variant=minbase --include="$NB_PACKAGES" \
    "$NB_SUITE" "$1" "$NB_MIRROR" >"$1.log" 2>&1 || {
      _rootfs_log "debootstrap failed; last lines of $1.log:"; tail -n 20 "$1.log" >&2; return 1; }
  rm -f "$1.log"
}

_rootfs_build_profile() {  # $1 = base dir, $2 = target dir (must not exist)
  cp -a --reflink=auto "$1" "$2"
  # A throw-away nspawn (not a boot) is a chroot that mounts /proc, /sys and
  # /dev itself and unmounts them on exit, so nothing host-side can leak into
  # or be deleted with the tree. Host network for PyPI; the host CA bundle is
  # bind-mounted read-only (egress may use a private CA) and never copied.
  local -a env=(--setenv=LANG=C.UTF-8 --setenv=PIP_CERT=/run/host-ca.pem
                --setenv=PIP_DEFAULT_TIMEOUT=120)
  [[ -n ${PIP_INDEX_URL:-} ]] && env+=("--setenv=PIP_INDEX_URL=$PIP_INDEX_URL")
  local machine=nb-build-$$
  systemd-nspawn --quiet --register=no --keep-unit --pipe -D "$2" --machine="$machine" \
    --bind-ro=/etc/ssl/certs/ca-certificates.crt:/run/host-ca.pem \
    --bind-ro="$NB_PROFILE_SCRIPT:/run/profile.sh" \
    "${env[@]}" /bin/bash /run/profile.sh \
    2> >(grep -v 'Attempted to remove disk file system under' >&2)
  # nspawn cannot remove this itself when the host's /run is not a tmpfs.
  rmdir "/run/systemd/nspawn/propagate/$machine" 2>/dev/null || true
  rm -f "$2/etc/resolv.conf"; : >"$2/etc/resolv.conf"
}

# Build (if needed) and print the path of the profiled rootfs.
rootfs_ensure() {
  local bkey pkey base final tmp
  bkey=$(rootfs_base_key); pkey=$(rootfs_key)
  base=$NB_CACHE_DIR/rootfs-base-$bkey
  final=$NB_CACHE_DIR/rootfs-$pkey
  if [[ -d $final ]]; then echo "$final"; return 0; fi

  install -d -m 0755 "$NB_CACHE_DIR"
  exec {_rootfs_lock}>"$NB_CACHE_DIR/.build.lock"
  flock "$_rootfs_lock"
  if [[ -d $final ]]; then exec {_rootfs_lock}>&-; echo "$final"; return 0; fi  # built meanwhile
  _rootfs_rm "$NB_CACHE_DIR"/.tmp-*

  if [[ ! -d $base ]]; then
    tmp=$(mktemp -d "$NB_CACHE_DIR/.tmp-base-XXXXXX")
    _rootfs_log "debootstrap $NB_SUITE ($NB_PACKAGES) -> $base (takes ~1.5 min)"
    _rootfs_build_base "$tmp/root"
    mv -T "$tmp/root" "$base"; rmdir "$tmp"
  fi
  tmp=$(mktemp -d "$NB_CACHE_DIR/.tmp-profile-XXXXXX")
  _rootfs_log "applying $(basename "$NB_PROFILE_SCRIPT") -> $final"
  _rootfs_build_profile "$base" "$tmp/root"
  mv -T "$tmp/root" "$final"; rmdir "$tmp"
  exec {_rootfs_lock}>&-
  _rootfs_log "ready: $final"
  echo "$final"
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
  case ${1:-} in
    --key) rootfs_key ;;
    "") rootfs_ensure ;;
    *) echo "usage: $0 [--key]" >&2; exit 2 ;;
  esac
fi

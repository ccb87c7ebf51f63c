# shellcheck shell=bash
# Sourced by the set-up scripts (tests/setup.sh, packaging/setup.sh, vm-tests/setup-host.sh,
# vm-tests/bench): one way to install Debian packages idempotently.
#
# apt_ensure WHO PKG...: installs the packages dpkg does not list as installed, saying so as WHO on
# stderr; silent and network-free when every one is there. `apt-get update` runs only then, and
# both apt-get calls wait for a lock held by another run. APT_INSTALLED holds what was installed.
apt_ensure() {
  local who=$1 p
  shift
  APT_INSTALLED=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || APT_INSTALLED+=("$p")
  done
  ((${#APT_INSTALLED[@]})) || return 0
  mapfile -t APT_INSTALLED < <(printf '%s\n' "${APT_INSTALLED[@]}" | sort -u)
  echo "$who: installing ${APT_INSTALLED[*]}" >&2
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 update -qq
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
    --no-install-recommends "${APT_INSTALLED[@]}" >/dev/null
}

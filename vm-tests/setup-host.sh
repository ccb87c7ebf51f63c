#!/usr/bin/env bash
# Install what the booted notebook sandbox needs on a Debian 12 host. (The Python venvs for
# moto/awscli and pypiserver, and the mirror's wheels, are made by lib/infra.sh's infra_setup.)
# Idempotent: silent and network-free when everything is already present;
# runs `apt-get update` only when a package is missing.
set -euo pipefail

# Host commands the sandbox uses, and the Debian package that ships each.
declare -A NEEDED=(
  [debootstrap]=debootstrap
  [systemd-nspawn]=systemd-container
  [ip]=iproute2
  [nsenter]=util-linux
  [flock]=util-linux
  [findmnt]=util-linux
  [sha256sum]=coreutils
  [curl]=curl
  [shellcheck]=shellcheck
  [squid]=squid            # the notebook's proxy (vm-tests/lib/infra.sh runs its own instance)
)
# Packages that provide no command we can probe for.
EXTRA_PKGS=(python3-venv debian-archive-keyring ca-certificates)

if [[ $EUID -ne 0 ]]; then
  echo "setup-host.sh: must run as root" >&2
  exit 2
fi

missing=()
for cmd in "${!NEEDED[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${NEEDED[$cmd]}")
done
for pkg in "${EXTRA_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done

if ((${#missing[@]} == 0)); then
  exit 0
fi

mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
echo "setup-host.sh: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# The package enables a system-wide squid on *:3128; the tests run their own on a test address.
if printf '%s\n' "${missing[@]}" | grep -qx squid && [[ -d /run/systemd/system ]]; then
  systemctl disable --now squid.service >/dev/null 2>&1 || true
fi
echo "setup-host.sh: done" >&2

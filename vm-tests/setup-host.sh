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
  [mountpoint]=util-linux
  [losetup]=mount          # the SageMaker volume: an ext4 image, loop-mounted (lib/sandbox.sh)
  [mkfs.ext4]=e2fsprogs
  [tune2fs]=e2fsprogs      # the hostile suite reads the volume's reserved blocks
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
# shellcheck source=tests/lib/apt.sh
. "$(dirname "${BASH_SOURCE[0]}")/../tests/lib/apt.sh"
apt_ensure setup-host.sh ${missing[@]+"${missing[@]}"} "${EXTRA_PKGS[@]}"
# Loop devices (the SageMaker volume): the loop driver, built in or as a module. `losetup -f` only
# finds a free device (it attaches nothing).
if ! losetup -f >/dev/null 2>&1; then
  modprobe loop 2>/dev/null || true
  losetup -f >/dev/null 2>&1 ||
    { echo "setup-host.sh: no loop device available (losetup -f; modprobe loop): the sandbox's SageMaker volume needs one" >&2; exit 1; }
fi
((${#APT_INSTALLED[@]})) || exit 0
# The package enables a system-wide squid on *:3128; the tests run their own on a test address.
if printf '%s\n' "${APT_INSTALLED[@]}" | grep -qx squid && [[ -d /run/systemd/system ]]; then
  systemctl disable --now squid.service >/dev/null 2>&1 || true
fi
echo "setup-host.sh: done" >&2

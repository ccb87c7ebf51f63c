#!/usr/bin/env bash
# Installs everything the build and the tests need on a fresh Debian 12 machine, idempotently:
# quiet and fast when everything is already there. Run as root (CI and the dev machines are).
set -euo pipefail

# Debian packages: the musl C compiler (ring's C/asm for the static build), shellcheck, real sudo and
# visudo for the sudoers tests, coreutils' chroot, file(1) to prove the binary is static,
# python3-venv for the test fixtures' Python environments.
DEB_PACKAGES=(musl-tools shellcheck sudo coreutils file python3 python3-venv python3-pip curl ca-certificates)

missing=()
for p in "${DEB_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=600 update -qq
  apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The toolchain named in rust-toolchain.toml, with the musl target and the lint components.
if ! rustup target list --installed | grep -qx x86_64-unknown-linux-musl; then
  echo "setup: adding the x86_64-unknown-linux-musl target"
  rustup target add x86_64-unknown-linux-musl
fi
for c in rustfmt clippy; do
  rustup component list --installed | grep -q "^$c" || rustup component add "$c"
done

# The booted notebook sandbox's host tools (debootstrap, systemd-nspawn, ...).
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if [[ -x "$here/../vm-tests/setup-host.sh" ]]; then
  "$here/../vm-tests/setup-host.sh"
fi

# Packaging tools: rpm, cargo-generate-rpm and cfn-lint (cached outside the clone).
"$here/../packaging/setup.sh"

# CloudWatch Logs emulator and the AWS CLI for the shipping tests (pinned venv, cached).
bash "$here/moto.sh" >/dev/null

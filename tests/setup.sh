#!/usr/bin/env bash
# Installs everything the build and the tests need on a fresh Debian 12 machine, idempotently:
# quiet and fast when everything is already there. Run as root (CI and the dev machines are).
set -euo pipefail

# Debian packages: the musl C compiler (ring's C/asm for the static build), shellcheck, real sudo and
# visudo for the sudoers tests, coreutils' chroot, file(1) to prove the binary is static,
# python3-venv for the test fixtures' Python environments.
DEB_PACKAGES=(musl-tools shellcheck sudo coreutils file python3 python3-venv python3-pip curl ca-certificates)

# shellcheck source=tests/lib/apt.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/apt.sh"
apt_ensure setup "${DEB_PACKAGES[@]}"

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

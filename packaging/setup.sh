#!/usr/bin/env bash
# Installs the packaging tools, idempotently (quiet and network-free when everything is there):
#   - rpm (Debian): rpm, rpm2cpio for the package tests (cargo generate-rpm writes the RPM itself)
#   - cargo-generate-rpm (crates.io), pinned, under $NB_CACHE_DIR/cargo-tools (outside the clone)
#   - cfn-lint (PyPI), pinned, in $NB_CACHE_DIR/venv-cfnlint-<hash of the pin>
# Prints nothing but what it installs. Other scripts source `packaging/setup.sh --env` to get the
# tool paths without installing anything: CARGO_GENERATE_RPM, CFN_LINT.
set -euo pipefail

NB_CACHE_DIR=${NB_CACHE_DIR:-/var/cache/notebook-agent-dev}
CARGO_GENERATE_RPM_VERSION=0.21.1
CFN_LINT_VERSION=1.51.0

tools_root=$NB_CACHE_DIR/cargo-tools
cfn_pin="cfn-lint==$CFN_LINT_VERSION"
cfn_venv=$NB_CACHE_DIR/venv-cfnlint-$(printf '%s' "$cfn_pin" | sha256sum | cut -c1-12)
CARGO_GENERATE_RPM=$tools_root/bin/cargo-generate-rpm
CFN_LINT=$cfn_venv/bin/cfn-lint
export CARGO_GENERATE_RPM CFN_LINT

if [[ ${1:-} == --env ]]; then
  return 0 2>/dev/null || exit 0
fi

if [[ $EUID -ne 0 ]]; then
  echo "packaging/setup.sh: must run as root (apt-get)" >&2
  exit 2
fi

# shellcheck source=tests/lib/apt.sh
. "$(dirname "${BASH_SOURCE[0]}")/../tests/lib/apt.sh"
apt_ensure packaging/setup.sh rpm python3-venv

install -d -m 0755 "$NB_CACHE_DIR"
exec {lock}>"$NB_CACHE_DIR/.packaging-setup.lock"
flock "$lock"

if ! "$CARGO_GENERATE_RPM" --version 2>/dev/null | grep -qF " $CARGO_GENERATE_RPM_VERSION"; then
  echo "packaging/setup.sh: cargo install cargo-generate-rpm $CARGO_GENERATE_RPM_VERSION -> $tools_root"
  # Its own target dir: never the project's, never left behind in the clone.
  CARGO_TARGET_DIR=$NB_CACHE_DIR/cargo-tools-build \
    cargo install --quiet --locked --root "$tools_root" \
    --version "$CARGO_GENERATE_RPM_VERSION" cargo-generate-rpm
  rm -rf "$NB_CACHE_DIR/cargo-tools-build"
fi

if ! "$CFN_LINT" --version 2>/dev/null | grep -qF " $CFN_LINT_VERSION"; then
  echo "packaging/setup.sh: $cfn_pin -> $cfn_venv"
  # A half-installed venv fails the version probe above and is rebuilt from scratch.
  rm -rf "$cfn_venv"
  python3 -m venv "$cfn_venv"
  "$cfn_venv/bin/pip" install --quiet --disable-pip-version-check "$cfn_pin"
fi

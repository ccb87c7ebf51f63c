#!/usr/bin/env bash
# The whole test suite — the README's test command and exactly what .ci/run calls.
# Installs what it needs (tests/setup.sh), then: rustfmt, clippy, shellcheck, every cargo test,
# the fuzz targets, the static musl release build, and the booted notebook sandbox.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n== %s\n' "$*"; }

step "setup (idempotent)"
tests/setup.sh

# Every test process gets fake credentials and never reaches IMDS (tests set these again).
export AWS_ACCESS_KEY_ID=AKIATESTTESTTESTTEST AWS_SECRET_ACCESS_KEY=test-secret-key \
  AWS_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true \
  AWS_EC2_METADATA_SERVICE_ENDPOINT=http://127.0.0.1:9

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy -D warnings"
cargo clippy --locked --all-targets -- -D warnings

step "shellcheck"
mapfile -t scripts < <(tests/shell-scripts.sh)
shellcheck -S warning "${scripts[@]}"
echo "shellcheck: ${#scripts[@]} scripts clean"

step "cargo test"
cargo test --locked --all-targets

# As root the watcher runs fanotify (auto); the fallback gets the same tests.
step "watcher tests with the inotify source forced (NOTEBOOK_AGENT_SOURCE=inotify)"
NOTEBOOK_AGENT_SOURCE=inotify cargo test --locked --test watcher --test watch

step "fuzz targets (tests/fuzz.sh, deterministic gate: seeds + a fixed-seed run)"
FUZZ_MODE=gate tests/fuzz.sh

step "static musl release build"
tests/check-release.sh

step "release artifacts (tarball, RPM, SHA256SUMS)"
packaging/build.sh

if [[ -x vm-tests/run ]]; then
  step "booted notebook sandbox"
  vm-tests/run
fi

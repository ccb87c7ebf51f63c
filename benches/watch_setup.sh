#!/usr/bin/env bash
# Runs the watch_setup benchmark on a fresh loop-mounted journaled ext4 image. Needs root (mount).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=lib/ext4-image.sh
. benches/lib/ext4-image.sh

bench_ext4_mount 4G 300000
WATCH_BENCH_DIR="$BENCH_MNT" cargo bench --bench watch_setup "$@"

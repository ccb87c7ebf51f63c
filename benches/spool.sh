#!/usr/bin/env bash
# Runs the spool benchmark on a loop-mounted journaled ext4 image. Needs root.
# Usage: benches/spool.sh [image size, default 2G]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=lib/ext4-image.sh
. benches/lib/ext4-image.sh

bench_ext4_mount "${1:-2G}" 100000
SPOOL_BENCH_DIR="$BENCH_MNT" cargo bench --bench spool

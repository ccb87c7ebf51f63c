#!/usr/bin/env bash
# Runs the watch benchmark (benches/watch.rs): throughput file change -> fsynced spool with the
# daemon in-process, then RSS idle / peak and CPU of the static release binary. Everything happens
# on a fresh loop-mounted journaled ext4 image (DESIGN.md: the root fs here has no journal, which
# skews create-heavy numbers), unmounted afterwards. Needs root (mount).
# Usage: benches/watch.sh [image size, default 6G]
# Environment passed through: WATCH_BENCH_N, WATCH_BENCH_REPS, WATCH_BENCH_PARTS;
# WATCH_BENCH_BIN (default: the musl release build, built here if missing).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
size="${1:-6G}"
target_dir="${CARGO_TARGET_DIR:-$here/target}"
cd "$here"
# shellcheck source=lib/ext4-image.sh
. benches/lib/ext4-image.sh
if [ -z "${WATCH_BENCH_BIN:-}" ]; then
    WATCH_BENCH_BIN="$target_dir/x86_64-unknown-linux-musl/release/notebook-agent"
    if [ ! -x "$WATCH_BENCH_BIN" ]; then
        cargo build --release --target x86_64-unknown-linux-musl
    fi
fi
export WATCH_BENCH_BIN
# Build the bench before mounting, so a long build does not hold the image.
cargo bench --bench watch --no-run

# Inodes: up to 3 roots of ~110,000 files each may exist at once (throughput roots are removed).
bench_ext4_mount "$size" 600000
echo "binary: $WATCH_BENCH_BIN ($(stat -c %s "$WATCH_BENCH_BIN") bytes)"

export WATCH_BENCH_DIR="$BENCH_MNT"
cargo bench --bench watch

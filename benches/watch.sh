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
work="$(mktemp -d /tmp/watch-bench.XXXXXX)"
image="$work/ext4.img"
mnt="$work/mnt"
mounted=0

cleanup() {
    if [ "$mounted" = 1 ]; then
        umount "$mnt" || umount -l "$mnt" || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

cd "$here"
if [ -z "${WATCH_BENCH_BIN:-}" ]; then
    WATCH_BENCH_BIN="$target_dir/x86_64-unknown-linux-musl/release/notebook-agent"
    if [ ! -x "$WATCH_BENCH_BIN" ]; then
        cargo build --release --target x86_64-unknown-linux-musl
    fi
fi
export WATCH_BENCH_BIN
# Build the bench before mounting, so a long build does not hold the image.
cargo bench --bench watch --no-run

truncate -s "$size" "$image"
# Inodes: up to 3 roots of ~110,000 files each may exist at once (throughput roots are removed).
mkfs.ext4 -q -F -O has_journal -N 600000 "$image"
mkdir "$mnt"
mount -o loop,noatime "$image" "$mnt"
mounted=1
findmnt -no SOURCE,FSTYPE,OPTIONS "$mnt"
echo "binary: $WATCH_BENCH_BIN ($(stat -c %s "$WATCH_BENCH_BIN") bytes)"

export WATCH_BENCH_DIR="$mnt"
cargo bench --bench watch

#!/usr/bin/env bash
# The ImageNet-shaped benchmark (issue 14, benches/scale.rs): a tree of 1,000 directories × 1,000
# files on a fresh loop-mounted journaled ext4 image, watched by inotifywait -r, a watchdog
# Observer and the static release binary in turn; first start, restart with catch-up, live
# changes, a 100,000-file burst, its rename and rm -r; RSS, setup times, bytes written, and every
# change accounted for. Needs root (mount). Not part of CI. Figures: docs/BENCHMARKS.md.
# Usage: benches/scale.sh [image size, default 8G]
# Environment: SCALE_DIRS, SCALE_FILES, SCALE_CHANGES, SCALE_BURST (see benches/scale.rs);
# SCALE_BENCH_BIN (default: the musl release build, built here if missing), CARGO_TARGET_DIR,
# NB_CACHE_DIR (default /var/cache/notebook-agent-dev: the peers' pinned venv).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
size="${1:-8G}"
target_dir="${CARGO_TARGET_DIR:-$here/target}"
cd "$here"
[[ $EUID -eq 0 ]] || { echo "scale: run as root (loop mount)" >&2; exit 2; }
# shellcheck source=tests/lib/apt.sh
. tests/lib/apt.sh
apt_ensure scale inotify-tools
# shellcheck source=vm-tests/lib/peer-venv.sh
. vm-tests/lib/peer-venv.sh
SCALE_BENCH_PY="$(peer_venv "${NB_CACHE_DIR:-/var/cache/notebook-agent-dev}")/bin/python"
export SCALE_BENCH_PY
if [ -z "${SCALE_BENCH_BIN:-}" ]; then
    SCALE_BENCH_BIN="$target_dir/x86_64-unknown-linux-musl/release/notebook-agent"
    if [ ! -x "$SCALE_BENCH_BIN" ]; then
        cargo build --release --locked --target x86_64-unknown-linux-musl
    fi
fi
export SCALE_BENCH_BIN
# The driver only times and counts what the release binary does: the test profile builds it
# without the bench profile's optimised rebuild of every dependency.
cargo test --locked --bench scale --no-run
# shellcheck source=lib/ext4-image.sh
. benches/lib/ext4-image.sh
# Inodes: the tree, the burst and the spool's segments, with room.
bench_ext4_mount "$size" 1500000
echo "binary: $SCALE_BENCH_BIN ($(stat -c %s "$SCALE_BENCH_BIN") bytes); $(nproc) cores; kernel $(uname -r); fs.inotify.max_queued_events $(cat /proc/sys/fs/inotify/max_queued_events)"
export SCALE_BENCH_DIR="$BENCH_MNT"
cargo test --locked --bench scale

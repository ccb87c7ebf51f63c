#!/usr/bin/env bash
# Runs the watch_setup benchmark on a fresh loop-mounted journaled ext4 image (DESIGN.md: the
# root fs here has no journal, which skews create-heavy numbers). Needs root (mount).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
work="$(mktemp -d /tmp/watch-bench.XXXXXX)"
image="$work/ext4.img"
mnt="$work/mnt"

cleanup() {
    if mountpoint -q "$mnt"; then
        umount "$mnt"
    fi
    rm -rf "$work"
}
trap cleanup EXIT

truncate -s 4G "$image"
mkfs.ext4 -q -F -N 300000 "$image"
mkdir "$mnt"
mount -o loop,noatime "$image" "$mnt"

export WATCH_BENCH_DIR="$mnt"
cd "$here"
cargo bench --bench watch_setup "$@"

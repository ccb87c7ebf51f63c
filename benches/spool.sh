#!/usr/bin/env bash
# Runs the spool benchmark on a loop-mounted journaled ext4 image (see docs: the build machines'
# root filesystem is ext4 without a journal, which skews create-heavy numbers). Needs root.
# Usage: benches/spool.sh [image size, default 2G]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

size="${1:-2G}"
work="$(mktemp -d /tmp/spool-bench.XXXXXX)"
img="$work/ext4.img"
mnt="$work/mnt"
mounted=0

cleanup() {
  if [ "$mounted" = 1 ]; then
    umount "$mnt" || umount -l "$mnt" || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

truncate -s "$size" "$img"
mkfs.ext4 -q -F -O has_journal "$img"
mkdir "$mnt"
mount -o loop,noatime "$img" "$mnt"
mounted=1
findmnt -no FSTYPE,OPTIONS "$mnt"

SPOOL_BENCH_DIR="$mnt" cargo bench --bench spool

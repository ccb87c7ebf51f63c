# shellcheck shell=bash
# Sourced by the create-heavy benchmark scripts: a fresh loop-mounted journaled ext4 image
# (DESIGN.md: the build machines' root filesystem is ext4 without a journal, which skews
# create-heavy numbers), unmounted and removed on exit. Needs root (mount).

# bench_ext4_mount SIZE INODES: mounts the image and sets BENCH_MNT.
bench_ext4_mount() {
  local size=$1 inodes=$2
  BENCH_WORK=$(mktemp -d /tmp/nbagent-bench.XXXXXX)
  BENCH_MNT=$BENCH_WORK/mnt
  trap bench_ext4_cleanup EXIT INT TERM
  truncate -s "$size" "$BENCH_WORK/ext4.img"
  mkfs.ext4 -q -F -O has_journal -N "$inodes" "$BENCH_WORK/ext4.img"
  mkdir "$BENCH_MNT"
  mount -o loop,noatime "$BENCH_WORK/ext4.img" "$BENCH_MNT"
  findmnt -no SOURCE,FSTYPE,OPTIONS "$BENCH_MNT"
}

bench_ext4_cleanup() {
  if mountpoint -q "$BENCH_MNT"; then
    umount "$BENCH_MNT" || umount -l "$BENCH_MNT" || true
  fi
  rm -rf "$BENCH_WORK"
}

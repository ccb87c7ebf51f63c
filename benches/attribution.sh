#!/usr/bin/env bash
# Attribution coverage and read-audit volume (issue 15; figures in docs/BENCHMARKS.md):
#   benches/attribution.sh [BINARY] [N=1000] [M=100000]
# BINARY defaults to the static release build. As root (fanotify's filesystem mark), on a fresh
# journaled ext4 image; see benches/attribution.py for what is measured.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
[[ $EUID -eq 0 ]] || { echo "attribution.sh: run as root (fanotify needs CAP_SYS_ADMIN)" >&2; exit 2; }
bin=${1:-${CARGO_TARGET_DIR:-target}/x86_64-unknown-linux-musl/release/notebook-agent}
[[ -x $bin ]] || { echo "attribution.sh: no binary at $bin (cargo build --release --target x86_64-unknown-linux-musl)" >&2; exit 2; }
# shellcheck source=lib/ext4-image.sh
. benches/lib/ext4-image.sh
bench_ext4_mount 4G 400000
python3 benches/attribution.py "$(realpath "$bin")" "$BENCH_MNT" "${2:-1000}" "${3:-100000}"

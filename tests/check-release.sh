#!/usr/bin/env bash
# Builds the release binary for x86_64-unknown-linux-musl and proves what the product promises:
# statically linked, stripped, one TLS stack (rustls + ring; no OpenSSL, no aws-lc), and it runs.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

target=x86_64-unknown-linux-musl
start=$SECONDS
cargo build --locked --release --target "$target"
bin=${CARGO_TARGET_DIR:-target}/$target/release/notebook-agent
echo "release build: $((SECONDS - start)) s, $(stat -c %s "$bin") bytes"

desc=$(file -b "$bin")
echo "file: $desc"
case "$desc" in
  *"statically linked"*|*"static-pie linked"*) ;;
  *) echo "FAIL: $bin is not statically linked" >&2; exit 1 ;;
esac
case "$desc" in
  *"not stripped"*) echo "FAIL: $bin is not stripped" >&2; exit 1 ;;
esac

for banned in openssl-sys native-tls aws-lc-sys aws-lc-rs; do
  if cargo tree --locked --target "$target" -e normal -i "$banned" >/dev/null 2>&1; then
    echo "FAIL: $banned is in the dependency graph: only rustls + ring is allowed" >&2
    exit 1
  fi
done
echo "TLS: no openssl, native-tls or aws-lc in the graph"

"$bin" --version

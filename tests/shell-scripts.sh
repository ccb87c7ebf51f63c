#!/usr/bin/env bash
# Lists every shell script of the project (by shebang, or a `# shellcheck shell=` first line for
# sourced files such as vm-tests scenarios), for shellcheck.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# tests/fuzz holds fuzz inputs (data, whatever their first bytes) and Rust: no scripts.
find .ci benches lifecycle-scripts packaging tests vm-tests -path tests/fuzz -prune -o -type f -print 2>/dev/null \
  | while read -r f; do
      head -c 64 "$f" | grep -qE '^(#!.*|# shellcheck shell=)(ba)?sh' && echo "$f"
    done | sort

#!/usr/bin/env bash
# Lists every shell script of the project (by shebang, or a `# shellcheck shell=` first line for
# sourced files such as vm-tests scenarios), for shellcheck.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
find .ci benches lifecycle-scripts packaging tests vm-tests -type f 2>/dev/null \
  | while read -r f; do
      head -c 64 "$f" | grep -qE '^(#!.*|# shellcheck shell=)(ba)?sh' && echo "$f"
    done | sort

#!/usr/bin/env bash
# Test fixture installer: a Python venv with moto_server (the CloudWatch Logs emulator) and the AWS
# CLI (to read events back), pinned. Idempotent: the venv's name carries a hash of the pins, so a new
# pin makes a new venv and an unchanged one is reused without touching the network.
# Prints the venv's bin directory on stdout. Everything else goes to stderr.
set -euo pipefail

REQUIREMENTS='moto[server]==5.2.5
awscli==1.46.3'

cache=${NOTEBOOK_AGENT_DEV_CACHE:-/var/cache/notebook-agent-dev}
hash=$(printf '%s\n' "$REQUIREMENTS" | sha256sum | cut -c1-16)
venv="$cache/venv-moto-$hash"

if [[ -x "$venv/bin/moto_server" && -x "$venv/bin/aws" && -f "$venv/.complete" ]]; then
  echo "$venv/bin"
  exit 0
fi

echo "moto.sh: installing moto_server and awscli into $venv" >&2
mkdir -p "$cache"
# A venv's scripts carry its absolute path, so it is built in place; .complete marks a finished one.
rm -rf "$venv"
python3 -m venv "$venv" >&2
printf '%s\n' "$REQUIREMENTS" > "$venv/requirements.txt"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$venv/requirements.txt" >&2
"$venv/bin/moto_server" --help >/dev/null
"$venv/bin/aws" --version >&2
touch "$venv/.complete"
echo "$venv/bin"

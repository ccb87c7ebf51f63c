# shellcheck shell=bash
# Sourced by the benchmarks that run the Python peers (vm-tests/bench, benches/scale.sh):
# peer_venv CACHE_DIR prints the path of a venv with watchdog and boto3, pinned, installed once
# (the venv's name carries a hash of the pins, as tests/moto.sh does).
peer_venv() {
  local cache=$1 pins venv
  pins='watchdog==6.0.0
boto3==1.44.5'
  venv="$cache/venv-bench-peers-$(printf '%s\n' "$pins" | sha256sum | cut -c1-16)"
  if [[ ! -f "$venv/.complete" ]]; then
    echo "bench: installing watchdog and boto3 into $venv" >&2
    mkdir -p "$cache"
    rm -rf "$venv"
    python3 -m venv "$venv" >&2
    printf '%s\n' "$pins" > "$venv/requirements.txt"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
      -r "$venv/requirements.txt" >&2
    "$venv/bin/python" -c 'import watchdog.observers, boto3' >&2
    touch "$venv/.complete"
  fi
  printf '%s\n' "$venv"
}

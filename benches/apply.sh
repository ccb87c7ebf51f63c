#!/usr/bin/env bash
# Benchmark: `notebook-agent apply` of all four hardening controls (root rights, pip, proxy,
# sagemaker_environment.py) on the notebook rootfs (real sudo/visudo, three conda-like envs),
# each run on a fresh overlay; then the idempotent second apply and `status`.
# Usage: benches/apply.sh [RUNS]   (root; builds the static release binary if missing)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
runs=${1:-20}
[[ $EUID -eq 0 ]] || { echo "apply.sh: must run as root (overlay mounts, chroot)" >&2; exit 2; }

bin=${NB_AGENT_BIN:-target/x86_64-unknown-linux-musl/release/notebook-agent}
if [[ ! -x $bin ]]; then
  cargo build --release --locked --target x86_64-unknown-linux-musl >&2
fi
lower=$(vm-tests/lib/rootfs.sh)
export AWS_ACCESS_KEY_ID=AKIATESTTESTTESTTEST AWS_SECRET_ACCESS_KEY=test-secret-key \
  AWS_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true \
  AWS_EC2_METADATA_SERVICE_ENDPOINT=http://127.0.0.1:9

work=$(mktemp -d /tmp/nbagent-bench-apply.XXXXXX)
cleanup() {
  findmnt -n "$work/merged" >/dev/null 2>&1 && umount -l "$work/merged"
  rm -rf --one-file-system "$work"
}
trap cleanup EXIT

config='{
  "pip": {"index_url": "https://mirror.internal/simple", "trusted_hosts": ["mirror.internal"],
          "conda_channels": ["https://mirror.internal/conda"]},
  "proxy": {"http": "http://proxy.internal:3128", "https": "http://proxy.internal:3128",
            "no_proxy": [".amazonaws.com"]},
  "environment": {"vpc": "vpc-0a1b2c3d", "subnets": ["subnet-0123abcd"],
                  "security_groups": ["sg-0123abcd"], "kms_key_id": "alias/ml",
                  "data_bucket": "corp-ml-data", "extra": {"TEAM": "ml"}}
}'

ms() { date +%s%N; }
first=() second=() status=()
for ((i = 0; i < runs; i++)); do
  mkdir -p "$work"/{upper,work,merged}
  mount -t overlay overlay -o "lowerdir=$lower,upperdir=$work/upper,workdir=$work/work" "$work/merged"
  install -D -m 0600 /dev/stdin "$work/merged/etc/notebook-agent/config.json" <<<"$config"
  t0=$(ms); "$bin" apply --root "$work/merged" >/dev/null 2>&1; t1=$(ms)
  "$bin" apply --root "$work/merged" >/dev/null 2>&1; t2=$(ms)
  "$bin" status --root "$work/merged" >/dev/null 2>&1; t3=$(ms)
  first+=($(((t1 - t0) / 1000000))) second+=($(((t2 - t1) / 1000000))) status+=($(((t3 - t2) / 1000000)))
  umount "$work/merged"; rm -rf --one-file-system "${work:?}"/{upper,work,merged}
done

stats() {  # name values...: median and max in ms
  local name=$1; shift
  sorted=$(printf '%s\n' "$@" | sort -n)
  printf '%-22s median %4d ms   max %4d ms   (n=%d)\n' "$name" \
    "$(sed -n "$((($# + 1) / 2))p" <<<"$sorted")" "$(tail -n1 <<<"$sorted")" "$#"
}
echo "notebook-agent apply, 4 controls, notebook rootfs overlay ($(nproc) cores)"
stats "first apply" "${first[@]}"
stats "second apply (0 chg)" "${second[@]}"
stats "status" "${status[@]}"

#!/usr/bin/env bash
# One command for a release: the static musl binary, then in dist/
#   notebook-agent-<version>-x86_64-linux-musl.tar.gz   binary, unit, example config, lifecycle
#                                                       scripts, renderer, CloudFormation, README
#   notebook-agent-<version>-1.x86_64.rpm               gzip payload, no auto-requires (AL2 + AL2023)
#   SHA256SUMS
# Installs its tools first (packaging/setup.sh) when run as root. Reproducible: file times are the
# last commit's (SOURCE_DATE_EPOCH), owners root, names sorted.
#   --bin PATH  package this binary instead of building (the tests package the test build)
#   --out DIR   instead of dist/
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin='' out=$repo/dist
while (($#)); do
  case $1 in
    --bin) bin=$(realpath -e "${2:?}"); shift ;;
    --out) out=$(realpath -m "${2:?}"); shift ;;
    *) echo "usage: $0 [--bin PATH] [--out DIR]" >&2; exit 2 ;;
  esac
  shift
done
[[ $out != / && $out != "$repo" ]] || { echo "build.sh: refusing --out $out" >&2; exit 2; }
cd "$repo"

target=x86_64-unknown-linux-musl
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
if [[ $EUID -eq 0 && -z $bin ]]; then packaging/setup.sh; fi
# shellcheck source=packaging/setup.sh
. packaging/setup.sh --env
[[ -x $CARGO_GENERATE_RPM ]] || { echo "build.sh: $CARGO_GENERATE_RPM missing: run packaging/setup.sh as root" >&2; exit 1; }

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)
[[ -n $version ]] || { echo "build.sh: no version in Cargo.toml" >&2; exit 1; }
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}
export SOURCE_DATE_EPOCH
name=notebook-agent-$version-x86_64-linux-musl

if [[ -z $bin ]]; then
  echo "== cargo build --release --locked --target $target"
  cargo build --release --locked --target "$target"
  bin=$CARGO_TARGET_DIR/$target/release/notebook-agent
  file -b "$bin" | grep -Eq 'statically linked|static-pie linked' ||
    { echo "build.sh: $bin is not statically linked" >&2; exit 1; }
fi

rm -rf "$out"
stage=$out/.stage/$name
mkdir -p "$stage/lifecycle-scripts"
install -m 0755 "$bin" "$stage/notebook-agent"
install -m 0644 packaging/notebook-agent.service packaging/config.example.json \
  packaging/cloudformation.yaml README.md "$stage/"
install -m 0755 packaging/render-lifecycle-config "$stage/"
install -m 0755 lifecycle-scripts/on-start.sh lifecycle-scripts/on-create.sh "$stage/lifecycle-scripts/"

echo "== $out/$name.tar.gz"
tar -C "$out/.stage" --sort=name --owner=0 --group=0 --numeric-owner \
  --mtime="@$SOURCE_DATE_EPOCH" -cf - "$name" | gzip -9n >"$out/$name.tar.gz"

echo "== cargo generate-rpm"
# The RPM's binary asset is target/release/notebook-agent, which generate-rpm resolves to
# <target-dir>/<target>/release/: point it at a copy of exactly the binary in the tarball.
mkdir -p "$out/.stage/target/$target/release"
cp "$stage/notebook-agent" "$out/.stage/target/$target/release/notebook-agent"
"$CARGO_GENERATE_RPM" generate-rpm --target "$target" --target-dir "$out/.stage/target" \
  --payload-compress gzip --auto-req disabled --source-date "$SOURCE_DATE_EPOCH" -o "$out/"
rm -rf "$out/.stage"

(cd "$out" && sha256sum -- *.tar.gz *.rpm >SHA256SUMS)
echo "== $out/"
(cd "$out" && for f in *; do printf '%10s  %s\n' "$(stat -c %s "$f")" "$f"; done && cat SHA256SUMS)

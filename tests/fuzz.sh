#!/usr/bin/env bash
# Runs every cargo-fuzz target in tests/fuzz for FUZZ_SECONDS each (default 60), at most FUZZ_JOBS
# at a time (default 2), and fails on any crash, printing the input and how to reproduce it.
# docs/FUZZING.md says what each target checks.
#
# Installs what it needs, idempotently: cargo-fuzz (crates.io, pinned) under
# $NB_CACHE_DIR/cargo-tools, like packaging/setup.sh. Builds with the nightly toolchain (cargo-fuzz
# passes unstable flags; RUSTC_BOOTSTRAP=1 on the pinned toolchain when no nightly is installed)
# into $NB_CACHE_DIR/fuzz-target, outside the clone, so a fresh CI clone starts warm. The corpus
# each run grows is kept in $NB_CACHE_DIR/fuzz-corpus/<target>; the committed seeds in
# tests/fuzz/corpus/<target> are read, never written.
#
#   tests/fuzz.sh                     every target, 60 s each (open-ended exploration)
#   FUZZ_SECONDS=600 tests/fuzz.sh ocsf
#   FUZZ_MODE=gate tests/fuzz.sh      what CI runs (tests/run.sh): deterministic — the committed
#                                     seeds replayed plus FUZZ_GATE_RUNS (default 20000) inputs
#                                     from -seed=1, nothing read from or written to the cache, so
#                                     a random new find can never reject an unrelated change. A find
#                                     of an exploration run becomes a seed and a fix.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

NB_CACHE_DIR=${NB_CACHE_DIR:-/var/cache/notebook-agent-dev}
CARGO_FUZZ_VERSION=0.13.2
FUZZ_SECONDS=${FUZZ_SECONDS:-60}
FUZZ_JOBS=${FUZZ_JOBS:-2}
FUZZ_MODE=${FUZZ_MODE:-explore}
FUZZ_GATE_RUNS=${FUZZ_GATE_RUNS:-20000}
# No sanitizer: the agent has no unsafe code (`unsafe_code = "deny"`); what is looked for is
# panics, overflows (debug assertions are on) and broken invariants. FUZZ_SANITIZER=address adds
# ASan.
FUZZ_SANITIZER=${FUZZ_SANITIZER:-none}

fuzz_dir=tests/fuzz
tools_root=$NB_CACHE_DIR/cargo-tools
target_dir=$NB_CACHE_DIR/fuzz-target
corpus_root=$NB_CACHE_DIR/fuzz-corpus
export PATH=$tools_root/bin:$PATH

log() { printf 'fuzz: %s\n' "$*"; }

install -d -m 0755 "$NB_CACHE_DIR" "$target_dir" "$corpus_root"
if ! cargo-fuzz --version 2>/dev/null | grep -qF " $CARGO_FUZZ_VERSION"; then
  exec {lock}>"$NB_CACHE_DIR/.cargo-fuzz-install.lock"
  flock "$lock"
  if ! cargo-fuzz --version 2>/dev/null | grep -qF " $CARGO_FUZZ_VERSION"; then
    log "cargo install cargo-fuzz $CARGO_FUZZ_VERSION -> $tools_root"
    # Its build directory lives beside the fuzz build, never in the clone, and goes afterwards.
    CARGO_TARGET_DIR=$target_dir/cargo-fuzz-install \
      cargo install --quiet --locked --root "$tools_root" --version "$CARGO_FUZZ_VERSION" cargo-fuzz
    rm -rf "$target_dir/cargo-fuzz-install"
  fi
  exec {lock}>&-
fi

# cargo-fuzz is made for nightly (sanitizers are -Z flags). rust-toolchain.toml pins a stable one,
# so name the toolchain explicitly. Without a nightly the pinned stable builds too: with no
# sanitizer cargo-fuzz passes no -Z flag, and RUSTC_BOOTSTRAP=1 covers FUZZ_SANITIZER=address.
if rustup run nightly rustc --version >/dev/null 2>&1; then
  cargo_fuzz=(cargo +nightly fuzz)
else
  log "no nightly toolchain; building with RUSTC_BOOTSTRAP=1 on $(rustc --version)"
  export RUSTC_BOOTSTRAP=1
  cargo_fuzz=(cargo fuzz)
fi
build_flags=(--fuzz-dir "$fuzz_dir" --sanitizer "$FUZZ_SANITIZER" --debug-assertions
  --target-dir "$target_dir")

mapfile -t all_targets < <("${cargo_fuzz[@]}" list --fuzz-dir "$fuzz_dir")
targets=("$@")
((${#targets[@]})) || targets=("${all_targets[@]}")

start=$SECONDS
log "building every target (${cargo_fuzz[*]} build, target dir $target_dir)"
nice "${cargo_fuzz[@]}" build "${build_flags[@]}" 2>&1 \
  | { grep -vE '^\s+(Compiling|Downloaded|Downloading|Fresh) ' || true; }
if ((PIPESTATUS[0] != 0)); then
  log "FAILED: the fuzz targets do not build"
  exit 1
fi
log "build: $((SECONDS - start)) s"

bin_dir=$target_dir/x86_64-unknown-linux-gnu/release
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT

# Inputs of several KB: 4 KB paths (ocsf), several frames (spool_frame).
max_len() {
  case $1 in
    ocsf | spool_frame) echo 16384 ;;
    *) echo 4096 ;;
  esac
}

run_one() {
  local t=$1 bin=$bin_dir/$1
  if [[ ! -x $bin ]]; then
    echo "no binary $bin (the build failed)" >"$logs/$t.log"
    return 1
  fi
  install -d "$corpus_root/$t" "$fuzz_dir/artifacts/$t"
  if [[ $FUZZ_MODE == gate ]]; then
    # New inputs go to a scratch directory; only the committed seeds are read.
    local scratch
    scratch=$(mktemp -d)
    nice "$bin" "$scratch" "$fuzz_dir/corpus/$t" -seed=1 -runs="$FUZZ_GATE_RUNS" \
      -max_total_time=600 -max_len="$(max_len "$t")" -timeout=10 -rss_limit_mb=2048 \
      -print_final_stats=1 -artifact_prefix="$fuzz_dir/artifacts/$t/" >"$logs/$t.log" 2>&1 \
      || { rm -rf "$scratch"; return 1; }
    rm -rf "$scratch"
    return 0
  fi
  # The first corpus directory receives new inputs: the cache, never the committed seeds.
  nice "$bin" "$corpus_root/$t" "$fuzz_dir/corpus/$t" \
    -max_total_time="$FUZZ_SECONDS" -max_len="$(max_len "$t")" -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1 -artifact_prefix="$fuzz_dir/artifacts/$t/" >"$logs/$t.log" 2>&1 || return
  # Keep the cache to the inputs that add coverage (libFuzzer merge), or it grows every run.
  local min=$corpus_root/.$t.min
  rm -rf "$min"
  mkdir "$min"
  if nice "$bin" -merge=1 "$min" "$corpus_root/$t" -max_len="$(max_len "$t")" -timeout=10 \
    >"$logs/$t.merge.log" 2>&1; then
    rm -rf "${corpus_root:?}/$t"
    mv "$min" "$corpus_root/$t"
  else
    rm -rf "$min"
  fi
}

pids=()
names=()
for t in "${targets[@]}"; do
  while (($(jobs -rp | wc -l) >= FUZZ_JOBS)); do wait -n || true; done
  if [[ $FUZZ_MODE == gate ]]; then
    log "running $t: seeds + $FUZZ_GATE_RUNS inputs from seed 1"
  else
    log "running $t for ${FUZZ_SECONDS} s"
  fi
  run_one "$t" &
  pids+=($!)
  names+=("$t")
done

failed=0
for i in "${!pids[@]}"; do
  t=${names[$i]}
  rc=0
  wait "${pids[$i]}" || rc=$?
  f=$logs/$t.log
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$f" | tail -1)
  speed=$(grep -oE 'exec/s: [0-9]+' "$f" | tail -1 | sed 's/.* //' || true)
  cov=$(grep -oE 'cov: [0-9]+ ft: [0-9]+' "$f" | tail -1 | tr -d ':' || true)
  corp=$(grep -oE 'corp: [0-9]+' "$f" | tail -1 | tr -d ':' || true)
  if ((rc == 0)); then
    result=ok
  else
    result="FAILED (exit $rc)"
    failed=1
  fi
  printf 'fuzz: %-12s runs %-10s (%s/s)  %s  %s  %s\n' "$t" "${runs:-?}" "${speed:-?}" \
    "${cov:-cov ?}" "${corp:-corp ?}" "$result"
  if ((rc != 0)); then
    echo "---- $t: what failed"
    # The panic message (an invariant's assertion names it), else libFuzzer's own summary.
    grep -A6 -m1 'panicked at' "$f" | grep -vE '^(stack backtrace:|\s+[0-9]+: |\s+at )' \
      || grep -E 'ERROR|SUMMARY|no binary' "$f" | tail -5
    crash=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$f" | tail -1)
    if [[ -n $crash ]]; then
      echo "---- $t: crash input $crash"
      echo "reproduce: ${cargo_fuzz[*]} run ${build_flags[*]} $t $crash"
    fi
  fi
done
log "total: $((SECONDS - start)) s"
if ((failed)); then
  log "FAILED: a fuzz target crashed or broke an invariant (see above)"
  exit 1
fi

#!/usr/bin/env bash
# Fuzz every target in fuzz/fuzz_targets for a bounded time (cargo-fuzz / libFuzzer).
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]    default: 10 s each, every target
#
# Installs what is missing (the nightly toolchain, cargo-fuzz), builds the targets at the
# lowest CPU priority on one job, replays fuzz/regressions/<target>/*, then fuzzes each target
# in turn from fuzz/corpus/<target>/ (new inputs stay there, git-ignored). Prints per target:
# executions, exec/s, coverage (cov, ft), corpus size, crashes. Exits non-zero if any target
# crashed, timed out or ran out of memory, naming the input libFuzzer saved (fuzz/artifacts/).
# Reproduce one: fuzz/target/<host>/release/<target> <artifact>.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
FUZZ="$ROOT/fuzz"
SECONDS_PER_TARGET="${1:-10}"
shift $(($# > 0 ? 1 : 0))
# One libFuzzer process at a time on a 2-core, 24 GiB machine: a generous memory ceiling per
# process, and an input taking this long counts as a hang.
RSS_LIMIT_MB="${FUZZ_RSS_LIMIT_MB:-4096}"
INPUT_TIMEOUT_S="${FUZZ_INPUT_TIMEOUT_S:-20}"

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

case "$SECONDS_PER_TARGET" in
  '' | *[!0-9]*) echo "usage: $0 [SECONDS_PER_TARGET] [TARGET...]" >&2; exit 2 ;;
esac

if ! command -v rustup >/dev/null; then
  echo "rustup not found: install Rust with rustup first" >&2; exit 1
fi
if ! rustup toolchain list | grep -q '^nightly'; then
  log "installing the nightly toolchain (libFuzzer's instrumentation needs it)"
  rustup toolchain install nightly --profile minimal
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  log "installing cargo-fuzz (a few minutes)"
  nice -n 19 cargo install cargo-fuzz --locked -j 1
fi

if [ $# -gt 0 ]; then
  TARGETS=("$@")
else
  TARGETS=()
  for f in "$FUZZ"/fuzz_targets/*.rs; do TARGETS+=("$(basename "$f" .rs)"); done
fi

cd "$FUZZ"
LOGS="$FUZZ/target/fuzz-logs"
mkdir -p "$LOGS"
log "building the fuzz targets (nightly, release + debug assertions, nice'd, 1 job)"
# No sanitizer: the core is safe Rust, so ASan would only halve the executions; panics,
# overflows (debug assertions are on), hangs and memory blow-ups are caught without it.
if ! CARGO_BUILD_JOBS=1 nice -n 19 cargo +nightly fuzz build --sanitizer none >"$LOGS/build.log" 2>&1; then
  cat "$LOGS/build.log" >&2; exit 1
fi
BIN="$FUZZ/target/$(rustc +nightly -vV | sed -n 's/^host: //p')/release"

failed=()
for t in "${TARGETS[@]}"; do
  mkdir -p "$FUZZ/corpus/$t" "$FUZZ/artifacts/$t"
  if compgen -G "$FUZZ/regressions/$t/*" >/dev/null; then
    if ! "$BIN/$t" "$FUZZ"/regressions/"$t"/* >"$LOGS/$t.regressions.log" 2>&1; then
      echo "$t: a saved regression input fails again (log: $LOGS/$t.regressions.log)" >&2
      grep -m1 -A2 'panicked' "$LOGS/$t.regressions.log" >&2 || true
      failed+=("$t")
      continue
    fi
  fi
  log "fuzzing $t for ${SECONDS_PER_TARGET}s"
  rc=0
  nice -n 19 "$BIN/$t" -max_total_time="$SECONDS_PER_TARGET" -rss_limit_mb="$RSS_LIMIT_MB" \
    -timeout="$INPUT_TIMEOUT_S" -print_final_stats=1 -artifact_prefix="$FUZZ/artifacts/$t/" \
    "$FUZZ/corpus/$t" >"$LOGS/$t.log" 2>&1 || rc=$?
  # libFuzzer's last status line: `#runs DONE cov: N ft: N corp: N/size ...`.
  status="$(grep -E '^#[0-9]+[[:space:]].*cov: ' "$LOGS/$t.log" | tail -n 1 || true)"
  field() { sed -n "s/.* $1: \([^ ]*\).*/\1/p" <<<"$status"; }
  final_stat() { sed -n "s/^stat::$1: *//p" "$LOGS/$t.log" | tail -n 1; }
  artifact="$(sed -n 's/.*Test unit written to \(.*\)/\1/p' "$LOGS/$t.log" | tail -n 1)"
  printf '%-14s executions: %-10s exec/s: %-8s cov: %-6s ft: %-6s corpus: %-12s crashes: %s\n' \
    "$t" "$(final_stat number_of_executed_units)" "$(final_stat average_exec_per_sec)" "$(field cov)" \
    "$(field ft)" "$(field corp)" "$([ "$rc" -eq 0 ] && echo 0 || echo "1 ($artifact)")"
  if [ "$rc" -ne 0 ]; then
    grep -m1 -A2 -E 'panicked|ERROR: libFuzzer' "$LOGS/$t.log" >&2 || true
    echo "  reproduce: $BIN/$t ${artifact:-<artifact>}   (full log: $LOGS/$t.log)" >&2
    failed+=("$t")
  fi
done

if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzzing failed: ${failed[*]}" >&2
  exit 1
fi
log "fuzzing passed: ${#TARGETS[@]} targets, ${SECONDS_PER_TARGET}s each, no crash"

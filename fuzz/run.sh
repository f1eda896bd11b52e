#!/usr/bin/env bash
# Runs strata's fuzz targets with cargo-fuzz (libFuzzer), one after another.
#
#   fuzz/run.sh [SECONDS] [TARGET...]     default: 60 seconds each, every target
#
# The committed seeds in fuzz/corpus/TARGET are read but never written; what the fuzzer finds
# goes to fuzz/work/TARGET (not committed) and crashes to fuzz/artifacts/TARGET. Works on a
# stable toolchain (RUSTC_BOOTSTRAP=1 lets it take the sanitizer-coverage flags); install the
# tool with `cargo install cargo-fuzz`. Exits non-zero if any target found a crash.
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-60}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(pack manifest node config lock key_file settings model)
fi
export RUSTC_BOOTSTRAP=1
cargo fuzz build -s none >/dev/null 2>&1
failed=0
for t in "${targets[@]}"; do
  mkdir -p "work/$t" "artifacts/$t"
  log="work/$t.$$.log"
  if cargo fuzz run -s none "$t" "work/$t" "corpus/$t" -- \
      -max_total_time="$secs" -timeout=60 -rss_limit_mb=4096 \
      -artifact_prefix="artifacts/$t/" >"$log" 2>&1; then
    status=ok
  else
    status=CRASH
    failed=1
  fi
  runs=$(grep -o 'Done [0-9]* runs in [0-9]* second' "$log" | tail -1 || true)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 || true)
  echo "$t: $status; ${runs:-no summary}; ${cov:-}"
  if [ "$status" = CRASH ]; then
    tail -n 30 "$log"
  fi
done
exit $failed

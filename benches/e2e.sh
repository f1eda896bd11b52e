#!/usr/bin/env bash
# End-to-end benchmark of strata on the W1 history (see docs/PERFORMANCE.md).
#
#   benches/e2e.sh [--runs N] [--size-mb MB] [--steps K] [--level L] [--init "ARGS"] [--out CSV]
#
# Builds the W1 corpus once with ../shared/corpus/gen_corpus.py (cached in $BENCH_CACHE,
# default ~/.cache/strata-bench), then per run: first backup, no-change backup, K x (mutate step,
# backup), restore of the latest snapshot with a byte-exact comparison. STRATA_BIN=PATH runs that
# binary instead of building this checkout. Records wall/CPU seconds,
# peak RSS (/usr/bin/time) and repository growth (apparent bytes and allocated disk blocks) per
# operation into a CSV, and prints medians over the runs. Page cache is warm (not dropped); the
# data is synced to disk before each backup.
set -euo pipefail

runs=3 size_mb=1024 steps=5 level="" out="" init_args=""
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) runs=$2; shift 2 ;;
    --size-mb) size_mb=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    --level) level=$2; shift 2 ;;
    --init) init_args=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done

here=$(cd "$(dirname "$0")/.." && pwd)
gen="$here/../shared/corpus/gen_corpus.py"
cache=${BENCH_CACHE:-$HOME/.cache/strata-bench}
base="$cache/w1-$size_mb"
scratch=${BENCH_SCRATCH:-$cache/scratch}
out=${out:-$cache/e2e-$(date +%Y%m%d-%H%M%S).csv}
mkdir -p "$cache"

# STRATA_BIN runs another build (an older commit, for an interleaved comparison).
if [ -n "${STRATA_BIN:-}" ]; then
  strata=$STRATA_BIN
else
  (cd "$here" && cargo build --release --quiet)
  strata="$here/target/release/strata"
fi

if [ ! -f "$base/.complete" ]; then
  echo "generating W1 ($size_mb MB database) in $base ..." >&2
  rm -rf "$base"
  python3 "$gen" gen --out "$base" --size-mb "$size_mb" >/dev/null
  touch "$base/.complete"
fi

echo "run,op,wall_s,user_s,sys_s,max_rss_kib,growth_bytes,growth_alloc_bytes,repo_bytes,repo_alloc_bytes" >"$out"

repo_bytes() { du -sb "$1" | cut -f1; }
repo_alloc() { echo $(( $(du -sk "$1" | cut -f1) * 1024 )); }

measure() { # run op cmd...
  local run=$1 op=$2; shift 2
  local before before_alloc t
  before=$(repo_bytes "$repo"); before_alloc=$(repo_alloc "$repo")
  t=$(mktemp)
  /usr/bin/time -f "%e,%U,%S,%M" -o "$t" "$@" >/dev/null
  local after after_alloc
  after=$(repo_bytes "$repo"); after_alloc=$(repo_alloc "$repo")
  echo "$run,$op,$(cat "$t"),$((after - before)),$((after_alloc - before_alloc)),$after,$after_alloc" >>"$out"
  rm -f "$t"
}

for run in $(seq 1 "$runs"); do
  work="$scratch/work" repo="$scratch/repo" restored="$scratch/restored"
  rm -rf "$work" "$repo" "$restored"
  mkdir -p "$scratch"
  cp -a "$base" "$work"
  rm -f "$work/.complete"
  # shellcheck disable=SC2086
  "$strata" init --repo "$repo" ${level:+--zstd-level=$level} $init_args >/dev/null
  # Flush the copy, so the backup does not compete with 1.2 GB of writeback (data an
  # application wrote more than ~30 s ago is already on disk), and let its timestamps age past
  # strata's racy-file window.
  sync
  sleep 1
  measure "$run" first "$strata" backup --repo "$repo" "$work"
  measure "$run" nochange "$strata" backup --repo "$repo" "$work"
  for k in $(seq 1 "$steps"); do
    python3 "$gen" mutate --out "$work" --step "$k" >/dev/null
    sync
    sleep 1
    measure "$run" hourly "$strata" backup --repo "$repo" "$work"
  done
  # Like the other tools, without PRAGMA integrity_check of the restored databases (the byte
  # comparison below checks more); `restore` runs it by default.
  measure "$run" restore "$strata" restore --repo "$repo" --no-check-sqlite latest "$restored"
  if ! diff -r -q "$work" "$restored/work" >/dev/null; then
    echo "run $run: restored tree differs from the source" >&2
    exit 1
  fi
  echo "run $run done (restore byte-identical)" >&2
done

python3 - "$out" <<'PY'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1])))
ops = []
for r in rows:
    if r["op"] not in ops:
        ops.append(r["op"])
print(f"results: {sys.argv[1]} ({len(set(r['run'] for r in rows))} runs; medians)")
print("| operation | n | wall s | CPU s | peak RSS MiB | growth MiB | growth (allocated) MiB |")
print("|---|---|---|---|---|---|---|")
for op in ops:
    rs = [r for r in rows if r["op"] == op]
    med = lambda f: statistics.median(f(r) for r in rs)
    print(f"| {op} | {len(rs)} | {med(lambda r: float(r['wall_s'])):.2f} | "
          f"{med(lambda r: float(r['user_s']) + float(r['sys_s'])):.2f} | "
          f"{med(lambda r: int(r['max_rss_kib']) / 1024):.1f} | "
          f"{med(lambda r: int(r['growth_bytes']) / 2**20):.2f} | "
          f"{med(lambda r: int(r['growth_alloc_bytes']) / 2**20):.2f} |")
PY

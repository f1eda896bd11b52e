#!/usr/bin/env bash
# Side-by-side benchmark: strata, restic and borg (and rustic with --with-rustic) on the W1 history.
#
#   benches/compare.sh [--runs N] [--size-mb MB] [--steps K] [--with-rustic] [--out CSV]
#
# Per pass, on one working copy of the W1 corpus, every tool in turn (the order rotates from pass
# to pass, so page-cache and machine drift do not favour one tool): first backup, no-change backup,
# then K x (one `mutate` step, a backup by every tool), then a restore of the latest snapshot by
# every tool with a byte-exact comparison, then "forget everything but the latest and reclaim
# space" (strata forget --keep-last 1 + gc, restic forget --prune, borg prune + compact). Each
# operation's wall and CPU seconds and peak RSS come from
# /usr/bin/time; repository and source bytes from du. Results go to a CSV; a markdown table of
# medians, and of the per-pass ratio strata/peer, is printed.
#
# Settings: restic repository version 2 (zstd, compression "auto"; restic always encrypts),
# borg `-e none --compression zstd,3`, strata defaults (backups of kind hourly, as a scheduled job
# would make them). Source data is synced before each step. STRATA_BIN=PATH runs that strata
# binary instead of building this checkout.
set -euo pipefail

runs=3 size_mb=1024 steps=5 rustic=0 out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) runs=$2; shift 2 ;;
    --size-mb) size_mb=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    --with-rustic) rustic=1; shift ;;
    --out) out=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done

here=$(cd "$(dirname "$0")/.." && pwd)
gen="$here/../shared/corpus/gen_corpus.py"
cache=${BENCH_CACHE:-$HOME/.cache/strata-bench}
base="$cache/w1-$size_mb"
scratch=${BENCH_SCRATCH:-$cache/compare}
out=${out:-$cache/compare-$(date +%Y%m%d-%H%M%S).csv}
mkdir -p "$cache" "$scratch"

need=()
command -v restic >/dev/null || need+=(restic)
command -v borg >/dev/null || need+=(borgbackup)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi
tools=(strata restic borg)
if [ "$rustic" = 1 ]; then
  command -v rustic >/dev/null || cargo install --locked rustic-rs
  tools+=(rustic)
fi
# STRATA_BIN runs another build (an older commit, to compare two builds against the same peers).
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

export RESTIC_PASSWORD=bench RUSTIC_PASSWORD=bench BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes
export BORG_RELOCATED_REPO_ACCESS_IS_OK=yes BORG_BASE_DIR="$scratch/borg-home"

echo "pass,tool,op,wall_s,user_s,sys_s,max_rss_kib,repo_bytes,source_bytes" >"$out"
work="$scratch/work"

repo_of() { echo "$scratch/repo-$1"; }

init_tool() {
  local r; r=$(repo_of "$1")
  rm -rf "$r"
  case "$1" in
    strata) "$strata" init --repo "$r" >/dev/null ;;
    restic) restic init --repository-version 2 -r "$r" >/dev/null ;;
    rustic) rustic init -r "$r" >/dev/null 2>&1 ;;
    borg) borg init -e none "$r" >/dev/null ;;
  esac
}

backup_cmd() { # tool -> command line for a backup of $work
  local r; r=$(repo_of "$1")
  case "$1" in
    strata) echo "$strata backup --repo $r --kind hourly $work" ;;
    restic) echo "restic -r $r backup -q $work" ;;
    rustic) echo "rustic -r $r backup $work" ;;
    borg) echo "borg create --compression zstd,3 $r::{now:%Y-%m-%dT%H:%M:%S.%f} $work" ;;
  esac
}

restore_cmd() { # tool target
  local r; r=$(repo_of "$1")
  case "$1" in
    strata) echo "$strata restore --repo $r --no-check-sqlite latest $2" ;;  # as the others: no integrity_check
    restic) echo "restic -r $r restore latest --target $2" ;;
    rustic) echo "rustic -r $r restore latest $2" ;;
    borg) echo "sh -c 'cd $2 && borg extract $r::\$(borg list --last 1 --short $r)'" ;;
  esac
}

reclaim_cmd() {
  local r; r=$(repo_of "$1")
  case "$1" in
    strata) echo "sh -c '$strata forget --repo $r --keep-last 1 && $strata gc --repo $r'" ;;
    restic) echo "restic -r $r forget -q --keep-last 1 --prune" ;;
    rustic) echo "rustic -r $r forget --keep-last 1 --prune" ;;
    borg) echo "sh -c 'borg prune --keep-last 1 $r && borg compact $r'" ;;
  esac
}

# Where a tool puts the restored copy of $work below the target.
restored_path() {
  case "$1" in
    strata) echo "$2/$(basename "$work")" ;;
    *) echo "$2$work" ;;
  esac
}

measure() { # pass tool op cmd
  local pass=$1 tool=$2 op=$3 cmd=$4 t
  t=$(mktemp)
  if [ -z "$cmd" ]; then
    echo "$pass,$tool,$op,,,,,$(du -sb "$(repo_of "$tool")" | cut -f1),$(du -sb "$work" | cut -f1)" >>"$out"
    return
  fi
  sync
  /usr/bin/time -f "%e,%U,%S,%M" -o "$t" sh -c "$cmd" >/dev/null 2>"$t.err" || {
    echo "$tool $op failed:" >&2; cat "$t.err" >&2; exit 1; }
  echo "$pass,$tool,$op,$(tail -1 "$t"),$(du -sb "$(repo_of "$tool")" | cut -f1),$(du -sb "$work" | cut -f1)" >>"$out"
  rm -f "$t" "$t.err"
}

for pass in $(seq 1 "$runs"); do
  # Rotate the order of tools.
  order=("${tools[@]:$(( (pass - 1) % ${#tools[@]} ))}" "${tools[@]:0:$(( (pass - 1) % ${#tools[@]} ))}")
  rm -rf "$work"; cp -a "$base" "$work"; rm -f "$work/.complete"; sync; sleep 1
  for tool in "${order[@]}"; do init_tool "$tool"; done
  for tool in "${order[@]}"; do measure "$pass" "$tool" first "$(backup_cmd "$tool")"; done
  for tool in "${order[@]}"; do measure "$pass" "$tool" nochange "$(backup_cmd "$tool")"; done
  for k in $(seq 1 "$steps"); do
    python3 "$gen" mutate --out "$work" --step "$k" >/dev/null
    sync; sleep 1
    for tool in "${order[@]}"; do measure "$pass" "$tool" hourly "$(backup_cmd "$tool")"; done
  done
  for tool in "${order[@]}"; do
    target="$scratch/restore-$tool"
    rm -rf "$target"; mkdir -p "$target"
    measure "$pass" "$tool" restore "$(restore_cmd "$tool" "$target")"
    if ! diff -r -q "$work" "$(restored_path "$tool" "$target")" >/dev/null; then
      echo "pass $pass: $tool restored tree differs from the source" >&2
      exit 1
    fi
    rm -rf "$target"
  done
  for tool in "${order[@]}"; do measure "$pass" "$tool" reclaim "$(reclaim_cmd "$tool")"; done
  echo "pass $pass done (${order[*]}); every restore byte-identical" >&2
done

python3 - "$out" <<'PY'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1])))
tools = []
ops = []
for r in rows:
    if r["tool"] not in tools: tools.append(r["tool"])
    if r["op"] not in ops: ops.append(r["op"])
def med(xs): return statistics.median(xs) if xs else None
def val(r, k):
    return float(r[k]) if r[k] not in ("", None) else None
def growth_rows():
    # Repository growth per operation: bytes after minus bytes after the previous operation.
    prev = {}
    out = []
    for r in rows:
        key = (r["pass"], r["tool"])
        g = int(r["repo_bytes"]) - prev.get(key, 0)
        prev[key] = int(r["repo_bytes"])
        out.append((r, g))
    return out
growth = {}
for r, g in growth_rows():
    growth.setdefault((r["tool"], r["op"]), []).append(g)
print(f"results: {sys.argv[1]} ({len(set(r['pass'] for r in rows))} passes; medians)")
print("| operation | tool | wall s | CPU s | peak RSS MiB | repo growth MiB | repo MiB after |")
print("|---|---|---|---|---|---|---|")
for op in ops:
    for t in tools:
        rs = [r for r in rows if r["tool"] == t and r["op"] == op]
        if not rs: continue
        wall = med([val(r, "wall_s") for r in rs if val(r, "wall_s") is not None])
        cpu = med([val(r, "user_s") + val(r, "sys_s") for r in rs if val(r, "user_s") is not None])
        rss = med([val(r, "max_rss_kib") / 1024 for r in rs if val(r, "max_rss_kib") is not None])
        f = lambda x, d=2: "n/a" if x is None else f"{x:.{d}f}"
        print(f"| {op} | {t} | {f(wall)} | {f(cpu)} | {f(rss, 1)} | "
              f"{med(growth[(t, op)]) / 2**20:.1f} | {med([int(r['repo_bytes']) for r in rs]) / 2**20:.1f} |")
print()
print("Ratio strata / peer, per pass then median (wall time; repository growth):")
print("| operation | peer | wall ratio | growth ratio |")
print("|---|---|---|---|")
for op in ops:
    for t in tools:
        if t == "strata": continue
        wr, gr = [], []
        for p in sorted(set(r["pass"] for r in rows)):
            s = [r for r in rows if r["pass"] == p and r["tool"] == "strata" and r["op"] == op]
            o = [r for r in rows if r["pass"] == p and r["tool"] == t and r["op"] == op]
            for a, b in zip(s, o):
                if val(a, "wall_s") is not None and val(b, "wall_s"):
                    wr.append(val(a, "wall_s") / val(b, "wall_s"))
        gs = growth.get(("strata", op), []); go = growth.get((t, op), [])
        for a, b in zip(gs, go):
            if b >= 2**20: gr.append(a / b)  # ratios of near-zero growth mean nothing
        f = lambda x: "n/a" if x is None else f"{x:.3f}"
        print(f"| {op} | {t} | {f(med(wr))} | {f(med(gr))} |")
PY

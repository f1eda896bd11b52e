#!/usr/bin/env bash
# A large SQLite database in WAL mode, held open as a running app holds it: strata and restic side
# by side, and reading it with cat as the yardstick (see docs/PERFORMANCE.md).
#
#   benches/large_db.sh [--dir DIR] [--size-gb N] [--runs N] [--out CSV]
#
# DIR/app.db is a database made by ../shared/corpus/large_db.sh (`gen DIR N`); one that exists is
# reused, else N GiB (default 8) are generated into DIR (default $BENCH_CACHE/large-N, BENCH_CACHE
# defaulting to ~/.cache/strata-bench). Each run rewrites 0.4% of its rows in place (the size stays).
#
# Per run, with a fresh strata and a fresh restic repository and `large_db.sh hold` keeping a
# connection open (so a commit's frames stay in the log, as in a running app), both tools in turn
# (the order alternates from run to run):
#   first         first backup (the database read once before, so the page cache is warm)
#   nochange      backup with nothing changed
#   hourly-log    backup after `mutate DIR 0.001 none`: 0.1% of the rows rewritten, in the log only
#   hourly-ckpt   backup after `mutate DIR 0.001 truncate`: the log checkpointed into the main file
#                 and reset, so the whole main file is read again
# then the full pass against reading the file:
#   read-cold, read-warm    `cat app.db > /dev/null` after dropping the page cache, then again
#   full-cold, full-warm    strata's backup after `mutate DIR 0.001 truncate`, with the page cache
#                           dropped after the mutation, then with it warm
#
# Every command runs under a small wrapper (Python: fork, exec, then waitid with WNOWAIT so the
# exited process stays a zombie whose /proc/PID/io can still be read, then wait4 for its rusage):
# wall and CPU seconds, peak RSS, and the bytes it read, both from the disk (`read_bytes`: what
# the page cache did not have) and through read calls (`rchar`: page cache or not). Dropping the
# page cache needs root (`echo 3 > /proc/sys/vm/drop_caches`); without it the cold steps are left
# out. strata's index.redb size is recorded after each of its operations. Results go to a CSV; medians per operation and tool, strata/restic ratios per run, and
# strata's full-pass throughput against cat's are printed.
#
# restic: repository version 2 (zstd, compression "auto"), `restic backup` of DIR as it is (the
# log and -shm files included, as restic users back up a live database). strata: defaults, kind
# hourly. STRATA_BIN=PATH runs that strata binary instead of building this checkout.
set -euo pipefail

runs=3 size_gb=8 dir="" out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dir) dir=$2; shift 2 ;;
    --size-gb) size_gb=$2; shift 2 ;;
    --runs) runs=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done

here=$(cd "$(dirname "$0")/.." && pwd)
corpus="$here/../shared/corpus/large_db.sh"
cache=${BENCH_CACHE:-$HOME/.cache/strata-bench}
dir=${dir:-$cache/large-$size_gb}
scratch=${BENCH_SCRATCH:-$cache/large-scratch}
out=${out:-$cache/large_db-$(date +%Y%m%d-%H%M%S).csv}
mkdir -p "$cache" "$scratch"
db="$dir/app.db"

need=()
command -v restic >/dev/null || need+=(restic)
command -v sqlite3 >/dev/null || need+=(sqlite3)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi
# STRATA_BIN runs another build (an older commit, to compare two builds against the same peer).
if [ -n "${STRATA_BIN:-}" ]; then
  strata=$STRATA_BIN
else
  (cd "$here" && cargo build --release --quiet)
  strata="$here/target/release/strata"
fi

# A generation that did not finish leaves its marker: start it again.
if [ ! -f "$db" ] || [ -f "$dir/.generating" ]; then
  echo "generating a $size_gb GiB database in $dir ..." >&2
  mkdir -p "$dir"
  touch "$dir/.generating"
  bash "$corpus" gen "$dir" "$size_gb"
  rm -f "$dir/.generating"
fi

# Whether the page cache can be dropped: tried once.
cold=1
if ! { sync && echo 3 >/proc/sys/vm/drop_caches; } 2>/dev/null; then
  echo "cannot drop the page cache (not root?): the cold steps are left out" >&2
  cold=0
fi
drop_cache() { sync; echo 3 >/proc/sys/vm/drop_caches; }

# measure.py -o FILE CMD...: runs CMD (stdout to /dev/null), writes
# "wall_s,user_s,sys_s,max_rss_kib,read_bytes,rchar" to FILE, exits with CMD's code.
wrapper="$scratch/measure.py"
cat >"$wrapper" <<'PY'
import os, sys, time
out, argv = sys.argv[2], sys.argv[3:]
start = time.monotonic()
pid = os.fork()
if pid == 0:
    fd = os.open(os.devnull, os.O_WRONLY)
    os.dup2(fd, 1)
    os.execvp(argv[0], argv)
# Exited but not reaped: its /proc/PID/io (all its threads) is still there.
os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
wall = time.monotonic() - start
io = {}
for line in open(f"/proc/{pid}/io"):
    k, v = line.split(":")
    io[k] = int(v)
_, status, ru = os.wait4(pid, 0)
with open(out, "w") as f:
    f.write(f"{wall:.3f},{ru.ru_utime:.2f},{ru.ru_stime:.2f},{ru.ru_maxrss},"
            f"{io['read_bytes']},{io['rchar']}\n")
sys.exit(os.waitstatus_to_exitcode(status))
PY

export RESTIC_PASSWORD=bench
echo "run,tool,op,wall_s,user_s,sys_s,max_rss_kib,read_bytes,rchar,db_bytes,wal_bytes,repo_bytes,index_bytes" >"$out"

repo_of() { echo "$scratch/repo-$1"; }

measure() { # run tool op cmd...
  local run=$1 tool=$2 op=$3 t repo_bytes="" index_bytes=""
  shift 3
  t=$(mktemp)
  python3 "$wrapper" -o "$t" "$@" 2>"$t.err" || {
    echo "$tool $op failed:" >&2; cat "$t.err" >&2; exit 1; }
  [ "$tool" = cat ] || repo_bytes=$(du -sb "$(repo_of "$tool")" | cut -f1)
  [ "$tool" != strata ] || index_bytes=$(stat -c %s "$(repo_of strata)/index.redb")
  echo "$run,$tool,$op,$(cat "$t"),$(stat -c %s "$db"),$(stat -c %s "$db-wal" 2>/dev/null || echo 0),$repo_bytes,$index_bytes" >>"$out"
  rm -f "$t" "$t.err"
}

backup() { # run tool op: a backup of $dir by tool
  local r; r=$(repo_of "$2")
  case "$2" in
    strata) measure "$@" "$strata" backup --repo "$r" --kind hourly "$dir" ;;
    restic) measure "$@" restic -r "$r" --cache-dir "$scratch/restic-cache" backup -q "$dir" ;;
  esac
}

hold_pid=""
stop_hold() { [ -z "$hold_pid" ] || kill "$hold_pid" 2>/dev/null || true; hold_pid=""; }
trap stop_hold EXIT

for run in $(seq 1 "$runs"); do
  order=(strata restic)
  [ $((run % 2)) = 1 ] || order=(restic strata)
  rm -rf "$(repo_of strata)" "$(repo_of restic)" "$scratch/restic-cache"
  "$strata" init --repo "$(repo_of strata)" >/dev/null
  restic init --repository-version 2 -r "$(repo_of restic)" --cache-dir "$scratch/restic-cache" >/dev/null
  bash "$corpus" hold "$dir" 100000 &
  hold_pid=$!
  cat "$db" >/dev/null
  sync
  # Past strata's window for fresh timestamps (the log the hold just opened).
  sleep 1
  for op in first nochange; do
    for tool in "${order[@]}"; do
      backup "$run" "$tool" "$op"
    done
  done
  for mode in none truncate; do
    bash "$corpus" mutate "$dir" 0.001 "$mode"
    sync
    sleep 1
    op=hourly-log
    [ "$mode" = none ] || op=hourly-ckpt
    for tool in "${order[@]}"; do
      backup "$run" "$tool" "$op"
    done
  done
  if [ "$cold" = 1 ]; then
    drop_cache
    measure "$run" cat read-cold cat "$db"
  fi
  measure "$run" cat read-warm cat "$db"
  if [ "$cold" = 1 ]; then
    bash "$corpus" mutate "$dir" 0.001 truncate
    drop_cache
    sleep 1
    backup "$run" strata full-cold
  fi
  bash "$corpus" mutate "$dir" 0.001 truncate
  cat "$db" >/dev/null
  sync
  sleep 1
  backup "$run" strata full-warm
  stop_hold
  echo "run $run done (${order[*]})" >&2
done

python3 - "$out" <<'PY'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1])))
tools, ops = [], []
for r in rows:
    if r["tool"] not in tools: tools.append(r["tool"])
    if r["op"] not in ops: ops.append(r["op"])
runs = sorted(set(r["run"] for r in rows), key=int)
MiB = 2**20
def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None
def f(x, d=2):
    return "n/a" if x is None else f"{x:.{d}f}"
# Repository growth per operation: bytes after minus bytes after the tool's previous operation.
growth, last = {}, {}
for r in rows:
    if r["repo_bytes"] == "": continue
    key = (r["run"], r["tool"])
    growth[id(r)] = int(r["repo_bytes"]) - last.get(key, 0)
    last[key] = int(r["repo_bytes"])
# Operations that read the whole database: their throughput is meaningful.
whole = {"first", "hourly-ckpt", "read-cold", "read-warm", "full-cold", "full-warm"}
db = med([int(r["db_bytes"]) for r in rows])
print(f"results: {sys.argv[1]} ({len(runs)} runs; medians); database {db / MiB:.0f} MiB")
print("| operation | tool | wall s | CPU s | peak RSS MiB | read from disk MiB | read calls MiB | repo growth MiB | MiB/s |")
print("|---|---|---|---|---|---|---|---|---|")
for op in ops:
    for t in tools:
        rs = [r for r in rows if r["tool"] == t and r["op"] == op]
        if not rs: continue
        wall = med([float(r["wall_s"]) for r in rs])
        cpu = med([float(r["user_s"]) + float(r["sys_s"]) for r in rs])
        rss = med([int(r["max_rss_kib"]) / 1024 for r in rs])
        disk = med([int(r["read_bytes"]) / MiB for r in rs])
        calls = med([int(r["rchar"]) / MiB for r in rs])
        grow = med([growth[id(r)] / MiB for r in rs if id(r) in growth])
        speed = med([int(r["db_bytes"]) / MiB / float(r["wall_s"]) for r in rs]) if op in whole else None
        print(f"| {op} | {t} | {f(wall)} | {f(cpu)} | {f(rss, 1)} | {f(disk, 1)} | {f(calls, 1)} | "
              f"{f(grow, 1)} | {f(speed, 0) if speed else ''} |")
def per_run(tool_a, op_a, tool_b, op_b, key, least=0):
    # Ratios over a denominator under `least` (reads of a few KiB) mean nothing: left out.
    out = []
    for run in runs:
        a = [r for r in rows if r["run"] == run and r["tool"] == tool_a and r["op"] == op_a]
        b = [r for r in rows if r["run"] == run and r["tool"] == tool_b and r["op"] == op_b]
        if a and b and key(b[0]) and key(b[0]) >= least:
            out.append(key(a[0]) / key(b[0]))
    return med(out)
wall = lambda r: float(r["wall_s"])
rchar = lambda r: int(r["rchar"])
print()
print("strata / restic, per run then median:")
print("| operation | wall ratio | read-calls ratio |")
print("|---|---|---|")
for op in ["first", "nochange", "hourly-log", "hourly-ckpt"]:
    print(f"| {op} | {f(per_run('strata', op, 'restic', op, wall), 3)} | "
          f"{f(per_run('strata', op, 'restic', op, rchar, MiB), 3)} |")
print()
print("strata's index (index.redb) after each operation, against the database:")
print("| operation | index MiB | % of the database |")
print("|---|---|---|")
for op in ops:
    ix = med([int(r["index_bytes"]) for r in rows if r["tool"] == "strata" and r["op"] == op and r.get("index_bytes")])
    if ix is not None:
        print(f"| {op} | {ix / MiB:.1f} | {100 * ix / db:.2f} |")
print()
print("strata's full pass against cat (throughput ratio, per run then median; 1.0 = as fast as cat):")
print("| page cache | strata MiB/s | cat MiB/s | ratio |")
print("|---|---|---|---|")
for kind in ["cold", "warm"]:
    s = med([int(r["db_bytes"]) / MiB / wall(r) for r in rows if r["op"] == f"full-{kind}"])
    c = med([int(r["db_bytes"]) / MiB / wall(r) for r in rows if r["op"] == f"read-{kind}"])
    ratio = per_run("cat", f"read-{kind}", "strata", f"full-{kind}", wall)
    print(f"| {kind} | {f(s, 0)} | {f(c, 0)} | {f(ratio, 3)} |")
PY

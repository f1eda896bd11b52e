#!/usr/bin/env bash
# Following a large SQLite database (see docs/SERVE.md, "Following SQLite databases"):
#
#   benches/follow_db.sh [--dir DIR] [--size-gb N] [--seconds S] [--rate TPS] [--pairs P]
#                        [--hours H] [--cold]
#
# On a database made by ../shared/corpus/large_db.sh (8 GiB by default, reused if present):
#   writer        an application committing TPS small transactions per second for S seconds,
#                 alone and with `strata follow` running, P times each, alternated (the
#                 machine's noise moves a sub-millisecond p99 by more than the follower does):
#                 commit latency p50/p99 of each run and the median p99 ratio; the follower's
#                 lag (when it stamped each transaction minus when the writer's COMMIT
#                 returned, from the journal) and peak memory
#   hourly        H "hours": `mutate DIR 0.001 truncate` (0.1% of the rows rewritten in one
#                 transaction, then the application asks for a TRUNCATE checkpoint), then a
#                 snapshot, with the follower running: wall time, bytes read (read calls, all
#                 files), repository growth
#   one-shot      the same hour with no follower (the log reset by the application's
#                 checkpoint: a full pass), for comparison
#
# --cold drops the page cache (as root) before each snapshot, so that what it reads comes from the
# disk. Default flags throughout. STRATA_BIN=PATH runs that binary instead of building.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
corpus=$here/../shared/corpus/large_db.sh
size_gb=8 dir="" seconds=30 rate=100 hours=3 pairs=3 cold=0
while [ $# -gt 0 ]; do
  case $1 in
    --dir) dir=$2; shift 2 ;;
    --size-gb) size_gb=$2; shift 2 ;;
    --seconds) seconds=$2; shift 2 ;;
    --rate) rate=$2; shift 2 ;;
    --hours) hours=$2; shift 2 ;;
    --pairs) pairs=$2; shift 2 ;;
    --cold) cold=1; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
cache=${XDG_CACHE_HOME:-$HOME/.cache}/strata-bench
dir=${dir:-$cache/large-$size_gb}
db=$dir/app.db
if [ -n "${STRATA_BIN:-}" ]; then
  strata=$STRATA_BIN
else
  (cd "$here" && cargo build --release --quiet)
  strata=$here/target/release/strata
fi
[ -f "$db" ] || bash "$corpus" gen "$dir" "$size_gb"
scratch=$cache/follow-scratch
rm -rf "$scratch"; mkdir -p "$scratch"
repo=$scratch/repo
"$strata" init --repo "$repo" >/dev/null
cat "$db" >/dev/null

cat >"$scratch/writer.py" <<'PY'
# writer.py DB SECONDS RATE OUT: small transactions at RATE per second; each COMMIT's return time
# and latency, one per line.
import sqlite3, sys, time, random
db, seconds, rate, out = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
c = sqlite3.connect(db, isolation_level=None)
c.execute("PRAGMA busy_timeout=5000")
top = c.execute("SELECT max(id) FROM t").fetchone()[0]
rows, start = [], time.time()
n = 0
while time.time() - start < seconds:
    due = start + n / rate
    if due > time.time():
        time.sleep(due - time.time())
    c.execute("BEGIN")
    c.execute("UPDATE t SET body = hex(randomblob(300)) WHERE id = ?", (random.randint(1, top),))
    t0 = time.time()
    c.execute("COMMIT")
    t1 = time.time()
    rows.append(f"{t1:.6f} {t1 - t0:.6f}")
    n += 1
open(out, "w").write("\n".join(rows) + "\n")
PY

cat >"$scratch/journal.py" <<'PY'
# journal.py DIR: the follower's time (Unix seconds) of each transaction it copied, in order.
import os, struct, sys
def varint(b, i):
    x = b[i]
    if x < 251: return x, i + 1
    n = {251: 2, 252: 4, 253: 8}[x]
    return int.from_bytes(b[i + 1:i + 1 + n], "little"), i + 1 + n
def signed(b, i):
    z, i = varint(b, i)
    return (z >> 1) ^ -(z & 1), i
d = sys.argv[1]
for name in sorted(f for f in os.listdir(d) if f.endswith(".journal")):
    data = open(os.path.join(d, name), "rb").read()
    off = 32
    while off + 8 <= len(data):
        body_len, head_len = struct.unpack_from("<II", data, off)
        if off + 4 + body_len + 8 > len(data): break
        head = data[off + 8: off + 8 + head_len]
        count, i = varint(head, 0)
        for _ in range(count):
            _, i = varint(head, i)                  # seq
            t, i = signed(head, i)                  # time_ns
            for _ in range(10): _, i = varint(head, i)  # start, end
            _, i = varint(head, i)                  # db_pages
            pages, i = varint(head, i)
            for _ in range(pages): _, i = varint(head, i)
            more = head[i]; i += 1
            if pages and not more:
                print(f"{t / 1e9:.6f}")
        off += 4 + body_len + 8
PY

cat >"$scratch/stats.py" <<'PY'
# stats.py PAIRS STAMPS: each run's commit latency, the median p99 ratio, the last followed
# run's lag.
import statistics, sys
def pct(xs, p): xs = sorted(xs); return xs[min(len(xs) - 1, int(p * len(xs)))]
pairs, d = int(sys.argv[1]), sys.argv[2]
ratios = []
for k in range(1, pairs + 1):
    alone = [float(l.split()[1]) for l in open(f"{d}/alone{k}.txt")]
    lat = [float(l.split()[1]) for l in open(f"{d}/followed{k}.txt")]
    print(f"pair {k}: commit latency alone p50 {pct(alone, .5)*1e3:.2f} ms, p99 {pct(alone, .99)*1e3:.2f} ms; "
          f"followed p50 {pct(lat, .5)*1e3:.2f} ms, p99 {pct(lat, .99)*1e3:.2f} ms ({len(lat)} commits)")
    ratios.append(pct(lat, .99) / pct(alone, .99))
print(f"p99 ratio followed/alone: {' '.join(f'{r:.2f}' for r in ratios)}; median {statistics.median(ratios):.2f}")
# The journal's transactions are the writer's, in order (the last len(followed) of them).
followed = [tuple(map(float, l.split())) for l in open(f"{d}/followed{pairs}.txt")]
stamps = [float(l) for l in open(sys.argv[3])][-len(followed):]
if len(stamps) == len(followed):
    lag = [s - c[0] for s, c in zip(stamps, followed)]
    print(f"follower lag: p50 {pct(lag, .5)*1e3:.1f} ms, p99 {pct(lag, .99)*1e3:.1f} ms, max {max(lag)*1e3:.1f} ms")
else:
    print(f"follower copied {len(stamps)} transactions of {len(followed)}")
PY

echo "== writer: $rate transactions/s for $seconds s, alone and followed, $pairs times" >&2
fpid=
trap '[ -z "$fpid" ] || kill $fpid 2>/dev/null || true' EXIT
for k in $(seq 1 "$pairs"); do
  python3 "$scratch/writer.py" "$db" "$seconds" "$rate" "$scratch/alone$k.txt"
  [ -z "$fpid" ] || { kill $fpid; wait $fpid 2>/dev/null || true; }
  rm -rf "$repo"; "$strata" init --repo "$repo" >/dev/null
  "$strata" follow --repo "$repo" "$db" 2>"$scratch/follow.err" &
  fpid=$!
  sleep 1
  python3 "$scratch/writer.py" "$db" "$seconds" "$rate" "$scratch/followed$k.txt"
  sleep 1
  [ "$k" = "$pairs" ] || { kill $fpid; wait $fpid 2>/dev/null || true; fpid=; }
done
journal=$(ls -d "$repo"/follow/*/)
python3 "$scratch/journal.py" "$journal" >"$scratch/stamps.txt"
python3 "$scratch/stats.py" "$pairs" "$scratch" "$scratch/stamps.txt"
echo "follower: $(grep VmHWM /proc/$fpid/status | tr -s ' ')"

cat >"$scratch/measure.py" <<'PY'
# measure.py CMD...: runs it; prints wall time, CPU, peak memory and /proc/PID/io read counts.
import os, sys, time
start = time.monotonic()
pid = os.fork()
if pid == 0:
    fd = os.open(os.devnull, os.O_WRONLY)
    os.dup2(fd, 1)
    os.execvp(sys.argv[1], sys.argv[1:])
os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
wall = time.monotonic() - start
io = dict((k, int(v)) for k, v in (l.split(":") for l in open(f"/proc/{pid}/io")))
_, status, ru = os.wait4(pid, 0)
print(f"wall {wall:.2f} s, CPU {ru.ru_utime + ru.ru_stime:.2f} s, peak {ru.ru_maxrss >> 10} MiB, "
      f"read calls {io['rchar'] / 2**20:.1f} MiB, from disk {io['read_bytes'] / 2**20:.1f} MiB", end="")
sys.exit(os.waitstatus_to_exitcode(status))
PY
measure() { # measure CMD...: its figures and the repository's growth
  local before after
  if [ "$cold" = 1 ]; then sync; echo 3 >/proc/sys/vm/drop_caches; fi
  before=$(du -sb "$repo" | cut -f1)
  printf '  '
  python3 "$scratch/measure.py" "$@"
  after=$(du -sb "$repo" | cut -f1)
  echo ", repository +$(( (after - before) >> 20 )) MiB"
}

echo "== hourly snapshots, followed" >&2
"$strata" backup --repo "$repo" --kind hourly --json "$dir" >/dev/null
for h in $(seq 1 "$hours"); do
  bash "$corpus" mutate "$dir" 0.001 truncate
  sleep 2
  echo "hour $h:"
  measure "$strata" backup --repo "$repo" --kind hourly --json "$dir"
done
echo "follower: $(grep VmHWM /proc/$fpid/status | tr -s ' ')"
cat "$journal/status.json"; echo
kill $fpid; wait $fpid 2>/dev/null || true
trap - EXIT

echo "== the same hour, no follower (the checkpoint resets the log: a full pass)" >&2
bash "$corpus" mutate "$dir" 0.001 truncate
sleep 1
measure "$strata" backup --repo "$repo" --kind hourly --json "$dir"

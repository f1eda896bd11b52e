#!/usr/bin/env bash
# PostgreSQL base backups, WAL archive and recovery to a moment (docs/POSTGRES.md):
#
#   benches/pg_pitr.sh [--scale N] [--minutes M] [--clients C] [--overlap S] [--dir DIR]
#                      [--no-dumps]
#
# A PostgreSQL server (the newest under /usr/lib/postgresql, default settings but for
# archive_mode=on, archive_command = strata pg archive-wal, archive_timeout=60), pgbench at scale
# N (100: about 1.5 GB), then:
#   base 1        `strata backup --pg-base` (default flags): time, stored bytes
#   load          pgbench -c C for M minutes; every second the archiver's lag in segments
#                 (pg_walfile_name(pg_current_wal_lsn()) against pg_stat_archiver's
#                 last_archived_wal), its maximum and failures
#   base 2        when the load's M minutes are over (with --overlap S the load goes on S more
#                 seconds, through the backup, the archiver's lag still sampled): time, stored
#                 bytes, against the bytes of the 8 KiB pages that
#                 differ between the two base backups (counted from both, restored) plus the WAL
#                 inside base 2
#   recovery      to the moment the load ended (M minutes after base 1): `strata pg restore`
#                 then the server's replay (restore_command = strata pg restore-wal) until it is
#                 promoted; and PostgreSQL's replay alone of the same WAL, its files already on
#                 the local disk (restore_command = cp); the ratio
#   dumps         (unless --no-dumps) pg_dump | strata backup --stdin, and pg_dump | restic backup
#                 --stdin, before and after the load: capture time and the bytes the second one
#                 added
# Runs the server and strata as `postgres` when started as root. STRATA_BIN=PATH runs that binary
# instead of building.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
scale=100 minutes=10 clients=2 dir="" dumps=1 overlap=0
while [ $# -gt 0 ]; do
  case $1 in
    --scale) scale=$2; shift 2 ;;
    --minutes) minutes=$2; shift 2 ;;
    --clients) clients=$2; shift 2 ;;
    --dir) dir=$2; shift 2 ;;
    --no-dumps) dumps=0; shift ;;
    --overlap) overlap=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
if [ -n "${STRATA_BIN:-}" ]; then
  strata=$STRATA_BIN
else
  (cd "$here" && cargo build --release --quiet)
  strata=$here/target/release/strata
fi
strata=$(readlink -f "$strata")
bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
dir=${dir:-/var/tmp/strata-bench-pg}
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
rm -rf "$dir"; mkdir -p "$dir"
[ "$(id -u)" = 0 ] && chown postgres: "$dir" && cp "$strata" "$dir/strata" && chown postgres: "$dir/strata" && strata=$dir/strata
data=$dir/data repo=$dir/repo sock=$dir/sock
as_pg mkdir -p "$sock"
as_pg "$strata" init --repo "$repo" >/dev/null
as_pg "$bin/initdb" -A trust -U postgres -D "$data" >/dev/null
cat >>"$data/postgresql.conf" <<EOF
listen_addresses = ''
unix_socket_directories = '$sock'
wal_level = replica
archive_mode = on
archive_command = '$strata pg archive-wal --repo $repo %p %f'
archive_timeout = 60
EOF
as_pg "$bin/pg_ctl" -D "$data" -l "$dir/server.log" -w start >/dev/null
stop_all() { for d in "$data" "$dir/copy" "$dir/alone"; do [ -f "$d/postmaster.pid" ] && as_pg "$bin/pg_ctl" -D "$d" -m fast stop >/dev/null 2>&1; done; true; }
trap stop_all EXIT
psql() { as_pg "$bin/psql" -X -A -t -q -h "$sock" -U postgres -d postgres "$@"; }
conn="host=$sock user=postgres"
now() { date +%s.%N; }
echo "PostgreSQL $(psql -c 'SHOW server_version'), pgbench scale $scale, $minutes min of load, $clients clients"
as_pg "$bin/pgbench" -h "$sock" -U postgres -i -q -s "$scale" postgres 2>/dev/null
echo "database: $(psql -c "SELECT pg_size_pretty(pg_database_size('postgres'))")"

added() { as_pg "$strata" --repo "$repo" show "$1" --json | python3 -c 'import json,sys; s=json.load(sys.stdin)["stats"]; print(s["new_stored_bytes"], s["new_raw_bytes"])'; }
base() {
  local t0 t1 out id
  t0=$(now)
  out=$(as_pg "$strata" --repo "$repo" backup --pg-base "$conn" --kind daily --json)
  t1=$(now)
  id=$(echo "$out" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
  echo "$id $(python3 -c "print(f'{$t1-$t0:.2f}')")"
}
read -r base1 base1_s <<<"$(base)"
read -r base1_stored base1_raw <<<"$(added "$base1")"
echo "base 1: $base1_s s, stored $((base1_stored >> 20)) MiB (new raw $((base1_raw >> 20)) MiB)"

# Load, with the archiver's lag sampled every second; base 2 once the M minutes are over.
as_pg "$bin/pgbench" -h "$sock" -U postgres -c "$clients" -j "$clients" -T $((minutes * 60 + overlap)) postgres >"$dir/pgbench.out" 2>&1 &
bench=$!
load_start=$(now)
max_lag=0 samples=0 base2_job=""
per_log=$(( 4294967296 / $(psql -c "SELECT setting::bigint * (CASE unit WHEN 'B' THEN 1 WHEN 'kB' THEN 1024 ELSE 1048576 END) FROM pg_settings WHERE name = 'wal_segment_size'") ))
sample() {
  row=$(psql -c "SELECT pg_walfile_name(pg_current_wal_lsn()), coalesce(last_archived_wal,''), failed_count FROM pg_stat_archiver" 2>/dev/null || true)
  IFS='|' read -r cur last failed <<<"$row"
  if [ -n "$last" ] && [ ${#last} = 24 ] && [ -n "$cur" ]; then
    # Segment numbers: the "log" part counts 4 GiB, the segment part seg_size units of it.
    lag=$(( (16#${cur:8:8} - 16#${last:8:8}) * per_log + 16#${cur:16:8} - 16#${last:16:8} - 1 ))
    [ $lag -gt $max_lag ] && max_lag=$lag
    echo "$(now) $cur $last $lag" >>"$dir/lag.log"
  fi
  samples=$((samples + 1))
}
# The moment recovered to below, and the total then: read while the accounts are locked
# against pgbench's writers.
mark() {
  psql -c "BEGIN; LOCK TABLE pgbench_accounts IN SHARE MODE; SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') || ' ' || sum(abalance) FROM pgbench_accounts; COMMIT;"
}
while kill -0 $bench 2>/dev/null || { [ -n "$base2_job" ] && kill -0 "$base2_job" 2>/dev/null; }; do
  sample
  if [ -z "$base2_job" ] && python3 -c "import sys; sys.exit(0 if $(now) - $load_start >= $minutes * 60 else 1)"; then
    if [ "$overlap" = 0 ]; then wait $bench || { echo "pgbench failed"; cat "$dir/pgbench.out"; exit 1; }; fi
    read -r target total <<<"$(mark)"
    base2_at=$(now)
    base >"$dir/base2.out" &
    base2_job=$!
  fi
  sleep 1
done
wait $bench || { echo "pgbench failed"; cat "$dir/pgbench.out"; exit 1; }
if [ -z "$base2_job" ]; then # the load ended between two samples
  read -r target total <<<"$(mark)"
  base2_at=$(now)
  base >"$dir/base2.out" &
  base2_job=$!
fi
wait "$base2_job" || { echo "base 2 failed"; exit 1; }
tps=$(grep -o 'tps = [0-9.]*' "$dir/pgbench.out" | head -1)
wal_mb=$(psql -c "SELECT (pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0') / 1048576)::bigint")
echo "load: $tps; archiver lag max $max_lag segments over $samples samples (overlap with base 2: $overlap s), failures $(psql -c 'SELECT failed_count FROM pg_stat_archiver')"
python3 - "$dir/lag.log" "$base2_at" <<'PY'
import sys
rows = [l.split() for l in open(sys.argv[1])]
b2 = float(sys.argv[2])
before = [int(r[3]) for r in rows if float(r[0]) < b2 - 5]
during = [int(r[3]) for r in rows if float(r[0]) >= b2 - 5]
q = lambda v, p: sorted(v)[min(len(v) - 1, int(p * len(v)))] if v else 0
print(f"  archiver lag in segments, load alone: p50 {q(before, .5)}, p99 {q(before, .99)}, max {max(before, default=0)}; "
      f"from 5 s before base 2 on: p50 {q(during, .5)}, p99 {q(during, .99)}, max {max(during, default=0)}")
PY
read -r base2 base2_s <"$dir/base2.out"
read -r base2_stored base2_raw <<<"$(added "$base2")"
echo "base 2: $base2_s s, stored $((base2_stored >> 20)) MiB (new raw $((base2_raw >> 20)) MiB)"

# The pages that changed: both base backups restored, compared page by page.
as_pg "$strata" --repo "$repo" restore "$base1" --path pgdata "$dir/b1" >/dev/null
as_pg "$strata" --repo "$repo" restore "$base2" --path pgdata "$dir/b2" >/dev/null
python3 - "$dir/b1/pgdata" "$dir/b2/pgdata" >"$dir/changed.txt" <<'PY'
import os, sys, hashlib
a, b = sys.argv[1], sys.argv[2]
changed = wal = 0
for root, _, files in os.walk(b):
    for f in files:
        p = os.path.join(root, f); rel = os.path.relpath(p, b)
        if rel.startswith("pg_wal/"):
            wal += os.path.getsize(p); continue
        old = os.path.join(a, rel)
        with open(p, "rb") as x:
            y = open(old, "rb") if os.path.exists(old) else None
            while True:
                page = x.read(8192)
                if not page: break
                prev = y.read(8192) if y else b""
                if page != prev: changed += len(page)
            if y: y.close()
print(changed, wal)
PY
read -r changed_bytes wal_inside <<<"$(cat "$dir/changed.txt")"
rm -rf "$dir/b1" "$dir/b2"
limit=$(python3 -c "print(int(1.2 * $changed_bytes + $wal_inside))")
echo "pages changed between the base backups: $((changed_bytes >> 20)) MiB; WAL inside base 2: $((wal_inside >> 20)) MiB"
echo "base 2 grew the repository by $((base2_stored >> 20)) MiB; limit 1.2 x changed + its WAL = $((limit >> 20)) MiB: ratio $(python3 -c "print(f'{$base2_stored / $limit:.3f}')") of the limit"

# Recovery to the end of the load (from base 1: base 2 ended after it). A time target is
# reached at the first commit past it: one is made, and archived.
psql -c "CREATE TABLE after_the_target AS SELECT 1 AS x" >/dev/null
archive_all() {
  local last done
  last=$(psql -c "SELECT pg_walfile_name(pg_current_wal_lsn())")
  psql -c "SELECT pg_switch_wal()" >/dev/null
  until done=$(psql -c "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver"); [[ -n $done && ! $done < $last ]]; do sleep 0.2; done
}
archive_all
t0=$(now)
as_pg "$strata" --repo "$repo" pg restore --at "$target" --no-archive "$dir/copy" >"$dir/restore.out"
t1=$(now)
grep -q "snapshot ${base1:0:8}" "$dir/restore.out" || { echo "restore did not start from base 1:"; cat "$dir/restore.out"; exit 1; }
start_wait() { # DIR: starts a server on DIR, waits until it is promoted; prints the seconds
  local d=$1 s=$dir/sock-$(basename "$1") t0
  as_pg mkdir -p "$s"
  t0=$(now)
  as_pg "$bin/pg_ctl" -D "$d" -o "-c unix_socket_directories=$s -c listen_addresses=''" -l "$d.log" start >/dev/null
  until [ "$(as_pg "$bin/psql" -X -A -t -h "$s" -U postgres -d postgres -c 'SELECT pg_is_in_recovery()' 2>/dev/null)" = f ]; do
    if ! as_pg "$bin/pg_ctl" -D "$d" status >/dev/null; then echo "the server on $d stopped:" >&2; tail -5 "$d.log" >&2; exit 1; fi
    sleep 0.2
  done
  python3 -c "print(f'{$(now) - $t0:.2f}')"
}
replay=$(start_wait "$dir/copy")
got=$(as_pg "$bin/psql" -X -A -t -h "$dir/sock-copy" -U postgres -d postgres -c "SELECT sum(abalance) FROM pgbench_accounts")
[ "$got" = "$total" ] || { echo "recovered total $got, expected $total"; exit 1; }
as_pg "$bin/pg_ctl" -D "$dir/copy" -m fast stop >/dev/null
strata_total=$(python3 -c "print(f'{$t1 - $t0 + $replay:.2f}')")
echo "recovery with strata: restore $(python3 -c "print(f'{$t1-$t0:.2f}')") s + replay $replay s = $strata_total s (sum(abalance) as at the target)"
# PostgreSQL alone: the same base files, the WAL files already local, restore_command = cp.
as_pg mkdir "$dir/walcopy"
as_pg "$strata" --repo "$repo" restore "$base1" --path pgdata "$dir/alone-files" >/dev/null
mv "$dir/alone-files/pgdata" "$dir/alone"; rmdir "$dir/alone-files"
first=$(sed -n 's/^START WAL LOCATION: .*(file \(.*\))$/\1/p' "$dir/alone/backup_label")
for name in $(as_pg "$strata" --repo "$repo" list --kind pg-wal --json | python3 -c 'import json,sys; print("\n".join(s["name"] for s in json.load(sys.stdin)))'); do
  if [[ $name > $first || $name == $first ]] || [[ $name == *.history ]]; then
    as_pg "$strata" --repo "$repo" pg restore-wal "$name" "$dir/walcopy/$name"
  fi
done
wal_files=$(ls "$dir/walcopy" | wc -l)
as_pg touch "$dir/alone/recovery.signal"
cat >>"$dir/alone/postgresql.auto.conf" <<EOF
restore_command = 'cp $dir/walcopy/%f %p'
recovery_target_time = '$(echo "$target" | sed 's/T/ /; s/Z$/+00/')'
recovery_target_action = 'promote'
archive_mode = off
EOF
alone=$(start_wait "$dir/alone")
got=$(as_pg "$bin/psql" -X -A -t -h "$dir/sock-alone" -U postgres -d postgres -c "SELECT sum(abalance) FROM pgbench_accounts")
[ "$got" = "$total" ] || { echo "replay alone: total $got, expected $total"; exit 1; }
as_pg "$bin/pg_ctl" -D "$dir/alone" -m fast stop >/dev/null
echo "PostgreSQL's replay alone of the same $wal_files WAL files (local, cp): $alone s; strata recovery / replay alone: $(python3 -c "print(f'{$strata_total / $alone:.2f}')") (limit 2)"
rm -rf "$dir/copy" "$dir/alone" "$dir/walcopy"
archive_bytes=$(as_pg "$strata" --repo "$repo" list --kind pg-wal --json | python3 -c 'import json,sys; print(sum(s["stats"]["new_stored_bytes"] for s in json.load(sys.stdin)))')
echo "WAL archive: $(( archive_bytes >> 20 )) MiB stored for ${wal_mb} MiB of WAL written since initdb"

if [ $dumps = 1 ]; then
  # A logical dump before and after another load of the same length, by each tool.
  export RESTIC_PASSWORD=bench RESTIC_REPOSITORY=$dir/restic
  as_pg env RESTIC_PASSWORD=bench restic init --repo "$dir/restic" >/dev/null
  dump_round() {
    local t0 t1 t2 out id
    t0=$(now)
    out=$(as_pg bash -c "'$bin/pg_dump' -h '$sock' -U postgres --format=plain postgres | '$strata' --repo '$repo' backup --stdin app.sql --kind hourly --json")
    t1=$(now)
    before=$(du -sb "$dir/restic" | cut -f1)
    as_pg bash -c "'$bin/pg_dump' -h '$sock' -U postgres --format=plain postgres | RESTIC_PASSWORD=bench restic --repo '$dir/restic' backup --stdin --stdin-filename app.sql --json" >"$dir/restic.json"
    t2=$(now)
    id=$(echo "$out" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
    read -r st _ <<<"$(added "$id")"
    # What the repository grew by on disk (restic's own data_added counts bytes before
    # compression).
    rs=$(( $(du -sb "$dir/restic" | cut -f1) - before ))
    echo "$(python3 -c "print(f'{$t1-$t0:.1f}')") $st $(python3 -c "print(f'{$t2-$t1:.1f}')") $rs"
  }
  read -r s1 a1 r1 b1 <<<"$(dump_round)"
  as_pg "$bin/pgbench" -h "$sock" -U postgres -c "$clients" -j "$clients" -T $((minutes * 60)) postgres >/dev/null 2>&1
  wal_before=$archive_bytes
  read -r s2 a2 r2 b2 <<<"$(dump_round)"
  archive_after=$(as_pg "$strata" --repo "$repo" list --kind pg-wal --json | python3 -c 'import json,sys; print(sum(s["stats"]["new_stored_bytes"] for s in json.load(sys.stdin)))')
  echo "after $minutes more minutes of load:"
  echo "  pg_dump | strata backup --stdin: ${s2} s, added $((a2 >> 20)) MiB (first dump ${s1} s, $((a1 >> 20)) MiB)"
  echo "  pg_dump | restic backup --stdin: ${r2} s, added $((b2 >> 20)) MiB (first dump ${r1} s, $((b1 >> 20)) MiB)"
  echo "  WAL archive for those minutes: $(( (archive_after - wal_before) >> 20 )) MiB"
fi
du -sh "$repo" | sed 's/^/repository: /'

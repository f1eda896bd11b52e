#!/usr/bin/env bash
# strata on a local 3-node Garage cluster (tests/garage/cluster.sh) against a local repository.
#
#   benches/s3.sh [--steps K]
#
# W1 (built by benches/e2e.sh's cache, ~/.cache/strata-bench/w1-1024): first backup, no-change
# backup, K hourly steps and a restore, on S3 and on local disk in turn, with the requests each
# S3 step made (from Garage's request log) and the bytes it added. Then throughput: a plain
# client (boto3, 64 MiB objects) against strata backing up and restoring 512 MiB of random data.
# STRATA_BIN=PATH runs that binary; GARAGE=PATH that garage.
set -euo pipefail
steps=2
[ "${1:-}" = "--steps" ] && steps=$2
here=$(cd "$(dirname "$0")/.." && pwd)
gen="$here/../shared/corpus/gen_corpus.py"
cache=${BENCH_CACHE:-$HOME/.cache/strata-bench}
w1="$cache/w1-1024"
[ -f "$w1/.complete" ] || { echo "run benches/e2e.sh once first (it builds W1)" >&2; exit 1; }
if [ -n "${STRATA_BIN:-}" ]; then strata=$STRATA_BIN; else
  (cd "$here" && cargo build --release --quiet); strata="$here/target/release/strata"; fi
work=$(mktemp -d /tmp/strata-s3-bench.XXXXXX)
trap 'bash "$here/tests/garage/cluster.sh" stop "$work/garage" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
env_out=$(bash "$here/tests/garage/cluster.sh" start "$work/garage" 33000)
# shellcheck disable=SC2046
export $(echo "$env_out" | xargs)
export XDG_CACHE_HOME="$work/cache"
requests() { cat "$work"/garage/node*/log | grep -c "generic_server.*(key " || true; }
t() { /usr/bin/time -f "%e" -o "$work/t" "$@" >/dev/null; cat "$work/t"; }
s3size() { python3 - "$1" <<'PY'
import boto3, os, sys
s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"], region_name="garage")
total = 0
for page in s3.get_paginator("list_objects_v2").paginate(Bucket="strata-test", Prefix=sys.argv[1] + "/"):
    total += sum(o["Size"] for o in page.get("Contents", []))
print(total)
PY
}

for kind in s3 local; do
  data="$work/data-$kind"
  cp -r "$w1" "$data"; rm -f "$data/.complete"; sync
  if [ $kind = s3 ]; then repo=s3://strata-test/w1; else repo="$work/repo"; fi
  size() { if [ $kind = s3 ]; then s3size w1; else du -sb "$repo" | cut -f1; fi; }
  "$strata" init --repo "$repo" >/dev/null
  r0=$(requests); b0=$(size)
  echo "$kind first backup: $(t "$strata" backup --repo "$repo" --kind hourly "$data") s, $(( ($(size) - b0) >> 20 )) MiB, $(( $(requests) - r0 )) requests"
  if [ $kind = local ]; then
    "$strata" init --repo s3://strata-test/replica >/dev/null
    r0=$(requests)
    echo "copy of the first snapshot to s3: $(t "$strata" copy --from "$repo" --to s3://strata-test/replica) s, $(( $(requests) - r0 )) requests"
  fi
  r0=$(requests); b0=$(size)
  echo "$kind no-change backup: $(t "$strata" backup --repo "$repo" --kind hourly "$data") s, $(( $(size) - b0 )) bytes, $(( $(requests) - r0 )) requests"
  for s in $(seq 1 "$steps"); do
    python3 "$gen" mutate --out "$data" --step "$s" >/dev/null; sync
    r0=$(requests); b0=$(size)
    echo "$kind hourly step $s: $(t "$strata" backup --repo "$repo" --kind hourly "$data") s, $(( ($(size) - b0) >> 10 )) KiB, $(( $(requests) - r0 )) requests"
    if [ $kind = local ]; then
      r0=$(requests)
      echo "copy of hourly step $s to s3: $(t "$strata" copy --from "$repo" --to s3://strata-test/replica) s, $(( $(requests) - r0 )) requests"
    fi
  done
  r0=$(requests)
  echo "$kind restore: $(t "$strata" restore --repo "$repo" --no-check-sqlite latest "$work/restored-$kind") s, $(( $(requests) - r0 )) requests"
  diff -r "$data" "$work/restored-$kind/$(basename "$data")" >/dev/null && echo "$kind restore byte-identical"
  rm -rf "$work/restored-$kind" "$data"
done

# Throughput: a plain client, then strata on incompressible data.
python3 - <<'PY'
import boto3, os, time
s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"], region_name="garage")
body = os.urandom(64 << 20)
t = time.time()
for i in range(8):
    s3.put_object(Bucket="strata-test", Key=f"plain/{i}", Body=body)
up = 8 * 64 / (time.time() - t)
t = time.time()
for i in range(8):
    s3.get_object(Bucket="strata-test", Key=f"plain/{i}")["Body"].read()
down = 8 * 64 / (time.time() - t)
print(f"boto3 64 MiB objects, memory to bucket and back: put {up:.0f} MiB/s, get {down:.0f} MiB/s")
PY
head -c $((512 << 20)) /dev/urandom > "$work/random.bin"; sync
# The same job as strata's: a file into the bucket and back into a file (boto3's managed
# transfer: multipart, 10 threads).
python3 - "$work/random.bin" <<'PY'
import boto3, os, sys, time
s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"], region_name="garage")
t = time.time()
s3.upload_file(sys.argv[1], "strata-test", "plain/file")
up = 512 / (time.time() - t)
t = time.time()
s3.download_file("strata-test", "plain/file", sys.argv[1] + ".back")
os.sync()
down = 512 / (time.time() - t)
os.remove(sys.argv[1] + ".back")
print(f"boto3 512 MiB file to bucket and back: upload_file {up:.0f} MiB/s, download_file {down:.0f} MiB/s")
PY
"$strata" init --repo s3://strata-test/tp --zstd-level 1 >/dev/null
up=$(t "$strata" backup --repo s3://strata-test/tp "$work/random.bin")
down=$(t "$strata" restore --repo s3://strata-test/tp latest "$work/tp-restored")
echo "strata 512 MiB random: backup $up s ($(python3 -c "print(round(512/$up))") MiB/s), restore $down s ($(python3 -c "print(round(512/$down))") MiB/s)"

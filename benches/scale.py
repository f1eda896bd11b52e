#!/usr/bin/env python3
"""How strata's costs change as a repository collects snapshots, or chunks.

    benches/scale.py [--snapshots 1000] [--change-every 10] [--report-every 100]
    benches/scale.py --chunks 100000,1000000,10000000

Builds a small W1-like directory (gen_corpus.py with an 8 MB database), then takes --snapshots
backups of kind hourly; before every --change-every'th backup the data gets one `mutate` step,
the others find nothing changed. At every --report-every snapshots it prints: the median wall
time of the recent no-change and changed backups, the wall time of `strata list` and of
`strata stats`, the largest peak RSS of the recent backups, and the repository size. The goal is a
flat curve: cost in proportion to the change, not to the number of snapshots.

With --chunks, it builds for each count a repository of about that many chunks instead (random
data cut at 64/256/1024 bytes, so 10^7 chunks take about 2.5 GB), then measures a no-change
backup, a backup after 64 KiB of one file changed, `list`, `stats`, and the peak RSS of each:
the goal is the same flat curve as the repository's index grows. It then forgets one changed
snapshot and runs gc, timing both: their cost should follow what is removed, not the size.

STRATA_BIN=PATH runs that binary instead of this checkout's release build.
"""
import argparse, json, os, resource, shutil, statistics, subprocess, sys, time

here = os.path.dirname(os.path.abspath(__file__))
strata = os.environ.get("STRATA_BIN") or os.path.join(here, "..", "target", "release", "strata")
gen = os.path.join(here, "..", "..", "shared", "corpus", "gen_corpus.py")


def run(args):
    """Runs a command; returns (wall seconds, peak RSS MiB)."""
    t = time.perf_counter()
    p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t
    if status != 0:
        sys.exit("failed: %s\n%s" % (" ".join(args), p.stderr.read().decode()))
    return wall, usage.ru_maxrss / 1024


def du(path):
    return int(subprocess.check_output(["du", "-sb", path]).split()[0])


def chunk_scale(counts, strata, scratch):
    print("| chunks (stats) | data GB | first backup s | first RSS MiB | no-change ms | changed ms | "
          "changed RSS MiB | list ms | stats ms | index MiB | forget ms | gc ms | gc RSS MiB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for count in counts:
        shutil.rmtree(scratch, ignore_errors=True)
        data = os.path.join(scratch, "data")
        os.makedirs(data)
        total = count * 270  # bytes: a little over the 256-byte average chunk
        per_file = 64 << 20
        files = max(1, total // per_file)
        for k in range(files):
            with open(os.path.join(data, "f%04d.bin" % k), "wb") as f:
                f.write(os.urandom(min(per_file, total)))
        subprocess.run(["sync"], check=True)
        repo = os.path.join(scratch, "repo")
        subprocess.run([strata, "init", "--repo", repo, "--chunk-min", "64", "--chunk-avg", "256",
                        "--chunk-max", "1024"], check=True, stdout=subprocess.DEVNULL)
        first, first_rss = run([strata, "backup", "--repo", repo, data])
        chunks = int(json.loads(subprocess.check_output(
            [strata, "stats", "--repo", repo, "--json"]))["chunks"])
        nochange = statistics.median(run([strata, "backup", "--repo", repo, data])[0]
                                     for _ in range(3))
        changed_runs = []
        for step in range(3):
            with open(os.path.join(data, "f0000.bin"), "r+b") as f:
                f.seek((step + 1) * (1 << 20))
                f.write(os.urandom(64 << 10))
            changed_runs.append(run([strata, "backup", "--repo", repo, data]))
        changed = statistics.median(w for w, _ in changed_runs)
        changed_rss = max(r for _, r in changed_runs)
        list_wall, _ = run([strata, "list", "--repo", repo])
        stats_wall, _ = run([strata, "stats", "--repo", repo])
        index = os.path.getsize(os.path.join(repo, "index.redb")) / 2**20
        # Retention at this size: a gc brings everything up to date (it counts the backups so
        # far); then one more changed backup, and the oldest changed snapshot is forgotten and
        # its space reclaimed. Only that last forget + gc is timed.
        run([strata, "gc", "--repo", repo])
        with open(os.path.join(data, "f0000.bin"), "r+b") as f:
            f.seek(8 << 20)
            f.write(os.urandom(64 << 10))
        run([strata, "backup", "--repo", repo, data])
        snaps = json.loads(subprocess.check_output([strata, "list", "--repo", repo, "--json"]))
        snaps.sort(key=lambda s: s["time"])
        oldest_changed = snaps[4]["id"]  # first, 3 no-change, then the changed ones
        forget_wall, _ = run([strata, "forget", "--repo", repo, oldest_changed])
        gc_wall, gc_rss = run([strata, "gc", "--repo", repo])
        print("| %d | %.2f | %.1f | %.0f | %.1f | %.1f | %.0f | %.1f | %.1f | %.0f | %.0f | %.0f | %.0f |" % (
            chunks, files * min(per_file, total) / 1e9, first, first_rss, nochange * 1000,
            changed * 1000, changed_rss, list_wall * 1000, stats_wall * 1000, index,
            forget_wall * 1000, gc_wall * 1000, gc_rss))
        sys.stdout.flush()
    shutil.rmtree(scratch, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--chunks", help="comma-separated chunk counts: the index-size scenario")
    ap.add_argument("--snapshots", type=int, default=1000)
    ap.add_argument("--change-every", type=int, default=10)
    ap.add_argument("--report-every", type=int, default=100)
    args = ap.parse_args()
    if not os.environ.get("STRATA_BIN"):
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=os.path.join(here, ".."),
                       check=True)
    cache = os.environ.get("BENCH_CACHE", os.path.expanduser("~/.cache/strata-bench"))
    scratch = os.path.join(cache, "scale")
    if args.chunks:
        chunk_scale([int(c) for c in args.chunks.split(",")], strata, scratch)
        return
    shutil.rmtree(scratch, ignore_errors=True)
    os.makedirs(scratch)
    data = os.path.join(scratch, "data")
    subprocess.run([sys.executable, gen, "gen", "--out", data, "--size-mb", "8", "--memory-mb", "1",
                    "--log-mb", "2", "--vs-mb", "2"], check=True, stdout=subprocess.DEVNULL)
    repo = os.path.join(scratch, "repo")
    subprocess.run([strata, "init", "--repo", repo], check=True, stdout=subprocess.DEVNULL)
    print("| snapshots | no-change backup ms | changed backup ms | list ms | stats ms | peak RSS MiB | repo MiB |")
    print("|---|---|---|---|---|---|---|")
    nochange, changed, rss = [], [], []
    step = 0
    for i in range(1, args.snapshots + 1):
        if i > 1 and i % args.change_every == 0:
            step += 1
            subprocess.run([sys.executable, gen, "mutate", "--out", data, "--step", str(step)],
                           check=True, stdout=subprocess.DEVNULL)
            wall, peak = run([strata, "backup", "--repo", repo, "--kind", "hourly", data])
            changed.append(wall)
        else:
            wall, peak = run([strata, "backup", "--repo", repo, "--kind", "hourly", data])
            if i > 1:
                nochange.append(wall)
        rss.append(peak)
        if i % args.report_every == 0 or i == args.snapshots:
            list_wall, _ = run([strata, "list", "--repo", repo])
            stats_wall, _ = run([strata, "stats", "--repo", repo])
            med = lambda xs: statistics.median(xs) * 1000 if xs else float("nan")
            print("| %d | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f |" % (
                i, med(nochange), med(changed), list_wall * 1000, stats_wall * 1000, max(rss),
                du(repo) / 2**20))
            sys.stdout.flush()
            nochange, changed, rss = [], [], []


if __name__ == "__main__":
    main()

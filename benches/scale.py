#!/usr/bin/env python3
"""How strata's costs change as a repository collects snapshots.

    benches/scale.py [--snapshots 1000] [--change-every 10] [--report-every 100]

Builds a small W1-like directory (gen_corpus.py with an 8 MB database), then takes --snapshots
backups of kind hourly; before every --change-every'th backup the data gets one `mutate` step,
the others find nothing changed. At every --report-every snapshots it prints: the median wall
time of the recent no-change and changed backups, the wall time of `strata list` and of
`strata stats`, the largest peak RSS of the recent backups, and the repository size. The goal is a
flat curve: cost in proportion to the change, not to the number of snapshots.
"""
import argparse, os, resource, shutil, statistics, subprocess, sys, time

here = os.path.dirname(os.path.abspath(__file__))
strata = os.path.join(here, "..", "target", "release", "strata")
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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--snapshots", type=int, default=1000)
    ap.add_argument("--change-every", type=int, default=10)
    ap.add_argument("--report-every", type=int, default=100)
    args = ap.parse_args()
    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=os.path.join(here, ".."), check=True)
    cache = os.environ.get("BENCH_CACHE", os.path.expanduser("~/.cache/strata-bench"))
    scratch = os.path.join(cache, "scale")
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

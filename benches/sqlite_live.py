#!/usr/bin/env python3
"""Snapshots of a large SQLite database while a writer keeps committing.

    benches/sqlite_live.py [--db-mb 1024] [--seconds 300] [--every 10] [--wal] [--check N]

Copies W1's app.db (built by benches/e2e.sh in ~/.cache/strata-bench) into a scratch directory,
starts a writer process that commits small transactions as fast as it can (an insert of a ~500
byte message and an update of a summary row), and runs `strata backup --sqlite` every --every
seconds for --seconds. Prints per-snapshot duration and stored bytes (median, max), the writer's commits per
second while a snapshot runs and while none does, then restores the last --check snapshots (all
with --check 0) and runs PRAGMA integrity_check on each, also checking that the summary row
matches the messages (a torn image would not).
"""
import argparse, json, multiprocessing, os, shutil, sqlite3, statistics, subprocess, sys, time

here = os.path.dirname(os.path.abspath(__file__))
strata = os.path.join(here, "..", "target", "release", "strata")


def writer(db, wal, stop, log_path):
    c = sqlite3.connect(db, timeout=60, isolation_level=None)
    if wal:
        c.execute("PRAGMA journal_mode=WAL")
    c.execute("CREATE TABLE IF NOT EXISTS bench_log(n INTEGER PRIMARY KEY, body TEXT)")
    c.execute("CREATE TABLE IF NOT EXISTS bench_summary(last INTEGER)")
    if c.execute("SELECT count(*) FROM bench_summary").fetchone()[0] == 0:
        c.execute("INSERT INTO bench_summary VALUES (0)")
    n = c.execute("SELECT last FROM bench_summary").fetchone()[0]
    stamps = []
    while not stop.is_set():
        n += 1
        c.execute("BEGIN IMMEDIATE")
        c.execute("INSERT INTO bench_log VALUES (?, ?)", (n, ("message %d " % n) * 40))
        c.execute("UPDATE bench_summary SET last = ?", (n,))
        c.execute("COMMIT")
        stamps.append(time.time())
    with open(log_path, "w") as f:
        json.dump(stamps, f)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--db-mb", type=int, default=1024)
    ap.add_argument("--seconds", type=float, default=300)
    ap.add_argument("--every", type=float, default=10)
    ap.add_argument("--wal", action="store_true")
    ap.add_argument("--check", type=int, default=0, help="restore and check the last N (0: all)")
    args = ap.parse_args()
    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=os.path.join(here, ".."), check=True)

    cache = os.environ.get("BENCH_CACHE", os.path.expanduser("~/.cache/strata-bench"))
    src = os.path.join(cache, "w1-%d" % args.db_mb, "app.db")
    if not os.path.exists(src):
        sys.exit("%s missing: run benches/e2e.sh --runs 1 first" % src)
    scratch = os.path.join(cache, "sqlite-live")
    shutil.rmtree(scratch, ignore_errors=True)
    os.makedirs(os.path.join(scratch, "app"))
    db = os.path.join(scratch, "app", "app.db")
    shutil.copyfile(src, db)
    repo = os.path.join(scratch, "repo")
    subprocess.run([strata, "init", "--repo", repo], check=True, stdout=subprocess.DEVNULL)

    stop = multiprocessing.Event()
    log = os.path.join(scratch, "commits.json")
    w = multiprocessing.Process(target=writer, args=(db, args.wal, stop, log))
    w.start()
    time.sleep(2)
    snaps = []  # (start, end, id, stored bytes)
    t_end = time.time() + args.seconds
    while time.time() < t_end:
        t0 = time.time()
        out = subprocess.run([strata, "backup", "--repo", repo, "--kind", "hourly", "--json",
                              "--sqlite", db + "=app.db"], capture_output=True, text=True)
        t1 = time.time()
        if out.returncode != 0:
            stop.set(); w.join()
            sys.exit("backup failed: " + out.stderr)
        r = json.loads(out.stdout)
        snaps.append((t0, t1, r["id"], r["stats"]["new_stored_bytes"]))
        time.sleep(max(0.0, args.every - (time.time() - t0)))
    stop.set()
    w.join()
    stamps = json.load(open(log))

    durations = [b - a for a, b, _, _ in snaps]
    stored = [s for _, _, _, s in snaps[1:]]  # the first one stores everything
    during = sum(1 for t in stamps if any(a <= t <= b for a, b, _, _ in snaps))
    busy = sum(durations)
    span = stamps[-1] - stamps[0] if len(stamps) > 1 else 1
    rate_during = during / busy if busy else 0
    rate_idle = (len(stamps) - during) / max(span - busy, 1e-9)
    mode = "WAL" if args.wal else "rollback journal"
    print("%d snapshots of a %.0f MB database (%s) every %gs under a writer"
          % (len(snaps), os.path.getsize(db) / 1e6, mode, args.every))
    print("snapshot wall s: first %.2f, then median %.2f, max %.2f"
          % (durations[0], statistics.median(durations[1:] or [0]), max(durations[1:] or [0])))
    if stored:
        print("stored per snapshot after the first: median %.2f MiB, max %.2f MiB"
              % (statistics.median(stored) / 2**20, max(stored) / 2**20))
    print("writer commits/s: %.0f while a snapshot runs, %.0f otherwise (%.0f%% drop); %d commits"
          % (rate_during, rate_idle, 100 * (1 - rate_during / rate_idle) if rate_idle else 0,
             len(stamps)))

    check = snaps if args.check == 0 else snaps[-args.check:]
    ok = 0
    for _, _, sid, _ in check:
        target = os.path.join(scratch, "restore")
        shutil.rmtree(target, ignore_errors=True)
        subprocess.run([strata, "restore", "--repo", repo, sid[:12], target], check=True,
                       stdout=subprocess.DEVNULL)
        c = sqlite3.connect(os.path.join(target, "app.db"))
        res = c.execute("PRAGMA integrity_check").fetchall()
        last = c.execute("SELECT last FROM bench_summary").fetchone()[0]
        count, top = c.execute("SELECT count(*), coalesce(max(n), 0) FROM bench_log").fetchone()
        c.close()
        good = res == [("ok",)] and count == top == last
        ok += good
        print("snapshot %s: integrity %s, %d messages, summary %d%s"
              % (sid[:8], res[0][0], count, last, "" if good else "  <-- FAILED"))
    print("%d of %d restored snapshots checked OK" % (ok, len(check)))
    shutil.rmtree(os.path.join(scratch, "restore"), ignore_errors=True)
    sys.exit(0 if ok == len(check) else 1)


if __name__ == "__main__":
    main()

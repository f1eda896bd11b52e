//! Live SQLite databases: snapshots taken while a writer keeps committing restore to databases
//! that pass `PRAGMA integrity_check` and hold exactly a prefix of the committed transactions.

mod common;
use common::*;
use rusqlite::Connection;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// Commits transaction after transaction: each inserts row n (with some padding, so pages fill
/// and split) and rewrites a summary row, until told to stop.
fn start_writer(
    path: &Path,
    wal: bool,
    stop: Arc<AtomicBool>,
    committed: Arc<AtomicU64>,
) -> std::thread::JoinHandle<()> {
    let path = path.to_path_buf();
    std::thread::spawn(move || {
        let c = Connection::open(&path).unwrap();
        c.busy_timeout(Duration::from_secs(30)).unwrap();
        let mode = if wal { "WAL" } else { "DELETE" };
        c.pragma_update(None, "journal_mode", mode).unwrap();
        let mut n = committed.load(Ordering::SeqCst);
        while !stop.load(Ordering::SeqCst) {
            n += 1;
            c.execute_batch("BEGIN IMMEDIATE").unwrap();
            c.execute(
                "INSERT INTO t(n, pad) VALUES (?1, randomblob(700))",
                [n as i64],
            )
            .unwrap();
            c.execute("UPDATE summary SET last = ?1", [n as i64])
                .unwrap();
            c.execute_batch("COMMIT").unwrap();
            committed.store(n, Ordering::SeqCst);
        }
    })
}

fn check_restored(db: &Path) -> u64 {
    assert_eq!(
        strata::source::sqlite::integrity_check(db).unwrap(),
        Ok(()),
        "{}",
        db.display()
    );
    let c = Connection::open(db).unwrap();
    let (count, max, min): (i64, Option<i64>, Option<i64>) = c
        .query_row("SELECT count(*), max(n), min(n) FROM t", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .unwrap();
    let last: i64 = c
        .query_row("SELECT last FROM summary", [], |r| r.get(0))
        .unwrap();
    // A gap-free prefix 1..=max, and the summary written in the same transactions agrees.
    assert_eq!(min.unwrap_or(1), 1);
    assert_eq!(count, max.unwrap_or(0), "rows missing in {}", db.display());
    assert_eq!(last, max.unwrap_or(0));
    count as u64
}

/// A repository and `app/app.db` with the tables the writer fills; returns the directory, the
/// database path and a connection to it.
fn app_db(env: &Env) -> (PathBuf, PathBuf, Connection) {
    env.init();
    let dir = env.path("app");
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("app.db");
    let c = Connection::open(&db).unwrap();
    c.execute_batch(
        "CREATE TABLE t(n INTEGER PRIMARY KEY, pad BLOB);
         CREATE TABLE summary(last INTEGER); INSERT INTO summary VALUES (0);",
    )
    .unwrap();
    (dir, db, c)
}

fn live_snapshots(wal: bool) {
    let env = Env::new();
    let (dir, db, c) = app_db(&env);
    {
        c.execute_batch("BEGIN").unwrap();
        for n in 1..=3000 {
            c.execute("INSERT INTO t VALUES (?1, randomblob(700))", [n])
                .unwrap();
        }
        c.execute("UPDATE summary SET last = 3000", []).unwrap();
        c.execute_batch("COMMIT").unwrap();
    }
    drop(c);
    let stop = Arc::new(AtomicBool::new(false));
    let committed = Arc::new(AtomicU64::new(3000));
    let writer = start_writer(&db, wal, stop.clone(), committed.clone());
    std::thread::sleep(Duration::from_millis(100));
    let mut ids = Vec::new();
    // Commits and seconds while snapshots run, and while none does.
    let (mut busy, mut idle) = ((0u64, 0f64), (0u64, 0f64));
    for _ in 0..20 {
        let (n0, t0) = (committed.load(Ordering::SeqCst), std::time::Instant::now());
        ids.push(env.backup(&[&dir]));
        let (n1, t1) = (committed.load(Ordering::SeqCst), std::time::Instant::now());
        std::thread::sleep(Duration::from_millis(30));
        let n2 = committed.load(Ordering::SeqCst);
        busy = (busy.0 + n1 - n0, busy.1 + (t1 - t0).as_secs_f64());
        idle = (idle.0 + n2 - n1, idle.1 + t1.elapsed().as_secs_f64());
    }
    stop.store(true, Ordering::SeqCst);
    // Reported, not asserted: timing belongs to benchmarks (benches/sqlite_live.py).
    eprintln!(
        "writer ({}): {:.0} commits/s during snapshots, {:.0} between them",
        if wal { "WAL" } else { "rollback journal" },
        busy.0 as f64 / busy.1,
        idle.0 as f64 / idle.1
    );
    writer.join().unwrap();
    assert!(
        committed.load(Ordering::SeqCst) > 3050,
        "the writer made progress"
    );

    let mut previous = 0;
    for (i, id) in ids.iter().enumerate() {
        let show = env.json(&["show", &id[..12]]);
        let paths = entry_paths(&show);
        assert!(
            !paths
                .iter()
                .any(|p| p.ends_with("-wal") || p.ends_with("-shm")),
            "{paths:?}"
        );
        let out = env.path(&format!("r{i}"));
        // A stale log beside the destination must not be replayed over the restored image.
        std::fs::create_dir_all(out.join("app")).unwrap();
        std::fs::write(out.join("app/app.db-wal"), vec![0xAB; 10_000]).unwrap();
        env.ok(&["restore", &id[..12], out.to_str().unwrap()]);
        assert!(!out.join("app/app.db-wal").exists());
        let rows = check_restored(&out.join("app/app.db"));
        assert!(rows >= previous, "snapshots go forward in time");
        previous = rows;
    }
    assert!(previous > 3000);
    env.ok(&["verify", "--read-data"]);
    // An image read through SQLite is one committed state: the default check leaves it out,
    // and says so.
    let out = env.path("checked");
    let r = env.json(&["restore", "latest", out.to_str().unwrap()]);
    assert_eq!(r["check"], "quick_check");
    assert!(r["integrity"].as_array().unwrap().is_empty());
    assert_eq!(r["unchecked"].as_array().unwrap().len(), 1);
    // --check-sqlite=quick runs SQLite's own check on each restored database.
    let quick = env.path("quick");
    let r = env.json(&[
        "restore",
        "latest",
        quick.to_str().unwrap(),
        "--check-sqlite=quick",
    ]);
    assert_eq!(r["integrity"].as_array().unwrap().len(), 1);
    assert_eq!(r["integrity"][0]["ok"], true);
    assert!(r["unchecked"].as_array().unwrap().is_empty());
    // A damaged database is reported and fails the command.
    let db = out.join("app/app.db");
    let mut bytes = std::fs::read(&db).unwrap();
    let page = 4096;
    for b in &mut bytes[5 * page + 100..5 * page + 3000] {
        *b = 0x5A;
    }
    std::fs::write(&db, &bytes).unwrap();
    assert!(
        strata::source::sqlite::integrity_check(&db)
            .unwrap()
            .is_err()
    );
    let damaged = env.backup(&[&out.join("app")]);
    let again = env.path("again");
    let r = env.run(&[
        "restore",
        &damaged[..12],
        again.to_str().unwrap(),
        "--check-sqlite=quick",
    ]);
    assert_eq!(code(&r), 3, "{}", String::from_utf8_lossy(&r.stdout));
    assert!(String::from_utf8_lossy(&r.stdout).contains("quick_check FAILED"));
    // The full check finds it as well.
    let full = env.path("full");
    let r = env.run(&[
        "restore",
        &damaged[..12],
        full.to_str().unwrap(),
        "--check-sqlite=full",
    ]);
    assert_eq!(code(&r), 3, "{}", String::from_utf8_lossy(&r.stdout));
    assert!(String::from_utf8_lossy(&r.stdout).contains("integrity_check FAILED"));
    // --no-check-sqlite skips the check: the bytes are restored as they were saved.
    let unchecked = env.path("unchecked");
    let r = env.json(&[
        "restore",
        &damaged[..12],
        unchecked.to_str().unwrap(),
        "--no-check-sqlite",
    ]);
    assert!(r["integrity"].as_array().unwrap().is_empty());
    assert_eq!(std::fs::read(unchecked.join("app/app.db")).unwrap(), bytes);
}

#[test]
fn live_wal_database_snapshots_are_consistent() {
    live_snapshots(true);
}

#[test]
fn live_rollback_journal_database_snapshots_are_consistent() {
    live_snapshots(false);
}

#[test]
fn commits_that_touch_only_the_wal_are_not_missed() {
    let env = Env::new();
    let (dir, _, c) = app_db(&env);
    c.execute_batch("PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0;")
        .unwrap();
    env.backup(&[&dir]);
    std::thread::sleep(Duration::from_millis(200)); // past the racy-timestamp window
    env.backup(&[&dir]);
    // Only the WAL changes: the main file keeps its size and mtime.
    c.execute("INSERT INTO t VALUES (1, x'00')", []).unwrap();
    c.execute("UPDATE summary SET last = 1", []).unwrap();
    let id = env.backup(&[&dir]);
    let out = env.path("r");
    env.ok(&["restore", &id[..12], out.to_str().unwrap()]);
    assert_eq!(check_restored(&out.join("app/app.db")), 1);

    // With --raw-sqlite the files are copied as they are, log included.
    let raw = env.run(&["backup", "--raw-sqlite", "--json", dir.to_str().unwrap()]);
    assert_eq!(code(&raw), 0);
    let raw_id: serde_json::Value = serde_json::from_slice(&raw.stdout).unwrap();
    let show = env.json(&["show", &raw_id["id"].as_str().unwrap()[..12]]);
    assert!(entry_paths(&show).iter().any(|p| p.ends_with("app.db-wal")));
}

/// The entry at `path` in `show --json`.
fn entry<'a>(show: &'a serde_json::Value, path: &str) -> &'a serde_json::Value {
    show["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["path"] == path)
        .unwrap_or_else(|| panic!("{path} not in {show}"))
}

#[test]
fn databases_copied_as_plain_bytes_are_checked_by_default() {
    let env = Env::new();
    let (dir, db, c) = app_db(&env);
    c.execute_batch("INSERT INTO t VALUES (1, zeroblob(20000)); UPDATE summary SET last = 1;")
        .unwrap();
    drop(c);
    // A SQLite header over pages SQLite cannot read: copied as it is, with a warning.
    let mut broken = std::fs::read(&db).unwrap()[..100].to_vec();
    broken.resize(8 * 4096, 0);
    broken[100..].copy_from_slice(&noise(8 * 4096 - 100, 7));
    write(&dir.join("broken.db"), &broken);
    let r = env.run(&["backup", dir.to_str().unwrap()]);
    assert_eq!(code(&r), 0, "{}", stderr(&r));
    assert!(
        stderr(&r).contains("copied as a plain file"),
        "{}",
        stderr(&r)
    );
    let show = env.json(&["show", "latest"]);
    assert_eq!(entry(&show, "app/app.db")["through_sqlite"], true);
    assert_eq!(entry(&show, "app/broken.db")["through_sqlite"], false);
    assert_eq!(entry(&show, "app/broken.db")["page_size"], 4096);

    // By default only the copy is checked; it fails the restore (exit 3), naming it.
    let out = env.path("out");
    let r = env.run(&["restore", "latest", out.to_str().unwrap()]);
    let said = String::from_utf8_lossy(&r.stdout).into_owned();
    assert_eq!(code(&r), 3, "{said}");
    assert!(said.contains("broken.db: quick_check FAILED"), "{said}");
    assert!(
        said.contains("app.db: read through SQLite when saved; not checked"),
        "{said}"
    );
    // The bytes were still restored as saved, and the database read through SQLite is whole.
    let r = env.json(&[
        "restore",
        "latest",
        env.path("unchecked").to_str().unwrap(),
        "--no-check-sqlite",
    ]);
    assert!(r["integrity"].as_array().unwrap().is_empty());
    assert_eq!(
        std::fs::read(env.path("unchecked/app/broken.db")).unwrap(),
        broken
    );
    assert_eq!(check_restored(&env.path("unchecked/app/app.db")), 1);

    // --raw-sqlite copies the database as plain bytes too: the default check then runs on it.
    std::fs::remove_file(dir.join("broken.db")).unwrap();
    // Past the window in which a just-changed file gets no file-cache stamp.
    std::thread::sleep(Duration::from_millis(250));
    let id = env.backup_args(&["--raw-sqlite", dir.to_str().unwrap()]);
    let show = env.json(&["show", &id]);
    assert_eq!(entry(&show, "app/app.db")["through_sqlite"], false);
    let r = env.json(&["restore", &id, env.path("raw").to_str().unwrap()]);
    assert_eq!(r["integrity"].as_array().unwrap().len(), 1, "{r}");
    assert_eq!(r["integrity"][0]["ok"], true);
    // Unchanged since, so taken from the file cache: still known as a copy.
    let again = env.backup_args(&["--raw-sqlite", dir.to_str().unwrap()]);
    let show = env.json(&["show", &again]);
    assert_eq!(show["stats"]["bytes_read"], 0, "{show}");
    assert_eq!(entry(&show, "app/app.db")["through_sqlite"], false);
    // A plain backup takes the cached copy as it is: still a copy. Once the database changes,
    // it is read through SQLite again, and so is its cached entry after that.
    let id = env.backup(&[&dir]);
    assert_eq!(
        entry(&env.json(&["show", &id]), "app/app.db")["through_sqlite"],
        false
    );
    let c = Connection::open(&db).unwrap();
    c.execute_batch("INSERT INTO t VALUES (2, x'00'); UPDATE summary SET last = 2;")
        .unwrap();
    drop(c);
    std::thread::sleep(Duration::from_millis(250));
    for read in [true, false] {
        let id = env.backup(&[&dir]);
        let show = env.json(&["show", &id]);
        assert_eq!(show["stats"]["bytes_read"] != 0, read, "{show}");
        assert_eq!(entry(&show, "app/app.db")["through_sqlite"], true, "{show}");
    }
}

#[test]
fn named_sqlite_sources_are_always_read_through_sqlite() {
    let env = Env::new();
    let (dir, db, c) = app_db(&env);
    c.execute_batch("PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0;")
        .unwrap();
    c.execute("INSERT INTO t VALUES (1, x'00')", []).unwrap();
    c.execute("UPDATE summary SET last = 1", []).unwrap();
    // The committed rows are only in the log, which the open connection keeps.
    assert!(dir.join("app.db-wal").exists());

    // --raw-sqlite applies to databases found in directories, never to a named --sqlite source.
    let spec = format!("{}=memory.db", db.display());
    let id = env.backup_args(&["--raw-sqlite", "--sqlite", &spec]);
    let show = env.json(&["show", &id]);
    assert_eq!(entry_paths(&show), vec!["memory.db".to_string()]);
    let src = &show["sources"][0];
    assert_eq!(src["kind"], "sqlite");
    assert_eq!(src["name"], "memory.db");
    let out = env.path("r");
    env.ok(&["restore", &id, out.to_str().unwrap()]);
    assert_eq!(check_restored(&out.join("memory.db")), 1);

    // Not a database, or missing: a clear error and nothing recorded.
    let not_db = env.path("notes.txt");
    write(
        &not_db,
        b"just some notes, long enough to hold a header................",
    );
    for (arg, says) in [
        (
            not_db.to_str().unwrap().to_string(),
            "not a SQLite database",
        ),
        (env.path("gone.db").display().to_string(), "no such file"),
    ] {
        let r = env.run(&["backup", "--sqlite", &arg]);
        let err = String::from_utf8_lossy(&r.stderr);
        assert_eq!(code(&r), 1, "{err}");
        assert!(err.contains(says), "{err}");
    }
    assert_eq!(env.json(&["list"]).as_array().unwrap().len(), 1);
    drop(c);
}

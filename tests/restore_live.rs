//! Restoring over files an application has open: a SQLite database a writer keeps committing to
//! is written in place through SQLite (the writer goes on, and nothing it commits after the
//! restore is lost); any other open file stops the restore before it changes anything, unless
//! `--force`; `--before` and `--after` hooks run around the restore.

mod common;
use common::*;
use rusqlite::Connection;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Rows the writer adds are numbered from here (their sequence number added).
const WRITER_BASE: i64 = 1_000_000;

/// `live/app` with a WAL-mode database `app.db` (rows 1..=500 of `snap`) and a file beside it;
/// returns the directory and the database.
fn app(env: &Env) -> (PathBuf, PathBuf) {
    env.init();
    let dir = env.path("live/app");
    std::fs::create_dir_all(&dir).unwrap();
    write(&dir.join("config.json"), b"{\"version\": 1}\n");
    let db = dir.join("app.db");
    let c = Connection::open(&db).unwrap();
    c.execute_batch(
        "PRAGMA journal_mode=WAL;
         CREATE TABLE t(n INTEGER PRIMARY KEY, src TEXT, pad BLOB);",
    )
    .unwrap();
    c.execute_batch("BEGIN").unwrap();
    for n in 1..=500 {
        c.execute(
            "INSERT INTO t VALUES (?1, 'snap', randomblob(300))",
            [n as i64],
        )
        .unwrap();
    }
    c.execute_batch("COMMIT").unwrap();
    (dir, db)
}

/// Every row of `t`: its number and where it came from.
fn table(db: &Path) -> Vec<(i64, String)> {
    let c = Connection::open(db).unwrap();
    let mut s = c.prepare("SELECT n, src FROM t ORDER BY n").unwrap();
    s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap()
}

/// The padding of every row numbered below `below`, in order (to compare contents exactly).
fn pads(db: &Path, below: i64) -> Vec<Vec<u8>> {
    let c = Connection::open(db).unwrap();
    let mut s = c
        .prepare("SELECT pad FROM t WHERE n < ?1 ORDER BY n")
        .unwrap();
    s.query_map([below], |r| r.get(0))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap()
}

/// An application's writer: commits row after row into `db` (WAL mode, a busy timeout as
/// applications set one) until told to stop; counts its commits, and returns its first error.
struct Writer {
    stop: Arc<AtomicBool>,
    committed: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<Result<(), String>>,
}

impl Writer {
    fn start(db: &Path) -> Writer {
        let (stop, committed) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU64::new(0)),
        );
        let (s, c, db) = (stop.clone(), committed.clone(), db.to_path_buf());
        let thread = std::thread::spawn(move || -> Result<(), String> {
            let conn = Connection::open(&db).map_err(|e| e.to_string())?;
            conn.busy_timeout(Duration::from_secs(30))
                .map_err(|e| e.to_string())?;
            let mut k = 0u64;
            while !s.load(Ordering::SeqCst) {
                k += 1;
                conn.execute(
                    "INSERT INTO t VALUES (?1, 'writer', randomblob(100))",
                    [WRITER_BASE + k as i64],
                )
                .map_err(|e| format!("commit {k}: {e}"))?;
                c.store(k, Ordering::SeqCst);
            }
            Ok(())
        });
        Writer {
            stop,
            committed,
            thread,
        }
    }

    fn committed(&self) -> u64 {
        self.committed.load(Ordering::SeqCst)
    }

    /// Waits until the writer has committed more than `n` rows.
    fn wait_past(&self, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(120);
        while self.committed() <= n {
            assert!(!self.thread.is_finished(), "the writer stopped");
            assert!(Instant::now() < deadline, "the writer made no progress");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Stops the writer; returns its last commit, or its error.
    fn stop(self) -> Result<u64, String> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().unwrap()?;
        Ok(self.committed.load(Ordering::SeqCst))
    }
}

/// A writer commits continuously while an older snapshot is restored over its database: it
/// never sees an error, and the database then holds exactly the snapshot's rows and every row
/// the writer committed after the restore wrote them (a run of its commits up to its last).
/// With `paths`, only those are restored; otherwise the whole directory, swapped in.
fn restore_under_a_writer(paths: &[&str]) {
    let env = Env::new();
    let (dir, db) = app(&env);
    let snap = env.backup(&[&dir]);
    let saved = pads(&db, WRITER_BASE);
    // Changes after the snapshot, which the restore takes back.
    let c = Connection::open(&db).unwrap();
    c.execute("DELETE FROM t WHERE n <= 100", []).unwrap();
    c.execute(
        "INSERT INTO t VALUES (5000, 'after the snapshot', x'00')",
        [],
    )
    .unwrap();
    drop(c);
    write(&dir.join("config.json"), b"{\"version\": 2}\n");

    let writer = Writer::start(&db);
    writer.wait_past(50);
    let (db_file, log) = (inode(&db), inode(&dir.join("app.db-wal")));
    let before = writer.committed();
    let target = env.path("live");
    // The image is checked before it is written in (it was read through SQLite: only on demand).
    let mut args = vec![
        "restore",
        &snap[..12],
        target.to_str().unwrap(),
        "--json",
        "--check-sqlite=quick",
    ];
    for p in paths {
        args.extend(["--path", p]);
    }
    let out = env.run(&args);
    let after = writer.committed();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        stderr(&out)
    );
    // The writer goes on committing into the restored database, the same file with the same
    // log as before (no log of the snapshot's beside it).
    writer.wait_past(after + 50);
    assert_eq!(inode(&db), db_file);
    assert_eq!(inode(&dir.join("app.db-wal")), log);
    let last = writer.stop().expect("the writer never failed");

    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let live = report["live"].as_array().unwrap();
    assert_eq!(live.len(), 1, "{report}");
    assert_eq!(live[0]["database"], db.display().to_string());
    assert_eq!(live[0]["holders"][0]["pid"], std::process::id());
    assert_eq!(report["integrity"][0]["ok"], true);
    let config = std::fs::read(dir.join("config.json")).unwrap();
    match paths.is_empty() {
        true => assert_eq!(config, b"{\"version\": 1}\n"),
        false => assert_eq!(config, b"{\"version\": 2}\n"),
    }
    assert!(strata_leftovers(&target).is_empty());

    let rows = table(&db);
    let (mine, theirs): (Vec<_>, Vec<_>) = rows.iter().partition(|r| r.0 < WRITER_BASE);
    assert_eq!(
        mine.iter().map(|r| (r.0, r.1.as_str())).collect::<Vec<_>>(),
        (1..=500).map(|n| (n, "snap")).collect::<Vec<_>>()
    );
    assert_eq!(pads(&db, WRITER_BASE), saved);
    assert!(theirs.iter().all(|r| r.1 == "writer"));
    let seq: Vec<u64> = theirs.iter().map(|r| (r.0 - WRITER_BASE) as u64).collect();
    assert!(
        !seq.is_empty(),
        "the writer's commits after the restore are there"
    );
    let first = seq[0];
    assert_eq!(
        seq,
        (first..=last).collect::<Vec<_>>(),
        "the writer's rows are one run of its commits, up to its last"
    );
    assert!(
        first > before && first <= after + 1,
        "the rows before the restore are gone ({first} > {before}) and none after it is lost \
         ({first} <= {})",
        after + 1
    );
    let c = Connection::open(&db).unwrap();
    let check: String = c
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
}

#[test]
fn a_database_written_to_during_a_restore_of_its_directory_keeps_its_writer() {
    restore_under_a_writer(&[]);
}

#[test]
fn a_database_restored_alone_keeps_its_writer() {
    restore_under_a_writer(&["app/app.db"]);
}

#[test]
fn an_open_file_stops_the_restore_unless_forced() {
    let env = Env::new();
    let (dir, db) = app(&env);
    write(&dir.join("events.log"), b"event 1\n");
    let snap = env.backup(&[&dir]);
    write(&dir.join("events.log"), b"event 1\nevent 2\n");
    Connection::open(&db)
        .unwrap()
        .execute("DELETE FROM t", [])
        .unwrap();
    let holding = Holding::new(&dir.join("events.log"));
    let target = env.path("live");
    let before = file_tree(&target);
    let inodes: Vec<_> = files_below(&target).iter().map(|p| inode(p)).collect();

    let out = env.run(&["restore", &snap[..12], target.to_str().unwrap()]);
    let err = stderr(&out);
    assert_eq!(code(&out), 1, "{err}");
    let holder = format!("pid {} (sleep)", holding.pid());
    assert!(
        err.contains("events.log is open for writing in") && err.contains(&holder),
        "{err}"
    );
    assert!(err.contains("--before") && err.contains("--force"), "{err}");
    // Nothing changed, and no restore point was taken.
    assert_eq!(file_tree(&target), before);
    let now: Vec<_> = files_below(&target).iter().map(|p| inode(p)).collect();
    assert_eq!(now, inodes);
    assert_eq!(env.json(&["list"]).as_array().unwrap().len(), 1);

    let out = env.run(&["restore", &snap[..12], target.to_str().unwrap(), "--force"]);
    let err = stderr(&out);
    assert_eq!(code(&out), 0, "{err}");
    assert!(err.contains("replaced all the same (--force)"), "{err}");
    assert_eq!(std::fs::read(dir.join("events.log")).unwrap(), b"event 1\n");
    assert_eq!(table(&db).len(), 500);
    drop(holding);
}

#[test]
fn hooks_run_around_the_restore_and_a_failing_before_hook_stops_it() {
    let env = Env::new();
    let (dir, _db) = app(&env);
    let snap = env.backup(&[&dir]);
    write(&dir.join("config.json"), b"{\"version\": 2}\n");
    let target = env.path("live");
    let log = env.path("hooks.log");
    let config = dir.join("config.json");
    let hook = |name: &str| {
        format!(
            "echo {name} >> {log}; cat {config} >> {log}",
            log = log.display(),
            config = config.display()
        )
    };

    // A failing before hook: nothing changes; the after hook runs all the same.
    let before = file_tree(&target);
    let out = env.run(&[
        "restore",
        &snap[..12],
        target.to_str().unwrap(),
        "--before",
        "echo cannot stop the app >&2; exit 7",
        "--after",
        &hook("after"),
    ]);
    let err = stderr(&out);
    assert_eq!(code(&out), 1, "{err}");
    assert!(
        err.contains("before hook") && err.contains("cannot stop the app"),
        "{err}"
    );
    assert_eq!(file_tree(&target), before);
    assert_eq!(env.json(&["list"]).as_array().unwrap().len(), 1);
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        "after\n{\"version\": 2}\n"
    );
    std::fs::remove_file(&log).unwrap();

    // Before sees the target as it was, after as restored.
    env.ok(&[
        "restore",
        &snap[..12],
        target.to_str().unwrap(),
        "--before",
        &hook("before"),
        "--after",
        &hook("after"),
    ]);
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        "before\n{\"version\": 2}\nafter\n{\"version\": 1}\n"
    );
}

#[test]
fn a_before_hook_that_stops_the_application_lets_the_restore_replace_its_files() {
    let env = Env::new();
    let (dir, _db) = app(&env);
    write(&dir.join("events.log"), b"event 1\n");
    let snap = env.backup(&[&dir]);
    write(&dir.join("events.log"), b"event 1\nevent 2\n");
    let holding = Holding::new(&dir.join("events.log"));
    let target = env.path("live");
    // The open file is looked for after the before hook: the process it stopped holds nothing.
    let stop = format!(
        "kill -9 {pid}; while [ -n \"$(ls /proc/{pid}/fd 2>/dev/null)\" ]; do sleep 0.01; done",
        pid = holding.pid()
    );
    let out = env.run(&[
        "restore",
        &snap[..12],
        target.to_str().unwrap(),
        "--before",
        &stop,
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(std::fs::read(dir.join("events.log")).unwrap(), b"event 1\n");
    drop(holding);
}

#[test]
fn a_failed_restore_puts_an_open_database_back_in_place() {
    let env = Env::new();
    let (dir, db) = app(&env);
    let other = env.path("live/other");
    write(&other.join("thing"), b"a file in the snapshot\n");
    let snap = env.backup(&[&dir, &other]);
    // After the snapshot: rows change, and a directory takes the file's place, which the
    // restore cannot replace.
    let app = Connection::open(&db).unwrap();
    app.execute("DELETE FROM t WHERE n <= 100", []).unwrap();
    app.execute(
        "INSERT INTO t VALUES (5000, 'after the snapshot', x'00')",
        [],
    )
    .unwrap();
    std::fs::remove_file(other.join("thing")).unwrap();
    write(&other.join("thing/inside"), b"i");
    let before = table(&db);
    let file = inode(&db);

    let target = env.path("live");
    let out = env.run(&[
        "restore",
        &snap[..12],
        target.to_str().unwrap(),
        "--path",
        "app/app.db",
        "--path",
        "other/thing",
        "--json",
    ]);
    let err = stderr(&out);
    assert_eq!(code(&out), 3, "{err}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["live"][0]["database"], db.display().to_string());
    let errors = report["errors"].to_string();
    assert!(
        errors.contains("is a directory; not replacing it with a file"),
        "{errors}"
    );
    assert!(err.contains("is back as it was"), "{err}");
    // The database was written in place, then put back in place: the application's connection
    // reads what it had, and writes on.
    assert_eq!(inode(&db), file);
    assert_eq!(table(&db), before);
    app.execute(
        "INSERT INTO t VALUES (5001, 'after the restore', x'00')",
        [],
    )
    .unwrap();
    assert_eq!(table(&db).len(), before.len() + 1);
    assert_eq!(std::fs::read(other.join("thing/inside")).unwrap(), b"i");
}

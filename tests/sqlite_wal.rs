//! WAL-mode databases and the file cache: an unchanged database is not read again, every kind
//! of change is seen, and a backup leaves no `-wal` or `-shm` behind that was not there before.

mod common;
use common::*;
use rusqlite::Connection;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Runs a backup of `dir`; returns its snapshot id and the bytes it read.
fn backup(env: &Env, dir: &Path) -> (String, u64) {
    let out = env.run(&["backup", "--json", dir.to_str().unwrap()]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let read = v["stats"]["bytes_read"].as_u64().unwrap();
    (v["id"].as_str().unwrap().to_string(), read)
}

/// Past the window in which a fresh timestamp is not trusted by the file cache.
fn settle() {
    std::thread::sleep(Duration::from_millis(250));
}

/// A repository and `app/app.db` in WAL mode with 500 rows; returns the directory, the database
/// and a connection to it (automatic checkpoints off, so commits stay in the log).
fn wal_db(env: &Env) -> (PathBuf, PathBuf, Connection) {
    wal_db_of(env, 500)
}

/// As [`wal_db`], with `rows` rows.
fn wal_db_of(env: &Env, rows: i64) -> (PathBuf, PathBuf, Connection) {
    env.init();
    let dir = env.path("app");
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("app.db");
    let c = create_wal(&db, 1..=rows);
    (dir, db, c)
}

/// As [`wal_db`], backed up once; a second backup, with nothing changed, read nothing.
fn backed_up_wal_db(env: &Env) -> (PathBuf, PathBuf, Connection) {
    let (dir, db, c) = wal_db(env);
    settle();
    backup(env, &dir);
    settle();
    assert_eq!(backup(env, &dir).1, 0);
    (dir, db, c)
}

/// Creates the database at `db` in WAL mode (automatic checkpoints off) with one row of 300
/// random bytes per id, committed in one transaction.
fn create_wal(db: &std::path::Path, ids: std::ops::RangeInclusive<i64>) -> Connection {
    let c = Connection::open(db).unwrap();
    c.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0;
         CREATE TABLE t(n INTEGER PRIMARY KEY, pad BLOB);",
    )
    .unwrap();
    c.execute_batch("BEGIN").unwrap();
    for n in ids {
        c.execute("INSERT INTO t VALUES (?1, randomblob(300))", [n])
            .unwrap();
    }
    c.execute_batch("COMMIT").unwrap();
    c
}

/// Every row of `t` in the database at `db` (a restored one), in order.
fn rows(db: &Path) -> Vec<(i64, Vec<u8>)> {
    rows_of(&Connection::open(db).unwrap())
}

/// Every row of `t` through connection `c`, in order.
fn rows_of(c: &Connection) -> Vec<(i64, Vec<u8>)> {
    let mut stmt = c.prepare("SELECT n, pad FROM t ORDER BY n").unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap()
}

/// Restores snapshot `id` and returns the rows of its `app/app.db`, after SQLite's own check.
fn restored_rows(env: &Env, id: &str, name: &str) -> Vec<(i64, Vec<u8>)> {
    let out = env.path(name);
    env.ok(&["restore", &id[..12], out.to_str().unwrap()]);
    let db = out.join("app/app.db");
    assert_eq!(
        strata::source::sqlite::integrity_check(&db).unwrap(),
        Ok(())
    );
    rows(&db)
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn an_unchanged_wal_database_held_open_is_not_read_again() {
    let env = Env::new();
    let (dir, _, c) = wal_db(&env);
    let expected = rows_of(&c);
    assert!(dir.join("app.db-wal").metadata().unwrap().len() > 0);
    settle();
    let (_, first) = backup(&env, &dir);
    assert!(first > 0);
    settle();
    let (id, second) = backup(&env, &dir);
    assert_eq!(second, 0, "an unchanged WAL database was read again");
    let (_, third) = backup(&env, &dir);
    assert_eq!(third, 0);
    assert_eq!(restored_rows(&env, &id, "r"), expected);
    // The application's connection still works, and its log was left as it was.
    c.execute("INSERT INTO t VALUES (501, x'01')", []).unwrap();
    assert_eq!(rows_of(&c).len(), 501);
}

#[test]
fn a_backup_leaves_no_log_behind_that_was_not_there() {
    let env = Env::new();
    let (dir, _, c) = wal_db(&env);
    let expected = rows_of(&c);
    // The last connection closes: SQLite checkpoints and removes its -wal and -shm.
    drop(c);
    assert_eq!(names(&dir), vec!["app.db".to_string()]);
    settle();
    let (id, first) = backup(&env, &dir);
    assert!(first > 0);
    assert_eq!(names(&dir), vec!["app.db".to_string()]);
    settle();
    let (_, second) = backup(&env, &dir);
    assert_eq!(second, 0, "an unchanged WAL database was read again");
    assert_eq!(names(&dir), vec!["app.db".to_string()]);
    assert_eq!(restored_rows(&env, &id, "r"), expected);
}

#[test]
fn a_commit_only_in_the_log_is_seen() {
    let env = Env::new();
    let (dir, db, c) = backed_up_wal_db(&env);
    let main = std::fs::metadata(&db).unwrap();
    c.execute("INSERT INTO t VALUES (501, x'0102')", [])
        .unwrap();
    // Only the log changed.
    let now = std::fs::metadata(&db).unwrap();
    assert_eq!(
        (now.len(), now.modified().unwrap()),
        (main.len(), main.modified().unwrap())
    );
    let (id, read) = backup(&env, &dir);
    assert!(read > 0);
    let got = restored_rows(&env, &id, "r");
    assert_eq!(got.len(), 501);
    assert_eq!(got[500], (501, vec![1, 2]));
}

#[test]
fn a_checkpoint_is_seen() {
    let env = Env::new();
    let (dir, _, c) = backed_up_wal_db(&env);
    c.execute("UPDATE t SET pad = x'AA' WHERE n = 7", [])
        .unwrap();
    c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)").unwrap();
    assert_eq!(dir.join("app.db-wal").metadata().unwrap().len(), 0);
    let (id, read) = backup(&env, &dir);
    assert!(read > 0);
    let got = restored_rows(&env, &id, "r");
    assert_eq!(got, rows_of(&c));
    assert_eq!(got[6], (7, vec![0xAA]));
}

#[test]
fn vacuum_recreation_and_a_journal_mode_switch_are_seen() {
    let env = Env::new();
    let (dir, db, c) = backed_up_wal_db(&env);

    // VACUUM after deleting half the rows.
    c.execute("DELETE FROM t WHERE n % 2 = 0", []).unwrap();
    c.execute_batch("VACUUM").unwrap();
    settle();
    let (id, read) = backup(&env, &dir);
    assert!(read > 0);
    assert_eq!(restored_rows(&env, &id, "vacuum").len(), 250);
    assert_eq!(backup(&env, &dir).1, 0);

    // Deleted and created again, as large as before, with other content.
    drop(c);
    let size = std::fs::metadata(&db).unwrap().len();
    std::fs::remove_file(&db).unwrap();
    let c = create_wal(&db, 1001..=1250);
    c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)").unwrap();
    drop(c);
    let c = Connection::open(&db).unwrap();
    assert_eq!(std::fs::metadata(&db).unwrap().len(), size);
    let expected = rows_of(&c);
    settle();
    let (id, read) = backup(&env, &dir);
    assert!(read > 0);
    let got = restored_rows(&env, &id, "recreated");
    assert_eq!(got, expected);
    assert_eq!(got[0].0, 1001);
    assert_eq!(backup(&env, &dir).1, 0);

    // WAL -> DELETE, then a commit in rollback-journal mode.
    c.execute_batch("PRAGMA journal_mode=DELETE").unwrap();
    c.execute("INSERT INTO t VALUES (5000, x'05')", []).unwrap();
    assert!(!dir.join("app.db-wal").exists());
    settle();
    let (id, read) = backup(&env, &dir);
    assert!(read > 0);
    let got = restored_rows(&env, &id, "rollback");
    assert_eq!(got.len(), 251);
    assert_eq!(got[250], (5000, vec![5]));
}

/// Checks that a backup read something, and under a twentieth of the `image` bytes.
fn read_little(read: u64, image: u64) {
    assert!(read > 0 && read * 20 < image, "read {read} of {image}");
}

/// While the log keeps its place (frames only appended since the last backup), a backup reads
/// only the new frames; a checkpoint that moved frames into the main file changes nothing to
/// read; a log reset makes the next backup read the whole database, and the one after goes on
/// from the new log.
#[test]
fn only_the_new_frames_are_read_while_the_log_keeps_its_place() {
    let env = Env::new();
    let (dir, _, c) = wal_db_of(&env, 4000);
    let image = |c: &Connection| -> u64 {
        let pages: i64 = c.query_row("PRAGMA page_count", [], |r| r.get(0)).unwrap();
        let size: i64 = c.query_row("PRAGMA page_size", [], |r| r.get(0)).unwrap();
        (pages * size) as u64
    };
    settle();
    let (_, first) = backup(&env, &dir);
    assert_eq!(first, image(&c));

    // Ten rows rewritten: a few pages in new frames.
    c.execute("UPDATE t SET pad = randomblob(300) WHERE n % 400 = 3", [])
        .unwrap();
    settle();
    let (id, read) = backup(&env, &dir);
    read_little(read, image(&c));
    assert_eq!(restored_rows(&env, &id, "appended"), rows_of(&c));

    // A checkpoint into the main file that leaves the log as it is: nothing new to read.
    let (_, log, done): (i64, i64, i64) = c
        .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .unwrap();
    assert!(log > 0 && done == log);
    settle();
    let (id, read) = backup(&env, &dir);
    assert_eq!(read, 0);
    assert_eq!(restored_rows(&env, &id, "checkpointed"), rows_of(&c));

    // The next commit starts the log over (everything was checkpointed); the main file has not
    // changed since the last backup, so the new log holds every change.
    c.execute("UPDATE t SET pad = x'BB' WHERE n = 2000", [])
        .unwrap();
    settle();
    let (id, read) = backup(&env, &dir);
    read_little(read, image(&c));
    let got = restored_rows(&env, &id, "restarted");
    assert_eq!(got, rows_of(&c));
    assert_eq!(got[1999], (2000, vec![0xBB]));

    // A commit moved into the main file and the log emptied: everything is read once...
    c.execute("UPDATE t SET pad = x'EE' WHERE n = 1000", [])
        .unwrap();
    c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)").unwrap();
    settle();
    let (id, read) = backup(&env, &dir);
    assert_eq!(read, image(&c));
    let got = restored_rows(&env, &id, "truncated");
    assert_eq!(got, rows_of(&c));
    assert_eq!(got[999], (1000, vec![0xEE]));

    // ...then go on from the new log, rows added at the end included.
    c.execute("INSERT INTO t VALUES (4001, x'CC')", []).unwrap();
    settle();
    let (id, read) = backup(&env, &dir);
    read_little(read, image(&c));
    let got = restored_rows(&env, &id, "grown");
    assert_eq!(got, rows_of(&c));
    assert_eq!(got[4000], (4001, vec![0xCC]));
}

/// A log emptied by a checkpoint before the last backup and written since holds every change:
/// only its frames are read.
#[test]
fn a_log_started_since_the_last_backup_is_read_alone() {
    let env = Env::new();
    let (dir, db, c) = wal_db_of(&env, 4000);
    c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)").unwrap();
    assert_eq!(dir.join("app.db-wal").metadata().unwrap().len(), 0);
    settle();
    let (_, first) = backup(&env, &dir);
    let size = db.metadata().unwrap().len();
    assert_eq!(first, size);
    c.execute("UPDATE t SET pad = x'DD' WHERE n = 3999", [])
        .unwrap();
    settle();
    let (id, read) = backup(&env, &dir);
    read_little(read, size);
    let got = restored_rows(&env, &id, "r");
    assert_eq!(got, rows_of(&c));
    assert_eq!(got[3998], (3999, vec![0xDD]));
}

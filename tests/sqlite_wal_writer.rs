//! A WAL database under an application that never stops committing, with its own automatic
//! checkpoints and checkpoints of every mode at random moments: every snapshot restores to a
//! database that passes `PRAGMA integrity_check` and holds exactly one committed state, no older
//! than the last commit before its backup began. And a backup taken right after each way the log
//! changes (it grows, it is restarted with new salts at the same size, it is truncated, it holds a
//! commit that shrinks the database) restores the state of that moment.
//!
//! The application keeps, for every transaction it commits, a checksum of its whole table as of
//! that commit; the transaction's id is written in the same transaction (table `meta`). A
//! restored database is one committed state if its table's checksum is the one recorded for the
//! id it holds. The choices (which rows, how large, which checkpoint, when) come from a seeded
//! generator: `STRATA_TEST_SEED=N` replays another seed.

mod common;
use common::*;
use rusqlite::Connection;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Rows the application keeps about, of ~1.4 KiB on average: a database of up to ~11 MB (2,700
/// pages of 4 KiB), so that a backup reads it while the writer commits dozens of times.
const TARGET_ROWS: usize = 6000;
/// Row ids are drawn from `1..ID_SPACE`: inserts land all over the table.
const ID_SPACE: u64 = 1_000_000;
/// Every this many transactions, one deletes half the rows and gives the space back
/// (`incremental_vacuum`): the database shrinks, then grows again.
const MASS_DELETE_EVERY: u64 = 100;
/// Checkpoint modes the checkpointing connection picks from.
const MODES: [&str; 4] = ["PASSIVE", "FULL", "RESTART", "TRUNCATE"];

/// Busy handlers that try again every 200 µs: SQLite's own backs off to one try every 100 ms,
/// which keeps landing inside the next commit of a writer that never pauses. The writer waits up
/// to 30 s (a checkpoint holds it off while readers finish); a checkpoint gives up after 100 ms.
fn writer_busy(tries: i32) -> bool {
    std::thread::sleep(Duration::from_micros(200));
    tries < 150_000
}

fn checkpoint_busy(tries: i32) -> bool {
    std::thread::sleep(Duration::from_micros(200));
    tries < 500
}

fn seed() -> u64 {
    std::env::var("STRATA_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20261207)
}

fn row_hash(id: i64, pad: &[u8]) -> u128 {
    let mut h = blake3::Hasher::new();
    h.update(&id.to_le_bytes());
    h.update(pad);
    u128::from_le_bytes(h.finalize().as_bytes()[..16].try_into().unwrap())
}

/// The checksum of table `t` as connection `c` sees it: the sum of its rows' hashes.
fn table_sum(c: &Connection) -> u128 {
    let mut stmt = c.prepare("SELECT id, pad FROM t").unwrap();
    let mut rows = stmt.query([]).unwrap();
    let mut sum = 0u128;
    while let Some(r) = rows.next().unwrap() {
        let id: i64 = r.get(0).unwrap();
        let pad = r.get_ref(1).unwrap().as_blob().unwrap();
        sum = sum.wrapping_add(row_hash(id, pad));
    }
    sum
}

/// The transaction id and table checksum of the state connection `c` sees, read in one
/// transaction.
fn state_of(c: &Connection) -> (u64, u128) {
    c.execute_batch("BEGIN").unwrap();
    let txn: i64 = c
        .query_row("SELECT txn FROM meta", [], |r| r.get(0))
        .unwrap();
    let sum = table_sum(c);
    c.execute_batch("COMMIT").unwrap();
    (txn as u64, sum)
}

/// The application: its connection, and what table `t` holds after each of its commits.
struct App {
    c: Connection,
    rng: Rng,
    /// The rows of `t` in the open transaction (or as of the last commit): id -> hash.
    rows: BTreeMap<i64, u128>,
    sum: u128,
    /// The last committed transaction.
    txn: u64,
    /// The checksum of `t` as of each commit, by transaction id (index).
    sums: Vec<u128>,
    /// Mass deletes committed, each of which made the database smaller.
    shrinks: u64,
}

impl App {
    /// Creates the database at `db` in WAL mode with pages given back on `incremental_vacuum`,
    /// automatic checkpoints every `autocheckpoint` pages of log (0: none), and commits
    /// `rows` rows (transaction 1).
    fn create(db: &Path, seed: u64, rows: usize, autocheckpoint: u32) -> App {
        let mut c = Connection::open(db).unwrap();
        c.busy_handler(Some(writer_busy)).unwrap();
        c.execute_batch(
            "PRAGMA auto_vacuum=INCREMENTAL; PRAGMA journal_mode=WAL; PRAGMA synchronous=OFF;
             BEGIN;
             CREATE TABLE t(id INTEGER PRIMARY KEY, pad BLOB NOT NULL);
             CREATE TABLE meta(txn INTEGER NOT NULL); INSERT INTO meta VALUES (0);
             COMMIT;",
        )
        .unwrap();
        c.pragma_update(None, "wal_autocheckpoint", autocheckpoint)
            .unwrap();
        let mut app = App {
            c,
            rng: Rng::new(seed),
            rows: BTreeMap::new(),
            sum: 0,
            txn: 0,
            sums: vec![0],
            shrinks: 0,
        };
        app.begin();
        for _ in 0..rows {
            app.insert();
        }
        app.commit();
        app
    }

    fn begin(&mut self) {
        self.c.execute_batch("BEGIN IMMEDIATE").unwrap();
    }

    /// Writes the next transaction id into `meta`, commits, and records the table's checksum.
    fn commit(&mut self) {
        self.txn += 1;
        self.c
            .execute("UPDATE meta SET txn = ?1", [self.txn as i64])
            .unwrap();
        // Now and then the model is checked against the table, inside the transaction.
        if self.txn.is_multiple_of(25) {
            assert_eq!(table_sum(&self.c), self.sum, "transaction {}", self.txn);
        }
        self.c.execute_batch("COMMIT").unwrap();
        self.sums.push(self.sum);
    }

    /// Content for a row: mostly 200-1,800 bytes, one in twenty 5-12 KiB (overflow pages).
    fn pad(&mut self) -> Vec<u8> {
        let len = if self.rng.below(20) == 0 {
            5000 + self.rng.below(7000)
        } else {
            200 + self.rng.below(1600)
        };
        noise(len as usize, self.rng.next())
    }

    /// An existing row picked at random, if any.
    fn pick(&mut self) -> Option<i64> {
        let from = self.rng.below(ID_SPACE) as i64;
        let next = self.rows.range(from..).next();
        next.or_else(|| self.rows.iter().next()).map(|(&id, _)| id)
    }

    fn insert(&mut self) {
        let id = loop {
            let id = 1 + self.rng.below(ID_SPACE - 1) as i64;
            if !self.rows.contains_key(&id) {
                break id;
            }
        };
        let pad = self.pad();
        self.c
            .execute("INSERT INTO t VALUES (?1, ?2)", rusqlite::params![id, pad])
            .unwrap();
        let h = row_hash(id, &pad);
        self.rows.insert(id, h);
        self.sum = self.sum.wrapping_add(h);
    }

    fn update(&mut self, id: i64) {
        let pad = self.pad();
        let n = self
            .c
            .execute(
                "UPDATE t SET pad = ?2 WHERE id = ?1",
                rusqlite::params![id, pad],
            )
            .unwrap();
        assert_eq!(n, 1);
        let h = row_hash(id, &pad);
        let old = self.rows.insert(id, h).unwrap();
        self.sum = self.sum.wrapping_sub(old).wrapping_add(h);
    }

    fn delete(&mut self, id: i64) {
        let n = self.c.execute("DELETE FROM t WHERE id = ?1", [id]).unwrap();
        assert_eq!(n, 1);
        let old = self.rows.remove(&id).unwrap();
        self.sum = self.sum.wrapping_sub(old);
    }

    fn page_count(&self) -> i64 {
        self.c
            .query_row("PRAGMA page_count", [], |r| r.get(0))
            .unwrap()
    }

    /// The database's size in bytes, as the application sees it.
    fn image_len(&self) -> u64 {
        let page_size: i64 = self
            .c
            .query_row("PRAGMA page_size", [], |r| r.get(0))
            .unwrap();
        (page_size * self.page_count()) as u64
    }

    /// Deletes every row whose id has the parity `odd`, and gives the freed pages back: the
    /// database gets smaller (asserted).
    fn mass_delete(&mut self, odd: bool) {
        let before = self.page_count();
        self.c
            .execute("DELETE FROM t WHERE id % 2 = ?1", [odd as i64])
            .unwrap();
        let gone: Vec<i64> = self
            .rows
            .keys()
            .copied()
            .filter(|id| (id % 2 == 1) == odd)
            .collect();
        for id in gone {
            let old = self.rows.remove(&id).unwrap();
            self.sum = self.sum.wrapping_sub(old);
        }
        // One page per step: stepped to the end.
        let mut stmt = self.c.prepare("PRAGMA incremental_vacuum").unwrap();
        let mut steps = stmt.query([]).unwrap();
        while steps.next().unwrap().is_some() {}
        drop(steps);
        drop(stmt);
        let after = self.page_count();
        assert!(
            after < before,
            "{before} pages, {after} after the mass delete"
        );
        self.shrinks += 1;
    }

    /// One transaction of the application: rows rewritten, inserted and deleted all over the
    /// table (many inserted while the table is below its size), or, every
    /// [`MASS_DELETE_EVERY`] transactions, half the rows deleted and the space given back.
    fn transaction(&mut self) {
        self.begin();
        if (self.txn + 1) % MASS_DELETE_EVERY == MASS_DELETE_EVERY / 2 {
            let odd = self.rng.below(2) == 1;
            self.mass_delete(odd);
        } else {
            for _ in 0..1 + self.rng.below(6) {
                if let Some(id) = self.pick() {
                    self.update(id);
                }
            }
            let (inserts, deletes) = if self.rows.len() < TARGET_ROWS {
                (10 + self.rng.below(30), 0)
            } else {
                (self.rng.below(4), self.rng.below(4))
            };
            for _ in 0..inserts {
                self.insert();
            }
            for _ in 0..deletes {
                if let Some(id) = self.pick() {
                    self.delete(id);
                }
            }
        }
        self.commit();
    }
}

/// Runs `app` in a thread, committing transaction after transaction until `stop`, publishing
/// each committed id in `committed`. Returns the application when stopped.
fn start_writer(mut app: App, stop: Arc<AtomicBool>, committed: Arc<AtomicU64>) -> JoinHandle<App> {
    std::thread::spawn(move || {
        while !stop.load(Ordering::SeqCst) {
            app.transaction();
            committed.store(app.txn, Ordering::SeqCst);
        }
        app
    })
}

/// Checkpoints the database at `db` from a connection of its own, in a random mode after a
/// random pause (0 to `pause_ms`), until `stop`, counting in `completed` the checkpoints of each mode
/// that completed. One stopped by another checkpoint (the writer's automatic ones) or by a
/// reader is tried again a few times; returns how many were given up.
fn start_checkpointer(
    db: &Path,
    seed: u64,
    pause_ms: u64,
    stop: Arc<AtomicBool>,
    completed: Arc<[AtomicU64; 4]>,
) -> JoinHandle<u64> {
    let db = db.to_path_buf();
    std::thread::spawn(move || {
        let mut c = Connection::open(&db).unwrap();
        c.busy_handler(Some(checkpoint_busy)).unwrap();
        let mut rng = Rng::new(seed);
        let mut given_up = 0;
        while !stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(rng.below(pause_ms)));
            let mode = rng.below(MODES.len() as u64) as usize;
            let sql = format!("PRAGMA wal_checkpoint({})", MODES[mode]);
            let done = (0..20).any(|_| {
                let busy: i64 = c.query_row(&sql, [], |r| r.get(0)).unwrap();
                if busy != 0 {
                    std::thread::sleep(Duration::from_millis(1));
                }
                busy == 0
            });
            if done {
                completed[mode].fetch_add(1, Ordering::SeqCst);
            } else {
                given_up += 1;
            }
        }
        given_up
    })
}

/// Waits until `committed` reaches `n`; fails if the writer died or stalled.
fn wait_for(committed: &AtomicU64, n: u64, writer: &JoinHandle<App>) {
    let start = Instant::now();
    while committed.load(Ordering::SeqCst) < n {
        assert!(!writer.is_finished(), "the writer stopped");
        // Not a speed check: only a writer that is stuck takes this long.
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "the writer is stuck at transaction {}",
            committed.load(Ordering::SeqCst)
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Restores snapshot `id` into `name` and returns its database, after SQLite's own check.
fn restore_db(env: &Env, id: &str, name: &str) -> PathBuf {
    let out = env.path(name);
    env.ok(&["restore", &id[..12], out.to_str().unwrap()]);
    let db = out.join("app/app.db");
    assert_eq!(
        strata::source::sqlite::integrity_check(&db).unwrap(),
        Ok(()),
        "snapshot {id}"
    );
    db
}

#[test]
fn snapshots_under_a_writer_and_random_checkpoints_are_each_one_committed_state() {
    // Checkpoints every 100 pages of log and every few milliseconds: most backups find a log
    // started over since the last one, and read the whole database.
    let reads = under_a_writer(100, 30, 0);
    eprintln!("bytes read of each snapshot's bytes {reads:?}");
}

/// The same with no automatic checkpoint and rarer explicit ones: the log often keeps its place
/// between two backups, which then read only its new frames, and holds frames not yet in the
/// main file when a backup reads the whole database.
#[test]
fn snapshots_under_a_writer_whose_log_keeps_its_place_are_each_one_committed_state() {
    let reads = under_a_writer(0, 3000, 2);
    eprintln!("bytes read of each snapshot's bytes {reads:?}");
    // A backup that went on from the previous image reads less than the database: the last
    // one at least, taken after one with no checkpoint since and one row rewritten.
    let (read, size) = reads[reads.len() - 1];
    assert!(read < size, "the last backup read all of it: {reads:?}");
}

/// Runs `backup --json` of `dir`; returns the snapshot id, and the bytes the backup read and the
/// snapshot's size.
fn backup_json(env: &Env, dir: &Path) -> (String, (u64, u64)) {
    let out = env.run(&["backup", "--json", dir.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let stats = &v["stats"];
    let read = (
        stats["bytes_read"].as_u64().unwrap(),
        stats["bytes"].as_u64().unwrap(),
    );
    (v["id"].as_str().unwrap().to_string(), read)
}

/// Backs up a database under a writer with automatic checkpoints every `autocheckpoint` pages
/// and explicit ones of random modes at random moments (pauses up to `pause_ms`), then checks
/// that every snapshot is one committed state; `tail` more are taken once the writer and the
/// checkpoints have stopped, each after a transaction that rewrites one row. Returns the bytes
/// each backup read and its snapshot's size.
fn under_a_writer(autocheckpoint: u32, pause_ms: u64, tail: usize) -> Vec<(u64, u64)> {
    let seed = seed();
    eprintln!("seed {seed} (STRATA_TEST_SEED)");
    let env = Env::new();
    env.init();
    let dir = env.path("app");
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("app.db");
    let app = App::create(&db, seed, TARGET_ROWS, autocheckpoint);
    let first = app.txn;
    let stop = Arc::new(AtomicBool::new(false));
    let stop_checkpoints = Arc::new(AtomicBool::new(false));
    let committed = Arc::new(AtomicU64::new(first));
    let writer = start_writer(app, stop.clone(), committed.clone());
    let completed: Arc<[AtomicU64; 4]> = Arc::new(Default::default());
    let checkpointer = start_checkpointer(
        &db,
        seed ^ 0xC4EC,
        pause_ms,
        stop_checkpoints.clone(),
        completed.clone(),
    );

    // (snapshot, last commit seen before its backup began, last commit seen after it ended)
    let mut snapshots = Vec::new();
    let mut reads = Vec::new();
    let mut sizes = (u64::MAX, 0u64);
    let mut rng = Rng::new(seed ^ 0xBAC);
    let every_mode = || completed.iter().all(|n| n.load(Ordering::SeqCst) > 0);
    // Twelve snapshots, and more until a checkpoint of every mode has completed.
    while snapshots.len() < 12 || !every_mode() && snapshots.len() < 100 {
        // Some commits between two snapshots (a mass delete falls among them now and then).
        let last = committed.load(Ordering::SeqCst);
        wait_for(&committed, last + 20 + rng.below(40), &writer);
        let size = std::fs::metadata(&db).unwrap().len();
        sizes = (sizes.0.min(size), sizes.1.max(size));
        let before = committed.load(Ordering::SeqCst);
        let (id, read) = backup_json(&env, &dir);
        let after = committed.load(Ordering::SeqCst);
        reads.push(read);
        snapshots.push((id, before, after));
    }
    stop_checkpoints.store(true, Ordering::SeqCst);
    let given_up = checkpointer.join().expect("checkpointer");
    stop.store(true, Ordering::SeqCst);
    let mut app = writer.join().expect("writer");
    // Then `tail` more, each after one transaction that rewrites a row, with no checkpoint.
    for _ in 0..tail {
        app.begin();
        if let Some(id) = app.pick() {
            app.update(id);
        }
        app.commit();
        let (id, read) = backup_json(&env, &dir);
        reads.push(read);
        snapshots.push((id, app.txn, app.txn));
    }
    let completed: Vec<u64> = completed.iter().map(|n| n.load(Ordering::SeqCst)).collect();
    // The model the checks rely on is the table's content.
    assert_eq!(state_of(&app.c), (app.txn, app.sum));
    eprintln!(
        "{} commits, {} mass deletes; checkpoints completed {completed:?} of {MODES:?}, \
         {given_up} given up; main file {}..{} bytes",
        app.txn - first,
        app.shrinks,
        sizes.0,
        sizes.1
    );
    // The run did what it is meant to: the database shrank, and every mode completed.
    assert!(app.shrinks >= 1);
    assert!(completed.iter().all(|&n| n > 0), "{completed:?}");

    let mut seen = Vec::new();
    for (i, (id, before, after)) in snapshots.iter().enumerate() {
        let restored = restore_db(&env, id, &format!("r{i}"));
        let (txn, sum) = state_of(&Connection::open(&restored).unwrap());
        assert!(
            (*before..=after + 1).contains(&txn),
            "snapshot {i} holds transaction {txn}, taken between commits {before} and {after}"
        );
        assert_eq!(
            sum, app.sums[txn as usize],
            "snapshot {i}: its table is not the one transaction {txn} committed"
        );
        seen.push(txn);
    }
    let during: Vec<u64> = snapshots.iter().map(|(_, b, a)| a - b).collect();
    eprintln!("snapshots hold transactions {seen:?}; commits during each backup {during:?}");
    reads
}

/// The salts in the header of the log at `wal`.
fn salts(wal: &Path) -> [u8; 8] {
    let bytes = std::fs::read(wal).unwrap();
    bytes[16..24].try_into().unwrap()
}

/// Backs up `dir` (past the file cache's window for fresh timestamps, so the cache is used and
/// must see the change) and checks that the snapshot restores to the state `app` sees now, with
/// the database's current size.
fn backup_is_now(env: &Env, dir: &Path, app: &App, name: &str) {
    std::thread::sleep(Duration::from_millis(250));
    let id = env.backup(&[dir]);
    let restored = restore_db(env, &id, name);
    let expected = state_of(&app.c);
    assert_eq!(expected, (app.txn, app.sum));
    assert_eq!(
        state_of(&Connection::open(&restored).unwrap()),
        expected,
        "{name}: the snapshot is not the state at the backup"
    );
    let len = std::fs::metadata(&restored).unwrap().len();
    assert_eq!(len, app.image_len(), "{name}: size");
}

#[test]
fn a_backup_right_after_the_log_grows_restarts_truncates_or_shrinks_the_database_is_that_state() {
    let env = Env::new();
    env.init();
    let dir = env.path("app");
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("app.db");
    let wal = dir.join("app.db-wal");
    // No automatic checkpoints: the log changes only as the steps below say.
    let mut app = App::create(&db, seed(), 3000, 0);
    app.c
        .execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
        .unwrap();
    for _ in 0..20 {
        app.transaction();
    }
    backup_is_now(&env, &dir, &app, "log");

    // The log grows; the main file is not touched.
    let main = std::fs::metadata(&db).unwrap();
    let log_len = std::fs::metadata(&wal).unwrap().len();
    for _ in 0..5 {
        app.transaction();
    }
    let now = std::fs::metadata(&db).unwrap();
    assert_eq!(
        (now.len(), now.modified().unwrap()),
        (main.len(), main.modified().unwrap())
    );
    assert!(std::fs::metadata(&wal).unwrap().len() > log_len);
    backup_is_now(&env, &dir, &app, "grown");

    // A commit that shrinks the database, only in the log: the main file is longer than the
    // database.
    app.begin();
    app.mass_delete(true);
    app.commit();
    assert!(std::fs::metadata(&db).unwrap().len() > app.image_len());
    backup_is_now(&env, &dir, &app, "shrunk");

    // Rows rewritten in the last frames of the log, then a RESTART checkpoint: every frame is
    // in the main file, and the next commit writes the log from its start with new salts.
    let hot: Vec<i64> = (0..8).filter_map(|_| app.pick()).collect();
    app.begin();
    for &id in &hot {
        app.update(id);
    }
    app.commit();
    let old_salts = salts(&wal);
    let log_len = std::fs::metadata(&wal).unwrap().len();
    let (busy, log, done): (i64, i64, i64) = app
        .c
        .query_row("PRAGMA wal_checkpoint(RESTART)", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .unwrap();
    assert_eq!((busy, log), (0, done));
    backup_is_now(&env, &dir, &app, "restarted");
    // The same rows again: their pages' older versions stay in the log, after the new frames,
    // under the old salts.
    app.begin();
    for &id in &hot {
        app.update(id);
    }
    app.commit();
    assert_eq!(std::fs::metadata(&wal).unwrap().len(), log_len);
    assert_ne!(salts(&wal), old_salts);
    backup_is_now(&env, &dir, &app, "reused");

    // TRUNCATE: the log is emptied; then it grows from nothing.
    for _ in 0..5 {
        app.transaction();
    }
    let busy: i64 = app
        .c
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))
        .unwrap();
    assert_eq!(busy, 0);
    assert_eq!(std::fs::metadata(&wal).unwrap().len(), 0);
    backup_is_now(&env, &dir, &app, "truncated");
    app.transaction();
    assert!(std::fs::metadata(&wal).unwrap().len() > 0);
    backup_is_now(&env, &dir, &app, "after-truncate");
}

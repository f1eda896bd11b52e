//! Databases stored as page maps: a history of scattered writes, each version restored, dumped
//! and copied exactly, a few index entries per version, and gc and verify over deltas and new
//! bases.

mod common;

use common::*;
use rusqlite::Connection;
use std::path::Path;

/// Rewrites `n` rows spread over the table, starting at `from`.
fn rewrite(db: &Path, from: i64, n: i64, seed: i64) {
    let c = Connection::open(db).unwrap();
    c.execute_batch("BEGIN").unwrap();
    for k in 0..n {
        let id = (from + k * 97) % 6000 + 1;
        c.execute(
            "UPDATE t SET pad = randomblob(300 + ?2 % 50) WHERE id = ?1",
            [id, seed],
        )
        .unwrap();
    }
    c.execute_batch("COMMIT").unwrap();
}

fn entry<'a>(show: &'a serde_json::Value, path: &str) -> &'a serde_json::Value {
    show["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["path"] == path)
        .unwrap()
}

/// A repository and `src/app.db`: a table of 6,000 rows of 300 random bytes.
fn app_db() -> (Env, std::path::PathBuf, std::path::PathBuf) {
    sqlite_app(6000, false)
}

#[test]
fn a_history_of_scattered_writes_restores_exactly_and_costs_a_few_index_entries() {
    let (env, src, db) = app_db();
    let pages = std::fs::metadata(&db).unwrap().len() / 4096;
    assert!(pages > 400, "{pages} pages");

    // Version 0, then scattered rewrites: small ones (deltas) and, every fourth, a large one
    // (over 1/8 of the pages: a new base).
    let mut versions: Vec<(String, Vec<u8>)> = Vec::new();
    for round in 0..12i64 {
        if round > 0 {
            let n = if round % 4 == 0 { 1500 } else { 12 };
            rewrite(&db, round * 13, n, round);
        }
        std::thread::sleep(std::time::Duration::from_millis(150));
        let id = env.backup(&[&src]);
        let show = env.json(&["show", &id]);
        assert_eq!(entry(&show, "src/app.db")["content"]["kind"], "pages");
        if round > 0 && round % 4 != 0 {
            // A few runs and one map: not a blob per page.
            let new = show["stats"]["new_chunks"].as_u64().unwrap();
            assert!(
                new <= 6,
                "round {round}: {new} new blobs for 12 rewritten rows"
            );
        }
        versions.push((id, std::fs::read(&db).unwrap()));
    }

    // Every version restores to the bytes it was taken from, and dumps to them.
    for (k, (id, bytes)) in versions.iter().enumerate() {
        let out = env.path(&format!("r{k}"));
        env.ok(&["restore", id, out.to_str().unwrap()]);
        assert!(
            std::fs::read(out.join("src/app.db")).unwrap() == *bytes,
            "version {k} restored differently"
        );
        let dumped = env.cmd().args(["dump", id, "src/app.db"]).output().unwrap();
        assert_eq!(code(&dumped), 0, "{}", stderr(&dumped));
        assert!(dumped.stdout == *bytes, "version {k} dumped differently");
    }

    // Forget all but the last three versions (deltas whose base is older than them): gc keeps
    // what they need, verify reads it all back, and they still restore.
    for (id, _) in &versions[..9] {
        env.ok(&["forget", id]);
    }
    env.ok(&["gc"]);
    env.ok(&["verify", "--read-data"]);
    for (k, (id, bytes)) in versions.iter().enumerate().skip(9) {
        let out = env.path(&format!("after-gc{k}"));
        env.ok(&["restore", id, out.to_str().unwrap()]);
        assert!(
            std::fs::read(out.join("src/app.db")).unwrap() == *bytes,
            "version {k} restored differently after gc"
        );
    }

    // Copied into another repository, the newest version restores there too.
    let other = env.path("other");
    env.ok(&["init", "--repo", other.to_str().unwrap()]);
    let from = env.repo.to_str().unwrap().to_string();
    env.ok(&["copy", "--from", &from, "--to", other.to_str().unwrap()]);
    let out = env.path("from-copy");
    let (last_id, last_bytes) = versions.last().unwrap();
    env.ok(&[
        "restore",
        "--repo",
        other.to_str().unwrap(),
        last_id,
        out.to_str().unwrap(),
    ]);
    assert!(std::fs::read(out.join("src/app.db")).unwrap() == *last_bytes);
}

/// A damaged run fails the restore of the database (exit 3, the file named, nothing left in
/// the target), `dump` of it, and `verify --read-data`.
#[test]
fn a_damaged_run_fails_restore_dump_and_verify() {
    let (env, src, _) = app_db();
    let id = env.backup(&[&src]);
    damage_largest_pack(&env.repo);

    let out = env.path("out");
    let restore = env.run(&["restore", &id, out.to_str().unwrap()]);
    assert_eq!(code(&restore), 3, "{}", stderr(&restore));
    assert!(stderr(&restore).contains("app.db"), "{}", stderr(&restore));
    assert!(!out.join("src/app.db").exists());

    let dumped = env.run(&["dump", &id, "src/app.db"]);
    assert_ne!(code(&dumped), 0, "{}", stderr(&dumped));
    assert!(!stderr(&dumped).contains("internal error"));

    let verify = env.run(&["verify", "--read-data"]);
    assert_eq!(code(&verify), 3, "{}", stderr(&verify));
}

//! What a snapshot costs: unchanged data adds (almost) nothing, a database with a few updated
//! rows adds about the changed pages.

mod common;
use common::*;
use std::process::Command;

fn added(env: &Env) -> (u64, u64, u64) {
    let show = env.json(&["show", "latest"]);
    let s = &show["stats"];
    (
        s["new_chunks"].as_u64().unwrap(),
        s["new_raw_bytes"].as_u64().unwrap(),
        s["new_stored_bytes"].as_u64().unwrap(),
    )
}

#[test]
fn unchanged_data_adds_almost_nothing() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    write(&src.join("a.bin"), &noise(3_000_000, 1));
    write(&src.join("b.txt"), &text(1_000_000, 2));
    std::thread::sleep(std::time::Duration::from_millis(200));
    env.backup(&[&src]);
    let (chunks, raw, _) = added(&env);
    assert!(chunks > 100 && raw >= 4_000_000);
    // Data stored once: a dedup ratio of exactly 1, with the chunk lists counted apart.
    let stats = env.json(&["stats"]);
    assert_eq!(stats["unique_bytes"], 4_000_000);
    assert_eq!(stats["dedup_ratio"], 1.0);
    assert!(stats["metadata_bytes"].as_u64().unwrap() > 0, "{stats}");
    assert!(stats["nodes"].as_u64().unwrap() >= 2, "{stats}");
    assert!(env.ok(&["stats"]).contains("dedup ratio       1.00x"));
    let packs_before = packs(&env.repo).len();
    env.backup(&[&src]);
    assert_eq!(env.json(&["stats"])["dedup_ratio"], 2.0);
    let (chunks, raw, stored) = added(&env);
    assert_eq!((chunks, raw, stored), (0, 0, 0));
    assert_eq!(packs(&env.repo).len(), packs_before);
    // The second snapshot read nothing: the file cache answered.
    let show = env.json(&["show", "latest"]);
    assert_eq!(show["stats"]["bytes_read"], 0);

    // Touching a file (new mtime, same bytes) makes it be read again, and still adds no data.
    let f = src.join("a.bin");
    let data = std::fs::read(&f).unwrap();
    std::fs::write(&f, &data).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));
    env.backup(&[&src]);
    let (chunks, _, _) = added(&env);
    assert_eq!(chunks, 0);
}

#[test]
fn an_insert_in_the_middle_adds_only_nearby_chunks() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    let mut data = noise(4_000_000, 9);
    write(&src.join("f"), &data);
    env.backup(&[&src]);
    data.splice(2_000_000..2_000_000, b"inserted bytes".iter().copied());
    write(&src.join("f"), &data);
    std::thread::sleep(std::time::Duration::from_millis(200));
    env.backup(&[&src]);
    let (chunks, raw, _) = added(&env);
    // One or two data chunks around the edit (avg 8 KiB, max 32 KiB).
    assert!(chunks <= 8, "{chunks} new blobs");
    assert!(raw <= 2 * 32 * 1024, "{raw} new bytes");
}

fn python_sqlite(db: &std::path::Path, script: &str) {
    let status = Command::new("python3")
        .arg("-c")
        .arg(format!(
            "import sqlite3,sys\ncon=sqlite3.connect(sys.argv[1])\n{script}\ncon.commit()\ncon.close()"
        ))
        .arg(db)
        .status()
        .expect("python3 with sqlite3 is needed for this test");
    assert!(status.success());
}

/// A repository, and a source directory `src` holding `app.db`: a SQLite table of `rows` rows
/// of about 400 bytes each.
fn env_with_db(rows: usize) -> (Env, std::path::PathBuf, std::path::PathBuf) {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    let db = src.join("app.db");
    python_sqlite(
        &db,
        &format!(
            "con.execute('create table t(id integer primary key, body text)')\n\
             con.executemany('insert into t values(?,?)', [(i, ('row %d ' % i) * 40) for i in range({rows})])"
        ),
    );
    (env, src, db)
}

#[test]
fn sqlite_update_adds_about_the_changed_pages() {
    let (env, src, db) = env_with_db(20000);
    let size = std::fs::metadata(&db).unwrap().len();
    env.backup(&[&src]);
    let show = env.json(&["show", "latest"]);
    let entry = show["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["path"] == "src/app.db")
        .unwrap();
    assert_eq!(
        entry["page_size"], 4096,
        "SQLite file detected and cut at pages"
    );

    // Update 10 rows spread over the table: about 10 leaf pages plus the header page change.
    python_sqlite(
        &db,
        "for i in range(0, 20000, 2000): con.execute('update t set body=? where id=?', ('changed %d' % i * 40, i))",
    );
    std::thread::sleep(std::time::Duration::from_millis(200));
    env.backup(&[&src]);
    let (chunks, raw, stored) = added(&env);
    let pages = size / 4096;
    assert!(pages > 1000, "database has {pages} pages");
    // Data: the changed pages. Blobs also count the chunk-list nodes that changed.
    assert!(raw <= 30 * 4096, "{raw} new bytes for 10 updated rows");
    assert!(chunks <= 60, "{chunks} new blobs");
    assert!(stored < 200_000, "{stored} bytes stored");
}

/// The page digests kept after a backup: one record per page-aligned file.
fn page_sum_records(repo: &std::path::Path) -> Vec<std::path::PathBuf> {
    match std::fs::read_dir(repo.join("page-sums")) {
        Ok(d) => d
            .map(|e| e.unwrap().path())
            .filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.'))
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Flips one byte in each of `pages` (4 KiB pages, past the header page) without SQLite, so
/// only the bytes say the file changed.
fn flip_pages(db: &std::path::Path, pages: &[u64]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .read(true)
        .open(db)
        .unwrap();
    for &p in pages {
        let at = p * 4096 + 2000;
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, at).unwrap();
        f.write_all_at(&[b[0] ^ 0x20], at).unwrap();
    }
}

#[test]
fn page_digests_skip_unchanged_pages_and_miss_no_change() {
    let (env, src, db) = env_with_db(14000);
    // Older than the racy window, so the backup keeps its stamp (and digests).
    std::thread::sleep(std::time::Duration::from_millis(200));
    env.backup(&[&src]);
    let records = page_sum_records(&env.repo);
    assert_eq!(records.len(), 1, "one record for the one (large) database");
    let first_record = std::fs::read(&records[0]).unwrap();
    let pages = std::fs::metadata(&db).unwrap().len() / 4096;
    assert!(pages > 200, "{pages} pages");

    let check = |label: &str| {
        let out = env.path(&format!("restored-{label}"));
        env.ok(&[
            "restore",
            "--no-check-sqlite",
            "latest",
            out.to_str().unwrap(),
        ]);
        assert_eq!(
            std::fs::read(out.join("src/app.db")).unwrap(),
            std::fs::read(&db).unwrap(),
            "{label}: restored database differs from the source"
        );
    };

    // Bytes changed behind SQLite's back, in pages far apart: each is found and stored.
    flip_pages(&db, &[3, pages / 2, pages - 1]);
    std::thread::sleep(std::time::Duration::from_millis(200));
    env.backup(&[&src]);
    let (_, raw, _) = added(&env);
    assert_eq!(raw, 3 * 4096, "the three changed pages and nothing else");
    check("flipped");

    // A damaged record is not used: every page is hashed, nothing is missed.
    let record = &page_sum_records(&env.repo)[0];
    let mut bytes = std::fs::read(record).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    std::fs::write(record, &bytes).unwrap();
    flip_pages(&db, &[5]);
    std::thread::sleep(std::time::Duration::from_millis(200));
    env.backup(&[&src]);
    assert_eq!(added(&env).1, 4096);
    check("damaged record");

    // A record of an older version of the file (put back in place of the current one) names
    // content the file cache no longer does, and is not used either.
    std::fs::write(record, &first_record).unwrap();
    flip_pages(&db, &[7]);
    std::thread::sleep(std::time::Duration::from_millis(200));
    env.backup(&[&src]);
    assert_eq!(added(&env).1, 4096);
    check("old record");

    // SQLite growing the file: the new pages are stored, the old ones reused.
    python_sqlite(
        &db,
        "con.executemany('insert into t values(?,?)', [(i, ('new %d ' % i) * 40) for i in range(14000, 14500)])",
    );
    std::thread::sleep(std::time::Duration::from_millis(200));
    env.backup(&[&src]);
    let grown = std::fs::metadata(&db).unwrap().len() / 4096;
    let (_, raw, _) = added(&env);
    assert!(
        raw >= (grown - pages) * 4096,
        "{raw} new bytes for {} new pages",
        grown - pages
    );
    assert!(raw <= (grown - pages + 20) * 4096, "{raw} new bytes");
    check("grown");
}

/// The chunk-list root the latest snapshot records for `rel`.
fn chunks_of(env: &Env, rel: &str) -> String {
    let show = env.json(&["show", "latest"]);
    show["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["path"] == rel)
        .unwrap()["content"]["id"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn chunks_recognised_by_digest_are_the_ones_the_cutter_makes() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    let f = src.join("log.jsonl");
    let mut data = text(6_000_000, 11);
    write(&f, &data);
    std::thread::sleep(std::time::Duration::from_millis(200));
    env.backup(&[&src]);
    assert_eq!(
        page_sum_records(&env.repo).len(),
        1,
        "a record for the large file"
    );
    // Edits of every kind, each followed by a backup that recognises the unchanged chunks, and
    // a backup of the same bytes under a new path, which cuts them all: both must give the same
    // chunks (the same chunk-list root).
    // The last rounds change the byte on either side of a cut of the default (unkeyed) cutter:
    // the first byte of a chunk decides where the chunk before it ends.
    let cutter = strata::chunker::Chunker::new(Default::default(), 0).unwrap();
    let mut seed = 5u64;
    for round in 0..12 {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let at = (seed >> 33) as usize % data.len();
        let cut = || {
            let lens = cutter.cut_all(&data, strata::chunker::CutMode::Cdc);
            let k = 1 + (seed >> 40) as usize % (lens.len() - 2);
            lens[..k].iter().sum::<usize>()
        };
        match round {
            8 | 10 => {
                let c = cut();
                data[c] ^= 0x11;
            }
            9 | 11 => {
                let c = cut();
                data[c - 1] ^= 0x11;
            }
            _ => match round % 4 {
                0 => data.splice(at..at, text(3_000, seed)).for_each(drop),
                1 => data[at] ^= 0x11,
                2 => data.extend_from_slice(&text(40_000, seed)),
                _ => data.truncate(data.len() - 20_000),
            },
        }
        write(&f, &data);
        std::thread::sleep(std::time::Duration::from_millis(200));
        env.backup(&[&src]);
        let (_, raw, _) = added(&env);
        assert!(raw < 200_000, "round {round}: {raw} new bytes");
        let recognised = chunks_of(&env, "src/log.jsonl");
        // The same bytes under a path the file cache has never seen: cut from scratch (with the
        // same keys, in an encrypted repository).
        let fresh = env.path(&format!("fresh-{round}"));
        write(&fresh.join("log.jsonl"), &data);
        env.backup(&[&fresh]);
        assert_eq!(
            recognised,
            chunks_of(&env, &format!("fresh-{round}/log.jsonl")),
            "round {round}: chunks differ from a fresh cut"
        );
        let out = env.path(&format!("restored-{round}"));
        env.ok(&["restore", "latest", out.to_str().unwrap()]);
        assert_eq!(
            std::fs::read(out.join(format!("fresh-{round}/log.jsonl"))).unwrap(),
            data
        );
    }
}

//! PostgreSQL's WAL archive: `strata pg archive-wal` as a real server's `archive_command`, and
//! the archive contract (re-archiving, conflicts, missing files, kills, a held lock) with
//! `restore-wal` giving every file back byte for byte.
//!
//! The server test needs PostgreSQL's server binaries and pgbench (`tools/test.sh` installs
//! them); `STRATA_SKIP_SERVER_TESTS=1` skips it on purpose.

mod common;
use common::pg::*;
use common::*;
use std::fs;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// A segment's size at PostgreSQL's default.
const SEGMENT: usize = 16 << 20;

/// The archived files' names, from `list --kind pg-wal`.
fn archived_names(env: &Env) -> Vec<String> {
    let v = env.json(&["list", "--kind", "pg-wal"]);
    let mut names: Vec<String> = v
        .as_array()
        .expect("a list")
        .iter()
        .map(|s| s["name"].as_str().expect("a name").to_string())
        .collect();
    names.sort();
    names
}

/// The archived file `name`'s snapshot, from `list --kind pg-wal --name`.
fn archived(env: &Env, name: &str) -> serde_json::Value {
    let v = env.json(&["list", "--kind", "pg-wal", "--name", name]);
    let all = v.as_array().expect("a list");
    assert_eq!(all.len(), 1, "{name}: {v}");
    all[0].clone()
}

/// Restores `name` to a fresh path and returns its bytes.
fn restored(env: &Env, name: &str) -> Vec<u8> {
    let dest = env.path(&format!("restored-{name}"));
    let _ = fs::remove_file(&dest);
    env.ok(&["pg", "restore-wal", name, dest.to_str().unwrap()]);
    fs::read(&dest).unwrap()
}

/// A recycled-looking segment: `live` bytes of WAL-like noise, then zeros to the segment's end.
fn segment(live: usize, seed: u64) -> Vec<u8> {
    let mut s = noise(live, seed);
    s.resize(SEGMENT, 0);
    s
}

#[test]
fn archive_contract_holds() {
    let env = Env::new();
    env.init();
    let dir = env.path("pg_wal");
    fs::create_dir(&dir).unwrap();
    let seg = "000000010000000000000001";
    let first = segment(1 << 20, 1);
    write(&dir.join(seg), &first);
    let p = dir.join(seg);
    let p = p.to_str().unwrap();
    env.ok(&["pg", "archive-wal", p, seg]);
    assert_eq!(restored(&env, seg), first);

    // The zeros after the live bytes cost nothing: what was stored is about the noise alone.
    let stats = &archived(&env, seg)["stats"];
    let stored = stats["new_stored_bytes"].as_u64().unwrap();
    eprintln!("a segment of 1 MiB of noise and 15 MiB of zeros stored {stored} bytes");
    assert!(stored < (1 << 20) + (64 << 10), "stored {stored} bytes");
    // A second such segment stores its own noise, and nothing for its zeros.
    let seg2 = "000000010000000000000002";
    write(&dir.join(seg2), &segment(1 << 20, 2));
    env.ok(&["pg", "archive-wal", dir.join(seg2).to_str().unwrap(), seg2]);
    let stored2 = archived(&env, seg2)["stats"]["new_stored_bytes"]
        .as_u64()
        .unwrap();
    eprintln!("a second such segment stored {stored2} bytes");
    assert!(stored2 < (1 << 20) + (64 << 10), "stored {stored2} bytes");

    // Again with the same bytes (PostgreSQL retrying after a crash): success, nothing added.
    let before = archived(&env, seg)["id"].clone();
    env.ok(&["pg", "archive-wal", p, seg]);
    assert_eq!(archived(&env, seg)["id"], before);

    // Different bytes under an archived name: refused, loudly, and nothing changes.
    let mut other = first.clone();
    other[4096] ^= 1;
    write(&dir.join("other"), &other);
    let out = env.run(&[
        "pg",
        "archive-wal",
        dir.join("other").to_str().unwrap(),
        seg,
    ]);
    assert_ne!(code(&out), 0);
    assert!(
        stderr(&out).contains("already archived") && stderr(&out).contains("different"),
        "{}",
        stderr(&out)
    );
    // A longer file with the same start is different too.
    let mut longer = first.clone();
    longer.push(0);
    write(&dir.join("longer"), &longer);
    let out = env.run(&[
        "pg",
        "archive-wal",
        dir.join("longer").to_str().unwrap(),
        seg,
    ]);
    assert_ne!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(archived(&env, seg)["id"], before);
    assert_eq!(restored(&env, seg), first);

    // A file the archive does not have: non-zero, a short message, nothing at the path.
    let dest = env.path("pg_wal/RECOVERYHISTORY");
    let out = env.run(&[
        "pg",
        "restore-wal",
        "00000002.history",
        dest.to_str().unwrap(),
    ]);
    assert_ne!(code(&out), 0);
    assert!(
        stderr(&out).contains("not in the WAL archive"),
        "{}",
        stderr(&out)
    );
    assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
    assert!(!dest.exists());
    assert_eq!(
        fs::read_dir(&dir).unwrap().count(),
        4,
        "restore-wal left a file behind"
    );

    // Timeline history, backup label and partial segment files round-trip.
    let extra: [(&str, Vec<u8>); 3] = [
        (
            "00000002.history",
            b"1\t0/3000000\tno recovery target specified\n".to_vec(),
        ),
        (
            "000000010000000000000002.00000028.backup",
            b"START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n".to_vec(),
        ),
        ("000000010000000000000003.partial", segment(200_000, 3)),
    ];
    for (name, bytes) in &extra {
        write(&dir.join(name), bytes);
        env.ok(&["pg", "archive-wal", dir.join(name).to_str().unwrap(), name]);
        assert_eq!(&restored(&env, name), bytes, "{name}");
    }
    // Restoring over an existing file (PostgreSQL's RECOVERYXLOG) replaces it whole.
    write(&dest, b"stale");
    env.ok(&["pg", "restore-wal", seg, dest.to_str().unwrap()]);
    assert_eq!(fs::read(&dest).unwrap(), first);

    // A name PostgreSQL never archives is a usage error.
    let out = env.run(&["pg", "archive-wal", p, "../escape"]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    let out = env.run(&["pg", "restore-wal", "pg_wal", dest.to_str().unwrap()]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    // A missing %p fails without archiving anything.
    let out = env.run(&[
        "pg",
        "archive-wal",
        dir.join("absent").to_str().unwrap(),
        "000000010000000000000009",
    ]);
    assert_ne!(code(&out), 0);

    // The WAL snapshots are not states of the data: a plain list and `latest` pass over them.
    assert_eq!(env.json(&["list"]).as_array().unwrap().len(), 0);
    assert_eq!(archived_names(&env).len(), 5);
    // And a retention policy does not remove them.
    env.ok(&["forget", "--keep-last", "1"]);
    assert_eq!(archived_names(&env).len(), 5);
    env.ok(&["verify"]);

    // Deleted by name, a file is no longer archived, and can be archived again.
    let id = archived(&env, seg2)["id"].as_str().unwrap().to_string();
    env.ok(&["delete", &id]);
    let out = env.run(&[
        "pg",
        "restore-wal",
        seg2,
        env.path("gone").to_str().unwrap(),
    ]);
    assert_ne!(code(&out), 0);
    write(&dir.join(seg2), &other);
    env.ok(&["pg", "archive-wal", dir.join(seg2).to_str().unwrap(), seg2]);
    assert_eq!(restored(&env, seg2), other);

    // With an index rebuilt from the repository's files (no table of archived files yet),
    // the archive is found by reading the manifests, and the contract holds the same.
    env.ok(&["repair", "index"]);
    assert_eq!(restored(&env, seg), first);
    let out = env.run(&[
        "pg",
        "archive-wal",
        dir.join("other").to_str().unwrap(),
        seg,
    ]);
    assert_ne!(code(&out), 0, "{}", stderr(&out));
    env.ok(&["pg", "archive-wal", p, seg]);
    assert_eq!(archived(&env, seg)["id"], before);
    let out = env.run(&[
        "pg",
        "archive-wal",
        dir.join("longer").to_str().unwrap(),
        seg,
    ]);
    assert_ne!(code(&out), 0, "{}", stderr(&out));
    for (name, bytes) in &extra {
        assert_eq!(&restored(&env, name), bytes, "{name}");
    }
    assert_eq!(archived_names(&env).len(), 5);
    env.ok(&["verify"]);
}

#[test]
fn killed_archive_leaves_nothing_and_the_retry_succeeds() {
    let env = Env::new();
    env.init();
    let seg = "000000010000000000000005";
    let path = env.path(seg);
    let bytes = segment(4 << 20, 5);
    write(&path, &bytes);
    let p = path.to_str().unwrap();
    // Held after taking the lock (the test hook), then at random moments of the real work.
    env.set_var("STRATA_TEST_ARCHIVE_PAUSE_MS", "3000");
    assert!(run_and_kill_after(
        &env,
        &["pg", "archive-wal", p, seg],
        Duration::from_millis(1000)
    ));
    env.set_var("STRATA_TEST_ARCHIVE_PAUSE_MS", "0");
    assert!(archived_names(&env).is_empty());
    let span = {
        let start = Instant::now();
        let other = env.path("timing");
        write(&other, &segment(4 << 20, 6));
        env.ok(&[
            "pg",
            "archive-wal",
            other.to_str().unwrap(),
            "000000010000000000000006",
        ]);
        start.elapsed()
    };
    // Kills at random moments of real work, each on a name not archived yet, until four have
    // landed mid-way (a run's length varies with the machine's load).
    let mut rng = Rng::new(27);
    let (mut killed, mut tries) = (0, 0u64);
    while killed < 4 && tries < 32 {
        let name = format!("{:024X}", 0x1_0000_0010 + tries);
        let path = env.path(&name);
        let bytes = segment(4 << 20, 100 + tries);
        write(&path, &bytes);
        let p = path.to_str().unwrap();
        let at = Duration::from_micros(rng.below(span.as_micros() as u64 + 1));
        tries += 1;
        if run_and_kill_after(&env, &["pg", "archive-wal", p, &name], at) {
            killed += 1;
        }
        // Nothing half-visible: the name is absent, or present whole.
        let dest = env.path("check");
        let _ = fs::remove_file(&dest);
        let out = env.run(&["pg", "restore-wal", &name, dest.to_str().unwrap()]);
        match code(&out) {
            0 => assert_eq!(fs::read(&dest).unwrap(), bytes, "{name}"),
            _ => assert!(!dest.exists(), "{name}"),
        }
        // PostgreSQL's retry succeeds, and the file comes back whole.
        env.ok(&["pg", "archive-wal", p, &name]);
        assert_eq!(restored(&env, &name), bytes, "{name}");
    }
    eprintln!("{killed} of {tries} archivers killed mid-way (a run takes {span:?})");
    assert_eq!(killed, 4, "only {killed} of {tries} archivers were killed");
    env.ok(&["pg", "archive-wal", p, seg]);
    assert_eq!(restored(&env, seg), bytes);
    assert_eq!(archived_names(&env).len(), 2 + tries as usize);
    env.ok(&["verify"]);
}

#[test]
fn a_held_repository_spools_and_the_next_archiver_stores() {
    let env = Env::new();
    env.init();
    let seg = "000000010000000000000007";
    let path = env.path(seg);
    let bytes = segment(1 << 20, 7);
    write(&path, &bytes);
    let p = path.to_str().unwrap().to_string();

    // Held by a backup past the wait asked for: fails with the lock's exit code.
    let lock = strata::repo::Lock::acquire(&env.repo, "backup").unwrap();
    let out = env.run(&["pg", "archive-wal", "--retry-lock", "1s", &p, seg]);
    assert_eq!(code(&out), 5, "{}", stderr(&out));
    assert!(stderr(&out).contains("stayed locked"), "{}", stderr(&out));

    // Without a wait asked for: into the spool at once, and back from it.
    let t = Instant::now();
    let out = env.run(&["pg", "archive-wal", &p, seg]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("spool"), "{}", stderr(&out));
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    assert_eq!(restored(&env, seg), bytes);
    // Again with the same bytes: fine; with others: refused, nothing changed.
    let out = env.run(&["pg", "archive-wal", &p, seg]);
    assert!(out.status.success(), "{}", stderr(&out));
    let other = env.path("other");
    write(&other, &segment(1 << 20, 8));
    let out = env.run(&["pg", "archive-wal", other.to_str().unwrap(), seg]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("different contents"),
        "{}",
        stderr(&out)
    );
    assert_eq!(restored(&env, seg), bytes);
    assert!(archived_names(&env).is_empty());
    drop(lock);

    // Another archiver's short hold is waited for; the archiver that gets the lock stores the
    // spooled file too, and empties the spool.
    let lock = strata::repo::Lock::acquire(&env.repo, "pg archive-wal").unwrap();
    let next = "000000010000000000000008";
    let next_path = env.path(next);
    let next_bytes = segment(1 << 20, 9);
    write(&next_path, &next_bytes);
    let child = env
        .cmd()
        .args(["pg", "archive-wal", next_path.to_str().unwrap(), next])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    drop(lock);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("waiting for the repository's lock"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        archived_names(&env),
        vec![seg.to_string(), next.to_string()]
    );
    let spool = env.repo.join("spool/pg-wal");
    let left: Vec<_> = fs::read_dir(&spool)
        .map(|d| d.flatten().collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
    assert_eq!(restored(&env, seg), bytes);
    assert_eq!(restored(&env, next), next_bytes);
    env.ok(&["verify", "--read-data"]);
}

#[test]
fn a_real_server_archives_under_load_and_every_segment_comes_back() {
    if skip_server_tests() {
        return;
    }
    let env = Env::new();
    env.init();
    let pg = ArchivingServer::start(&env);
    pg.pgbench(&["-i", "-q", "-s", "4"]);
    pg.pgbench(&["-c", "2", "-T", "5"]);
    // Two switches: the second archives a segment holding little more than its switch record.
    for _ in 0..2 {
        pg.psql("SELECT pg_switch_wal(); CREATE TABLE IF NOT EXISTS t (x int); INSERT INTO t VALUES (1)");
    }
    let start = Instant::now();
    pg.archive_all();
    let names = archived_names(&env);
    let archived_count: usize = pg
        .psql("SELECT archived_count FROM pg_stat_archiver")
        .parse()
        .unwrap();
    assert_eq!(names.len(), archived_count, "{names:?}");
    assert!(names.len() >= 3, "{names:?}");
    // Every archived segment still in pg_wal comes back byte for byte.
    let mut compared = 0;
    for name in &names {
        let Ok(original) = fs::read(pg.data().join("pg_wal").join(name)) else {
            continue;
        };
        assert_eq!(restored(&env, name), original, "{name}");
        compared += 1;
    }
    assert!(compared >= 3, "only {compared} segments compared");
    let stored: u64 = env
        .json(&["list", "--kind", "pg-wal"])
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["stats"]["new_stored_bytes"].as_u64().unwrap())
        .sum();
    eprintln!(
        "{} segments ({} MiB) archived in {:?}, stored {} KiB",
        names.len(),
        (names.len() * SEGMENT) >> 20,
        start.elapsed(),
        stored >> 10
    );
    assert_eq!(
        pg.psql("SELECT failed_count FROM pg_stat_archiver"),
        "0",
        "{}",
        pg.log()
    );
    env.ok(&["verify"]);
}

/// `strata pg restore-point` names the server's position in its WAL: the name (quotes and all)
/// is in the WAL's restore point record, at or before the server's position after it.
#[test]
fn a_named_restore_point_is_written_into_the_wal() {
    if skip_server_tests() {
        return;
    }
    let env = Env::new();
    let pg = PgServer::start(&PgOptions::default());
    let name = "before it's done; DROP TABLE x";
    let run = env.run(&["pg", "restore-point", "--db", &pg.conn("postgres"), name]);
    assert!(run.status.success(), "{}", stderr(&run));
    let lsn = String::from_utf8_lossy(&run.stdout).trim().to_string();
    let past = pg.psql(
        "postgres",
        &format!("SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '{lsn}') >= 0"),
    );
    assert_eq!(past.trim(), "t", "{lsn}");
    // A commit after it writes the WAL out to there.
    pg.psql("postgres", "CREATE TABLE after_the_point (x int)");
    let file = pg.psql("postgres", &format!("SELECT pg_walfile_name('{lsn}')"));
    let dump = std::process::Command::new(PgServer::bindir().join("pg_waldump"))
        .arg("--path")
        .arg(pg.data().join("pg_wal"))
        .args(["--rmgr", "XLOG"])
        .arg(file.trim())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&dump.stdout);
    assert!(
        text.lines()
            .any(|l| l.contains("RESTORE_POINT") && l.contains(name)),
        "{text}{}",
        String::from_utf8_lossy(&dump.stderr)
    );
    // A name PostgreSQL cannot keep is a usage error, before any connection.
    let run = env.run(&[
        "pg",
        "restore-point",
        "--db",
        &pg.conn("postgres"),
        &"x".repeat(64),
    ]);
    assert_eq!(code(&run), 2, "{}", stderr(&run));
    // A server that cannot be reached: a clear error, non-zero.
    let run = env.run(&[
        "pg",
        "restore-point",
        "--db",
        "host=/nonexistent port=1",
        "p",
    ]);
    assert!(!run.status.success());
    assert!(
        stderr(&run).contains("could not create restore point"),
        "{}",
        stderr(&run)
    );
}

//! Retention that keeps recovery possible, with a real PostgreSQL server archiving into the
//! repository: forgetting the older of two base backups takes the WAL only it needed with it,
//! the newer one still recovers to the end of the archive, and `verify` names a segment missing
//! after a base backup's start.
//!
//! Needs PostgreSQL's server binaries and pgbench (`tools/test.sh` installs them);
//! `STRATA_SKIP_SERVER_TESTS=1` skips it on purpose.

mod common;
use common::pg::*;
use common::*;
use std::time::Instant;

/// A base backup; returns its snapshot id and its start segment.
fn base_backup(env: &Env, pg: &ArchivingServer) -> (String, String) {
    let v = env.json(&[
        "backup",
        "--kind",
        "hourly",
        "--pg-base",
        &pg.pg.conn("postgres"),
    ]);
    let id = v["id"].as_str().expect("id").to_string();
    let list = env.json(&["list"]);
    let snap = list
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == id.as_str())
        .expect("the base backup listed")
        .clone();
    let start = snap["sources"][0]["details"]["start wal file"]
        .as_str()
        .expect("a start segment")
        .to_string();
    (id, start)
}

/// The archived files: name and snapshot id.
fn archived(env: &Env) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = env
        .json(&["list", "--kind", "pg-wal"])
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_string(),
                s["id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    v.sort();
    v
}

/// Load, then `n` segment switches with a little more between them, all archived.
fn load(pg: &ArchivingServer, n: usize) {
    pg.pgbench(&["-c", "2", "-T", "3"]);
    for _ in 0..n {
        pg.psql("SELECT pg_switch_wal(); UPDATE pgbench_branches SET bbalance = bbalance + 1");
    }
    pg.archive_all();
}

/// A whole segment's name (not a history file, `.partial` or `.backup`).
fn is_segment(name: &str) -> bool {
    name.len() == 24
}

#[test]
fn forgetting_a_base_backup_takes_only_the_wal_it_alone_needed() {
    if skip_server_tests() {
        return;
    }
    let began = Instant::now();
    let env = Env::new();
    env.init();
    let pg = ArchivingServer::start(&env);
    // Every strata command runs as the server's user, so that the repository stays writable by
    // its archiver.
    env.as_server_user.set(true);
    pg.pgbench(&["-i", "-q", "-s", "1"]);
    pg.archive_all();
    let (a, a_start) = base_backup(&env, &pg);
    load(&pg, 3);
    let (b, b_start) = base_backup(&env, &pg);
    assert!(b_start > a_start, "{a_start} then {b_start}");
    load(&pg, 3);
    let sum = pg.psql("SELECT sum(abalance) FROM pgbench_accounts");
    let branches = pg.psql("SELECT sum(bbalance) FROM pgbench_branches");
    pg.archive_all();
    let before = archived(&env);
    assert!(
        before.iter().any(|(n, _)| is_segment(n) && *n < b_start),
        "some WAL before B's start: {before:?}"
    );
    env.ok(&["verify"]);

    // A dry run only says what would go.
    let dry = env.ok(&[
        "forget",
        "--kind",
        "hourly",
        "--keep-last",
        "1",
        "--dry-run",
    ]);
    assert!(
        dry.contains("would remove") && dry.contains(&format!("(start {b_start})")),
        "{dry}"
    );
    assert_eq!(archived(&env), before);

    // Forgetting A takes the WAL before B's start with it (reported in the JSON too).
    let decisions = env.json(&["forget", "--kind", "hourly", "--keep-last", "1"]);
    let removed: Vec<&serde_json::Value> = decisions
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["keep"] == false)
        .collect();
    assert!(removed.iter().any(|d| d["id"] == a.as_str()));
    assert!(
        removed.iter().any(|d| d["kind"] == "pg-wal"
            && d["reasons"][0]
                .as_str()
                .is_some_and(|r| r.contains(&b_start))),
        "{decisions}"
    );
    let after = archived(&env);
    for (name, _) in &before {
        let kept = after.iter().any(|(n, _)| n == name);
        if name.ends_with(".history") {
            assert!(kept, "{name}");
        } else if name.get(..24).is_some_and(|seg| seg < b_start.as_str()) {
            assert!(!kept, "{name} is before {b_start} and stayed");
        } else {
            assert!(kept, "{name} is from {b_start} on and went");
        }
    }
    assert!(after.iter().any(|(n, _)| *n == b_start), "{after:?}");
    env.ok(&["gc"]);
    env.ok(&["verify"]);

    // B recovers to the end of the archive.
    drop(pg);
    let copies = server_dir(&env.path("copies"));
    let copy = recovered_copy(&env, &["--no-archive"], &copies.join("b"), vec![]);
    let got = copy.psql("postgres", "SELECT sum(abalance) FROM pgbench_accounts");
    let got_branches = copy.psql("postgres", "SELECT sum(bbalance) FROM pgbench_branches");
    drop(copy);
    assert_eq!(got.trim(), sum);
    assert_eq!(got_branches.trim(), branches);

    // A segment gone after B's start: verify says which, and fails.
    let segments: Vec<&(String, String)> = after
        .iter()
        .filter(|(n, _)| is_segment(n) && *n > b_start)
        .collect();
    assert!(segments.len() >= 2, "{after:?}");
    let (gone, gone_id) = segments[0];
    env.ok(&["delete", gone_id]);
    let out = env.run(&["verify"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(code(&out), 3, "{text}{}", stderr(&out));
    assert!(
        text.contains(&format!("WAL archive: {gone} is missing"))
            && text.contains(&format!("snapshot {}", &b[..8])),
        "{text}"
    );
    eprintln!("took {:?}", began.elapsed());
}

//! PostgreSQL recovery to a moment: base backups (`backup --pg-base`) and the WAL archive
//! (`pg archive-wal`) of a real server under pgbench, restored with `pg restore` by time, by
//! WAL position and by restore point, each copy started and compared with what the server
//! recorded at that moment.
//!
//! Needs PostgreSQL's server binaries, pgbench and pg_amcheck (`tools/test.sh` installs them);
//! `STRATA_SKIP_SERVER_TESTS=1` skips it on purpose.

mod common;
use common::pg::*;
use common::*;
use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What the server recorded at one moment: while `pgbench_accounts` was locked against writers,
/// the time, the WAL position and the balance total, and a restore point of that name.
#[derive(Debug, Clone)]
struct Mark {
    n: u32,
    at: String,
    lsn: String,
    total: i64,
}

impl Mark {
    fn point(&self) -> String {
        format!("mark-{}", self.n)
    }
}

/// Records mark `n`: in one transaction holding `pgbench_accounts` against writers (SHARE
/// locks out every pgbench transaction, whose first statement updates it), the time, the WAL
/// position, the total and (through `strata pg restore-point`, run by psql meanwhile) a
/// restore point. Every moment of that window sees the same total.
fn mark(env: &Env, pg: &ArchivingServer, n: u32) {
    let point = Command::new(env.cmd().get_program())
        .args(env.cmd().get_args())
        .args(["pg", "restore-point", "--db", &pg.pg.conn("postgres")])
        .arg(format!("mark-{n}"))
        .get_args()
        .map(|a| shell(&a.to_string_lossy()))
        .collect::<Vec<_>>()
        .join(" ");
    let program = shell(&env.cmd().get_program().to_string_lossy());
    let vars: Vec<String> = env
        .cmd()
        .get_envs()
        .filter_map(|(k, v)| Some(format!("{}={}", k.to_str()?, shell(&v?.to_string_lossy()))))
        .collect();
    let script = format!(
        "BEGIN;\n\
         LOCK TABLE pgbench_accounts IN SHARE MODE;\n\
         INSERT INTO marks SELECT {n}, clock_timestamp(), pg_current_wal_insert_lsn(), \
         sum(abalance) FROM pgbench_accounts;\n\
         \\! env {} {program} {point} >/dev/null 2>>{}\n\
         COMMIT;\n",
        vars.join(" "),
        env.path("restore-points.log").display()
    );
    let mut psql = Command::new("psql")
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d"])
        .arg(pg.pg.conn("postgres"))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    use std::io::Write;
    psql.stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    assert!(psql.wait().unwrap().success(), "mark {n}");
}

fn shell(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The marks, in order.
fn marks(pg: &ArchivingServer) -> Vec<Mark> {
    pg.psql(
        "SELECT n, to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), lsn, total \
         FROM marks ORDER BY n",
    )
    .lines()
    .map(|l| {
        let f: Vec<&str> = l.split('|').collect();
        Mark {
            n: f[0].parse().unwrap(),
            at: f[1].to_string(),
            lsn: f[2].to_string(),
            total: f[3].parse().unwrap(),
        }
    })
    .collect()
}

/// Restores with `target` (`--at TIME`, `--lsn LSN` or `--name NAME`) into a new directory,
/// starts the copy and waits until it is promoted; returns it.
fn recovered(env: &Env, target: &[&str], dir: &Path) -> PgServer {
    let mut args = vec!["--no-archive"];
    args.extend(target);
    recovered_copy(env, &args, dir, vec![])
}

#[test]
fn recovery_to_moments_by_time_position_and_name_gives_what_the_server_had() {
    if skip_server_tests() {
        return;
    }
    let env = Env::new();
    env.init();
    let pg = ArchivingServer::start_with(&env, &[]);
    env.as_server_user.set(true);
    // The copies are laid down by the server's user, in a directory of theirs.
    let copies = server_dir(&env.path("copies"));
    pg.pgbench(&["-i", "-q", "-s", "10"]);
    pg.psql("CREATE TABLE marks (n int PRIMARY KEY, at timestamptz, lsn pg_lsn, total bigint)");
    let conn = pg.pg.conn("postgres");
    env.ok(&["backup", "--pg-base", &conn, "--kind", "hourly"]);

    // Load: pgbench for 16 s, marks every half second, a second base backup in the middle.
    let bench = {
        let mut c = Command::new(PgServer::bindir().join("pgbench"));
        c.args([
            "-h",
            pg.pg.sock.to_str().unwrap(),
            "-p",
            "5432",
            "-U",
            "postgres",
        ])
        .args(["-c", "2", "-R", "300", "-T", "16", "postgres"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        c.spawn().unwrap()
    };
    let start = Instant::now();
    let mut n = 0;
    let mut second_base = false;
    while start.elapsed() < Duration::from_secs(15) {
        n += 1;
        mark(&env, &pg, n);
        if !second_base && start.elapsed() > Duration::from_secs(7) {
            env.ok(&["backup", "--pg-base", &conn, "--kind", "hourly"]);
            second_base = true;
        }
        std::thread::sleep(Duration::from_millis(400));
    }
    let out = bench.wait_with_output().unwrap();
    assert!(out.status.success(), "pgbench failed");
    pg.archive_all();
    let marks = marks(&pg);
    assert!(marks.len() >= 15, "{} marks", marks.len());
    let points = fs::read_to_string(env.path("restore-points.log")).unwrap_or_default();
    assert!(!points.contains("error"), "{points}");
    // Every mark's total differs from the next one's: the load ran between them.
    let changed = marks
        .windows(2)
        .filter(|w| w[0].total != w[1].total)
        .count();
    assert!(changed >= marks.len() / 2, "{marks:?}");

    // Ten moments spread over the load, each from the base backup before it.
    let bases: Vec<serde_json::Value> = env
        .json(&["list", "--kind", "hourly"])
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(bases.len(), 2);
    let mut rng = Rng::new(27);
    let mut chosen: Vec<Mark> = (0..10)
        .map(|i| {
            let lo = i * marks.len() / 10;
            let hi = ((i + 1) * marks.len() / 10).max(lo + 1);
            marks[lo + rng.below((hi - lo) as u64) as usize].clone()
        })
        .collect();
    chosen.dedup_by_key(|m| m.n);
    let mut used_bases = std::collections::BTreeSet::new();
    for (i, m) in chosen.iter().enumerate() {
        let point = m.point();
        let target: Vec<&str> = match i % 3 {
            0 => vec!["--at", &m.at],
            1 => vec!["--lsn", &m.lsn],
            _ => vec!["--name", &point],
        };
        let dir = copies.join(format!("copy-{}", m.n));
        let t = Instant::now();
        let copy = recovered(&env, &target, &dir);
        let total: i64 = copy
            .psql("postgres", "SELECT sum(abalance) FROM pgbench_accounts")
            .trim()
            .parse()
            .unwrap();
        assert_eq!(total, m.total, "{target:?} (mark {m:?}): {}", copy.log());
        let label = fs::read_to_string(dir.join("backup_label.old")).unwrap_or_default();
        used_bases.insert(label.lines().next().unwrap_or("").to_string());
        let check = Command::new(PgServer::bindir().join("pg_amcheck"))
            .args([
                "-h",
                copy.sock.to_str().unwrap(),
                "-p",
                "5432",
                "-U",
                "postgres",
            ])
            .args(["--install-missing", "--heapallindexed", "-d", "postgres"])
            .output()
            .unwrap();
        assert!(
            check.status.success(),
            "pg_amcheck on {target:?}: {}{}",
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        );
        eprintln!(
            "{target:?}: total {total} as recorded, in {:?}",
            t.elapsed()
        );
        drop(copy);
        fs::remove_dir_all(&dir).unwrap();
    }
    // Moments before the second base backup's end come from the first, later ones from the
    // second.
    assert_eq!(used_bases.len(), 2, "{used_bases:?}");

    // Recovery to a moment before the first base backup's end is refused, clearly.
    let run = env.run(&[
        "pg",
        "restore",
        "--at",
        "2000-01-01T00:00:00Z",
        copies.join("too-early").to_str().unwrap(),
    ]);
    assert_eq!(code(&run), 1, "{}", stderr(&run));
    assert!(
        stderr(&run).contains("no base backup ends before"),
        "{}",
        stderr(&run)
    );
    assert!(!copies.join("too-early").exists());
}

/// A copy promoted onto a new timeline archives into the same repository (its timeline's
/// history file, its WAL); a second restore follows that timeline by default, and stays on the
/// base backup's with `--timeline current`.
#[test]
fn a_new_timeline_is_archived_and_a_second_restore_follows_it() {
    if skip_server_tests() {
        return;
    }
    let env = Env::new();
    env.init();
    let pg = ArchivingServer::start(&env);
    env.as_server_user.set(true);
    let copies = server_dir(&env.path("copies"));
    let count = |s: &PgServer| -> i64 {
        s.psql("postgres", "SELECT count(*) FROM t")
            .trim()
            .parse()
            .unwrap()
    };
    pg.psql("CREATE TABLE t (x int)");
    // The base backup and the application's files, in one snapshot.
    let app = env.path("app");
    fs::create_dir(&app).unwrap();
    write(
        &app.join("memory.jsonl"),
        b"{\"note\": \"kept with the database\"}\n",
    );
    env.ok(&[
        "backup",
        "--pg-base",
        &format!("{}=main", pg.pg.conn("postgres")),
        app.to_str().unwrap(),
    ]);
    let shown = env.json(&["show", "latest"]);
    let kinds: Vec<(&str, &str)> = shown["sources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].as_str().unwrap(), s["kind"].as_str().unwrap()))
        .collect();
    assert_eq!(kinds, vec![("app", "path"), ("main", "pg-base")], "{shown}");
    let paths = entry_paths(&shown);
    assert!(paths.iter().any(|p| p == "main/PG_VERSION"), "{paths:?}");
    assert!(paths.iter().any(|p| p == "app/memory.jsonl"), "{paths:?}");
    pg.psql("INSERT INTO t SELECT generate_series(1, 100)");
    pg.archive_all();

    // The copy: recovered to the archive's end, promoted, archiving as the server does.
    let first = recovered_copy(&env, &[], &copies.join("first"), archiving());
    assert_eq!(count(&first), 100);
    // Both go on, each on its own timeline.
    pg.psql("INSERT INTO t SELECT generate_series(1, 10)");
    first.psql("postgres", "INSERT INTO t SELECT generate_series(1, 5)");
    std::thread::sleep(Duration::from_millis(50));
    let moment = first
        .psql(
            "postgres",
            "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
        )
        .trim()
        .to_string();
    std::thread::sleep(Duration::from_millis(50));
    pg.psql("INSERT INTO t SELECT generate_series(1, 1000)");
    first.psql("postgres", "INSERT INTO t SELECT generate_series(1, 1000)");
    pg.archive_all();
    first.archive_all();
    let timeline = first.psql(
        "postgres",
        "SELECT timeline_id FROM pg_control_checkpoint()",
    );
    assert_eq!(timeline.trim(), "2");
    let history = first.data().join("pg_wal/00000002.history");
    let names: Vec<String> = env
        .json(&["list", "--kind", "pg-wal"])
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect();
    assert!(names.iter().any(|n| n == "00000002.history"), "{names:?}");
    assert!(
        names
            .iter()
            .any(|n| n.starts_with("00000002") && n.len() == 24),
        "{names:?}"
    );
    let back = env.path("history");
    env.as_server_user.set(false);
    env.ok(&[
        "pg",
        "restore-wal",
        "00000002.history",
        back.to_str().unwrap(),
    ]);
    env.as_server_user.set(true);
    assert_eq!(fs::read(&back).unwrap(), fs::read(&history).unwrap());
    drop(first);

    // The second restore follows the new timeline to the moment: the copy's rows.
    let second = recovered(&env, &["--at", &moment], &copies.join("second"));
    assert_eq!(count(&second), 105, "{}", second.log());
    assert_eq!(
        second
            .psql(
                "postgres",
                "SELECT timeline_id FROM pg_control_checkpoint()"
            )
            .trim(),
        "3",
        "a new timeline past the archive's newest"
    );
    drop(second);
    // On the base backup's timeline: the server's rows at that moment.
    let third = recovered(
        &env,
        &["--at", &moment, "--timeline", "current"],
        &copies.join("third"),
    );
    assert_eq!(count(&third), 110, "{}", third.log());
}

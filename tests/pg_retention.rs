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
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The strata binary as an absolute path (the server runs it from its data directory).
fn bin_path() -> String {
    fs::canonicalize(bin()).unwrap().display().to_string()
}

/// A directory the server's user owns (under root: made `postgres`'s).
fn server_dir() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    fs::set_permissions(d.path(), fs::Permissions::from_mode(0o755)).unwrap();
    if is_root() {
        run_ok(Command::new("chown").arg("postgres:").arg(d.path()));
    }
    d
}

/// The setting up of `tests/pg_archive.rs`: a server whose `archive_command` stores each WAL
/// file in the repository. Every strata command of the test runs as the server's user, so that
/// the repository stays writable by its archiver.
struct Setup {
    env: Env,
    /// The server, until the test stops it.
    server: Option<PgServer>,
    home: tempfile::TempDir,
}

impl Setup {
    fn start() -> Setup {
        let env = Env::new();
        if is_root() {
            fs::set_permissions(env.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        }
        let home = server_dir();
        let mut vars = vec![
            ("STRATA_REPO".to_string(), env.repo.display().to_string()),
            ("HOME".to_string(), home.path().display().to_string()),
            (
                "XDG_DATA_HOME".to_string(),
                home.path().join("xdg").display().to_string(),
            ),
        ];
        vars.extend(env.vars.borrow().iter().cloned());
        // Made here, then given to the server's user with the server's home.
        env.init();
        let pg = PgServer::start(&PgOptions {
            settings: vec![
                "wal_level=replica".to_string(),
                "archive_mode=on".to_string(),
                format!("archive_command='{}' pg archive-wal %p %f", bin_path()),
                "max_wal_size=4GB".to_string(),
            ],
            owned: vec![env.repo.clone(), home.path().to_path_buf()],
            env: vars,
        });
        Setup {
            env,
            server: Some(pg),
            home,
        }
    }

    fn pg(&self) -> &PgServer {
        self.server.as_ref().expect("the server is running")
    }

    /// strata with `args`, as the server's user under root.
    fn run(&self, args: &[&str]) -> Output {
        let base = self.env.cmd();
        let mut cmd = if is_root() {
            let mut c = Command::new("setpriv");
            c.args(["--reuid=postgres", "--regid=postgres", "--init-groups"])
                .arg(bin_path());
            c
        } else {
            Command::new(bin_path())
        };
        for (k, v) in base.get_envs() {
            if let Some(v) = v {
                cmd.env(k, v);
            }
        }
        cmd.env("HOME", self.home.path())
            .env("XDG_DATA_HOME", self.home.path().join("xdg"))
            .env("XDG_CONFIG_HOME", self.home.path().join("config"));
        cmd.args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run strata")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "strata {args:?} failed: {}\n{}",
            stderr(&out),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = args.to_vec();
        a.push("--json");
        serde_json::from_str(&self.ok(&a)).expect("valid JSON")
    }

    fn psql(&self, sql: &str) -> String {
        self.pg().psql("postgres", sql).trim().to_string()
    }

    /// Switches to a new segment and waits until the archive holds the one it left.
    fn switch_and_wait(&self) {
        let last = self.psql("SELECT pg_walfile_name(pg_current_wal_lsn())");
        self.psql("SELECT pg_switch_wal()");
        let start = Instant::now();
        loop {
            let row = self
                .psql("SELECT coalesce(last_archived_wal, ''), failed_count FROM pg_stat_archiver");
            let (done, failed) = row.split_once('|').unwrap();
            assert_eq!(failed, "0", "archiving failed: {}", self.pg().log());
            if !done.is_empty() && done >= last.as_str() {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "archiving did not reach {last} (at {done:?}): {}",
                self.pg().log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Load, then `n` segment switches with a little more between them.
    fn load(&self, n: usize) {
        self.pg().pgbench(&["-c", "2", "-T", "3"]);
        for _ in 0..n {
            self.psql(
                "SELECT pg_switch_wal(); UPDATE pgbench_branches SET bbalance = bbalance + 1",
            );
        }
        self.switch_and_wait();
    }

    /// A base backup; returns its snapshot id and its start segment.
    fn base_backup(&self) -> (String, String) {
        let v = self.json(&[
            "backup",
            "--kind",
            "hourly",
            "--pg-base",
            &self.pg().conn("postgres"),
        ]);
        let id = v["id"].as_str().expect("id").to_string();
        let list = self.json(&["list"]);
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
    fn archived(&self) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = self
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
}

/// A whole segment's name (not a history file, `.partial` or `.backup`).
fn is_segment(name: &str) -> bool {
    name.len() == 24
}

/// Starts a server on the restored data directory `data` (its own socket directory), waits
/// until it accepts connections; the caller stops it.
fn start_restored(data: &Path, sock: &Path, log: &Path, home: &Path) -> std::process::Child {
    let mut cmd = PgServer::as_server_user(&PgServer::bindir().join("postgres"));
    cmd.arg("-D").arg(data).arg("-k").arg(sock);
    for s in ["listen_addresses=", "fsync=off"] {
        cmd.arg("-c").arg(s);
    }
    cmd.env("HOME", home).env("XDG_DATA_HOME", home.join("xdg"));
    cmd.args(["-p", "5432"])
        .stdout(Stdio::null())
        .stderr(fs::File::create(log).unwrap())
        .spawn()
        .expect("start postgres")
}

fn restored_psql(sock: &Path, sql: &str) -> Option<String> {
    let out = Command::new("psql")
        .args(["-X", "-q", "-A", "-t", "-d"])
        .arg(format!(
            "host={} port=5432 user=postgres dbname=postgres",
            sock.display()
        ))
        .arg("-c")
        .arg(sql)
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[test]
fn forgetting_a_base_backup_takes_only_the_wal_it_alone_needed() {
    if std::env::var_os("STRATA_SKIP_SERVER_TESTS").is_some_and(|v| v == "1") {
        eprintln!("STRATA_SKIP_SERVER_TESTS=1: skipping a test that needs a database server");
        return;
    }
    let began = Instant::now();
    let mut s = Setup::start();
    s.pg().pgbench(&["-i", "-q", "-s", "1"]);
    s.switch_and_wait();
    let (a, a_start) = s.base_backup();
    s.load(3);
    let (b, b_start) = s.base_backup();
    assert!(b_start > a_start, "{a_start} then {b_start}");
    s.load(3);
    let sum = s.psql("SELECT sum(abalance) FROM pgbench_accounts");
    let branches = s.psql("SELECT sum(bbalance) FROM pgbench_branches");
    s.switch_and_wait();
    let before = s.archived();
    assert!(
        before.iter().any(|(n, _)| is_segment(n) && *n < b_start),
        "some WAL before B's start: {before:?}"
    );
    s.ok(&["verify"]);

    // A dry run only says what would go.
    let dry = s.ok(&[
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
    assert_eq!(s.archived(), before);

    // Forgetting A takes the WAL before B's start with it (reported in the JSON too).
    let decisions = s.json(&["forget", "--kind", "hourly", "--keep-last", "1"]);
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
    let after = s.archived();
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
    s.ok(&["gc"]);
    s.ok(&["verify"]);

    // B recovers to the end of the archive.
    s.server = None;
    let place = server_dir();
    let data = place.path().join("data");
    let sock = place.path().join("sock");
    fs::create_dir(&sock).unwrap();
    if is_root() {
        run_ok(Command::new("chown").arg("postgres:").arg(&sock));
    }
    s.ok(&["pg", "restore", "--no-archive", data.to_str().unwrap()]);
    let log = place.path().join("server.log");
    let mut server = start_restored(&data, &sock, &log, s.home.path());
    let start = Instant::now();
    loop {
        if restored_psql(&sock, "SELECT pg_is_in_recovery()").as_deref() == Some("f") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the restored server did not finish recovery: {}",
            fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let got = restored_psql(&sock, "SELECT sum(abalance) FROM pgbench_accounts");
    let got_branches = restored_psql(&sock, "SELECT sum(bbalance) FROM pgbench_branches");
    // SAFETY: kill only signals the server this test started.
    unsafe { libc::kill(server.id() as i32, libc::SIGINT) };
    let _ = server.wait();
    assert_eq!(got.as_deref(), Some(sum.as_str()));
    assert_eq!(got_branches.as_deref(), Some(branches.as_str()));

    // A segment gone after B's start: verify says which, and fails.
    let segments: Vec<&(String, String)> = after
        .iter()
        .filter(|(n, _)| is_segment(n) && *n > b_start)
        .collect();
    assert!(segments.len() >= 2, "{after:?}");
    let (gone, gone_id) = segments[0];
    s.ok(&["delete", gone_id]);
    let out = s.run(&["verify"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(code(&out), 3, "{text}{}", stderr(&out));
    assert!(
        text.contains(&format!("WAL archive: {gone} is missing"))
            && text.contains(&format!("snapshot {}", &b[..8])),
        "{text}"
    );
    eprintln!("took {:?}", began.elapsed());
}

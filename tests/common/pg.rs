//! A private PostgreSQL server for a test: its own cluster in a temporary directory, listening
//! only on a Unix socket there, stopped (fast shutdown) when dropped. Run as the `postgres` user
//! when the tests run as root (the server refuses root).

use super::{Env, bin, run_ok};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Whether `program` is on the PATH.
pub fn have(program: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {program}"))
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Waits up to 30 s for `ready`.
pub fn wait_until(what: &str, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{what} did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// How a server is started besides the defaults (`fsync=off`, no TCP).
#[derive(Default)]
pub struct PgOptions {
    /// `NAME=VALUE` settings given with `-c`.
    pub settings: Vec<String>,
    /// Directories the server's user must own (made `postgres`'s, recursively, under root).
    pub owned: Vec<PathBuf>,
    /// Environment of the server (and so of the commands it runs, such as `archive_command`).
    pub env: Vec<(String, String)>,
}

pub struct PgServer {
    pub dir: tempfile::TempDir,
    pub sock: PathBuf,
    data: PathBuf,
    server: Child,
}

impl PgServer {
    /// The newest PostgreSQL's server programs.
    pub fn bindir() -> PathBuf {
        let mut found: Vec<PathBuf> = fs::read_dir("/usr/lib/postgresql")
            .map(|d| d.flatten().map(|e| e.path().join("bin")).collect())
            .unwrap_or_default();
        found.retain(|b| b.join("postgres").exists() && b.join("initdb").exists());
        found.sort();
        found.pop().unwrap_or_else(|| {
            panic!(
                "PostgreSQL server binaries not found under /usr/lib/postgresql: apt-get \
                 install postgresql (or set STRATA_SKIP_SERVER_TESTS=1)"
            )
        })
    }

    /// Runs a server program, as the `postgres` user when we are root. `setpriv` execs the
    /// program in its own process, so signals reach the server itself.
    pub fn as_server_user(program: &Path) -> Command {
        if is_root() {
            let mut c = Command::new("setpriv");
            c.args(["--reuid=postgres", "--regid=postgres", "--init-groups"])
                .arg(program);
            c
        } else {
            Command::new(program)
        }
    }

    /// A new cluster, started and ready. Its log is `server.log` in its directory.
    pub fn start(opts: &PgOptions) -> PgServer {
        let bin = Self::bindir();
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        fs::create_dir(&data).unwrap();
        if is_root() {
            run_ok(Command::new("chown").arg("-R").arg("postgres:").arg(&data));
        }
        run_ok(
            Self::as_server_user(&bin.join("initdb"))
                .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
                .arg(&data),
        );
        Self::run(dir, data, opts)
    }

    /// A server started on the data directory `data` (a restored copy), ready (accepting
    /// connections; it may still be replaying, or paused at its target).
    pub fn start_on(data: &Path, opts: &PgOptions) -> PgServer {
        Self::run(tempfile::tempdir().unwrap(), data.to_path_buf(), opts)
    }

    /// Starts the server of `data`, with its socket and log in `dir`.
    fn run(dir: tempfile::TempDir, data: PathBuf, opts: &PgOptions) -> PgServer {
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let sock = dir.path().join("sock");
        fs::create_dir(&sock).unwrap();
        if is_root() {
            for d in std::iter::once(&sock).chain(&opts.owned) {
                run_ok(Command::new("chown").arg("-R").arg("postgres:").arg(d));
            }
        }
        let mut cmd = Self::as_server_user(&Self::bindir().join("postgres"));
        cmd.arg("-D").arg(&data).arg("-k").arg(&sock);
        for setting in ["listen_addresses=", "fsync=off"]
            .iter()
            .map(|s| s.to_string())
            .chain(opts.settings.iter().cloned())
        {
            cmd.arg("-c").arg(setting);
        }
        cmd.envs(opts.env.iter().map(|(k, v)| (k, v)));
        let server = cmd
            .args(["-p", "5432"])
            .stdout(Stdio::null())
            .stderr(fs::File::create(dir.path().join("server.log")).unwrap())
            .spawn()
            .expect("start postgres");
        let mut pg = PgServer {
            dir,
            sock,
            data,
            server,
        };
        wait_until("postgres", || {
            if let Ok(Some(status)) = pg.server.try_wait() {
                panic!("postgres exited ({status}): {}", pg.log());
            }
            Command::new("pg_isready")
                .arg("-h")
                .arg(&pg.sock)
                .args(["-p", "5432"])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        });
        pg
    }

    pub fn data(&self) -> PathBuf {
        self.data.clone()
    }

    pub fn conn(&self, db: &str) -> String {
        format!(
            "host={} port=5432 user=postgres dbname={db}",
            self.sock.display()
        )
    }

    /// `sql` run in database `db` by psql (unaligned, tuples only); its output.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        run_ok(
            Command::new("psql")
                .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d"])
                .arg(self.conn(db))
                .arg("-c")
                .arg(sql),
        )
    }

    /// pgbench with `args` against database `postgres`.
    pub fn pgbench(&self, args: &[&str]) {
        run_ok(
            Command::new(Self::bindir().join("pgbench"))
                .args([
                    "-h",
                    self.sock.to_str().unwrap(),
                    "-p",
                    "5432",
                    "-U",
                    "postgres",
                ])
                .args(args)
                .arg("postgres"),
        );
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        // SIGINT: fast shutdown.
        // SAFETY: kill only signals the server process this test started.
        unsafe { libc::kill(self.server.id() as i32, libc::SIGINT) };
        let _ = self.server.wait();
    }
}

/// A private PostgreSQL server that archives into `env`'s repository through strata.
pub struct ArchivingServer {
    pub pg: PgServer,
    /// The server's home (where the archiver's strata looks for its state); removed after the
    /// server stopped.
    _home: tempfile::TempDir,
}

impl ArchivingServer {
    pub fn start(env: &Env) -> ArchivingServer {
        Self::start_with(env, &[])
    }

    /// A server with `settings` besides those archiving needs.
    pub fn start_with(env: &Env, settings: &[&str]) -> ArchivingServer {
        if is_root() {
            // The server runs the archiver as its own user: it writes the repository.
            fs::set_permissions(env.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        }
        let home = tempfile::tempdir().unwrap();
        let opts = PgOptions {
            settings: archiving()
                .into_iter()
                .chain(settings.iter().map(|s| s.to_string()))
                .collect(),
            owned: vec![env.repo.clone(), home.path().to_path_buf()],
            env: server_env(env, home.path()),
        };
        ArchivingServer {
            pg: PgServer::start(&opts),
            _home: home,
        }
    }

    pub fn data(&self) -> PathBuf {
        self.pg.data()
    }

    pub fn psql(&self, sql: &str) -> String {
        self.pg.psql("postgres", sql).trim().to_string()
    }

    pub fn pgbench(&self, args: &[&str]) {
        self.pg.pgbench(args)
    }

    pub fn log(&self) -> String {
        self.pg.log()
    }

    /// Switches to a new segment and waits until the archive holds the one that was current
    /// (and every one before it).
    pub fn archive_all(&self) {
        self.pg.archive_all()
    }
}

impl PgServer {
    /// For a server that archives: switches to a new segment and waits until the archive
    /// holds the one that was current (and every one before it).
    pub fn archive_all(&self) {
        let psql = |sql: &str| self.psql("postgres", sql).trim().to_string();
        let last = psql("SELECT pg_walfile_name(pg_current_wal_lsn())");
        psql("SELECT pg_switch_wal()");
        let start = std::time::Instant::now();
        loop {
            let row =
                psql("SELECT coalesce(last_archived_wal, ''), failed_count FROM pg_stat_archiver");
            let (done, failed) = row.split_once('|').unwrap();
            assert_eq!(failed, "0", "archiving failed: {}", self.log());
            if done >= last.as_str() && !done.is_empty() {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(300),
                "archiving did not reach {last} (at {done:?}): {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// The settings of a server that archives through strata.
pub fn archiving() -> Vec<String> {
    vec![
        "wal_level=replica".to_string(),
        "archive_mode=on".to_string(),
        format!("archive_command='{}' pg archive-wal %p %f", bin_path()),
        // No checkpoint recycles a segment while a test compares it with its copy.
        "checkpoint_timeout=1h".to_string(),
        "max_wal_size=4GB".to_string(),
    ]
}

/// The environment the server's strata commands get: the repository and passphrase, as an
/// operator's service unit would give them, and a home of their own.
pub fn server_env(env: &Env, home: &Path) -> Vec<(String, String)> {
    let mut vars = vec![
        ("STRATA_REPO".to_string(), env.repo.display().to_string()),
        ("HOME".to_string(), home.display().to_string()),
        (
            "XDG_DATA_HOME".to_string(),
            home.join("xdg").display().to_string(),
        ),
    ];
    vars.extend(
        env.vars
            .borrow()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone())),
    );
    vars
}

/// The strata binary as an absolute path (the server runs it from its data directory).
pub fn bin_path() -> String {
    fs::canonicalize(bin()).unwrap().display().to_string()
}

/// Whether the server tests are skipped on purpose (`STRATA_SKIP_SERVER_TESTS=1`), said once.
pub fn skip_server_tests() -> bool {
    let skip = std::env::var_os("STRATA_SKIP_SERVER_TESTS").is_some_and(|v| v == "1");
    if skip {
        eprintln!("STRATA_SKIP_SERVER_TESTS=1: skipping a test that needs a database server");
    }
    skip
}

/// A directory at `path` made for the server's user (under root: `postgres`'s), such as one to
/// restore copies into.
pub fn server_dir(path: &Path) -> PathBuf {
    fs::create_dir_all(path).unwrap();
    if is_root() {
        run_ok(Command::new("chown").arg("postgres:").arg(path));
    }
    path.to_path_buf()
}

/// `strata pg restore ARGS DIR`, then a server started on the copy with `settings`, returned
/// once it has left recovery (promoted).
pub fn recovered_copy(env: &Env, args: &[&str], dir: &Path, settings: Vec<String>) -> PgServer {
    let mut run = [&["pg", "restore"][..], args].concat();
    run.push(dir.to_str().unwrap());
    let out = env.ok(&run);
    assert!(out.contains("pg_ctl -D"), "{out}");
    let home = tempfile::tempdir().unwrap();
    let copy = PgServer::start_on(
        dir,
        &PgOptions {
            settings,
            owned: vec![home.path().to_path_buf()],
            env: server_env(env, home.path()),
        },
    );
    let start = std::time::Instant::now();
    while copy.psql("postgres", "SELECT pg_is_in_recovery()").trim() != "f" {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "{args:?}: still recovering: {}",
            copy.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    copy
}

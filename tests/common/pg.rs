//! A private PostgreSQL server for a test: its own cluster in a temporary directory, listening
//! only on a Unix socket there, stopped (fast shutdown) when dropped. Run as the `postgres` user
//! when the tests run as root (the server refuses root).

use super::run_ok;
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
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let data = dir.path().join("data");
        let sock = dir.path().join("sock");
        for d in [&data, &sock] {
            fs::create_dir(d).unwrap();
        }
        if is_root() {
            for d in [&data, &sock].into_iter().chain(&opts.owned) {
                run_ok(Command::new("chown").arg("-R").arg("postgres:").arg(d));
            }
        }
        run_ok(
            Self::as_server_user(&bin.join("initdb"))
                .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
                .arg(&data),
        );
        let mut cmd = Self::as_server_user(&bin.join("postgres"));
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
        let pg = PgServer { dir, sock, server };
        wait_until("postgres", || {
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
        self.dir.path().join("data")
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

//! Database sources against real servers: a private PostgreSQL cluster and a private Redis
//! server, each started by the test in its own temporary directory on a Unix socket.
//!
//! `tools/test.sh` installs both (Debian's `postgresql` and `redis-server`). Where they are missing
//! these tests fail and say what to install; `STRATA_SKIP_SERVER_TESTS=1` skips them on purpose.

mod common;
use common::pg::*;
use common::*;
use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// A private PostgreSQL cluster listening only on a Unix socket.
struct Postgres(PgServer);

impl std::ops::Deref for Postgres {
    type Target = PgServer;
    fn deref(&self) -> &PgServer {
        &self.0
    }
}

impl Postgres {
    fn start() -> Postgres {
        assert!(
            have("pg_dump") && have("psql"),
            "pg_dump and psql are needed: apt-get install postgresql \
             (or set STRATA_SKIP_SERVER_TESTS=1)"
        );
        Postgres(PgServer::start(&PgOptions::default()))
    }

    /// A server with database `app` holding table `memories`, filled by `insert`.
    fn with_memories(insert: &str) -> Postgres {
        let pg = Postgres::start();
        pg.psql("postgres", "CREATE DATABASE app");
        pg.psql(
            "app",
            &format!(
                "CREATE TABLE memories (id int PRIMARY KEY, memory text NOT NULL, score float8);
                 {insert}"
            ),
        );
        pg
    }

    /// Loads a plain-format dump into a new database.
    fn load(&self, db: &str, dump: &[u8]) {
        self.psql("postgres", &format!("CREATE DATABASE {db}"));
        let mut child = Command::new("psql")
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d"])
            .arg(self.conn(db))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(dump).unwrap();
        assert!(child.wait().unwrap().success(), "loading the dump failed");
    }
}

/// A private Redis server on a Unix socket, without persistence of its own.
struct Redis {
    dir: tempfile::TempDir,
    sock: PathBuf,
    server: Child,
}

impl Redis {
    /// Starts a server; `rdb` is loaded at start when given.
    fn start(rdb: Option<&[u8]>) -> Redis {
        assert!(
            have("redis-server") && have("redis-cli"),
            "redis-server and redis-cli are needed: apt-get install redis-server \
             (or set STRATA_SKIP_SERVER_TESTS=1)"
        );
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("redis.sock");
        if let Some(bytes) = rdb {
            fs::write(dir.path().join("dump.rdb"), bytes).unwrap();
        }
        let server = Command::new("redis-server")
            .args(["--port", "0", "--save", "", "--appendonly", "no"])
            .arg("--unixsocket")
            .arg(&sock)
            .arg("--dir")
            .arg(dir.path())
            .args(["--dbfilename", "dump.rdb"])
            .stdout(Stdio::null())
            .spawn()
            .expect("start redis-server");
        let r = Redis { dir, sock, server };
        wait_until("redis", || {
            r.cli(&["PING"])
                .output()
                .is_ok_and(|o| o.status.success() && o.stdout.starts_with(b"PONG"))
        });
        r
    }

    fn cli(&self, args: &[&str]) -> Command {
        let mut c = Command::new("redis-cli");
        c.arg("-s").arg(&self.sock).args(args);
        c
    }

    /// Sends commands through `redis-cli --pipe`, in the Redis protocol.
    fn pipe(&self, commands: &[Vec<String>]) {
        let mut proto = Vec::new();
        for cmd in commands {
            proto.extend(format!("*{}\r\n", cmd.len()).into_bytes());
            for arg in cmd {
                proto.extend(format!("${}\r\n{arg}\r\n", arg.len()).into_bytes());
            }
        }
        let mut child = self
            .cli(&["--pipe"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(&proto).unwrap();
        assert!(child.wait().unwrap().success(), "redis-cli --pipe failed");
    }

    /// Every key with its value (strings and hashes), sorted.
    fn contents(&self) -> Vec<String> {
        let keys = run_ok(&mut self.cli(&["--scan"]));
        let mut out = Vec::new();
        let mut keys: Vec<&str> = keys.lines().collect();
        keys.sort();
        for chunk in keys.chunks(500) {
            let strings: Vec<&str> = chunk
                .iter()
                .copied()
                .filter(|k| !k.starts_with("h:"))
                .collect();
            if !strings.is_empty() {
                let mut args = vec!["MGET"];
                args.extend(&strings);
                let values = run_ok(&mut self.cli(&args));
                for (k, v) in strings.iter().zip(values.lines()) {
                    out.push(format!("{k}={v}"));
                }
            }
            for h in chunk.iter().filter(|k| k.starts_with("h:")) {
                let fields = run_ok(&mut self.cli(&["HGETALL", h]));
                out.push(format!("{h}={}", fields.replace('\n', ",")));
            }
        }
        out
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
        let _ = &self.dir;
    }
}

/// The rows of the test table, in order, as text.
fn pg_rows(pg: &Postgres, db: &str) -> String {
    pg.psql(db, "SELECT id, memory, score FROM memories ORDER BY id")
}

/// Restores `path` of snapshot `snap` to standard output.
fn restore_stdout(env: &Env, snap: &str, path: &str) -> Vec<u8> {
    let out = env.run(&["restore", snap, "--path", path, "--to-stdout"]);
    assert!(
        out.status.success(),
        "restore to stdout failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn stats(env: &Env, snap: &str) -> (u64, u64) {
    let v = env.json(&["show", snap]);
    let s = &v["stats"];
    (
        s["bytes"].as_u64().expect("bytes"),
        s["new_raw_bytes"].as_u64().expect("new_raw_bytes"),
    )
}

fn source<'a>(show: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    show["sources"]
        .as_array()
        .expect("sources")
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no source {name} in {show}"))
}

#[test]
fn postgres_points_restore_exactly_and_deduplicate() {
    if skip_server_tests() {
        return;
    }
    let pg = Postgres::with_memories(
        "INSERT INTO memories
           SELECT i, 'user said ' || md5(i::text) || repeat(' context', 10), i / 7.0
           FROM generate_series(1, 20000) AS i;",
    );
    let env = Env::new();
    env.init();
    let conn = pg.conn("app");
    let a = env.backup_args(&["--postgres", &conn]);
    let rows_a = pg_rows(&pg, "app");
    pg.psql(
        "app",
        "UPDATE memories SET score = -1 WHERE id % 2000 = 0;
         DELETE FROM memories WHERE id BETWEEN 100 AND 110;
         INSERT INTO memories VALUES (20001, 'a new memory', 0.5);",
    );
    let b = env.backup_args(&["--postgres", &format!("{conn}=app-dump.sql")]);
    let rows_b = pg_rows(&pg, "app");
    assert_ne!(rows_a, rows_b);

    // Each point restores into a fresh database with exactly its rows.
    pg.load("restored_a", &restore_stdout(&env, &a, "app.sql"));
    assert_eq!(pg_rows(&pg, "restored_a"), rows_a);
    pg.load("restored_b", &restore_stdout(&env, &b, "app-dump.sql"));
    assert_eq!(pg_rows(&pg, "restored_b"), rows_b);

    // The snapshot says what the source was.
    let show = env.json(&["show", &b]);
    let src = source(&show, "app-dump.sql");
    assert_eq!(src["kind"], "postgres");
    assert!(
        src["details"]["server version"]
            .as_str()
            .is_some_and(|v| v.chars().next().is_some_and(|c| c.is_ascii_digit())),
        "{src}"
    );
    assert_eq!(
        src["details"]["dump options"],
        "--format=plain --no-password"
    );

    // A plain dump of a database where a few rows changed mostly deduplicates.
    let (size_b, new_b) = stats(&env, &b);
    eprintln!(
        "postgres dedup: dump {size_b} bytes, second snapshot added {new_b} bytes ({:.1}%)",
        100.0 * new_b as f64 / size_b as f64
    );
    assert!(size_b > 1_000_000, "dump of {size_b} bytes");
    assert!(
        new_b * 5 < size_b,
        "a few changed rows added {new_b} of {size_b} bytes"
    );
}

#[test]
fn redis_points_restore_into_fresh_servers() {
    if skip_server_tests() {
        return;
    }
    let redis = Redis::start(None);
    let mut fill: Vec<Vec<String>> = (0..20_000)
        .map(|i| {
            vec![
                "SET".into(),
                format!("memory:{i}"),
                format!("user said {i} {}", "x".repeat(i % 90)),
            ]
        })
        .collect();
    fill.push(vec![
        "HSET".into(),
        "h:profile".into(),
        "name".into(),
        "ada".into(),
        "lang".into(),
        "en".into(),
    ]);
    redis.pipe(&fill);
    let env = Env::new();
    env.init();
    let url = format!("unix://{}", redis.sock.display());
    let a = env.backup_args(&["--redis", &format!("{url}=cache.rdb")]);
    let contents_a = redis.contents();
    assert_eq!(contents_a.len(), 20_001);
    let change: Vec<Vec<String>> = (0..200)
        .map(|i| {
            vec![
                "SET".into(),
                format!("memory:{}", i * 97),
                format!("changed {i}"),
            ]
        })
        .chain([vec!["DEL".into(), "memory:5".into()]])
        .chain([vec![
            "HSET".into(),
            "h:profile".into(),
            "lang".into(),
            "fr".into(),
        ]])
        .collect();
    redis.pipe(&change);
    let b = env.backup_args(&["--redis", &format!("{}=cache.rdb", redis.sock.display())]);
    let contents_b = redis.contents();
    assert_ne!(contents_a, contents_b);

    for (snap, expected) in [(&a, &contents_a), (&b, &contents_b)] {
        let rdb = restore_stdout(&env, snap, "cache.rdb");
        assert!(rdb.starts_with(b"REDIS"), "not an RDB file");
        let fresh = Redis::start(Some(&rdb));
        assert_eq!(&fresh.contents(), expected, "snapshot {snap}");
    }

    let show = env.json(&["show", &b]);
    let src = source(&show, "cache.rdb");
    assert_eq!(src["kind"], "redis");
    assert!(src["details"]["server version"].is_string(), "{src}");
    let (size_b, new_b) = stats(&env, &b);
    eprintln!(
        "redis dedup: RDB {size_b} bytes, second snapshot added {new_b} bytes ({:.1}%)",
        100.0 * new_b as f64 / size_b as f64
    );
    assert!(new_b < size_b, "nothing of the RDB file deduplicated");
}

#[test]
fn one_snapshot_of_several_sources_is_all_or_nothing() {
    if skip_server_tests() {
        return;
    }
    let pg = Postgres::with_memories("INSERT INTO memories VALUES (1, 'one', 1), (2, 'two', 2);");
    let env = Env::new();
    env.init();
    let docs = env.path("docs");
    write(&docs.join("notes.md"), b"# notes\n");
    let db = env.path("state.db");
    let c = rusqlite::Connection::open(&db).unwrap();
    c.execute_batch(
        "CREATE TABLE kv (k TEXT PRIMARY KEY, v TEXT); INSERT INTO kv VALUES ('a', 'b');",
    )
    .unwrap();
    drop(c);

    let db_arg = format!("{}=bot.db", db.display());
    let good = pg.conn("app");
    let id = env.backup_args(&[
        docs.to_str().unwrap(),
        "--sqlite",
        &db_arg,
        "--postgres",
        &good,
    ]);
    let show = env.json(&["show", &id]);
    assert_eq!(source(&show, "docs")["kind"], "path");
    assert_eq!(source(&show, "bot.db")["kind"], "sqlite");
    assert_eq!(source(&show, "app.sql")["kind"], "postgres");

    // Any failing source fails the whole call, names the source, and records nothing.
    let failing: [(&str, String); 3] = [
        ("--postgres", pg.conn("no_such_db")),
        (
            "--redis",
            format!("{}=r.rdb", env.path("no.sock").display()),
        ),
        ("--from-command", "exit 3=x.out".to_string()),
    ];
    for (flag, spec) in failing {
        let out = env.run(&[
            "backup",
            docs.to_str().unwrap(),
            "--sqlite",
            &db_arg,
            "--postgres",
            &good,
            flag,
            &spec,
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{flag} {spec}: backup succeeded");
        let kind = flag.trim_start_matches("--").replace("from-", "");
        assert!(
            err.contains(&format!("{kind} source")),
            "{flag}: error does not name the source: {err}"
        );
        let list = env.json(&["list"]);
        assert_eq!(list.as_array().unwrap().len(), 1, "{flag}: {list}");
    }
    env.ok(&["verify", "--read-data"]);
}

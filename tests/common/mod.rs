//! Helpers shared by the behaviour tests: run the real binary, build trees, compare trees.
#![allow(dead_code)]

pub mod pg;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The strata binary under test: this build's, or `STRATA_TEST_BIN` (a release build, for the
/// figures some tests print).
pub fn bin() -> &'static str {
    static BIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        std::env::var("STRATA_TEST_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_strata").into())
    })
}

/// Whether tests use encrypted repositories: when compiled into `tests/encrypted_suite.rs`, or
/// with `STRATA_TEST_ENCRYPT=1`, so the same behaviour tests cover both kinds.
pub fn encrypted_suite() -> bool {
    module_path!().starts_with("encrypted_suite::")
        || std::env::var_os("STRATA_TEST_ENCRYPT").is_some_and(|v| v == "1")
}

/// A scratch area with a repository path inside.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub repo: PathBuf,
    /// Environment variables every strata run gets (a passphrase...).
    pub vars: std::cell::RefCell<Vec<(String, String)>>,
    /// Run strata as PostgreSQL's user (`postgres`) when the tests run as root: the repository
    /// is then the server's, as its archiver writes it.
    pub as_server_user: std::cell::Cell<bool>,
}

impl Env {
    pub fn new() -> Env {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = dir.path().join("repo");
        let env = Env {
            dir,
            repo,
            vars: Default::default(),
            as_server_user: Default::default(),
        };
        if encrypted_suite() {
            env.set_var("STRATA_PASSWORD", "suite passphrase");
            env.set_var("STRATA_KDF_MEMORY_KIB", "8192");
        }
        env
    }

    /// Sets (or replaces) an environment variable for every later run.
    pub fn set_var(&self, key: &str, value: &str) {
        let mut v = self.vars.borrow_mut();
        v.retain(|(k, _)| k != key);
        v.push((key.to_string(), value.to_string()));
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn cmd(&self) -> Command {
        let mut c = if self.as_server_user.get() && pg::is_root() {
            let mut c = Command::new("setpriv");
            c.args(["--reuid=postgres", "--regid=postgres", "--init-groups"])
                .arg(std::fs::canonicalize(bin()).expect("the strata binary"));
            c
        } else {
            Command::new(bin())
        };
        c.env("STRATA_REPO", &self.repo);
        c.env("XDG_DATA_HOME", self.dir.path().join("xdg"));
        c.env("HOME", self.dir.path());
        c.env("XDG_CONFIG_HOME", self.dir.path().join("config"));
        for (k, v) in self.vars.borrow().iter() {
            c.env(k, v);
        }
        c
    }

    /// Runs strata with `args`; returns the output whatever the exit code.
    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().expect("run strata")
    }

    /// Runs strata and insists on success.
    pub fn ok(&self, args: &[&str]) -> String {
        run_ok(self.cmd().args(args))
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = args.to_vec();
        a.push("--json");
        serde_json::from_str(&self.ok(&a)).expect("valid JSON")
    }

    /// Creates the repository: encrypted when the suite runs with `STRATA_TEST_ENCRYPT=1`.
    pub fn init(&self) {
        if encrypted_suite() {
            self.ok(&["init", "--encrypt"]);
        } else {
            self.ok(&["init"]);
        }
    }

    /// Backs up `paths`; returns the snapshot id.
    pub fn backup(&self, paths: &[&Path]) -> String {
        let args: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
        let a: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        self.backup_args(&a)
    }

    /// Runs `backup --json` with `args`; returns the snapshot id.
    pub fn backup_args(&self, args: &[&str]) -> String {
        let mut a = vec!["backup", "--json"];
        a.extend_from_slice(args);
        let out = self.run(&a);
        assert!(
            out.status.success(),
            "backup failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        v["id"].as_str().expect("id").to_string()
    }
}

/// Deterministic pseudo-random bytes.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A small seeded generator (xorshift64*), for random choices a failure can replay.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Compressible text-like bytes.
pub fn text(len: usize, seed: u64) -> Vec<u8> {
    let words = [
        "alpha ",
        "beta ",
        "memory ",
        "vector ",
        "user: ",
        "assistant: ",
        "\n",
    ];
    let n = noise(len / 4 + 16, seed);
    let mut out = Vec::with_capacity(len + 16);
    let mut i = 0;
    while out.len() < len {
        out.extend_from_slice(words[n[i % n.len()] as usize % words.len()].as_bytes());
        i += 1;
    }
    out.truncate(len);
    out
}

pub fn write(path: &Path, data: &[u8]) {
    if let Some(p) = path.parent() {
        fs::create_dir_all(p).unwrap();
    }
    fs::write(path, data).unwrap();
}

/// Asserts that two trees have the same entries, bytes, symlink targets, modes and file mtimes.
pub fn assert_same_tree(a: &Path, b: &Path) {
    let la = listing(a);
    let lb = listing(b);
    let names_a: Vec<&PathBuf> = la.iter().map(|x| &x.0).collect();
    let names_b: Vec<&PathBuf> = lb.iter().map(|x| &x.0).collect();
    assert_eq!(names_a, names_b, "entries differ between {a:?} and {b:?}");
    for ((rel, ma), (_, mb)) in la.iter().zip(lb.iter()) {
        let (pa, pb) = (a.join(rel), b.join(rel));
        assert_eq!(
            ma.file_type().is_symlink(),
            mb.file_type().is_symlink(),
            "{rel:?} kind"
        );
        assert_eq!(ma.is_dir(), mb.is_dir(), "{rel:?} kind");
        if ma.file_type().is_symlink() {
            assert_eq!(
                fs::read_link(&pa).unwrap(),
                fs::read_link(&pb).unwrap(),
                "{rel:?} target"
            );
            continue;
        }
        assert_eq!(
            ma.permissions().mode() & 0o7777,
            mb.permissions().mode() & 0o7777,
            "{rel:?} mode"
        );
        if ma.is_file() {
            assert_eq!(ma.len(), mb.len(), "{rel:?} size");
            assert!(
                fs::read(&pa).unwrap() == fs::read(&pb).unwrap(),
                "{rel:?} bytes differ"
            );
            assert_eq!(
                (ma.mtime(), ma.mtime_nsec()),
                (mb.mtime(), mb.mtime_nsec()),
                "{rel:?} mtime"
            );
        }
    }
}

fn listing(root: &Path) -> Vec<(PathBuf, fs::Metadata)> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = root.join(&rel);
        for e in fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let r = rel.join(e.file_name());
            let m = fs::symlink_metadata(e.path()).unwrap();
            if m.is_dir() {
                stack.push(r.clone());
            }
            out.push((r, m));
        }
    }
    out.sort_by(|x, y| x.0.cmp(&y.0));
    out
}

/// Every file below `dir` (recursively), directories left out.
pub fn files_below(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// Names below `dir` (recursively) that strata gives its temporary files and staging
/// directories.
pub fn strata_leftovers(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(listing) = fs::read_dir(&d) else {
            continue;
        };
        for e in listing {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            if name.contains(".strata-tmp.") || name.contains(".strata-restore.") {
                out.push(p.display().to_string());
            }
            if fs::symlink_metadata(&p).unwrap().is_dir() {
                stack.push(p);
            }
        }
    }
    out
}

/// Every file below `dir` with its bytes, by path relative to `dir`.
pub fn file_tree(dir: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    files_below(dir)
        .into_iter()
        .map(|p| {
            let rel = p.strip_prefix(dir).unwrap().display().to_string();
            let bytes = fs::read(&p).unwrap();
            (rel, bytes)
        })
        .collect()
}

/// Damages the data of the repository's largest pack (bytes 200..260 inverted), so a file
/// stored there cannot be restored.
pub fn damage_largest_pack(repo: &Path) {
    let biggest = packs(repo)
        .into_iter()
        .max_by_key(|p| fs::metadata(p).unwrap().len())
        .unwrap();
    let mut bytes = fs::read(&biggest).unwrap();
    for b in &mut bytes[200..260] {
        *b ^= 0xFF;
    }
    fs::write(&biggest, bytes).unwrap();
}

/// Paths of all pack files of a repository.
pub fn packs(repo: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for d in fs::read_dir(repo.join("packs")).unwrap() {
        let d = d.unwrap().path();
        if d.is_dir() {
            for f in fs::read_dir(&d).unwrap() {
                out.push(f.unwrap().path());
            }
        }
    }
    out.sort();
    out
}

/// The entry paths of a `show --json` answer.
pub fn entry_paths(show: &serde_json::Value) -> Vec<String> {
    show["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| e["path"].as_str().expect("path").to_string())
        .collect()
}

pub fn code(out: &Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Copies a directory tree (regular files and directories).
pub fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            fs::copy(e.path(), &dest).unwrap();
        }
    }
}

/// Cuts the last `bytes` bytes off a file.
pub fn truncate_by(path: &Path, bytes: u64) {
    let len = fs::metadata(path).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(len - bytes)
        .unwrap();
}

/// Runs strata with `args` and kills it (SIGKILL) after `delay` unless it finished first.
/// Returns true if it was killed.
#[allow(dead_code)]
pub fn run_and_kill_after(env: &Env, args: &[&str], delay: std::time::Duration) -> bool {
    let mut child = env
        .cmd()
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start strata");
    let start = std::time::Instant::now();
    while start.elapsed() < delay {
        if child.try_wait().expect("wait").is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_micros(200));
    }
    let killed = child.try_wait().expect("wait").is_none();
    if killed {
        child.kill().expect("kill"); // SIGKILL
    }
    child.wait().expect("wait");
    killed
}

/// A process that holds a file open for writing (as its standard input, opened to append, as a
/// writer holds a log) until it is dropped. It has the file open once it is made: the
/// descriptor is set up before its program starts.
pub struct Holding(pub std::process::Child);

impl Holding {
    pub fn new(path: &Path) -> Holding {
        let file = fs::OpenOptions::new().append(true).open(path);
        let child = Command::new("sleep")
            .arg("600")
            .stdin(file.expect("open the file to hold"))
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("start sleep");
        Holding(child)
    }

    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Holding {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The device and inode of a path (not following a symlink).
pub fn inode(path: &Path) -> (u64, u64) {
    let m = fs::symlink_metadata(path).unwrap();
    (m.dev(), m.ino())
}

/// A small app below `root`: `app/` with text, a multi-chunk binary, a nested directory, an
/// executable, a symbolic link and an empty directory.
pub fn build_app(root: &Path) {
    write(&root.join("app/config.json"), b"{\"model\": \"small\"}\n");
    write(&root.join("app/data/a.txt"), &text(5000, 1));
    write(&root.join("app/data/big.bin"), &noise(3 << 20, 2));
    write(&root.join("app/data/sub/deep.txt"), b"deep\n");
    write(&root.join("app/exec.sh"), b"#!/bin/sh\necho hi\n");
    fs::set_permissions(root.join("app/exec.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink("data/a.txt", root.join("app/link")).unwrap();
    fs::create_dir_all(root.join("app/empty")).unwrap();
}

/// A repository and `src/app.db` in it: table `t` of `rows` rows (`id`, 300 random bytes in
/// `pad`), in WAL mode when `wal`. Returns the environment, `src` and the database's path.
pub fn sqlite_app(rows: u32, wal: bool) -> (Env, PathBuf, PathBuf) {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    let db = src.join("app.db");
    let c = rusqlite::Connection::open(&db).unwrap();
    if wal {
        c.execute_batch("PRAGMA journal_mode=WAL").unwrap();
    }
    c.execute_batch(&format!(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, pad BLOB); BEGIN;
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {rows})
         INSERT INTO t SELECT i, randomblob(300) FROM n; COMMIT;"
    ))
    .unwrap();
    (env, src, db)
}

/// Runs `cmd`, which must succeed; its standard output.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

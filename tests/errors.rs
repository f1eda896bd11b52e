//! Bad input gets a clear message and a non-zero exit, never a panic.

mod common;
use common::*;
use std::fs;

fn no_panic(out: &std::process::Output) {
    let e = stderr(out);
    assert!(!e.contains("panicked"), "panic: {e}");
}

#[test]
fn missing_source_path() {
    let env = Env::new();
    env.init();
    let r = env.run(&["backup", env.path("nope").to_str().unwrap()]);
    assert_eq!(code(&r), 1);
    assert!(stderr(&r).contains("no such file"), "{}", stderr(&r));
    no_panic(&r);
    assert_eq!(env.json(&["list"]).as_array().unwrap().len(), 0);
}

#[test]
fn not_a_repository() {
    let env = Env::new();
    let r = env.run(&["list"]);
    assert_eq!(code(&r), 1);
    assert!(
        stderr(&r).contains("not a strata repository"),
        "{}",
        stderr(&r)
    );
    no_panic(&r);
}

#[test]
fn newer_format_version_is_refused() {
    let env = Env::new();
    env.init();
    let cfg = env.repo.join("config");
    let mut b = fs::read(&cfg).unwrap();
    b[8] = 99; // version field
    // Recompute the checksum so only the version is "wrong".
    let body = b.len() - 32;
    let sum = blake3::hash(&b[..body]);
    b[body..].copy_from_slice(sum.as_bytes());
    fs::write(&cfg, &b).unwrap();
    let r = env.run(&["list"]);
    assert_eq!(code(&r), 1);
    assert!(stderr(&r).contains("version 99"), "{}", stderr(&r));
}

/// A repository lock held by a live process: this test's own.
fn live_lock() -> String {
    format!(
        r#"{{"pid":{},"host":"{}","time":"now","command":"backup"}}"#,
        std::process::id(),
        fs::read_to_string("/proc/sys/kernel/hostname")
            .unwrap()
            .trim()
    )
}

#[test]
fn locked_repository_names_the_holder() {
    let env = Env::new();
    env.init();
    // A live process holds the lock: this test's own pid.
    let info = live_lock();
    fs::write(env.repo.join("lock"), info).unwrap();
    let src = env.path("src");
    write(&src.join("f"), b"x");
    let r = env.run(&["backup", src.to_str().unwrap()]);
    assert_eq!(code(&r), 5, "a locked repository has its own exit code");
    let e = stderr(&r);
    assert!(
        e.contains("locked by pid") && e.contains("strata unlock"),
        "{e}"
    );
    // The holder is alive: unlock refuses unless forced.
    let r = env.run(&["unlock"]);
    assert_ne!(code(&r), 0, "unlock removed a live holder's lock");
    env.ok(&["unlock", "--force"]);
    env.ok(&["backup", src.to_str().unwrap()]);
}

#[test]
fn unreadable_file_gives_partial_snapshot() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    write(&src.join("ok"), b"fine");
    // /proc/self/mem is a regular file whose first page cannot be read (EIO), even as root.
    let r = env.run(&["backup", src.to_str().unwrap(), "/proc/self/mem"]);
    assert_eq!(
        code(&r),
        4,
        "partial backup exit code; stderr: {}",
        stderr(&r)
    );
    assert!(stderr(&r).contains("partial"));
    let list = env.json(&["list"]);
    assert_eq!(list[0]["partial"], true);
    let out = env.path("out");
    env.ok(&["restore", "latest", out.to_str().unwrap()]);
    assert_eq!(fs::read(out.join("src/ok")).unwrap(), b"fine");
}

#[test]
fn bad_arguments() {
    let env = Env::new();
    env.init();
    let r = env.run(&["restore", "latest"]);
    assert_ne!(code(&r), 0);
    no_panic(&r);
    let r = env.run(&["restore", "zzzz-no-such", env.path("o").to_str().unwrap()]);
    assert_eq!(code(&r), 1);
    assert!(stderr(&r).contains("no snapshot") || stderr(&r).contains("no snapshots"));
    let r = env.run(&[
        "init",
        "--repo",
        env.path("r2").to_str().unwrap(),
        "--chunk-avg",
        "1000",
    ]);
    assert_eq!(code(&r), 1);
    assert!(stderr(&r).contains("power of two"), "{}", stderr(&r));
    let r = env.run(&["backup"]);
    assert_eq!(code(&r), 2);

    // A prefix too short to be an id says so, unless it is a snapshot's name.
    let src = env.path("src");
    write(&src.join("a"), b"a");
    env.backup_args(&["--name", "abc", src.to_str().unwrap()]);
    env.backup(&[&src]);
    let r = env.run(&["show", "abd"]);
    assert_eq!(code(&r), 1);
    assert!(
        stderr(&r).contains("give 4 or more hex digits"),
        "{}",
        stderr(&r)
    );
    assert!(env.ok(&["show", "abc"]).contains("name      abc"));

    // An empty variable counts as unset: STRATA_REPO= falls back to --repo, not to an error.
    let r = env
        .cmd()
        .env("STRATA_REPO", "")
        .env("STRATA_PASSWORD_FILE", "")
        .args(["list", "--repo", env.repo.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(code(&r), 0, "{}", String::from_utf8_lossy(&r.stderr));
    // Mistakes clap cannot see exit 2 as well, with the reason.
    let o = env.path("o");
    let o = o.to_str().unwrap();
    for (args, says) in [
        (vec!["restore", "latest"], "where to?"),
        (
            vec!["restore", "--at", "2026-01-01", "latest", o],
            "either SNAP or --at",
        ),
        (
            vec!["restore", "latest", o, "--to-stdout"],
            "--to-stdout takes no TARGET",
        ),
        (vec!["gc", "--max-unused", "lots"], "--max-unused"),
        (vec!["forget", "--keep-within", "a while"], "--keep-within"),
        (
            vec!["verify", "--read-data-subset", "some"],
            "--read-data-subset",
        ),
        (vec!["find", "[x"], "cannot read pattern"),
        (vec!["list", "--retry-lock", "soon"], "--retry-lock"),
    ] {
        let r = env.run(&args);
        assert_eq!(code(&r), 2, "{args:?}: {}", stderr(&r));
        assert!(stderr(&r).contains(says), "{args:?}: {}", stderr(&r));
    }
}

/// A write that fails for lack of room (here: the file-size limit, EFBIG, which fails writes the
/// way a full disk does) ends the command with a clear error and leaves the repository valid.
#[test]
fn failed_writes_leave_the_repository_valid() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    write(&src.join("small.txt"), &text(10_000, 1));
    env.backup(&[&src]);
    write(&src.join("big.bin"), &noise(8 << 20, 2));
    for limit_kib in [64u64, 1024, 4096] {
        // `trap '' XFSZ` keeps the signal ignored across exec, so writes fail with EFBIG.
        let script = format!(
            "trap '' XFSZ; ulimit -f {}; exec \"$0\" backup {}",
            limit_kib * 2, // in 512-byte blocks for sh
            src.display()
        );
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(&script)
            .arg(bin()) // $0 of the script
            .env("STRATA_REPO", &env.repo)
            .env("HOME", env.dir.path())
            .envs(env.vars.borrow().iter().map(|(k, v)| (k, v)))
            .output()
            .unwrap();
        no_panic(&out);
        assert_ne!(
            code(&out),
            0,
            "limit {limit_kib} KiB: the backup cannot fit"
        );
        let err = stderr(&out);
        assert!(
            err.contains("File too large") || err.contains("too large"),
            "limit {limit_kib} KiB: {err}"
        );
        env.ok(&["verify", "--read-data"]);
        assert_eq!(env.json(&["list"]).as_array().unwrap().len(), 1);
    }
    // With room again, the next backup works and restores.
    env.backup(&[&src]);
    env.ok(&["verify", "--read-data"]);
    let out = env.path("out");
    env.ok(&["restore", "latest", out.to_str().unwrap()]);
    assert_same_tree(&src, &out.join("src"));
}

/// restic #4677: a frame damaged between compression and the pack (here by a fault injected into
/// debug builds) is caught by decoding and rehashing it before it is written; the backup fails
/// and the repository keeps what it had.
#[test]
fn a_frame_damaged_before_it_is_written_fails_the_backup() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    write(&src.join("a.txt"), &text(200_000, 1));
    let first = env.backup(&[&src]);
    write(&src.join("b.txt"), &text(300_000, 2));
    let out = env
        .cmd()
        .env("STRATA_FAULT_DAMAGE_FRAMES", "1")
        .args(["backup", &src.display().to_string()])
        .output()
        .unwrap();
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("does not read back as chunk")
            || stderr(&out).contains("does not decode"),
        "{}",
        stderr(&out)
    );
    assert_eq!(env.json(&["list"]).as_array().unwrap().len(), 1);
    env.ok(&["verify", "--read-data"]);
    let target = env.path("r");
    env.ok(&["restore", &first, &target.display().to_string()]);
    assert_eq!(
        fs::read(target.join("src/a.txt")).unwrap(),
        text(200_000, 1)
    );
    // Without the fault the same backup goes through.
    env.backup(&[&src]);
}

/// EACCES: a repository the user may not write to, and a restore target likewise. As root
/// (where permission bits do not bind) the commands run as `nobody`.
#[test]
fn permission_denied_is_a_clear_error_and_changes_nothing() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let env = Env::new();
    env.init();
    let src = env.path("src");
    write(&src.join("a.txt"), &text(10_000, 1));
    env.backup(&[&src]);
    let as_root = unsafe { libc::geteuid() } == 0;
    let set_mode = |dir: &std::path::Path, mode: u32| {
        for d in [dir.to_path_buf()].into_iter().chain(
            files_below(dir)
                .into_iter()
                .filter_map(|f| f.parent().map(|p| p.to_path_buf())),
        ) {
            fs::set_permissions(&d, fs::Permissions::from_mode(mode)).unwrap();
        }
    };
    fs::set_permissions(env.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    set_mode(&env.repo, 0o555);
    let run = |args: &[&str]| {
        let mut cmd = env.cmd();
        if as_root {
            cmd.uid(65534).gid(65534);
        }
        cmd.args(args).output().unwrap()
    };
    write(&src.join("b.txt"), b"new");
    let out = run(&["backup", &src.display().to_string()]);
    no_panic(&out);
    assert_ne!(code(&out), 0);
    assert!(
        stderr(&out).contains("Permission denied")
            && stderr(&out).contains(&env.repo.display().to_string()),
        "{}",
        stderr(&out)
    );
    // Reading still works for the user who may read.
    let out = run(&["list"]);
    no_panic(&out);
    // A target the user may not write to.
    set_mode(&env.repo, 0o755);
    let target = env.path("locked");
    fs::create_dir(&target).unwrap();
    fs::set_permissions(&target, fs::Permissions::from_mode(0o555)).unwrap();
    let out = run(&["restore", "latest", &target.display().to_string()]);
    no_panic(&out);
    assert_ne!(code(&out), 0);
    assert!(
        stderr(&out).contains("Permission denied"),
        "{}",
        stderr(&out)
    );
    assert_eq!(fs::read_dir(&target).unwrap().count(), 0);
    // Nothing changed: one snapshot, and it verifies.
    assert_eq!(env.json(&["list"]).as_array().unwrap().len(), 1);
    env.ok(&["verify", "--read-data"]);
}

#[test]
fn a_closed_pipe_is_a_quiet_exit() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    write(&src.join("f"), b"x");
    for _ in 0..3 {
        env.backup(&[&src]);
    }
    // The reader is gone before strata writes (`true` reads nothing and exits at once); five
    // times, as the reader may also lose the race and read.
    for _ in 0..5 {
        let mut bash = std::process::Command::new("bash");
        bash.args(["-c", "\"$STRATA_BIN\" list | true; exit ${PIPESTATUS[0]}"])
            .env("STRATA_BIN", common::bin())
            .env("STRATA_REPO", &env.repo);
        for (k, v) in env.vars.borrow().iter() {
            bash.env(k, v);
        }
        let out = bash.output().unwrap();
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        assert_eq!(stderr(&out), "", "a closed pipe printed something");
    }
}

#[test]
fn retry_lock_waits_for_the_holder_to_finish() {
    let env = Env::new();
    env.init();
    let info = live_lock();
    let lock = env.repo.join("lock");
    fs::write(&lock, &info).unwrap();
    let src = env.path("src");
    write(&src.join("f"), b"x");
    // Not long enough: the same exit code as without waiting, after the wait.
    let started = std::time::Instant::now();
    let r = env.run(&["backup", "--retry-lock", "1s", src.to_str().unwrap()]);
    assert_eq!(code(&r), 5, "{}", stderr(&r));
    assert!(started.elapsed() >= std::time::Duration::from_millis(500));
    // Long enough: the holder lets go while we wait, and the backup goes on.
    let releaser = {
        let lock = lock.clone();
        std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(1500));
            fs::remove_file(lock).unwrap();
        })
    };
    let r = env.run(&["backup", "--retry-lock", "30s", src.to_str().unwrap()]);
    releaser.join().unwrap();
    assert_eq!(code(&r), 0, "{}", stderr(&r));
    assert!(
        stderr(&r).contains("waiting for the repository's lock"),
        "{}",
        stderr(&r)
    );
    // The variable works as the flag; a duration that does not read is refused.
    fs::write(&lock, &info).unwrap();
    let r = env
        .cmd()
        .env("STRATA_RETRY_LOCK", "1s")
        .args(["forget", "--keep-last", "1"])
        .output()
        .unwrap();
    assert_eq!(code(&r), 5, "{}", String::from_utf8_lossy(&r.stderr));
    fs::remove_file(&lock).unwrap();
    let r = env.run(&["list", "--retry-lock", "soon"]);
    assert_ne!(code(&r), 0);
    assert!(stderr(&r).contains("expected a duration"), "{}", stderr(&r));
}

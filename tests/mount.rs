//! `strata mount`: the snapshots through a real FUSE mount, read with ordinary file calls.
//! Skipped, saying why, where FUSE cannot be used (no /dev/fuse, or mounting not permitted).

mod common;
use common::*;
use std::fs;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn mounted(mnt: &Path) -> bool {
    let canon = fs::canonicalize(mnt).unwrap();
    fs::read_to_string("/proc/mounts")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(1) == Some(canon.to_str().unwrap()))
}

/// Starts `strata mount` on `mnt`; `None` (with the reason printed) where FUSE cannot be used.
fn start(env: &Env, mnt: &Path) -> Option<Child> {
    if !Path::new("/dev/fuse").exists() {
        eprintln!("skipped: /dev/fuse is missing (no FUSE here)");
        return None;
    }
    fs::create_dir_all(mnt).unwrap();
    let mut child = env
        .cmd()
        .args(["mount", mnt.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !mounted(mnt) {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
            // A bug of ours fails the test; a machine that does not let us mount skips it.
            assert!(
                !err.contains("panicked") && err.contains("mounting on"),
                "mount failed ({status}): {err}"
            );
            eprintln!("skipped: this machine does not let FUSE mount here: {err}");
            return None;
        }
        assert!(Instant::now() < deadline, "the mount never appeared");
        std::thread::sleep(Duration::from_millis(50));
    }
    Some(child)
}

/// Waits for the mount process to end; its exit code.
fn wait(mut child: Child) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code().unwrap_or(-1);
        }
        assert!(Instant::now() < deadline, "the mount process did not end");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn snapshots_read_through_a_mount_as_they_were_saved() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    build_app(&src);
    let first = env.backup_args(&["--name", "nightly", src.join("app").to_str().unwrap()]);
    let old_text = fs::read(src.join("app/data/a.txt")).unwrap();
    write(&src.join("app/data/a.txt"), b"changed\n");
    let second = env.backup_args(&["--name", "nightly", src.join("app").to_str().unwrap()]);

    let mnt = env.path("mnt");
    let Some(child) = start(&env, &mnt) else {
        return;
    };
    // Every file, link, mode and time of the latest snapshot, as the source has them now.
    assert_same_tree(&src.join("app"), &mnt.join("latest/app"));
    let mut dirs: Vec<String> = fs::read_dir(mnt.join("snapshots"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    dirs.sort();
    let mut ids = vec![first[..8].to_string(), second[..8].to_string()];
    ids.sort();
    assert_eq!(dirs, ids);
    let older = mnt.join("snapshots").join(&first[..8]);
    assert_eq!(fs::read(older.join("app/data/a.txt")).unwrap(), old_text);
    assert_eq!(
        fs::read_link(mnt.join("latest")).unwrap(),
        Path::new("snapshots").join(&second[..8])
    );
    // by-name: the newest of that name; by-time: both.
    assert_eq!(
        fs::read(mnt.join("by-name/nightly/app/data/a.txt")).unwrap(),
        b"changed\n"
    );
    assert_eq!(fs::read_dir(mnt.join("by-time")).unwrap().count(), 2);
    // A read in the middle of a multi-chunk file gives exactly those bytes.
    let big = fs::read(src.join("app/data/big.bin")).unwrap();
    let f = fs::File::open(mnt.join("latest/app/data/big.bin")).unwrap();
    let mut part = vec![0u8; 100_000];
    std::os::unix::fs::FileExt::read_exact_at(&f, &mut part, 1_234_567).unwrap();
    assert!(part == big[1_234_567..1_334_567]);
    drop(f);
    // Read-only.
    assert!(fs::write(mnt.join("latest/app/new.txt"), b"x").is_err());
    assert!(fs::write(mnt.join("latest/app/config.json"), b"x").is_err());
    assert!(fs::metadata(mnt.join("latest/app/missing")).is_err());

    // Ctrl-C unmounts and ends it.
    // SAFETY: kill only sends a signal to the child started above.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    assert_eq!(wait(child), 0);
    assert!(!mounted(&mnt));

    // A damaged pack: reads of what it holds fail (EIO), never give other bytes; an unmount
    // from outside ends the process.
    damage_largest_pack(&env.repo);
    let Some(child) = start(&env, &mnt) else {
        return;
    };
    let mut failed = 0;
    for (file, want) in [
        (
            "app/config.json",
            fs::read(src.join("app/config.json")).unwrap(),
        ),
        ("app/data/a.txt", old_text.clone()),
        ("app/data/big.bin", big.clone()),
        ("app/exec.sh", fs::read(src.join("app/exec.sh")).unwrap()),
    ] {
        match fs::read(older.join(file)) {
            Ok(got) => assert!(got == want, "{file}: wrong bytes"),
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(libc::EIO), "{file}: {e}");
                failed += 1;
            }
        }
    }
    assert!(failed >= 1, "no read met the damaged pack");
    let out = Command::new("umount").arg(&mnt).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(wait(child), 0);
}

#[test]
fn mount_refuses_what_is_not_a_directory() {
    let env = Env::new();
    env.init();
    let file = env.path("file");
    write(&file, b"x");
    for target in [file, env.path("missing")] {
        let r = env.run(&["mount", target.to_str().unwrap()]);
        assert_eq!(code(&r), 1, "{}", stderr(&r));
        assert!(!stderr(&r).contains("panicked"), "{}", stderr(&r));
    }
}

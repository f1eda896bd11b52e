//! A repository on a file system that fills up: the backup that runs out of space fails with a
//! clear message, the repository stays valid, earlier snapshots restore, and once space is
//! reclaimed the next backup succeeds.
//!
//! The file system is a small tmpfs the test mounts, which needs root (or CAP_SYS_ADMIN); where
//! mounting is not permitted the test says so and does nothing.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A mounted tmpfs, unmounted when dropped (also when the test fails).
struct SmallFs(PathBuf);

impl SmallFs {
    fn mount(dir: &Path, size: &str) -> Option<SmallFs> {
        std::fs::create_dir_all(dir).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| SmallFs(dir.to_path_buf()))
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_fails_the_backup_and_keeps_the_repository_valid() {
    let env = Env::new();
    let Some(_fs) = SmallFs::mount(&env.path("small"), "24m") else {
        eprintln!("skipped: cannot mount a tmpfs here (needs root)");
        return;
    };
    let repo = env.path("small/repo");
    env.set_var("STRATA_REPO", repo.to_str().unwrap());
    env.init();
    let src = env.path("src");
    write(&src.join("a.bin"), &noise(6 << 20, 1));
    let first = env.backup(&[&src]);

    // 40 MiB of new data cannot fit in what is left.
    write(&src.join("b.bin"), &noise(40 << 20, 2));
    let out = env.run(&["backup", src.to_str().unwrap()]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("No space left on device"), "{err}");
    eprintln!("full disk: {}", err.trim());
    assert!(!err.contains("panicked"), "{err}");

    // Still valid: the first snapshot verifies and restores (into a roomier place).
    let v = env.run(&["verify", "--read-data"]);
    assert_eq!(code(&v), 0, "{}", String::from_utf8_lossy(&v.stdout));
    assert_eq!(env.json(&["list"]).as_array().unwrap().len(), 1);
    let out = env.path("restored");
    env.ok(&["restore", &first, out.to_str().unwrap()]);
    assert_eq!(
        std::fs::read(out.join("src/a.bin")).unwrap(),
        noise(6 << 20, 1)
    );

    // gc reclaims what the failed backup left; a backup that fits then succeeds.
    env.ok(&["gc"]);
    std::fs::remove_file(src.join("b.bin")).unwrap();
    write(&src.join("c.bin"), &noise(4 << 20, 3));
    env.backup(&[&src]);
    env.ok(&["verify", "--read-data"]);
    let out = env.path("restored2");
    env.ok(&["restore", "latest", out.to_str().unwrap()]);
    assert_same_tree(&src, &out.join("src"));
}

#[test]
fn a_restore_onto_a_full_disk_fails_and_leaves_the_target_as_it_was() {
    let env = Env::new();
    let Some(_fs) = SmallFs::mount(&env.path("small"), "16m") else {
        eprintln!("skipped: cannot mount a tmpfs here (needs root)");
        return;
    };
    env.init();
    let src = env.path("src");
    write(&src.join("a.bin"), &noise(4 << 20, 1));
    let old = env.backup(&[&src]);
    write(&src.join("b.bin"), &noise(24 << 20, 2));
    let new = env.backup(&[&src]);
    let target = env.path("small/app");
    env.ok(&["restore", &old, target.to_str().unwrap()]);

    let out = env.run(&[
        "restore",
        &new,
        target.to_str().unwrap(),
        "--no-restore-point",
    ]);
    assert_ne!(code(&out), 0);
    let err = stderr(&out);
    assert!(err.contains("No space left on device"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    // The old directory is untouched, and nothing is left beside it.
    assert_eq!(file_tree(&target), {
        let back = env.path("old");
        env.ok(&["restore", &old, back.to_str().unwrap()]);
        file_tree(&back)
    });
    let left: Vec<_> = std::fs::read_dir(&target)
        .unwrap()
        .chain(std::fs::read_dir(env.path("small")).unwrap())
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("strata"))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

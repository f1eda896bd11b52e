//! Backup's ways of choosing what to read: lists of paths and of exclusions, staying on one file
//! system, and a dry run that reads and writes nothing.

mod common;
use common::*;
use std::fs;
use std::process::Command;
use std::time::Duration;

#[test]
fn paths_and_exclusions_come_from_list_files() {
    let env = Env::new();
    env.init();
    let a = env.path("a");
    let b = env.path("b");
    write(&a.join("keep.txt"), b"keep");
    write(&a.join("scratch.tmp"), b"tmp");
    write(&b.join("logs/old.gz"), b"gz");
    write(&b.join("logs/today.log"), b"log");
    let paths = env.path("paths.txt");
    fs::write(
        &paths,
        format!("# what to keep\n{}\n\n{}\n", a.display(), b.display()),
    )
    .unwrap();
    let excludes = env.path("excludes.txt");
    fs::write(&excludes, "*.tmp\n# compressed logs\nlogs/*.gz\n").unwrap();
    let id = env.backup_args(&[
        "--files-from",
        paths.to_str().unwrap(),
        "--exclude-file",
        excludes.to_str().unwrap(),
    ]);
    let show = env.json(&["show", &id]);
    assert_eq!(
        entry_paths(&show),
        ["a", "a/keep.txt", "b", "b/logs", "b/logs/today.log"]
    );
    // A list that names nothing, or does not exist: a clear error, nothing recorded.
    let empty = env.path("empty.txt");
    fs::write(&empty, "# nothing\n").unwrap();
    for list in [&empty, &env.path("missing.txt")] {
        let r = env.run(&["backup", "--files-from", list.to_str().unwrap()]);
        assert_eq!(code(&r), 1, "{}", stderr(&r));
    }
    assert_eq!(env.json(&["list"]).as_array().unwrap().len(), 1);
}

#[test]
fn a_dry_run_says_what_would_be_read_and_writes_nothing() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    write(&src.join("a.bin"), &noise(300_000, 1));
    write(&src.join("b.txt"), &text(100_000, 2));
    std::thread::sleep(Duration::from_millis(250));
    let plan = |env: &Env| env.json(&["backup", "--dry-run", src.to_str().unwrap()]);
    let p = plan(&env);
    assert_eq!(
        (p["files"].as_u64(), p["bytes"].as_u64()),
        (Some(2), Some(400_000))
    );
    assert_eq!(p["files_to_read"], 2);
    assert_eq!(p["bytes_to_read"], 400_000);
    // Nothing was written.
    assert!(env.json(&["list"]).as_array().unwrap().is_empty());
    assert!(packs(&env.repo).is_empty());
    // After a backup: nothing to read; after a change: that file.
    env.backup(&[&src]);
    assert_eq!(plan(&env)["files_to_read"], 0);
    write(&src.join("b.txt"), &text(100_000, 3));
    std::thread::sleep(Duration::from_millis(250));
    let p = plan(&env);
    assert_eq!(
        (p["files_to_read"].as_u64(), p["bytes_to_read"].as_u64()),
        (Some(1), Some(100_000))
    );
    let out = env.ok(&[
        "backup",
        "-n",
        src.to_str().unwrap(),
        "--from-command",
        "echo hi=hi.txt",
    ]);
    assert!(out.contains("would read 1 of them"), "{out}");
    assert!(out.contains("1 stream(s)"), "{out}");
    assert_eq!(env.json(&["list"]).as_array().unwrap().len(), 1);
}

#[test]
fn one_file_system_records_mount_points_empty() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    write(&src.join("top.txt"), b"top");
    let inner = src.join("inner");
    fs::create_dir_all(&inner).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&inner)
        .output();
    match mounted {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            eprintln!(
                "skipped: cannot mount a tmpfs here: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            return;
        }
        Err(e) => {
            eprintln!("skipped: no mount command: {e}");
            return;
        }
    }
    write(&inner.join("elsewhere.txt"), b"on another file system");
    let run = || {
        let whole = env.backup(&[&src]);
        let r = env.run(&["backup", "--json", "-x", src.to_str().unwrap()]);
        (whole, r)
    };
    let (whole, r) = run();
    let _ = Command::new("umount").arg(&inner).status();
    assert_eq!(code(&r), 0, "{}", stderr(&r));
    let one: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    assert!(
        one["warnings"].to_string().contains("another file system"),
        "{one}"
    );
    let one = env.json(&["show", one["id"].as_str().unwrap()]);
    assert_eq!(entry_paths(&one), ["src", "src/inner", "src/top.txt"]);
    assert!(
        entry_paths(&env.json(&["show", &whole])).contains(&"src/inner/elsewhere.txt".to_string())
    );
}

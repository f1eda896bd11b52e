//! Round trips through the real binary: what goes in comes out byte for byte, with metadata.

mod common;
use common::*;
use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};

fn build_tree(root: &std::path::Path) {
    write(&root.join("empty"), b"");
    write(&root.join("small.txt"), b"hello strata\n");
    write(&root.join("text/notes.md"), &text(300_000, 1));
    write(&root.join("bin/noise.bin"), &noise(2_000_000, 2));
    let mut deep = root.to_path_buf();
    for i in 0..30 {
        deep.push(format!("d{i}"));
    }
    write(&deep.join("leaf"), b"deep");
    write(
        &root.join("ünïcödé/日本語 ファイル.txt"),
        "こんにちは".as_bytes(),
    );
    fs::create_dir_all(root.join("empty-dir/inner")).unwrap();
    symlink("small.txt", root.join("link-rel")).unwrap();
    symlink("/nonexistent/target", root.join("link-dangling")).unwrap();
    let exe = root.join("run.sh");
    write(&exe, b"#!/bin/sh\necho hi\n");
    fs::set_permissions(&exe, fs::Permissions::from_mode(0o750)).unwrap();
    fs::set_permissions(root.join("text"), fs::Permissions::from_mode(0o700)).unwrap();
}

#[test]
fn round_trip_of_a_mixed_tree() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    build_tree(&src);
    let id = env.backup(&[&src]);
    let out = env.path("out");
    env.ok(&["restore", &id[..8], out.to_str().unwrap()]);
    assert_same_tree(&src, &out.join("src"));
    // verify, with and without reading data, finds nothing wrong.
    assert!(
        env.ok(&["verify", "--read-data"])
            .contains("no problems found")
    );
}

#[test]
fn special_files_are_skipped_with_a_warning() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    write(&src.join("regular"), b"kept");
    let fifo = src.join("pipe");
    let status = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(status.success());
    let r = env.run(&["backup", src.to_str().unwrap()]);
    assert_eq!(code(&r), 0, "{}", stderr(&r));
    assert!(
        stderr(&r).contains("pipe: skipped (fifo)"),
        "{}",
        stderr(&r)
    );
    let show = env.json(&["show", "latest"]);
    let paths = entry_paths(&show);
    assert_eq!(paths, ["src", "src/regular"]);
}

#[test]
fn large_file_round_trip() {
    let env = Env::new();
    env.init();
    let src = env.path("big");
    // 110 MiB: half noise, half text, so both stored-raw and compressed chunks occur.
    let mut data = noise(55 << 20, 5);
    data.extend(text(55 << 20, 6));
    write(&src.join("large.bin"), &data);
    drop(data);
    env.backup(&[&src]);
    let out = env.path("out");
    env.ok(&["restore", "latest", out.to_str().unwrap()]);
    assert_same_tree(&src, &out.join("big"));
    // The same bytes again through stdout.
    let piped = env
        .cmd()
        .args([
            "restore",
            "latest",
            "--path",
            "big/large.bin",
            "--to-stdout",
        ])
        .output()
        .unwrap();
    assert!(piped.status.success());
    assert!(piped.stdout == fs::read(src.join("large.bin")).unwrap());
}

/// A file cut at SQLite pages is restored with direct writes of whole pages; one whose length
/// is not a whole number of pages (a database caught mid-extension, copied raw) ends in a
/// padded block that is cut off again.
#[test]
fn page_cut_files_restore_exactly_whatever_their_length() {
    let env = Env::new();
    env.init();
    let src = env.path("db");
    for (name, len) in [("whole.db", 5 << 20), ("ragged.db", (5 << 20) + 1000)] {
        let mut data = noise(len, len as u64);
        data[..16].copy_from_slice(b"SQLite format 3\0");
        data[16..18].copy_from_slice(&4096u16.to_be_bytes());
        write(&src.join(name), &data);
    }
    env.backup_args(&["--raw-sqlite", src.to_str().unwrap()]);
    let show = env.json(&["show", "latest"]);
    let pages: Vec<u64> = show["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["path"].as_str().unwrap().ends_with(".db"))
        .map(|e| e["page_size"].as_u64().unwrap())
        .collect();
    assert_eq!(pages, [4096, 4096], "{show}");
    let out = env.path("out");
    // Into a new directory, then again over the restored one (restored beside it, swapped in).
    for _ in 0..2 {
        env.ok(&[
            "restore",
            "--no-check-sqlite",
            "latest",
            out.to_str().unwrap(),
        ]);
        assert_same_tree(&src, &out.join("db"));
    }
}

#[test]
fn several_paths_make_one_snapshot() {
    let env = Env::new();
    env.init();
    let a = env.path("a");
    let b = env.path("x/a"); // same base name: stored as a-2
    write(&a.join("f"), b"one");
    write(&b.join("g"), b"two");
    let single = env.path("single.txt");
    write(&single, b"three");
    env.backup(&[&a, &b, &single]);
    let list = env.json(&["list"]);
    assert_eq!(list.as_array().unwrap().len(), 1);
    let show = env.json(&["show", "latest"]);
    let paths = entry_paths(&show);
    assert_eq!(paths, ["a", "a-2", "a-2/g", "a/f", "single.txt"]);
    let out = env.path("out");
    env.ok(&["restore", "latest", out.to_str().unwrap(), "--path", "a-2"]);
    assert_eq!(fs::read(out.join("a-2/g")).unwrap(), b"two");
    assert!(!out.join("a").exists());
}

#[test]
fn snapshots_by_name_latest_and_time() {
    let env = Env::new();
    env.init();
    let src = env.path("data");
    write(&src.join("f"), b"version 1");
    env.ok(&[
        "backup",
        src.to_str().unwrap(),
        "--name",
        "first",
        "--tag",
        "t1",
    ]);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let between = chrono::Local::now().format("%Y-%m-%d %H:%M:%S").to_string();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    write(&src.join("f"), b"version 2 is longer");
    env.ok(&["backup", src.to_str().unwrap(), "--kind", "hourly"]);

    let get = |args: &[&str]| {
        let out = env.cmd().args(args).output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        out.stdout
    };
    assert_eq!(
        get(&["restore", "first", "--path", "data/f", "--to-stdout"]),
        b"version 1"
    );
    assert_eq!(
        get(&["restore", "latest", "--path", "data/f", "--to-stdout"]),
        b"version 2 is longer"
    );
    assert_eq!(
        get(&[
            "restore",
            "--at",
            &between,
            "--path",
            "data/f",
            "--to-stdout"
        ]),
        b"version 1"
    );
    let list = env.json(&["list"]);
    assert_eq!(list[0]["name"], "first");
    assert_eq!(list[0]["tags"][0], "t1");
    assert_eq!(list[1]["kind"], "hourly");
    let diff = env.json(&["diff", "first", "latest"]);
    assert_eq!(diff[0]["path"], "data/f");
    assert_eq!(diff[0]["change"], "changed");
    assert_eq!(diff[0]["new_size"], 19);
    // Restoring over an existing tree replaces the file atomically (no temp files left).
    let out = env.path("out");
    env.ok(&["restore", "first", out.to_str().unwrap()]);
    env.ok(&["restore", "latest", out.to_str().unwrap()]);
    assert_eq!(
        fs::read(out.join("data/f")).unwrap(),
        b"version 2 is longer"
    );
    let leftovers: Vec<_> = fs::read_dir(out.join("data"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().contains("strata-tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn restore_refuses_to_write_through_a_symlink() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    write(&src.join("sub/file"), b"payload");
    env.backup(&[&src]);
    let outside = env.path("outside");
    fs::create_dir_all(&outside).unwrap();
    // The destination itself is a symlink: refused.
    let out = env.path("out");
    fs::create_dir_all(&out).unwrap();
    symlink(&outside, out.join("src")).unwrap();
    let r = env.run(&["restore", "latest", out.to_str().unwrap()]);
    assert_ne!(code(&r), 0);
    assert!(stderr(&r).contains("symlink"), "{}", stderr(&r));
    assert!(!outside.join("sub").exists(), "wrote through the symlink");

    // A symlink inside an existing directory: the directory is restored beside it and swapped
    // in, so the symlink is replaced, never followed.
    let out2 = env.path("out2");
    fs::create_dir_all(out2.join("src")).unwrap();
    symlink(&outside, out2.join("src/sub")).unwrap();
    env.ok(&["restore", "latest", out2.to_str().unwrap()]);
    assert!(!outside.join("file").exists(), "wrote through the symlink");
    assert!(fs::symlink_metadata(out2.join("src/sub")).unwrap().is_dir());
    assert_eq!(fs::read(out2.join("src/sub/file")).unwrap(), b"payload");
}

#[test]
fn default_repository_is_created_on_first_backup() {
    let env = Env::new();
    let src = env.path("src");
    write(&src.join("f"), b"x");
    let out = env
        .cmd()
        .env_remove("STRATA_REPO")
        .args(["backup", src.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("created repository"));
    assert!(env.path("xdg/strata/repo/config").exists());
    let list = env
        .cmd()
        .env_remove("STRATA_REPO")
        .args(["list", "--json"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 1);
}

#[test]
fn excluded_paths_are_left_out() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    write(&src.join("keep.json"), b"{}");
    write(&src.join("scratch.tmp"), b"x");
    write(&src.join("deep/er/also.tmp"), b"x");
    write(&src.join("cache/blob"), b"x");
    write(&src.join("logs/a.jsonl"), b"x");
    write(&src.join("logs/old/b.jsonl"), b"x");
    env.ok(&[
        "backup",
        src.to_str().unwrap(),
        "--exclude",
        "*.tmp",
        "--exclude",
        "cache",
        "--exclude",
        "logs/*.jsonl",
    ]);
    let paths = entry_paths(&env.json(&["show", "latest"]));
    assert_eq!(
        paths,
        [
            "src",
            "src/deep",
            "src/deep/er",
            "src/keep.json",
            "src/logs",
            "src/logs/old",
            "src/logs/old/b.jsonl"
        ]
    );
}

#[test]
fn command_output_and_stdin_are_stored_as_named_files_in_the_same_snapshot() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    write(&src.join("a.txt"), &text(20_000, 3));
    let id = env.backup_args(&[
        src.to_str().unwrap(),
        "--from-command",
        "seq 1 200000=numbers.txt",
        "--from-command",
        // The name follows the last '=': commands may contain '=' themselves.
        "printf 'x=1\\n'=sign.txt",
    ]);
    let show = env.json(&["show", &id[..12]]);
    let paths = entry_paths(&show);
    for p in ["src/a.txt", "numbers.txt", "sign.txt"] {
        assert!(paths.iter().any(|x| x == p), "{p} in {paths:?}");
    }
    let out = env.path("out");
    env.ok(&["restore", &id[..12], out.to_str().unwrap()]);
    let expected: String = (1..=200000).map(|i| format!("{i}\n")).collect();
    assert_eq!(
        std::fs::read_to_string(out.join("numbers.txt")).unwrap(),
        expected
    );
    assert_eq!(std::fs::read(out.join("sign.txt")).unwrap(), b"x=1\n");
    assert_same_tree(&src, &out.join("src"));

    // Standard input, with no paths at all.
    let mut child = env
        .cmd()
        .args(["backup", "--stdin", "dump.bin"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let data = noise(3 << 20, 9);
    {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(&data).unwrap();
    }
    assert!(child.wait().unwrap().success());
    let restored = env
        .cmd()
        .args(["restore", "latest", "--path", "dump.bin", "--to-stdout"])
        .output()
        .unwrap();
    assert!(restored.status.success());
    assert_eq!(restored.stdout, data);

    // A failing command fails the whole snapshot: nothing is recorded.
    let before = env.json(&["list"]).as_array().unwrap().len();
    let bad = env.run(&[
        "backup",
        src.to_str().unwrap(),
        "--from-command",
        "echo half; exit 7=bad.sql",
    ]);
    assert_ne!(code(&bad), 0);
    assert!(stderr(&bad).contains("bad.sql"), "{}", stderr(&bad));
    assert_eq!(env.json(&["list"]).as_array().unwrap().len(), before);
    // Names must be plain and distinct.
    for args in [
        &["--from-command", "true=../x"][..],
        &["--from-command", "true=src"],
        &["--from-command", "true=a", "--from-command", "true=a"],
        &["--from-command", "no-name"],
    ] {
        let mut a = vec!["backup", src.to_str().unwrap()];
        a.extend_from_slice(args);
        assert_ne!(code(&env.run(&a)), 0, "{args:?}");
    }
    env.ok(&["verify", "--read-data"]);
}

/// Every file below `dir` with its bytes.
fn contents(dir: &std::path::Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    file_tree(dir)
}

#[test]
fn restore_over_existing_data_saves_it_first_and_puts_it_back_on_failure() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    write(&src.join("a.txt"), &text(50_000, 1));
    write(&src.join("new.bin"), &noise(300_000, 2));
    let snap = env.backup(&[&src]);

    // The target holds other data under the same name.
    let target = env.path("target");
    write(&target.join("src/a.txt"), b"what the app has now");
    write(&target.join("src/only-here.txt"), b"not in the snapshot");
    let before = contents(&target);

    let out = env.run(&["restore", &snap[..12], target.to_str().unwrap()]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stderr(&out).contains("restore point"));
    // Restored files replace theirs; files the snapshot does not have stay.
    for f in ["a.txt", "new.bin"] {
        assert_eq!(
            std::fs::read(target.join("src").join(f)).unwrap(),
            std::fs::read(src.join(f)).unwrap()
        );
    }
    assert!(target.join("src/only-here.txt").exists());
    let list = env.json(&["list"]);
    let point = list
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["kind"] == "restore-point")
        .expect("a restore point was taken");
    // `latest` still means the newest real snapshot; the point restores what was there.
    assert_eq!(env.json(&["show", "latest"])["id"].as_str().unwrap(), snap);
    let undo = env.path("undo");
    env.ok(&[
        "restore",
        &point["id"].as_str().unwrap()[..12],
        undo.to_str().unwrap(),
    ]);
    assert_eq!(contents(&undo), before);
    // Policies never remove it.
    env.ok(&["forget", "--keep-last", "1"]);
    assert!(
        env.json(&["list"])
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["kind"] == "restore-point")
    );

    // A restore that fails part-way puts the target back as it was.
    let target2 = env.path("target2");
    write(&target2.join("src/a.txt"), b"precious");
    let before2 = contents(&target2);
    // Damage the snapshot's data (the largest pack), so one of its files cannot be restored.
    damage_largest_pack(&env.repo);
    let failed = env.run(&["restore", &snap[..12], target2.to_str().unwrap()]);
    assert_ne!(code(&failed), 0);
    assert!(stderr(&failed).contains("as it was"), "{}", stderr(&failed));
    assert_eq!(contents(&target2), before2);

    // --no-restore-point takes none.
    let n = env.json(&["list"]).as_array().unwrap().len();
    let target3 = env.path("target3");
    write(&target3.join("x"), b"x");
    let _ = env.run(&[
        "restore",
        &snap[..12],
        target3.to_str().unwrap(),
        "--no-restore-point",
    ]);
    assert_eq!(env.json(&["list"]).as_array().unwrap().len(), n);
}

/// restic's sparse-file bug: a zero-filled file restored over a non-zero one must come out zeros.
#[test]
fn zero_filled_file_restores_over_existing_data() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    write(&src.join("zeros.bin"), &vec![0u8; 3 << 20]);
    let id = env.backup(&[&src]);
    let target = env.path("target");
    write(&target.join("src/zeros.bin"), &noise(3 << 20, 5));
    env.ok(&[
        "restore",
        &id[..12],
        target.to_str().unwrap(),
        "--no-restore-point",
    ]);
    let back = std::fs::read(target.join("src/zeros.bin")).unwrap();
    assert_eq!(back.len(), 3 << 20);
    assert!(back.iter().all(|&b| b == 0));
}

fn inode(p: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(p).unwrap().ino()
}

#[test]
fn restore_into_an_existing_directory_swaps_it_whole() {
    let env = Env::new();
    env.init();
    let app = env.path("app");
    write(&app.join("a.txt"), b"a, as backed up");
    write(&app.join("sub/b.txt"), b"b, as backed up");
    write(&app.join("big.bin"), &noise(2 << 20, 9));
    let snap = env.backup(&[&app]);
    let pristine = env.path("pristine");
    env.ok(&["restore", &snap[..12], pristine.to_str().unwrap()]);

    // The app moves on: changes a file, removes one, adds two.
    let change = |app: &std::path::Path| {
        write(&app.join("a.txt"), b"a, changed later");
        std::fs::remove_file(app.join("sub/b.txt")).unwrap();
        write(&app.join("extra.txt"), b"made after the snapshot");
        write(&app.join("sub/new/deep.txt"), b"also new");
    };
    change(&app);
    let before = inode(&app);
    let out = env.json(&["restore", &snap[..12], env.dir.path().to_str().unwrap()]);
    assert_eq!(out["swapped"][0].as_str().unwrap(), app.to_str().unwrap());
    assert_eq!(out["kept"], 2);
    assert_ne!(
        inode(&app),
        before,
        "the directory was not replaced as a whole"
    );
    // Snapshot files restored; files the snapshot does not have kept by default.
    let got = contents(&app);
    assert_eq!(got["a.txt"], b"a, as backed up");
    assert_eq!(got["sub/b.txt"], b"b, as backed up");
    assert_eq!(got["extra.txt"], b"made after the snapshot");
    assert_eq!(got["sub/new/deep.txt"], b"also new");
    // No staging directory is left behind.
    let leftovers: Vec<_> = std::fs::read_dir(env.dir.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains("strata-restore"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // --delete: exactly the snapshot, metadata included.
    change(&app);
    env.ok(&[
        "restore",
        &snap[..12],
        env.dir.path().to_str().unwrap(),
        "--delete",
        "--no-restore-point",
    ]);
    assert_same_tree(&app, &pristine.join("app"));

    // A restore of one subdirectory swaps just that one.
    change(&app);
    let sub_before = inode(&app.join("sub"));
    let app_before = inode(&app);
    env.ok(&[
        "restore",
        &snap[..12],
        env.dir.path().to_str().unwrap(),
        "--path",
        "app/sub",
        "--delete",
    ]);
    assert_eq!(inode(&app), app_before);
    assert_ne!(inode(&app.join("sub")), sub_before);
    assert_eq!(
        contents(&app.join("sub")),
        contents(&pristine.join("app/sub"))
    );
    assert_eq!(contents(&app)["a.txt"], b"a, changed later");
}

#[test]
fn a_failed_staged_restore_leaves_the_directory_untouched() {
    let env = Env::new();
    env.init();
    let app = env.path("app");
    write(&app.join("a.txt"), b"small");
    write(&app.join("big.bin"), &noise(3 << 20, 4));
    let snap = env.backup(&[&app]);
    write(&app.join("a.txt"), b"the app's current state");
    write(&app.join("big.bin"), b"replaced");
    let before = contents(&app);
    let ino = inode(&app);
    damage_largest_pack(&env.repo);
    let out = env.run(&[
        "restore",
        &snap[..12],
        env.dir.path().to_str().unwrap(),
        "--no-restore-point",
    ]);
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    assert!(stderr(&out).contains("left as it was"), "{}", stderr(&out));
    assert_eq!(inode(&app), ino);
    assert_eq!(contents(&app), before);
}

/// A reader that opens the directory once and reads every file through that handle sees one
/// version of the whole directory: all files old, or all new, never a mix.
#[test]
fn readers_never_see_a_half_restored_directory() {
    let env = Env::new();
    env.init();
    let app = env.path("app");
    let files = 100;
    let fill = |tag: &str| {
        for i in 0..files {
            write(
                &app.join(format!("f{i:03}")),
                format!("{tag}{i}").as_bytes(),
            );
        }
    };
    fill("old");
    let old = env.backup(&[&app]);
    fill("new");
    let new = env.backup(&[&app]);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (app, stop) = (app.clone(), stop.clone());
        std::thread::spawn(move || {
            use std::io::Read;
            use std::os::fd::AsRawFd;
            let mut views = 0u64;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let Ok(dir) = std::fs::File::open(&app) else {
                    continue;
                };
                let mut tags = std::collections::HashSet::new();
                let mut complete = true;
                for i in 0..files {
                    let name = std::ffi::CString::new(format!("f{i:03}")).unwrap();
                    // SAFETY: a valid directory fd and NUL-terminated name.
                    let fd =
                        unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), libc::O_RDONLY) };
                    if fd < 0 {
                        complete = false; // the old tree is being removed under us
                        break;
                    }
                    // SAFETY: fd was just opened and is owned by this File alone.
                    let mut f =
                        unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
                    let mut s = String::new();
                    f.read_to_string(&mut s).unwrap();
                    tags.insert(s.trim_end_matches(char::is_numeric).to_string());
                }
                if complete {
                    assert_eq!(tags.len(), 1, "a mix of versions: {tags:?}");
                    views += 1;
                }
            }
            views
        })
    };
    for round in 0..10 {
        let snap = if round % 2 == 0 { &old } else { &new };
        env.ok(&[
            "restore",
            &snap[..12],
            env.dir.path().to_str().unwrap(),
            "--no-restore-point",
        ]);
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let views = reader.join().expect("reader saw a mix");
    assert!(views > 0);
}

/// Inodes of the entries below `dir` (recursively), by path relative to it.
fn inodes(dir: &std::path::Path) -> std::collections::BTreeMap<String, u64> {
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if std::fs::symlink_metadata(&p).unwrap().is_dir() {
                stack.push(p.clone());
            }
            let rel = p.strip_prefix(dir).unwrap().display().to_string();
            out.insert(rel, inode(&p));
        }
    }
    out
}

/// The bytes of every regular file below `dir` (a fifo would block a reader).
fn regular_files(dir: &std::path::Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    files_below(dir)
        .into_iter()
        .filter(|p| std::fs::symlink_metadata(p).unwrap().is_file())
        .map(|p| {
            let rel = p.strip_prefix(dir).unwrap().display().to_string();
            (rel, std::fs::read(&p).unwrap())
        })
        .collect()
}

fn mkfifo(path: &std::path::Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0, "mkfifo");
}

/// A failed restore of single files puts back what it changed and nothing else: the other
/// entries of the directory keep their inodes, a hard-linked pair stays one inode, a fifo and a
/// socket stay, and an application holding a file open still writes to the file that is there.
#[test]
fn a_failed_restore_rolls_back_only_what_it_changed() {
    use std::io::Write;
    use std::os::unix::fs::FileTypeExt;
    let env = Env::new();
    env.init();
    let src = env.path("d");
    write(&src.join("app.db"), &noise(300_000, 7));
    let snap = env.backup(&[&src]);
    write(&src.join("good.txt"), b"good, as backed up");
    write(&src.join("new.txt"), b"not in the target yet");
    let snap2 = env.backup(&[&src]);
    // app.db's chunks lie in the first pack, the only one of its size.
    damage_largest_pack(&env.repo);

    let t = env.path("t");
    let d = t.join("d");
    write(&d.join("app.db"), b"the database as it is now");
    write(&d.join("good.txt"), b"good, as it is now");
    write(&d.join("a"), b"one file, two names");
    std::fs::hard_link(d.join("a"), d.join("b")).unwrap();
    write(&d.join("sub/x.txt"), b"x");
    mkfifo(&d.join("fifo"));
    let _socket = std::os::unix::net::UnixListener::bind(d.join("sock")).unwrap();
    write(&d.join("app.log"), b"first line\n");
    let mut log = std::fs::OpenOptions::new()
        .append(true)
        .open(d.join("app.log"))
        .unwrap();
    let before = inodes(&t);

    let check =
        |out: &std::process::Output, what: &str, bytes: &std::collections::BTreeMap<_, _>| {
            assert_eq!(code(out), 3, "{what}: {}", stderr(out));
            assert!(stderr(out).contains("as it was"), "{what}: {}", stderr(out));
            let after = inodes(&t);
            for (rel, ino) in &before {
                if rel != "d/good.txt" {
                    assert_eq!(
                        after.get(rel),
                        Some(ino),
                        "{what}: {rel} is not the same inode"
                    );
                }
            }
            assert_eq!(after.len(), before.len(), "{what}: {after:?}");
            assert_eq!(inode(&d.join("a")), inode(&d.join("b")), "{what}");
            let kind = |n: &str| std::fs::symlink_metadata(d.join(n)).unwrap().file_type();
            assert!(kind("fifo").is_fifo(), "{what}");
            assert!(kind("sock").is_socket(), "{what}");
            assert_eq!(&regular_files(&t), bytes, "{what}");
            assert_eq!(strata_leftovers(&t), Vec::<String>::new(), "{what}");
        };

    // The one file fails before it is put in place: nothing changed, nothing to put back.
    let before_bytes = regular_files(&t);
    let out = env.run(&[
        "restore",
        &snap[..12],
        t.to_str().unwrap(),
        "--path",
        "d/app.db",
    ]);
    check(&out, "app.db alone", &before_bytes);
    log.write_all(b"second line\n").unwrap();
    assert_eq!(
        std::fs::read(d.join("app.log")).unwrap(),
        b"first line\nsecond line\n"
    );

    // One file replaced and one created before another fails: those two are undone.
    let before_bytes = regular_files(&t);
    let out = env.run(&[
        "restore",
        &snap2[..12],
        t.to_str().unwrap(),
        "--path",
        "d/good.txt",
        "--path",
        "d/new.txt",
        "--path",
        "d/app.db",
    ]);
    assert!(stderr(&out).contains("back as it was"), "{}", stderr(&out));
    check(&out, "three files", &before_bytes);
    log.write_all(b"third line\n").unwrap();
    assert!(
        std::fs::read(d.join("app.log"))
            .unwrap()
            .ends_with(b"third line\n")
    );
}

/// Without --delete, a restore keeps every file of the target the snapshot does not replace:
/// names that merely look like strata's temporary files, fifos and sockets. Only strata's own
/// leftovers of a process that is gone are removed.
#[test]
fn files_that_look_like_strata_temporaries_fifos_and_sockets_are_kept() {
    use std::os::unix::fs::FileTypeExt;
    let env = Env::new();
    env.init();
    let src = env.path("app");
    write(&src.join("a.txt"), b"a, as backed up");
    let snap = env.backup(&[&src]);
    let t = env.path("t");
    env.ok(&["restore", &snap[..12], t.to_str().unwrap()]);
    let app = t.join("app");
    // No process can have a pid above the kernel's largest, 2^22.
    let dead = 4_194_999;
    let users = [
        "report.strata-tmp.1.txt".to_string(),
        ".report.strata-tmp.1.txt".into(),
        format!("data.strata-tmp.{dead}.2"),
        format!("x.strata-restore.{dead}.0"),
        ".notes.strata-tmp.abc.1".into(),
        format!(".strata-tmp.{dead}.1"),
    ];
    for (k, how) in ["whole directory", "--path"].into_iter().enumerate() {
        for name in &users {
            write(&app.join(name), name.as_bytes());
        }
        let _ = std::fs::remove_file(app.join("fifo"));
        let _ = std::fs::remove_file(app.join("sock"));
        mkfifo(&app.join("fifo"));
        let _socket = std::os::unix::net::UnixListener::bind(app.join("sock")).unwrap();
        let (fifo, sock) = (inode(&app.join("fifo")), inode(&app.join("sock")));
        let left = app.join(format!(".a.txt.strata-tmp.{dead}.{k}"));
        write(&left, b"left by a killed restore");
        let mut args = vec!["restore", &snap[..12], t.to_str().unwrap()];
        if k == 1 {
            args.extend(["--path", "app/a.txt"]);
        }
        let out = env.run(&args);
        assert_eq!(code(&out), 0, "{how}: {}", stderr(&out));
        assert!(
            !stderr(&out).contains("not carried over"),
            "{}",
            stderr(&out)
        );
        for name in &users {
            assert_eq!(
                std::fs::read(app.join(name)).ok().as_deref(),
                Some(name.as_bytes()),
                "{how}: {name} is gone"
            );
        }
        let kind = |n: &str| std::fs::symlink_metadata(app.join(n)).unwrap().file_type();
        assert!(kind("fifo").is_fifo(), "{how}");
        assert!(kind("sock").is_socket(), "{how}");
        assert_eq!(inode(&app.join("fifo")), fifo, "{how}");
        assert_eq!(inode(&app.join("sock")), sock, "{how}");
        assert!(
            !left.exists(),
            "{how}: strata's own leftover is still there"
        );
        assert_eq!(
            std::fs::read(app.join("a.txt")).unwrap(),
            b"a, as backed up"
        );
    }
}

/// A sparse file restores sparse, byte for byte, whether its holes are in the middle or at
/// the end, and a file of zeros restored over another still reads as zeros.
#[test]
fn a_sparse_file_restores_sparse() {
    use std::os::unix::fs::{FileExt, MetadataExt};
    let env = Env::new();
    env.init();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    let size = 64u64 << 20;
    let f = std::fs::File::create(src.join("sparse.bin")).unwrap();
    f.set_len(size).unwrap();
    f.write_all_at(&noise(1 << 20, 3), 20 << 20).unwrap();
    f.write_all_at(b"the end", size - 7).unwrap();
    drop(f);
    let f = std::fs::File::create(src.join("tail.bin")).unwrap();
    f.write_all_at(&noise(100_000, 4), 0).unwrap();
    f.set_len(8 << 20).unwrap();
    drop(f);
    let snap = env.backup(&[&src]);
    let t = env.path("t");
    env.ok(&["restore", &snap[..12], t.to_str().unwrap()]);
    for (name, len) in [("sparse.bin", size), ("tail.bin", 8 << 20)] {
        let m = std::fs::metadata(t.join("src").join(name)).unwrap();
        assert_eq!(m.len(), len, "{name}");
        assert!(
            m.blocks() * 512 < 4 << 20,
            "{name}: {} bytes allocated",
            m.blocks() * 512
        );
        assert!(
            std::fs::read(t.join("src").join(name)).unwrap()
                == std::fs::read(src.join(name)).unwrap(),
            "{name}: bytes differ"
        );
    }
}

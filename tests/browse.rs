//! Looking inside snapshots: `ls`, `find` and `dump` against the files they were taken of.

mod common;
use common::*;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::process::Command;

fn lines(out: &str) -> Vec<&str> {
    out.lines().collect()
}

#[test]
fn ls_lists_one_level_or_all_below_a_path() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    build_app(&src);
    let id = env.backup(&[&src.join("app")]);

    assert_eq!(lines(&env.ok(&["ls", "latest"])), ["app/"]);
    assert_eq!(
        lines(&env.ok(&["ls", &id[..8], "app"])),
        [
            "app/config.json",
            "app/data/",
            "app/empty/",
            "app/exec.sh",
            "app/link -> data/a.txt"
        ]
    );
    // A trailing slash changes nothing; a file lists itself.
    assert_eq!(
        lines(&env.ok(&["ls", "latest", "/app/data/"])),
        ["app/data/a.txt", "app/data/big.bin", "app/data/sub/"]
    );
    assert_eq!(
        lines(&env.ok(&["ls", "latest", "app/data/a.txt"])),
        ["app/data/a.txt"]
    );
    assert_eq!(
        lines(&env.ok(&["ls", "-r", "latest", "app/data"])),
        [
            "app/data/a.txt",
            "app/data/big.bin",
            "app/data/sub/",
            "app/data/sub/deep.txt"
        ]
    );

    // Long form: the mode as ls shows it, size and time.
    let long = env.ok(&["ls", "-l", "latest", "app"]);
    let exec = long.lines().find(|l| l.ends_with("app/exec.sh")).unwrap();
    assert!(exec.starts_with("-rwxr-xr-x"), "{long}");
    assert!(exec.contains(" 18  "), "{exec}");
    let dir = long.lines().find(|l| l.ends_with("app/data/")).unwrap();
    assert!(dir.starts_with("drwx"), "{long}");

    // JSON: every entry below, as the files are.
    let all = env.json(&["ls", "-r", "latest"]);
    let all = all.as_array().unwrap();
    assert_eq!(all.len(), 10, "{all:?}");
    let big = all
        .iter()
        .find(|e| e["path"] == "app/data/big.bin")
        .unwrap();
    let meta = fs::metadata(src.join("app/data/big.bin")).unwrap();
    assert_eq!(big["kind"], "file");
    assert_eq!(big["name"], "big.bin");
    assert_eq!(big["size"], 3 << 20);
    assert_eq!(big["mode"], format!("{:04o}", meta.mode() & 0o7777));
    let mtime = chrono::DateTime::parse_from_rfc3339(big["mtime"].as_str().unwrap()).unwrap();
    assert_eq!(mtime.timestamp(), meta.mtime());
    let link = all.iter().find(|e| e["path"] == "app/link").unwrap();
    assert_eq!(
        (&link["kind"], &link["target"]),
        (&"symlink".into(), &"data/a.txt".into())
    );

    // `show --json` speaks the same way: lowercase kinds, ids rather than phrases.
    let show = env.json(&["show", "latest"]);
    let entries = show["entries"].as_array().unwrap();
    let big = entries
        .iter()
        .find(|e| e["path"] == "app/data/big.bin")
        .unwrap();
    assert_eq!(big["kind"], "file");
    assert_eq!(big["content"]["kind"], "tree");
    assert_eq!(big["content"]["id"].as_str().unwrap().len(), 64);
    assert_eq!(big["mode"], format!("{:04o}", meta.mode() & 0o7777));
    let dir = entries.iter().find(|e| e["path"] == "app/empty").unwrap();
    assert_eq!(
        (&dir["kind"], &dir["content"]["kind"]),
        (&"dir".into(), &"empty".into())
    );

    // For a person, times read as `list` gives them: local, to the second.
    let short = |l: &str| {
        let t = l.rsplit("   ").next().unwrap().trim();
        chrono::NaiveDateTime::parse_from_str(t, "%Y-%m-%d %H:%M:%S").is_ok()
    };
    let shown = env.ok(&["show", "latest"]);
    assert!(
        shown.lines().any(|l| l.starts_with("time ") && short(l)),
        "{shown}"
    );
    let stats = env.ok(&["stats"]);
    let line = stats
        .lines()
        .find(|l| l.starts_with("oldest / newest"))
        .unwrap();
    assert!(
        line.split(" / ")
            .skip(1)
            .all(|t| short(&format!("x   {t}"))),
        "{line}"
    );

    // A path that is not there: the error names what is.
    let r = env.run(&["ls", "latest", "app/nope"]);
    assert_eq!(code(&r), 1);
    assert!(stderr(&r).contains("not in the snapshot"), "{}", stderr(&r));
    assert!(stderr(&r).contains("app"), "{}", stderr(&r));
    let r = env.run(&["ls", "ffff", ""]);
    assert_eq!(code(&r), 1, "{}", stderr(&r));
}

#[test]
fn find_names_the_snapshots_that_hold_a_path() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    build_app(&src);
    let first = env.backup(&[&src.join("app")]);
    write(&src.join("app/data/new.log"), b"line\n");
    let second = env.backup(&[&src.join("app")]);

    // By name, in every snapshot, newest first.
    let r = env.json(&["find", "*.txt"]);
    let r = r.as_array().unwrap();
    assert_eq!(r.len(), 2);
    assert_eq!(r[0]["snapshot"], second);
    assert_eq!(r[1]["snapshot"], first);
    let paths: Vec<&str> = r[0]["matches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, ["app/data/a.txt", "app/data/sub/deep.txt"]);
    assert_eq!(r[0]["matches"][0]["size"], 5000);

    // Only where it exists; --newest and --snapshot narrow the search.
    let r = env.json(&["find", "new.log"]);
    assert_eq!(r.as_array().unwrap().len(), 1);
    assert_eq!(r[0]["snapshot"], second);
    let r = env.json(&["find", "*.txt", "--newest", "1"]);
    assert_eq!(r.as_array().unwrap().len(), 1);
    let r = env.json(&["find", "*.txt", "--snapshot", &first[..8]]);
    assert_eq!(r.as_array().unwrap().len(), 1);
    assert_eq!(r[0]["snapshot"], first);

    // A pattern with a slash matches whole paths, `*` not crossing a slash.
    let r = env.json(&["find", "app/data/*.txt"]);
    assert_eq!(r[0]["matches"].as_array().unwrap().len(), 1);
    // Case: exact by default, either with -i.
    assert!(
        env.json(&["find", "CONFIG.JSON"])
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        env.json(&["find", "-i", "CONFIG.JSON"])
            .as_array()
            .unwrap()
            .len(),
        2
    );

    // For a person: the snapshot, then each match with its size and time.
    let out = env.ok(&["find", "deep.txt", "--newest", "1"]);
    assert!(
        out.starts_with(&format!("snapshot {}", &second[..8])),
        "{out}"
    );
    assert!(out.contains("app/data/sub/deep.txt"), "{out}");
    let none = env.run(&["find", "*.nothing"]);
    assert_eq!(code(&none), 0);
    assert!(
        stderr(&none).contains("no path matches"),
        "{}",
        stderr(&none)
    );
    let bad = env.run(&["find", "[unclosed"]);
    assert_eq!(code(&bad), 2);
    assert!(
        stderr(&bad).contains("cannot read pattern"),
        "{}",
        stderr(&bad)
    );
}

#[test]
fn dump_writes_a_file_or_a_tar_archive_of_a_directory() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    build_app(&src);
    let first = env.backup(&[&src.join("app")]);
    let old_text = fs::read(src.join("app/data/a.txt")).unwrap();
    write(&src.join("app/data/a.txt"), b"changed\n");
    env.backup(&[&src.join("app")]);

    // One file: its bytes, from whichever snapshot.
    let r = env.run(&["dump", "latest", "app/data/big.bin"]);
    assert_eq!(code(&r), 0, "{}", stderr(&r));
    assert!(r.stdout == fs::read(src.join("app/data/big.bin")).unwrap());
    assert_eq!(
        env.run(&["dump", "latest", "app/data/a.txt"]).stdout,
        b"changed\n"
    );
    assert_eq!(
        env.run(&["dump", &first[..8], "app/data/a.txt"]).stdout,
        old_text
    );

    // A directory: a tar archive that unpacks to the tree as it was.
    let r = env.run(&["dump", "latest", "app"]);
    assert_eq!(code(&r), 0, "{}", stderr(&r));
    let archive = env.path("app.tar");
    fs::write(&archive, &r.stdout).unwrap();
    let out = env.path("unpacked");
    fs::create_dir_all(&out).unwrap();
    let tar = Command::new("tar")
        .args(["-x", "-p", "-f"])
        .arg(&archive)
        .arg("-C")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        tar.status.success(),
        "{}",
        String::from_utf8_lossy(&tar.stderr)
    );
    assert_same_tree(&src.join("app"), &out.join("app"));
    // A file asked for as an archive is one too.
    let r = env.run(&["dump", "latest", "app/config.json", "--archive", "tar"]);
    fs::write(&archive, &r.stdout).unwrap();
    let listed = Command::new("tar")
        .arg("-tf")
        .arg(&archive)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&listed.stdout), "app/config.json\n");

    // Not there, or damaged: an error, never a panic.
    let r = env.run(&["dump", "latest", "app/missing"]);
    assert_eq!(code(&r), 1);
    assert!(stderr(&r).contains("not in the snapshot"), "{}", stderr(&r));
    damage_largest_pack(&env.repo);
    let mut failed = 0;
    let files = [
        "app/config.json",
        "app/data/a.txt",
        "app/data/big.bin",
        "app/exec.sh",
    ];
    for (snap, file) in ["latest", &first[..8]]
        .iter()
        .flat_map(|s| files.map(|f| (*s, f)))
    {
        let r = env.run(&["dump", snap, file]);
        assert!(!stderr(&r).contains("panicked"), "{}", stderr(&r));
        if code(&r) != 0 {
            failed += 1;
            assert!(stderr(&r).contains("strata:"), "{}", stderr(&r));
        }
    }
    assert!(failed >= 1, "no dump read the damaged pack");
    let r = env.run(&["dump", &first[..8], "app"]);
    assert_ne!(code(&r), 0);
    assert!(!stderr(&r).contains("panicked"), "{}", stderr(&r));
}

#[test]
fn list_filters_by_tag_kind_name_and_age() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    write(&src.join("a"), b"a");
    let dir = src.to_str().unwrap();
    let a = env.backup_args(&["--tag", "release", "--tag", "v1", dir]);
    let b = env.backup_args(&["--kind", "hourly", "--name", "cron", dir]);
    let c = env.backup_args(&["--kind", "hourly", "--tag", "release", dir]);
    let ids = |args: &[&str]| -> Vec<String> {
        let mut a = vec!["list"];
        a.extend_from_slice(args);
        env.json(&a)
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(ids(&[]), [a.as_str(), b.as_str(), c.as_str()]);
    assert_eq!(ids(&["--tag", "release"]), [a.as_str(), c.as_str()]);
    assert_eq!(ids(&["--tag", "release", "--tag", "v1"]), [a.as_str()]);
    assert_eq!(ids(&["--kind", "hourly"]), [b.as_str(), c.as_str()]);
    assert_eq!(ids(&["--name", "cron"]), [b.as_str()]);
    assert_eq!(ids(&["--latest", "2"]), [b.as_str(), c.as_str()]);
    assert_eq!(ids(&["--kind", "hourly", "--latest", "1"]), [c.as_str()]);
    assert!(ids(&["--kind", "weekly"]).is_empty());
    assert!(
        env.ok(&["list", "--kind", "weekly"])
            .contains("no snapshot matches (3 in all)")
    );
}

#[test]
fn to_original_puts_a_source_back_where_it_came_from() {
    let env = Env::new();
    env.init();
    let src = env.path("srv");
    build_app(&src);
    let other = env.path("elsewhere/notes");
    write(&other.join("n.txt"), b"notes");
    let id = env.backup(&[&src.join("app"), &other]);
    // The app is damaged; the notes move on.
    write(&src.join("app/config.json"), b"broken");
    fs::remove_file(src.join("app/data/a.txt")).unwrap();
    write(&other.join("n.txt"), b"newer notes");

    // Several sources: one at a time.
    let r = env.run(&["restore", &id[..12], "--to-original"]);
    assert_eq!(code(&r), 1);
    assert!(
        stderr(&r).contains("one source at a time"),
        "{}",
        stderr(&r)
    );
    // A TARGET too: refused.
    let r = env.run(&["restore", &id[..12], "x", "--to-original", "--path", "app"]);
    assert_eq!(code(&r), 2, "{}", stderr(&r));

    let out = env.ok(&["restore", &id[..12], "--to-original", "--path", "app"]);
    assert!(
        out.contains(&format!("app -> {}", src.join("app").display())),
        "{out}"
    );
    assert_eq!(
        fs::read(src.join("app/config.json")).unwrap(),
        b"{\"model\": \"small\"}\n"
    );
    assert!(src.join("app/data/a.txt").exists());
    assert_eq!(fs::read(other.join("n.txt")).unwrap(), b"newer notes");
    // What it replaced was saved first, as for any restore over existing files.
    let points = env.json(&["list", "--kind", "restore-point"]);
    assert_eq!(points.as_array().unwrap().len(), 1);

    // Into a TARGET, the output says where each name landed.
    let target = env.path("t");
    let out = env.ok(&[
        "restore",
        &id[..12],
        target.to_str().unwrap(),
        "--path",
        "notes",
    ]);
    assert!(
        out.contains(&format!("notes -> {}", target.join("notes").display())),
        "{out}"
    );
    assert_eq!(fs::read(target.join("notes/n.txt")).unwrap(), b"notes");
}

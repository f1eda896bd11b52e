//! A small repository written by format version 1 is committed under `tests/data/repo-v1`;
//! every later strata must still list, verify and restore it byte for byte.
//!
//! To write it again (only when the format version changes, into a new directory):
//! `cargo test --test format_v1 -- --ignored write_golden_repository`

mod common;
use common::*;
use std::fs;
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

const GOLDEN: &str = "tests/data/repo-v1";

/// The source tree the golden repository holds, made deterministically.
fn build_source(root: &Path) {
    write(&root.join("notes.txt"), &text(50_000, 11));
    write(&root.join("blob.bin"), &noise(300_000, 12));
    write(&root.join("empty"), b"");
    write(
        &root.join("nested/deeper/memory.json"),
        br#"{"facts":["strata keeps snapshots"]}"#,
    );
    let mut db = b"SQLite format 3\0".to_vec();
    db.extend_from_slice(&4096u16.to_be_bytes());
    db.resize(100, 1);
    db.extend(noise(5 * 4096 - 100, 13));
    write(&root.join("app.db"), &db);
    std::os::unix::fs::symlink("notes.txt", root.join("link")).unwrap();
    // Fixed modes and times, whatever the umask and clock of the machine.
    use std::os::unix::fs::PermissionsExt;
    for d in ["", "nested", "nested/deeper"] {
        fs::set_permissions(root.join(d), fs::Permissions::from_mode(0o755)).unwrap();
    }
    let t = UNIX_EPOCH + Duration::from_secs(1_790_000_000);
    for f in [
        "notes.txt",
        "blob.bin",
        "empty",
        "nested/deeper/memory.json",
        "app.db",
    ] {
        let file = fs::File::options().write(true).open(root.join(f)).unwrap();
        file.set_permissions(fs::Permissions::from_mode(0o644))
            .unwrap();
        file.set_times(fs::FileTimes::new().set_modified(t))
            .unwrap();
    }
}

#[test]
#[ignore = "writes the committed golden repository"]
fn write_golden_repository() {
    let env = Env::new();
    let src = env.path("golden");
    build_source(&src);
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join(GOLDEN);
    assert!(
        !repo.exists(),
        "{repo:?} exists: a new format version needs a new directory"
    );
    let out = env
        .cmd()
        .args(["init", "--repo", repo.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success());
    let out = env
        .cmd()
        .args([
            "backup",
            "--repo",
            repo.to_str().unwrap(),
            "--name",
            "golden",
            src.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn format_v1_repository_still_reads() {
    let env = Env::new();
    // Work on a copy: opening may write (crash recovery, lock file).
    let repo = env.path("repo-v1");
    copy_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join(GOLDEN), &repo);
    let r = |args: &[&str]| {
        let mut a = args.to_vec();
        a.extend(["--repo", repo.to_str().unwrap()]);
        env.ok(&a)
    };
    let list: serde_json::Value = serde_json::from_str(&r(&["list", "--json"])).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["name"], "golden");
    assert!(r(&["verify", "--read-data"]).contains("no problems found"));
    // Its sources come back with the kind version 1 did not record.
    let show: serde_json::Value = serde_json::from_str(&r(&["show", "golden", "--json"])).unwrap();
    assert_eq!(show["sources"][0]["kind"], "path");
    let out = env.path("out");
    // Its app.db has a SQLite header over random pages: the bytes restore exactly, and the
    // default integrity check says it is not a usable database.
    let checked = env.run(&[
        "restore",
        "golden",
        env.path("checked").to_str().unwrap(),
        "--repo",
        repo.to_str().unwrap(),
    ]);
    assert_eq!(code(&checked), 3);
    assert!(String::from_utf8_lossy(&checked.stdout).contains("quick_check FAILED"));
    r(&[
        "restore",
        "golden",
        out.to_str().unwrap(),
        "--no-check-sqlite",
    ]);
    let expected = env.path("expected/golden");
    build_source(&expected);
    assert_same_tree(&expected, &out.join("golden"));

    // Its index predates reference counts: a reader says so, the first writer records them,
    // and they then drive forget and gc.
    assert!(r(&["verify"]).contains("reference counts are not recorded yet"));
    r(&["backup", "--name", "after", expected.to_str().unwrap()]);
    let verified = r(&["verify", "--read-data"]);
    assert!(verified.contains("no problems found"), "{verified}");
    assert!(!verified.contains("not recorded"), "{verified}");
    r(&["forget", "golden"]);
    r(&["gc", "--max-unused", "0"]);
    assert!(r(&["verify", "--read-data"]).contains("no problems found"));
    let again = env.path("again");
    r(&[
        "restore",
        "after",
        again.to_str().unwrap(),
        "--no-check-sqlite",
    ]);
    assert_same_tree(&expected, &again.join("golden"));
}

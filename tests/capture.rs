//! Files and stores that change while they are read: retried, captured as one, or refused; and
//! the hooks run around a capture.

mod common;
use common::*;
use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// Rewrites one byte of `path` every millisecond until told to stop.
fn keep_changing(path: &Path, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    let path = path.to_path_buf();
    std::thread::spawn(move || {
        let mut f = fs::OpenOptions::new().write(true).open(&path).unwrap();
        let mut n = 0u64;
        while !stop.load(Ordering::SeqCst) {
            n += 1;
            f.seek(SeekFrom::Start((n * 4099) % (48 << 20))).unwrap();
            f.write_all(&[n as u8]).unwrap();
            std::thread::sleep(Duration::from_millis(1));
        }
    })
}

#[test]
fn a_file_that_keeps_changing_fails_the_snapshot_unless_allowed() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    fs::create_dir(&src).unwrap();
    write(&src.join("busy.bin"), &noise(48 << 20, 1));
    write(&src.join("calm.txt"), b"calm");
    let stop = Arc::new(AtomicBool::new(false));
    let writer = keep_changing(&src.join("busy.bin"), stop.clone());
    let s = src.display().to_string();

    let out = env.run(&["backup", "--capture-retries", "2", &s]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("busy.bin kept changing while it was read (3 reads)")
            && err.contains("--allow-unstable"),
        "{err}"
    );
    assert_eq!(env.json(&["list"]).as_array().unwrap().len(), 0);

    let out = env.run(&[
        "backup",
        "--json",
        "--capture-retries",
        "1",
        "--allow-unstable",
        &s,
    ]);
    stop.store(true, Ordering::SeqCst);
    writer.join().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("possibly inconsistent"));
    let list = env.json(&["list"]);
    let snap = &list[0];
    assert_eq!(snap["possibly_inconsistent"], true);
    let captures = snap["captures"].as_array().unwrap();
    assert_eq!(captures.len(), 1, "{captures:?}");
    assert_eq!(captures[0]["path"], "src/busy.bin");
    assert_eq!(captures[0]["kind"], "file");
    assert_eq!(captures[0]["consistent"], false);
    assert_eq!(captures[0]["attempts"], 2);
    let show = env.ok(&["show", "latest"]);
    assert!(
        show.contains("src/busy.bin (file): POSSIBLY INCONSISTENT"),
        "{show}"
    );
    // The quiet file is there as usual, and the next snapshot of quiet data is consistent.
    let id = env.backup(&[&src]);
    let shown = env.json(&["show", &id]);
    assert_eq!(shown["possibly_inconsistent"], false);
    assert!(entry_paths(&shown).contains(&"src/calm.txt".to_string()));
}

/// The value both files hold between writes, fixed width so that every write is one in-place
/// `pwrite` of the same length and a file is never empty or shorter.
fn body(v: u64) -> Vec<u8> {
    format!("{v:08}\n").repeat(5000).into_bytes()
}

/// Writes the same counter to `a` and, 20 ms later, to `b`, then rests, until told to stop.
/// Returns the counters whose gap between the two writes ran over 30 ms (the writer was held up
/// by the scheduler): for those, `a` one ahead of `b` was a quiet state of the store that a
/// capture may rightly hold.
fn write_pairs(
    dir: &Path,
    stop: Arc<AtomicBool>,
    n: Arc<AtomicU64>,
) -> std::thread::JoinHandle<Vec<u64>> {
    use std::os::unix::fs::FileExt;
    let dir = dir.to_path_buf();
    fs::write(dir.join("a.txt"), body(0)).unwrap();
    fs::write(dir.join("b.txt"), body(0)).unwrap();
    std::thread::spawn(move || {
        let open = |name: &str| {
            fs::OpenOptions::new()
                .write(true)
                .open(dir.join(name))
                .unwrap()
        };
        let (a, b) = (open("a.txt"), open("b.txt"));
        let mut held_up = vec![];
        while !stop.load(Ordering::SeqCst) {
            let v = n.fetch_add(1, Ordering::SeqCst) + 1;
            let started = std::time::Instant::now();
            a.write_all_at(&body(v), 0).unwrap();
            std::thread::sleep(Duration::from_millis(20));
            b.write_all_at(&body(v), 0).unwrap();
            if started.elapsed() > Duration::from_millis(30) {
                held_up.push(v);
            }
            std::thread::sleep(Duration::from_millis(120));
        }
        held_up
    })
}

#[test]
fn the_files_of_a_group_are_captured_from_one_moment() {
    let env = Env::new();
    env.init();
    let store = env.path("store");
    fs::create_dir(&store).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let n = Arc::new(AtomicU64::new(0));
    let writer = write_pairs(&store, stop.clone(), n.clone());
    std::thread::sleep(Duration::from_millis(100));
    let s = store.display().to_string();
    let mut ids = vec![];
    for _ in 0..12 {
        ids.push(env.backup_args(&["--group", &s, "--settle-ms", "50", &s]));
        std::thread::sleep(Duration::from_millis(37));
    }
    stop.store(true, Ordering::SeqCst);
    let held_up = writer.join().unwrap();
    let value = |text: &[u8]| -> u64 {
        let first = text.split(|&c| c == b'\n').next().unwrap();
        let v: u64 = std::str::from_utf8(first).unwrap().parse().unwrap();
        assert_eq!(text, body(v), "a file read torn");
        v
    };
    let mut seen = std::collections::BTreeSet::new();
    for (k, id) in ids.iter().enumerate() {
        let target = env.path(&format!("r{k}"));
        env.ok(&["restore", id, &target.display().to_string()]);
        let a = value(&fs::read(target.join("store/a.txt")).unwrap());
        let b = value(&fs::read(target.join("store/b.txt")).unwrap());
        assert!(
            a == b || (a == b + 1 && held_up.contains(&a)),
            "snapshot {k} holds a.txt at {a} and b.txt at {b}: not one moment of the store \
             (writer held up at {held_up:?})"
        );
        seen.insert(a);
        let shown = env.json(&["show", id]);
        let c = &shown["captures"][0];
        assert_eq!(
            (c["path"].as_str(), c["kind"].as_str()),
            (Some("store"), Some("group"))
        );
        assert_eq!(c["consistent"], true);
    }
    // The writer went on during the snapshots, and they followed it.
    assert!(
        seen.len() >= 4,
        "only {} distinct moments captured",
        seen.len()
    );
}

#[test]
fn a_group_must_be_among_the_paths_backed_up() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    fs::create_dir_all(src.join("inner")).unwrap();
    let out = env.run(&[
        "backup",
        "--group",
        &env.path("elsewhere").display().to_string(),
        &src.display().to_string(),
    ]);
    assert_eq!(code(&out), 1);
    assert!(
        stderr(&out).contains("not a directory among the paths"),
        "{}",
        stderr(&out)
    );
    // A directory inside a source is fine.
    env.backup_args(&[
        "--group",
        &src.join("inner").display().to_string(),
        &src.display().to_string(),
    ]);
}

#[test]
fn hooks_run_around_the_capture_and_after_it_fails() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    fs::create_dir(&src).unwrap();
    let s = src.display().to_string();
    let marker = env.path("after-ran");
    let after = format!("touch {}", marker.display());

    // The before hook runs first: what it writes is in the snapshot.
    let before = format!("echo paused > {}/state", s);
    let id = env.backup_args(&["--before", &before, "--after", &after, &s]);
    assert!(marker.exists());
    let shown = env.json(&["show", &id]);
    assert!(entry_paths(&shown).contains(&"src/state".to_string()));

    // A failing before hook fails the backup; the after hook still runs.
    fs::remove_file(&marker).unwrap();
    let out = env.run(&[
        "backup",
        "--before",
        "echo not now >&2; exit 7",
        "--after",
        &after,
        &s,
    ]);
    assert_eq!(code(&out), 1);
    assert!(
        stderr(&out).contains("before hook") && stderr(&out).contains("not now"),
        "{}",
        stderr(&out)
    );
    assert!(marker.exists());

    // A capture that fails runs the after hook too.
    fs::remove_file(&marker).unwrap();
    let out = env.run(&[
        "backup",
        "--after",
        &after,
        "--from-command",
        "exit 3=x",
        &s,
    ]);
    assert_eq!(code(&out), 1);
    assert!(marker.exists());

    // A before hook that hangs is killed at the timeout.
    let out = env.run(&["backup", "--before", "sleep 60", "--hook-timeout", "1", &s]);
    assert_eq!(code(&out), 1);
    assert!(
        stderr(&out).contains("did not finish within 1 s"),
        "{}",
        stderr(&out)
    );

    // A failing after hook: the snapshot is saved, and the exit code says something is wrong.
    let out = env.run(&["backup", "--after", "exit 5", &s]);
    assert_eq!(code(&out), 1);
    assert!(
        stderr(&out).contains("the snapshot is saved, but after hook"),
        "{}",
        stderr(&out)
    );
    assert_eq!(env.json(&["list"]).as_array().unwrap().len(), 2);
}

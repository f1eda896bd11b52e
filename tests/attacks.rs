//! Attacks on the repository's bookkeeping: an index behind the snapshot files, a lock taken
//! away from a running writer, gc beside a reader without the lock, and damaged index entries.
//! Each ends with the data still restorable, or with an error that names the repair, never
//! with a wrong byte or a panic.

mod common;

use common::{Env, code, noise, stderr, write};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}
const SIGSTOP: i32 = 19;
const SIGCONT: i32 = 18;

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string()
}

fn pack_count(repo: &Path) -> usize {
    common::packs(repo).len()
}

fn restore_matches(env: &Env, snap: &str, source: &Path, target: &str) {
    let target = env.path(target);
    env.ok(&["restore", snap, target.to_str().unwrap()]);
    let name = source.file_name().unwrap();
    common::assert_same_tree(source, &target.join(name));
}

#[test]
fn gc_refuses_an_index_behind_the_snapshot_files() {
    let env = Env::new();
    env.init();
    let src = env.path("app");
    write(&src.join("a.bin"), &noise(400_000, 1));
    env.backup(&[&src]);
    let old_index = env.path("index-before.redb");
    std::fs::copy(env.repo.join("index.redb"), &old_index).unwrap();
    write(&src.join("b.bin"), &noise(600_000, 2));
    let second = env.backup(&[&src]);
    // The index goes back to before the second backup: its snapshot file and packs remain.
    std::fs::copy(&old_index, env.repo.join("index.redb")).unwrap();
    let packs = pack_count(&env.repo);

    let verify = env.run(&["verify", "--read-data"]);
    assert_eq!(code(&verify), 3, "verify: {}", stderr(&verify));
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&verify.stdout),
        stderr(&verify)
    );
    assert!(said.contains("repair index"), "{said}");

    for args in [&["gc"][..], &["gc", "--dry-run"]] {
        let gc = env.run(args);
        assert_ne!(code(&gc), 0, "gc must refuse: {}", stderr(&gc));
        assert!(
            stderr(&gc).contains("strata repair index"),
            "{}",
            stderr(&gc)
        );
    }
    assert_eq!(pack_count(&env.repo), packs, "gc removed packs");

    env.ok(&["repair", "index"]);
    env.ok(&["gc"]);
    env.ok(&["verify", "--read-data"]);
    restore_matches(&env, &second, &src, "out");
}

#[test]
fn unlock_refuses_a_lock_whose_holder_runs() {
    let env = Env::new();
    env.init();
    let mut holder = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    let lock = env.repo.join("lock");
    let info = format!(
        "{{\"pid\":{},\"host\":\"{}\",\"time\":\"now\",\"command\":\"backup\"}}",
        holder.id(),
        hostname()
    );
    std::fs::write(&lock, &info).unwrap();
    let out = env.run(&["unlock"]);
    assert_ne!(code(&out), 0);
    assert!(stderr(&out).contains("still running"), "{}", stderr(&out));
    assert!(stderr(&out).contains("--force"), "{}", stderr(&out));
    assert!(lock.exists(), "a live holder's lock was removed");
    env.ok(&["unlock", "--force"]);
    assert!(!lock.exists());

    // A holder that is gone: no --force needed.
    std::fs::write(&lock, &info).unwrap();
    holder.kill().unwrap();
    holder.wait().unwrap();
    env.ok(&["unlock"]);
    assert!(!lock.exists());
}

#[test]
fn a_writer_whose_lock_and_index_were_taken_fails_and_gc_keeps_every_snapshot() {
    let env = Env::new();
    env.init();
    let src = env.path("app");
    write(&src.join("a.bin"), &noise(300_000, 3));
    let first = env.backup(&[&src]);
    let kept = env.path("kept");
    common::copy_dir(&src, &kept.join("app"));
    write(&src.join("b.bin"), &noise(2_000_000, 4));

    // The backup waits in its `before` hook, holding the lock with the index open.
    let flag = env.path("hook-started");
    let hook = format!("touch {}; sleep 4", flag.display());
    let backup = env
        .cmd()
        .args(["backup", "--before", &hook, src.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !flag.exists() {
        assert!(start.elapsed() < Duration::from_secs(30), "hook never ran");
        std::thread::sleep(Duration::from_millis(20));
    }
    let refused = env.run(&["unlock"]);
    assert_ne!(code(&refused), 0, "unlock took a running writer's lock");
    env.ok(&["unlock", "--force"]);
    env.ok(&["repair", "index"]);
    let out = backup.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(5),
        "the backup must fail as locked out, not save into a replaced index: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("run it again") || err.contains("run the command again"),
        "{err}"
    );
    let snaps = env.json(&["list"]);
    assert_eq!(snaps.as_array().unwrap().len(), 1, "{snaps}");

    env.ok(&["gc"]);
    env.ok(&["verify", "--read-data"]);
    let out = env.path("out");
    env.ok(&["restore", &first, out.to_str().unwrap()]);
    assert_eq!(
        common::file_tree(&out.join("app")),
        common::file_tree(&kept.join("app"))
    );
    // And the repository takes the next backup as usual.
    let next = env.backup(&[&src]);
    restore_matches(&env, &next, &src, "out2");
}

#[test]
fn gc_keeps_the_packs_a_paused_restore_reads() {
    let env = Env::new();
    env.init();
    let doomed = env.path("doomed");
    for i in 0..300 {
        write(
            &doomed.join(format!("f{i:03}.bin")),
            &noise(300_000, 100 + i),
        );
    }
    let snap = env.backup(&[&doomed]);
    let other = env.path("other");
    write(&other.join("x.bin"), &noise(100_000, 9));
    env.backup(&[&other]);

    let target = env.path("out");
    let mut restore = env
        .cmd()
        .args(["restore", &snap, target.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Paused once it has written its first file: its index view still names the snapshot.
    let start = Instant::now();
    let first_file = |t: &Path| {
        std::fs::read_dir(t.join("doomed"))
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .any(|e| e.file_name().to_string_lossy().starts_with('f'))
            })
            .unwrap_or(false)
    };
    while !first_file(&target) {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "restore wrote nothing"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    // SAFETY: kill has no memory effects; the pid is our child.
    assert_eq!(unsafe { libc_kill(restore.id() as i32, SIGSTOP) }, 0);
    assert!(
        restore.try_wait().unwrap().is_none(),
        "the restore finished before it could be paused"
    );
    let restored_before = std::fs::read_dir(target.join("doomed")).unwrap().count();
    assert!(restored_before < 300, "the restore was not paused mid-way");

    env.ok(&["delete", &snap]);
    let gc = env.json(&["gc"]);
    assert!(gc["packs_deleted"].as_u64().unwrap() > 0, "{gc}");
    assert!(gc["packs_deferred"].as_u64().unwrap() > 0, "{gc}");
    assert_eq!(gc["readers"], 1, "{gc}");
    let verify = env.run(&["verify", "--read-data"]);
    assert_eq!(code(&verify), 0, "verify beside gc: {}", stderr(&verify));

    // SAFETY: as above.
    assert_eq!(unsafe { libc_kill(restore.id() as i32, SIGCONT) }, 0);
    let status = restore.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(restore.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(status.success(), "restore beside gc failed: {err}");
    common::assert_same_tree(&doomed, &target.join("doomed"));

    // With the reader gone, the next gc deletes what the first kept.
    let before = pack_count(&env.repo);
    let again = env.json(&["gc"]);
    assert_eq!(again["packs_deferred"], 0, "{again}");
    assert!(again["unknown_pack_files"].as_u64().unwrap() > 0, "{again}");
    assert!(pack_count(&env.repo) < before);
    env.ok(&["verify", "--read-data"]);
}

#[test]
fn verify_checks_each_index_entry_against_its_pack_trailer() {
    let env = Env::new();
    env.init();
    let src = env.path("app");
    write(&src.join("a.bin"), &noise(500_000, 11));
    let snap = env.backup(&[&src]);
    // One index entry one byte short: the pack is sound, the index wrong.
    {
        use redb::ReadableTable;
        let index = strata::index::Index::open_write(&env.repo.join("index.redb")).unwrap();
        let txn = index.write().unwrap();
        {
            let mut blobs = txn.open_table(strata::index::BLOBS).unwrap();
            let (id, mut loc) = {
                let (k, v) = blobs.first().unwrap().expect("an indexed blob");
                (*k.value(), *v.value())
            };
            let raw_len = u32::from_le_bytes(loc[20..24].try_into().unwrap());
            loc[20..24].copy_from_slice(&(raw_len - 1).to_le_bytes());
            blobs.insert(&id, &loc).unwrap();
        }
        txn.commit().unwrap();
    }
    let verify = env.run(&["verify", "--read-data"]);
    assert_eq!(code(&verify), 3, "{}", stderr(&verify));
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&verify.stdout),
        stderr(&verify)
    );
    assert!(said.contains("trailer"), "{said}");
    assert!(said.contains("repair index"), "{said}");
    env.ok(&["repair", "index"]);
    env.ok(&["verify", "--read-data"]);
    restore_matches(&env, &snap, &src, "out");
}

/// Every byte flipped, one at a time, at a spread of places in the index: `verify
/// --read-data` reports it, or the restore that follows gives back every byte; never a panic.
#[test]
fn index_byte_flips_are_found_by_verify_or_harmless() {
    let env = Env::new();
    env.init();
    let src = env.path("app");
    for i in 0..8 {
        write(&src.join(format!("f{i}.bin")), &noise(150_000, 40 + i));
    }
    let snap = env.backup(&[&src]);
    write(&src.join("f0.bin"), &noise(150_000, 99));
    let snap2 = env.backup(&[&src]);
    let index = env.repo.join("index.redb");
    let pristine = std::fs::read(&index).unwrap();
    let len = pristine.len();
    let mut found = 0;
    let step = (len / 48).max(1);
    for (n, at) in (0..len).step_by(step).enumerate() {
        let mut bytes = pristine.clone();
        bytes[at] ^= 0x10;
        std::fs::write(&index, &bytes).unwrap();
        let verify = env.run(&["verify", "--read-data"]);
        let target = env.path(&format!("out{n}"));
        let restore = env.run(&["restore", &snap, target.to_str().unwrap()]);
        for out in [&verify, &restore] {
            let c = code(out);
            assert!(
                [0, 1, 3].contains(&c),
                "flip at {at}: exit {c}: {}",
                stderr(out)
            );
            assert!(
                !stderr(out).contains("internal error"),
                "flip at {at}: {}",
                stderr(out)
            );
        }
        if code(&verify) == 0 {
            assert_eq!(
                code(&restore),
                0,
                "flip at {at}: verify passed, restore failed: {}",
                stderr(&restore)
            );
            for i in 0..8 {
                let name = format!("f{i}.bin");
                let want = if i == 0 {
                    noise(150_000, 40)
                } else {
                    noise(150_000, 40 + i)
                };
                assert_eq!(
                    std::fs::read(target.join("app").join(&name)).unwrap(),
                    want,
                    "flip at {at}: verify passed and {name} came back wrong"
                );
            }
        } else {
            found += 1;
        }
        // The flip undone: the next one starts from a sound repository.
        std::fs::write(&index, &pristine).unwrap();
    }
    assert!(found > 0, "no flip at all was noticed");
    env.ok(&["verify", "--read-data"]);
    let _ = snap2;
}

#[test]
fn verify_paused_beside_gc_reports_no_false_damage() {
    let env = Env::new();
    env.init();
    let doomed = env.path("doomed");
    for i in 0..200 {
        write(
            &doomed.join(format!("f{i:03}.bin")),
            &noise(200_000, 500 + i),
        );
    }
    let snap = env.backup(&[&doomed]);
    let other = env.path("other");
    write(&other.join("x.bin"), &noise(100_000, 9));
    env.backup(&[&other]);

    let verify = env
        .cmd()
        .args(["verify", "--read-data", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Paused once it has announced itself as a reader, wherever it is in its work then.
    let readers = env.repo.join("readers");
    let start = Instant::now();
    while std::fs::read_dir(&readers).map_or(0, |d| d.count()) == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "verify never registered"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    std::thread::sleep(Duration::from_millis(30));
    // SAFETY: kill has no memory effects; the pid is our child.
    assert_eq!(unsafe { libc_kill(verify.id() as i32, SIGSTOP) }, 0);
    env.ok(&["delete", &snap]);
    let gc = env.json(&["gc"]);
    assert!(gc["packs_deleted"].as_u64().unwrap() > 0, "{gc}");
    // SAFETY: as above.
    assert_eq!(unsafe { libc_kill(verify.id() as i32, SIGCONT) }, 0);
    let out = verify.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "verify beside gc reported damage: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

//! forget, delete and gc: policies remove the right snapshots, gc reclaims their space, and every
//! remaining snapshot restores byte for byte, also after a gc killed at any moment.

mod common;
use common::*;
use std::path::Path;
use std::time::{Duration, Instant};

fn pack_bytes(repo: &Path) -> u64 {
    packs(repo)
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum()
}

/// Three hourly snapshots of a tree where each generation replaces most data; returns the
/// restored copy of each generation, oldest first.
fn history(env: &Env) -> Vec<std::path::PathBuf> {
    env.init();
    let src = env.path("src");
    write(&src.join("keep.txt"), &text(300_000, 7));
    let mut copies = Vec::new();
    for g in 0..3u64 {
        write(&src.join("data.bin"), &noise(3 << 20, 50 + g));
        write(&src.join("log.txt"), &text(200_000 * (g as usize + 1), 9));
        env.ok(&["backup", "--kind", "hourly", src.to_str().unwrap()]);
        // The reference is the restore made right away (it carries the recorded metadata).
        let copy = env.path(&format!("gen{g}"));
        env.ok(&["restore", "latest", copy.to_str().unwrap()]);
        assert_same_tree(&src, &copy.join("src"));
        copies.push(copy.join("src"));
    }
    copies
}

fn restore_and_compare(env: &Env, snap: &str, expected: &Path, tag: &str) {
    let out = env.path(&format!("restored-{tag}"));
    env.ok(&["restore", snap, out.to_str().unwrap()]);
    assert_same_tree(expected, &out.join("src"));
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn forget_keep_last_then_gc_reclaims_and_keeps_the_rest_intact() {
    let env = Env::new();
    let gens = history(&env);
    let before = pack_bytes(&env.repo);

    // A dry run changes nothing.
    let dry = env.json(&["forget", "--keep-last", "1", "--dry-run"]);
    assert_eq!(dry.as_array().unwrap().len(), 3);
    assert_eq!(env.json(&["list"]).as_array().unwrap().len(), 3);
    let gc_dry = env.json(&["gc", "--dry-run"]);
    assert_eq!(pack_bytes(&env.repo), before);
    assert!(gc_dry["bytes_reclaimed"].as_u64().unwrap() == 0);

    let decisions = env.json(&["forget", "--keep-last", "1"]);
    let kept: Vec<bool> = decisions
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["keep"].as_bool().unwrap())
        .collect();
    assert_eq!(kept, vec![true, false, false]); // newest first
    assert_eq!(decisions[0]["reasons"][0], "last 1");
    assert_eq!(env.json(&["list"]).as_array().unwrap().len(), 1);

    // verify's recount sees what the forgotten snapshots left behind, and gc's plan matches it.
    let counted = env.json(&["verify"]);
    let leaks = counted["unreferenced_blobs"].as_u64().unwrap();
    assert!(leaks > 0);
    let report = env.json(&["gc"]);
    assert_eq!(report["dead_blobs"].as_u64().unwrap(), leaks);
    assert_eq!(env.json(&["verify"])["unreferenced_blobs"], 0);
    let after = pack_bytes(&env.repo);
    assert!(report["dead_blobs"].as_u64().unwrap() > 0);
    assert_eq!(report["bytes_after"].as_u64().unwrap(), after);
    // Two of three generations of 3 MiB of incompressible data are gone.
    assert!(
        after + (5 << 20) < before,
        "packs {before} -> {after} bytes"
    );
    env.ok(&["verify", "--read-data"]);
    restore_and_compare(&env, "latest", &gens[2], "latest");

    // A second gc finds nothing more to do, and the next backup works.
    let again = env.json(&["gc"]);
    assert_eq!(again["bytes_reclaimed"].as_u64().unwrap(), 0);
    assert_eq!(again["dead_blobs"].as_u64().unwrap(), 0);
    env.ok(&[
        "backup",
        "--kind",
        "hourly",
        env.path("src").to_str().unwrap(),
    ]);
    env.ok(&["verify", "--read-data"]);
}

#[test]
fn manual_snapshots_survive_policies_and_go_when_named() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    write(&src.join("a.txt"), &text(10_000, 1));
    env.ok(&["backup", "--name", "precious", src.to_str().unwrap()]); // kind manual
    write(&src.join("a.txt"), &text(10_000, 2));
    env.ok(&["backup", "--kind", "hourly", src.to_str().unwrap()]);
    write(&src.join("a.txt"), &text(10_000, 3));
    env.ok(&["backup", "--kind", "hourly", src.to_str().unwrap()]);

    env.ok(&["forget", "--keep-last", "1"]);
    let names: Vec<String> = env
        .json(&["list"])
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["kind"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, vec!["manual", "hourly"]);

    env.ok(&["delete", "precious"]);
    assert_eq!(env.json(&["list"]).as_array().unwrap().len(), 1);
    let missing = env.run(&["delete", "precious"]);
    assert_ne!(code(&missing), 0);
    env.ok(&["gc"]);
    env.ok(&["verify", "--read-data"]);

    let empty = env.run(&["forget"]);
    assert_ne!(code(&empty), 0);
    assert!(stderr(&empty).contains("nothing to forget"));
    let bad = env.run(&["forget", "--keep-within", "soon"]);
    assert_ne!(code(&bad), 0);
    let bad = env.run(&["gc", "--max-unused", "200%"]);
    assert_ne!(code(&bad), 0);
}

#[test]
fn gc_removes_pack_files_the_index_does_not_know() {
    let env = Env::new();
    let _ = history(&env);
    let stray = env.repo.join("packs/ff/ff00.pack");
    std::fs::create_dir_all(stray.parent().unwrap()).unwrap();
    std::fs::write(&stray, b"left by an interrupted backup").unwrap();
    let report = env.json(&["gc"]);
    assert_eq!(report["unknown_pack_files"], 1);
    assert!(!stray.exists());
    env.ok(&["verify", "--read-data"]);
}

#[test]
fn killed_gc_leaves_every_snapshot_restorable() {
    let template = Env::new();
    let gens = history(&template);
    template.ok(&["forget", "--keep-last", "2"]);
    // How long a gc takes here: kill moments are spread over 1.5 times that.
    let timing = Env::new();
    copy_dir(&template.repo, &timing.repo);
    let started = std::time::Instant::now();
    timing.ok(&["gc", "--max-unused", "0%"]);
    let span = started.elapsed();
    let wanted = std::env::var("STRATA_CRASH_POINTS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .map_or(40, |n| n / 2);
    let (mut killed, mut tries) = (0, 0);
    while killed < wanted && tries < wanted * 5 {
        let delay = span.mul_f64(1.5 * ((tries * 37) % 64) as f64 / 64.0);
        tries += 1;
        let env = Env::new();
        copy_dir(&template.repo, &env.repo);
        if run_and_kill_after(&env, &["gc", "--max-unused", "0%"], delay) {
            killed += 1;
        }

        let v = env.run(&["verify", "--read-data"]);
        assert_eq!(
            code(&v),
            0,
            "after kill at {delay:?}: {}",
            String::from_utf8_lossy(&v.stdout)
        );
        restore_and_compare(&env, "latest", &gens[2], "latest");
        let list = env.json(&["list"]);
        let older = &list[0]["id"].as_str().unwrap()[..8];
        restore_and_compare(&env, older, &gens[1], "older");
        // The next gc finishes the job.
        env.ok(&["gc", "--max-unused", "0%"]);
        env.ok(&["verify", "--read-data"]);
        restore_and_compare(&env, older, &gens[1], "after");
    }
    eprintln!("gc: {killed} killed, {tries} tries");
    assert!(
        killed >= wanted,
        "only {killed} of {tries} gc runs were killed"
    );
}

#[test]
fn killed_forget_leaves_snapshots_whole_or_gone() {
    let template = Env::new();
    let gens = history(&template);
    let mut killed = 0;
    for delay_ms in (0..10u64).map(|i| i * 2) {
        let env = Env::new();
        copy_dir(&template.repo, &env.repo);
        if run_and_kill_after(
            &env,
            &["forget", "--keep-last", "1"],
            Duration::from_millis(delay_ms),
        ) {
            killed += 1;
        }
        // Whatever is still listed restores; the newest always is.
        env.ok(&["verify", "--read-data"]);
        let list = env.json(&["list"]);
        let n = list.as_array().unwrap().len();
        assert!((1..=3).contains(&n));
        for (i, s) in list.as_array().unwrap().iter().enumerate() {
            let generation = &gens[3 - n + i];
            restore_and_compare(&env, &s["id"].as_str().unwrap()[..12], generation, "listed");
        }
        env.ok(&["forget", "--keep-last", "1"]);
        env.ok(&["gc"]);
        env.ok(&["verify", "--read-data"]);
        restore_and_compare(&env, "latest", &gens[2], "final");
    }
    assert!(killed >= 1, "no forget was actually killed");
}

/// A small deterministic generator for the random model below.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[test]
fn random_histories_of_backup_forget_delete_and_gc() {
    for seed in 1..=3u64 {
        let env = Env::new();
        env.init();
        let src = env.path("src");
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ seed);
        // Snapshot id -> its restored copy, taken right after the backup.
        let mut expected: Vec<(String, std::path::PathBuf)> = Vec::new();
        write(&src.join("base.txt"), &text(100_000, seed));
        for step in 0..14 {
            let op = if expected.is_empty() { 0 } else { rng.below(6) };
            match op {
                0..=2 => {
                    // Change the tree a little or a lot, then back it up.
                    for _ in 0..1 + rng.below(3) {
                        let name = format!("f{}.bin", rng.below(5));
                        match rng.below(4) {
                            0 => {
                                let _ = std::fs::remove_file(src.join(&name));
                            }
                            1 => write(
                                &src.join(&name),
                                &text(1 + rng.below(400_000) as usize, rng.next()),
                            ),
                            _ => write(
                                &src.join(&name),
                                &noise(1 + rng.below(1 << 20) as usize, rng.next()),
                            ),
                        }
                    }
                    let id = env.backup(&[&src]);
                    let copy = env.path(&format!("s{seed}-{step}"));
                    env.ok(&["restore", &id[..12], copy.to_str().unwrap()]);
                    assert_same_tree(&src, &copy.join("src"));
                    expected.push((id, copy.join("src")));
                }
                3 => {
                    let keep = 1 + rng.below(3);
                    env.ok(&[
                        "forget",
                        "--keep-last",
                        &keep.to_string(),
                        "--kind",
                        "manual",
                    ]);
                    // Manual snapshots are never removed by a policy.
                    assert_eq!(
                        env.json(&["list"]).as_array().unwrap().len(),
                        expected.len()
                    );
                    let victim = rng.below(expected.len() as u64) as usize;
                    let (id, _) = expected.remove(victim);
                    env.ok(&["forget", &id[..12]]);
                }
                4 => {
                    let victim = rng.below(expected.len() as u64) as usize;
                    let (id, _) = expected.remove(victim);
                    env.ok(&["delete", &id[..12]]);
                }
                _ => {
                    let mu = [0.0, 0.1, 0.5][rng.below(3) as usize];
                    let r = env.json(&["gc", "--max-unused", &mu.to_string()]);
                    let frames = r["frame_bytes_after"].as_u64().unwrap() as f64;
                    let live = r["live_bytes_after"].as_u64().unwrap() as f64;
                    assert!(
                        frames <= live * (1.0 + mu) + 64.0,
                        "seed {seed} step {step}: {frames} frame bytes for {live} live (max unused {mu})"
                    );
                }
            }
            let listed: Vec<String> = env
                .json(&["list"])
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s["id"].as_str().unwrap().to_string())
                .collect();
            let mut want: Vec<String> = expected.iter().map(|(id, _)| id.clone()).collect();
            let mut got = listed.clone();
            want.sort();
            got.sort();
            assert_eq!(got, want, "seed {seed} step {step}: snapshot list");
            env.ok(&["verify", "--read-data"]);
            for (id, copy) in &expected {
                let out = env.path("check");
                env.ok(&["restore", &id[..12], out.to_str().unwrap()]);
                assert_same_tree(copy, &out.join("src"));
                std::fs::remove_dir_all(&out).unwrap();
            }
        }
        // A final gc leaves packs within the bound and every snapshot intact.
        let r = env.json(&["gc", "--max-unused", "0"]);
        let (frames, live) = (
            r["frame_bytes_after"].as_u64().unwrap(),
            r["live_bytes_after"].as_u64().unwrap(),
        );
        assert!(frames <= live + 64, "{frames} frame bytes for {live} live");
        env.ok(&["verify", "--read-data"]);
    }
}

#[test]
fn stored_policies_drive_forget() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    for (i, kind) in ["manual", "hourly", "hourly", "hourly", "daily", "daily"]
        .iter()
        .enumerate()
    {
        write(&src.join("a.txt"), &text(5_000, i as u64));
        env.ok(&["backup", "--kind", kind, src.to_str().unwrap()]);
    }
    let none = env.run(&["forget"]);
    assert_ne!(code(&none), 0);
    assert!(stderr(&none).contains("config set"));

    env.ok(&["config", "set", "retention.hourly", "keep-last=1"]);
    for bad in [
        &["config", "set", "retention.manual", "keep-last=1"][..],
        &["config", "set", "retention.hourly", "keep-sometimes=1"],
        &["config", "set", "colour", "blue"],
        &["config", "set", "max-snapshots", "0"],
        &["config", "unset", "retention.daily"],
    ] {
        assert_ne!(code(&env.run(bad)), 0, "{bad:?}");
    }
    let shown = env.json(&["config", "show"]);
    assert_eq!(shown["retention"]["policies"]["hourly"]["keep_last"], 1);
    assert!(
        env.ok(&["config", "show"])
            .contains("retention.hourly: keep-last=1")
    );

    let kinds = |env: &Env| -> Vec<String> {
        env.json(&["list"])
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["kind"].as_str().unwrap().to_string())
            .collect()
    };
    env.ok(&["forget"]);
    // Two older hourly snapshots go; daily (no policy) and manual stay.
    assert_eq!(kinds(&env), vec!["manual", "hourly", "daily", "daily"]);

    env.ok(&["config", "set", "max-snapshots", "2"]);
    env.ok(&["forget"]);
    assert_eq!(kinds(&env), vec!["manual", "daily", "daily"]);
    env.ok(&["config", "unset", "retention.hourly"]);
    env.ok(&["config", "unset", "max-snapshots"]);
    assert_ne!(code(&env.run(&["forget"])), 0);
    env.ok(&["forget", "--max-snapshots", "1"]);
    assert_eq!(kinds(&env), vec!["manual", "daily"]);
    env.ok(&["gc"]);
    env.ok(&["verify", "--read-data"]);
}

/// restic #2715 / kopia #1949: a backup paused (SIGSTOP) while gc runs, then resumed. The paused
/// backup holds the lock, so gc refuses rather than deleting what the backup will reference.
#[test]
fn gc_while_a_backup_is_paused() {
    let env = Env::new();
    let _ = history(&env);
    env.ok(&["forget", "--keep-last", "1"]);
    let src = env.path("src");
    for i in 0..4u64 {
        write(&src.join(format!("more{i}.bin")), &noise(4 << 20, 70 + i));
    }
    let mut backup = env
        .cmd()
        .args(["backup", "--kind", "hourly", src.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Let it take the lock, then stop it.
    let lock = env.repo.join("lock");
    let start = Instant::now();
    while !lock.exists() && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(1));
    }
    let pid = backup.id() as i32;
    // SAFETY: signals to our own child.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let gc = env.run(&["gc", "--max-unused", "0%"]);
    if lock.exists() {
        assert_ne!(code(&gc), 0, "gc ran beside a paused backup");
        assert!(stderr(&gc).contains("lock"), "{}", stderr(&gc));
    }
    unsafe { libc::kill(pid, libc::SIGCONT) };
    assert!(backup.wait().unwrap().success());
    env.ok(&["gc", "--max-unused", "0%"]);
    env.ok(&["verify", "--read-data"]);
    let out = env.path("after");
    env.ok(&["restore", "latest", out.to_str().unwrap()]);
    assert_same_tree(&src, &out.join("src"));
}

/// Changes the index of a repository (no process may have it open) through `f`.
fn edit_index(repo: &Path, f: impl FnOnce(&redb::WriteTransaction)) {
    let db = redb::Database::open(repo.join("index.redb")).unwrap();
    let txn = db.begin_write().unwrap();
    f(&txn);
    txn.commit().unwrap();
}

/// Any stored reference count (chunk or pack use) that differs from the snapshots fails verify,
/// naming the fix, and `repair index` counts them again.
#[test]
fn verify_recounts_references_and_repair_restores_them() {
    use redb::{ReadableDatabase, ReadableTable};
    use strata::index::{PACK_USE, REFS};
    let env = Env::new();
    let copies = history(&env);
    // Backups leave their references to the next forget or gc, which counts them.
    assert_eq!(env.json(&["verify"])["uncounted_snapshots"], 3);
    // The oldest snapshot goes (its data stays until gc): unreferenced chunks exist.
    env.ok(&["forget", "--keep-last", "2"]);
    assert_eq!(env.json(&["verify"])["uncounted_snapshots"], 0);
    assert!(
        env.ok(&["verify", "--read-data"])
            .contains("no problems found")
    );
    // The counts as the backups and forget left them, for comparing with what repair writes.
    let counts = || -> Vec<([u8; 32], u32)> {
        let db = redb::Database::open(env.repo.join("index.redb")).unwrap();
        let txn = db.begin_read().unwrap();
        let t = txn.open_table(REFS).unwrap();
        t.iter()
            .unwrap()
            .map(|r| {
                let (k, v) = r.unwrap();
                (*k.value(), v.value())
            })
            .collect()
    };
    let before = counts();
    assert!(before.len() > 10);
    // Some blob is referenced more than once (keep.txt is in every snapshot).
    assert!(before.iter().any(|(_, c)| *c >= 2));

    type Tamper = fn(&redb::WriteTransaction, &[u8; 32]);
    let tampers: [(&str, Tamper); 4] = [
        ("one count too high", |txn, id| {
            let mut t = txn.open_table(REFS).unwrap();
            let c = t.get(id).unwrap().unwrap().value();
            t.insert(id, c + 1).unwrap();
        }),
        ("a live chunk's count lost", |txn, id| {
            txn.open_table(REFS).unwrap().remove(id).unwrap();
        }),
        ("a count for an unreferenced chunk", |txn, _| {
            let mut refs = txn.open_table(REFS).unwrap();
            let blobs = txn.open_table(strata::index::BLOBS).unwrap();
            let free = blobs
                .iter()
                .unwrap()
                .map(|r| *r.unwrap().0.value())
                .find(|k| refs.get(k).unwrap().is_none());
            // history() leaves garbage (replaced data), so such a chunk exists.
            refs.insert(&free.expect("an unreferenced chunk"), 1)
                .unwrap();
        }),
        ("a pack's live count", |txn, _| {
            let mut t = txn.open_table(PACK_USE).unwrap();
            let (k, mut v) = {
                let first = t.iter().unwrap().next().unwrap().unwrap();
                (first.0.value(), *first.1.value())
            };
            v[4] ^= 1;
            t.insert(k, &v).unwrap();
        }),
    ];
    for (what, tamper) in tampers {
        let id = before[before.len() / 2].0;
        edit_index(&env.repo, |txn| tamper(txn, &id));
        let r = env.run(&["verify"]);
        let out = String::from_utf8_lossy(&r.stdout);
        assert_eq!(code(&r), 3, "{what}: {out}");
        assert!(
            out.contains("run `strata repair index`")
                && (out.contains("reference counts") || out.contains("usage record")),
            "{what}: {out}"
        );
        env.ok(&["repair", "index"]);
        assert_eq!(counts(), before, "{what}: repair counts as the backups did");
        assert!(env.ok(&["verify"]).contains("no problems found"), "{what}");
    }
    // And the repaired counts drive gc correctly.
    env.ok(&["forget", "--keep-last", "1"]);
    env.ok(&["gc", "--max-unused", "0"]);
    assert!(
        env.ok(&["verify", "--read-data"])
            .contains("no problems found")
    );
    restore_and_compare(&env, "latest", &copies[2], "after");
}

#[test]
fn forget_with_a_tag_touches_only_the_tagged_snapshots() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    write(&src.join("f"), b"x");
    let s = src.to_str().unwrap();
    for tag in ["job=a", "job=b", "job=a", "job=b", "job=a"] {
        env.backup_args(&["--kind", "hourly", "--tag", tag, s]);
    }
    let out = env.json(&["forget", "--tag", "job=a", "--keep-last", "1"]);
    let removed: Vec<&serde_json::Value> = out
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["keep"] == false)
        .collect();
    assert_eq!(removed.len(), 2, "{out}");
    let left = env.json(&["list"]);
    let tags: Vec<String> = left
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["tags"][0].as_str().unwrap().to_string())
        .collect();
    assert_eq!(tags, ["job=b", "job=b", "job=a"], "{left}");
    // --max-snapshots counts only the tagged ones too.
    env.json(&[
        "forget",
        "--tag",
        "job=b",
        "--keep-within",
        "100y",
        "--max-snapshots",
        "1",
    ]);
    assert_eq!(env.json(&["list"]).as_array().unwrap().len(), 2);
    // A tag limits a policy given on the command line, not the stored one.
    let out = env.run(&["forget", "--tag", "job=a"]);
    assert_ne!(code(&out), 0);
}

/// The file cache and chunk-digest records of a file no snapshot holds any more go with gc;
/// those of a file still backed up stay and keep serving the next backup.
#[test]
fn gc_drops_the_file_cache_of_file_versions_no_snapshot_holds() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    write(&src.join("kept.bin"), &noise(5 << 20, 1));
    write(&src.join("gone.bin"), &noise(5 << 20, 2));
    // Past strata's window for files written in the same instant, which it does not cache.
    std::thread::sleep(Duration::from_millis(300));
    let records = || files_below(&env.repo.join("page-sums")).len();
    env.ok(&["backup", "--kind", "hourly", src.to_str().unwrap()]);
    assert_eq!(records(), 2);
    std::fs::remove_file(src.join("gone.bin")).unwrap();
    env.ok(&["backup", "--kind", "hourly", src.to_str().unwrap()]);
    // Still held by the first snapshot: nothing to drop yet.
    let report = env.json(&["gc"]);
    assert_eq!(report["file_entries_dropped"], 0);
    assert_eq!(records(), 2);

    env.ok(&["forget", "--keep-last", "1"]);
    // A dry run counts what gc then drops, and drops nothing.
    let dry = env.json(&["gc", "--dry-run"]);
    assert_eq!(dry["file_entries_dropped"], 1);
    assert_eq!(dry["page_sums_removed"], 1);
    assert_eq!(records(), 2);
    let report = env.json(&["gc"]);
    assert_eq!(report["file_entries_dropped"], 1);
    assert_eq!(report["page_sums_removed"], 1);
    assert_eq!(records(), 1);
    // kept.bin's entry stayed: a backup of the unchanged tree reads nothing.
    let out = env.json(&["backup", "--kind", "hourly", src.to_str().unwrap()]);
    assert_eq!(out["stats"]["bytes_read"], 0);
    // A second gc finds nothing more.
    let report = env.json(&["gc"]);
    assert_eq!(report["file_entries_dropped"], 0);
    assert_eq!(report["page_sums_removed"], 0);
    let restored = env.path("restored");
    env.ok(&["restore", "latest", restored.to_str().unwrap()]);
    assert_same_tree(&src, &restored.join("src"));
}

#[test]
fn restore_points_rotate_under_a_policy_for_their_kind_and_manual_snapshots_never() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    write(&src.join("a"), b"a");
    let dir = src.to_str().unwrap();
    let manual: Vec<String> = (0..3).map(|_| env.backup(&[&src])).collect();
    let points: Vec<String> = (0..3)
        .map(|_| env.backup_args(&["--kind", "restore-point", dir]))
        .collect();
    let count = |kind: &str| {
        env.json(&["list", "--kind", kind])
            .as_array()
            .unwrap()
            .len()
    };
    // A policy for no kind in particular leaves them all, and says why.
    let out = env.ok(&["forget", "--keep-last", "1"]);
    assert!(
        out.contains("nothing to remove: 6 of 6 snapshots are manual ones or restore points"),
        "{out}"
    );
    assert!(out.contains("--kind restore-point"), "{out}");
    assert!(!out.contains("strata gc"), "{out}");
    assert_eq!((count("manual"), count("restore-point")), (3, 3));
    // Named by kind, restore points rotate, and nothing else does.
    let out = env.ok(&["forget", "--kind", "restore-point", "--keep-last", "1"]);
    assert!(out.contains("removed 2 of 6 snapshots"), "{out}");
    let left = env.json(&["list", "--kind", "restore-point"]);
    assert_eq!(left[0]["id"], points[2]);
    assert_eq!(count("manual"), 3);
    // Manual snapshots go only by name, whatever the policy.
    let out = env.ok(&["forget", "--kind", "manual", "--keep-last", "1"]);
    assert!(out.contains("nothing to remove"), "{out}");
    assert_eq!(count("manual"), 3);
    env.ok(&["forget", &manual[0][..12]]);
    let left: Vec<String> = env
        .json(&["list", "--kind", "manual"])
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(left, manual[1..]);
    assert_eq!(count("restore-point"), 1);
}

/// Bytes of a repository's files (packs, manifests, index, config...).
fn repo_bytes(dir: &std::path::Path) -> u64 {
    files_below(dir)
        .iter()
        .map(|f| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0))
        .sum()
}

#[test]
fn gc_gives_back_the_index_space_of_what_it_removed() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    let mut ids = Vec::new();
    for i in 0..6 {
        // Each snapshot's own data: many small chunks, so the index holds many entries.
        let _ = std::fs::remove_dir_all(&src);
        for f in 0..40 {
            write(&src.join(format!("f{f}.txt")), &text(60_000, i * 100 + f));
        }
        ids.push(env.backup(&[&src]));
    }
    let index = env.repo.join("index.redb");
    let grown = std::fs::metadata(&index).unwrap().len();
    for id in &ids[..5] {
        env.ok(&["forget", &id[..12]]);
    }
    let out = env.ok(&["gc"]);
    assert!(out.contains("(compacted)"), "{out} (index {grown} bytes)");
    let after = std::fs::metadata(&index).unwrap().len();
    assert!(after * 2 < grown, "index {grown} -> {after} bytes");
    // Everything still there and whole.
    env.ok(&["verify", "--read-data"]);
    let out = env.path("out");
    env.ok(&["restore", &ids[5][..12], out.to_str().unwrap()]);
    assert_same_tree(&src, &out.join("src"));
    // Against a repository that only ever held the survivor: within 5%.
    let fresh = Env::new();
    fresh.init();
    fresh.backup(&[&src]);
    let (kept, alone) = (repo_bytes(&env.repo), repo_bytes(&fresh.repo));
    assert!(
        kept as f64 <= alone as f64 * 1.05,
        "{kept} bytes after gc, {alone} for the survivor alone"
    );
    // A second gc finds nothing worth compacting.
    assert!(!env.ok(&["gc"]).contains("(compacted)"));
}

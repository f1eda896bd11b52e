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

    let report = env.json(&["gc"]);
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
    let mut killed = 0;
    let mut points = 0;
    for delay_ms in [0u64, 2, 4, 7, 10, 14, 18, 25, 35, 50, 70, 100] {
        let env = Env::new();
        copy_dir(&template.repo, &env.repo);
        let mut child = env
            .cmd()
            .args(["gc", "--max-unused", "0%"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(delay_ms) {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL
            killed += 1;
        }
        child.wait().unwrap();
        points += 1;

        let v = env.run(&["verify", "--read-data"]);
        assert_eq!(
            code(&v),
            0,
            "after kill at {delay_ms} ms: {}",
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
    assert_eq!(points, 12);
    assert!(killed >= 3, "only {killed} gc runs were actually killed");
}

#[test]
fn backup_and_gc_together_never_lose_a_chunk() {
    let env = Env::new();
    let _ = history(&env);
    let src = env.path("src");
    for round in 0..4u64 {
        env.ok(&["forget", "--keep-last", "1"]);
        write(&src.join("data.bin"), &noise(3 << 20, 900 + round));
        let piped = |args: &[&str]| {
            env.cmd()
                .args(args)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        };
        // Started together; which one gets the lock first varies.
        let (first, second) = if round % 2 == 0 {
            (
                piped(&["backup", "--kind", "hourly", src.to_str().unwrap()]),
                piped(&["gc", "--max-unused", "0%"]),
            )
        } else {
            (
                piped(&["gc", "--max-unused", "0%"]),
                piped(&["backup", "--kind", "hourly", src.to_str().unwrap()]),
            )
        };
        for child in [first, second] {
            let out = child.wait_with_output().unwrap();
            // Each either ran, or refused because the other held the lock.
            assert!(
                out.status.success() || stderr(&out).contains("lock"),
                "{}",
                stderr(&out)
            );
        }
        env.ok(&["verify", "--read-data"]);
        let out = env.path(&format!("r{round}"));
        env.ok(&["restore", "latest", out.to_str().unwrap()]);
    }
}

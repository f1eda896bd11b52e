//! `strata copy`: snapshots replicated into another repository restore byte for byte, a second
//! copy sends nothing, encrypted repositories copy when they share a key (and are refused when
//! they do not), and a copy killed at any moment leaves the destination valid.

mod common;
use common::*;
use std::path::Path;
use std::time::Duration;

fn copy_json(env: &Env, from: &Path, to: &Path, extra: &[&str]) -> serde_json::Value {
    let mut args = vec![
        "copy",
        "--from",
        from.to_str().unwrap(),
        "--to",
        to.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    env.json(&args)
}

/// Three generations of a tree in the source repository: a large file changing in places, a
/// growing log, a file that appears. Returns the restored reference copy of each.
fn history(env: &Env, src: &Path) -> Vec<(String, std::path::PathBuf)> {
    let data = env.path("data");
    let mut big = noise(6 << 20, 3);
    let mut out = Vec::new();
    for g in 0..3u64 {
        big[(g as usize + 1) * 1_000_000..(g as usize + 1) * 1_000_000 + 5000]
            .copy_from_slice(&noise(5000, 100 + g));
        write(&data.join("big.bin"), &big);
        write(&data.join("log.txt"), &text(100_000 * (g as usize + 1), 5));
        if g == 2 {
            write(&data.join("sub/new.json"), b"{\"new\": true}");
        }
        let id = env.backup_args(&[
            "--repo",
            src.to_str().unwrap(),
            "--name",
            &format!("gen{g}"),
            data.to_str().unwrap(),
        ]);
        let copy = env.path(&format!("ref{g}"));
        env.ok(&[
            "restore",
            "--repo",
            src.to_str().unwrap(),
            &id,
            copy.to_str().unwrap(),
        ]);
        out.push((id, copy.join("data")));
    }
    out
}

/// Creates the replica `dst` of `src`: encrypted with the source's key in the encrypted suite.
fn init_replica(env: &Env, src: &Path, dst: &Path) {
    let dst = dst.to_str().unwrap();
    if encrypted_suite() {
        env.ok(&[
            "init",
            "--repo",
            dst,
            "--encrypt",
            "--same-key-as",
            src.to_str().unwrap(),
        ]);
    } else {
        env.ok(&["init", "--repo", dst]);
    }
}

fn assert_restores(env: &Env, repo: &Path, refs: &[(String, std::path::PathBuf)]) {
    for (id, expected) in refs {
        let out = env.path(&format!("check-{}", &id[..8]));
        env.ok(&[
            "restore",
            "--repo",
            repo.to_str().unwrap(),
            id,
            out.to_str().unwrap(),
        ]);
        assert_same_tree(expected, &out.join("data"));
        std::fs::remove_dir_all(&out).unwrap();
    }
}

#[test]
fn copies_incrementally_and_restores_byte_for_byte() {
    let env = Env::new();
    env.init();
    let src = env.repo.clone();
    let refs = history(&env, &src);
    let dst = env.path("replica");
    init_replica(&env, &src, &dst);
    // The first generation alone, then everything: the second copy sends only what changed.
    let first = copy_json(&env, &src, &dst, &["gen0"]);
    assert_eq!(first["copied"].as_array().unwrap().len(), 1);
    let rest = copy_json(&env, &src, &dst, &[]);
    assert_eq!(rest["copied"].as_array().unwrap().len(), 2, "{rest}");
    assert_eq!(rest["already_there"], 1);
    let first_bytes = first["bytes_copied"].as_u64().unwrap();
    let rest_bytes = rest["bytes_copied"].as_u64().unwrap();
    assert!(
        rest_bytes < first_bytes / 2,
        "two changed generations copied {rest_bytes} bytes after {first_bytes} for the first"
    );
    // A second copy of everything transfers nothing.
    let again = copy_json(&env, &src, &dst, &[]);
    assert_eq!(again["copied"].as_array().unwrap().len(), 0);
    assert_eq!(again["blobs_copied"], 0);
    assert_eq!(again["packs_written"], 0);
    env.ok(&["verify", "--repo", dst.to_str().unwrap(), "--read-data"]);
    assert_restores(&env, &dst, &refs);
    // Snapshot ids are kept, and the replica's own retention and gc work on copied data.
    let listed = env.json(&["list", "--repo", dst.to_str().unwrap()]);
    let ids: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, refs.iter().map(|r| r.0.as_str()).collect::<Vec<_>>());
    env.ok(&[
        "forget",
        "--repo",
        dst.to_str().unwrap(),
        &refs[0].0,
        &refs[1].0,
    ]);
    env.ok(&["gc", "--repo", dst.to_str().unwrap(), "--max-unused", "0"]);
    env.ok(&["verify", "--repo", dst.to_str().unwrap(), "--read-data"]);
    assert_restores(&env, &dst, &refs[2..]);
}

#[test]
fn a_copy_killed_at_any_moment_leaves_the_destination_valid() {
    let env = Env::new();
    env.init();
    let src = env.repo.clone();
    let refs = history(&env, &src);
    let dst = env.path("replica");
    init_replica(&env, &src, &dst);
    let args = [
        "copy",
        "--from",
        src.to_str().unwrap(),
        "--to",
        dst.to_str().unwrap(),
    ];
    let mut kills = 0;
    for delay_ms in [5u64, 15, 30, 50, 80, 120, 200] {
        if run_and_kill_after(&env, &args, Duration::from_millis(delay_ms)) {
            kills += 1;
        }
        // After every kill: the destination verifies and holds whole snapshots only.
        env.ok(&["verify", "--repo", dst.to_str().unwrap()]);
        for s in env
            .json(&["list", "--repo", dst.to_str().unwrap()])
            .as_array()
            .unwrap()
        {
            let id = s["id"].as_str().unwrap();
            let (_, expected) = refs.iter().find(|r| r.0 == id).expect("a source snapshot");
            let out = env.path("partial-check");
            env.ok(&[
                "restore",
                "--repo",
                dst.to_str().unwrap(),
                id,
                out.to_str().unwrap(),
            ]);
            assert_same_tree(expected, &out.join("data"));
            std::fs::remove_dir_all(&out).unwrap();
        }
        // Start over for the next kill.
        std::fs::remove_dir_all(&dst).unwrap();
        init_replica(&env, &src, &dst);
    }
    assert!(
        kills >= 3,
        "only {kills} copies were killed before they finished"
    );
    // Killed once more part-way, then run to the end: everything arrives.
    run_and_kill_after(&env, &args, Duration::from_millis(40));
    env.ok(&args);
    env.ok(&["verify", "--repo", dst.to_str().unwrap(), "--read-data"]);
    assert_restores(&env, &dst, &refs);
}

#[test]
fn encrypted_repositories_copy_only_when_they_share_a_key() {
    let env = Env::new();
    env.set_var("STRATA_PASSWORD", "source pass");
    env.set_var("STRATA_KDF_MEMORY_KIB", "8192");
    env.ok(&["init", "--encrypt"]);
    let src = env.repo.clone();
    let data = env.path("data");
    write(&data.join("secret.txt"), &text(50_000, 1));
    let id = env.backup(&[&data]);

    // A replica with its own passphrase but the source's key: copies, restores.
    let twin = env.path("twin");
    env.set_var("STRATA_FROM_PASSWORD", "source pass");
    env.set_var("STRATA_PASSWORD", "replica pass");
    env.ok(&[
        "init",
        "--repo",
        twin.to_str().unwrap(),
        "--encrypt",
        "--same-key-as",
        src.to_str().unwrap(),
    ]);
    let out = copy_json(&env, &src, &twin, &[]);
    assert_eq!(out["copied"][0], id.as_str());
    let restored = env.path("restored");
    env.ok(&[
        "restore",
        "--repo",
        twin.to_str().unwrap(),
        &id,
        restored.to_str().unwrap(),
    ]);
    assert_same_tree(&data, &restored.join("data"));
    // The replica opens with its own passphrase only.
    env.set_var("STRATA_PASSWORD", "source pass");
    assert_ne!(
        code(&env.run(&["list", "--repo", twin.to_str().unwrap()])),
        0
    );
    env.set_var("STRATA_PASSWORD", "replica pass");

    // Another key, or no encryption: refused with the way out, and nothing written.
    let other = env.path("other");
    env.ok(&["init", "--repo", other.to_str().unwrap(), "--encrypt"]);
    let plain = env.path("plain");
    env.ok(&["init", "--repo", plain.to_str().unwrap()]);
    for dst in [&other, &plain] {
        let out = env.run(&[
            "copy",
            "--from",
            src.to_str().unwrap(),
            "--to",
            dst.to_str().unwrap(),
        ]);
        assert_eq!(code(&out), 1);
        assert!(stderr(&out).contains("--same-key-as"), "{}", stderr(&out));
        assert_eq!(
            env.json(&["list", "--repo", dst.to_str().unwrap()])
                .as_array()
                .unwrap()
                .len(),
            0
        );
    }
}

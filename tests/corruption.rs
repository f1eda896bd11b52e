//! Damage in packs and manifests is found, named, and never restored as wrong bytes.

mod common;
use common::*;
use std::fs;

#[test]
fn flipped_byte_in_a_pack_is_detected_and_contained() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    // Two files in separate backups, so they land in separate packs.
    write(&src.join("victim.bin"), &noise(200_000, 1));
    env.backup(&[&src]);
    let first_packs = packs(&env.repo);
    assert_eq!(first_packs.len(), 1);
    write(&env.path("other/safe.txt"), &text(100_000, 2));
    env.backup(&[&env.path("other")]);

    // Flip a byte in the middle of the first pack's blob area.
    let pack = &first_packs[0];
    let mut bytes = fs::read(pack).unwrap();
    let at = 16 + 50_000;
    bytes[at] ^= 0x40;
    fs::write(pack, &bytes).unwrap();

    // Without reading data the structure still looks fine; with it, the damage is found.
    let r = env.run(&["verify", "--read-data"]);
    assert_eq!(code(&r), 3, "verify must exit 3 on damage");
    let stdout = String::from_utf8_lossy(&r.stdout);
    assert!(
        stdout.contains("src/victim.bin"),
        "names the path: {stdout}"
    );
    let snaps = env.json(&["list"]);
    let first_id = snaps[0]["id"].as_str().unwrap();
    assert!(
        stdout.contains(&first_id[..8]),
        "names the snapshot: {stdout}"
    );
    assert!(
        stdout.contains("hash mismatch")
            || stdout.contains("zstd")
            || stdout.contains("authentication failed"),
        "{stdout}"
    );
    assert!(
        !stdout.contains("safe.txt"),
        "undamaged file reported: {stdout}"
    );

    // Restore refuses the damaged file, names pack and chunk, and writes no wrong bytes.
    let out = env.path("out");
    let r = env.run(&["restore", first_id, out.to_str().unwrap()]);
    assert_eq!(code(&r), 3);
    let err = stderr(&r);
    assert!(
        err.contains("victim.bin") && err.contains(".pack") && err.contains("chunk"),
        "{err}"
    );
    assert!(!out.join("src/victim.bin").exists());
    // The other snapshot is unharmed.
    let out2 = env.path("out2");
    env.ok(&["restore", "latest", out2.to_str().unwrap()]);
    assert_eq!(
        fs::read(out2.join("other/safe.txt")).unwrap(),
        text(100_000, 2)
    );
}

#[test]
fn truncated_or_missing_pack_is_reported() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    write(&src.join("f"), &noise(100_000, 3));
    env.backup(&[&src]);
    let pack = packs(&env.repo).remove(0);
    truncate_by(&pack, 10);
    let r = env.run(&["verify"]);
    assert_eq!(code(&r), 3);
    fs::remove_file(&pack).unwrap();
    let r = env.run(&["verify", "--json"]);
    assert_eq!(code(&r), 3);
    let v: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    let problems = v["problems"].as_array().unwrap();
    assert!(
        problems.iter().any(|p| p["path"] == "src/f"),
        "{problems:?}"
    );
}

#[test]
fn damaged_manifest_file_and_config_are_reported() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    write(&src.join("f"), b"data");
    env.backup(&[&src]);
    let snap = fs::read_dir(env.repo.join("snapshots"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut b = fs::read(&snap).unwrap();
    let n = b.len();
    b[n / 2] ^= 1;
    fs::write(&snap, &b).unwrap();
    let r = env.run(&["verify"]);
    assert_eq!(code(&r), 3);
    assert!(String::from_utf8_lossy(&r.stdout).contains("manifest file"));

    // One flipped bit in `config`: its checksummed copy stands in, and the next writer puts
    // the file right.
    let cfg = env.repo.join("config");
    let whole = fs::read(&cfg).unwrap();
    let mut c = whole.clone();
    c[30] ^= 1;
    fs::write(&cfg, &c).unwrap();
    env.ok(&["list"]);
    env.ok(&["gc"]);
    assert_eq!(fs::read(&cfg).unwrap(), whole, "config not mended");
    // Both damaged: a clear error naming the config.
    let copy = env.repo.join("config.copy");
    fs::write(&cfg, &c).unwrap();
    let mut d = fs::read(&copy).unwrap();
    d[30] ^= 1;
    fs::write(&copy, &d).unwrap();
    let r = env.run(&["list"]);
    assert_eq!(code(&r), 1);
    assert!(stderr(&r).contains("config"), "{}", stderr(&r));
}

#[test]
fn damaged_index_never_crashes_and_repair_recovers() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    write(&src.join("a.bin"), &noise(300_000, 7));
    write(&src.join("b.txt"), &text(100_000, 8));
    env.backup(&[&src]);
    let len = fs::metadata(env.repo.join("index.redb")).unwrap().len() as usize;
    let mut cases = 0;
    for pos in (0..len).step_by(2003) {
        let repo = env.path(&format!("flip-{pos}"));
        copy_dir(&env.repo, &repo);
        let index = repo.join("index.redb");
        let mut b = fs::read(&index).unwrap();
        b[pos] ^= 0x55;
        fs::write(&index, &b).unwrap();
        let run = |args: &[&str]| {
            let mut a = args.to_vec();
            a.extend(["--repo", repo.to_str().unwrap()]);
            env.run(&a)
        };
        for args in [&["list"][..], &["verify"][..]] {
            let r = run(args);
            let e = stderr(&r);
            assert!(
                !e.contains("internal error") && !e.contains("panicked"),
                "flip at {pos}, {args:?}: {e}"
            );
            assert!(
                [0, 1, 3].contains(&code(&r)),
                "flip at {pos}: exit {}",
                code(&r)
            );
        }
        let r = run(&["repair", "index"]);
        assert_eq!(code(&r), 0, "repair after flip at {pos}: {}", stderr(&r));
        let v = run(&["verify", "--read-data"]);
        assert_eq!(code(&v), 0, "verify after repair, flip at {pos}");
        let _ = fs::remove_dir_all(&repo);
        cases += 1;
    }
    assert!(cases >= 10);
}

#[test]
fn scrubbing_in_parts_covers_every_pack() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    for i in 0..4u64 {
        write(&src.join(format!("f{i}.bin")), &noise(400_000, 40 + i));
        env.backup(&[&src]);
    }
    let all = packs(&env.repo);
    assert!(all.len() >= 4, "{} packs", all.len());
    // Damage one pack's data.
    let victim = &all[all.len() / 2];
    let mut bytes = std::fs::read(victim).unwrap();
    bytes[300] ^= 0x55;
    std::fs::write(victim, bytes).unwrap();

    let mut failing = 0;
    let mut read = 0;
    for k in 1..=3 {
        let out = env.run(&["verify", "--read-data-subset", &format!("{k}/3"), "--json"]);
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        read += report["packs_read"].as_u64().unwrap();
        if code(&out) != 0 {
            assert_eq!(code(&out), 3);
            failing += 1;
        }
    }
    assert_eq!(failing, 1, "exactly one part holds the damaged pack");
    assert_eq!(
        read as usize,
        all.len(),
        "the parts together read every pack once"
    );
    let out = env.run(&["verify", "--read-data-subset", "34%"]);
    assert!(code(&out) == 0 || code(&out) == 3);
    assert_eq!(code(&env.run(&["verify", "--read-data"])), 3);
    assert_ne!(code(&env.run(&["verify", "--read-data-subset", "0%"])), 0);
}

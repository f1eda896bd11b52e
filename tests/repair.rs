//! The index is a cache: `strata repair index` rebuilds it from packs and manifest files.

mod common;
use common::*;
use std::fs;

#[test]
fn lost_or_damaged_index_is_rebuilt() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    write(&src.join("a.bin"), &noise(700_000, 1));
    write(&src.join("b.txt"), &text(200_000, 2));
    let first = env.backup(&[&src]);
    write(&src.join("c.txt"), &text(50_000, 3));
    std::thread::sleep(std::time::Duration::from_millis(200));
    let second = env.backup(&[&src]);
    let index = env.repo.join("index.redb");

    // Missing: readers say what to do.
    fs::remove_file(&index).unwrap();
    let r = env.run(&["list"]);
    assert_eq!(code(&r), 1);
    assert!(stderr(&r).contains("strata repair index"), "{}", stderr(&r));

    // A dry run changes nothing.
    let dry = env.json(&["repair", "index", "--dry-run"]);
    assert_eq!(dry["snapshots"], 2);
    assert!(!index.exists());

    let report = env.json(&["repair", "index"]);
    assert_eq!(report["snapshots"], 2);
    assert!(report["packs"].as_u64().unwrap() >= 2);
    assert!(
        env.ok(&["verify", "--read-data"])
            .contains("no problems found")
    );
    for id in [&first, &second] {
        let out = env.path(&format!("out-{}", &id[..8]));
        env.ok(&["restore", &id[..8], out.to_str().unwrap()]);
    }
    assert_same_tree(
        &src,
        &env.path(&format!("out-{}", &second[..8])).join("src"),
    );
    // Backups go on after a repair (and pack numbers are not reused).
    write(&src.join("d.txt"), b"after repair");
    env.backup(&[&src]);
    assert!(
        env.ok(&["verify", "--read-data"])
            .contains("no problems found")
    );

    // Garbage in place of the index: also rebuilt.
    fs::write(&index, noise(100_000, 9)).unwrap();
    assert_ne!(code(&env.run(&["list"])), 0);
    env.ok(&["repair", "index"]);
    assert_eq!(env.json(&["list"]).as_array().unwrap().len(), 3);
    let out = env.path("final");
    env.ok(&["restore", "latest", out.to_str().unwrap()]);
    assert_same_tree(&src, &out.join("src"));
}

#[test]
fn damaged_pack_is_reported_and_what_it_holds_is_salvaged() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    write(&src.join("f"), &noise(100_000, 4));
    env.backup(&[&src]);
    let pack = packs(&env.repo).remove(0);
    // The footer cut short: the trailer cannot be found the usual way.
    truncate_by(&pack, 3);
    let r = env.run(&["repair", "index"]);
    assert_eq!(code(&r), 0);
    let err = stderr(&r);
    assert!(err.contains("skipped") || err.contains("damaged"), "{err}");
    assert!(err.contains("each checked against its id"), "{err}");
    // Its blobs were proven by their content and kept: the file restores exactly.
    let out = env.path("out");
    env.ok(&["restore", "latest", out.to_str().unwrap()]);
    assert_eq!(fs::read(out.join("src/f")).unwrap(), noise(100_000, 4));
    // The pack itself is still damaged, and a full check says so.
    let v = env.run(&["verify", "--read-data"]);
    assert_eq!(code(&v), 3, "{}", String::from_utf8_lossy(&v.stdout));

    // Without the old index (lost too), the pack's bytes alone are all there is.
    fs::remove_file(env.repo.join("index.redb")).unwrap();
    let r = env.run(&["repair", "index"]);
    assert_eq!(code(&r), 0, "{}", stderr(&r));
    let v = env.run(&["verify"]);
    let said = String::from_utf8_lossy(&v.stdout).into_owned();
    // With its footer cut, the pack's own trailer cannot be found: verify names the lost file.
    assert_eq!(code(&v), 3, "{said}");
    assert!(said.contains("src/f"), "{said}");
}

#[test]
fn a_snapshot_file_nothing_can_stand_in_for_makes_repair_exit_3_and_name_it() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    write(&src.join("a.bin"), &noise(100_000, 5));
    let id = env.backup(&[&src]);
    // The manifest file damaged, and no index left to hold a copy of it.
    let snap = env.repo.join("snapshots").join(format!("{id}.snap"));
    let mut bytes = fs::read(&snap).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 1;
    fs::write(&snap, &bytes).unwrap();
    fs::remove_file(env.repo.join("index.redb")).unwrap();
    let r = env.run(&["repair", "index"]);
    assert_eq!(code(&r), 3, "{}", stderr(&r));
    assert!(stderr(&r).contains(&format!("{id}.snap")), "{}", stderr(&r));
}

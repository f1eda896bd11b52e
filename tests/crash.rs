//! A backup killed with SIGKILL at any moment leaves a repository that verifies, keeps every
//! earlier snapshot restorable, and accepts the next backup.

mod common;
use common::*;
use std::time::Duration;

#[test]
fn killed_backup_leaves_a_valid_repository() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    write(&src.join("base.txt"), &text(500_000, 1));
    env.backup(&[&src]);
    let baseline = env.path("baseline");
    env.ok(&["restore", "latest", baseline.to_str().unwrap()]);

    // Enough new data that a backup takes a while, so kills land in every phase.
    for i in 0..6 {
        write(&src.join(format!("big{i}.bin")), &noise(12 << 20, 100 + i));
    }
    let mut killed = 0;
    for delay_ms in [5u64, 30, 80, 150, 250, 400, 600, 900] {
        if run_and_kill_after(
            &env,
            &["backup", src.to_str().unwrap()],
            Duration::from_millis(delay_ms),
        ) {
            killed += 1;
        }

        let v = env.run(&["verify", "--read-data"]);
        assert_eq!(
            code(&v),
            0,
            "after kill at {delay_ms} ms: {}",
            String::from_utf8_lossy(&v.stdout)
        );
        let out = env.path(&format!("check-{delay_ms}"));
        env.ok(&[
            "restore",
            &env.json(&["list"])[0]["id"].as_str().unwrap()[..8],
            out.to_str().unwrap(),
        ]);
        assert_same_tree(&baseline.join("src"), &out.join("src"));
    }
    assert!(killed >= 3, "only {killed} backups were actually killed");
    // The next backup takes over the dead writer's lock and succeeds.
    env.backup(&[&src]);
    let out = env.path("final");
    env.ok(&["restore", "latest", out.to_str().unwrap()]);
    assert_same_tree(&src, &out.join("src"));
    assert_eq!(code(&env.run(&["verify", "--read-data"])), 0);
}

#[test]
fn killed_restore_leaves_old_or_new_files_never_a_mix() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    let names: Vec<String> = (0..6).map(|i| format!("f{i}.bin")).collect();
    for (i, n) in names.iter().enumerate() {
        write(&src.join(n), &noise(6 << 20, i as u64));
    }
    let v1 = env.backup(&[&src]);
    for (i, n) in names.iter().enumerate() {
        write(&src.join(n), &noise(6 << 20, 100 + i as u64));
    }
    std::thread::sleep(Duration::from_millis(200));
    let v2 = env.backup(&[&src]);
    let old: Vec<Vec<u8>> = (0..6).map(|i| noise(6 << 20, i)).collect();
    let new: Vec<Vec<u8>> = (0..6).map(|i| noise(6 << 20, 100 + i)).collect();

    let target = env.path("target");
    env.ok(&["restore", &v1[..8], target.to_str().unwrap()]);
    let mut killed = 0;
    for delay_ms in [5u64, 20, 50, 100, 200, 400] {
        let mut child = env
            .cmd()
            .args(["restore", &v2[..8], target.to_str().unwrap()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
            killed += 1;
        }
        child.wait().unwrap();
        // The directory is swapped in whole: every file old, or every file new.
        let versions: std::collections::HashSet<&str> = names
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let got = std::fs::read(target.join("src").join(n)).unwrap();
                match (got == old[i], got == new[i]) {
                    (true, _) => "old",
                    (_, true) => "new",
                    _ => panic!("{n} is neither version after a kill at {delay_ms} ms"),
                }
            })
            .collect();
        assert_eq!(versions.len(), 1, "a mix after a kill at {delay_ms} ms");
        // Put the old version back for the next round.
        env.ok(&["restore", &v1[..8], target.to_str().unwrap()]);
    }
    assert!(killed >= 2, "only {killed} restores were killed");
    // A completed restore leaves no temporary files behind, including those of killed runs.
    env.ok(&["restore", &v2[..8], target.to_str().unwrap()]);
    let left: Vec<String> = [target.clone(), target.join("src")]
        .iter()
        .flat_map(|d| std::fs::read_dir(d).unwrap())
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("strata-tmp") || n.contains("strata-restore"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert_same_tree(&src, &target.join("src"));
}

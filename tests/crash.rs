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

/// Two snapshots of `src`: every file in one version, then every file in another.
struct TwoVersions {
    names: Vec<String>,
    old: Vec<Vec<u8>>,
    new: Vec<Vec<u8>>,
    v1: String,
    v2: String,
}

impl TwoVersions {
    fn back_up(env: &Env, files: usize, size: usize) -> TwoVersions {
        let src = env.path("src");
        let names: Vec<String> = (0..files).map(|i| format!("f{i}.bin")).collect();
        let old: Vec<Vec<u8>> = (0..files as u64).map(|i| noise(size, i)).collect();
        let new: Vec<Vec<u8>> = (0..files as u64).map(|i| noise(size, 100 + i)).collect();
        for (n, data) in names.iter().zip(&old) {
            write(&src.join(n), data);
        }
        let v1 = env.backup(&[&src]);
        for (n, data) in names.iter().zip(&new) {
            write(&src.join(n), data);
        }
        std::thread::sleep(Duration::from_millis(200));
        let v2 = env.backup(&[&src]);
        TwoVersions {
            names,
            old,
            new,
            v1,
            v2,
        }
    }

    /// Asserts that `target/src` holds every file old or every file new, never a mix.
    fn assert_whole(&self, target: &std::path::Path, when: &str) {
        let versions: std::collections::HashSet<&str> = self
            .names
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let got = std::fs::read(target.join("src").join(n)).unwrap();
                match (got == self.old[i], got == self.new[i]) {
                    (true, _) => "old",
                    (_, true) => "new",
                    _ => panic!("{n} is neither version after a kill at {when}"),
                }
            })
            .collect();
        assert_eq!(versions.len(), 1, "a mix after a kill at {when}");
    }
}

#[test]
fn killed_restore_leaves_old_or_new_files_never_a_mix() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    let two = TwoVersions::back_up(&env, 6, 6 << 20);
    let (v1, v2) = (&two.v1, &two.v2);
    let target = env.path("target");
    env.ok(&["restore", &v1[..8], target.to_str().unwrap()]);
    let mut killed = 0;
    for delay_ms in [5u64, 20, 50, 100, 200, 400] {
        if run_and_kill_after(
            &env,
            &["restore", &v2[..8], target.to_str().unwrap()],
            Duration::from_millis(delay_ms),
        ) {
            killed += 1;
        }
        // The directory is swapped in whole: every file old, or every file new.
        two.assert_whole(&target, &format!("{delay_ms} ms"));
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

/// How many kills each sweep below makes: 80, or `STRATA_CRASH_POINTS` for a longer run.
fn crash_points() -> usize {
    std::env::var("STRATA_CRASH_POINTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(80)
}

/// Kill moments spread over `0..=1.5 x span` (a run to be killed can take longer than one timed alone, and the late phases matter), from a fixed seed so a failure can be replayed.
struct Moments(u64);

impl Moments {
    fn next(&mut self, span: Duration) -> Duration {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let frac = (self.0 >> 11) as f64 / (1u64 << 53) as f64;
        span.mul_f64(1.5 * frac)
    }
}

fn timed(env: &Env, args: &[&str]) -> Duration {
    let t = std::time::Instant::now();
    env.ok(args);
    t.elapsed()
}

/// Backups killed at many random moments, each after a change to the source: after every kill
/// the repository verifies and no completed snapshot is lost; every snapshot restores to files
/// that are each one version that was written, never a mix.
#[test]
fn backups_killed_at_random_moments_lose_nothing() {
    const FILES: usize = 4;
    let env = Env::new();
    env.init();
    let src = env.path("src");
    // Every version each file has had, by content hash.
    let mut versions: Vec<std::collections::HashSet<[u8; 32]>> = vec![Default::default(); FILES];
    let mut put = |file: usize, seed: u64| {
        let data = noise(4 << 20, seed);
        versions[file].insert(*blake3::hash(&data).as_bytes());
        write(&src.join(format!("f{file}.bin")), &data);
    };
    for f in 0..FILES {
        put(f, f as u64);
    }
    let s = src.to_str().unwrap().to_string();
    env.ok(&["backup", &s]);
    // A run like those to be killed: one changed file.
    put(0, 999);
    let mut span = timed(&env, &["backup", &s]);
    let mut completed = 2;
    let (mut killed, mut tries) = (0, 0);
    let mut moments = Moments(0x5EED_0001);
    while killed < crash_points() && tries < crash_points() * 4 {
        tries += 1;
        put(tries % FILES, 1000 + tries as u64);
        let at = moments.next(span);
        let started = std::time::Instant::now();
        if run_and_kill_after(&env, &["backup", &s], at) {
            killed += 1;
        } else {
            completed += 1;
            // Kill moments follow how long a run takes now (the machine's load changes).
            span = started.elapsed();
        }
        let v = env.run(&["verify"]);
        assert_eq!(code(&v), 0, "after a kill at {at:?}: {}", stderr(&v));
        let snaps = env.json(&["list"]).as_array().unwrap().len();
        assert!(
            snaps >= completed,
            "{snaps} snapshots after {completed} completed backups"
        );
    }
    assert!(
        killed >= crash_points(),
        "only {killed} of {tries} backups were killed"
    );
    eprintln!("backup: {killed} killed, {completed} completed, {tries} tries");
    env.ok(&["verify", "--read-data"]);
    let list = env.json(&["list"]);
    for (k, snap) in list.as_array().unwrap().iter().enumerate() {
        let out = env.path(&format!("r{k}"));
        env.ok(&[
            "restore",
            snap["id"].as_str().unwrap(),
            out.to_str().unwrap(),
        ]);
        for (f, known) in versions.iter().enumerate() {
            let got = std::fs::read(out.join(format!("src/f{f}.bin"))).unwrap();
            assert!(
                known.contains(blake3::hash(&got).as_bytes()),
                "snapshot {k}: f{f}.bin is no version that was written"
            );
        }
        std::fs::remove_dir_all(&out).unwrap();
    }
    // The next backup takes over the dead writer's lock and holds the source as it is.
    env.backup(&[&src]);
    let out = env.path("final");
    env.ok(&["restore", "latest", out.to_str().unwrap()]);
    assert_same_tree(&src, &out.join("src"));
}

/// Restores over an existing directory killed at many random moments: the directory is always
/// the old version or the new one as a whole.
#[test]
fn restores_killed_at_random_moments_leave_old_or_new() {
    let env = Env::new();
    env.init();
    let two = TwoVersions::back_up(&env, 4, 3 << 20);
    let (v1, v2) = (&two.v1, &two.v2);
    let target = env.path("target");
    let t = target.to_str().unwrap().to_string();
    env.ok(&["restore", v1, &t]);
    let mut span = timed(&env, &["restore", v2, &t]);
    let (mut killed, mut tries) = (0, 0);
    let mut moments = Moments(0x5EED_0002);
    while killed < crash_points() && tries < crash_points() * 4 {
        tries += 1;
        env.ok(&["restore", v1, &t, "--no-restore-point"]);
        let at = moments.next(span);
        let started = std::time::Instant::now();
        if run_and_kill_after(&env, &["restore", v2, &t], at) {
            killed += 1;
        } else {
            // Kill moments follow how long a run takes now (the machine's load changes).
            span = started.elapsed();
        }
        two.assert_whole(&target, &format!("{at:?}"));
    }
    assert!(
        killed >= crash_points(),
        "only {killed} of {tries} restores were killed"
    );
    eprintln!("restore: {killed} killed of {tries} tries");
    assert_eq!(code(&env.run(&["verify", "--read-data"])), 0);
}

/// `repair index` killed at random moments: the repository is left with the old index or the
/// rebuilt one, never without one that works, and the next repair finishes the job.
#[test]
fn repairs_killed_at_random_moments_leave_a_working_index() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    for (k, seed) in [(0, 1u64), (1, 2), (2, 3)] {
        write(&src.join(format!("f{k}.bin")), &noise(3 << 20, seed));
        env.backup(&[&src]);
    }
    let before = env.json(&["list"]);
    let mut span = timed(&env, &["repair", "index"]);
    let mut moments = Moments(0x5EED_0003);
    let (mut killed, mut tries) = (0, 0);
    let points = crash_points() / 2;
    while killed < points && tries < points * 4 {
        tries += 1;
        let at = moments.next(span);
        let started = std::time::Instant::now();
        if run_and_kill_after(&env, &["repair", "index"], at) {
            killed += 1;
        } else {
            span = started.elapsed();
        }
        // Whatever the moment, the repository answers and verifies.
        let v = env.run(&["verify"]);
        assert_eq!(code(&v), 0, "after a kill at {at:?}: {}", stderr(&v));
        assert_eq!(env.json(&["list"]), before, "after a kill at {at:?}");
    }
    assert!(
        killed >= points,
        "only {killed} of {tries} repairs were killed"
    );
    eprintln!("repair: {killed} killed, {tries} tries");
    env.ok(&["repair", "index"]);
    env.ok(&["verify", "--read-data"]);
    let out = env.path("out");
    env.ok(&["restore", "latest", out.to_str().unwrap()]);
    assert_same_tree(&src, &out.join("src"));
}

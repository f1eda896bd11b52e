//! Repositories on S3-compatible object storage, against a real 3-node Garage cluster
//! (`tests/garage/cluster.sh`, replication factor 3) that this test binary starts on loopback:
//! round trips, dedup, gc, damage, several machines, the lease, a node down, a killed upload,
//! and `copy` between local and S3 repositories.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

struct Cluster {
    env: Vec<(String, String)>,
    dir: PathBuf,
    _keep: tempfile::TempDir,
}

static CLUSTER: OnceLock<Cluster> = OnceLock::new();

extern "C" fn stop_cluster() {
    if let Some(c) = CLUSTER.get() {
        let _ = std::process::Command::new("bash")
            .arg(script())
            .args(["stop"])
            .arg(&c.dir)
            .output();
    }
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/garage/cluster.sh")
}

fn cluster() -> &'static Cluster {
    CLUSTER.get_or_init(|| {
        let keep = tempfile::tempdir().unwrap();
        let dir = keep.path().join("garage");
        let base = 20000 + (std::process::id() % 1000) * 40;
        let out = std::process::Command::new("bash")
            .arg(script())
            .arg("start")
            .arg(&dir)
            .arg(base.to_string())
            .output()
            .expect("run tests/garage/cluster.sh");
        assert!(
            out.status.success(),
            "the Garage cluster did not start (is `garage` installed? tools/test.sh installs it): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // SAFETY: registers a plain extern "C" function to run at exit.
        unsafe { libc::atexit(stop_cluster) };
        let env = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Cluster {
            env,
            dir,
            _keep: keep,
        }
    })
}

/// An `Env` whose repository is a fresh prefix in the cluster's bucket.
fn s3_env(name: &str) -> (Env, String) {
    let c = cluster();
    let env = Env::new();
    for (k, v) in &c.env {
        env.set_var(k, v);
    }
    env.set_var("XDG_CACHE_HOME", env.path("cache").to_str().unwrap());
    let bucket = &c
        .env
        .iter()
        .find(|(k, _)| k == "STRATA_TEST_S3_BUCKET")
        .unwrap()
        .1;
    let mut r = [0u8; 6];
    strata::repo::getrandom(&mut r);
    let url = format!(
        "s3://{bucket}/{name}-{}",
        r.iter().map(|b| format!("{b:02x}")).collect::<String>()
    );
    env.set_var("STRATA_REPO", &url);
    (env, url)
}

/// The test's repository opened directly with the library's client, as anyone holding the
/// bucket could (the cluster's credentials, which every test shares, go into the process env).
fn direct_backend(env: &Env) -> strata::s3::S3Backend {
    // SAFETY: these variables are the same for every test of this binary (no S3 settings file:
    // the cluster's credentials come from the environment).
    unsafe { std::env::set_var("XDG_CONFIG_HOME", env!("CARGO_TARGET_TMPDIR")) };
    for (k, v) in env
        .vars
        .borrow()
        .iter()
        .filter(|(k, _)| k != "XDG_CACHE_HOME")
    {
        // SAFETY: as above.
        unsafe { std::env::set_var(k, v) };
    }
    let url = env
        .vars
        .borrow()
        .iter()
        .find(|(k, _)| k == "STRATA_REPO")
        .unwrap()
        .1
        .clone();
    strata::s3::S3Backend::new(&strata::s3::S3Location::parse(&url).unwrap().unwrap()).unwrap()
}

fn node(cmd: &str, n: u32) {
    let out = std::process::Command::new("bash")
        .arg(script())
        .arg(cmd)
        .arg(&cluster().dir)
        .arg(n.to_string())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn tree(env: &Env, seed: u64) -> PathBuf {
    let src = env.path("src");
    write(&src.join("big.bin"), &noise(5 << 20, seed));
    write(&src.join("log.jsonl"), &text(400_000, seed + 1));
    write(&src.join("sub/empty"), b"");
    src
}

fn restore_same(env: &Env, snap: &str, src: &Path) {
    let out = env.path(&format!("restored-{snap}"));
    env.ok(&["restore", snap, out.to_str().unwrap()]);
    assert_same_tree(src, &out.join("src"));
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn round_trip_dedup_gc_and_verify() {
    let (env, _) = s3_env("roundtrip");
    env.init();
    let src = tree(&env, 1);
    let first = env.json(&["backup", "--kind", "hourly", src.to_str().unwrap()]);
    let again = env.json(&["backup", "--kind", "hourly", src.to_str().unwrap()]);
    assert!(first["stats"]["new_stored_bytes"].as_u64().unwrap() > 4 << 20);
    assert!(
        again["stats"]["new_stored_bytes"].as_u64().unwrap() < 64 << 10,
        "{again}"
    );
    restore_same(&env, "latest", &src);
    // Replace the big file, forget the first snapshots, reclaim.
    write(&src.join("big.bin"), &noise(5 << 20, 9));
    env.json(&["backup", "--kind", "hourly", src.to_str().unwrap()]);
    env.ok(&["forget", "--keep-last", "1"]);
    let gc = env.json(&["gc"]);
    assert!(gc["bytes_reclaimed"].as_u64().unwrap() > 4 << 20, "{gc}");
    env.ok(&["verify", "--read-data"]);
    restore_same(&env, "latest", &src);
}

/// GET requests a strata command made for repository objects (`STRATA_S3_STATS`).
fn gets(env: &Env, args: &[&str]) -> u64 {
    let out = env
        .cmd()
        .env("STRATA_S3_STATS", "1")
        .args(args)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "strata {args:?}: {err}");
    let line = err
        .lines()
        .find_map(|l| l.strip_prefix("s3 requests: "))
        .unwrap_or_else(|| panic!("no request counts from strata {args:?}: {err}"));
    line.split(' ').next().unwrap().parse().unwrap()
}

#[test]
fn chunk_lists_come_from_the_node_cache_and_small_reads_are_batched() {
    let (env, _) = s3_env("batched");
    env.init();
    let src = env.path("src");
    // 64 MiB in 8 KiB chunks: a chunk list of about 130 nodes.
    let mut big = noise(64 << 20, 11);
    write(&src.join("big.bin"), &big);
    for i in 0..300 {
        write(
            &src.join(format!("memory/{i:03}.json")),
            &text(3000, 100 + i),
        );
    }
    let s = src.to_str().unwrap();
    env.ok(&["backup", s]);

    // A change in the middle of the big file: the backup walks the previous chunk list, from
    // the cache the first backup filled, not with a GET per node.
    big[32 << 20..(32 << 20) + 100].fill(0xab);
    write(&src.join("big.bin"), &big);
    let warm = gets(&env, &["backup", s]);
    assert!(
        warm <= 10,
        "{warm} GETs for an hourly backup with a warm cache"
    );

    // Another machine (an empty cache): the index is rebuilt and the nodes are fetched in
    // spans of neighbouring frames.
    env.set_var("XDG_CACHE_HOME", env.path("cache2").to_str().unwrap());
    big[8 << 20..(8 << 20) + 100].fill(0xcd);
    write(&src.join("big.bin"), &big);
    let cold = gets(&env, &["backup", s]);
    assert!(
        cold <= 40,
        "{cold} GETs for an hourly backup with a new cache"
    );

    // 300 small files are restored with a few block reads, not a GET each.
    env.set_var("XDG_CACHE_HOME", env.path("cache3").to_str().unwrap());
    let out = env.path("restored");
    let restore = gets(&env, &["restore", "latest", out.to_str().unwrap()]);
    assert!(restore <= 80, "{restore} GETs to restore 301 files");
    assert_same_tree(&src, &out.join("src"));
    env.ok(&["verify", "--read-data"]);
    eprintln!("GETs: warm hourly {warm}, cold hourly {cold}, restore {restore}");
}

#[test]
fn another_machine_sees_new_snapshots_and_a_lost_cache_is_rebuilt() {
    let (a, url) = s3_env("machines");
    a.init();
    let src = tree(&a, 2);
    let id_a = a.backup(&[&src]);
    // Machine B: its own cache directory, the same repository.
    let b = Env::new();
    for (k, v) in a.vars.borrow().iter() {
        b.set_var(k, v);
    }
    b.set_var("XDG_CACHE_HOME", b.path("cache").to_str().unwrap());
    b.set_var("STRATA_REPO", &url);
    let listed = b.json(&["list"]);
    assert_eq!(listed[0]["id"], id_a.as_str());
    let src_b = tree(&b, 3);
    let id_b = b.backup(&[&src_b]);
    // A picks up B's snapshot; B's forget is seen by A too.
    let listed = a.json(&["list"]);
    assert_eq!(listed.as_array().unwrap().len(), 2, "{listed}");
    b.ok(&["forget", &id_a]);
    let listed = a.json(&["list"]);
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed[0]["id"], id_b.as_str());
    // Losing the local machine loses nothing.
    std::fs::remove_dir_all(a.path("cache")).unwrap();
    let out = a.path("restored");
    a.ok(&["restore", &id_b, out.to_str().unwrap()]);
    assert_same_tree(&src_b, &out.join("src"));
    a.ok(&["verify"]);
}

#[test]
fn a_second_writer_waits_for_the_lease() {
    let (env, _) = s3_env("lease");
    env.init();
    let mut slow = env
        .cmd()
        .args(["backup", "--from-command", "sleep 6; echo slow=slow.txt"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let src = tree(&env, 4);
    let out = env.run(&["backup", src.to_str().unwrap()]);
    assert_eq!(code(&out), 5, "a locked repository has its own exit code");
    assert!(
        stderr(&out).contains("is locked by pid"),
        "{}",
        stderr(&out)
    );
    assert!(slow.wait().unwrap().success());
    // Given back: the next writer goes on.
    env.backup(&[&src]);
    assert_eq!(env.json(&["list"]).as_array().unwrap().len(), 2);
}

#[test]
fn backup_and_restore_go_on_with_a_node_down() {
    let (env, _) = s3_env("failover");
    env.init();
    let src = tree(&env, 5);
    env.backup(&[&src]);
    node("stop-node", 3);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        write(&src.join("log.jsonl"), &text(500_000, 77));
        env.backup(&[&src]);
        restore_same(&env, "latest", &src);
        env.ok(&["verify", "--read-data"]);
    }));
    node("start-node", 3);
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

#[test]
fn a_killed_upload_leaves_a_repository_that_verifies() {
    let (env, _) = s3_env("killed");
    env.init();
    let src = tree(&env, 6);
    env.backup(&[&src]);
    let mut kills = 0;
    for (i, ms) in [300u64, 800, 1500].iter().enumerate() {
        write(
            &src.join(format!("new{i}.bin")),
            &noise(4 << 20, 50 + i as u64),
        );
        if run_and_kill_after(
            &env,
            &["backup", src.to_str().unwrap()],
            Duration::from_millis(*ms),
        ) {
            kills += 1;
        }
        // The killed writer's lease runs out by itself; `unlock` ends it at once.
        env.ok(&["unlock"]);
        env.ok(&["verify"]);
    }
    assert!(kills >= 1, "no backup was killed part-way");
    env.backup(&[&src]);
    env.ok(&["gc"]);
    env.ok(&["verify", "--read-data"]);
    restore_same(&env, "latest", &src);
}

#[test]
fn damage_in_the_bucket_is_found() {
    let (env, _) = s3_env("damage");
    env.init();
    let src = tree(&env, 7);
    env.backup(&[&src]);
    // Flip a byte in the middle of the largest pack, through the library's own client.
    let backend = direct_backend(&env);
    use strata::storage::Backend;
    let packs = backend.list("packs").unwrap();
    let biggest = packs
        .iter()
        .max_by_key(|p| backend.size(p).unwrap())
        .unwrap()
        .clone();
    let mut bytes = backend.get(&biggest).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    backend.put(&biggest, &bytes).unwrap();
    let out = env.run(&["verify", "--read-data"]);
    assert_eq!(code(&out), 3, "{}", String::from_utf8_lossy(&out.stdout));
    let restored = env.path("restored");
    let out = env.run(&["restore", "latest", restored.to_str().unwrap()]);
    assert_ne!(code(&out), 0);
}

#[test]
fn copy_local_to_s3_to_a_fresh_local_repository() {
    let (env, url) = s3_env("copy");
    env.init();
    // The source: a local repository with three snapshots.
    let local = env.path("local");
    env.ok(&["init", "--repo", local.to_str().unwrap()]);
    let src = tree(&env, 8);
    let mut ids = Vec::new();
    for g in 0..3u64 {
        write(
            &src.join("log.jsonl"),
            &text(400_000 + 50_000 * g as usize, 1),
        );
        ids.push(env.backup_args(&["--repo", local.to_str().unwrap(), src.to_str().unwrap()]));
        let refc = env.path(&format!("ref{g}"));
        env.ok(&[
            "restore",
            "--repo",
            local.to_str().unwrap(),
            &ids[g as usize],
            refc.to_str().unwrap(),
        ]);
    }
    let to_s3 = env.json(&["copy", "--from", local.to_str().unwrap(), "--to", &url]);
    assert_eq!(to_s3["copied"].as_array().unwrap().len(), 3);
    let again = env.json(&["copy", "--from", local.to_str().unwrap(), "--to", &url]);
    assert_eq!(again["blobs_copied"], 0);
    assert_eq!(again["packs_written"], 0);
    // Disaster recovery: from the bucket into a new local repository.
    let fresh = env.path("fresh");
    env.ok(&["init", "--repo", fresh.to_str().unwrap()]);
    let back = env.json(&["copy", "--from", &url, "--to", fresh.to_str().unwrap()]);
    assert_eq!(back["copied"].as_array().unwrap().len(), 3);
    env.ok(&["verify", "--repo", fresh.to_str().unwrap(), "--read-data"]);
    for (g, id) in ids.iter().enumerate() {
        let out = env.path(&format!("dr{g}"));
        env.ok(&[
            "restore",
            "--repo",
            fresh.to_str().unwrap(),
            id,
            out.to_str().unwrap(),
        ]);
        assert_same_tree(&env.path(&format!("ref{g}")).join("src"), &out.join("src"));
    }
}

#[test]
fn bad_urls_and_missing_credentials_are_clear_errors() {
    let env = Env::new();
    let out = env.run(&["init", "--repo", "s3://Bad_Bucket/x"]);
    assert_eq!(code(&out), 1);
    assert!(stderr(&out).contains("bucket name"), "{}", stderr(&out));
    let out = env.run(&["list", "--repo", "s3://bucket/a//b"]);
    assert!(
        stderr(&out).contains("plain path segments"),
        "{}",
        stderr(&out)
    );
}

/// Endpoint, region and credentials from the settings file: a bucket's table wins over the
/// AWS_* variables, the top level fills what they leave out; a readable secret is refused.
#[test]
fn settings_come_from_a_file() {
    use std::os::unix::fs::PermissionsExt;
    let (env, url) = s3_env("settings");
    let var = |k: &str| {
        cluster()
            .env
            .iter()
            .find(|(n, _)| n == k)
            .unwrap()
            .1
            .clone()
    };
    let bucket = var("STRATA_TEST_S3_BUCKET");
    // Only a wrong secret in the environment.
    env.set_var("AWS_ENDPOINT_URL", "");
    env.set_var("AWS_REGION", "");
    env.set_var("AWS_ACCESS_KEY_ID", "");
    env.set_var("AWS_SECRET_ACCESS_KEY", "not-the-secret");

    let secret = env.path("secret");
    write(
        &secret,
        format!("{}\n", var("AWS_SECRET_ACCESS_KEY")).as_bytes(),
    );
    let file = env.path("config/strata/s3.toml");
    let text = format!(
        "endpoint = {:?}\nregion = \"garage\"\naccess_key_id = {:?}\n\
         secret_access_key = {:?}\n\n[bucket.{bucket}]\nsecret_access_key_file = {:?}\n",
        var("AWS_ENDPOINT_URL"),
        var("AWS_ACCESS_KEY_ID"),
        var("AWS_SECRET_ACCESS_KEY"),
        secret.display().to_string(),
    );
    write(&file, text.as_bytes());
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = env.run(&["init"]);
    assert_eq!(code(&out), 1);
    assert!(stderr(&out).contains("chmod 600"), "{}", stderr(&out));

    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    env.ok(&["init"]);
    let src = tree(&env, 41);
    env.backup(&[&src]);
    restore_same(&env, "latest", &src);
    assert_eq!(env.json(&["list"]).as_array().unwrap().len(), 1, "{url}");

    // The bucket's table gone, the environment's wrong secret wins over the top level's right one.
    write(&file, text.split("[bucket.").next().unwrap().as_bytes());
    let out = env.run(&["list"]);
    assert_eq!(code(&out), 1);
    assert!(stderr(&out).contains("403 Forbidden"), "{}", stderr(&out));
    // A settings file named explicitly must exist.
    env.set_var(
        "STRATA_S3_CONFIG",
        env.path("nowhere.toml").to_str().unwrap(),
    );
    let out = env.run(&["list"]);
    assert_eq!(code(&out), 1);
    assert!(stderr(&out).contains("nowhere.toml"), "{}", stderr(&out));
}

#[test]
fn an_encrypted_repository_on_s3() {
    let (env, _) = s3_env("encrypted");
    env.set_var("STRATA_PASSWORD", "bucket pass");
    env.set_var("STRATA_KDF_MEMORY_KIB", "8192");
    env.ok(&["init", "--encrypt"]);
    let src = env.path("src");
    write(
        &src.join("secret.txt"),
        b"a marker only the key holder may read: 7f3a9c",
    );
    env.backup(&[&src]);
    // A fresh cache is rebuilt with the key; the objects never hold the plaintext.
    std::fs::remove_dir_all(env.path("cache")).unwrap();
    restore_same(&env, "latest", &src);
    // What anyone holding the bucket sees: every object, as the store serves it.
    let backend = direct_backend(&env);
    use strata::storage::Backend;
    let names = backend.list("").unwrap();
    assert!(names.iter().any(|n| n.starts_with("packs/")), "{names:?}");
    let mut leaked = Vec::new();
    for name in names {
        // A reader's registration can still be listed just after the restore
        // removed it: the listing and the read go to different nodes. What is
        // gone holds nothing.
        let body = match backend.get(&name) {
            Ok(body) => body,
            Err(e) if e.kind() == strata::error::ErrorKind::NotFound => continue,
            Err(e) => panic!("{name}: {e}"),
        };
        if body.windows(6).any(|w| w == b"7f3a9c") {
            leaked.push(name);
        }
    }
    assert!(leaked.is_empty(), "plaintext in {leaked:?}");
    env.set_var("STRATA_PASSWORD", "not it");
    let out = env.run(&["list"]);
    assert!(
        stderr(&out).contains("wrong passphrase"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_writer_paused_past_its_lease_does_not_commit() {
    let (env, _) = s3_env("paused");
    // Short leases: 6 s, renewed every 1.5 s, changes refused with less than 2 s left.
    env.set_var("STRATA_S3_LEASE_SECS", "6");
    env.init();
    // A's source waits for a file the test creates once A has been paused and resumed.
    let go = env.path("go");
    let source = format!(
        "while [ ! -e {} ]; do sleep 0.1; done; echo from-a=a.txt",
        go.display()
    );
    let a = env
        .cmd()
        .args(["backup", "--from-command", &source])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // A holds the lease (its pid is in the lease object) and is reading its source; then it is
    // paused past its lease.
    let backend = direct_backend(&env);
    let until = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        use strata::storage::Backend;
        let holder = backend
            .get(strata::s3::LOCK_OBJECT)
            .ok()
            .and_then(|b| serde_json::from_slice::<strata::s3::LeaseInfo>(&b).ok());
        if holder.is_some_and(|h| h.pid == a.id()) {
            break;
        }
        assert!(
            std::time::Instant::now() < until,
            "the first writer never took the lease"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // SAFETY: signals to our own child.
    unsafe { libc::kill(a.id() as i32, libc::SIGSTOP) };
    std::thread::sleep(Duration::from_secs(8));
    // B, on another machine (its own cache), finds the lease expired, takes it, backs up and
    // gives it back.
    let src = tree(&env, 10);
    env.set_var("XDG_CACHE_HOME", env.path("cache-b").to_str().unwrap());
    let id_b = env.backup(&[&src]);
    unsafe { libc::kill(a.id() as i32, libc::SIGCONT) };
    write(&go, b"");
    let out = a.wait_with_output().unwrap();
    assert!(
        !out.status.success(),
        "the paused writer committed after its lease expired"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("lease"), "{err}");
    let listed = env.json(&["list"]);
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed[0]["id"], id_b.as_str());
    env.ok(&["verify", "--read-data"]);
}

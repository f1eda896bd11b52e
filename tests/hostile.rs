//! Hand-made snapshots: manifests that try to write outside the restore target (`..`, absolute
//! paths, a symlink and then a path through it), duplicate paths, absurd sizes, a chunk list
//! that does not add up, and an unknown format version. Each is planted in a repository as a
//! snapshot file and picked up by `repair index`, as a tampered repository would present it;
//! restore refuses it with a clear error and writes nothing outside the target, and verify
//! names it.

mod common;
use common::*;
use std::fs;
use std::path::Path;
use strata::manifest::{Content, Entry, EntryKind, MAGIC, Manifest};

/// A repository with one real snapshot of `src/` (a file `a.txt` and a directory `d`); returns
/// its manifest.
fn setup(env: &Env) -> Manifest {
    env.init();
    let src = env.path("src");
    fs::create_dir_all(src.join("d")).unwrap();
    write(&src.join("a.txt"), &text(50_000, 3));
    let id = env.backup(&[&src]);
    let repo = strata::Repo::open(&env.repo, false, "test").unwrap();
    let snaps = strata::snapshots::list(&repo).unwrap();
    snaps
        .into_iter()
        .find(|s| s.id.to_hex().starts_with(&id))
        .unwrap()
        .manifest
}

/// Writes `m` as a snapshot file of the repository and rebuilds the index so it is listed.
fn plant(env: &Env, m: &Manifest) -> String {
    let (id, bytes) = m.encode(None).unwrap();
    plant_bytes(env, &id.to_hex(), &bytes);
    id.to_hex()
}

fn plant_bytes(env: &Env, hex: &str, bytes: &[u8]) {
    fs::write(env.repo.join(format!("snapshots/{hex}.snap")), bytes).unwrap();
    env.ok(&["repair", "index"]);
}

fn file_entry(real: &Manifest, path: &str) -> Entry {
    let mut e = real
        .entries
        .iter()
        .find(|e| e.kind == EntryKind::File)
        .unwrap()
        .clone();
    e.path = path.as_bytes().to_vec();
    e
}

/// Restores `id` into a fresh target below `env`; returns (exit code, stderr).
fn restore(env: &Env, id: &str, target: &Path) -> (i32, String) {
    let out = env.run(&["restore", &id[..16], &target.display().to_string()]);
    (code(&out), stderr(&out))
}

/// Everything below the scratch directory that is not the repository, the sources, or the
/// restore target: what a hostile snapshot must never create.
fn outside(env: &Env, target: &Path) -> Vec<String> {
    let mut found = vec![];
    for e in fs::read_dir(env.dir.path()).unwrap() {
        let p = e.unwrap().path();
        if p == env.repo || p == env.path("src") || p == target || p == env.path("xdg") {
            continue;
        }
        found.push(p.display().to_string());
    }
    found
}

#[test]
fn paths_that_escape_the_target_are_refused() {
    let env = Env::new();
    let real = setup(&env);
    for (k, bad) in [
        "src/../../escaped",
        "/tmp/strata-hostile-absolute",
        "src/./a",
        "src//a",
        "",
        "..",
    ]
    .into_iter()
    .enumerate()
    {
        let mut m = real.clone();
        m.time_ns += k as i64 + 1;
        m.entries.push(file_entry(&real, bad));
        let id = plant(&env, &m);
        let target = env.path(&format!("t{k}"));
        let (status, err) = restore(&env, &id, &target);
        assert_ne!(status, 0, "{bad:?} restored");
        assert!(err.contains("unsafe path"), "{bad:?}: {err}");
        assert_eq!(outside(&env, &target), Vec::<String>::new(), "{bad:?}");
        assert!(!Path::new("/tmp/strata-hostile-absolute").exists());
        // verify names the snapshot and the path.
        let out = env.run(&["verify"]);
        assert_ne!(code(&out), 0);
        assert!(
            String::from_utf8_lossy(&out.stdout).contains(&id[..8])
                || stderr(&out).contains(&id[..8]),
            "{bad:?}: verify does not name {}: {} {}",
            &id[..8],
            String::from_utf8_lossy(&out.stdout),
            stderr(&out)
        );
        // Take it out again for the next case.
        env.ok(&["delete", &id[..16]]);
    }
}

#[test]
fn a_file_through_a_restored_symlink_is_not_written_outside() {
    let env = Env::new();
    let real = setup(&env);
    let escape = env.path("escape");
    for (k, link_target) in [escape.display().to_string(), "../../escape".to_string()]
        .into_iter()
        .enumerate()
    {
        let mut m = real.clone();
        m.time_ns += k as i64 + 1;
        m.entries.push(Entry {
            path: b"src/link".to_vec(),
            kind: EntryKind::Symlink,
            mode: 0o777,
            uid: 0,
            gid: 0,
            mtime_ns: 0,
            size: 0,
            content: Content::Empty,
            target: Some(link_target.as_bytes().to_vec()),
            page_size: 0,
            through_sqlite: false,
        });
        // A file below the link.
        m.entries.push(file_entry(&real, "src/link/planted"));
        let id = plant(&env, &m);
        fs::create_dir_all(&escape).unwrap();
        let target = env.path(&format!("t{k}"));
        let (status, err) = restore(&env, &id, &target);
        assert_ne!(status, 0, "restored a file through a symlink");
        assert!(err.contains("src/link"), "{err}");
        assert!(
            !escape.join("planted").exists(),
            "written through the symlink: {err}"
        );
        assert_eq!(fs::read_dir(&escape).unwrap().count(), 0, "{err}");
        fs::remove_dir(&escape).unwrap();
        // Whatever was restored lies inside the target.
        for f in files_below(&target)
            .into_iter()
            .chain([target.join("src/link")])
        {
            assert!(f.starts_with(&target), "{}", f.display());
        }
        env.ok(&["delete", &id[..16]]);
    }
}

#[test]
fn duplicate_paths_are_refused() {
    let env = Env::new();
    let real = setup(&env);
    let mut empty = file_entry(&real, "src/a.txt");
    empty.content = Content::Empty;
    empty.size = 0;
    // The same file twice with different content, and a path that is a directory and a file.
    for (k, twice) in [empty, file_entry(&real, "src/d")].into_iter().enumerate() {
        let mut m = real.clone();
        m.time_ns += k as i64 + 1;
        let path = twice.path_lossy();
        m.entries.push(twice);
        let id = plant(&env, &m);
        let target = env.path(&format!("t{k}"));
        let (status, err) = restore(&env, &id, &target);
        assert_ne!(status, 0);
        assert!(err.contains(&format!("{path:?} more than once")), "{err}");
        assert!(!target.exists(), "restored part of it");
        let out = env.run(&["verify"]);
        assert_ne!(code(&out), 0);
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("path recorded more than once"),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        env.ok(&["delete", &id[..16]]);
    }
}

#[test]
fn sizes_that_do_not_match_the_chunks_are_refused_without_huge_allocations() {
    let env = Env::new();
    let real = setup(&env);
    for (k, size) in [u64::MAX, 1 << 50, 49_999, 50_001, 0]
        .into_iter()
        .enumerate()
    {
        let mut m = real.clone();
        m.time_ns += k as i64 + 1;
        for e in m.entries.iter_mut().filter(|e| e.kind == EntryKind::File) {
            e.size = size;
        }
        let id = plant(&env, &m);
        let target = env.path(&format!("t{k}"));
        let (status, err) = restore(&env, &id, &target);
        assert_ne!(status, 0, "size {size} restored");
        assert!(
            err.contains("a.txt") && (err.contains("size") || err.contains("bytes")),
            "size {size}: {err}"
        );
        // Nothing wrong was put in place.
        assert!(!target.join("src/a.txt").exists(), "size {size}");
        env.ok(&["delete", &id[..16]]);
    }
}

#[test]
fn content_that_is_not_in_the_repository_is_refused() {
    let env = Env::new();
    let real = setup(&env);
    let mut m = real.clone();
    m.time_ns += 1;
    for e in m.entries.iter_mut().filter(|e| e.kind == EntryKind::File) {
        e.content = Content::Tree(strata::ChunkId([0xAB; 32]));
    }
    let id = plant(&env, &m);
    let (status, err) = restore(&env, &id, &env.path("t"));
    assert_ne!(status, 0);
    assert!(err.contains("a.txt"), "{err}");
    assert!(!env.path("t/src/a.txt").exists());
}

#[test]
fn an_unknown_manifest_version_is_named() {
    let env = Env::new();
    let real = setup(&env);
    let (id, _) = real.encode(None).unwrap();
    let plain = zstd::bulk::compress(&strata::codec::encode(&real).unwrap(), 3).unwrap();
    let future = strata::codec::frame::wrap(MAGIC, 99, &plain);
    fs::remove_file(env.repo.join(format!("snapshots/{}.snap", id.to_hex()))).unwrap();
    fs::write(
        env.repo.join(format!("snapshots/{}.snap", id.to_hex())),
        &future,
    )
    .unwrap();
    let out = env.run(&["repair", "index"]);
    let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert!(all.contains("version 99"), "{all}");
}

#[test]
fn absurd_counts_and_lengths_fail_cleanly() {
    let env = Env::new();
    let real = setup(&env);
    let plain = strata::codec::encode(&real).unwrap();
    // At every position, a varint claiming u64::MAX (a length or count of that many items).
    let mut refused = 0;
    for i in 0..plain.len() {
        let mut bytes = plain[..i].to_vec();
        bytes.push(253);
        bytes.extend_from_slice(&[0xFF; 8]);
        bytes.extend_from_slice(&plain[i..]);
        if strata::codec::decode::<Manifest>(&bytes, "test").is_err() {
            refused += 1;
        }
    }
    assert!(refused > plain.len() / 2, "{refused} of {}", plain.len());
    // A manifest file whose payload inflates past the decoder's limit.
    let bomb = zstd::bulk::compress(&vec![0u8; strata::codec::DECODE_LIMIT + 4096], 3).unwrap();
    let framed = strata::codec::frame::wrap(MAGIC, strata::manifest::VERSION, &bomb);
    let err = Manifest::decode(&framed, None, None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("snapshot manifest"), "{err}");
    let name = format!("snapshots/{}.snap", "ab".repeat(32));
    fs::write(env.repo.join(&name), &framed).unwrap();
    let out = env.run(&["repair", "index"]);
    let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert!(all.contains(&format!("skipped: {name}")), "{all}");
    assert!(all.contains("at most 256 MiB"), "{all}");
    let out = env.run(&["verify"]);
    let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert_ne!(code(&out), 0);
    assert!(
        all.contains(&format!(
            "{name}: snapshot file not in the index and unreadable"
        )),
        "{all}"
    );
}

/// A file of one chunk whose manifest entry claims 2^62 bytes (or any size but the chunk's) is
/// refused with an error naming it, before anything is allocated for it: no abort, nothing left
/// in the target, the other files restored. A file of a chunk-list tree likewise. Verify
/// reports both.
#[test]
fn a_size_that_disagrees_with_the_chunks_is_refused_before_allocating() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    write(&src.join("one.txt"), b"a file of a single chunk\n");
    write(&src.join("many.bin"), &noise(200_000, 5));
    write(&src.join("other.txt"), b"restored all the same");
    let id = env.backup(&[&src]);
    let repo = strata::Repo::open(&env.repo, false, "test").unwrap();
    let real = strata::snapshots::list(&repo)
        .unwrap()
        .into_iter()
        .find(|s| s.id.to_hex().starts_with(&id))
        .unwrap()
        .manifest;
    drop(repo);
    let cases = [
        ("src/one.txt", 1u64 << 62),
        ("src/one.txt", u64::MAX),
        ("src/one.txt", 26),
        ("src/one.txt", 0),
        ("src/many.bin", 1 << 62),
        ("src/many.bin", 200_001),
    ];
    for (k, (path, size)) in cases.into_iter().enumerate() {
        let mut m = real.clone();
        m.time_ns += k as i64 + 1;
        let e = m
            .entries
            .iter_mut()
            .find(|e| e.path == path.as_bytes())
            .unwrap();
        if path == "src/one.txt" {
            assert!(matches!(e.content, Content::Chunk(_)), "{:?}", e.content);
        } else {
            assert!(matches!(e.content, Content::Tree(_)), "{:?}", e.content);
        }
        e.size = size;
        let hostile = plant(&env, &m);
        let target = env.path(&format!("t{k}"));
        let (status, err) = restore(&env, &hostile, &target);
        assert_eq!(status, 3, "{path} claiming {size}: {err}");
        assert!(!err.contains("memory allocation"), "{err}");
        assert!(
            err.contains(path) && err.contains(&format!("{size} bytes")),
            "{path} claiming {size}: {err}"
        );
        assert!(!target.join(path).exists(), "{path} claiming {size}");
        assert_eq!(
            fs::read(target.join("src/other.txt")).unwrap(),
            b"restored all the same"
        );
        assert_eq!(strata_leftovers(&target), Vec::<String>::new());
        // Written to standard output, the same refusal.
        let out = env.run(&["restore", &hostile[..16], "--to-stdout", "--path", path]);
        assert_ne!(code(&out), 0, "{path} claiming {size}");
        assert!(
            !stderr(&out).contains("memory allocation"),
            "{}",
            stderr(&out)
        );
        let out = env.run(&["verify"]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(code(&out), 3, "{path} claiming {size}: {stdout}");
        assert!(
            stdout.contains(&hostile[..8])
                && stdout.contains(path)
                && stdout.contains("chunk list holds"),
            "{path} claiming {size}: {stdout}"
        );
        env.ok(&["delete", &hostile[..16]]);
    }
    env.ok(&["verify"]);
}

//! Encrypted repositories: the same round trip, dedup and gc as unencrypted ones; nothing in
//! the repository's files reveals content or names; tampering is detected; passphrases and key
//! files behave.

mod common;
use common::*;
use std::fs;
use std::path::Path;

const PASS: &str = "correct horse battery staple";

/// An encrypted repository, with a cheap key derivation (the parameters are stored per key
/// file; the default costs about half a second per command).
fn encrypted_env() -> Env {
    let env = Env::new();
    env.set_var("STRATA_PASSWORD", PASS);
    env.set_var("STRATA_KDF_MEMORY_KIB", "8192");
    env.ok(&["init", "--encrypt"]);
    env
}

/// The id of the key file marked current in `key list --json` output.
fn key_in_use(list: &serde_json::Value) -> String {
    list.as_array()
        .unwrap()
        .iter()
        .find(|k| k["current"] == true)
        .expect("a current key")["id"]
        .as_str()
        .unwrap()
        .to_string()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Repository files holding any of `needles`.
fn files_containing(root: &Path, needles: &[&[u8]]) -> Vec<String> {
    files_below(root)
        .into_iter()
        .filter(|p| {
            let bytes = fs::read(p).unwrap();
            needles.iter().any(|n| contains(&bytes, n))
        })
        .map(|p| p.display().to_string())
        .collect()
}

#[test]
fn round_trip_dedup_and_gc_on_an_encrypted_repository() {
    let env = encrypted_env();
    let src = env.path("src");
    write(&src.join("notes.txt"), &text(200_000, 1));
    write(&src.join("blob.bin"), &noise(3 << 20, 2));
    write(&src.join("empty"), b"");
    write(&src.join("deep/memory.json"), br#"{"facts":[1,2,3]}"#);
    let first = env.backup(&[&src]);
    let out = env.path("out");
    env.ok(&["restore", &first, out.to_str().unwrap()]);
    assert_same_tree(&src, &out.join("src"));

    // Unchanged data adds (almost) nothing.
    std::thread::sleep(std::time::Duration::from_millis(200));
    let second = env.backup(&[&src]);
    let stats = &env.json(&["show", &second])["stats"];
    assert_eq!(stats["new_raw_bytes"], 0, "{stats}");

    // A changed file: the rest deduplicates.
    let mut changed = noise(3 << 20, 2);
    changed[1_000_000..1_000_100].fill(7);
    write(&src.join("blob.bin"), &changed);
    let third = env.backup(&[&src]);
    let added = env.json(&["show", &third])["stats"]["new_raw_bytes"]
        .as_u64()
        .unwrap();
    assert!(added < 200_000, "a 100-byte change added {added} bytes");

    // Forget and gc reclaim, and what is left still verifies and restores.
    env.ok(&["forget", &first, &second]);
    env.ok(&["gc", "--max-unused", "0%"]);
    env.ok(&["verify", "--read-data"]);
    let out2 = env.path("out2");
    env.ok(&["restore", &third, out2.to_str().unwrap()]);
    assert_same_tree(&src, &out2.join("src"));
    // The index can be rebuilt from the encrypted files alone.
    fs::remove_file(env.repo.join("index.redb")).unwrap();
    env.ok(&["repair", "index"]);
    env.ok(&["verify", "--read-data"]);
}

#[test]
fn no_plaintext_names_or_plain_hashes_in_the_repository() {
    let marker = b"STRATA-MARKER-c3a9e1f0-unique-string";
    // Incompressible data around the marker, so compression cannot be what hides it.
    let mut data = noise(300_000, 9);
    for at in [0usize, 100_000, 250_000] {
        data[at..at + marker.len()].copy_from_slice(marker);
    }
    let small = [&marker[..], b" alone"].concat();
    let name = "secret-STRATA-NAME-7f41.txt";
    let check = |env: &Env| {
        let src = env.path("src");
        write(&src.join("data.bin"), &data);
        write(&src.join("small.txt"), &small);
        write(&src.join(name), b"x");
        env.backup(&[&src]);
        let plain_hash = blake3::hash(&small);
        files_containing(&env.repo, &[marker, name.as_bytes(), plain_hash.as_bytes()])
    };
    // Unencrypted, the marker is there to be found: the check can fail.
    let plain = Env::new();
    plain.init();
    assert!(!check(&plain).is_empty());
    let env = encrypted_env();
    let found = check(&env);
    assert!(found.is_empty(), "plaintext found in {found:?}");
}

/// Flips one bit in a sealed object, then fixes the outer checksum, so only authentication can
/// catch the change.
fn tamper_framed(path: &Path, at_from_end: usize) {
    let mut b = fs::read(path).unwrap();
    let body_end = b.len() - 32;
    b[body_end - at_from_end] ^= 0x01;
    let sum = blake3::hash(&b[..body_end]);
    b[body_end..].copy_from_slice(sum.as_bytes());
    fs::write(path, b).unwrap();
}

#[test]
fn tampering_with_any_kind_of_object_is_detected() {
    let env = encrypted_env();
    let src = env.path("src");
    write(&src.join("a.bin"), &noise(400_000, 3));
    write(&src.join("b.txt"), &text(100_000, 4));
    let id = env.backup(&[&src]);
    env.ok(&["config", "set", "retention.hourly", "keep-last=3"]);
    env.ok(&["verify", "--read-data"]);
    let snap_file = env.repo.join(format!("snapshots/{id}.snap"));
    let pack = packs(&env.repo).pop().unwrap();
    let pristine_pack = fs::read(&pack).unwrap();
    let pristine_snap = fs::read(&snap_file).unwrap();

    // A bit inside a frame.
    let mut b = pristine_pack.clone();
    b[16 + 30] ^= 0x04;
    fs::write(&pack, &b).unwrap();
    let r = env.run(&["verify", "--read-data"]);
    assert_eq!(code(&r), 3, "{}", stderr(&r));
    let r = env.run(&["restore", &id, env.path("o1").to_str().unwrap()]);
    assert_ne!(code(&r), 0);
    fs::write(&pack, &pristine_pack).unwrap();

    // A trailer entry changed and its checksum recomputed as an unencrypted pack's would be:
    // only the MAC can tell.
    let mut b = pristine_pack.clone();
    let n = b.len();
    let footer = n - 56;
    let t = u64::from_le_bytes(b[footer..footer + 8].try_into().unwrap()) as usize;
    b[t + 52] ^= 0x01; // a blob's raw length
    let sum = blake3::hash(&b[t..footer]);
    b[footer + 16..footer + 48].copy_from_slice(sum.as_bytes());
    fs::write(&pack, &b).unwrap();
    let r = env.run(&["verify", "--read-data"]);
    assert_eq!(code(&r), 3, "{}", stderr(&r));
    let said = format!("{}{}", stderr(&r), String::from_utf8_lossy(&r.stdout));
    assert!(said.contains("trailer checksum mismatch"), "{said}");
    fs::write(&pack, &pristine_pack).unwrap();

    // The manifest file: a flipped bit under a valid outer checksum.
    tamper_framed(&snap_file, 10);
    let r = env.run(&["verify"]);
    assert_eq!(code(&r), 3, "{}", stderr(&r));
    fs::write(&snap_file, &pristine_snap).unwrap();

    // Another snapshot's manifest in its place.
    write(&src.join("c"), b"more");
    let other = env.backup(&[&src]);
    fs::copy(env.repo.join(format!("snapshots/{other}.snap")), &snap_file).unwrap();
    let r = env.run(&["verify"]);
    assert_eq!(code(&r), 3, "{}", stderr(&r));
    fs::write(&snap_file, &pristine_snap).unwrap();

    // The retention settings: tampered, they are refused rather than obeyed.
    let settings = env.repo.join("retention");
    let pristine_settings = fs::read(&settings).unwrap();
    tamper_framed(&settings, 5);
    let r = env.run(&["forget"]);
    assert_ne!(code(&r), 0);
    assert!(
        stderr(&r).contains("authentication failed"),
        "{}",
        stderr(&r)
    );
    fs::write(&settings, &pristine_settings).unwrap();
    env.ok(&["verify", "--read-data"]);
}

#[test]
fn passphrases_and_key_files() {
    let env = encrypted_env();
    let src = env.path("src");
    write(&src.join("a.txt"), b"hello");
    let id = env.backup(&[&src]);
    let listing = |env: &Env| -> Vec<(String, u64)> {
        files_below(&env.repo)
            .into_iter()
            .map(|p| (p.display().to_string(), fs::metadata(&p).unwrap().len()))
            .collect()
    };

    // A damaged key file does not keep the others from opening the repository.
    let junk = env.repo.join("keys/0000000000000000.key");
    fs::write(&junk, b"not a key file").unwrap();
    env.ok(&["list"]);
    fs::remove_file(&junk).unwrap();

    // A wrong or missing passphrase fails before anything is read or written.
    let before = listing(&env);
    env.set_var("STRATA_PASSWORD", "wrong");
    for args in [&["list"][..], &["backup", src.to_str().unwrap()][..]] {
        let r = env.run(args);
        assert_eq!(code(&r), 1);
        assert!(stderr(&r).contains("wrong passphrase"), "{}", stderr(&r));
    }
    assert_eq!(listing(&env), before);
    let r = env
        .cmd()
        .env_remove("STRATA_PASSWORD")
        .args(["list"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(code(&r), 1);
    assert!(stderr(&r).contains("STRATA_PASSWORD"), "{}", stderr(&r));
    // --password-file works too.
    let pw = env.path("pw");
    fs::write(&pw, format!("{PASS}\n")).unwrap();
    env.ok(&["list", "--password-file", pw.to_str().unwrap()]);
    env.set_var("STRATA_PASSWORD", PASS);

    // A second passphrase; either opens the repository.
    env.set_var("STRATA_NEW_PASSWORD", "second passphrase");
    env.ok(&["key", "add"]);
    let keys = env.json(&["key", "list"]);
    assert_eq!(keys.as_array().unwrap().len(), 2);
    env.set_var("STRATA_PASSWORD", "second passphrase");
    env.ok(&["list"]);

    // The key in use and the last key cannot be removed.
    let current = key_in_use(&keys);
    let in_use = key_in_use(&env.json(&["key", "list"]));
    assert_ne!(current, in_use);
    let r = env.run(&["key", "remove", &in_use]);
    assert_ne!(code(&r), 0);
    env.ok(&["key", "remove", &current]);
    let r = env.run(&["key", "remove", &in_use]);
    assert_ne!(code(&r), 0);
    assert!(stderr(&r).contains("only one"), "{}", stderr(&r));

    // Rotation: the old passphrase stops working, the data stays.
    env.set_var("STRATA_NEW_PASSWORD", "third passphrase");
    env.ok(&["key", "passwd"]);
    let r = env.run(&["list"]);
    assert_eq!(code(&r), 1);
    env.set_var("STRATA_PASSWORD", "third passphrase");
    let out = env.path("out");
    env.ok(&["restore", &id, out.to_str().unwrap()]);
    assert_eq!(fs::read(out.join("src/a.txt")).unwrap(), b"hello");
    env.ok(&["verify", "--read-data"]);
}

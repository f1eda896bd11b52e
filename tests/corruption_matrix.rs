//! Damage at many places of every kind of repository file: bytes flipped in pack headers, frames
//! (data and chunk-list nodes), trailers and footers, in manifest files and the config; packs
//! and manifests truncated or deleted. For every case, on a fresh copy of the same repository:
//!
//! - `verify --read-data` finds it (exit 3, or a clear error for the config) and names a
//!   damaged snapshot;
//! - restoring every snapshot never writes a wrong byte: each file is restored exactly or not
//!   at all, and never a panic;
//! - `repair index` runs, and afterwards the same holds, with everything undamaged restorable.
//!
//! The counts are printed (`--nocapture`) for the record.

mod common;
use common::*;
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use strata::pack::{BlobKind, parse_pack};

type Tree = BTreeMap<String, Vec<u8>>;

/// A damage to apply to a copy of the repository.
enum Damage {
    Flip(PathBuf, usize),
    Truncate(PathBuf, u64),
    Delete(PathBuf),
}

impl Damage {
    fn apply(&self, from: &Path, to: &Path) -> String {
        let at = |p: &Path| to.join(p.strip_prefix(from).unwrap());
        match self {
            Damage::Flip(p, i) => {
                let p = at(p);
                let mut b = fs::read(&p).unwrap();
                b[*i] ^= 0x10;
                fs::write(&p, b).unwrap();
                format!("flip {} @{i}", p.file_name().unwrap().to_string_lossy())
            }
            Damage::Truncate(p, n) => {
                let p = at(p);
                truncate_by(&p, *n);
                format!(
                    "truncate {} by {n}",
                    p.file_name().unwrap().to_string_lossy()
                )
            }
            Damage::Delete(p) => {
                let p = at(p);
                fs::remove_file(&p).unwrap();
                format!("delete {}", p.file_name().unwrap().to_string_lossy())
            }
        }
    }
}

/// Positions worth flipping in a pack: header, a spread over every frame (data and nodes
/// alike, nodes listed separately), the trailer and each footer field.
fn pack_positions(pack: &Path) -> (Vec<usize>, usize) {
    let bytes = fs::read(pack).unwrap();
    let entries = parse_pack(&bytes, "test", None).unwrap();
    let mut at = vec![0, 7, 8, 12, 15];
    let mut nodes = 0;
    for (k, e) in entries.iter().enumerate() {
        let f = e.frame;
        if e.kind == BlobKind::Node {
            at.push((f.offset + f.stored_len as u64 / 2) as usize);
            nodes += 1;
        } else if k % 7 == 0 {
            at.push((f.offset + (k as u64 * 131) % f.stored_len as u64) as usize);
        }
    }
    let footer = bytes.len() - strata::pack::FOOTER_LEN;
    let trailer = entries
        .last()
        .map(|e| (e.frame.offset + e.frame.stored_len as u64) as usize);
    if let Some(t) = trailer {
        at.extend([t, t + 33, (t + footer) / 2, footer - 1]);
    }
    at.extend([
        footer,
        footer + 9,
        footer + 13,
        footer + 20,
        bytes.len() - 1,
    ]);
    at.sort();
    at.dedup();
    (at, nodes)
}

fn restore_all(env: &Env, snaps: &[String], originals: &BTreeMap<String, Tree>, case: &str) -> u32 {
    let mut lost = 0;
    for id in snaps {
        let out = env.path("restored");
        let _ = fs::remove_dir_all(&out);
        let r = env.run(&["restore", &id[..16], &out.display().to_string()]);
        let err = stderr(&r);
        assert!(!err.contains("panicked"), "{case}: {err}");
        let got = if out.join("src").exists() {
            file_tree(&out.join("src"))
        } else {
            Tree::new()
        };
        let want = &originals[id];
        for (path, bytes) in &got {
            assert_eq!(
                Some(bytes),
                want.get(path),
                "{case}: snapshot {} restored {path} with wrong bytes",
                &id[..8]
            );
        }
        let missing = want.keys().filter(|p| !got.contains_key(*p)).count() as u32;
        if missing > 0 || !r.status.success() {
            // A failed restore says so.
            assert_ne!(code(&r), 0, "{case}: files missing but exit 0");
        }
        lost += missing;
    }
    lost
}

#[test]
fn damage_anywhere_is_found_and_never_restored_as_wrong_bytes() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    write(&src.join("big.bin"), &noise(400_000, 1));
    write(&src.join("notes.txt"), &text(150_000, 2));
    write(&src.join("small"), b"small");
    let first = env.backup(&[&src]);
    write(&src.join("notes.txt"), &text(160_000, 3));
    write(&src.join("more.bin"), &noise(250_000, 4));
    let second = env.backup(&[&src]);
    let snaps: Vec<String> = env
        .json(&["list"])
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(snaps.len(), 2);
    let mut originals = BTreeMap::new();
    for id in [&first, &second] {
        let out = env.path("r");
        let _ = fs::remove_dir_all(&out);
        env.ok(&["restore", id, &out.display().to_string()]);
        let full = snaps.iter().find(|s| s.starts_with(id.as_str())).unwrap();
        originals.insert(full.clone(), file_tree(&out.join("src")));
    }
    let _ = fs::remove_dir_all(env.path("r"));

    // The cases.
    let pristine = env.path("pristine");
    copy_dir(&env.repo, &pristine);
    let mut cases = vec![];
    let mut node_cases = 0;
    for pack in packs(&pristine) {
        let (positions, nodes) = pack_positions(&pack);
        node_cases += nodes;
        cases.extend(positions.into_iter().map(|i| Damage::Flip(pack.clone(), i)));
        let len = fs::metadata(&pack).unwrap().len();
        for n in [1, 57, len / 2] {
            cases.push(Damage::Truncate(pack.clone(), n));
        }
        cases.push(Damage::Delete(pack.clone()));
    }
    for e in fs::read_dir(pristine.join("snapshots")).unwrap() {
        let snap = e.unwrap().path();
        let len = fs::metadata(&snap).unwrap().len() as usize;
        for i in [0, 9, 20, len / 3, len / 2, len - 40, len - 1] {
            cases.push(Damage::Flip(snap.clone(), i));
        }
        cases.push(Damage::Truncate(snap.clone(), 5));
        cases.push(Damage::Delete(snap));
    }
    assert!(node_cases >= 2, "no chunk-list nodes damaged");

    let (mut detected, mut lost_files, mut repaired) = (0, 0, 0);
    for damage in &cases {
        let _ = fs::remove_dir_all(&env.repo);
        copy_dir(&pristine, &env.repo);
        let case = damage.apply(&pristine, &env.repo);
        // A deleted manifest file is written again from the index (its second copy): that is
        // recovery, not damage left behind.
        let r = env.run(&["verify", "--read-data"]);
        let out = String::from_utf8_lossy(&r.stdout).into_owned();
        assert!(!stderr(&r).contains("panicked"), "{case}: {}", stderr(&r));
        let recovered_copy =
            matches!(damage, Damage::Delete(p) if p.extension().is_some_and(|e| e == "snap"));
        if recovered_copy {
            assert!(code(&r) == 0 || code(&r) == 3, "{case}: {out}");
        } else {
            assert_eq!(code(&r), 3, "{case}: not detected: {out}{}", stderr(&r));
            assert!(
                snaps.iter().any(|s| out.contains(&s[..8])) || out.contains(".pack"),
                "{case}: names no snapshot or pack: {out}"
            );
            detected += 1;
        }
        let lost = restore_all(&env, &snaps, &originals, &case);
        lost_files += lost;

        // Repair, then the same: nothing wrong restored, nothing undamaged lost.
        let r = env.run(&["repair", "index"]);
        assert!(r.status.success(), "{case}: repair failed: {}", stderr(&r));
        repaired += 1;
        let after = restore_all(&env, &snaps, &originals, &format!("{case}, repaired"));
        assert!(
            after <= lost,
            "{case}: repair lost {} more files",
            after - lost
        );
    }
    eprintln!(
        "corruption matrix: {} cases ({node_cases} in chunk-list nodes), {detected} detected by \
         verify (the rest: deleted manifest files, restored from the index), {lost_files} files \
         not restorable in all, {repaired} repaired",
        cases.len()
    );
    let _ = (first, second);
}

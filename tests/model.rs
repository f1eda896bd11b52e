//! Property test against a simple model: after any sequence of file edits and backups, every
//! snapshot restores to exactly the files it was taken of.

use proptest::prelude::*;
use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use strata::backup::{BackupOptions, backup};
use strata::chunker::ChunkerParams;
use strata::repo::{Config, Repo};
use strata::restore::{RestoreOptions, restore};

#[derive(Debug, Clone)]
enum Op {
    /// Write a whole file of `len` bytes of pattern `seed`.
    Write {
        file: u8,
        len: usize,
        seed: u8,
    },
    /// Append bytes.
    Append {
        file: u8,
        len: usize,
        seed: u8,
    },
    /// Overwrite bytes in the middle (same length).
    Patch {
        file: u8,
        at: usize,
        len: usize,
        seed: u8,
    },
    Delete {
        file: u8,
    },
    Backup,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u8..4, 0usize..200_000, any::<u8>()).prop_map(|(file, len, seed)| Op::Write {
            file,
            len,
            seed
        }),
        (0u8..4, 1usize..50_000, any::<u8>()).prop_map(|(file, len, seed)| Op::Append {
            file,
            len,
            seed
        }),
        (0u8..4, 0usize..200_000, 1usize..10_000, any::<u8>()).prop_map(|(file, at, len, seed)| {
            Op::Patch {
                file,
                at,
                len,
                seed,
            }
        }),
        (0u8..4).prop_map(|file| Op::Delete { file }),
        Just(Op::Backup),
    ]
}

/// Bytes that are partly compressible and partly not, so both stored forms occur.
fn bytes(len: usize, seed: u8) -> Vec<u8> {
    let mut x = seed as u64 * 0x9E37_79B9 + 1;
    (0..len)
        .map(|i| {
            if (i / 4096) % 2 == 0 {
                (i % 251) as u8 ^ seed
            } else {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            }
        })
        .collect()
}

fn name(file: u8) -> String {
    format!("f{file}.bin")
}

fn apply(op: &Op, dir: &Path, model: &mut BTreeMap<String, Vec<u8>>) {
    match *op {
        Op::Write { file, len, seed } => {
            model.insert(name(file), bytes(len, seed));
        }
        Op::Append { file, len, seed } => {
            model
                .entry(name(file))
                .or_default()
                .extend(bytes(len, seed));
        }
        Op::Patch {
            file,
            at,
            len,
            seed,
        } => {
            if let Some(data) = model.get_mut(&name(file))
                && !data.is_empty()
            {
                let at = at % data.len();
                let end = (at + len).min(data.len());
                data[at..end].copy_from_slice(&bytes(end - at, seed));
            }
        }
        Op::Delete { file } => {
            model.remove(&name(file));
        }
        Op::Backup => return,
    }
    // Mirror the model on disk.
    for f in 0..4 {
        let p = dir.join(name(f));
        match model.get(&name(f)) {
            Some(d) => fs::write(&p, d).unwrap(),
            None => {
                let _ = fs::remove_file(&p);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]
    #[test]
    fn every_snapshot_restores_exactly(ops in proptest::collection::vec(op(), 1..12)) {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("data");
        fs::create_dir_all(&src).unwrap();
        let params = ChunkerParams { min: 1024, avg: 4096, max: 16384 };
        let repo = Repo::init(&tmp.path().join("repo"), Config::new(params, 1).unwrap()).unwrap();
        let mut model = BTreeMap::new();
        let mut taken = Vec::new();
        for op in ops.iter().chain([Op::Backup].iter()) {
            apply(op, &src, &mut model);
            if let Op::Backup = op {
                let report = backup(&repo, &BackupOptions::new(vec![src.clone()])).unwrap();
                taken.push((report.manifest, model.clone()));
            }
        }
        for (i, (manifest, expected)) in taken.iter().enumerate() {
            let target = tmp.path().join(format!("restore-{i}"));
            let r = restore(&repo, manifest, &RestoreOptions::new(target.clone())).unwrap();
            prop_assert!(r.errors.is_empty(), "{:?}", r.errors);
            let mut got = BTreeMap::new();
            for e in fs::read_dir(target.join("data")).unwrap() {
                let e = e.unwrap();
                got.insert(e.file_name().to_string_lossy().into_owned(), fs::read(e.path()).unwrap());
            }
            prop_assert!(&got == expected, "snapshot {} differs from the model", i);
        }
        let v = strata::verify::verify(&repo, true).unwrap();
        prop_assert!(v.ok(), "{:?}", v.problems);
    }
}

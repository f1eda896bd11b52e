//! Entry points of the fuzz targets in `fuzz/`, also replayed over their committed corpora by
//! `cargo test` (`tests/fuzz_corpus.rs`). Each takes untrusted bytes and runs one decoder of
//! what strata reads from disk; it panics only when an invariant breaks (a decoder must return
//! an error, never panic, loop or allocate without bound). [`model`] runs random operation
//! sequences on a repository whose storage fails on purpose and checks them against a model.
#![doc(hidden)]

use crate::backup::{BackupOptions, backup};
use crate::crypto::Keys;
use crate::gc::{GcOptions, gc, remove_snapshots};
use crate::id::SnapshotId;
use crate::repo::{Config, Repo};
use crate::restore::{RestoreOptions, restore};
use crate::storage::{Fault, FaultyBackend, LocalBackend};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn keys() -> Keys {
    Keys::from_master(&[7u8; 32])
}

/// Pack files: the trailer and footer, plain and MAC'd; every entry it accepts lies inside the
/// pack, and every accepted frame decodes or fails cleanly. The input is tried as it is and,
/// when its footer parses, with the trailer checksum made right, so the fuzzer reaches the
/// entries behind the checksum.
pub fn pack(data: &[u8]) {
    use crate::pack::{FOOTER_LEN, parse_footer, parse_pack};
    let keys = keys();
    let mut inputs = vec![data.to_vec()];
    if data.len() >= FOOTER_LEN {
        let footer_at = data.len() - FOOTER_LEN;
        if let Ok((offset, _)) = parse_footer(&data[footer_at..], data.len() as u64, "fuzz") {
            let trailer = &data[offset as usize..footer_at];
            for sum in [
                blake3::hash(trailer),
                blake3::keyed_hash(keys.mac_key(), trailer),
            ] {
                let mut fixed = data.to_vec();
                fixed[footer_at + 16..footer_at + 48].copy_from_slice(sum.as_bytes());
                inputs.push(fixed);
            }
        }
    }
    // Salvage reads damaged packs: what it keeps lies inside the pack.
    for e in crate::pack::salvage(data, None) {
        assert!(e.frame.offset + e.frame.stored_len as u64 <= data.len() as u64);
    }
    for input in &inputs {
        for mac in [None, Some(keys.mac_key())] {
            let Ok(entries) = parse_pack(input, "fuzz", mac) else {
                continue;
            };
            for e in entries {
                let end = e.frame.offset + e.frame.stored_len as u64;
                assert!(end <= input.len() as u64, "entry beyond the pack: {e:?}");
                assert!(e.offset_in_frame as u64 + e.raw_len as u64 <= e.frame.raw_len as u64);
                let stored = &input[e.frame.offset as usize..end as usize];
                let mut raw = vec![0u8; e.frame.raw_len as usize];
                let _ = crate::pack::decode_stored(
                    None,
                    stored,
                    e.frame.compression,
                    e.frame.offset,
                    "fuzz",
                    &mut raw,
                );
            }
        }
    }
}

/// Snapshot manifests: raw, behind a valid frame (so the input reaches zstd and bincode), and
/// sealed; whatever decodes encodes and decodes again to the same manifest.
pub fn manifest(data: &[u8]) {
    use crate::manifest::{MAGIC, Manifest, VERSION};
    let keys = keys();
    let check = |m: Manifest, keys: Option<&Keys>| {
        let (id, bytes) = m.encode(keys).expect("a decoded manifest encodes");
        let again = Manifest::decode(&bytes, Some(&id), keys).expect("and decodes again");
        assert_eq!(
            crate::codec::encode(&again).unwrap(),
            crate::codec::encode(&m).unwrap()
        );
    };
    if let Ok(m) = Manifest::decode(data, None, None) {
        check(m, None);
    }
    let _ = Manifest::decode(data, None, Some(&keys));
    for version in 1..=VERSION {
        let framed = crate::codec::frame::wrap(MAGIC, version, data);
        if let Ok(m) = Manifest::decode(&framed, None, None) {
            check(m, None);
        }
        let compressed = zstd::bulk::compress(data, 1).unwrap_or_default();
        let framed = crate::codec::frame::wrap(MAGIC, version, &compressed);
        if let Ok(m) = Manifest::decode(&framed, None, None) {
            check(m, None);
        }
    }
    if let Ok(sealed) = keys.seal(crate::crypto::Object::Manifest, data) {
        let framed = crate::codec::frame::wrap(MAGIC, VERSION, &sealed);
        if let Ok(m) = Manifest::decode(&framed, None, Some(&keys)) {
            check(m, Some(&keys));
        }
    }
}

/// Node blobs, chunk-list tree nodes and page maps: what decodes encodes to the same bytes, and
/// a map's pages are found where its extents say, and nowhere else.
pub fn node(data: &[u8]) {
    if let Ok(node) = crate::tree::Node::decode(data, &"fuzz") {
        assert_eq!(node.encode(), data);
    }
    if let Ok(map) = crate::pagemap::PageMap::decode(data, &"fuzz") {
        assert_eq!(map.encode(), data);
        for e in map.extents.iter().take(64) {
            let run = map.runs[e.run as usize];
            assert_eq!(map.locate(e.first), Some((run, e.slot)));
            assert_eq!(
                map.locate(e.first + e.count - 1),
                Some((run, e.slot + e.count - 1))
            );
        }
        let _ = map.check_base();
        let _ = crate::pagemap::PageMap::overlay(&map, &map);
    }
}

/// The repository config, raw and behind a valid frame.
pub fn config(data: &[u8]) {
    crate::repo::fuzz_config(data);
    let framed =
        crate::codec::frame::wrap(crate::repo::CONFIG_MAGIC, crate::repo::CONFIG_VERSION, data);
    crate::repo::fuzz_config(&framed);
}

/// The lock file: any bytes are a holder or an error.
pub fn lock(data: &[u8]) {
    let _ = crate::repo::parse_lock(data);
}

/// Key files, raw and framed; a decoded key file with a wrong passphrase never unwraps.
pub fn key_file(data: &[u8]) {
    use crate::crypto::{KEY_MAGIC, KEY_VERSION, KeyFile};
    let framed = crate::codec::frame::wrap(KEY_MAGIC, KEY_VERSION, data);
    for bytes in [data, &framed[..]] {
        if let Ok(k) = KeyFile::decode(bytes, "fuzz") {
            // Unwrapping runs the KDF at the file's own cost: tried only when that is small
            // (`unwrap_master` bounds it at 4 GiB and 64 passes, too slow for a fuzzer).
            if k.memory_kib <= 64
                && k.passes <= 2
                && let Ok(Some(_)) = k.unwrap_master("fuzz", "fuzz")
            {
                panic!("a key file from fuzz input unwrapped with a guessed passphrase");
            }
        }
    }
}

/// Retention settings and file-cache entries of the index.
pub fn settings(data: &[u8]) {
    use crate::retention::{SETTINGS_MAGIC, SETTINGS_VERSION, Settings};
    let framed = crate::codec::frame::wrap(SETTINGS_MAGIC, SETTINGS_VERSION, data);
    let _ = Settings::decode(data, None);
    let _ = Settings::decode(&framed, None);
    let _ = Settings::decode(&framed, Some(&keys()));
    let _ = crate::index::FileStamp::decode(data);
    // Page digests: any bytes, and bytes that pass the checksum so the decoder itself runs.
    let _ = crate::pagesums::PageSums::from_file_bytes(data, None);
    let _ = crate::pagesums::PageSums::from_file_bytes(data, Some(&keys()));
    let mut checked = data.to_vec();
    checked.extend_from_slice(&twox_hash::XxHash3_64::oneshot(data).to_le_bytes());
    if let Some(sums) = crate::pagesums::PageSums::from_file_bytes(&checked, None) {
        assert_eq!(
            sums.encode().as_deref(),
            Some(data),
            "page sums re-encode differently"
        );
    }
    if data.len() >= crate::index::BLOB_LOC_LEN {
        let b: [u8; crate::index::BLOB_LOC_LEN] =
            data[..crate::index::BLOB_LOC_LEN].try_into().unwrap();
        let _ = crate::index::BlobLoc::decode(&b);
    }
}

/// Reads fuzz input as a sequence of small numbers.
struct Script<'a> {
    data: &'a [u8],
}

impl Script<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.data.split_first()?;
        self.data = rest;
        Some(b)
    }
}

type Tree = BTreeMap<String, Vec<u8>>;

/// Deterministic bytes: `len` of them from `seed`.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A small tree for generation `g`: a file shared by all generations, one shared by
/// neighbours, one of its own, and sometimes an empty file.
fn generation(g: u8) -> Tree {
    let mut t = Tree::new();
    t.insert("shared.bin".into(), noise(150_000, 1));
    t.insert(
        format!("pair{}.bin", g / 2),
        noise(40_000, 100 + g as u64 / 2),
    );
    let mut own = noise(20_000, 1000 + g as u64);
    own.extend_from_slice(&noise(60_000, 1));
    t.insert(format!("d{}/own.bin", g % 3), own);
    if g.is_multiple_of(4) {
        t.insert("empty".into(), vec![]);
    }
    t
}

fn write_tree(dir: &Path, tree: &Tree) {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    for (rel, data) in tree {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    }
}

fn read_tree(dir: &Path, rel: &str, out: &mut Tree) {
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let name = format!("{rel}{}", e.file_name().to_string_lossy());
        if e.file_type().unwrap().is_dir() {
            read_tree(&e.path(), &format!("{name}/"), out);
        } else {
            out.insert(name, std::fs::read(e.path()).unwrap());
        }
    }
}

/// A scratch directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Scratch {
        let mut r = [0u8; 8];
        crate::sys::getrandom(&mut r);
        let hex: String = r.iter().map(|b| format!("{b:02x}")).collect();
        let p = std::env::temp_dir().join(format!("strata-model-{hex}"));
        std::fs::create_dir_all(&p).unwrap();
        Scratch(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What the model knows of the repository.
#[derive(Default)]
struct Model {
    /// Snapshots that must be listed, with what they hold.
    must: BTreeMap<SnapshotId, Tree>,
    /// Snapshots that may be listed (an operation that failed may or may not have made them, or
    /// removed them), with what they hold.
    may: BTreeMap<SnapshotId, Tree>,
    /// Trees of backups that failed: a listed snapshot the model does not know must be one.
    attempted: Vec<Tree>,
}

/// Runs `op` on the repository at `root` through a backend that injects `fault` after `budget`
/// operations (`None`: no fault). A failure must come from the injected fault.
fn with_faults<T>(
    root: &Path,
    write: bool,
    fault: Option<(u64, Fault)>,
    op: impl FnOnce(&Repo) -> crate::Result<T>,
) -> Option<T> {
    let inner = Box::new(LocalBackend::new(root));
    let backend: Box<dyn crate::storage::Backend> = match fault {
        Some((budget, f)) => Box::new(FaultyBackend::new(inner, budget, f)),
        None => inner,
    };
    let result = crate::repo::OpenOptions::new("model")
        .write(write)
        .backend(backend)
        .open(root)
        .and_then(|r| op(&r));
    // A process stopped by the fault leaves its lock behind; a new process takes it over.
    let _ = std::fs::remove_file(root.join(crate::repo::LOCK_NAME));
    match result {
        Ok(v) => Some(v),
        Err(e) if fault.is_some() && e.to_string().contains("injected fault") => None,
        Err(e) => panic!("failed without an injected fault: {e}"),
    }
}

/// Checks the repository against the model: it verifies with every byte read, every snapshot
/// the model requires is listed, every listed one is known, and each restores exactly.
fn check(root: &Path, model: &mut Model, scratch: &Path) {
    let repo = Repo::open(root, true, "check").expect("the repository opens");
    let report = crate::verify::verify(&repo, true).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    let listed = crate::snapshots::list(&repo).unwrap();
    for id in model.must.keys() {
        assert!(
            listed.iter().any(|s| s.id == *id),
            "snapshot {} lost",
            id.short()
        );
    }
    let out = scratch.join("restored");
    for s in &listed {
        let _ = std::fs::remove_dir_all(&out);
        restore(&repo, &s.manifest, &RestoreOptions::new(out.clone())).unwrap();
        let mut got = Tree::new();
        if out.join("src").exists() {
            read_tree(&out.join("src"), "", &mut got);
        }
        let known = model.must.get(&s.id).or_else(|| model.may.get(&s.id));
        match known {
            Some(t) => assert_eq!(&got, t, "snapshot {} restored wrong", s.id.short()),
            None => {
                // A backup that reported failure but committed: it must hold one of the trees
                // attempted, and from now on it is a snapshot like any other (may be forgotten).
                assert!(
                    model.attempted.contains(&got),
                    "unknown snapshot {} restored to something never backed up",
                    s.id.short()
                );
                model.may.insert(s.id, got);
            }
        }
    }
    // What is not listed is gone for good.
    model.may.retain(|id, _| listed.iter().any(|s| s.id == *id));
}

/// Random sequences of backup, forget, gc and restore, each possibly under an injected fault,
/// checked against [`Model`] after every step.
pub fn model(data: &[u8]) {
    let mut script = Script { data };
    let scratch = Scratch::new();
    let root = scratch.0.join("repo");
    let src = scratch.0.join("src");
    let mut config = Config::new(Default::default(), 1).unwrap();
    config.pack_target = 64 << 10;
    drop(Repo::init(&root, config).unwrap());
    let mut model = Model::default();
    let mut steps = 0;
    while let Some(op) = script.byte() {
        steps += 1;
        if steps > 12 {
            break;
        }
        let fault = match script.byte().unwrap_or(255) {
            b if b < 96 => Some((b as u64 / 2, Fault::WriteError)),
            b if b < 192 => Some(((b - 96) as u64 / 2, Fault::Crash)),
            _ => None,
        };
        let arg = script.byte().unwrap_or(0);
        match op % 4 {
            0 => {
                let tree = generation(arg % 16);
                write_tree(&src, &tree);
                let done = with_faults(&root, true, fault, |repo| {
                    backup(repo, &BackupOptions::new(vec![src.clone()]))
                });
                match done {
                    Some(r) => {
                        model.may.remove(&r.id);
                        model.must.insert(r.id, tree);
                    }
                    None => model.attempted.push(tree),
                }
            }
            1 => {
                let all: Vec<SnapshotId> =
                    model.must.keys().chain(model.may.keys()).copied().collect();
                if all.is_empty() {
                    continue;
                }
                let id = all[arg as usize % all.len()];
                let done = with_faults(&root, true, fault, |repo| remove_snapshots(repo, &[id]));
                let tree = model.must.remove(&id).or_else(|| model.may.remove(&id));
                if done.is_none() {
                    // Perhaps removed, perhaps not.
                    model.may.insert(id, tree.unwrap());
                }
            }
            2 => {
                let opts = GcOptions {
                    dry_run: false,
                    max_unused: [0.0, 0.1, 1.0][arg as usize % 3],
                };
                with_faults(&root, true, fault, |repo| gc(repo, &opts));
            }
            _ => {
                // Restore under read faults: complete and right, or failed; never wrong bytes.
                let Some((&id, tree)) = model
                    .must
                    .iter()
                    .nth(arg as usize % model.must.len().max(1))
                else {
                    continue;
                };
                let tree = tree.clone();
                let out = scratch.0.join("out");
                let _ = std::fs::remove_dir_all(&out);
                let done = with_faults(&root, false, fault, |repo| {
                    let manifest = crate::snapshots::list(repo)?
                        .into_iter()
                        .find(|s| s.id == id)
                        .expect("a committed snapshot is listed")
                        .manifest;
                    restore(repo, &manifest, &RestoreOptions::new(out.clone()))
                });
                if let Some(report) = done
                    && report.errors.is_empty()
                {
                    let mut got = Tree::new();
                    read_tree(&out.join("src"), "", &mut got);
                    assert_eq!(got, tree, "restore of {} wrong", id.short());
                }
            }
        }
        check(&root, &mut model, &scratch.0);
    }
}

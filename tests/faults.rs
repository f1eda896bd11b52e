//! Fault injection, the way SQLite tests its I/O errors: an operation runs against a backend
//! that fails after N repository operations, for N = 0, 1, 2, ... until the operation completes
//! without meeting the fault. After every failure the repository must verify (reading all
//! data), every snapshot committed before must restore byte for byte, and the next operation
//! must work; an operation that reported success must be durable.
//!
//! Two faults: a disk whose writes start failing (reads go on), and a process that stops dead
//! (nothing after the fault happens, not even reads).

mod common;
use common::{file_tree, noise, strata_leftovers};
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use strata::backup::{BackupOptions, backup};
use strata::gc::{GcOptions, gc, remove_snapshots};
use strata::id::SnapshotId;
use strata::repo::{Config, Key, OpenOptions, Repo};
use strata::restore::{RestoreOptions, restore};
use strata::storage::{Fault, FaultyBackend, LocalBackend};

type Tree = BTreeMap<String, Vec<u8>>;
/// What each committed snapshot holds.
type Committed = BTreeMap<SnapshotId, Tree>;

/// Opening with the repository's objects behind `backend`.
fn with_backend(
    backend: impl strata::storage::Backend + 'static,
    write: bool,
    command: &str,
) -> OpenOptions<'_> {
    OpenOptions::new(command)
        .write(write)
        .backend(Box::new(backend))
}

/// Opening for writing with the index file under the same faults as the objects.
fn faulty(
    root: &Path,
    backend: FaultyBackend,
    keep_some: Option<u64>,
    command: &str,
) -> strata::Result<Repo> {
    let index = backend.index_file(&root.join(strata::repo::INDEX_NAME), keep_some)?;
    let index = strata::index::IndexFile(Box::new(index));
    with_backend(backend, true, command)
        .index_file(index)
        .open(root)
}

fn write_tree(dir: &Path, tree: &Tree) {
    let _ = fs::remove_dir_all(dir);
    for (rel, data) in tree {
        let p = dir.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, data).unwrap();
    }
}

fn read_tree(dir: &Path) -> Tree {
    file_tree(dir)
}

fn generation(g: u64) -> Tree {
    let mut t = Tree::new();
    // Enough data for several small packs; part of it shared between generations.
    t.insert("shared.bin".into(), noise(600_000, 1));
    t.insert(
        format!("gen{g}.bin"),
        noise(300_000 + g as usize * 1000, 10 + g),
    );
    t.insert(
        "notes/changing.txt".into(),
        format!("generation {g}\n").repeat(500).into_bytes(),
    );
    t
}

fn copy_dir(from: &Path, to: &Path) {
    let _ = fs::remove_dir_all(to);
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let (src, dst) = (e.path(), to.join(e.file_name()));
        if e.file_type().unwrap().is_dir() {
            copy_dir(&src, &dst);
        } else {
            fs::copy(&src, &dst).unwrap();
        }
    }
}

/// A repository with small packs holding two generations; returns it and what each snapshot
/// holds.
fn base(dir: &Path) -> (PathBuf, BTreeMap<SnapshotId, Tree>) {
    let root = dir.join("base");
    let mut config = Config::new(Default::default(), 1).unwrap();
    config.pack_target = 256 << 10;
    let repo = Repo::init(&root, config).unwrap();
    let mut snaps = BTreeMap::new();
    for g in 0..2 {
        let src = dir.join("src");
        write_tree(&src, &generation(g));
        let r = backup(&repo, &BackupOptions::new(vec![src])).unwrap();
        snaps.insert(r.id, generation(g));
    }
    (root, snaps)
}

/// The invariants after any outcome: the repository (recovered by opening it for writing)
/// verifies with all data read, every snapshot in `must` is listed and restores exactly, and so
/// does every other listed snapshot that `may` knows.
fn check(root: &Path, must: &BTreeMap<SnapshotId, Tree>, may: &BTreeMap<SnapshotId, Tree>) {
    let repo = Repo::open(root, true, "check").expect("repository opens after a fault");
    let report = strata::verify::verify(&repo, true).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    let listed = strata::snapshots::list(&repo).unwrap();
    for id in must.keys() {
        assert!(
            listed.iter().any(|s| s.id == *id),
            "committed snapshot {} lost",
            id.short()
        );
    }
    let scratch = tempfile::tempdir().unwrap();
    for s in &listed {
        let expected = must
            .get(&s.id)
            .or_else(|| may.get(&s.id))
            .unwrap_or_else(|| panic!("unknown snapshot {}", s.id.short()));
        let out = scratch.path().join(s.id.to_hex());
        let r = restore(&repo, &s.manifest, &RestoreOptions::new(out.clone())).unwrap();
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        assert_eq!(&read_tree(&out.join("src")), expected, "{}", s.id.short());
    }
}

/// Runs `op` on a fresh copy of the base repository for budget 0, 1, 2, ... Returns how many
/// budgets were tried before the operation completed.
/// Whether the index file takes part in a fault loop.
#[derive(Clone, Copy, Debug)]
enum IndexFaults {
    /// Only repository objects go through the faulty backend.
    Untouched,
    /// The index too: its fsyncs spend the budget, and a crash loses what was not fsynced.
    Lost,
    /// As `Lost`, but a crash keeps a seeded part of the unsynced writes (a power loss).
    KeepSome,
}

fn fault_loop(
    name: &str,
    fault: Fault,
    index: IndexFaults,
    op: &dyn Fn(&Repo, &Path) -> strata::Result<()>,
    after: &dyn Fn(&Path, bool, &Committed),
) -> u64 {
    let dir = tempfile::tempdir().unwrap();
    let (pristine, committed) = base(dir.path());
    let work = dir.path().join("work");
    for budget in 0..10_000u64 {
        copy_dir(&pristine, &work);
        let backend = FaultyBackend::new(Box::new(LocalBackend::new(&work)), budget, fault);
        let opened = match index {
            IndexFaults::Untouched => with_backend(backend, true, name).open(&work),
            IndexFaults::Lost => faulty(&work, backend, None, name),
            IndexFaults::KeepSome => faulty(&work, backend, Some(budget), name),
        };
        let result = match opened {
            Ok(repo) => {
                let r = op(&repo, dir.path());
                drop(repo);
                r
            }
            Err(e) => Err(e),
        };
        // Crash: the process is gone; its lock is stale (same pid, so remove it as a new
        // process would find it).
        let _ = fs::remove_file(work.join("lock"));
        // A failure must come from the injected fault, not from the operation itself.
        if let Err(e) = &result {
            assert!(
                e.to_string().contains("injected fault"),
                "{name}: failed by itself: {e}"
            );
        }
        after(&work, result.is_ok(), &committed);
        if result.is_ok() {
            eprintln!(
                "{name} ({fault:?}, index {index:?}): completed with a budget of {budget} operations"
            );
            return budget + 1;
        }
    }
    panic!("{name} never completed");
}

/// Every fault, with the index untouched, failing, or losing its unsynced writes.
const MODES: [(Fault, IndexFaults); 5] = [
    (Fault::WriteError, IndexFaults::Untouched),
    (Fault::Crash, IndexFaults::Untouched),
    (Fault::WriteError, IndexFaults::Lost),
    (Fault::Crash, IndexFaults::Lost),
    (Fault::Crash, IndexFaults::KeepSome),
];

#[test]
fn backup_under_faults() {
    for (fault, index) in MODES {
        let tries = fault_loop(
            "backup",
            fault,
            index,
            &|repo, dir| {
                let src = dir.join("src");
                write_tree(&src, &generation(7));
                backup(repo, &BackupOptions::new(vec![src])).map(|_| ())
            },
            &|root, ok, committed| {
                let repo = Repo::open(root, false, "list").unwrap();
                let listed = strata::snapshots::list(&repo).unwrap();
                drop(repo);
                let mut must = BTreeMap::new();
                let mut may = BTreeMap::new();
                for s in &listed {
                    match committed.get(&s.id) {
                        Some(t) => {
                            must.insert(s.id, t.clone());
                        }
                        None => {
                            may.insert(s.id, generation(7));
                        }
                    }
                }
                assert_eq!(must.len(), 2, "an earlier snapshot was lost");
                if ok {
                    assert_eq!(may.len(), 1, "a successful backup is not listed");
                }
                check(root, &must, &may);
            },
        );
        assert!(tries > 3, "{fault:?}: only {tries} budgets");
    }
}

#[test]
fn forget_and_gc_under_faults() {
    for (fault, index) in MODES {
        for rewrite in [false, true] {
            let tries = fault_loop(
                "forget + gc",
                fault,
                index,
                &|repo, _| {
                    let snaps = strata::snapshots::list(repo)?;
                    let oldest = snaps.iter().min_by_key(|s| s.manifest.time_ns).unwrap().id;
                    remove_snapshots(repo, &[oldest])?;
                    let opts = GcOptions {
                        dry_run: false,
                        max_unused: if rewrite { 0.0 } else { 1.0 },
                    };
                    gc(repo, &opts).map(|_| ())
                },
                &|root, ok, _| {
                    let repo = Repo::open(root, false, "list").unwrap();
                    let listed = strata::snapshots::list(&repo).unwrap();
                    drop(repo);
                    // The newer generation is always there; the older one is gone once forget
                    // reported success.
                    let mut must = BTreeMap::new();
                    let mut may = BTreeMap::new();
                    let newest = listed.iter().max_by_key(|s| s.manifest.time_ns).unwrap();
                    must.insert(newest.id, generation(1));
                    for s in listed.iter().filter(|s| s.id != newest.id) {
                        may.insert(s.id, generation(0));
                    }
                    if ok {
                        assert_eq!(listed.len(), 1, "forgotten snapshot still listed");
                    }
                    check(root, &must, &may);
                    // And the next backup works.
                    let repo = Repo::open(root, true, "backup").unwrap();
                    let src = root.parent().unwrap().join("next");
                    write_tree(&src, &generation(3));
                    backup(&repo, &BackupOptions::new(vec![src])).unwrap();
                },
            );
            assert!(tries > 2, "{fault:?}: only {tries} budgets");
        }
    }
}

/// The ids of the repository's two snapshots, oldest first.
fn oldest_two(root: &Path) -> (SnapshotId, SnapshotId) {
    let repo = Repo::open(root, false, "list").unwrap();
    let mut l = strata::snapshots::list(&repo).unwrap();
    l.sort_by_key(|s| s.manifest.time_ns);
    (l[0].id, l[1].id)
}

#[test]
fn restore_under_read_faults_writes_old_or_new_never_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let (root, snaps) = base(dir.path());
    let (old_id, new_id) = oldest_two(&root);
    let target = dir.path().join("target");
    let mut tries = 0;
    for budget in 0..10_000u64 {
        tries += 1;
        // The target holds the older generation; restore the newer one over it.
        write_tree(&target.join("src"), &snaps[&old_id]);
        let backend = FaultyBackend::new(Box::new(LocalBackend::new(&root)), budget, Fault::Crash);
        let Ok(repo) = with_backend(backend, false, "restore").open(&root) else {
            continue;
        };
        let manifest = strata::snapshots::list(&repo)
            .ok()
            .and_then(|l| l.into_iter().find(|s| s.id == new_id))
            .map(|s| s.manifest);
        let Some(manifest) = manifest else { continue };
        let mut opts = RestoreOptions::new(target.clone());
        opts.delete = true;
        let result = restore(&repo, &manifest, &opts);
        let got = read_tree(&target.join("src"));
        let complete = matches!(&result, Ok(r) if r.errors.is_empty());
        if complete {
            assert_eq!(got, snaps[&new_id]);
            eprintln!("restore: completed with a budget of {budget} reads");
            break;
        }
        // The directory is swapped in whole: all old, or (never, when reads failed) all new.
        assert_eq!(
            got, snaps[&old_id],
            "budget {budget}: a mix after a failed restore"
        );
    }
    assert!(tries > 3, "only {tries} budgets");
}

/// Every snapshot of the repository at `root`, with what it holds now.
fn committed(root: &Path) -> Committed {
    let repo = Repo::open(root, false, "list").unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let mut out = Committed::new();
    for s in strata::snapshots::list(&repo).unwrap() {
        let dir = scratch.path().join(s.id.to_hex());
        restore(&repo, &s.manifest, &RestoreOptions::new(dir.clone())).unwrap();
        out.insert(s.id, read_tree(&dir.join("src")));
    }
    out
}

/// rustic #392: the same chunk twice in one pack, then forget and gc. Here a pack holding every
/// frame of the repository twice is added beside the originals and indexed by `repair index`;
/// gc (rewriting everything it can) and forget must leave every snapshot whole.
#[test]
fn the_same_chunk_twice_in_one_pack_survives_forget_and_gc() {
    use strata::pack::{PackWriter, parse_pack};
    let dir = tempfile::tempdir().unwrap();
    let (root, snaps) = base(dir.path());
    let backend = LocalBackend::new(&root);
    use strata::storage::Backend;
    let mut writer = PackWriter::new();
    let mut frames = 0;
    for name in backend.list("packs").unwrap() {
        let bytes = backend.get(&name).unwrap();
        let entries = parse_pack(&bytes, &name, None).unwrap();
        let mut i = 0;
        while i < entries.len() {
            let f = entries[i].frame;
            let members: Vec<(strata::ChunkId, u32, u32)> = entries[i..]
                .iter()
                .take_while(|e| e.frame == f)
                .map(|e| (e.id, e.offset_in_frame, e.raw_len))
                .collect();
            let stored = &bytes[f.offset as usize..(f.offset + f.stored_len as u64) as usize];
            for _ in 0..2 {
                writer
                    .add_frame(entries[i].kind, f.compression, stored, f.raw_len, &members)
                    .unwrap();
            }
            frames += 1;
            i += members.len();
        }
    }
    assert!(frames > 10, "{frames}");
    let (id, bytes, _, entries) = writer.finish().unwrap();
    let twice = entries.len();
    backend
        .put(&strata::index::pack_object_name(&id), &bytes)
        .unwrap();
    let report = strata::repair::rebuild_index(&root, false, &Key::None).unwrap();
    assert!(report.duplicate_blobs as usize >= twice / 2, "{report:?}");
    check(&root, &snaps, &BTreeMap::new());

    let repo = Repo::open(&root, true, "gc").unwrap();
    let opts = GcOptions {
        dry_run: false,
        max_unused: 0.0,
    };
    gc(&repo, &opts).unwrap();
    drop(repo);
    check(&root, &snaps, &BTreeMap::new());
    assert_eq!(committed(&root), snaps);

    // Forget the older snapshot, collect, and the newer one is whole.
    let oldest = *snaps.keys().next().unwrap();
    let repo = Repo::open(&root, true, "forget").unwrap();
    remove_snapshots(&repo, &[oldest]).unwrap();
    gc(&repo, &opts).unwrap();
    drop(repo);
    let mut rest = snaps.clone();
    rest.remove(&oldest);
    check(&root, &rest, &BTreeMap::new());
    assert_eq!(committed(&root), rest);
}

/// A backend whose listings fail once armed, and which lists `ghosts` as well: objects a
/// listing still shows after another machine deleted them (an object store's listing can lag).
struct ListingFails {
    inner: LocalBackend,
    armed: std::sync::Arc<std::sync::atomic::AtomicBool>,
    ghosts: Vec<String>,
}

impl strata::storage::Backend for ListingFails {
    fn put(&self, name: &str, data: &[u8]) -> strata::Result<()> {
        self.inner.put(name, data)
    }
    fn get(&self, name: &str) -> strata::Result<Vec<u8>> {
        self.inner.get(name)
    }
    fn read_into(&self, name: &str, offset: u64, buf: &mut [u8]) -> strata::Result<()> {
        self.inner.read_into(name, offset, buf)
    }
    fn size(&self, name: &str) -> strata::Result<u64> {
        self.inner.size(name)
    }
    fn list(&self, prefix: &str) -> strata::Result<Vec<String>> {
        if self.armed.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(strata::Error::io(
                format!("list {prefix}"),
                std::io::Error::other("listing failed"),
            ));
        }
        let mut names = self.inner.list(prefix)?;
        names.extend(
            self.ghosts
                .iter()
                .filter(|g| g.starts_with(prefix))
                .cloned(),
        );
        Ok(names)
    }
    fn delete(&self, name: &str) -> strata::Result<()> {
        self.inner.delete(name)
    }
    fn exists(&self, name: &str) -> strata::Result<bool> {
        self.inner.exists(name)
    }
    fn remove_unfinished(&self, prefix: &str) -> strata::Result<u64> {
        self.inner.remove_unfinished(prefix)
    }
    fn create(&self, prefix: &str) -> strata::Result<Box<dyn strata::storage::ObjectWriter + '_>> {
        self.inner.create(prefix)
    }
}

/// restic #4612: an error while listing during gc must stop gc, never read as "nothing there".
#[test]
fn a_failing_listing_stops_gc_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (root, snaps) = base(dir.path());
    for max_unused in [0.0, 1.0] {
        let armed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let backend = ListingFails {
            inner: LocalBackend::new(&root),
            armed: armed.clone(),
            ghosts: Vec::new(),
        };
        let repo = with_backend(backend, true, "gc").open(&root).unwrap();
        armed.store(true, std::sync::atomic::Ordering::SeqCst);
        let err = gc(
            &repo,
            &GcOptions {
                dry_run: false,
                max_unused,
            },
        )
        .expect_err("gc went on without a listing");
        assert!(err.to_string().contains("listing failed"), "{err}");
        drop(repo);
        check(&root, &snaps, &BTreeMap::new());
    }
}

/// A snapshot that a listing shows but that is gone when read was deleted meanwhile (by
/// another machine's `forget`): verify notes it and finds nothing wrong. A snapshot file that is
/// there but unreadable is still damage.
#[test]
fn a_snapshot_listed_but_deleted_meanwhile_is_not_damage() {
    let dir = tempfile::tempdir().unwrap();
    let (root, snaps) = base(dir.path());
    let gone = *snaps.keys().next().unwrap();
    let ghost = format!("snapshots/{}.snap", gone.to_hex());
    let repo = Repo::open(&root, true, "forget").unwrap();
    remove_snapshots(&repo, &[gone]).unwrap();
    drop(repo);
    assert!(!root.join(&ghost).exists());
    let backend = ListingFails {
        inner: LocalBackend::new(&root),
        armed: Default::default(),
        ghosts: vec![ghost.clone()],
    };
    let repo = with_backend(backend, false, "verify").open(&root).unwrap();
    let report = strata::verify::verify(&repo, true).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert!(
        report
            .notes
            .iter()
            .any(|n| n.contains(&ghost) && n.contains("deleted while verify ran")),
        "{:?}",
        report.notes
    );
    drop(repo);

    // An index rebuilt from such a listing (a remote repository's cache, behind another
    // machine's forget) leaves the deleted snapshot out instead of failing.
    let backend = ListingFails {
        inner: LocalBackend::new(&root),
        armed: Default::default(),
        ghosts: vec![ghost.clone()],
    };
    let report = strata::repair::rebuild_index_with(&root, &backend, None, false).unwrap();
    assert_eq!(report.snapshots as usize, snaps.len() - 1);
    assert!(report.damaged.is_empty(), "{:?}", report.damaged);

    // The same name, present but damaged, and not in the index: reported.
    fs::write(root.join(&ghost), b"not a manifest").unwrap();
    let repo = Repo::open(&root, false, "verify").unwrap();
    let report = strata::verify::verify(&repo, false).unwrap();
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.message.contains("not in the index and unreadable")),
        "{:?}",
        report.problems
    );
}

/// `repair index` of a repository whose index is lost, under every fault mode: after a failed
/// repair another one (without faults) recovers everything; a repair that reported success
/// left a durable index.
#[test]
fn repair_under_faults() {
    use strata::repair::{REBUILD_NAME, rebuild_index, rebuild_index_with};
    let dir = tempfile::tempdir().unwrap();
    let (pristine, committed) = base(dir.path());
    let work = dir.path().join("work");
    for (fault, index) in MODES {
        let mut completed = None;
        for budget in 0..10_000u64 {
            copy_dir(&pristine, &work);
            fs::remove_file(work.join("index.redb")).unwrap();
            let backend = FaultyBackend::new(Box::new(LocalBackend::new(&work)), budget, fault);
            let file = match index {
                IndexFaults::Untouched => None,
                IndexFaults::Lost => Some(backend.index_file(&work.join(REBUILD_NAME), None)),
                IndexFaults::KeepSome => {
                    Some(backend.index_file(&work.join(REBUILD_NAME), Some(budget)))
                }
            };
            let file = file.map(|f| strata::index::IndexFile(Box::new(f.unwrap())));
            let result = rebuild_index_with(&work, &backend, file, false);
            drop(backend);
            let _ = fs::remove_file(work.join("lock"));
            match &result {
                Ok(_) => {}
                Err(e) => {
                    assert!(
                        e.to_string().contains("injected fault"),
                        "failed by itself: {e}"
                    );
                    rebuild_index(&work, false, &Key::None).unwrap();
                }
            }
            check(&work, &committed, &BTreeMap::new());
            if result.is_ok() {
                completed = Some(budget + 1);
                break;
            }
        }
        let tries = completed.expect("repair never completed");
        eprintln!(
            "repair ({fault:?}, index {index:?}): completed with a budget of {tries} operations"
        );
    }
}

use strata::storage::Backend;

/// A backend that panics on its `reads`-th read of a pack, as code deep inside a read can (redb
/// panics on some damaged index pages).
struct PanicsOnRead {
    inner: LocalBackend,
    reads: std::sync::atomic::AtomicI64,
}

impl PanicsOnRead {
    fn read(&self, name: &str) {
        if name.starts_with("packs/")
            && self.reads.fetch_sub(1, std::sync::atomic::Ordering::SeqCst) <= 0
        {
            panic!("a read of {name} panicked");
        }
    }
}

impl Backend for PanicsOnRead {
    fn put(&self, name: &str, data: &[u8]) -> strata::Result<()> {
        self.inner.put(name, data)
    }
    fn get(&self, name: &str) -> strata::Result<Vec<u8>> {
        self.read(name);
        self.inner.get(name)
    }
    fn read_into(&self, name: &str, offset: u64, buf: &mut [u8]) -> strata::Result<()> {
        self.read(name);
        self.inner.read_into(name, offset, buf)
    }
    fn size(&self, name: &str) -> strata::Result<u64> {
        self.inner.size(name)
    }
    fn list(&self, prefix: &str) -> strata::Result<Vec<String>> {
        self.inner.list(prefix)
    }
    fn delete(&self, name: &str) -> strata::Result<()> {
        self.inner.delete(name)
    }
    fn exists(&self, name: &str) -> strata::Result<bool> {
        self.inner.exists(name)
    }
}

/// A panic on a restore's reading threads becomes an error, and leaves nothing of strata's in
/// the target: no temporary file, no staging directory. Into a fresh target (files put in place
/// one by one) and over an existing directory (restored beside it, then swapped in), which is
/// then untouched.
#[test]
fn a_panic_inside_a_restore_is_an_error_and_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let (root, snaps) = base(dir.path());
    let (old_id, new_id) = oldest_two(&root);
    for reads in [0, 1, 2, 5] {
        for over_existing in [false, true] {
            let target = dir.path().join(format!("t{reads}-{over_existing}"));
            if over_existing {
                write_tree(&target.join("src"), &snaps[&old_id]);
            }
            let backend = PanicsOnRead {
                inner: LocalBackend::new(&root),
                reads: std::sync::atomic::AtomicI64::new(reads),
            };
            let repo = with_backend(backend, false, "restore").open(&root).unwrap();
            let manifest = strata::snapshots::list(&repo)
                .unwrap()
                .into_iter()
                .find(|s| s.id == new_id)
                .unwrap()
                .manifest;
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                restore(&repo, &manifest, &RestoreOptions::new(target.clone()))
            }));
            let case = format!("{reads} reads, over an existing directory: {over_existing}");
            let result = result.unwrap_or_else(|_| panic!("{case}: the panic escaped"));
            let failed = match &result {
                Ok(r) => r.errors.join("; "),
                Err(e) => e.to_string(),
            };
            assert!(failed.contains("panicked"), "{case}: {failed}");
            assert_eq!(strata_leftovers(&target), Vec::<String>::new(), "{case}");
            if over_existing {
                assert_eq!(read_tree(&target.join("src")), snaps[&old_id], "{case}");
            }
        }
    }
}

//! Rebuilding the index from what the repository files say about themselves: pack trailers list
//! every blob, manifest files list every snapshot. The index is a cache; this makes that true.

use crate::blobs::BlobReader;
use crate::error::{Error, IoContext, Result};
use crate::id::ChunkId;
use crate::index::{
    BLOBS, BlobLoc, Index, IndexReader, META, META_NEXT_PACK, PACKS, PackInfo, SNAPSHOTS,
};
use crate::layout::{INDEX_NAME, Lock, load_config};
use crate::manifest::Manifest;
use crate::pack::PackEntry;
use crate::storage::{Backend, LocalBackend, sync_dir};
use rayon::prelude::*;
use redb::ReadableTable;
use std::path::Path;

#[derive(Debug, Default, serde::Serialize)]
pub struct RepairReport {
    pub packs: u64,
    pub blobs: u64,
    /// Blobs found in more than one pack (the first pack is kept).
    pub duplicate_blobs: u64,
    pub snapshots: u64,
    /// References from snapshots to blobs no pack holds (their files cannot be restored).
    pub missing_blobs: u64,
    /// Files that could not be used, with the reason.
    pub damaged: Vec<String>,
    /// Snapshot files that could not be read and that no copy could stand in for: those
    /// snapshots are not in the rebuilt index. (A damaged pack's readable blobs are salvaged;
    /// `verify` names the files that lost data.)
    pub lost: Vec<String>,
    pub dry_run: bool,
}

/// A pack's trailer as found on disk.
struct FoundPack {
    id: ChunkId,
    size: u64,
    entries: Vec<PackEntry>,
}

/// Reads a pack's trailer; a pack that does not parse is salvaged ([`crate::pack::salvage`]):
/// the blobs proven by their content are kept, and the note says what happened.
fn read_or_salvage(
    backend: &dyn Backend,
    name: &str,
    keys: Option<&crate::crypto::Keys>,
) -> std::result::Result<(FoundPack, Option<String>), String> {
    let err = match read_pack(backend, name, keys.map(|k| k.mac_key())) {
        Ok(found) => return Ok((found, None)),
        Err(e) => e,
    };
    let (Some(id), Ok(bytes)) = (pack_id(name), backend.get(name)) else {
        return Err(format!("{err}"));
    };
    let entries = crate::pack::salvage(&bytes, keys);
    if entries.is_empty() {
        return Err(format!("{err}; no blob of it could be salvaged"));
    }
    let note = format!(
        "{err}; salvaged {} blobs, each checked against its id",
        entries.len()
    );
    Ok((
        FoundPack {
            id,
            size: bytes.len() as u64,
            entries,
        },
        Some(note),
    ))
}

/// Where the index being replaced put the blobs of the packs in `damaged` (by pack id), if it
/// can still be read: a damaged trailer entry does not lose a blob the old index located.
fn old_locations(
    root: &Path,
    damaged: &std::collections::HashSet<ChunkId>,
) -> std::collections::HashMap<ChunkId, Vec<(ChunkId, BlobLoc)>> {
    let mut out: std::collections::HashMap<ChunkId, Vec<(ChunkId, BlobLoc)>> = Default::default();
    let found = (|| -> Result<()> {
        let index = Index::open_read(&root.join(INDEX_NAME))?;
        let txn = index.read()?;
        let reader = crate::index::IndexReader::new(&txn)?;
        let numbers: std::collections::HashMap<u32, ChunkId> = reader
            .packs()?
            .into_iter()
            .filter(|(_, info)| damaged.contains(&info.id))
            .map(|(no, info)| (no, info.id))
            .collect();
        if numbers.is_empty() {
            return Ok(());
        }
        reader.for_each_blob(|id, loc| {
            if let Some(pack) = numbers.get(&loc.pack) {
                out.entry(*pack).or_default().push((id, loc));
            }
            Ok(())
        })
    })();
    if found.is_err() {
        out.clear();
    }
    out
}

/// Every manifest the index being replaced holds, if it can still be read.
fn old_manifests(root: &Path) -> Vec<(ChunkId, Vec<u8>)> {
    (|| -> Result<Vec<(ChunkId, Vec<u8>)>> {
        let index = Index::open_read(&root.join(INDEX_NAME))?;
        let txn = index.read()?;
        crate::index::snapshot_manifests(&txn)
    })()
    .unwrap_or_default()
}

/// Adds to `entries` the blobs of `hints` that the pack's bytes prove (decoded and hashed at the
/// place the old index gave).
fn add_proven(
    bytes: &[u8],
    hints: &[(ChunkId, BlobLoc)],
    entries: &mut Vec<PackEntry>,
    keys: Option<&crate::crypto::Keys>,
) -> usize {
    let have: std::collections::HashSet<ChunkId> = entries.iter().map(|e| e.id).collect();
    let before = entries.len();
    let mut raw = Vec::new();
    for (id, loc) in hints.iter().filter(|(id, _)| !have.contains(id)) {
        let e = PackEntry {
            id: *id,
            frame: crate::pack::Frame {
                offset: loc.frame_offset as u64,
                stored_len: loc.frame_stored_len,
                raw_len: loc.frame_raw_len,
                compression: loc.compression,
            },
            offset_in_frame: loc.offset_in_frame,
            raw_len: loc.raw_len,
            kind: loc.kind,
        };
        if crate::pack::proven(bytes, &e, keys, &mut raw) {
            entries.push(e);
        }
    }
    entries.len() - before
}

/// The id a pack's object name gives it (`packs/hh/<id>.pack`).
fn pack_id(name: &str) -> Option<ChunkId> {
    name.rsplit('/')
        .next()
        .and_then(|f| f.strip_suffix(".pack"))
        .and_then(|h| h.parse::<ChunkId>().ok())
}

fn read_pack(backend: &dyn Backend, name: &str, mac_key: Option<&[u8; 32]>) -> Result<FoundPack> {
    let id = pack_id(name).ok_or_else(|| Error::corrupt(format!("{name}: not a pack name")))?;
    let (size, entries) = crate::pack::read_entries(backend, name, mac_key)?;
    Ok(FoundPack { id, size, entries })
}

/// Where the new index is built before it replaces `index.redb`.
pub const REBUILD_NAME: &str = "index.redb.rebuild";

/// Rebuilds `index.redb` from the packs and manifest files. With `dry_run`, only reports what it
/// found. Takes the repository lock; the old index is replaced atomically at the end.
pub fn rebuild_index(root: &Path, dry_run: bool, key: &crate::layout::Key) -> Result<RepairReport> {
    #[cfg(not(feature = "s3"))]
    crate::layout::remote(root)?;
    #[cfg(feature = "s3")]
    if let Some(loc) = crate::layout::remote(root)? {
        // The local cache of a repository on object storage, from the store alone.
        let backend = crate::s3::S3Backend::new(&loc)?;
        let config = load_config(&backend, root)?;
        let state = crate::layout::cache_dir_for(&config.id);
        std::fs::create_dir_all(&state).ctx("create", &state)?;
        return rebuild(&state, &backend, None, dry_run, key, false);
    }
    rebuild(root, &LocalBackend::new(root), None, dry_run, key, true)
}

/// [`rebuild_index`] through `backend`, with the new index written through `index_file` when
/// given (in tests, a file under injected faults); `index_file` must be opened
/// on `index.redb.rebuild` in `root`.
pub fn rebuild_index_with(
    root: &Path,
    backend: &dyn Backend,
    index_file: Option<crate::index::IndexFile>,
    dry_run: bool,
) -> Result<RepairReport> {
    rebuild(
        root,
        backend,
        index_file,
        dry_run,
        &crate::layout::Key::None,
        true,
    )
}

/// Rebuilds the local index of a repository whose master key is already known (`None` for an
/// unencrypted one).
pub fn rebuild_index_keyed(
    root: &Path,
    backend: &dyn Backend,
    master: Option<[u8; 32]>,
) -> Result<RepairReport> {
    // The store is the truth here: a snapshot the local copy has and the store does not was
    // removed by another writer, and stays removed.
    let unlocked = master.map(|m| (m, String::new()));
    let key = match &unlocked {
        Some(u) => crate::layout::Key::Master(u),
        None => crate::layout::Key::None,
    };
    rebuild(root, backend, None, false, &key, false)
}

fn rebuild(
    root: &Path,
    backend: &dyn Backend,
    index_file: Option<crate::index::IndexFile>,
    dry_run: bool,
    key: &crate::layout::Key,
    from_old_index: bool,
) -> Result<RepairReport> {
    let config = load_config(backend, root)?;
    let keys = open_keys(backend, &config, key)?;
    let _lock = Lock::acquire(root, "repair index")?;
    let mut report = RepairReport {
        dry_run,
        ..Default::default()
    };
    let packs = find_packs(root, backend, keys.as_ref(), &mut report)?;
    let old = if from_old_index {
        old_manifests(root)
    } else {
        Vec::new()
    };
    let snapshots = find_snapshots(backend, keys.as_ref(), old, dry_run, &mut report)?;
    report.packs = packs.len() as u64;
    report.snapshots = snapshots.len() as u64;
    report.blobs = packs.iter().map(|p| p.entries.len() as u64).sum();
    if dry_run {
        return Ok(report);
    }

    let tmp = root.join(REBUILD_NAME);
    {
        let index = match index_file {
            Some(file) => Index::open_write_with(file, &tmp)?,
            None => {
                let _ = std::fs::remove_file(&tmp);
                Index::open_write(&tmp)?
            }
        };
        index_packs(&index, &packs, &mut report)?;
        index_snapshots(&index, &snapshots, packs.len() as u64)?;
        count_references(&index, backend, keys.as_ref(), &snapshots, &mut report)?;
    }
    replace_index(root, &tmp)?;
    Ok(report)
}

/// An encrypted repository's keys (they authenticate trailers and open manifests), from `key`.
/// `None` for an unencrypted one.
fn open_keys(
    backend: &dyn Backend,
    config: &crate::layout::Config,
    key: &crate::layout::Key,
) -> Result<Option<crate::crypto::Keys>> {
    Ok(crate::layout::unlock_with(backend, config, key)?
        .map(|(master, _)| crate::crypto::Keys::from_master(&master)))
}

/// Every pack's trailer. A pack that does not parse is salvaged, and the index being replaced,
/// if readable, may know where more of its blobs are; each such location is proven by the
/// pack's bytes before it is used. Damaged packs are named in `report`.
fn find_packs(
    root: &Path,
    backend: &dyn Backend,
    keys: Option<&crate::crypto::Keys>,
    report: &mut RepairReport,
) -> Result<Vec<FoundPack>> {
    let names: Vec<String> = backend
        .list("packs")?
        .into_iter()
        .filter(|n| n.ends_with(".pack") && !n.contains(".strata-tmp."))
        .collect();
    type Found = std::result::Result<(FoundPack, Option<String>), String>;
    let found: Vec<(String, Found)> = names
        .into_par_iter()
        .map(|n| {
            let r = read_or_salvage(backend, &n, keys);
            (n, r)
        })
        .collect();
    let damaged_ids: std::collections::HashSet<ChunkId> = found
        .iter()
        .filter(|(_, r)| !matches!(r, Ok((_, None))))
        .filter_map(|(n, _)| pack_id(n))
        .collect();
    let hints = if damaged_ids.is_empty() {
        Default::default()
    } else {
        old_locations(root, &damaged_ids)
    };
    let mut packs = Vec::new();
    for (name, r) in found {
        let pack_hints = pack_id(&name).and_then(|id| hints.get(&id));
        let (mut pack, mut note) = match r {
            Ok((p, None)) => {
                packs.push(p);
                continue;
            }
            Ok((p, Some(note))) => (Some(p), note),
            Err(e) => (None, e),
        };
        if let (Some(hints), Some(id), Ok(bytes)) = (pack_hints, pack_id(&name), backend.get(&name))
        {
            let p = pack.get_or_insert_with(|| FoundPack {
                id,
                size: bytes.len() as u64,
                entries: vec![],
            });
            let added = add_proven(&bytes, hints, &mut p.entries, keys);
            if added > 0 {
                note.push_str(&format!(
                    "; {added} more blobs kept where the old index had them, each checked \
                     against its id"
                ));
            }
        }
        report.damaged.push(format!("{name}: {note}"));
        if let Some(p) = pack.filter(|p| !p.entries.is_empty()) {
            packs.push(p);
        }
    }
    Ok(packs)
}

/// Every snapshot whose manifest file decodes. For one whose file is damaged or missing, a
/// copy in `old` (the manifests of the index being replaced) that decodes to its id is used,
/// and its file written again (in a dry run, only reported). Snapshots lost are named in
/// `report`.
fn find_snapshots(
    backend: &dyn Backend,
    keys: Option<&crate::crypto::Keys>,
    old: Vec<(ChunkId, Vec<u8>)>,
    dry_run: bool,
    report: &mut RepairReport,
) -> Result<Vec<(ChunkId, Vec<u8>)>> {
    let mut snapshots = Vec::new();
    let mut unreadable: Vec<(ChunkId, String)> = Vec::new();
    for name in backend.list("snapshots")? {
        let Some(hex) = name
            .rsplit('/')
            .next()
            .and_then(|f| f.strip_suffix(".snap"))
        else {
            continue;
        };
        let Ok(id) = hex.parse::<ChunkId>() else {
            report.damaged.push(format!("{name}: not a snapshot name"));
            continue;
        };
        let bytes = match backend.get(&name) {
            Ok(bytes) => bytes,
            // Listed, then gone: another machine's `forget` deleted it after the listing (an
            // object store's listing can also lag a delete). It is not a snapshot any more.
            Err(e) if e.kind() == crate::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        match Manifest::decode(&bytes, Some(&id), keys) {
            Ok(_) => snapshots.push((id, bytes)),
            Err(e) => {
                report.damaged.push(format!("{name}: {e}"));
                unreadable.push((id, name.clone()));
            }
        }
    }
    let have: std::collections::HashSet<ChunkId> = snapshots.iter().map(|(id, _)| *id).collect();
    for (id, bytes) in old {
        if have.contains(&id) || Manifest::decode(&bytes, Some(&id), keys).is_err() {
            continue;
        }
        let name = crate::manifest::object_name(&id);
        if !dry_run {
            backend.put(&name, &bytes)?;
        }
        report.damaged.push(format!(
            "{name}: damaged or missing; {} from the index's copy",
            if dry_run {
                "would be written again"
            } else {
                "written again"
            }
        ));
        snapshots.push((id, bytes));
    }
    let recovered: std::collections::HashSet<ChunkId> =
        snapshots.iter().map(|(id, _)| *id).collect();
    report.lost.extend(
        unreadable
            .into_iter()
            .filter(|(id, _)| !recovered.contains(id))
            .map(|(_, name)| name),
    );
    Ok(snapshots)
}

/// Indexes the packs' blobs, numbering the packs in order, a few packs per transaction. A
/// blob found in more than one pack keeps its first place.
fn index_packs(index: &Index, packs: &[FoundPack], report: &mut RepairReport) -> Result<()> {
    for (chunk, group) in packs.chunks(8).enumerate() {
        let txn = index.write()?;
        {
            let mut blobs = txn.open_table(BLOBS)?;
            let mut pack_table = txn.open_table(PACKS)?;
            for (i, p) in group.iter().enumerate() {
                let no = (chunk * 8 + i) as u32;
                for e in &p.entries {
                    if blobs.get(e.id.as_bytes())?.is_some() {
                        report.duplicate_blobs += 1;
                        continue;
                    }
                    blobs.insert(e.id.as_bytes(), &BlobLoc::from_entry(no, e).encode())?;
                }
                let info = PackInfo {
                    id: p.id,
                    size: p.size,
                    blobs: p.entries.len() as u32,
                };
                pack_table.insert(no, &info.encode())?;
            }
        }
        txn.commit()?;
    }
    Ok(())
}

/// Indexes the snapshots' manifests, and the number the next pack gets.
fn index_snapshots(index: &Index, snapshots: &[(ChunkId, Vec<u8>)], next_pack: u64) -> Result<()> {
    let txn = index.write()?;
    {
        let mut snaps = txn.open_table(SNAPSHOTS)?;
        for (id, bytes) in snapshots {
            snaps.insert(id.as_bytes(), bytes.as_slice())?;
        }
        let mut meta = txn.open_table(META)?;
        meta.insert(META_NEXT_PACK, next_pack)?;
    }
    txn.commit()?;
    Ok(())
}

/// Reference counts, from the manifests and the trees they reach through the new index.
fn count_references(
    index: &Index,
    backend: &dyn Backend,
    keys: Option<&crate::crypto::Keys>,
    snapshots: &[(ChunkId, Vec<u8>)],
    report: &mut RepairReport,
) -> Result<()> {
    let counts = {
        let rtxn = index.read()?;
        let reader = IndexReader::new(&rtxn)?;
        let nodes = BlobReader::over(backend, keys, &reader);
        let recount = crate::refs::count_all(snapshots, keys, &nodes)?;
        report.missing_blobs = recount.missing;
        for (id, e) in recount.unreadable {
            report.damaged.push(format!(
                "chunk-list node {id}: {e}; the chunks it lists are not counted through it"
            ));
        }
        recount.counts
    };
    let txn = index.write()?;
    crate::refs::write_counts(&txn, &counts)?;
    txn.commit()?;
    Ok(())
}

/// Puts the index built at `tmp` in place of `index.redb`, durably.
pub(crate) fn replace_index(root: &Path, tmp: &Path) -> Result<()> {
    std::fs::File::open(tmp)
        .and_then(|f| f.sync_all())
        .ctx("fsync", tmp)?;
    let dest = root.join(INDEX_NAME);
    std::fs::rename(tmp, &dest).ctx("rename into place", &dest)?;
    sync_dir(root)
}

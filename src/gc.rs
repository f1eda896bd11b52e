//! Removing snapshots and reclaiming the space nothing references any more.
//!
//! `gc` runs under the repository lock, which every writer (backup, forget, gc) holds for its
//! whole run, so no backup can deduplicate against a blob while gc decides to drop it.
//!
//! 1. Mark: every blob reachable from a snapshot in the index (file contents and chunk-list
//!    trees, every node read and checked) is live. Any failure to read a node stops gc before it
//!    changes anything.
//! 2. Plan, per pack, from the index: packs with no live blob are deleted; packs whose unused
//!    bytes exceed `max_unused` times their live bytes are rewritten with only their live blobs
//!    (so afterwards packs hold at most live x (1 + max_unused) bytes); pack files the index
//!    does not know (left by an interrupted backup or gc) are deleted.
//! 3. Rewritten packs are written and fsynced; then one index transaction points moved blobs at
//!    their new packs, drops every dead blob (so nothing can deduplicate against a blob whose
//!    children are gone) and drops the old packs; only after it commits are old pack files
//!    deleted. A crash at any point leaves every snapshot restorable; the next gc finishes.

use crate::backup::insert_packs;
use crate::compress::compress;
use crate::error::{Error, Result};
use crate::id::{ChunkId, SnapshotId};
use crate::index::{BLOBS, BlobLoc, IndexReader, META, META_NEXT_PACK, PACKS, SNAPSHOTS};
use crate::manifest::{Content, Manifest};
use crate::pack::PackWriter;
use crate::packer::WrittenPack;
use crate::repo::Repo;
use crate::restore::{BlobReader, blob_in_frame, check_hash};
use crate::tree::Node;
use redb::ReadableTable;
use std::collections::{BTreeMap, HashMap, HashSet};

/// Removes snapshots: their manifest files first, then (in one transaction) their index
/// entries. A crash in between leaves the snapshot listed, and the next writer restores its
/// file from the index: it is never half-removed.
pub fn remove_snapshots(repo: &Repo, ids: &[SnapshotId]) -> Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    for id in ids {
        let name = crate::manifest::object_name(id);
        if repo.backend.exists(&name)? {
            repo.backend.delete(&name)?;
        }
    }
    let txn = repo.index.write()?;
    {
        let mut snaps = txn.open_table(SNAPSHOTS)?;
        for id in ids {
            snaps.remove(id.as_bytes())?;
        }
    }
    txn.commit()?;
    Ok(())
}

#[derive(Clone, Debug)]
pub struct GcOptions {
    pub dry_run: bool,
    /// Rewrite packs whose unused bytes exceed this fraction of their live bytes (0.0 to 1.0).
    pub max_unused: f64,
}

impl Default for GcOptions {
    fn default() -> Self {
        GcOptions {
            dry_run: false,
            max_unused: 0.1,
        }
    }
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct GcReport {
    pub dry_run: bool,
    pub snapshots: u64,
    pub live_blobs: u64,
    pub dead_blobs: u64,
    pub packs_before: u64,
    pub packs_deleted: u64,
    pub packs_rewritten: u64,
    pub packs_written: u64,
    pub unknown_pack_files: u64,
    pub bytes_before: u64,
    pub bytes_after: u64,
    pub bytes_reclaimed: u64,
    /// After gc: bytes of compressed chunk data in packs, and the part of it that is live.
    pub frame_bytes_after: u64,
    pub live_bytes_after: u64,
}

/// Every blob reachable from the index's snapshots.
pub fn live_blobs(
    repo: &Repo,
    index: &IndexReader,
    txn: &redb::ReadTransaction,
) -> Result<(u64, HashSet<ChunkId>)> {
    let blobs = BlobReader::new(repo, index)?;
    let mut live = HashSet::new();
    let mut snapshots = 0;
    for (id, bytes) in crate::index::snapshot_manifests(txn)? {
        snapshots += 1;
        let manifest = Manifest::decode(&bytes, Some(&id), repo.keys())?;
        for e in &manifest.entries {
            match &e.content {
                Content::Empty => {}
                Content::Chunk(c) => {
                    live.insert(*c);
                }
                Content::Tree(root) => mark_tree(&blobs, *root, &mut live).map_err(|err| {
                    Error::corrupt(format!(
                        "snapshot {} {}: {err}; nothing was removed (run verify)",
                        id.short(),
                        e.path_lossy()
                    ))
                })?,
            }
        }
    }
    Ok((snapshots, live))
}

fn mark_tree(blobs: &BlobReader, root: ChunkId, live: &mut HashSet<ChunkId>) -> Result<()> {
    let mut stack = vec![root];
    while let Some(id) = stack.pop() {
        if !live.insert(id) {
            continue; // a shared subtree, already marked
        }
        let node = Node::decode(&blobs.read(&id)?, &format_args!("node {}", id.short()))?;
        for child in &node.entries {
            if node.level == 0 {
                live.insert(child.id);
            } else {
                stack.push(child.id);
            }
        }
    }
    Ok(())
}

/// Per-pack accounting of the plan.
#[derive(Default)]
struct PackUse {
    live_stored: f64,
    live: Vec<(ChunkId, BlobLoc)>,
    dead: Vec<ChunkId>,
}

pub fn gc(repo: &Repo, opts: &GcOptions) -> Result<GcReport> {
    if !(0.0..=1.0).contains(&opts.max_unused) {
        return Err(Error::invalid("--max-unused must be between 0% and 100%"));
    }
    let mut report = GcReport {
        dry_run: opts.dry_run,
        ..GcReport::default()
    };
    let txn = repo.index.read()?;
    let index = IndexReader::new(&txn)?;
    let (snapshots, live) = live_blobs(repo, &index, &txn)?;
    report.snapshots = snapshots;

    let packs = index.packs()?;
    report.packs_before = packs.len() as u64;
    let mut usage: BTreeMap<u32, PackUse> = packs
        .iter()
        .map(|(no, _)| (*no, PackUse::default()))
        .collect();
    let mut dead_elsewhere = Vec::new();
    index.for_each_blob(|id, loc| {
        let Some(u) = usage.get_mut(&loc.pack) else {
            dead_elsewhere.push(id); // points at a pack the index does not have
            return Ok(());
        };
        if live.contains(&id) {
            u.live_stored +=
                loc.frame_stored_len as f64 * loc.raw_len as f64 / loc.frame_raw_len.max(1) as f64;
            u.live.push((id, loc));
        } else {
            u.dead.push(id);
        }
        Ok(())
    })?;
    report.live_blobs = usage.values().map(|u| u.live.len() as u64).sum();
    report.dead_blobs =
        usage.values().map(|u| u.dead.len() as u64).sum::<u64>() + dead_elsewhere.len() as u64;

    let known: HashMap<String, u32> = packs
        .iter()
        .map(|(no, info)| (info.object_name(), *no))
        .collect();
    let unknown: Vec<String> = repo
        .backend
        .list("packs")?
        .into_iter()
        .filter(|n| n.ends_with(".pack") && !known.contains_key(n))
        .collect();
    report.unknown_pack_files = unknown.len() as u64;
    let mut unknown_bytes = 0;
    for n in &unknown {
        unknown_bytes += repo.backend.size(n).unwrap_or(0);
    }

    let mut delete = Vec::new();
    let mut rewrite = Vec::new();
    // Frame bytes and live frame bytes of the packs that stay as they are.
    let (mut kept_frames, mut kept_live) = (0f64, 0f64);
    for (no, info) in &packs {
        let u = &usage[no];
        report.bytes_before += info.size;
        let frames = frame_bytes(info.size, info.blobs) as f64;
        // Unused bytes may be at most `max_unused` times the live ones, so that after gc the
        // packs hold at most live x (1 + max_unused) frame bytes.
        let unused = (frames - u.live_stored).max(0.0);
        if u.live.is_empty() {
            delete.push(*no);
        } else if !u.dead.is_empty() && unused > opts.max_unused * u.live_stored {
            rewrite.push(*no);
        } else {
            kept_frames += frames;
            kept_live += u.live_stored.min(frames);
        }
    }
    report.bytes_before += unknown_bytes;
    report.packs_deleted = delete.len() as u64;
    report.packs_rewritten = rewrite.len() as u64;
    let removed_bytes: u64 = packs
        .iter()
        .filter(|(no, _)| delete.contains(no) || rewrite.contains(no))
        .map(|(_, i)| i.size)
        .sum::<u64>()
        + unknown_bytes;
    if opts.dry_run {
        let rewritten_live: f64 = rewrite.iter().map(|no| usage[no].live_stored).sum();
        report.frame_bytes_after = (kept_frames + rewritten_live) as u64;
        report.live_bytes_after = (kept_live + rewritten_live) as u64;
        report.bytes_after = report.bytes_before - removed_bytes + rewritten_live as u64;
        report.bytes_reclaimed = report.bytes_before - report.bytes_after;
        return Ok(report);
    }

    // Write the live blobs of packs being rewritten into new packs.
    let blobs = BlobReader::new(repo, &index)?;
    let mut next_no = crate::index::meta(&txn, META_NEXT_PACK)?.unwrap_or(0) as u32;
    let mut written: Vec<WrittenPack> = Vec::new();
    let mut current: Option<PackWriter<Box<dyn crate::storage::ObjectWriter + '_>>> = None;
    for no in &rewrite {
        let mut live_here = usage[no].live.clone();
        live_here.sort_by_key(|(_, l)| (l.frame_offset, l.offset_in_frame));
        for group in live_here.chunk_by(|a, b| a.1.frame_offset == b.1.frame_offset) {
            // The live members of one frame: read and decompressed once, each checked against
            // its id, recompressed together.
            let (frame, pack) = blobs.read_frame(&group[0].1)?;
            let mut raw = Vec::new();
            let mut members = Vec::with_capacity(group.len());
            for (id, loc) in group {
                let data = blob_in_frame(&frame, loc, &pack)?;
                check_hash(data, loc, id, repo.id_key(), &pack)?;
                members.push((*id, raw.len() as u32, data.len() as u32));
                raw.extend_from_slice(data);
            }
            let kind = group[0].1.kind;
            let (compression, stored) = compress(&raw, repo.config.zstd_level)?;
            let stored = repo.seal_frame(&stored)?;
            if current.is_none() {
                current = Some(
                    PackWriter::to_sink(repo.backend.create("packs")?)?
                        .with_mac_key(repo.mac_key()),
                );
            }
            let w = current.as_mut().expect("set above");
            w.add_frame(kind, compression, &stored, raw.len() as u32, &members)?;
            if w.len() as u64 >= repo.config.pack_target {
                written.push(seal(current.take().expect("present"), &mut next_no)?);
            }
        }
    }
    if let Some(w) = current.take() {
        written.push(seal(w, &mut next_no)?);
    }
    report.packs_written = written.len() as u64;
    let new_names: HashSet<String> = written
        .iter()
        .map(|p| crate::index::pack_object_name(&p.id))
        .collect();
    let new_bytes: u64 = written.iter().map(|p| p.size).sum();
    let new_frames: u64 = written
        .iter()
        .map(|p| frame_bytes(p.size, p.entries.len() as u32))
        .sum();
    drop(blobs);
    drop(index);
    drop(txn);

    // One transaction: new locations, dead blobs and old packs gone.
    let wtxn = repo.index.write()?;
    {
        let mut blob_table = wtxn.open_table(BLOBS)?;
        for id in usage.values().flat_map(|u| &u.dead).chain(&dead_elsewhere) {
            blob_table.remove(id.as_bytes())?;
        }
        let mut pack_table = wtxn.open_table(PACKS)?;
        for no in delete.iter().chain(&rewrite) {
            pack_table.remove(no)?;
        }
    }
    insert_packs(&wtxn, written)?;
    {
        let mut meta = wtxn.open_table(META)?;
        let next = meta.get(META_NEXT_PACK)?.map(|v| v.value()).unwrap_or(0);
        meta.insert(META_NEXT_PACK, next.max(next_no as u64))?;
    }
    wtxn.commit()?;

    // Only now: old files. (A rewritten pack can come out byte for byte like an old one, and
    // then has its name: that file is the new pack and stays.)
    let names: HashMap<u32, String> = packs.iter().map(|(no, i)| (*no, i.object_name())).collect();
    for no in delete.iter().chain(&rewrite) {
        if !new_names.contains(&names[no]) {
            repo.backend.delete(&names[no])?;
        }
    }
    for n in unknown.iter().filter(|n| !new_names.contains(*n)) {
        repo.backend.delete(n)?;
    }
    report.bytes_after = report.bytes_before - removed_bytes + new_bytes;
    report.bytes_reclaimed = report.bytes_before - report.bytes_after;
    report.frame_bytes_after = kept_frames as u64 + new_frames;
    report.live_bytes_after = kept_live as u64 + new_frames;
    Ok(report)
}

/// Bytes of a pack that hold frames: the file without header, trailer and footer.
fn frame_bytes(size: u64, blobs: u32) -> u64 {
    let overhead = (crate::pack::HEADER_LEN + crate::pack::FOOTER_LEN) as u64
        + blobs as u64 * crate::pack::ENTRY_LEN as u64;
    size.saturating_sub(overhead)
}

fn seal(
    w: PackWriter<Box<dyn crate::storage::ObjectWriter + '_>>,
    next_no: &mut u32,
) -> Result<WrittenPack> {
    let (id, object, size, entries) = w.finish()?;
    object.commit(&crate::index::pack_object_name(&id))?;
    let no = *next_no;
    *next_no = next_no
        .checked_add(1)
        .ok_or_else(|| Error::invalid("pack numbers exhausted"))?;
    Ok(WrittenPack {
        no,
        id,
        size,
        entries,
    })
}

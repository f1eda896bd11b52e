//! Removing snapshots and reclaiming the space nothing references any more.
//!
//! `gc` runs under the repository lock, which every writer (backup, forget, gc) holds for its
//! whole run, so no backup can deduplicate against a blob while gc decides to drop it.
//!
//! Removing a snapshot takes away its references in the same index transaction that drops it
//! (see [`crate::refs`]), so gc never walks a snapshot:
//! 1. Plan, per pack, from its [`PackUse`] row: packs with no live blob are deleted; packs whose
//!    unused bytes exceed `max_unused` times their live bytes are rewritten with only their live
//!    blobs (so afterwards packs hold at most live x (1 + max_unused) bytes); packs that stay but
//!    have indexed blobs without references have those entries dropped; pack files the index
//!    does not know (left by an interrupted backup or gc) are deleted. Only the trailers of the
//!    packs named here are read, and each of their blobs is judged by its own reference count.
//! 2. Rewritten packs are written and fsynced; then one index transaction points moved blobs at
//!    their new packs, drops every blob without references (so nothing can deduplicate against a
//!    blob whose children are gone) and drops the old packs; only after it commits are old pack
//!    files deleted. A crash at any point leaves every snapshot restorable; the next gc finishes.

use crate::blobs::{BlobReader, blob_in_frame, check_hash};
use crate::commit::insert_packs;
use crate::compress::compress;
use crate::error::{Error, Result};
use crate::id::{ChunkId, SnapshotId};
use crate::index::{
    BLOBS, BlobLoc, FILES, FileStamp, IndexReader, META, META_NEXT_PACK, PACK_USE, PACKS, PackInfo,
    REFS, SNAPSHOTS,
};
use crate::manifest::Content;
use crate::pack::PackWriter;
use crate::packer::WrittenPack;
use crate::repo::Repo;
use redb::{ReadableTable, ReadableTableMetadata};
use std::collections::{BTreeMap, HashMap, HashSet};

/// Removes snapshots: their manifest files first, then, in one transaction, their index entries
/// and their references (after counting those of snapshots added since the last count). A
/// crash in between leaves the snapshot listed, and the next writer restores its file from the
/// index: it is never half-removed.
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
    repo.ensure_current()?;
    let txn = repo.index.write()?;
    {
        let mut removed = Vec::new();
        {
            let mut snaps = txn.open_table(SNAPSHOTS)?;
            for id in ids {
                if let Some(bytes) = snaps.remove(id.as_bytes())? {
                    removed.push((*id, bytes.value().to_vec()));
                }
            }
        }
        crate::refs::settle(repo.backend.as_ref(), repo.keys(), &txn, &removed)?;
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
    /// Snapshots added since the last count whose references gc counted first.
    pub counted_snapshots: u64,
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
    /// File-cache entries dropped because what they name is gone from the index (no snapshot
    /// holds that version of the file any more), and chunk-digest records removed with them
    /// (in a dry run: that would be).
    pub file_entries_dropped: u64,
    pub page_sums_removed: u64,
    /// Readers (restore, verify...) that were running when gc was about to delete pack files;
    /// while there are any, the pack files gc no longer needs are kept (and counted here) for
    /// the next gc to delete.
    pub readers: u64,
    pub packs_deferred: u64,
    pub bytes_deferred: u64,
}

/// What gc does with one pack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Plan {
    Delete,
    Rewrite,
    /// Kept, with its unreferenced blobs dropped from the index.
    Trim,
}

/// The blobs of a pack the index places in it, split by whether anything references them.
#[derive(Default)]
struct PackBlobs {
    live: Vec<(ChunkId, BlobLoc)>,
    dead: Vec<ChunkId>,
}

/// The blobs of the planned packs, split per pack into live and unreferenced ones. Trailers are
/// read pack by pack; the index is looked up once for all entries, in id order (neighbouring
/// index pages, each read once).
fn blobs_of_packs(
    repo: &Repo,
    index: &IndexReader,
    refs: &redb::ReadOnlyTable<&'static [u8; 32], u32>,
    packs: &[(u32, PackInfo)],
) -> Result<BTreeMap<u32, PackBlobs>> {
    let mut all: Vec<(ChunkId, u32)> = Vec::new();
    for (no, info) in packs {
        let name = info.object_name();
        let (_, entries) = crate::pack::read_entries(repo.backend.as_ref(), &name, repo.mac_key())
            .map_err(|e| Error::corrupt(format!("{e}; nothing was removed (run verify)")))?;
        all.extend(entries.iter().map(|e| (e.id, *no)));
    }
    all.sort_unstable();
    // Where the index places each entry and whether it is counted: by point lookups for a few
    // entries, by one ordered pass over each table (merged with the sorted entries) for many.
    let mut locs: Vec<Option<BlobLoc>> = vec![None; all.len()];
    let mut counted = vec![false; all.len()];
    if (all.len() as u64) < refs.len()? / 8 {
        for (i, (id, _)) in all.iter().enumerate() {
            locs[i] = index.blob(id)?;
            counted[i] = refs.get(id.as_bytes())?.is_some();
        }
    } else {
        let mut at = 0;
        index.for_each_blob(|id, loc| {
            for i in matching(&all, &mut at, &id) {
                locs[i] = Some(loc);
            }
            Ok(())
        })?;
        let mut at = 0;
        for item in refs.iter()? {
            for i in matching(&all, &mut at, &ChunkId(*item?.0.value())) {
                counted[i] = true;
            }
        }
    }
    let mut out: BTreeMap<u32, PackBlobs> = packs
        .iter()
        .map(|(no, _)| (*no, PackBlobs::default()))
        .collect();
    for (i, (id, no)) in all.into_iter().enumerate() {
        match locs[i] {
            Some(loc) if loc.pack == no => {
                let here = out.get_mut(&no).expect("every planned pack has an entry");
                if counted[i] {
                    here.live.push((id, loc));
                } else {
                    here.dead.push(id);
                }
            }
            // Indexed in another pack, or not at all: not this pack's to keep or drop.
            _ => {}
        }
    }
    Ok(out)
}

/// In `sorted` (entries in id order), the positions holding `id`, searching from `*at` on; `*at`
/// moves past them, so ids given in increasing order merge with `sorted` in one pass.
fn matching(sorted: &[(ChunkId, u32)], at: &mut usize, id: &ChunkId) -> std::ops::Range<usize> {
    while *at < sorted.len() && sorted[*at].0 < *id {
        *at += 1;
    }
    let start = *at;
    while *at < sorted.len() && sorted[*at].0 == *id {
        *at += 1;
    }
    start..*at
}

pub fn gc(repo: &Repo, opts: &GcOptions) -> Result<GcReport> {
    if !(0.0..=1.0).contains(&opts.max_unused) {
        return Err(Error::invalid("--max-unused must be between 0% and 100%"));
    }
    let mut report = GcReport {
        dry_run: opts.dry_run,
        ..GcReport::default()
    };
    repo.ensure_current()?;
    refuse_behind_snapshot_files(repo)?;
    // The plan needs every snapshot's references counted. (Also in a dry run: counting is
    // bookkeeping and removes nothing.)
    let settle = repo.index.write()?;
    report.counted_snapshots =
        crate::refs::settle(repo.backend.as_ref(), repo.keys(), &settle, &[])?;
    settle.commit()?;
    let txn = repo.index.read()?;
    let index = IndexReader::new(&txn)?;
    report.snapshots = crate::index::snapshot_ids(&txn)?.len() as u64;
    let packs = index.packs()?;
    report.packs_before = packs.len() as u64;
    let usage = crate::index::pack_uses(&txn)?;

    let PackPlan {
        plan,
        kept_frames,
        kept_live,
        rewritten_live,
    } = plan_packs(&packs, &usage, opts.max_unused, &mut report)?;
    let count = |p: Plan| plan.values().filter(|&&v| v == p).count() as u64;
    report.packs_deleted = count(Plan::Delete);
    report.packs_rewritten = count(Plan::Rewrite);

    let known: HashSet<String> = packs.iter().map(|(_, info)| info.object_name()).collect();
    let unknown: Vec<String> = repo
        .backend
        .list("packs")?
        .into_iter()
        .filter(|n| n.ends_with(".pack") && !known.contains(n))
        .collect();
    report.unknown_pack_files = unknown.len() as u64;
    let mut unknown_bytes = 0;
    for n in &unknown {
        unknown_bytes += repo.backend.size(n).unwrap_or(0);
    }
    report.bytes_before += unknown_bytes;
    let infos: HashMap<u32, PackInfo> = packs.iter().copied().collect();
    let removed_bytes: u64 = plan
        .iter()
        .filter(|(_, p)| **p != Plan::Trim)
        .map(|(no, _)| infos[no].size)
        .sum::<u64>()
        + unknown_bytes;
    if opts.dry_run {
        report.frame_bytes_after = kept_frames + rewritten_live;
        report.live_bytes_after = kept_live + rewritten_live;
        report.bytes_after = report.bytes_before - removed_bytes + rewritten_live;
        report.bytes_reclaimed = report.bytes_before - report.bytes_after;
        // What gc would drop: stamps whose root blob is unindexed or unreferenced.
        if let Some(files) = crate::index::open_files(&txn)? {
            let refs = txn.open_table(REFS)?;
            let (stale, kept) = split_file_keys(&files, |id| {
                Ok(index.contains(id)? && refs.get(id.as_bytes())?.is_some())
            })?;
            report.file_entries_dropped = stale.len() as u64;
            report.page_sums_removed =
                crate::pagesums::sweep(repo, kept.iter().map(Vec::as_slice), false);
        }
        return Ok(report);
    }

    // The blobs of every pack in the plan, each judged by its own reference count.
    let refs = txn.open_table(REFS)?;
    let planned: Vec<(u32, PackInfo)> = plan.keys().map(|no| (*no, infos[no])).collect();
    let mut touched = blobs_of_packs(repo, &index, &refs, &planned)?;
    for (no, p) in &plan {
        if *p == Plan::Delete && !touched[no].live.is_empty() {
            return Err(Error::corrupt(format!(
                "pack #{no} holds referenced blobs its usage record does not count; nothing was \
                 removed (run `strata repair index`)"
            )));
        }
    }
    drop(refs);

    // Write the live blobs of packs being rewritten into new packs.
    let blobs = BlobReader::new(repo, &index)?;
    let mut next_no = crate::index::meta(&txn, META_NEXT_PACK)?.unwrap_or(0) as u32;
    let mut written: Vec<WrittenPack> = Vec::new();
    let mut current: Option<PackWriter<Box<dyn crate::storage::ObjectWriter + '_>>> = None;
    for (no, _) in plan.iter().filter(|(_, p)| **p == Plan::Rewrite) {
        let mut live_here = std::mem::take(
            &mut touched
                .get_mut(no)
                .expect("every planned pack is touched")
                .live,
        );
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

    // One transaction: new locations, unreferenced blobs and old packs gone.
    let kept: FileKeys;
    let wtxn = repo.index.write()?;
    insert_packs(&wtxn, written)?;
    {
        let mut blob_table = wtxn.open_table(BLOBS)?;
        let mut use_table = wtxn.open_table(PACK_USE)?;
        let mut pack_table = wtxn.open_table(PACKS)?;
        let mut trimmed = crate::refs::UsageCache::default();
        for (no, blobs) in &touched {
            for id in &blobs.dead {
                blob_table.remove(id.as_bytes())?;
            }
            if plan[no] == Plan::Trim {
                let row = trimmed.get(&use_table, *no)?;
                row.indexed = row.indexed.saturating_sub(blobs.dead.len() as u32);
            } else {
                use_table.remove(*no)?;
                pack_table.remove(*no)?;
            }
        }
        trimmed.flush(&mut use_table)?;
        let mut meta = wtxn.open_table(META)?;
        let next = meta.get(META_NEXT_PACK)?.map(|v| v.value()).unwrap_or(0);
        meta.insert(META_NEXT_PACK, next.max(next_no as u64))?;
        // Every unreferenced blob has just left the index (each pack holding one is in the
        // plan), so a stamp naming one goes too.
        let mut files = wtxn.open_table(FILES)?;
        let stale;
        (stale, kept) = split_file_keys(&files, |id| Ok(blob_table.get(id.as_bytes())?.is_some()))?;
        for key in &stale {
            files.remove(key.as_slice())?;
        }
        report.file_entries_dropped = stale.len() as u64;
    }
    wtxn.commit()?;
    // Files are deleted below only if the index just committed is the repository's: one
    // replaced meanwhile may still need them.
    repo.ensure_current()?;
    // The digest records of files the cache no longer holds (dropped above, or left by a
    // killed writer): after the commit, as a record without its entry is never read.
    report.page_sums_removed = crate::pagesums::sweep(repo, kept.iter().map(Vec::as_slice), true);
    if let Some(cache) = repo.backend.node_cache() {
        let dead: std::collections::HashSet<&ChunkId> =
            touched.values().flat_map(|b| &b.dead).collect();
        cache.retain(&|id| Ok(!dead.contains(id)))?;
    }

    // Only now: old files. (A rewritten pack can come out byte for byte like an old one, and
    // then has its name: that file is the new pack and stays.) Readers that opened the index
    // before the commit above may still read them: while one runs, they stay, as pack files
    // the index does not know, for the next gc.
    let doomed: Vec<String> = plan
        .iter()
        .filter(|(_, p)| **p != Plan::Trim)
        .map(|(no, _)| infos[no].object_name())
        .chain(unknown.iter().cloned())
        .filter(|n| !new_names.contains(n))
        .collect();
    let readers = crate::readers::live(repo.backend.as_ref())?;
    if readers.is_empty() {
        for name in &doomed {
            repo.backend.delete(name)?;
        }
    } else {
        report.readers = readers.len() as u64;
        report.packs_deferred = doomed.len() as u64;
        report.bytes_deferred = doomed
            .iter()
            .map(|n| repo.backend.size(n).unwrap_or(0))
            .sum();
    }
    report.bytes_after = report.bytes_before - removed_bytes + new_bytes + report.bytes_deferred;
    report.bytes_reclaimed = report.bytes_before - report.bytes_after;
    report.frame_bytes_after = kept_frames + new_frames;
    report.live_bytes_after = kept_live + new_frames;
    Ok(report)
}

/// Refuses to collect garbage while a snapshot has a manifest file but the index does not list
/// it (an index copied back from before that backup, or replaced under a running writer): its
/// packs would look like garbage. `strata repair index` rebuilds the index from the files.
fn refuse_behind_snapshot_files(repo: &Repo) -> Result<()> {
    let txn = repo.index.read()?;
    let indexed: HashSet<String> = crate::index::snapshot_ids(&txn)?
        .iter()
        .map(crate::manifest::object_name)
        .collect();
    let unlisted: Vec<String> = repo
        .backend
        .list("snapshots")?
        .into_iter()
        .filter(|n| !indexed.contains(n))
        .collect();
    match unlisted.first() {
        None => Ok(()),
        Some(first) => Err(Error::corrupt(format!(
            "the index does not list {} snapshot file(s) ({first}{}): it is behind the \
             repository, and gc would take their data for garbage; nothing was removed. Run \
             `strata repair index`, then gc again",
            unlisted.len(),
            if unlisted.len() > 1 { ", ..." } else { "" }
        ))),
    }
}

/// What gc does with each pack, and the frame bytes that stay.
#[derive(Debug, Default, PartialEq)]
struct PackPlan {
    /// Packs that are deleted, rewritten or trimmed; the others stay as they are.
    plan: BTreeMap<u32, Plan>,
    /// Frame bytes and live frame bytes of the packs that stay as they are.
    kept_frames: u64,
    kept_live: u64,
    /// Live frame bytes of the packs being rewritten.
    rewritten_live: u64,
}

/// Plans every pack from its row in `pack_use` alone (no pack is read): a pack with no live blob
/// is deleted; one whose unused frame bytes exceed `max_unused` times its live ones is
/// rewritten; a kept one with unreferenced index entries is trimmed. Also adds up the totals of
/// `report` that depend only on the rows.
fn plan_packs(
    packs: &[(u32, PackInfo)],
    usage: &HashMap<u32, crate::index::PackUse>,
    max_unused: f64,
    report: &mut GcReport,
) -> Result<PackPlan> {
    let mut out = PackPlan::default();
    for (no, info) in packs {
        let u = usage.get(no).ok_or_else(|| {
            Error::corrupt(format!(
                "the index has no usage record for pack #{no}; run `strata repair index`"
            ))
        })?;
        report.bytes_before += info.size;
        report.live_blobs += u.live_blobs as u64;
        report.dead_blobs += u.indexed.saturating_sub(u.live_blobs) as u64;
        let frames = frame_bytes(info.size, info.blobs);
        // (Shares are rounded down per blob; a pack whose every blob is live is live whole.)
        let live = if u.live_blobs == info.blobs {
            frames
        } else {
            u.live_bytes.min(frames)
        };
        // Unused bytes may be at most `max_unused` times the live ones, so that after gc the
        // packs hold at most live x (1 + max_unused) frame bytes.
        let unused = frames - live;
        if u.live_blobs == 0 {
            out.plan.insert(*no, Plan::Delete);
        } else if u.live_blobs < info.blobs && unused as f64 > max_unused * live as f64 {
            out.plan.insert(*no, Plan::Rewrite);
            out.rewritten_live += live;
        } else {
            if u.indexed > u.live_blobs {
                out.plan.insert(*no, Plan::Trim);
            }
            out.kept_frames += frames;
            out.kept_live += live;
        }
    }
    Ok(out)
}

/// File-cache keys (absolute source paths).
type FileKeys = Vec<Vec<u8>>;

/// The keys of the file-cache entries, split into those whose content's root blob `live`
/// rejects (or that cannot be read) and the rest. The first kind a backup could not reuse, and
/// they would stay forever for a file no longer backed up.
fn split_file_keys(
    files: &impl ReadableTable<&'static [u8], &'static [u8]>,
    live: impl Fn(&ChunkId) -> Result<bool>,
) -> Result<(FileKeys, FileKeys)> {
    let (mut stale, mut kept) = (Vec::new(), Vec::new());
    for item in files.iter()? {
        let (key, value) = item?;
        let keep = match crate::codec::decode::<FileStamp>(value.value(), "file cache") {
            Ok(stamp) => match stamp.content {
                Content::Empty => true,
                Content::Chunk(id) | Content::Tree(id) => live(&id)?,
            },
            Err(_) => false,
        };
        match keep {
            true => kept.push(key.value().to_vec()),
            false => stale.push(key.value().to_vec()),
        }
    }
    Ok((stale, kept))
}

/// Bytes of a pack that hold frames: the file without header, trailer and footer.
fn frame_bytes(size: u64, blobs: u32) -> u64 {
    let overhead = (crate::pack::HEADER_LEN + crate::pack::FOOTER_LEN) as u64
        + blobs as u64 * crate::pack::ENTRY_LEN as u64;
    size.saturating_sub(overhead)
}

/// Finishes a pack written by gc or copy: commits its object and gives it the next number.
pub(crate) fn seal(
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::PackUse;

    /// A pack of `blobs` blobs with `frames` frame bytes.
    fn pack(no: u32, blobs: u32, frames: u64) -> (u32, PackInfo) {
        let overhead = (crate::pack::HEADER_LEN + crate::pack::FOOTER_LEN) as u64
            + blobs as u64 * crate::pack::ENTRY_LEN as u64;
        (
            no,
            PackInfo {
                id: ChunkId([no as u8; 32]),
                size: frames + overhead,
                blobs,
            },
        )
    }

    fn usage(indexed: u32, live_blobs: u32, live_bytes: u64) -> PackUse {
        PackUse {
            indexed,
            live_blobs,
            live_bytes,
        }
    }

    #[test]
    fn each_pack_is_planned_from_its_usage_row() {
        let packs = vec![
            pack(1, 10, 1000), // all live: stays
            pack(2, 10, 1000), // nothing live: deleted
            pack(3, 10, 1000), // 30% unused of 70% live, over 10%: rewritten
            pack(4, 10, 1000), // 5% unused: stays, its unreferenced entries trimmed
            pack(5, 10, 1000), // all live, one stale entry gone already: stays untouched
        ];
        let rows: HashMap<u32, PackUse> = [
            (1, usage(10, 10, 990)),
            (2, usage(10, 0, 0)),
            (3, usage(10, 7, 700)),
            (4, usage(10, 9, 952)),
            (5, usage(9, 9, 1000)),
        ]
        .into_iter()
        .collect();
        let mut report = GcReport::default();
        let p = plan_packs(&packs, &rows, 0.1, &mut report).unwrap();
        let want: BTreeMap<u32, Plan> = [(2, Plan::Delete), (3, Plan::Rewrite), (4, Plan::Trim)]
            .into_iter()
            .collect();
        assert_eq!(p.plan, want);
        // Pack 1 is live whole (its rounded-down shares do not count); pack 5 has 9 of 10
        // blobs live, at most its frames.
        assert_eq!(p.kept_frames, 3000);
        assert_eq!(p.kept_live, 1000 + 952 + 1000);
        assert_eq!(p.rewritten_live, 700);
        assert_eq!(report.live_blobs, 10 + 7 + 9 + 9);
        assert_eq!(report.dead_blobs, 10 + 3 + 1);
        assert_eq!(
            report.bytes_before,
            packs.iter().map(|(_, i)| i.size).sum::<u64>()
        );

        // With all unused space allowed, the partly used pack stays (trimmed); a pack with no
        // live blob goes whatever the setting.
        let p = plan_packs(&packs, &rows, 1.0, &mut GcReport::default()).unwrap();
        assert_eq!(p.plan.get(&3), Some(&Plan::Trim));
        assert_eq!(p.plan.get(&2), Some(&Plan::Delete));
        // With none allowed, every pack with an unused byte is rewritten.
        let p = plan_packs(&packs, &rows, 0.0, &mut GcReport::default()).unwrap();
        assert_eq!(p.plan.get(&4), Some(&Plan::Rewrite));
    }

    #[test]
    fn a_pack_without_a_usage_row_stops_the_plan() {
        let packs = vec![pack(1, 4, 400), pack(2, 4, 400)];
        let rows: HashMap<u32, PackUse> = [(1, usage(4, 4, 400))].into_iter().collect();
        let e = plan_packs(&packs, &rows, 0.1, &mut GcReport::default()).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Corrupt);
        assert!(e.to_string().contains("pack #2"), "{e}");
        assert!(e.to_string().contains("repair index"), "{e}");
    }
}

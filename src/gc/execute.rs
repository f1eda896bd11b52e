//! Carrying out a [`GcPlan`]: rewritten packs written and fsynced, then one index transaction,
//! then the old files deleted (or kept for the next gc while readers run).

use super::file_cache::{FileKeys, split_file_keys};
use super::plan::{Fate, GcPlan, frame_bytes};
use super::report::GcReport;
use crate::blobs::{BlobReader, blob_in_frame, check_hash};
use crate::commit::insert_packs;
use crate::compress::compress;
use crate::error::{Error, Result};
use crate::id::ChunkId;
use crate::index::{
    BLOBS, BlobLoc, FILES, IndexReader, META, META_NEXT_PACK, PACK_USE, PACKS, PackInfo, REFS,
};
use crate::pack::PackWriter;
use crate::packer::WrittenPack;
use crate::repo::Repo;
use redb::{ReadableTable, ReadableTableMetadata};
use std::collections::{BTreeMap, HashMap, HashSet};

/// Carries out `plan`, which [`super::plan`] made on this repository under the lock still held.
/// Every blob of the planned packs is judged by its own reference count before anything
/// changes; a pack planned for deletion that holds a referenced blob stops gc.
pub fn execute(repo: &Repo, plan: GcPlan) -> Result<GcReport> {
    execute_with(repo, plan, None)
}

/// The bytes of the packs a plan rewrites: what [`execute_with`] reads and reports.
pub fn bytes_to_rewrite(plan: &GcPlan) -> u64 {
    plan.with_fate(Fate::Rewrite).map(|p| p.bytes).sum()
}

/// [`execute`], telling `progress` the bytes of each pack once it is rewritten.
pub fn execute_with(repo: &Repo, plan: GcPlan, progress: Option<&dyn Fn(u64)>) -> Result<GcReport> {
    let mut report = GcReport::planned(&plan);
    let txn = repo.index.read()?;
    let index = IndexReader::new(&txn)?;
    let next_no = crate::index::meta(&txn, META_NEXT_PACK)?.unwrap_or(0);
    if next_no != plan.next_pack {
        return Err(Error::invalid(
            "packs were added to the index since gc made its plan; nothing was removed, run gc \
             again",
        ));
    }
    let mut touched = blobs_of_plan(repo, &txn, &index, &plan)?;
    let mut next_no = next_no as u32;
    let written = rewrite(repo, &index, &plan, &mut touched, &mut next_no, progress)?;
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
    drop(index);
    drop(txn);

    let kept = commit(repo, &plan, &touched, written, next_no, &mut report)?;
    // Files are deleted below only if the index just committed is the repository's: one
    // replaced meanwhile may still need them.
    repo.ensure_current()?;
    // The digest records of files the cache no longer holds (dropped above, or left by a
    // killed writer): after the commit, as a record without its entry is never read.
    report.page_sums_removed = crate::pagesums::sweep(repo, kept.iter().map(Vec::as_slice), true);
    if let Some(cache) = repo.backend.node_cache() {
        let dead: HashSet<&ChunkId> = touched.values().flat_map(|b| &b.dead).collect();
        cache.retain(&|id| Ok(!dead.contains(id)))?;
    }
    remove_files(repo, doomed(&plan, &new_names), &mut report)?;
    report.bytes_after =
        report.bytes_before - plan.bytes_removed + new_bytes + report.bytes_deferred;
    report.bytes_reclaimed = report.bytes_before - report.bytes_after;
    report.frame_bytes_after = plan.kept_frame_bytes + new_frames;
    report.live_bytes_after = plan.kept_live_bytes + new_frames;
    report.index_compacted = super::compact::compact_index(repo)?;
    Ok(report)
}

/// The blobs of a pack the index places in it, split by whether anything references them.
#[derive(Default)]
struct PackBlobs {
    live: Vec<(ChunkId, BlobLoc)>,
    dead: Vec<ChunkId>,
}

/// The blobs of every pack in the plan, each judged by its own reference count; refuses a
/// pack planned for deletion that holds a referenced blob (its usage row is wrong).
fn blobs_of_plan(
    repo: &Repo,
    txn: &redb::ReadTransaction,
    index: &IndexReader,
    plan: &GcPlan,
) -> Result<BTreeMap<u32, PackBlobs>> {
    let refs = txn.open_table(REFS)?;
    let planned: Vec<(u32, PackInfo)> = plan.packs.iter().map(|p| (p.pack, p.info)).collect();
    let touched = blobs_of_packs(repo, index, &refs, &planned)?;
    for p in plan.with_fate(Fate::Delete) {
        if !touched[&p.pack].live.is_empty() {
            return Err(Error::corrupt(format!(
                "pack #{} holds referenced blobs its usage record does not count; nothing was \
                 removed (run `strata repair index`)",
                p.pack
            )));
        }
    }
    Ok(touched)
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

/// Writes the live blobs of the packs being rewritten into new packs, numbered from
/// `*next_no` on.
fn rewrite(
    repo: &Repo,
    index: &IndexReader,
    plan: &GcPlan,
    touched: &mut BTreeMap<u32, PackBlobs>,
    next_no: &mut u32,
    progress: Option<&dyn Fn(u64)>,
) -> Result<Vec<WrittenPack>> {
    let blobs = BlobReader::new(repo, index)?;
    let mut written: Vec<WrittenPack> = Vec::new();
    let mut current: Option<PackWriter<Box<dyn crate::storage::ObjectWriter + '_>>> = None;
    for p in plan.with_fate(Fate::Rewrite) {
        let mut live_here = std::mem::take(
            &mut touched
                .get_mut(&p.pack)
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
                written.push(seal(current.take().expect("present"), next_no)?);
            }
        }
        if let Some(tell) = progress {
            tell(p.bytes);
        }
    }
    if let Some(w) = current.take() {
        written.push(seal(w, next_no)?);
    }
    Ok(written)
}

/// One transaction: new locations, unreferenced blobs and old packs gone, and the file-cache
/// entries naming a blob that left. Returns the file-cache keys that stay.
fn commit(
    repo: &Repo,
    plan: &GcPlan,
    touched: &BTreeMap<u32, PackBlobs>,
    written: Vec<WrittenPack>,
    next_no: u32,
    report: &mut GcReport,
) -> Result<FileKeys> {
    let fates: HashMap<u32, Fate> = plan.packs.iter().map(|p| (p.pack, p.fate)).collect();
    let kept: FileKeys;
    let wtxn = repo.index.write()?;
    insert_packs(&wtxn, written)?;
    {
        let mut blob_table = wtxn.open_table(BLOBS)?;
        let mut use_table = wtxn.open_table(PACK_USE)?;
        let mut pack_table = wtxn.open_table(PACKS)?;
        let mut trimmed = crate::refs::UsageCache::default();
        for (no, blobs) in touched {
            for id in &blobs.dead {
                blob_table.remove(id.as_bytes())?;
            }
            if fates[no] == Fate::Trim {
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
    Ok(kept)
}

/// The files the plan removes, but for a new pack that came out byte for byte like an old one
/// and so has its name: that file is the new pack and stays.
fn doomed(plan: &GcPlan, new_names: &HashSet<String>) -> Vec<String> {
    plan.files_to_delete()
        .filter(|n| !new_names.contains(*n))
        .map(str::to_string)
        .collect()
}

/// Deletes the old files, after the commit. Readers that opened the index before it may still
/// read them: while one runs, they stay, as pack files the index does not know, for the next
/// gc.
fn remove_files(repo: &Repo, doomed: Vec<String>, report: &mut GcReport) -> Result<()> {
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
    Ok(())
}

/// Finishes a pack written by gc: commits its object and gives it the next number.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gc::plan::{UnknownPack, plan};

    fn new_repo(dir: &std::path::Path) -> Repo {
        let params = crate::chunker::ChunkerParams {
            min: 1024,
            avg: 4096,
            max: 16384,
        };
        let config = crate::layout::Config::new(params, 1).unwrap();
        Repo::init(&dir.join("repo"), config).unwrap()
    }

    /// A pack file the index does not know, as an interrupted backup leaves.
    fn stray_pack(repo: &Repo, n: u8, len: usize) -> String {
        let name = crate::index::pack_object_name(&ChunkId([n; 32]));
        repo.backend.put(&name, &vec![n; len]).unwrap();
        name
    }

    #[test]
    fn nothing_is_deleted_while_a_reader_runs() {
        let dir = tempfile::tempdir().unwrap();
        let repo = new_repo(dir.path());
        let stray = stray_pack(&repo, 0xab, 300);
        let reader = crate::readers::register(repo.backend.as_ref(), "restore").unwrap();

        let p = plan(&repo, 0.1).unwrap();
        // A dry run names the reader.
        let dry = crate::gc::forecast(&repo, p.clone()).unwrap();
        assert_eq!(dry.plan.map(|d| d.readers), Some(1));
        assert_eq!(
            p.unknown_packs,
            vec![UnknownPack {
                name: stray.clone(),
                bytes: 300
            }]
        );
        assert_eq!((p.bytes_removed, p.bytes_freed), (300, 300));
        let r = execute(&repo, p).unwrap();
        assert_eq!((r.readers, r.packs_deferred, r.bytes_deferred), (1, 1, 300));
        assert_eq!(r.bytes_reclaimed, 0);
        assert!(
            repo.backend.exists(&stray).unwrap(),
            "deleted under a reader"
        );

        // The reader is done: the next gc deletes the file.
        crate::readers::unregister(repo.backend.as_ref(), &reader);
        let p = plan(&repo, 0.1).unwrap();
        let dry = crate::gc::forecast(&repo, p.clone()).unwrap();
        assert_eq!(dry.plan.map(|d| d.readers), Some(0));
        let r = execute(&repo, p).unwrap();
        assert_eq!((r.readers, r.packs_deferred), (0, 0));
        assert_eq!((r.unknown_pack_files, r.bytes_reclaimed), (1, 300));
        assert!(!repo.backend.exists(&stray).unwrap());
    }

    #[test]
    fn a_plan_is_carried_out_only_on_the_index_it_was_made_on() {
        let dir = tempfile::tempdir().unwrap();
        let repo = new_repo(dir.path());
        let stray = stray_pack(&repo, 0xcd, 100);
        let p = plan(&repo, 0.1).unwrap();
        // A pack indexed since (its number taken): the stray file may be that pack now.
        let txn = repo.index.write().unwrap();
        txn.open_table(META)
            .unwrap()
            .insert(META_NEXT_PACK, p.next_pack + 1)
            .unwrap();
        txn.commit().unwrap();
        let e = execute(&repo, p).unwrap_err();
        assert!(e.to_string().contains("run gc again"), "{e}");
        assert!(repo.backend.exists(&stray).unwrap());
    }

    #[test]
    fn a_rewritten_pack_with_an_old_name_stays() {
        let p = GcPlan {
            unknown_packs: vec![
                UnknownPack {
                    name: "packs/aa/aa.pack".into(),
                    bytes: 1,
                },
                UnknownPack {
                    name: "packs/bb/bb.pack".into(),
                    bytes: 1,
                },
            ],
            ..GcPlan::default()
        };
        let new: HashSet<String> = ["packs/bb/bb.pack".to_string()].into();
        assert_eq!(doomed(&p, &new), vec!["packs/aa/aa.pack".to_string()]);
    }
}

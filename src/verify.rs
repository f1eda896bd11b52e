//! Verification: every snapshot's manifest, chunk-list trees and chunks are accounted for, and
//! the WAL archive holds every segment from each PostgreSQL base backup's start to its newest
//! segment ([`crate::pg::retain`]); with `read_data`, every pack is read and every blob
//! decompressed and checked against its id.

use crate::blobs::{BlobReader, check_hash};
use crate::error::{Error, Result};
use crate::id::ChunkId;
use crate::index::{BlobLoc, IndexReader, PackInfo, PackUse};
use crate::manifest::{Content, EntryKind, Manifest};
use crate::pack::{BlobKind, parse_pack};
use crate::repo::Repo;
use crate::restore::check_entry_path;
use crate::tree::Node;
use rayon::prelude::*;
use std::collections::{HashMap, HashSet};

#[derive(Debug, Clone, serde::Serialize)]
pub struct Problem {
    pub snapshot: Option<String>,
    pub path: Option<String>,
    pub message: String,
}

#[derive(Debug, Default, serde::Serialize)]
pub struct VerifyReport {
    pub snapshots: u64,
    pub files: u64,
    pub packs: u64,
    pub blobs_read: u64,
    pub bytes_read: u64,
    /// Packs whose data was read.
    pub packs_read: u64,
    pub problems: Vec<Problem>,
    /// Observations that are not damage (nothing is lost), such as a manifest file that the next
    /// writer will restore from the index.
    pub notes: Vec<String>,
    /// Recount: distinct blobs the snapshots reference, and indexed blobs none references (with
    /// their share of stored bytes): what `gc` would reclaim.
    pub referenced_blobs: u64,
    pub unreferenced_blobs: u64,
    pub unreferenced_bytes: u64,
    /// Snapshots added since references were last counted (the next forget or gc counts them).
    pub uncounted_snapshots: u64,
    /// Records of the capture journals of followed databases read whole (with the data).
    pub journal_records: u64,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

fn problem(
    report: &mut VerifyReport,
    snapshot: Option<&ChunkId>,
    path: Option<String>,
    msg: String,
) {
    report.problems.push(Problem {
        snapshot: snapshot.map(|s| s.short()),
        path,
        message: msg,
    });
}

/// How much pack data `verify` reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadData {
    /// None: structure only.
    Nothing,
    /// Every pack.
    All,
    /// The packs whose number is `part` modulo `of` (0-based), so `of` runs with `part` going
    /// round cover every pack.
    Part { part: u32, of: u32 },
}

impl ReadData {
    fn wants(&self, pack_no: u32) -> bool {
        match *self {
            ReadData::Nothing => false,
            ReadData::All => true,
            ReadData::Part { part, of } => pack_no % of.max(1) == part,
        }
    }
}

/// What reading one pack found.
struct PackCheck {
    pack: u32,
    blobs: u64,
    bytes: u64,
    /// Blobs that failed their check, and what was wrong.
    bad: Vec<ChunkId>,
    msgs: Vec<String>,
    /// Index entries placing a blob in this pack that its trailer confirmed (`None`: the pack
    /// could not be read).
    confirmed: Option<u64>,
}

pub fn verify(repo: &Repo, read_data: bool) -> Result<VerifyReport> {
    verify_reading(
        repo,
        if read_data {
            ReadData::All
        } else {
            ReadData::Nothing
        },
    )
}

/// Like [`verify`], reading the packs `read` selects.
pub fn verify_reading(repo: &Repo, read: ReadData) -> Result<VerifyReport> {
    verify_reading_with(repo, read, None)
}

/// The bytes of the packs `read` selects in `repo`: what [`verify_reading_with`] reads.
pub fn bytes_to_read(repo: &Repo, read: ReadData) -> Result<u64> {
    let txn = repo.index.read()?;
    let index = IndexReader::new(&txn)?;
    Ok(index
        .packs()?
        .iter()
        .filter(|(no, _)| read.wants(*no))
        .map(|(_, p)| p.size)
        .sum())
}

/// [`verify_reading`], telling `progress` the bytes of each pack once it is checked.
pub fn verify_reading_with(
    repo: &Repo,
    read: ReadData,
    progress: Option<&(dyn Fn(u64) + Sync)>,
) -> Result<VerifyReport> {
    let mut report = VerifyReport::default();
    let txn = repo.index.read()?;
    let index = IndexReader::new(&txn)?;
    let packs = index.packs()?;
    report.packs = packs.len() as u64;

    let bad_packs = check_pack_sizes(repo, &packs, &mut report);
    let mut bad_blobs: HashSet<ChunkId> = HashSet::new();
    // Per pack read: how many index entries its trailer confirmed.
    let mut confirmed_in: HashMap<u32, u64> = HashMap::new();
    if read != ReadData::Nothing {
        for c in read_packs(repo, &index, &packs, &bad_packs, read, progress) {
            if let Some(n) = c.confirmed {
                confirmed_in.insert(c.pack, n);
            }
            report.packs_read += 1;
            report.blobs_read += c.blobs;
            report.bytes_read += c.bytes;
            bad_blobs.extend(c.bad);
            for m in c.msgs {
                problem(&mut report, None, None, m);
            }
        }
    }

    let blobs = BlobReader::new(repo, &index)?;
    let mut walk = Walk {
        index: &index,
        blobs: &blobs,
        bad_blobs: &bad_blobs,
        bad_packs: &bad_packs,
        verdicts: HashMap::new(),
        lengths: HashMap::new(),
    };
    let mut archive = crate::pg::retain::ArchiveView::default();
    let indexed = check_snapshots(repo, &txn, &mut walk, &mut archive, &mut report)?;
    // A base backup is only as good as the WAL archive after it.
    for gap in archive.gaps(repo) {
        problem(&mut report, None, None, gap);
    }
    check_unlisted_snapshot_files(repo, &indexed, &mut report)?;
    // Recount: every blob reached above is referenced; indexed blobs that were not are leaks
    // until gc reclaims them, and referenced ones missing from the index were reported above.
    report.referenced_blobs = walk.verdicts.len() as u64;
    check_index_entries(
        &index,
        &packs,
        &walk.verdicts,
        &confirmed_in,
        &bad_packs,
        &mut report,
    )?;
    check_counts(repo, &mut report, &txn, &index, &blobs)?;
    if read != ReadData::Nothing {
        check_journals(repo, &mut report)?;
    }
    Ok(report)
}

/// The capture journals of followed databases (see [`crate::follow`]), read whole: a damaged
/// record is a gap that `restore --at` cannot cross.
fn check_journals(repo: &Repo, report: &mut VerifyReport) -> Result<()> {
    let root = repo.root.join("follow");
    let Ok(dirs) = std::fs::read_dir(&root) else {
        return Ok(());
    };
    for d in dirs.flatten() {
        if !d.path().is_dir() {
            continue;
        }
        let c = crate::follow::journal::check(&d.path())?;
        report.journal_records += c.records;
        report.bytes_read += c.bytes;
        for m in c.problems {
            problem(report, None, None, format!("capture journal: {m}"));
        }
    }
    Ok(())
}

/// Packs present with the recorded size; returns the numbers of those that are not.
fn check_pack_sizes(
    repo: &Repo,
    packs: &[(u32, PackInfo)],
    report: &mut VerifyReport,
) -> HashSet<u32> {
    let mut bad_packs: HashSet<u32> = HashSet::new();
    let sizes: Vec<Result<u64>> = crate::storage::with_io_pool(repo.backend.as_ref(), 64, || {
        packs
            .par_iter()
            .map(|(_, info)| repo.backend.size(&info.object_name()))
            .collect()
    });
    for ((no, info), size) in packs.iter().zip(sizes) {
        let name = info.object_name();
        match size {
            Ok(size) if size == info.size => {}
            Ok(size) => {
                bad_packs.insert(*no);
                problem(
                    report,
                    None,
                    None,
                    format!("{name}: {size} bytes, the index says {}", info.size),
                );
            }
            Err(e) => {
                bad_packs.insert(*no);
                problem(report, None, None, format!("{name}: {e}"));
            }
        }
    }
    bad_packs
}

/// Reads the packs `read` selects (but those found missing or damaged already), each blob
/// checked against its id.
fn read_packs(
    repo: &Repo,
    index: &IndexReader,
    packs: &[(u32, PackInfo)],
    bad_packs: &HashSet<u32>,
    read: ReadData,
    progress: Option<&(dyn Fn(u64) + Sync)>,
) -> Vec<PackCheck> {
    // Whole packs are read: a few at once on object storage bound the memory they take.
    crate::storage::with_io_pool(repo.backend.as_ref(), 4, || {
        packs
            .par_iter()
            .filter(|(no, _)| !bad_packs.contains(no) && read.wants(*no))
            .map(|(no, info)| {
                let checked = check_pack(repo, index, *no, info);
                if let Some(p) = progress {
                    p(info.size);
                }
                checked
            })
            .collect()
    })
}

/// Reads one pack: its content against its name, its trailer, every blob against its id, and
/// the index entries placing a blob in it against the trailer.
fn check_pack(repo: &Repo, index: &IndexReader, no: u32, info: &PackInfo) -> PackCheck {
    let key = repo.id_key().copied();
    let name = info.object_name();
    let mut bad = Vec::new();
    let mut msgs = Vec::new();
    let bytes = match repo.backend.get(&name) {
        Ok(b) => b,
        Err(e) => {
            return PackCheck {
                pack: no,
                blobs: 0,
                bytes: 0,
                bad,
                msgs: vec![format!("{name}: {e}")],
                confirmed: None,
            };
        }
    };
    // Ids whose index place one of this pack's entries confirms, and the index places no entry
    // here matched (a pack can hold a chunk twice).
    let mut confirmed: HashSet<ChunkId> = HashSet::new();
    let mut misplaced: Vec<(ChunkId, BlobLoc)> = Vec::new();
    if ChunkId(*blake3::hash(&bytes).as_bytes()) != info.id {
        msgs.push(format!("{name}: pack content does not match its name"));
    }
    let entries = match parse_pack(&bytes, &name, repo.mac_key()) {
        Ok(e) => e,
        Err(e) => {
            msgs.push(e.to_string());
            Vec::new()
        }
    };
    let mut count = 0;
    let mut frame_cache: Option<(u64, Result<Vec<u8>>)> = None;
    for e in &entries {
        count += 1;
        let loc = BlobLoc::from_entry(no, e);
        match index.blob(&e.id) {
            Ok(Some(at)) if at == loc => {
                confirmed.insert(e.id);
            }
            Ok(Some(at)) if at.pack == no => misplaced.push((e.id, at)),
            // Also stored elsewhere (the index names one copy), or not indexed (gc drops those
            // entries): not this pack's to confirm.
            Ok(_) => {}
            Err(err) => msgs.push(format!(
                "index entry of chunk {}: {err}; run `strata repair index`",
                e.id
            )),
        }
        let f = e.frame;
        if frame_cache.as_ref().map(|c| c.0) != Some(f.offset) {
            let stored = &bytes[f.offset as usize..(f.offset + f.stored_len as u64) as usize];
            let mut raw = vec![0u8; f.raw_len as usize];
            let decoded = crate::pack::decode_stored(
                repo.keys(),
                stored,
                f.compression,
                f.offset,
                &name,
                &mut raw,
            )
            .map(|()| raw);
            frame_cache = Some((f.offset, decoded));
        }
        let checked = match &frame_cache.as_ref().expect("set above").1 {
            Ok(raw) => {
                let s = e.offset_in_frame as usize;
                check_hash(
                    &raw[s..s + e.raw_len as usize],
                    &loc,
                    &e.id,
                    key.as_ref(),
                    &name,
                )
            }
            Err(err) => Err(Error::corrupt(format!("{err} (chunk {})", e.id))),
        };
        if let Err(err) = checked {
            bad.push(e.id);
            msgs.push(err.to_string());
        }
    }
    misplaced.retain(|(id, _)| !confirmed.contains(id));
    misplaced.sort_unstable_by_key(|(id, _)| *id);
    misplaced.dedup_by_key(|(id, _)| *id);
    for (id, at) in misplaced {
        msgs.push(format!(
            "index entry of chunk {id}: {name} at frame offset {}, {} bytes at {} in the frame, \
             where the pack's trailer has no such chunk; run `strata repair index`",
            at.frame_offset, at.raw_len, at.offset_in_frame
        ));
    }
    PackCheck {
        pack: no,
        blobs: count,
        bytes: bytes.len() as u64,
        bad,
        msgs,
        confirmed: Some(confirmed.len() as u64),
    }
}

/// Every snapshot the index lists: its manifest file beside the index's copy, safe paths, and
/// every tree and chunk it references. Returns the names of their manifest files.
fn check_snapshots(
    repo: &Repo,
    txn: &redb::ReadTransaction,
    walk: &mut Walk,
    archive: &mut crate::pg::retain::ArchiveView,
    report: &mut VerifyReport,
) -> Result<HashSet<String>> {
    let mut indexed: HashSet<String> = HashSet::new();
    for (id, bytes) in crate::index::snapshot_manifests(txn)? {
        report.snapshots += 1;
        indexed.insert(crate::manifest::object_name(&id));
        let manifest = match Manifest::decode(&bytes, Some(&id), repo.keys()) {
            Ok(m) => m,
            Err(e) => {
                problem(report, Some(&id), None, e.to_string());
                continue;
            }
        };
        match repo.backend.get(&crate::manifest::object_name(&id)) {
            Ok(file) if file == bytes => {}
            Ok(_) => problem(
                report,
                Some(&id),
                None,
                "manifest file differs from the index copy".into(),
            ),
            Err(e) if e.kind() == crate::ErrorKind::NotFound => report.notes.push(format!(
                "snapshot {}: manifest file missing (a backup or forget was interrupted); the \
                 next backup, forget or gc writes it again from the index",
                id.short()
            )),
            Err(e) => problem(report, Some(&id), None, format!("manifest file: {e}")),
        }
        if let Err(e) = archive.note(&id, &manifest) {
            problem(report, Some(&id), None, e.to_string());
        }
        check_entries(&id, &manifest, walk, report);
    }
    Ok(indexed)
}

/// The entries of one manifest: each path once and safe, and each file's chunk list whole and
/// of the size the manifest gives.
fn check_entries(id: &ChunkId, manifest: &Manifest, walk: &mut Walk, report: &mut VerifyReport) {
    let mut paths = HashSet::new();
    for entry in &manifest.entries {
        if !paths.insert(entry.path.as_slice()) {
            problem(
                report,
                Some(id),
                Some(entry.path_lossy()),
                "path recorded more than once".into(),
            );
            continue;
        }
        if let Err(e) = check_entry_path(&entry.path) {
            problem(report, Some(id), Some(entry.path_lossy()), e.to_string());
            continue;
        }
        if entry.kind != EntryKind::File {
            continue;
        }
        report.files += 1;
        let verdict = match &entry.content {
            Content::Empty => None,
            Content::Chunk(c) => walk.chunk(c),
            Content::Tree(root) => walk.tree(root, None),
            Content::Pages(map) => walk.map(map),
        };
        // Restore refuses a file whose size disagrees with its chunk list.
        let verdict = verdict.or_else(|| {
            let listed = match &entry.content {
                Content::Empty => Some(0),
                Content::Chunk(id) | Content::Tree(id) | Content::Pages(id) => {
                    walk.lengths.get(id).copied()
                }
            };
            listed.filter(|&n| n != entry.size).map(|n| {
                format!(
                    "the manifest gives its size as {} bytes, its chunk list holds {n}",
                    entry.size
                )
            })
        });
        if let Some(msg) = verdict {
            problem(report, Some(id), Some(entry.path_lossy()), msg);
        }
    }
}

/// Snapshot files the index does not list: a damaged one may be a lost snapshot.
fn check_unlisted_snapshot_files(
    repo: &Repo,
    indexed: &HashSet<String>,
    report: &mut VerifyReport,
) -> Result<()> {
    for name in repo.backend.list("snapshots")? {
        if indexed.contains(&name) {
            continue;
        }
        let id = name
            .strip_prefix("snapshots/")
            .and_then(|n| n.strip_suffix(".snap"))
            .and_then(|h| h.parse::<ChunkId>().ok());
        let bytes = match repo.backend.get(&name) {
            // Listed, then gone: another machine's `forget` deleted it after the listing (an
            // object store's listing can also lag a delete). Nothing is lost.
            Err(e) if e.kind() == crate::ErrorKind::NotFound => {
                report.notes.push(format!(
                    "{name} was listed but is gone: deleted while verify ran"
                ));
                continue;
            }
            other => other,
        };
        let decoded = bytes.and_then(|b| Manifest::decode(&b, id.as_ref(), repo.keys()));
        let committed_since = match &id {
            Some(id) if decoded.is_ok() => indexed_now(repo, id)?,
            _ => false,
        };
        match decoded {
            // Written by a backup that committed after this verify began.
            Ok(_) if committed_since => {}
            // The index is behind the repository's files: gc would take that snapshot's data
            // for garbage, so it is damage to repair, not a remark.
            Ok(_) => problem(
                report,
                None,
                Some(name.clone()),
                "holds a snapshot the index does not list (the index is behind the \
                 repository); run `strata repair index`"
                    .into(),
            ),
            Err(e) => problem(
                report,
                None,
                Some(name.clone()),
                format!("snapshot file not in the index and unreadable: {e}"),
            ),
        }
    }
    Ok(())
}

/// Every index entry: unreferenced ones counted (what gc would reclaim), and each placing a
/// blob in a pack the index lists and, for a pack that was read, that its trailer confirmed (a
/// damaged entry can name another pack, or one that does not exist).
fn check_index_entries(
    index: &IndexReader,
    packs: &[(u32, PackInfo)],
    referenced: &Memo,
    confirmed_in: &HashMap<u32, u64>,
    bad_packs: &HashSet<u32>,
    report: &mut VerifyReport,
) -> Result<()> {
    let mut indexed_in: HashMap<u32, u64> = HashMap::new();
    let known_packs: HashSet<u32> = packs.iter().map(|(no, _)| *no).collect();
    let mut unknown_pack_entries = 0u64;
    index.for_each_blob(|id, loc| {
        if !referenced.contains_key(&id) {
            report.unreferenced_blobs += 1;
            report.unreferenced_bytes += crate::refs::share(&loc);
        }
        if !known_packs.contains(&loc.pack) {
            unknown_pack_entries += 1;
        }
        *indexed_in.entry(loc.pack).or_default() += 1;
        Ok(())
    })?;
    if unknown_pack_entries > 0 {
        problem(
            report,
            None,
            None,
            format!(
                "{unknown_pack_entries} index entries name packs the index does not list; run \
                 `strata repair index`"
            ),
        );
    }
    let mut unconfirmed: Vec<(u32, u64)> = confirmed_in
        .iter()
        .filter(|(no, _)| !bad_packs.contains(no))
        .filter_map(|(no, c)| {
            let listed = indexed_in.get(no).copied().unwrap_or(0);
            (listed > *c).then_some((*no, listed - c))
        })
        .collect();
    unconfirmed.sort_unstable();
    for (no, n) in unconfirmed {
        let name = packs
            .iter()
            .find(|(p, _)| *p == no)
            .map(|(_, info)| info.object_name())
            .unwrap_or_default();
        problem(
            report,
            None,
            None,
            format!(
                "the index places {n} chunk(s) in {name} where its trailer does not have them; \
                 run `strata repair index`"
            ),
        );
    }
    Ok(())
}

/// Whether the index lists snapshot `id` now (in a transaction newer than verify's own).
fn indexed_now(repo: &Repo, id: &ChunkId) -> Result<bool> {
    let txn = repo.index.read()?;
    Ok(crate::index::snapshot_manifest(&txn, id)?.is_some())
}

/// Compares the recorded reference counts and pack use with a recount of the snapshots they
/// cover (all but those added since the last count).
fn check_counts(
    repo: &Repo,
    report: &mut VerifyReport,
    txn: &redb::ReadTransaction,
    index: &IndexReader,
    blobs: &BlobReader,
) -> Result<()> {
    let Some(recorded) = crate::index::ref_counts(txn)? else {
        report.notes.push(
            "reference counts are not recorded yet (an index from an older strata); the next \
             backup, forget or gc records them"
                .into(),
        );
        return Ok(());
    };
    let uncounted = crate::index::uncounted(txn)?;
    report.uncounted_snapshots = uncounted.len() as u64;
    let counted_snapshots: Vec<(ChunkId, Vec<u8>)> = crate::index::snapshot_manifests(txn)?
        .into_iter()
        .filter(|(id, _)| !uncounted.contains(id))
        .collect();
    // Damage found above (missing blobs, unreadable nodes) is reported there; the recount
    // leaves it out.
    let counted = match crate::refs::count_all(&counted_snapshots, repo.keys(), blobs) {
        Ok(r) => r.counts,
        Err(e) => {
            problem(report, None, None, format!("recounting references: {e}"));
            return Ok(());
        }
    };
    let mut usage = HashMap::new();
    index.for_each_blob(|id, loc| {
        crate::refs::tally(&mut usage, &id, &loc, &counted);
        Ok(())
    })?;
    if let Some(msg) = ref_count_problem(&recorded, &counted) {
        problem(report, None, None, msg);
    }
    let stored = crate::index::pack_uses(txn)?;
    let listed: Vec<u32> = index.packs()?.into_iter().map(|(no, _)| no).collect();
    for msg in pack_use_problems(&stored, &listed, &usage) {
        problem(report, None, None, msg);
    }
    Ok(())
}

/// The recorded reference counts against a recount: one message naming how many differ and
/// the first of them, or `None` when they agree.
fn ref_count_problem(
    recorded: &HashMap<ChunkId, u32>,
    counted: &HashMap<ChunkId, u32>,
) -> Option<String> {
    let mut differ: Vec<(ChunkId, u32, u32)> = Vec::new();
    for (id, &c) in counted {
        let r = recorded.get(id).copied().unwrap_or(0);
        if r != c {
            differ.push((*id, r, c));
        }
    }
    for (id, &r) in recorded {
        if !counted.contains_key(id) {
            differ.push((*id, r, 0));
        }
    }
    differ.sort();
    let &(id, r, c) = differ.first()?;
    Some(format!(
        "reference counts of {} chunks differ from a recount of the snapshots (chunk {id}: \
         recorded {r}, counted {c}); gc could remove data still in use or keep garbage: run \
         `strata repair index`",
        differ.len()
    ))
}

/// The stored pack-use rows against a recount, for the packs the index lists (`listed`, in
/// its order): a row for a pack not listed, or one that differs, is a problem.
fn pack_use_problems(
    stored: &HashMap<u32, PackUse>,
    listed: &[u32],
    recount: &HashMap<u32, PackUse>,
) -> Vec<String> {
    let mut out = Vec::new();
    let known: HashSet<u32> = listed.iter().copied().collect();
    for no in stored.keys() {
        if !known.contains(no) {
            out.push(format!(
                "usage record of pack #{no}, which the index does not list"
            ));
        }
    }
    for no in listed {
        let want = recount.get(no).copied().unwrap_or_default();
        let have = stored.get(no).copied();
        if have != Some(want) {
            out.push(format!(
                "pack #{no}: usage record {} differs from a recount ({} blobs indexed, {} live, \
                 {} live bytes); run `strata repair index`",
                match have {
                    Some(h) => format!(
                        "({} indexed, {} live, {} live bytes)",
                        h.indexed, h.live_blobs, h.live_bytes
                    ),
                    None => "missing".into(),
                },
                want.indexed,
                want.live_blobs,
                want.live_bytes
            ));
        }
    }
    out
}

/// Memo of verdicts per blob id: `None` when fine, else what is wrong.
type Memo = HashMap<ChunkId, Option<String>>;

/// The walk through every snapshot's chunk lists, with the damage reading the packs found.
/// Verdicts are memoised per blob, so trees shared between snapshots are checked once; the
/// blobs with a verdict are the ones the snapshots reference.
struct Walk<'a> {
    index: &'a IndexReader,
    blobs: &'a BlobReader<'a>,
    bad_blobs: &'a HashSet<ChunkId>,
    bad_packs: &'a HashSet<u32>,
    verdicts: Memo,
    /// The bytes each chunk (its length in the index) and chunk-list node (the sum of its
    /// entries) holds, to check every size claimed for it.
    lengths: HashMap<ChunkId, u64>,
}

impl Walk<'_> {
    /// The verdict on a data chunk: damaged, in a bad pack, or not indexed.
    fn chunk(&mut self, id: &ChunkId) -> Option<String> {
        if let Some(v) = self.verdicts.get(id) {
            return v.clone();
        }
        let v = if self.bad_blobs.contains(id) {
            Some(format!("chunk {id} is damaged"))
        } else {
            match self.index.blob(id) {
                Ok(Some(loc)) if self.bad_packs.contains(&loc.pack) => {
                    Some(format!("chunk {id} is in a missing or damaged pack"))
                }
                Ok(Some(loc)) => {
                    self.lengths.insert(*id, u64::from(loc.raw_len));
                    None
                }
                Ok(None) => Some(format!("chunk {id} is missing from the index")),
                Err(e) => Some(e.to_string()),
            }
        };
        self.verdicts.insert(*id, v.clone());
        v
    }

    /// The verdict on the tree below `root`: the first problem found in it, if any.
    fn tree(&mut self, root: &ChunkId, expected_level: Option<u8>) -> Option<String> {
        if let Some(v) = self.verdicts.get(root) {
            return v.clone();
        }
        let verdict = self.node(root, expected_level);
        self.verdicts.insert(*root, verdict.clone());
        verdict
    }

    /// The verdict on a page map: it and its base decode and are stored as nodes, together
    /// they place every page, and every run they name is a sound chunk holding the slots they
    /// name in it.
    fn map(&mut self, root: &ChunkId) -> Option<String> {
        if let Some(v) = self.verdicts.get(root) {
            return v.clone();
        }
        let verdict = self.map_check(root);
        self.verdicts.insert(*root, verdict.clone());
        verdict
    }

    fn map_check(&mut self, root: &ChunkId) -> Option<String> {
        let (bad, blobs) = (self.bad_blobs, self.blobs);
        let fetch = |id: &ChunkId| {
            if bad.contains(id) {
                return Err(crate::Error::corrupt(format!("page map {id} is damaged")));
            }
            if blobs.locate(id)?.kind != BlobKind::Node {
                return Err(crate::Error::corrupt(format!(
                    "{id} is stored as data, not as a page map"
                )));
            }
            blobs.read(id)
        };
        let version = match crate::pagemap::Version::load(&fetch, root) {
            Ok(v) => v,
            Err(e) => return Some(e.to_string()),
        };
        if let Err(e) = version.flat() {
            return Some(format!("page map {}: {e}", root.short()));
        }
        // The bytes each run must hold: up to the last slot any extent names in it.
        let mut need: HashMap<ChunkId, u64> = HashMap::new();
        for map in std::iter::once(&version.base).chain(version.delta.as_ref()) {
            for (_, run, skip, len) in map.pieces() {
                let n = need.entry(run).or_default();
                *n = (*n).max(skip + len);
            }
        }
        let mut runs: Vec<(ChunkId, u64)> = need.into_iter().collect();
        runs.sort_unstable();
        for (run, n) in runs {
            if let Some(v) = self.chunk(&run) {
                return Some(v);
            }
            if let Some(has) = self.lengths.get(&run).copied().filter(|&has| has < n) {
                return Some(format!(
                    "page map {}: run {} holds {has} bytes, the map places pages up to byte {n}",
                    root.short(),
                    run.short()
                ));
            }
        }
        match version.bytes() {
            Some(total) => {
                self.lengths.insert(*root, total);
                None
            }
            None => Some(format!("page map {}: its size overflows", root.short())),
        }
    }

    /// Checks one chunk-list node and, through [`Walk::tree`], what it lists.
    fn node(&mut self, root: &ChunkId, expected_level: Option<u8>) -> Option<String> {
        if self.bad_blobs.contains(root) {
            return Some(format!("chunk-list node {root} is damaged"));
        }
        let node = match self
            .blobs
            .read(root)
            .and_then(|b| Node::decode(&b, &format_args!("chunk-list node {}", root.short())))
        {
            Ok(n) => n,
            Err(e) => return Some(e.to_string()),
        };
        // Levels go down by one per step, which also bounds the recursion depth.
        if expected_level.is_some_and(|l| l != node.level) {
            return Some(format!(
                "chunk-list node {}: level {} where {} was expected",
                root.short(),
                node.level,
                expected_level.unwrap_or_default()
            ));
        }
        if let Ok(loc) = self.blobs.locate(root)
            && loc.kind != BlobKind::Node
        {
            return Some(format!(
                "{root} is stored as data, not as a chunk-list node"
            ));
        }
        let Some(total) = node.total_bytes() else {
            return Some(format!(
                "chunk-list node {}: its sizes add up to more than 2^64",
                root.short()
            ));
        };
        for e in &node.entries {
            let v = if node.level == 0 {
                self.chunk(&e.id)
            } else {
                self.tree(&e.id, Some(node.level - 1))
            };
            if v.is_some() {
                return v;
            }
            let holds = self.lengths.get(&e.id).copied();
            if let Some(n) = holds.filter(|&n| n != e.bytes) {
                return Some(format!(
                    "chunk-list node {}: {} is listed with {} bytes, it holds {n}",
                    root.short(),
                    e.id.short(),
                    e.bytes
                ));
            }
        }
        self.lengths.insert(*root, total);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> ChunkId {
        ChunkId([n; 32])
    }

    fn counts(pairs: &[(u8, u32)]) -> HashMap<ChunkId, u32> {
        pairs.iter().map(|&(n, c)| (id(n), c)).collect()
    }

    fn row(indexed: u32, live_blobs: u32, live_bytes: u64) -> PackUse {
        PackUse {
            indexed,
            live_blobs,
            live_bytes,
        }
    }

    #[test]
    fn reference_counts_that_agree_report_nothing() {
        let c = counts(&[(1, 1), (2, 3), (3, 1)]);
        assert_eq!(ref_count_problem(&c, &c), None);
        assert_eq!(ref_count_problem(&HashMap::new(), &HashMap::new()), None);
    }

    #[test]
    fn a_reference_count_that_is_off_is_reported() {
        let counted = counts(&[(1, 1), (2, 3), (3, 1)]);
        // Chunk 2 recorded once too few, chunk 3 not recorded, chunk 9 recorded though nothing
        // references it.
        let recorded = counts(&[(1, 1), (2, 2), (9, 4)]);
        let msg = ref_count_problem(&recorded, &counted).expect("reported");
        assert!(
            msg.starts_with("reference counts of 3 chunks differ"),
            "{msg}"
        );
        // The first in id order is named, with both counts.
        assert!(
            msg.contains(&format!("chunk {}: recorded 2, counted 3", id(2))),
            "{msg}"
        );
        assert!(msg.ends_with("run `strata repair index`"), "{msg}");

        // A count recorded for a chunk no snapshot reaches is off too.
        let msg =
            ref_count_problem(&counts(&[(1, 1), (5, 1)]), &counts(&[(1, 1)])).expect("reported");
        assert!(msg.starts_with("reference counts of 1 chunks"), "{msg}");
        assert!(
            msg.contains(&format!("chunk {}: recorded 1, counted 0", id(5))),
            "{msg}"
        );
    }

    #[test]
    fn pack_use_rows_that_agree_report_nothing() {
        let rows: HashMap<u32, PackUse> = [(0, row(3, 2, 200)), (1, row(1, 1, 50))].into();
        assert!(pack_use_problems(&rows, &[0, 1], &rows).is_empty());
        // A pack without any blob indexed has an all-zero row.
        let rows: HashMap<u32, PackUse> = [(4, row(0, 0, 0))].into();
        assert!(pack_use_problems(&rows, &[4], &HashMap::new()).is_empty());
    }

    #[test]
    fn pack_use_rows_that_are_off_are_reported() {
        let recount: HashMap<u32, PackUse> = [(0, row(3, 2, 200)), (1, row(1, 1, 50))].into();
        let stored: HashMap<u32, PackUse> = [(0, row(3, 1, 100)), (7, row(1, 1, 1))].into();
        let problems = pack_use_problems(&stored, &[0, 1], &recount);
        assert_eq!(
            problems,
            vec![
                "usage record of pack #7, which the index does not list".to_string(),
                "pack #0: usage record (3 indexed, 1 live, 100 live bytes) differs from a \
                 recount (3 blobs indexed, 2 live, 200 live bytes); run `strata repair index`"
                    .to_string(),
                "pack #1: usage record missing differs from a recount (1 blobs indexed, 1 live, \
                 50 live bytes); run `strata repair index`"
                    .to_string(),
            ]
        );
    }
}

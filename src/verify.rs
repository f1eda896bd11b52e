//! Verification: every snapshot's manifest, chunk-list trees and chunks are accounted for; with
//! `read_data`, every pack is read and every blob decompressed and checked against its id.

use crate::blobs::{BlobReader, check_hash};
use crate::error::{Error, Result};
use crate::id::ChunkId;
use crate::index::IndexReader;
use crate::manifest::{Content, EntryKind, Manifest};
use crate::pack::{BlobKind, parse_pack};
use crate::repo::Repo;
use crate::restore::check_entry_path;
use crate::tree::Node;
use rayon::prelude::*;
use std::cell::RefCell;
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
    let read_data = read != ReadData::Nothing;
    let mut report = VerifyReport::default();
    let txn = repo.index.read()?;
    let index = IndexReader::new(&txn)?;
    let packs = index.packs()?;
    report.packs = packs.len() as u64;

    // Packs: present with the recorded size; with read_data, every blob checked.
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
                    &mut report,
                    None,
                    None,
                    format!("{name}: {size} bytes, the index says {}", info.size),
                );
            }
            Err(e) => {
                bad_packs.insert(*no);
                problem(&mut report, None, None, format!("{name}: {e}"));
            }
        }
    }
    let mut bad_blobs: HashSet<ChunkId> = HashSet::new();
    // Per pack read: how many index entries its trailer confirmed.
    let mut confirmed_in: HashMap<u32, u64> = HashMap::new();
    if read_data {
        let key = repo.id_key().copied();
        // Whole packs are read: a few at once on object storage bound the memory they take.
        let checked: Vec<PackCheck> =
            crate::storage::with_io_pool(repo.backend.as_ref(), 4, || {
                packs
                    .par_iter()
                    .filter(|(no, _)| !bad_packs.contains(no) && read.wants(*no))
                    .map(|(no, info)| {
                        let name = info.object_name();
                        let mut bad = Vec::new();
                        let mut msgs = Vec::new();
                        let bytes = match repo.backend.get(&name) {
                            Ok(b) => b,
                            Err(e) => {
                                return PackCheck {
                                    pack: *no,
                                    blobs: 0,
                                    bytes: 0,
                                    bad,
                                    msgs: vec![format!("{name}: {e}")],
                                    confirmed: None,
                                };
                            }
                        };
                        // Index entries that place a blob in this pack and that its trailer
                        // confirms, place for place.
                        // Ids whose index place one of this pack's entries confirms, and the
                        // index places no entry here matched (a pack can hold a chunk twice).
                        let mut confirmed: HashSet<ChunkId> = HashSet::new();
                        let mut misplaced: Vec<(ChunkId, crate::index::BlobLoc)> = Vec::new();
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
                            let loc = crate::index::BlobLoc::from_entry(*no, e);
                            match index.blob(&e.id) {
                                Ok(Some(at)) if at == loc => {
                                    confirmed.insert(e.id);
                                }
                                Ok(Some(at)) if at.pack == *no => misplaced.push((e.id, at)),
                                // Also stored elsewhere (the index names one copy), or not
                                // indexed (gc drops those entries): not this pack's to confirm.
                                Ok(_) => {}
                                Err(err) => msgs.push(format!(
                                    "index entry of chunk {}: {err}; run `strata repair index`",
                                    e.id
                                )),
                            }
                            let f = e.frame;
                            if frame_cache.as_ref().map(|c| c.0) != Some(f.offset) {
                                let stored = &bytes
                                    [f.offset as usize..(f.offset + f.stored_len as u64) as usize];
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
                                "index entry of chunk {id}: {name} at frame offset {}, {} bytes \
                                 at {} in the frame, where the pack's trailer has no such \
                                 chunk; run `strata repair index`",
                                at.frame_offset, at.raw_len, at.offset_in_frame
                            ));
                        }
                        PackCheck {
                            pack: *no,
                            blobs: count,
                            bytes: bytes.len() as u64,
                            bad,
                            msgs,
                            confirmed: Some(confirmed.len() as u64),
                        }
                    })
                    .collect()
            });
        for c in checked {
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

    // Snapshots: manifest copies, safe paths, and every tree and chunk they reference.
    let blobs = BlobReader::new(repo, &index)?;
    let mut node_verdict: HashMap<ChunkId, Option<String>> = HashMap::new();
    // The bytes each chunk (its length in the index) and chunk-list node (the sum of its
    // entries) holds, to check every size claimed for it.
    let lengths: Lengths = RefCell::new(HashMap::new());
    let mut chunk_verdict =
        |id: &ChunkId, node_verdict: &mut HashMap<ChunkId, Option<String>>| -> Option<String> {
            if let Some(v) = node_verdict.get(id) {
                return v.clone();
            }
            let v = if bad_blobs.contains(id) {
                Some(format!("chunk {id} is damaged"))
            } else {
                match index.blob(id) {
                    Ok(Some(loc)) if bad_packs.contains(&loc.pack) => {
                        Some(format!("chunk {id} is in a missing or damaged pack"))
                    }
                    Ok(Some(loc)) => {
                        lengths.borrow_mut().insert(*id, u64::from(loc.raw_len));
                        None
                    }
                    Ok(None) => Some(format!("chunk {id} is missing from the index")),
                    Err(e) => Some(e.to_string()),
                }
            };
            node_verdict.insert(*id, v.clone());
            v
        };
    // The manifest files of indexed snapshots, to find the other files in `snapshots/` below.
    let mut indexed: HashSet<String> = HashSet::new();
    for (id, bytes) in crate::index::snapshot_manifests(&txn)? {
        report.snapshots += 1;
        indexed.insert(crate::manifest::object_name(&id));
        let manifest = match Manifest::decode(&bytes, Some(&id), repo.keys()) {
            Ok(m) => m,
            Err(e) => {
                problem(&mut report, Some(&id), None, e.to_string());
                continue;
            }
        };
        match repo.backend.get(&crate::manifest::object_name(&id)) {
            Ok(file) if file == bytes => {}
            Ok(_) => problem(
                &mut report,
                Some(&id),
                None,
                "manifest file differs from the index copy".into(),
            ),
            Err(e) if e.kind() == crate::ErrorKind::NotFound => report.notes.push(format!(
                "snapshot {}: manifest file missing (a backup or forget was interrupted); the \
                 next backup, forget or gc writes it again from the index",
                id.short()
            )),
            Err(e) => problem(&mut report, Some(&id), None, format!("manifest file: {e}")),
        }
        let mut paths = std::collections::HashSet::new();
        for entry in &manifest.entries {
            if !paths.insert(entry.path.as_slice()) {
                problem(
                    &mut report,
                    Some(&id),
                    Some(entry.path_lossy()),
                    "path recorded more than once".into(),
                );
                continue;
            }
            if let Err(e) = check_entry_path(&entry.path) {
                problem(
                    &mut report,
                    Some(&id),
                    Some(entry.path_lossy()),
                    e.to_string(),
                );
                continue;
            }
            if entry.kind != EntryKind::File {
                continue;
            }
            report.files += 1;
            let verdict = match &entry.content {
                Content::Empty => None,
                Content::Chunk(c) => chunk_verdict(c, &mut node_verdict),
                Content::Tree(root) => check_tree(
                    root,
                    None,
                    &blobs,
                    &bad_blobs,
                    &mut node_verdict,
                    &mut chunk_verdict,
                    &lengths,
                ),
            };
            // Restore refuses a file whose size disagrees with its chunk list.
            let verdict = verdict.or_else(|| {
                let listed = match &entry.content {
                    Content::Empty => Some(0),
                    Content::Chunk(id) | Content::Tree(id) => lengths.borrow().get(id).copied(),
                };
                listed.filter(|&n| n != entry.size).map(|n| {
                    format!(
                        "the manifest gives its size as {} bytes, its chunk list holds {n}",
                        entry.size
                    )
                })
            });
            if let Some(msg) = verdict {
                problem(&mut report, Some(&id), Some(entry.path_lossy()), msg);
            }
        }
    }
    // Snapshot files the index does not list: a damaged one may be a lost snapshot.
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
                &mut report,
                None,
                Some(name.clone()),
                "holds a snapshot the index does not list (the index is behind the \
                 repository); run `strata repair index`"
                    .into(),
            ),
            Err(e) => problem(
                &mut report,
                None,
                Some(name.clone()),
                format!("snapshot file not in the index and unreadable: {e}"),
            ),
        }
    }
    // Recount: every blob reached above is referenced; indexed blobs that were not are leaks
    // until gc reclaims them, and referenced ones missing from the index were reported above.
    report.referenced_blobs = node_verdict.len() as u64;
    // And every index entry placing a blob in a pack that was read must have been confirmed by
    // that pack's trailer (a damaged entry can name another pack, or one that does not exist).
    let mut indexed_in: HashMap<u32, u64> = HashMap::new();
    let known_packs: HashSet<u32> = packs.iter().map(|(no, _)| *no).collect();
    let mut unknown_pack_entries = 0u64;
    index.for_each_blob(|id, loc| {
        if !node_verdict.contains_key(&id) {
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
            &mut report,
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
            &mut report,
            None,
            None,
            format!(
                "the index places {n} chunk(s) in {name} where its trailer does not have them; \
                 run `strata repair index`"
            ),
        );
    }
    check_counts(repo, &mut report, &txn, &index, &blobs)?;
    Ok(report)
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
    let mut differ: Vec<(ChunkId, u32, u32)> = Vec::new();
    for (id, &c) in &counted {
        let r = recorded.get(id).copied().unwrap_or(0);
        if r != c {
            differ.push((*id, r, c));
        }
    }
    for (id, &r) in &recorded {
        if !counted.contains_key(id) {
            differ.push((*id, r, 0));
        }
    }
    if !differ.is_empty() {
        differ.sort();
        let (id, r, c) = differ[0];
        problem(
            report,
            None,
            None,
            format!(
                "reference counts of {} chunks differ from a recount of the snapshots (chunk \
                 {id}: recorded {r}, counted {c}); gc could remove data still in use or keep \
                 garbage: run `strata repair index`",
                differ.len()
            ),
        );
    }
    let stored = crate::index::pack_uses(txn)?;
    let packs = index.packs()?;
    let listed: HashSet<u32> = packs.iter().map(|(no, _)| *no).collect();
    for no in stored.keys() {
        if !listed.contains(no) {
            problem(
                report,
                None,
                None,
                format!("usage record of pack #{no}, which the index does not list"),
            );
        }
    }
    for (no, _) in packs {
        let want = usage.get(&no).copied().unwrap_or_default();
        let have = stored.get(&no).copied();
        if have != Some(want) {
            problem(
                report,
                None,
                None,
                format!(
                    "pack #{no}: usage record {} differs from a recount ({} blobs indexed, {} \
                     live, {} live bytes); run `strata repair index`",
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
                ),
            );
        }
    }
    Ok(())
}

/// Memo of verdicts per blob id: `None` when fine, else what is wrong.
type Memo = HashMap<ChunkId, Option<String>>;
/// The bytes each checked chunk and chunk-list node holds.
type Lengths = RefCell<HashMap<ChunkId, u64>>;
type ChunkVerdict<'a> = dyn FnMut(&ChunkId, &mut Memo) -> Option<String> + 'a;

/// Checks a tree below `root`, memoising verdicts per node so trees shared between snapshots are
/// checked once.
fn check_tree(
    root: &ChunkId,
    expected_level: Option<u8>,
    blobs: &BlobReader,
    bad_blobs: &HashSet<ChunkId>,
    memo: &mut HashMap<ChunkId, Option<String>>,
    chunk_verdict: &mut ChunkVerdict,
    lengths: &Lengths,
) -> Option<String> {
    if let Some(v) = memo.get(root) {
        return v.clone();
    }
    let verdict = (|| {
        if bad_blobs.contains(root) {
            return Some(format!("chunk-list node {root} is damaged"));
        }
        let node = match blobs
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
        if let Ok(loc) = blobs.locate(root)
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
                chunk_verdict(&e.id, memo)
            } else {
                check_tree(
                    &e.id,
                    Some(node.level - 1),
                    blobs,
                    bad_blobs,
                    memo,
                    chunk_verdict,
                    lengths,
                )
            };
            if v.is_some() {
                return v;
            }
            let holds = lengths.borrow().get(&e.id).copied();
            if let Some(n) = holds.filter(|&n| n != e.bytes) {
                return Some(format!(
                    "chunk-list node {}: {} is listed with {} bytes, it holds {n}",
                    root.short(),
                    e.id.short(),
                    e.bytes
                ));
            }
        }
        lengths.borrow_mut().insert(*root, total);
        None
    })();
    memo.insert(*root, verdict.clone());
    verdict
}

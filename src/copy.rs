//! Copying snapshots from one repository to another, incrementally: only the blobs the
//! destination lacks travel.
//!
//! Both repositories must name blobs the same way (both unencrypted, or both encrypted with the
//! same master key: `strata init --encrypt --same-key-as SRC`), so a blob's id is the same on
//! both sides and a snapshot keeps its id. For each snapshot the destination does not have, in
//! time order:
//! 1. its chunk lists are walked in the source, skipping every subtree whose node the
//!    destination already has (a stored node implies its whole subtree is stored);
//! 2. each missing blob is read from the source and checked against its id; the blobs of one
//!    source frame are compressed together again, sealed with the destination's keys, checked
//!    once more (decoded and rehashed) and written to new packs, which are fsynced;
//! 3. the packs and the snapshot commit in one index transaction, then the manifest file is
//!    written: the same order as a backup, so a copy killed at any moment leaves the
//!    destination valid, with the snapshots copied so far.

use crate::blobs::{BlobReader, blob_in_frame, check_hash};
use crate::compress::{check_frame, compress};
use crate::error::{Error, Result};
use crate::id::{ChunkId, SnapshotId};
use crate::index::{BlobLoc, IndexReader, META_NEXT_PACK};
use crate::manifest::{Content, Manifest};
use crate::pack::BlobKind;
use crate::packer::{Packer, WrittenPack};
use crate::pagemap::children;
use crate::repo::Repo;
use rayon::prelude::*;
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default, serde::Serialize)]
pub struct CopyReport {
    /// Snapshots copied, and the ones the destination already had.
    pub copied: Vec<String>,
    pub already_there: u64,
    pub blobs_copied: u64,
    /// Raw bytes of the blobs copied.
    pub bytes_copied: u64,
    /// Bytes of the packs written.
    pub pack_bytes: u64,
    pub packs_written: u64,
}

/// Copies the snapshots `ids` of `src` (in time order) into `dst`, which must be open for
/// writing.
pub fn copy(src: &Repo, dst: &Repo, ids: &[SnapshotId]) -> Result<CopyReport> {
    copy_with(src, dst, ids, None)
}

/// [`copy`], telling `progress` the bytes of the packs written for each snapshot once it is
/// copied (0 for one the destination had, or needed nothing new for).
pub fn copy_with(
    src: &Repo,
    dst: &Repo,
    ids: &[SnapshotId],
    progress: Option<&dyn Fn(u64)>,
) -> Result<CopyReport> {
    if src.id_key() != dst.id_key() {
        return Err(Error::invalid(
            "these repositories name their chunks differently (different encryption keys, or \
             one encrypted and one not), so nothing could be shared; create the destination \
             with `strata init --repo DST --encrypt --same-key-as SRC` (or both unencrypted)",
        ));
    }
    let mut report = CopyReport::default();
    let src_txn = src.index.read()?;
    let src_index = IndexReader::new(&src_txn)?;
    let reader = BlobReader::new(src, &src_index)?;
    for id in ids {
        let framed = crate::index::snapshot_manifest(&src_txn, id)?.ok_or_else(|| {
            Error::NotFound(format!("snapshot {} is not in the source", id.short()))
        })?;
        let dst_txn = dst.index.read()?;
        if crate::index::snapshot_manifest(&dst_txn, id)?.is_some() {
            report.already_there += 1;
            if let Some(tell) = progress {
                tell(0);
            }
            continue;
        }
        let dst_index = IndexReader::new(&dst_txn)?;
        let manifest = Manifest::decode(&framed, Some(id), src.keys())?;
        // The same bytes must read back in the destination (same keys), or nothing is copied.
        Manifest::decode(&framed, Some(id), dst.keys())?;
        let missing = missing_blobs(&reader, &dst_index, &manifest)?;
        drop(dst_index);
        drop(dst_txn);
        let packs = write_blobs(src, dst, &reader, &src_index, missing, &mut report)?;
        let next_pack = packs.iter().map(|p| p.no + 1).max().unwrap_or(0);
        report.packs_written += packs.len() as u64;
        let written: u64 = packs.iter().map(|p| p.size).sum();
        report.pack_bytes += written;
        let wal_name = crate::backup::wal_name(&manifest);
        crate::commit::commit(dst, packs, next_pack, id, &framed, &[], wal_name)?;
        dst.backend
            .put(&crate::manifest::object_name(id), &framed)?;
        report.copied.push(id.to_hex());
        if let Some(tell) = progress {
            tell(written);
        }
    }
    Ok(report)
}

/// The blobs of `manifest` that `dst` lacks, walking chunk lists in the source and skipping
/// every subtree the destination already holds.
fn missing_blobs(
    reader: &BlobReader,
    dst: &IndexReader,
    manifest: &Manifest,
) -> Result<Vec<ChunkId>> {
    let mut seen: HashSet<ChunkId> = HashSet::new();
    let mut out = Vec::new();
    let mut nodes = Vec::new();
    let mut want = |id: ChunkId, out: &mut Vec<ChunkId>| -> Result<bool> {
        if seen.insert(id) && !dst.contains(&id)? {
            out.push(id);
            return Ok(true);
        }
        Ok(false)
    };
    for e in &manifest.entries {
        match &e.content {
            Content::Empty => {}
            Content::Chunk(id) => {
                want(*id, &mut out)?;
            }
            Content::Tree(root) | Content::Pages(root) => {
                if want(*root, &mut out)? {
                    nodes.push(*root);
                }
            }
        }
    }
    // A chunk-list node's or a page map's children: data, or nodes to walk in turn.
    while let Some(id) = nodes.pop() {
        let bytes = reader.read(&id)?;
        for child in children(&bytes, &id)? {
            if want(child, &mut out)? && reader.locate(&child)?.kind == BlobKind::Node {
                nodes.push(child);
            }
        }
    }
    Ok(out)
}

/// Writes `ids` (read from `src`) into new packs of `dst`; returns them, sealed and durable.
fn write_blobs(
    src: &Repo,
    dst: &Repo,
    reader: &BlobReader,
    src_index: &IndexReader,
    ids: Vec<ChunkId>,
    report: &mut CopyReport,
) -> Result<Vec<WrittenPack>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut located: Vec<(ChunkId, BlobLoc)> = Vec::with_capacity(ids.len());
    for id in ids {
        let loc = src_index.blob(&id)?.ok_or_else(|| {
            Error::corrupt(format!(
                "blob {} is referenced in the source but not indexed; run `strata verify` there",
                id.short()
            ))
        })?;
        located.push((id, loc));
    }
    // Source order: each source frame is read (and opened, and decompressed) once. Frames are
    // handled in parallel (on object storage, many reads in flight) and packs are uploaded
    // while the next ones fill.
    located.sort_by_key(|(_, l)| (l.pack, l.frame_offset, l.offset_in_frame));
    let next_no = {
        let txn = dst.index.read()?;
        crate::index::meta(&txn, META_NEXT_PACK)?.unwrap_or(0) as u32
    };
    let groups: Vec<&[(ChunkId, BlobLoc)]> = located
        .chunk_by(|a, b| (a.1.pack, a.1.frame_offset) == (b.1.pack, b.1.frame_offset))
        .collect();
    let (packer, writer) = Packer::new(
        dst.backend.as_ref(),
        next_no,
        dst.config.pack_target,
        dst.mac_key(),
    );
    let blobs_copied = AtomicU64::new(0);
    let bytes_copied = AtomicU64::new(0);
    let copy_frame = |group: &[(ChunkId, BlobLoc)]| -> Result<()> {
        let (frame, pack) = reader.read_frame(&group[0].1)?;
        // One output frame per kind within the source frame (a frame holds one kind).
        let kind: BlobKind = group[0].1.kind;
        let mut raw = Vec::new();
        let mut members = Vec::with_capacity(group.len());
        let mut lens = Vec::with_capacity(group.len());
        for (id, loc) in group {
            let data = blob_in_frame(&frame, loc, &pack)?;
            check_hash(data, loc, id, src.id_key(), &pack)?;
            members.push((*id, raw.len() as u32, data.len() as u32));
            lens.push((*id, data.len()));
            raw.extend_from_slice(data);
        }
        let (compression, stored) = compress(&raw, dst.config.zstd_level)?;
        check_frame(&stored, compression, raw.len(), &lens, dst.id_key())?;
        let stored = dst.seal_frame(&stored)?;
        packer.add_frame(kind, compression, &stored, raw.len() as u32, &members)?;
        blobs_copied.fetch_add(members.len() as u64, Ordering::Relaxed);
        bytes_copied.fetch_add(raw.len() as u64, Ordering::Relaxed);
        Ok(())
    };
    let (written, copied) = std::thread::scope(|s| {
        let uploads = s.spawn(move || writer.run(usize::MAX, &mut |_| Ok(())));
        let copied = crate::storage::with_io_pool(src.backend.as_ref(), usize::MAX, || {
            groups.par_iter().try_for_each(|g| copy_frame(g))
        });
        let copied = match copied {
            Ok(()) => packer.finish(),
            Err(e) => {
                packer.abandon();
                Err(e)
            }
        };
        let written = uploads
            .join()
            .unwrap_or_else(|_| Err(Error::invalid("pack upload thread panicked")));
        (written, copied)
    });
    copied?;
    let written = written?;
    report.blobs_copied += blobs_copied.into_inner();
    report.bytes_copied += bytes_copied.into_inner();
    Ok(written)
}

//! Reading a file back: its chunk list walked in groups of consecutive chunks, each group's
//! frames read in pack order with as few reads as possible, decompressed once and every chunk
//! checked against its id. Groups are handed out in batches, so that several are read at once
//! while the file is written in order.

use crate::blobs::{BlobReader, check_hash, decode_frame, with_chunk};
use crate::error::{Error, Result};
use crate::id::ChunkId;
use crate::index::BlobLoc;
use crate::manifest::{Content, Entry};
use crate::tree::{LeafWalker, NodeEntry};
use rayon::prelude::*;

/// Chunks fetched in parallel per batch while the file is written in order.
const BATCH_BYTES: u64 = 8 << 20;

/// On object storage: larger groups (fewer, longer requests) and batches that keep every
/// request thread busy.
const REMOTE_BATCH_BYTES: u64 = 64 << 20;

const REMOTE_GROUP_BYTES: u64 = 4 << 20;

/// Consecutive chunks handled by one task: read with as few reads as possible, written with one.
const GROUP_BYTES: u64 = 512 << 10;

/// On object storage, frames at most this far apart in a pack are read with one request.
const REMOTE_GAP: u64 = 256 << 10;

/// Bytes of a file handled per batch and per group of a batch (see [`for_each_batch`]), and how
/// far apart two frames may be and still be read with one request: on object storage, where a
/// request costs a round trip, frames a little apart (other files' chunks or chunk-list nodes
/// between them) are read together.
pub(super) fn read_shape(blobs: &BlobReader) -> (u64, u64, u64) {
    if blobs.remote() {
        (REMOTE_BATCH_BYTES, REMOTE_GROUP_BYTES, REMOTE_GAP)
    } else {
        (BATCH_BYTES, GROUP_BYTES, 0)
    }
}

/// A run of consecutive chunks of one file.
pub(super) struct Group {
    pub(super) offset: u64,
    pub(super) leaves: Vec<NodeEntry>,
}

impl Group {
    pub(super) fn bytes(&self) -> u64 {
        self.leaves.iter().map(|e| e.bytes).sum()
    }
}

/// Walks a file's chunk list (`walker`, made for `entry`) in groups of consecutive chunks,
/// calling `f` per group in order.
pub(super) fn for_each_group(
    blobs: &BlobReader,
    entry: &Entry,
    mut walker: LeafWalker,
    f: &mut dyn FnMut(Group) -> Result<()>,
) -> Result<u64> {
    let (_, group_max, _) = read_shape(blobs);
    let mut offset = 0u64;
    let mut group = Group {
        offset,
        leaves: Vec::new(),
    };
    let mut group_bytes = 0;
    while let Some(e) = walker.next_leaf()? {
        // A larger claim is damage, and must not size a buffer.
        if e.bytes > u64::from(crate::pack::MAX_BLOB_BYTES) {
            return Err(Error::corrupt(format!(
                "{}: chunk {} of {} bytes in its chunk list, more than a chunk can hold",
                entry.path_lossy(),
                e.id,
                e.bytes
            )));
        }
        group_bytes += e.bytes;
        offset = offset
            .checked_add(e.bytes)
            .ok_or_else(|| Error::corrupt("chunk list sizes overflow"))?;
        group.leaves.push(e);
        if group_bytes >= group_max {
            let next = Group {
                offset,
                leaves: Vec::new(),
            };
            f(std::mem::replace(&mut group, next))?;
            group_bytes = 0;
        }
    }
    if !group.leaves.is_empty() {
        f(group)?;
    }
    if offset != entry.size {
        return Err(Error::corrupt(format!(
            "{}: chunk list covers {offset} bytes, the manifest says {}",
            entry.path_lossy(),
            entry.size
        )));
    }
    Ok(offset)
}

/// Checks the size the manifest gives `entry` against its chunk list (`walker`, made for it)
/// before anything is allocated or written for it: a hostile manifest cannot make a restore
/// allocate what it claims. Of a chunk-list tree only the root has been read; the walk checks
/// every node below against it, and the index's length of each chunk against the list.
pub(super) fn check_size(blobs: &BlobReader, entry: &Entry, walker: &LeafWalker) -> Result<()> {
    let listed = match &entry.content {
        Content::Empty => Some(0),
        Content::Chunk(id) => Some(u64::from(blobs.locate(id)?.raw_len)),
        Content::Tree(_) => walker.root_total(),
        Content::Pages(_) => return Err(Error::invalid("a page map is not a chunk list")),
    };
    if listed == Some(entry.size) {
        return Ok(());
    }
    Err(Error::corrupt(format!(
        "{}: the manifest gives its size as {} bytes, its chunk list holds {}; not restored",
        entry.path_lossy(),
        entry.size,
        listed.map_or_else(|| "more than 2^64".to_string(), |n| n.to_string())
    )))
}

/// Walks a file's chunk list in batches of consecutive groups (up to the batch size of
/// [`read_shape`]), calling `f` per batch in order.
fn for_each_batch(
    blobs: &BlobReader,
    entry: &Entry,
    f: &mut dyn FnMut(Vec<Group>) -> Result<()>,
) -> Result<u64> {
    let (batch_max, _, _) = read_shape(blobs);
    let mut batch: Vec<Group> = Vec::new();
    let mut batch_bytes = 0;
    let fetch = |id: &ChunkId| blobs.read(id);
    let walker = LeafWalker::new(&entry.content, entry.size, &fetch)?;
    check_size(blobs, entry, &walker)?;
    let size = for_each_group(blobs, entry, walker, &mut |g| {
        batch_bytes += g.bytes();
        batch.push(g);
        if batch_bytes >= batch_max {
            batch_bytes = 0;
            f(std::mem::take(&mut batch))?;
        }
        Ok(())
    })?;
    if !batch.is_empty() {
        f(batch)?;
    }
    Ok(size)
}

thread_local! {
    static SPAN: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    static GROUP: std::cell::RefCell<crate::storage::direct::AlignedBuf> = std::cell::RefCell::new(Default::default());
    static FRAME: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Calls `f` with the verified bytes of a group, assembled in a buffer reused per thread.
fn with_group<T>(
    blobs: &BlobReader,
    group: &Group,
    f: impl FnOnce(&[u8]) -> Result<T>,
) -> Result<T> {
    with_group_padded(blobs, group, 1, f)
}

/// [`with_group`] with the bytes at an aligned address and zero-padded to a multiple of
/// `pad` (a power of two, at most [`crate::storage::direct::ALIGN`]), for a direct write.
pub(super) fn with_group_padded<T>(
    blobs: &BlobReader,
    group: &Group,
    pad: usize,
    f: impl FnOnce(&[u8]) -> Result<T>,
) -> Result<T> {
    let total = group.bytes() as usize;
    let padded = total.next_multiple_of(pad);
    GROUP.with(|out| {
        let mut out = out.borrow_mut();
        out.reserve(padded);
        let out = out.bytes_mut();
        fill_group(blobs, group, &mut out[..total])?;
        out[total..padded].fill(0);
        f(&out[..padded])
    })
}

/// Fills `out` (exactly the group's size) with the verified bytes of a group. The group's frames
/// are read in pack order, whatever their order in the file (a backup compresses in parallel, so
/// a file's frames need not follow each other in the pack): frames back to back (on object
/// storage, also a little apart) are read with one read. Each frame is decompressed once
/// (straight into `out` when it holds exactly a run of the group's chunks) and every chunk is
/// checked against its id.
fn fill_group(blobs: &BlobReader, group: &Group, out: &mut [u8]) -> Result<()> {
    let located = Located::new(blobs, group, out.len())?;
    let (_, group_max, gap) = read_shape(blobs);
    let spans = located.spans(gap, group_max);
    // A full group in one or two stretches of packs is part of a large file stored in order:
    // a short piece of it at a pack's edge is read exactly, not through a cached block whose
    // other bytes were the previous group's. (A file rewritten in places, such as a database,
    // has many short pieces whose neighbours the next groups want: those go through blocks.)
    let sequential = out.len() as u64 >= group_max && spans.len() <= 2;
    for span in spans {
        let pack = blobs.pack_name(located.locs[located.order[span.first]].pack)?;
        SPAN.with(|bytes| -> Result<()> {
            let mut bytes = bytes.borrow_mut();
            bytes.resize((span.end - span.start) as usize, 0);
            blobs.read_span_into(&pack, span.start, &mut bytes, sequential)?;
            // The span's frames, each with the group's chunks in it.
            let mut k = span.first;
            while k < span.last {
                let key = located.locs[located.order[k]].frame_key();
                let mut m = k + 1;
                while m < span.last && located.locs[located.order[m]].frame_key() == key {
                    m += 1;
                }
                located.fill_frame(blobs, &located.order[k..m], &bytes, span.start, &pack, out)?;
                k = m;
            }
            Ok(())
        })?;
    }
    Ok(())
}

/// The chunks of a group as the index places them.
struct Located<'g> {
    group: &'g Group,
    /// Each chunk's place in the packs, in the group's order.
    locs: Vec<BlobLoc>,
    /// Where each chunk goes in the group's bytes.
    starts: Vec<usize>,
    /// The chunks in the order their bytes lie in the packs.
    order: Vec<usize>,
}

/// Frames of one pack read with one read: the chunks `order[first..last]`, in the pack's bytes
/// `start..end`.
struct Span {
    first: usize,
    last: usize,
    start: u64,
    end: u64,
}

impl<'g> Located<'g> {
    /// Looks up every chunk of `group`, whose bytes add up to `total`.
    fn new(blobs: &BlobReader, group: &'g Group, total: usize) -> Result<Self> {
        let locs: Vec<BlobLoc> = group
            .leaves
            .iter()
            .map(|e| blobs.locate(&e.id))
            .collect::<Result<_>>()?;
        let mut starts = Vec::with_capacity(locs.len());
        let mut sum = 0usize;
        for (loc, leaf) in locs.iter().zip(&group.leaves) {
            if loc.raw_len as u64 != leaf.bytes {
                return Err(Error::corrupt(format!(
                    "chunk {}: {} bytes in the index where the chunk list says {}",
                    leaf.id, loc.raw_len, leaf.bytes
                )));
            }
            starts.push(sum);
            sum += loc.raw_len as usize;
        }
        if sum != total {
            return Err(Error::corrupt(
                "chunk sizes do not add up to the group's size",
            ));
        }
        let mut order: Vec<usize> = (0..locs.len()).collect();
        order.sort_unstable_by_key(|&i| {
            let l = &locs[i];
            (l.pack, l.frame_offset, l.offset_in_frame, i)
        });
        Ok(Located {
            group,
            locs,
            starts,
            order,
        })
    }

    /// The group's frames cut into spans: frames of one pack, each after the last and at most
    /// `gap` apart, a span at most twice `group_max` long (a frame's chunks stay together).
    fn spans(&self, gap: u64, group_max: u64) -> Vec<Span> {
        let (locs, order) = (&self.locs, &self.order);
        let mut spans = Vec::new();
        let mut i = 0;
        while i < order.len() {
            let first = locs[order[i]];
            let start = first.frame_offset as u64;
            let mut end = start + first.frame_stored_len as u64;
            let mut j = i + 1;
            while j < order.len() {
                let l = locs[order[j]];
                let at = l.frame_offset as u64;
                let frame_end = at + l.frame_stored_len as u64;
                if l.frame_key() == locs[order[j - 1]].frame_key() {
                    j += 1;
                } else if l.pack == first.pack
                    && at >= end
                    && at - end <= gap
                    && frame_end - start <= group_max * 2
                {
                    end = frame_end;
                    j += 1;
                } else {
                    break;
                }
            }
            spans.push(Span {
                first: i,
                last: j,
                start,
                end,
            });
            i = j;
        }
        spans
    }

    /// Decompresses the frame that holds the chunks `members` (one frame's, in pack order) out
    /// of `span` (the pack's bytes from `span_start`), and puts each chunk, checked against its
    /// id, at its place in `out`.
    fn fill_frame(
        &self,
        blobs: &BlobReader,
        members: &[usize],
        span: &[u8],
        span_start: u64,
        pack: &str,
        out: &mut [u8],
    ) -> Result<()> {
        let (locs, leaves) = (&self.locs, &self.group.leaves);
        let keys = blobs.keys();
        let key = keys.map(|k| k.id_key());
        let loc = locs[members[0]];
        let rel = (loc.frame_offset as u64 - span_start) as usize;
        // Chunks of one frame whose index entries disagree on its length: a damaged index.
        let stored = span
            .get(rel..rel + loc.frame_stored_len as usize)
            .filter(|_| {
                members
                    .iter()
                    .all(|&c| locs[c].frame_stored_len == loc.frame_stored_len)
            })
            .ok_or_else(|| {
                Error::corrupt(format!(
                    "chunk {}: its frame's entries in the index disagree",
                    leaves[members[0]].id
                ))
            })?;
        // Is the frame exactly a run of the group's chunks, in order? (The usual case:
        // consecutive chunks of a file compressed together.)
        let mut expect = 0u32;
        let whole = members.iter().enumerate().all(|(n, &c)| {
            let ok = locs[c].offset_in_frame == expect && c == members[0] + n;
            expect = expect.saturating_add(locs[c].raw_len);
            ok
        }) && expect == loc.frame_raw_len;
        if whole {
            // Decompress straight into place, then check each chunk there.
            let at = self.starts[members[0]];
            let dst = &mut out[at..at + loc.frame_raw_len as usize];
            decode_frame(keys, stored, &loc, pack, dst)
                .map_err(|e| with_chunk(e, &leaves[members[0]].id))?;
            for &c in members {
                let s = self.starts[c] - at;
                let blob = &dst[s..s + locs[c].raw_len as usize];
                check_hash(blob, &locs[c], &leaves[c].id, key, pack)?;
            }
            return Ok(());
        }
        FRAME.with(|frame| -> Result<()> {
            let mut frame = frame.borrow_mut();
            frame.resize(loc.frame_raw_len as usize, 0);
            decode_frame(keys, stored, &loc, pack, &mut frame)
                .map_err(|e| with_chunk(e, &leaves[members[0]].id))?;
            for &c in members {
                let l = &locs[c];
                let blob = frame
                    .get(l.offset_in_frame as usize..)
                    .and_then(|f| f.get(..l.raw_len as usize))
                    .ok_or_else(|| {
                        Error::corrupt(format!(
                            "chunk {}: outside its frame in {pack}",
                            leaves[c].id
                        ))
                    })?;
                check_hash(blob, l, &leaves[c].id, key, pack)?;
                out[self.starts[c]..self.starts[c] + blob.len()].copy_from_slice(blob);
            }
            Ok(())
        })
    }
}

/// Streams a file's verified bytes to `out` in order.
pub fn write_content(
    blobs: &BlobReader,
    entry: &Entry,
    out: &mut dyn FnMut(&[u8]) -> Result<()>,
) -> Result<u64> {
    if let Content::Pages(map) = &entry.content {
        let reader = super::paged::PagedReader::new(super::paged::load(blobs, entry, map)?);
        return reader.write_all(blobs, out);
    }
    for_each_batch(blobs, entry, &mut |batch| {
        let datas: Vec<Vec<u8>> = batch
            .par_iter()
            .map(|g| with_group(blobs, g, |d| Ok(d.to_vec())))
            .collect::<Result<_>>()?;
        for d in datas {
            out(&d)?;
        }
        Ok(())
    })
}

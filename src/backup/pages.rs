//! Files cut at pages (SQLite databases): segments of whole pages read, hashed, deduplicated
//! and stored in parallel, from the file itself or from a consistent image read through SQLite.

use super::digests::{SumCtx, SumSink, SumState};
use super::mapped::{MapWriter, Segment as MapSegment};
use super::previous::{Known, is_known};
use super::writer::{FRAME_TARGET, FileState, Shared};
use crate::error::{Error, IoContext, Result};
use crate::id::ChunkId;
use crate::pack::BlobKind;
use crate::source::uncached::UncachedReader;
use crate::source::wal::{LogMap, read_frame};
use crate::storage::direct::AlignedBuf;
use rayon::prelude::*;
use std::fs::File;

/// Segment of a page-aligned file read and hashed by one task.
pub(super) const SEGMENT: usize = 1 << 20;
/// Segments handed out per round; the file's chunk list is extended in order after each round.
const SEGMENTS_PER_ROUND: usize = 64;

thread_local! {
    static SEGMENT_BUF: std::cell::RefCell<AlignedBuf> = std::cell::RefCell::new(AlignedBuf::default());
}

/// Reads a file cut at fixed page boundaries. Boundaries do not depend on content, so every
/// segment is read, hashed, deduplicated and compressed by its own task, in parallel, with one
/// reused buffer per thread. Extending the chunk-list tree (in file order) and walking the
/// previous version for the next round run beside the current round's segments.
pub(super) fn read_pages(
    shared: &Shared,
    file: &File,
    path: &std::path::Path,
    page: u32,
    state: &mut FileState,
    limit: u64,
    overlay: Option<&Overlay>,
) -> Result<u64> {
    let page = page as usize;
    let reader = UncachedReader::new(file, path);
    let read = Read {
        file: &reader,
        path,
        page,
        limit,
        overlay,
    };
    if let Some(map) = state.map.as_deref_mut() {
        let (sums, sink) = SumState::split_opt(state.sums.as_deref_mut());
        return read_pages_mapped(shared, &read, map, sums, sink);
    }
    let round_bytes = (SEGMENTS_PER_ROUND * SEGMENT) as u64;
    let mut prev = state.prev.take();
    let builder = &mut *state.builder;
    let emit = &mut *state.emit;
    let (sums, mut sink) = SumState::split_opt(state.sums.as_deref_mut());
    // The previous version's pages in a round: the same page at the same offset needs no index
    // lookup.
    let mut known = match prev.as_mut() {
        Some(p) => p.chunks_in(0, round_bytes),
        None => Vec::new(),
    };
    let mut push = |segments: Vec<Segment>| -> Result<()> {
        for (n, ids, digests) in segments {
            if let Some(sink) = sink.as_mut() {
                sink.extend(&digests);
            }
            let mut left = n;
            for id in ids {
                let len = page.min(left);
                builder.push(id, len as u64, emit)?;
                left -= len;
            }
        }
        Ok(())
    };
    let mut pending: Vec<Segment> = Vec::new();
    let mut offset = 0u64;
    loop {
        let next_start = offset + round_bytes;
        let to_push = std::mem::take(&mut pending);
        let ((pushed, next_known), segments) = rayon::join(
            || {
                let pushed = push(to_push);
                let next_known = match prev.as_mut() {
                    Some(p) => p.chunks_in(next_start, next_start + round_bytes),
                    None => Vec::new(),
                };
                (pushed, next_known)
            },
            || {
                (0..SEGMENTS_PER_ROUND)
                    .into_par_iter()
                    .map(|k| {
                        read_segment(shared, &read, offset + (k * SEGMENT) as u64, &known, sums)
                    })
                    .collect::<Vec<Result<Segment>>>()
            },
        );
        pushed?;
        known = next_known;
        for segment in segments {
            let (n, ids, digests) = segment?;
            offset += n as u64;
            if let Some(p) = shared.progress {
                p(n as u64);
            }
            pending.push((n, ids, digests));
            // The first short segment is the end of the file.
            if n < SEGMENT {
                push(pending)?;
                return Ok(offset);
            }
        }
    }
}

/// The committed frames of a database's log, put over the pages read from its main file.
pub(super) struct Overlay<'a> {
    pub(super) log: &'a File,
    pub(super) map: &'a LogMap,
}

thread_local! {
    static FRAME_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl Overlay<'_> {
    /// Puts the log's pages into `buf`, the image's bytes at `at` of which the first `main`
    /// came from the main file; returns the bytes of `buf` now holding the image (all of it,
    /// or an error naming a page found in neither file).
    fn apply(
        &self,
        buf: &mut [u8],
        main: usize,
        at: u64,
        page: usize,
        path: &std::path::Path,
    ) -> Result<usize> {
        let first = at / page as u64 + 1;
        FRAME_BUF.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            for (j, out) in buf.chunks_exact_mut(page).enumerate() {
                let pgno = first + j as u64;
                let from_log = match u32::try_from(pgno).ok().and_then(|p| self.map.get(p)) {
                    Some(frame) => read_frame(
                        self.log,
                        &self.map.header,
                        pgno as u32,
                        frame,
                        out,
                        &mut scratch,
                    )?,
                    None => false,
                };
                // A frame written over since the log was parsed: the log was reset, which
                // happens only when the main file holds the whole image (see `PinnedLog`).
                if !from_log && (j + 1) * page > main {
                    return Err(Error::invalid(format!(
                        "{}: page {pgno} of the image is neither in the main file nor in its log",
                        path.display()
                    )));
                }
            }
            Ok(buf.len() / page * page)
        })
    }
}

/// A segment read: its length, its page ids and (for a file that keeps them) page digests.
type Segment = (usize, Vec<ChunkId>, Vec<u128>);

/// Where a full pass reads: the file, its path and page size, the image's end and the log's
/// frames to put over it.
struct Read<'a> {
    file: &'a UncachedReader<'a>,
    path: &'a std::path::Path,
    page: usize,
    limit: u64,
    overlay: Option<&'a Overlay<'a>>,
}

impl Read<'_> {
    /// Calls `f` with the image's bytes of the segment at `at`; returns their length and what
    /// `f` returned.
    fn segment<T>(&self, at: u64, f: impl FnOnce(&[u8]) -> Result<T>) -> Result<(usize, T)> {
        SEGMENT_BUF.with(|buf| {
            let mut buf = buf.borrow_mut();
            let want = self.limit.saturating_sub(at).min(SEGMENT as u64) as usize;
            buf.reserve(SEGMENT);
            let buf = buf.bytes_mut();
            let mut n = self.file.read_at(buf, want, at).ctx("read", self.path)?;
            if let Some(overlay) = self.overlay {
                n = overlay.apply(&mut buf[..want], n, at, self.page, self.path)?;
            }
            Ok((n, f(&buf[..n])?))
        })
    }
}

/// A segment of a paged file digested: what it left to place, and its page digests.
type Digested = (MapSegment, Vec<u128>);

/// [`read_pages`] for a file stored as a page map: a round of segments is read and digested in
/// parallel, then taken in order (see [`MapWriter`]); the full runs of changed pages it left are
/// stored beside the next round's reads.
fn read_pages_mapped(
    shared: &Shared,
    read: &Read,
    map: &mut MapWriter<'_>,
    sums: Option<SumCtx>,
    mut sink: Option<SumSink>,
) -> Result<u64> {
    let mut offset = 0u64;
    let mut batch = None;
    loop {
        let (stored, round) = {
            let map = &*map;
            let batch = batch.take();
            rayon::join(
                || batch.map(|b| map.store_batch(shared, b)).transpose(),
                || {
                    (0..SEGMENTS_PER_ROUND)
                        .into_par_iter()
                        .map(|k| {
                            let at = offset + (k * SEGMENT) as u64;
                            read.segment(at, |data| map.segment(shared, data, at, sums))
                        })
                        .collect::<Vec<Result<(usize, Digested)>>>()
                },
            )
        };
        if let Some(placed) = stored? {
            map.add(placed);
        }
        for segment in round {
            let (n, (segment, digests)) = segment?;
            if let Some(sink) = sink.as_mut() {
                sink.extend(&digests);
            }
            map.take_only(segment);
            offset += n as u64;
            if let Some(p) = shared.progress {
                p(n as u64);
            }
            // The first short segment is the end of the file; `finish` stores what waits.
            if n < SEGMENT {
                return Ok(offset);
            }
        }
        batch = map.full_runs();
    }
}

/// Reads, hashes and stores one segment at `at` (nothing at or past `limit`).
#[allow(clippy::too_many_arguments)]
fn read_segment(
    shared: &Shared,
    read: &Read,
    at: u64,
    known: &[Known],
    sums: Option<SumCtx>,
) -> Result<Segment> {
    let (n, (ids, digests)) = read.segment(at, |data| {
        store_segment(shared, data, read.page, at, known, sums)
    })?;
    Ok((n, ids, digests))
}

/// A page that may be new: where it is in a buffer, its length, its file offset and its id.
pub(super) type Candidate = (usize, usize, u64, ChunkId);

/// Stores the candidates that are new. Runs of new pages that follow each other both in `buf`
/// and in the file are compressed together.
pub(super) fn store_fresh(shared: &Shared, buf: &[u8], pages: &[Candidate]) -> Result<()> {
    let mut run: Vec<(ChunkId, usize)> = Vec::new();
    let (mut run_start, mut run_bytes, mut run_end_off) = (0usize, 0usize, 0u64);
    for &(start, len, off, id) in pages {
        let fresh = shared.claim(&id)?;
        let follows = run_start + run_bytes == start && run_end_off == off;
        if !run.is_empty() && (!fresh || !follows || run_bytes + len > FRAME_TARGET) {
            let raw = &buf[run_start..run_start + run_bytes];
            shared.store(BlobKind::Data, &run, raw)?;
            run.clear();
        }
        if fresh {
            if run.is_empty() {
                run_start = start;
                run_bytes = 0;
            }
            run.push((id, len));
            run_bytes += len;
            run_end_off = off + len as u64;
        }
    }
    if !run.is_empty() {
        shared.store(BlobKind::Data, &run, &buf[run_start..run_start + run_bytes])?;
    }
    Ok(())
}

/// Hashes the pages of `data` (a segment at file offset `at`), stores those that are new, and
/// returns every page's id and, with `sums`, digest. A page whose digest and length are the
/// previous version's at the same offset keeps that version's id without BLAKE3.
fn store_segment(
    shared: &Shared,
    data: &[u8],
    page: usize,
    at: u64,
    known: &[Known],
    sums: Option<SumCtx>,
) -> Result<(Vec<ChunkId>, Vec<u128>)> {
    let key = shared.key.as_ref();
    let mut digests = Vec::new();
    let ids: Vec<ChunkId> = data
        .chunks(page)
        .enumerate()
        .map(|(j, c)| match sums {
            Some(s) => {
                let d = s.digest(c);
                digests.push(d);
                s.unchanged(known, page, at + (j * page) as u64, c.len(), d)
                    .unwrap_or_else(|| ChunkId::hash(key, c))
            }
            None => ChunkId::hash(key, c),
        })
        .collect();
    let pages: Vec<Candidate> = ids
        .iter()
        .zip(data.chunks(page))
        .enumerate()
        .map(|(j, (id, c))| (j * page, c.len(), at + (j * page) as u64, *id))
        .filter(|&(_, _, off, id)| !is_known(known, off, &id))
        .collect();
    store_fresh(shared, data, &pages)?;
    Ok((ids, digests))
}

/// Segments of a captured database processed per round (bounded memory: a round's buffers
/// plus the few the reader has filled ahead).
const SQLITE_ROUND: usize = 8;

/// Reads a SQLite database as one consistent image through SQLite (see
/// [`crate::source::sqlite`]): a reader thread fills 1 MiB segments of whole pages in order, and
/// each round of segments is hashed, deduplicated and stored in parallel as for any page-aligned
/// file.
pub(super) fn read_sqlite(
    shared: &Shared,
    snapshot: crate::source::sqlite::ReadSnapshot,
    path: &std::path::Path,
    page: u32,
    state: &mut FileState,
) -> Result<u64> {
    use std::sync::mpsc::sync_channel;
    let (full_tx, full_rx) = sync_channel::<Vec<u8>>(4);
    let (free_tx, free_rx) = sync_channel::<Vec<u8>>(SQLITE_ROUND + 6);
    let page_len = page as usize;
    let (sums, mut sink) = SumState::split_opt(state.sums.as_deref_mut());
    std::thread::scope(|s| {
        let reader = s.spawn(move || {
            let take = || {
                free_rx
                    .try_recv()
                    .unwrap_or_else(|_| Vec::with_capacity(SEGMENT))
            };
            let send = |full| {
                full_tx
                    .send(full)
                    .map_err(|_| Error::invalid("backup stopped reading"))
            };
            snapshot.read_segments(SEGMENT, take, send)
        });
        let processed = (|| -> Result<u64> {
            let mut offset = 0u64;
            loop {
                let mut round: Vec<Vec<u8>> = Vec::with_capacity(SQLITE_ROUND);
                while round.len() < SQLITE_ROUND {
                    match full_rx.recv() {
                        Ok(b) => round.push(b),
                        Err(_) => break,
                    }
                }
                if round.is_empty() {
                    return Ok(offset);
                }
                let round_len: u64 = round.iter().map(|b| b.len() as u64).sum();
                let mut starts = Vec::with_capacity(round.len());
                let mut at = offset;
                for b in &round {
                    starts.push(at);
                    at += b.len() as u64;
                }
                if let Some(map) = state.map.as_deref_mut() {
                    let results: Vec<Result<Digested>> = {
                        let map = &*map;
                        round
                            .par_iter()
                            .zip(starts.par_iter())
                            .map(|(data, &at)| map.segment(shared, data, at, sums))
                            .collect()
                    };
                    for (result, data) in results.into_iter().zip(&round) {
                        let (segment, digests) = result?;
                        if let Some(sink) = sink.as_mut() {
                            sink.extend(&digests);
                        }
                        map.take(shared, segment)?;
                        if let Some(p) = shared.progress {
                            p(data.len() as u64);
                        }
                    }
                } else {
                    let known = match state.prev.as_mut() {
                        Some(p) => p.chunks_in(offset, offset + round_len),
                        None => Vec::new(),
                    };
                    let results: Vec<Result<(Vec<ChunkId>, Vec<u128>)>> = round
                        .par_iter()
                        .zip(starts.par_iter())
                        .map(|(data, &at)| store_segment(shared, data, page_len, at, &known, sums))
                        .collect();
                    for (segment, data) in results.into_iter().zip(&round) {
                        let (ids, digests) = segment?;
                        if let Some(sink) = sink.as_mut() {
                            sink.extend(&digests);
                        }
                        for id in ids {
                            state.builder.push(id, page_len as u64, state.emit)?;
                        }
                        if let Some(p) = shared.progress {
                            p(data.len() as u64);
                        }
                    }
                }
                offset += round_len;
                for mut b in round {
                    b.clear();
                    let _ = free_tx.try_send(b);
                }
            }
        })();
        // Stop the reader if processing failed, then collect its result.
        drop(full_rx);
        let image = reader
            .join()
            .unwrap_or_else(|_| Err(Error::invalid("SQLite reader thread panicked")));
        let size = processed?;
        let image = image?;
        if image.page_size != page || image.bytes() != size {
            return Err(Error::invalid(format!(
                "{}: SQLite image of {} pages of {} bytes, {size} bytes stored",
                path.display(),
                image.pages,
                image.page_size
            )));
        }
        Ok(size)
    })
}

//! Files and streams cut by content (FastCDC): read in batches, each batch's chunks hashed in
//! parallel, deduplicated and stored, skipping the chunks the previous version shows unchanged.

use super::digests::{SumCtx, SumState};
use super::previous::PreviousVersion;
use super::writer::{FRAME_TARGET, FileState, Sealed, Shared};
use crate::chunker::{ChunkStream, CutMode};
use crate::error::{Error, Result};
use crate::id::ChunkId;
use crate::manifest::Content;
use crate::pack::BlobKind;
use crate::tree::TreeBuilder;
use rayon::prelude::*;

/// Cuts what `reader` yields (by content, or at fixed pages as `mode` says) and stores it; returns the bytes read. I/O errors come
/// back as `std::io::Error` for the caller to name the source.
pub(super) fn read_cdc(
    shared: &Shared,
    reader: impl std::io::Read,
    mode: CutMode,
    window: usize,
    state: &mut FileState,
    previous: Option<(PreviousVersion, u64)>,
) -> std::result::Result<u64, ReadError> {
    let chunker = shared.repo.chunker();
    let mut stream = ChunkStream::with_window(reader, chunker, mode, window);
    let (sums, mut sink) = SumState::split_opt(state.sums.take());
    let mut skip = match (sums, previous) {
        (Some(ctx), Some((prev, prev_size))) => Some(CdcSkip {
            prev,
            ahead: std::collections::VecDeque::new(),
            next_index: 0,
            ctx,
            prev_size,
            max: chunker.params().max as usize,
            checked: None,
            reused: Vec::new(),
        }),
        _ => None,
    };
    loop {
        let batch = match skip.as_mut() {
            Some(k) => stream.next_batch_known(&mut |at, rest| k.at(at, rest)),
            None => stream.next_batch(),
        }
        .map_err(ReadError::Io)?;
        let Some((offset, bytes, lens)) = batch else {
            break;
        };
        let mut spans = Vec::with_capacity(lens.len());
        let mut pos = 0usize;
        for len in lens {
            spans.push(Span {
                seg: 0,
                start: pos,
                len,
                offset: offset + pos as u64,
            });
            pos += len;
        }
        let reused = skip
            .as_mut()
            .map(|k| std::mem::take(&mut k.reused))
            .unwrap_or_default();
        let found = |off: u64| {
            reused
                .binary_search_by_key(&off, |r| r.0)
                .ok()
                .map(|i| (reused[i].1, reused[i].2))
        };
        let hashed: Vec<(ChunkId, Option<u128>)> = spans
            .par_iter()
            .map(|sp| match found(sp.offset) {
                Some((id, digest)) => (id, Some(digest)),
                None => {
                    let data = &bytes[sp.start..sp.start + sp.len];
                    (
                        ChunkId::hash(shared.key.as_ref(), data),
                        sums.map(|s| s.digest(data)),
                    )
                }
            })
            .collect();
        if let Some(sink) = sink.as_mut() {
            let digests: Vec<u128> = hashed.iter().filter_map(|h| h.1).collect();
            sink.extend(&digests);
        }
        let ids: Vec<ChunkId> = hashed.into_iter().map(|h| h.0).collect();
        process_batch(shared, &[bytes], &spans, &ids, state).map_err(ReadError::Store)?;
    }
    Ok(stream.bytes_read())
}

/// Cuts and stores everything `input` yields as a file with no previous version (a stream, a
/// file of a base backup); returns its content and size.
pub(super) fn store_whole(
    shared: &Shared,
    input: impl std::io::Read,
    mode: CutMode,
    window: usize,
) -> std::result::Result<(Content, u64), ReadError> {
    let mut builder = TreeBuilder::new(shared.key);
    let mut emit = |id: ChunkId, bytes: Vec<u8>| shared.store_node(id, bytes);
    let mut state = FileState {
        prev: None,
        sums: None,
        builder: &mut builder,
        map: None,
        emit: &mut emit,
    };
    let size = read_cdc(shared, input, mode, window, &mut state, None)?;
    let content = builder.finish(&mut emit).map_err(ReadError::Store)?;
    Ok((content, size))
}

/// Recognises, in a file cut by content, the chunks of the previous version that the cutter
/// would cut again, so they need neither cutting nor BLAKE3.
///
/// FastCDC decides where a chunk that starts at `p` ends from the bytes `p .. p + len` and the
/// byte at `p + len` (the next chunk's first), given how much input there is past `p`, which is
/// capped at the largest chunk size. So a chunk of the previous version that started at `p`
/// ends at the same place in this one when: both versions have at least the largest chunk size
/// of input past `p`; the chunk's bytes have its recorded digest; and so do the bytes of the
/// chunk after it (which covers the byte that decided the cut). Everywhere else the cutter runs,
/// and once one of its cuts lands where a previous chunk began, chunks are recognised again.
struct CdcSkip<'a, 'w> {
    prev: PreviousVersion<'w>,
    /// The previous version's chunks taken from `prev` and not passed yet: offset, id, length,
    /// digest.
    ahead: std::collections::VecDeque<(u64, ChunkId, u64, u128)>,
    /// Number of the next chunk `prev` gives (its digest's index).
    next_index: usize,
    ctx: SumCtx<'a>,
    prev_size: u64,
    max: usize,
    /// The chunk last found to match (offset, digest), to skip digesting it twice.
    checked: Option<(u64, u128)>,
    /// Chunks recognised since the caller last took them: offset, id, digest.
    reused: Vec<(u64, ChunkId, u128)>,
}

impl CdcSkip<'_, '_> {
    /// Makes `ahead` hold at least `n` chunks, unless the previous version ends first.
    fn fill(&mut self, n: usize) {
        while self.ahead.len() < n {
            let Some((off, id, len)) = self.prev.next_chunk() else {
                return;
            };
            let digest = self.ctx.prev.get(self.next_index).copied();
            self.next_index += 1;
            match digest {
                Some(d) => self.ahead.push_back((off, id, len, d)),
                // Fewer digests than chunks: recognise nothing past them.
                None => return,
            }
        }
    }

    fn matches(&mut self, at: u64, bytes: &[u8], digest: u128) -> bool {
        if self.checked == Some((at, digest)) {
            return true;
        }
        self.ctx.digest(bytes) == digest
    }

    /// The length of the chunk at file offset `at` if it is the previous version's, with
    /// `rest` the input from `at` on.
    fn at(&mut self, at: u64, rest: &[u8]) -> Option<usize> {
        if rest.len() < self.max || at.saturating_add(self.max as u64) > self.prev_size {
            return None;
        }
        loop {
            self.fill(1);
            match self.ahead.front() {
                Some(c) if c.0 < at => {
                    self.ahead.pop_front();
                }
                Some(_) => break,
                None => return None,
            }
        }
        self.fill(2);
        let (off, id, len, digest) = *self.ahead.front()?;
        let (next_off, _, next_len, next_digest) = *self.ahead.get(1)?;
        let (len, next_len) = (len as usize, next_len as usize);
        if off != at || next_off != at + len as u64 || rest.len() < len + next_len {
            return None;
        }
        if !self.matches(at, &rest[..len], digest)
            || !self.matches(next_off, &rest[len..len + next_len], next_digest)
        {
            return None;
        }
        self.checked = Some((next_off, next_digest));
        self.reused.push((at, id, digest));
        self.ahead.pop_front();
        Some(len)
    }
}

/// Why reading a source failed: its own I/O, or storing what was read.
pub(super) enum ReadError {
    Io(std::io::Error),
    Store(Error),
}

pub(super) trait ReadContext<T> {
    fn ctx(self, what: &str, path: &std::path::Path) -> Result<T>;
}

impl<T> ReadContext<T> for std::result::Result<T, ReadError> {
    fn ctx(self, what: &str, path: &std::path::Path) -> Result<T> {
        self.map_err(|e| match e {
            ReadError::Io(io) => Error::io_path(what, path, io),
            ReadError::Store(e) => e,
        })
    }
}

/// A chunk inside one of a batch's buffers.
struct Span {
    seg: usize,
    start: usize,
    len: usize,
    /// Offset of the chunk in the file.
    offset: u64,
}

/// Dedups a batch of hashed chunks, stores the new ones (compressing in parallel) and appends
/// all of them, in order, to the file's chunk-list tree.
fn process_batch(
    shared: &Shared,
    bufs: &[&[u8]],
    spans: &[Span],
    ids: &[ChunkId],
    state: &mut FileState,
) -> Result<()> {
    // Chunks at the same offset as in the previous version are known without a lookup.
    let candidates: Vec<usize> = match state.prev.as_mut() {
        Some(p) => (0..spans.len())
            .filter(|&i| !p.has(spans[i].offset, &ids[i]))
            .collect(),
        None => (0..spans.len()).collect(),
    };
    let fresh: Vec<usize> = candidates
        .par_iter()
        .filter_map(|&i| match shared.claim(&ids[i]) {
            Ok(true) => Some(Ok(i)),
            Ok(false) => None,
            Err(e) => Some(Err(e)),
        })
        .collect::<Result<_>>()?;
    // Runs of new chunks that follow each other in the file are compressed together.
    let mut frames: Vec<Vec<usize>> = Vec::new();
    let mut frame_bytes = 0;
    for i in fresh {
        let len = spans[i].len;
        match frames.last_mut() {
            Some(f)
                if *f.last().expect("frames are never empty") + 1 == i
                    && spans[i - 1].seg == spans[i].seg
                    && frame_bytes + len <= FRAME_TARGET =>
            {
                f.push(i);
                frame_bytes += len;
            }
            _ => {
                frames.push(vec![i]);
                frame_bytes = len;
            }
        }
    }
    // Compressed in parallel, appended in file order: a restore then reads a file's new
    // chunks from one stretch of a pack, not from frames scattered among its neighbours'.
    let sealed: Vec<Sealed> = frames
        .par_iter()
        .map(|f| {
            let members: Vec<(ChunkId, usize)> =
                f.iter().map(|&i| (ids[i], spans[i].len)).collect();
            let (first, last) = (&spans[f[0]], &spans[f[f.len() - 1]]);
            shared.seal(
                BlobKind::Data,
                &members,
                &bufs[first.seg][first.start..last.start + last.len],
            )
        })
        .collect::<Result<_>>()?;
    for frame in sealed {
        shared.append(frame)?;
    }
    let mut bytes = 0;
    for (sp, id) in spans.iter().zip(ids) {
        state.builder.push(*id, sp.len as u64, state.emit)?;
        bytes += sp.len as u64;
    }
    if let Some(p) = shared.progress {
        p(bytes);
    }
    Ok(())
}

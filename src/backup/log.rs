//! A WAL database read from its log alone: when the log still holds the position the previous
//! image ended at, the new image is that one with the pages of the frames committed since put
//! in. Only those frames are read; every other page keeps the previous version's id.

use super::digests::SumState;
use super::mapped::MapWriter;
use super::pages::store_fresh;
use super::writer::{FileState, Shared};
use crate::error::{Error, IoContext, Result};
use crate::id::ChunkId;
use crate::source::read_full_at;
use crate::source::sqlite::PinnedLog;
use crate::source::wal::{FrameRef, read_frame};
use rayon::prelude::*;
use std::fs::File;
use std::path::Path;

/// Changed pages read, hashed and stored per task.
const BATCH: usize = 256;

/// Builds the image of `pages` pages of `page` bytes from the previous version (`state.prev`,
/// which must be the image the log's `since` position ended) and the pages of `log`'s map;
/// returns the image's size and the bytes read.
pub(super) fn read_log_changes(
    shared: &Shared,
    main: &File,
    path: &Path,
    page: u32,
    state: &mut FileState,
    log: &PinnedLog,
    pages: u64,
) -> Result<(u64, u64)> {
    let (Some(map), Some(file)) = (log.map.as_ref(), log.file.as_ref()) else {
        return Err(Error::invalid("no log to read changes from"));
    };
    let frames = Frames {
        main,
        path,
        page,
        file,
        map,
    };
    if let Some(writer) = state.map.as_deref_mut() {
        return read_log_mapped(shared, &frames, writer, state.sums.as_deref_mut(), pages);
    }
    let prev = state
        .prev
        .as_mut()
        .ok_or_else(|| Error::invalid("no previous version to read changes onto"))?;
    let page_len = page as usize;
    let changed = frames.changed(pages);
    let sums = state.sums.as_deref();
    let seed_digest = |data: &[u8]| sums.map(|s| s.digest(data));
    // The changed pages, read and stored in parallel: (page number, id, digest).
    let fresh: Vec<Vec<(u32, ChunkId, Option<u128>)>> = changed
        .par_chunks(BATCH)
        .map(|batch| {
            let mut buf = vec![0u8; batch.len() * page_len];
            let mut scratch = Vec::new();
            for ((pgno, frame), out) in batch.iter().zip(buf.chunks_exact_mut(page_len)) {
                frames.read(*pgno, *frame, out, &mut scratch)?;
            }
            let key = shared.key.as_ref();
            let mut out = Vec::with_capacity(batch.len());
            let mut candidates = Vec::with_capacity(batch.len());
            for (j, ((pgno, _), data)) in batch.iter().zip(buf.chunks_exact(page_len)).enumerate() {
                let id = ChunkId::hash(key, data);
                out.push((*pgno, id, seed_digest(data)));
                candidates.push((j * page_len, page_len, (*pgno as u64 - 1) * page as u64, id));
            }
            store_fresh(shared, &buf, &candidates)?;
            Ok(out)
        })
        .collect::<Result<_>>()?;
    if let Some(p) = shared.progress {
        p(changed.len() as u64 * page as u64);
    }
    // The chunk list in page order: a changed page's new id, else the previous version's.
    let mut digests = Digests::new(state.sums.as_deref_mut(), pages);
    let mut fresh = fresh.into_iter().flatten().peekable();
    // The nodes the chunk list makes are stored in parallel, a batch at a time.
    let mut nodes = Nodes::new(shared);
    let mut emit = |id: ChunkId, bytes: Vec<u8>| nodes.push(id, bytes);
    let mut n = 1;
    while n <= pages {
        // A whole leaf of the previous version with no changed page keeps its node, unread.
        if state.builder.at_leaf_start()
            && let Some((leaf, last)) = prev.leaf_node()
        {
            let count = leaf.bytes / page as u64;
            let end = n + count;
            let untouched = fresh.peek().is_none_or(|f| f.0 as u64 >= end);
            if !last && count >= 2 && leaf.bytes % page as u64 == 0 && end <= pages + 1 && untouched
            {
                prev.skip_leaf_node(&leaf);
                state.builder.push_leaf(leaf, count, &mut emit)?;
                for k in n..end {
                    digests.push(k, None);
                }
                n = end;
                continue;
            }
        }
        let before = prev.next_chunk();
        let (id, digest) = match fresh.peek() {
            Some(&(pgno, id, digest)) if pgno as u64 == n => {
                fresh.next();
                (id, digest)
            }
            _ => match before {
                Some((off, id, len)) if off == (n - 1) * page as u64 && len == page as u64 => {
                    (id, None)
                }
                _ => {
                    return Err(Error::invalid(format!(
                        "{}: page {n} is not in the previous version nor in the log's new frames",
                        path.display()
                    )));
                }
            },
        };
        digests.push(n, digest);
        state.builder.push(id, page as u64, &mut emit)?;
        n += 1;
    }
    nodes.flush()?;
    digests.finish(state.sums.as_deref_mut());
    Ok((pages * page as u64, changed.len() as u64 * page as u64))
}

/// A database's log and main file, to read changed pages from.
struct Frames<'a> {
    main: &'a File,
    path: &'a Path,
    page: u32,
    file: &'a File,
    map: &'a crate::source::wal::LogMap,
}

impl Frames<'_> {
    /// The pages of the log's committed frames within the image's `pages` pages, in page order,
    /// each with its newest frame.
    fn changed(&self, pages: u64) -> Vec<(u32, FrameRef)> {
        let mut changed: Vec<(u32, FrameRef)> = self
            .map
            .pages
            .iter()
            .filter(|(p, _)| **p as u64 <= pages)
            .map(|(p, f)| (*p, *f))
            .collect();
        changed.sort_unstable_by_key(|c| c.0);
        changed
    }

    /// Reads page `pgno` at `frame` into `out`: from the log, or from the main file when the
    /// frame was written over (the log was reset, so the main file holds the page).
    fn read(
        &self,
        pgno: u32,
        frame: FrameRef,
        out: &mut [u8],
        scratch: &mut Vec<u8>,
    ) -> Result<()> {
        if read_frame(self.file, &self.map.header, pgno, frame, out, scratch)? {
            return Ok(());
        }
        let at = (pgno as u64 - 1) * self.page as u64;
        let n = read_full_at(self.main, out, at).ctx("read", self.path)?;
        if n != out.len() {
            return Err(Error::invalid(format!(
                "{}: page {pgno} is neither in the log nor in the main file",
                self.path.display()
            )));
        }
        Ok(())
    }
}

/// Changed pages read per round of [`read_log_mapped`] (64 MiB of 4 KiB pages).
const MAPPED_ROUND: usize = 1 << 14;

/// [`read_log_changes`] for a database stored as a page map: the pages of the frames committed
/// since the previous image go into new runs, and the new map is the previous one with them
/// placed anew. No other page is read.
fn read_log_mapped(
    shared: &Shared,
    log: &Frames,
    writer: &mut MapWriter<'_>,
    sums: Option<&mut SumState>,
    pages: u64,
) -> Result<(u64, u64)> {
    let page_len = log.page as usize;
    let changed = log.changed(pages);
    let numbers: Vec<u32> = changed.iter().map(|c| c.0).collect();
    let fill = |first: usize, out: &mut [u8]| {
        out.par_chunks_mut(BATCH * page_len)
            .enumerate()
            .try_for_each(|(b, out)| {
                let mut scratch = Vec::new();
                let from = first + b * BATCH;
                for ((pgno, frame), out) in
                    changed[from..].iter().zip(out.chunks_exact_mut(page_len))
                {
                    log.read(*pgno, *frame, out, &mut scratch)?;
                }
                Ok(())
            })
    };
    place_changes(shared, writer, sums, log.page, pages, &numbers, &fill)
}

/// Places `changed` (page numbers within the image's `pages` pages, in order) over the previous
/// page map, their bytes from `fill` (called for each round of them with the index in
/// `changed` of the round's first page and room for its pages); the new version's page digests are the
/// changed pages' and the previous version's. Returns the image's size and the bytes placed.
pub(super) fn place_changes(
    shared: &Shared,
    writer: &mut MapWriter<'_>,
    sums: Option<&mut SumState>,
    page: u32,
    pages: u64,
    changed: &[u32],
    fill: &(dyn Fn(usize, &mut [u8]) -> Result<()> + Sync),
) -> Result<(u64, u64)> {
    if writer.prev.is_none() {
        return Err(Error::invalid("no previous page map to read changes onto"));
    }
    let page_len = page as usize;
    let ctx = sums.as_deref().map(|s| s.ctx());
    let mut fresh: Vec<u128> = Vec::new();
    for (r, round) in changed.chunks(MAPPED_ROUND).enumerate() {
        let mut bytes = vec![0u8; round.len() * page_len];
        fill(r * MAPPED_ROUND, &mut bytes)?;
        fresh.extend(writer.place(shared, round, &bytes, ctx)?);
    }
    if let Some(p) = shared.progress {
        p(changed.len() as u64 * page_len as u64);
    }
    // This version's digests: the changed pages', else the previous version's.
    if let Some(s) = sums {
        let mut new = Some(Vec::with_capacity(pages as usize));
        let mut next = changed.iter().zip(&fresh).peekable();
        for n in 1..=pages {
            let d = match next.peek() {
                Some((pgno, d)) if **pgno as u64 == n => {
                    let d = **d;
                    next.next();
                    Some(d)
                }
                _ => s.prev.get(n as usize - 1).copied(),
            };
            match (d, new.as_mut()) {
                (Some(d), Some(v)) => v.push(d),
                _ => new = None,
            }
        }
        if fresh.len() != changed.len() {
            new = None;
        }
        s.record(new);
    }
    Ok((pages * page as u64, changed.len() as u64 * page as u64))
}

/// Chunk-list nodes waiting to be stored: a batch is hashed for its frame, looked up, compressed
/// and written in parallel (the order does not matter: the snapshot names them only once every
/// pack of the backup is indexed).
struct Nodes<'s, 'r> {
    shared: &'s Shared<'r>,
    batch: Vec<(ChunkId, Vec<u8>)>,
}

/// Nodes stored per parallel batch (about 2.5 KiB each).
const NODE_BATCH: usize = 4096;

impl<'s, 'r> Nodes<'s, 'r> {
    fn new(shared: &'s Shared<'r>) -> Self {
        Nodes {
            shared,
            batch: Vec::new(),
        }
    }

    fn push(&mut self, id: ChunkId, bytes: Vec<u8>) -> Result<()> {
        self.batch.push((id, bytes));
        if self.batch.len() >= NODE_BATCH {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        let shared = self.shared;
        std::mem::take(&mut self.batch)
            .into_par_iter()
            .try_for_each(|(id, bytes)| shared.store_node(id, bytes))
    }
}

/// This version's page digests, made from the previous version's and those of the changed
/// pages; none when the previous version's do not cover every unchanged page.
struct Digests {
    new: Option<Vec<u128>>,
    prev: Vec<u128>,
}

impl Digests {
    fn new(sums: Option<&mut SumState>, pages: u64) -> Digests {
        match sums {
            Some(s) => Digests {
                new: Some(Vec::with_capacity(pages as usize)),
                prev: std::mem::take(&mut s.prev),
            },
            None => Digests {
                new: None,
                prev: Vec::new(),
            },
        }
    }

    /// Page `n` (from 1) has the digest `changed` if it is a changed page, else the previous
    /// version's.
    fn push(&mut self, n: u64, changed: Option<u128>) {
        let Some(new) = self.new.as_mut() else {
            return;
        };
        match changed.or_else(|| self.prev.get(n as usize - 1).copied()) {
            Some(d) => new.push(d),
            None => self.new = None,
        }
    }

    fn finish(self, sums: Option<&mut SumState>) {
        if let Some(s) = sums {
            s.record(self.new);
        }
    }
}

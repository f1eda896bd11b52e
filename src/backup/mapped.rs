//! Databases stored as page maps (see [`crate::pagemap`]): the pages that changed since the
//! previous version go into new runs of up to [`crate::pagemap::RUN_PAGES`] pages, and the new
//! map is the previous one with those pages placed anew: one index entry per run and one per
//! map, not one per page.
//!
//! A page is unchanged when its digest is the one recorded for its place (see
//! [`crate::pagesums`]) and the previous version, a page map, holds it. A segment none of whose
//! pages is unchanged (a first backup, or one without digests) is stored as whole runs, so that
//! identical segments are stored once. A segment the previous map cuts into more pieces than
//! [`MapWriter::segment_limit`] allows is stored whole again, which bounds the size of the maps a
//! database's history of scattered writes makes.

use super::digests::SumCtx;
use super::writer::Shared;
use crate::error::{Error, Result};
use crate::id::ChunkId;
use crate::index::FileStamp;
use crate::manifest::Content;
use crate::pack::BlobKind;
use crate::pagemap::{Builder, Extent, PageMap, Version, run_pages};
use rayon::prelude::*;

/// Full runs of changed pages waiting before they are stored together (16 MiB at most).
const FLUSH_RUNS: usize = 16;
/// A new base map is made once a delta holds more than 1/`DELTA_SHARE` of the file's pages.
const DELTA_SHARE: u64 = 8;
/// ... or more extents than this (4 MiB of map).
const DELTA_EXTENTS: usize = 1 << 18;
/// A base map is kept to about this many extents (16 MiB) by the full passes.
const BASE_EXTENTS: u64 = 1 << 20;
/// The largest file stored as a page map (its map, at most 2^20 extents and a run per MiB, stays
/// under [`MAP_BYTES_MAX`]); a larger one is a chunk-list tree.
pub(super) const MAX_FILE: u64 = 128 << 30;
/// A map larger than this is not written: the file is read whole and its fragmented segments
/// stored again (see [`MapWriter::segment_limit`]).
const MAP_BYTES_MAX: usize = 24 << 20;

/// The previous version of a paged file, as a page map.
pub(super) struct PrevMap {
    version: Version,
    /// Every page's place.
    pub(super) flat: PageMap,
}

/// Pages placed in a run: (first page, count, run, slot).
pub(super) type Placed = (u32, u32, ChunkId, u32);

/// Changed pages waiting to be stored as runs, in page order, and their bytes.
pub(super) struct Batch {
    pages: Vec<u32>,
    bytes: Vec<u8>,
}

/// What one segment of a full pass left to place.
pub(super) enum Segment {
    /// Nothing changed.
    Unchanged,
    /// Stored as whole runs (every page changed).
    Whole(Vec<Placed>),
    /// Changed pages, in page order, and their bytes.
    Changed(Vec<u32>, Vec<u8>),
}

/// The page map being made for one file.
pub(super) struct MapWriter<'f> {
    /// Reads a blob of the repository (checked against its id).
    fetch: &'f (dyn Fn(&ChunkId) -> Result<Vec<u8>> + Sync),
    page: u32,
    run_pages: u32,
    pub(super) prev: Option<PrevMap>,
    placed: Vec<Placed>,
    pending_pages: Vec<u32>,
    pending: Vec<u8>,
    /// Whether any of the file has been taken: a reader that fails after that cannot start over
    /// with another way of reading.
    pub(super) started: bool,
    /// The most pieces the previous map may cut a segment into and the segment still keep them.
    segment_limit: usize,
}

/// A segment's previous pages are compared byte by byte (when there are no digests to compare)
/// only when they come from at most this many runs.
const COMPARE_RUNS: usize = 8;

impl<'f> MapWriter<'f> {
    /// A writer for a file of `len` bytes in pages of `page` bytes; the previous version is the
    /// one `previous` names, read with `fetch`, if it is a page map of the same page size.
    pub(super) fn new(
        page: u32,
        len: u64,
        segment: usize,
        previous: Option<&FileStamp>,
        fetch: &'f (dyn Fn(&ChunkId) -> Result<Vec<u8>> + Sync),
    ) -> MapWriter<'f> {
        let prev = previous.and_then(|p| match p.content {
            Content::Pages(id) if p.page_size == page => {
                let version = Version::load(fetch, &id).ok()?;
                let flat = version.flat().ok()?;
                (flat.page_size == page && flat.check_base().is_ok())
                    .then_some(PrevMap { version, flat })
            }
            _ => None,
        });
        let segments = len.div_ceil(segment as u64).max(1);
        MapWriter {
            fetch,
            page,
            run_pages: run_pages(page),
            prev,
            placed: Vec::new(),
            pending_pages: Vec::new(),
            pending: Vec::new(),
            started: false,
            segment_limit: (BASE_EXTENTS / segments).max(1) as usize,
        }
    }

    /// The previous map's extents that hold any of pages `first..first + count`.
    fn prev_extents(&self, first: u32, count: u32) -> &[Extent] {
        let Some(prev) = &self.prev else { return &[] };
        let ext = &prev.flat.extents;
        let a = ext.partition_point(|e| e.first + e.count <= first);
        let b = ext.partition_point(|e| e.first < first + count);
        &ext[a..b.max(a)]
    }

    /// The previous version's bytes of pages `first..first + count`, if they come from a few
    /// runs that can be read; `None` otherwise.
    fn prev_bytes(&self, first: u32, count: u32) -> Option<Vec<u8>> {
        let prev = &self.prev.as_ref()?.flat;
        let ps = self.page as u64;
        let mut runs: Vec<(u32, Vec<u8>)> = Vec::new();
        let mut out = Vec::with_capacity((count as u64 * ps) as usize);
        for e in self.prev_extents(first, count) {
            let from = e.first.max(first);
            let to = (e.first + e.count).min(first + count);
            let bytes = match runs.iter().position(|r| r.0 == e.run) {
                Some(i) => &runs[i].1,
                None => {
                    if runs.len() == COMPARE_RUNS {
                        return None;
                    }
                    let b = (self.fetch)(&prev.runs[e.run as usize]).ok()?;
                    runs.push((e.run, b));
                    &runs[runs.len() - 1].1
                }
            };
            let skip = (e.slot + from - e.first) as u64 * ps;
            let len = (to - from) as u64 * ps;
            out.extend_from_slice(bytes.get(skip as usize..(skip + len) as usize)?);
        }
        (out.len() as u64 == count as u64 * ps).then_some(out)
    }

    /// Digests the pages of `data` (whole pages at file offset `at`) and finds the changed
    /// ones; a segment with no unchanged page is stored here as whole runs. Runs in parallel.
    pub(super) fn segment(
        &self,
        shared: &Shared,
        data: &[u8],
        at: u64,
        sums: Option<SumCtx>,
    ) -> Result<(Segment, Vec<u128>)> {
        let page = self.page as usize;
        if !data.len().is_multiple_of(page) {
            return Err(Error::invalid(format!(
                "{} bytes at {at} are not whole pages of {page} bytes",
                data.len()
            )));
        }
        let first = (at / page as u64 + 1) as u32;
        let count = (data.len() / page) as u32;
        let fragmented = self.prev_extents(first, count).len() > self.segment_limit;
        let prev_pages = self.prev.as_ref().map_or(0, |p| p.flat.pages);
        // Without the previous version's digests (none were kept, or the record was damaged),
        // its pages are read back and compared.
        let known = (first as u64 + count as u64).min(prev_pages + 1);
        let compare = match sums {
            Some(s) if s.prev.len() as u64 >= prev_pages => None,
            _ if fragmented || known <= first as u64 => None,
            _ => self.prev_bytes(first, (known - first as u64) as u32),
        };
        let mut digests = Vec::new();
        let mut changed = Vec::new();
        for (j, p) in data.chunks_exact(page).enumerate() {
            let n = first + j as u32;
            let digest = sums.map(|s| s.digest(p));
            digests.extend(digest);
            let same = !fragmented
                && n as u64 <= prev_pages
                && match (&compare, sums, digest) {
                    (Some(old), _, _) => old.get(j * page..(j + 1) * page) == Some(p),
                    (None, Some(s), Some(d)) => s.prev.get(n as usize - 1) == Some(&d),
                    _ => false,
                };
            if !same {
                changed.push(n);
            }
        }
        if changed.is_empty() {
            return Ok((Segment::Unchanged, digests));
        }
        if changed.len() == count as usize {
            let mut placed = Vec::new();
            let run_bytes = self.run_pages as usize * page;
            for (k, run) in data.chunks(run_bytes).enumerate() {
                let id = store_run(shared, run)?;
                let n = (run.len() / page) as u32;
                placed.push((first + k as u32 * self.run_pages, n, id, 0));
            }
            return Ok((Segment::Whole(placed), digests));
        }
        let mut bytes = Vec::with_capacity(changed.len() * page);
        for n in &changed {
            let j = (n - first) as usize;
            bytes.extend_from_slice(&data[j * page..(j + 1) * page]);
        }
        Ok((Segment::Changed(changed, bytes), digests))
    }

    /// Takes a segment's result, in file order; changed pages wait until they fill a run. Full
    /// runs are stored a batch at a time, so that they are compressed in parallel: by the
    /// caller with [`MapWriter::full_runs`] and [`MapWriter::store_batch`] beside its next
    /// reads, or here.
    pub(super) fn take(&mut self, shared: &Shared, segment: Segment) -> Result<()> {
        self.take_only(segment);
        match self.full_runs() {
            Some(batch) => {
                let placed = self.store_batch(shared, batch)?;
                self.placed.extend(placed);
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// [`MapWriter::take`] without storing anything.
    pub(super) fn take_only(&mut self, segment: Segment) {
        self.started = true;
        match segment {
            Segment::Unchanged => {}
            Segment::Whole(placed) => self.placed.extend(placed),
            Segment::Changed(pages, bytes) => {
                self.pending_pages.extend(pages);
                self.pending.extend_from_slice(&bytes);
            }
        }
    }

    /// The waiting full runs, once there are [`FLUSH_RUNS`] of them.
    pub(super) fn full_runs(&mut self) -> Option<Batch> {
        let per = self.run_pages as usize;
        if self.pending_pages.len() < FLUSH_RUNS * per {
            return None;
        }
        self.drain(self.pending_pages.len() / per * per)
    }

    /// The first `count` waiting pages and their bytes.
    fn drain(&mut self, count: usize) -> Option<Batch> {
        if count == 0 {
            return None;
        }
        let page = self.page as usize;
        let pages: Vec<u32> = self.pending_pages.drain(..count).collect();
        let bytes: Vec<u8> = self.pending.drain(..count * page).collect();
        Some(Batch { pages, bytes })
    }

    /// Stores a batch of waiting pages as runs, in parallel; what it placed goes to
    /// [`MapWriter::add`].
    pub(super) fn store_batch(&self, shared: &Shared, batch: Batch) -> Result<Vec<Placed>> {
        let (placed, _) = self.store_runs(shared, &batch.pages, &batch.bytes, None)?;
        Ok(placed)
    }

    /// Takes what [`MapWriter::store_batch`] placed.
    pub(super) fn add(&mut self, placed: Vec<Placed>) {
        self.placed.extend(placed);
    }

    /// Places `pages` (in page order, their bytes in `bytes`: a log's frames), stored as runs in
    /// parallel; returns their digests with `sums`.
    pub(super) fn place(
        &mut self,
        shared: &Shared,
        pages: &[u32],
        bytes: &[u8],
        sums: Option<SumCtx>,
    ) -> Result<Vec<u128>> {
        self.started = true;
        let (placed, digests) = self.store_runs(shared, pages, bytes, sums)?;
        self.placed.extend(placed);
        Ok(digests)
    }

    /// Stores `pages` (their bytes in `bytes`) as runs in parallel; returns where they were
    /// placed and, with `sums`, their digests.
    fn store_runs(
        &self,
        shared: &Shared,
        pages: &[u32],
        bytes: &[u8],
        sums: Option<SumCtx>,
    ) -> Result<(Vec<Placed>, Vec<u128>)> {
        let per = self.run_pages as usize;
        let page = self.page as usize;
        let done: Vec<(Vec<Placed>, Vec<u128>)> = pages
            .par_chunks(per)
            .zip(bytes.par_chunks(per * page))
            .map(|(pages, run)| {
                let id = store_run(shared, run)?;
                let digests = match sums {
                    Some(s) => run.chunks_exact(page).map(|p| s.digest(p)).collect(),
                    None => Vec::new(),
                };
                let placed = pages
                    .iter()
                    .enumerate()
                    .map(|(slot, n)| (*n, 1, id, slot as u32))
                    .collect();
                Ok((placed, digests))
            })
            .collect::<Result<_>>()?;
        let mut placed = Vec::with_capacity(pages.len());
        let mut digests = Vec::with_capacity(pages.len());
        for (p, d) in done {
            placed.extend(p);
            digests.extend(d);
        }
        Ok((placed, digests))
    }

    /// The map of the file as read, `size` bytes: a delta on the previous version's base while
    /// it stays small, else a new base; stored, and named by the content returned.
    pub(super) fn finish(mut self, shared: &Shared, size: u64) -> Result<Content> {
        if let Some(rest) = self.drain(self.pending_pages.len()) {
            let placed = self.store_batch(shared, rest)?;
            self.placed.extend(placed);
        }
        let page = self.page as u64;
        if !size.is_multiple_of(page) {
            return Err(Error::invalid(format!(
                "{size} bytes are not whole pages of {page} bytes"
            )));
        }
        let pages = size / page;
        self.placed.sort_unstable_by_key(|p| p.0);
        let mut b = Builder::new(self.page);
        for &(first, count, run, slot) in &self.placed {
            b.push(run, slot, first, count);
        }
        let changes = b.finish(pages, None);
        let map = match &self.prev {
            None => {
                changes.check_base()?;
                changes
            }
            Some(prev) => {
                // Pages past the previous version's end are all new: none may come from a base
                // that once held more.
                let (lo, hi) = (prev.flat.pages.min(pages) + 1, pages + 1);
                let new_pages: u64 = changes
                    .extents
                    .iter()
                    .map(|e| {
                        let end = (e.first as u64 + e.count as u64).min(hi);
                        end.saturating_sub((e.first as u64).max(lo))
                    })
                    .sum();
                if new_pages != hi - lo {
                    return Err(Error::invalid(format!(
                        "pages {lo}..{hi} are neither in the previous version nor read"
                    )));
                }
                let version = &prev.version;
                let empty = PageMap {
                    page_size: self.page,
                    pages: 0,
                    base: None,
                    runs: Vec::new(),
                    extents: Vec::new(),
                };
                let lower = version.delta.as_ref().unwrap_or(&empty);
                let delta = lower.lay_over(&changes, pages, Some(version.base_id));
                let flat = PageMap::overlay(&version.base, &delta)?;
                flat.check_base()?;
                let small =
                    delta.covered() * DELTA_SHARE <= pages && delta.extents.len() <= DELTA_EXTENTS;
                if small { delta } else { flat }
            }
        };
        let bytes = map.encode();
        if bytes.len() > MAP_BYTES_MAX {
            return Err(Error::invalid(format!(
                "a page map of {} extents is too large; the file is read whole",
                map.extents.len()
            )));
        }
        let id = ChunkId::hash(shared.key.as_ref(), &bytes);
        shared.store_node(id, bytes)?;
        Ok(Content::Pages(id))
    }
}

/// Stores one run of pages (unless the repository has it); returns its id.
fn store_run(shared: &Shared, run: &[u8]) -> Result<ChunkId> {
    let id = ChunkId::hash(shared.key.as_ref(), run);
    if shared.claim(&id)? {
        shared.store(BlobKind::Data, &[(id, run.len())], run)?;
    }
    Ok(id)
}

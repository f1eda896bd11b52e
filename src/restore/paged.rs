//! Reading back a file stored as a page map (see [`crate::pagemap`]): every run it names is
//! checked against its id when it is read, and its pages go where the map places them.

use crate::blobs::BlobReader;
use crate::error::{Error, Result};
use crate::id::ChunkId;
use crate::manifest::Entry;
use crate::pagemap::{PageMap, Version};
use crate::storage::direct::{ALIGN, AlignedBuf};
use rayon::prelude::*;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

/// The page map of `entry` (stored as `map`): its base with its delta laid over, checked to
/// hold exactly the size the manifest gives before anything is allocated for it.
pub fn load(blobs: &BlobReader, entry: &Entry, map: &ChunkId) -> Result<PageMap> {
    let fetch = |id: &ChunkId| blobs.read(id);
    let version = Version::load(&fetch, map)?;
    let flat = version.flat()?;
    flat.check_base()?;
    let holds = version.bytes();
    if holds != Some(entry.size) || flat.page_size != entry.page_size {
        return Err(Error::corrupt(format!(
            "{}: the manifest gives its size as {} bytes of {}-byte pages, its page map holds {} \
             pages of {}; not restored",
            entry.path_lossy(),
            entry.size,
            entry.page_size,
            flat.pages,
            flat.page_size
        )));
    }
    Ok(flat)
}

fn short_run(run: &ChunkId, has: usize, need: u64) -> Error {
    Error::corrupt(format!(
        "run {run} holds {has} bytes, its page map places pages up to byte {need}"
    ))
}

/// Bytes of the file assembled per window of [`write_windows`].
const WINDOW: u64 = 4 << 20;
/// Runs kept decoded per thread while windows are assembled.
const WINDOW_RUNS: usize = 8;

thread_local! {
    static WINDOW_BUF: std::cell::RefCell<AlignedBuf> = std::cell::RefCell::new(AlignedBuf::default());
    static WINDOW_CACHE: std::cell::RefCell<VecDeque<(ChunkId, Vec<u8>)>> = const { std::cell::RefCell::new(VecDeque::new()) };
}

/// Where [`write_windows`] hands a window: (file offset, blocks, length).
pub type WriteWindow<'a> = dyn Fn(u64, &[u8], usize) -> Result<()> + Sync + 'a;

/// Writes the file in windows of [`WINDOW`] bytes, in parallel: each window is assembled from
/// the runs its pages are in (a few decoded runs kept per thread: runs of one version hold
/// pages in file order, so each is decoded about once) and handed to `write` whole, unless it
/// is all zeros (a hole): `write(offset, blocks, len)` gets the window's `len` bytes at a
/// 4096-aligned address, zero-padded to whole blocks (see [`ALIGN`]), ready for a direct write.
/// Returns the bytes of the file.
pub fn write_windows(
    blobs: &BlobReader,
    map: &PageMap,
    write: &WriteWindow,
    progress: Option<&(dyn Fn(u64) + Send + Sync)>,
) -> Result<u64> {
    let size = map.pages * map.page_size as u64;
    let ps = map.page_size as u64;
    let window = WINDOW.max(ps) / ps * ps;
    let windows = size.div_ceil(window);
    (0..windows).into_par_iter().try_for_each(|w| {
        let start = w * window;
        let end = (start + window).min(size);
        WINDOW_BUF.with(|buf| {
            let mut buf = buf.borrow_mut();
            let len = (end - start) as usize;
            let padded = len.next_multiple_of(ALIGN);
            buf.reserve(padded);
            let buf = &mut buf.bytes_mut()[..padded];
            buf[len..].fill(0);
            let first = (start / ps + 1) as u32;
            let i = map.extents.partition_point(|e| e.first + e.count <= first);
            for e in &map.extents[i..] {
                let e_start = (e.first as u64 - 1) * ps;
                if e_start >= end {
                    break;
                }
                let from = e_start.max(start);
                let to = (e_start + e.count as u64 * ps).min(end);
                let skip = e.slot as u64 * ps + (from - e_start);
                let run = map.runs[e.run as usize];
                with_cached_run(blobs, &run, skip + (to - from), |bytes| {
                    buf[(from - start) as usize..(to - start) as usize]
                        .copy_from_slice(&bytes[skip as usize..(skip + to - from) as usize]);
                    Ok(())
                })?;
            }
            if buf.iter().any(|b| *b != 0) {
                write(start, buf, len)?;
            }
            if let Some(p) = progress {
                p(end - start);
            }
            Ok::<(), Error>(())
        })
    })?;
    Ok(size)
}

/// Calls `f` with the bytes of `run` (at least `need` of them), from this thread's few decoded
/// runs or read and checked now.
fn with_cached_run(
    blobs: &BlobReader,
    run: &ChunkId,
    need: u64,
    f: impl FnOnce(&[u8]) -> Result<()>,
) -> Result<()> {
    WINDOW_CACHE.with(|cache| {
        let mut cache = cache.borrow_mut();
        if let Some((_, bytes)) = cache.iter().find(|(id, _)| id == run) {
            if (bytes.len() as u64) < need {
                return Err(short_run(run, bytes.len(), need));
            }
            return f(bytes);
        }
        let mut slot = match cache.len() >= WINDOW_RUNS {
            true => cache.pop_front().map(|(_, b)| b).unwrap_or_default(),
            false => Vec::new(),
        };
        blobs.read_with(run, |bytes| {
            slot.clear();
            slot.extend_from_slice(bytes);
            Ok(())
        })?;
        cache.push_back((*run, slot));
        let bytes = &cache.back().expect("just pushed").1;
        if (bytes.len() as u64) < need {
            return Err(short_run(run, bytes.len(), need));
        }
        f(bytes)
    })
}

/// Runs kept decoded per reader.
const RUNS_KEPT: usize = 8;

/// Reads any range of a paged file, keeping the last few runs it read.
pub struct PagedReader {
    map: PageMap,
    size: u64,
    runs: Mutex<VecDeque<(ChunkId, Arc<Vec<u8>>)>>,
}

impl PagedReader {
    pub fn new(map: PageMap) -> PagedReader {
        let size = map.pages * map.page_size as u64;
        PagedReader {
            map,
            size,
            runs: Mutex::new(VecDeque::new()),
        }
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    fn run(&self, blobs: &BlobReader, run: &ChunkId, need: u64) -> Result<Arc<Vec<u8>>> {
        let cached = self
            .runs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|(id, _)| id == run)
            .map(|(_, b)| Arc::clone(b));
        let bytes = match cached {
            Some(b) => b,
            None => {
                let b = Arc::new(blobs.read(run)?);
                let mut runs = self.runs.lock().unwrap_or_else(|p| p.into_inner());
                if runs.len() >= RUNS_KEPT {
                    runs.pop_front();
                }
                runs.push_back((*run, Arc::clone(&b)));
                b
            }
        };
        if (bytes.len() as u64) < need {
            return Err(short_run(run, bytes.len(), need));
        }
        Ok(bytes)
    }

    /// Up to `len` bytes at `offset` (fewer at the end of the file).
    pub fn read_at(&self, blobs: &BlobReader, offset: u64, len: usize) -> Result<Vec<u8>> {
        let end = offset.saturating_add(len as u64).min(self.size);
        let mut out = Vec::with_capacity(end.saturating_sub(offset) as usize);
        let ps = self.map.page_size as u64;
        let mut pos = offset;
        while pos < end {
            let page = (pos / ps + 1) as u32;
            let e = self
                .map
                .extent_of(page)
                .ok_or_else(|| Error::corrupt(format!("page {page} is not in its page map")))?;
            let start = (e.first as u64 - 1) * ps;
            let stop = (start + e.count as u64 * ps).min(end);
            let skip = e.slot as u64 * ps;
            let run = self.map.runs[e.run as usize];
            let bytes = self.run(blobs, &run, skip + e.count as u64 * ps)?;
            let from = (skip + pos - start) as usize;
            let to = (skip + stop - start) as usize;
            out.extend_from_slice(&bytes[from..to]);
            pos = stop;
        }
        Ok(out)
    }

    /// Streams the whole file to `out` in order.
    pub fn write_all(
        &self,
        blobs: &BlobReader,
        out: &mut dyn FnMut(&[u8]) -> Result<()>,
    ) -> Result<u64> {
        let mut pos = 0;
        while pos < self.size {
            let data = self.read_at(blobs, pos, 1 << 20)?;
            out(&data)?;
            pos += data.len() as u64;
        }
        Ok(pos)
    }
}

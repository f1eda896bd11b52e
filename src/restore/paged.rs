//! Reading back a file stored as a page map (see [`crate::pagemap`]): every run it names is
//! read once and checked against its id, and its pages go where the map places them.

use crate::blobs::BlobReader;
use crate::error::{Error, Result};
use crate::id::ChunkId;
use crate::manifest::Entry;
use crate::pagemap::{PageMap, Version};
use rayon::prelude::*;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

/// Runs written per parallel round (bounded memory: at most this many runs of up to 1 MiB are
/// read ahead of the writes).
const ROUND_RUNS: usize = 16;

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

/// A run's verified bytes, and the bytes `need` of it that its extents name: damage if it
/// holds fewer.
fn read_run(blobs: &BlobReader, run: &ChunkId, need: u64) -> Result<Vec<u8>> {
    let bytes = blobs.read(run)?;
    if (bytes.len() as u64) < need {
        return Err(Error::corrupt(format!(
            "run {run} holds {} bytes, its page map places pages up to byte {need}",
            bytes.len()
        )));
    }
    Ok(bytes)
}

/// Where a run's bytes go: (file offset, offset in the run, length).
type Piece = (u64, u64, u64);

/// The runs of `map` in the order their first page comes, each with its pieces (file offset,
/// offset in the run, length).
fn by_run(map: &PageMap) -> Vec<(ChunkId, Vec<Piece>)> {
    let mut order: Vec<(ChunkId, Vec<Piece>)> = Vec::new();
    let mut at: HashMap<ChunkId, usize> = HashMap::new();
    for (off, run, skip, len) in map.pieces() {
        let i = *at.entry(run).or_insert_with(|| {
            order.push((run, Vec::new()));
            order.len() - 1
        });
        order[i].1.push((off, skip, len));
    }
    order
}

/// Writes the file's pages into `write` (offset, bytes), reading runs in parallel, each once.
/// Returns the bytes written.
pub fn write_at(
    blobs: &BlobReader,
    map: &PageMap,
    write: &(dyn Fn(u64, &[u8]) -> Result<()> + Sync),
    progress: Option<&(dyn Fn(u64) + Send + Sync)>,
) -> Result<u64> {
    let runs = by_run(map);
    let mut total = 0u64;
    for round in runs.chunks(ROUND_RUNS) {
        let written: Vec<u64> = round
            .par_iter()
            .map(|(run, pieces)| {
                let need = pieces.iter().map(|p| p.1 + p.2).max().unwrap_or(0);
                let bytes = read_run(blobs, run, need)?;
                let mut n = 0;
                for &(off, skip, len) in pieces {
                    write(off, &bytes[skip as usize..(skip + len) as usize])?;
                    n += len;
                }
                if let Some(p) = progress {
                    p(n);
                }
                Ok(n)
            })
            .collect::<Result<_>>()?;
        total += written.iter().sum::<u64>();
    }
    Ok(total)
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
                let b = Arc::new(read_run(blobs, run, need)?);
                let mut runs = self.runs.lock().unwrap_or_else(|p| p.into_inner());
                if runs.len() >= RUNS_KEPT {
                    runs.pop_front();
                }
                runs.push_back((*run, Arc::clone(&b)));
                b
            }
        };
        if (bytes.len() as u64) < need {
            return Err(Error::corrupt(format!(
                "run {run} holds {} bytes, its page map places pages up to byte {need}",
                bytes.len()
            )));
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
            let i = self.map.extents.partition_point(|e| e.first <= page);
            let e = i
                .checked_sub(1)
                .and_then(|i| self.map.extents.get(i))
                .filter(|e| page < e.first + e.count)
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

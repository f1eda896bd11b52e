//! The chunk digests a backup keeps for large files (see [`crate::pagesums`]): the previous
//! version's, to recognise unchanged chunks without BLAKE3, and this version's, recorded after
//! the commit.

use super::previous::{Known, known_at};
use crate::error::Result;
use crate::id::ChunkId;
use crate::index::FileStamp;
use crate::manifest::Content;
use crate::pagesums::{MIN_FILE_SIZE, MIN_PAGED_SIZE, PageSums};
use crate::repo::Repo;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicU64, Ordering};

/// At most this many page digests are kept per file (128 MiB: a 32 GiB database of 4 KiB
/// pages); a larger file's pages are all hashed with BLAKE3 on every backup. An 8 GiB database
/// read whole (its log reset) hashes its pages with XXH3 at several GB/s instead of BLAKE3 at
/// about 2 GB/s per core, for a 32 MiB record.
const SUM_PAGES_MAX: u64 = 1 << 23;
/// Page digests a backup holds at once for its commit (128 MiB), over all its files.
pub(super) const SUM_BUDGET: u64 = 1 << 23;

/// The chunk digests of a file being read: the previous version's, by chunk number, and this
/// version's as its chunks are read (see [`PageSums`]).
pub(super) struct SumState {
    seed: u64,
    pub(super) prev: Vec<u128>,
    new: Vec<u128>,
    /// Digests reserved from the backup's budget ([`SUM_BUDGET`]); beyond them the file gets no
    /// record.
    pub(super) reserved: u64,
}

/// What the page readers need of a [`SumState`].
#[derive(Clone, Copy)]
pub(super) struct SumCtx<'a> {
    seed: u64,
    pub(super) prev: &'a [u128],
}

impl SumCtx<'_> {
    pub(super) fn digest(&self, page: &[u8]) -> u128 {
        PageSums::digest(self.seed, page)
    }

    /// The previous version's id of the page at `off`, if the previous version had a page of
    /// the same length there with the same digest.
    pub(super) fn unchanged(
        &self,
        known: &[Known],
        page: usize,
        off: u64,
        len: usize,
        digest: u128,
    ) -> Option<ChunkId> {
        let n = usize::try_from(off / page as u64).ok()?;
        if self.prev.get(n) != Some(&digest) {
            return None;
        }
        known_at(known, off)
            .filter(|k| k.2 == len as u64)
            .map(|k| k.1)
    }
}

impl SumState {
    /// What the page readers need of it.
    pub(super) fn ctx(&self) -> SumCtx<'_> {
        SumCtx {
            seed: self.seed,
            prev: &self.prev,
        }
    }

    pub(super) fn digest(&self, page: &[u8]) -> u128 {
        PageSums::digest(self.seed, page)
    }

    /// Sets this version's digests to `new`, every chunk's in order (made other than by
    /// reading), or gives the record up: `None`, or more digests than were reserved.
    pub(super) fn record(&mut self, new: Option<Vec<u128>>) {
        match new {
            Some(v) if v.len() as u64 <= self.reserved => self.new = v,
            _ => {
                self.new.clear();
                self.new.shrink_to_fit();
            }
        }
    }

    /// Splits into what the readers share and where the digests of read chunks go (both `None`
    /// for a file that keeps no digests).
    pub(super) fn split_opt(
        state: Option<&mut SumState>,
    ) -> (Option<SumCtx<'_>>, Option<SumSink<'_>>) {
        match state {
            Some(s) => (
                Some(SumCtx {
                    seed: s.seed,
                    prev: &s.prev,
                }),
                Some(SumSink {
                    new: Some(&mut s.new),
                    reserved: s.reserved,
                }),
            ),
            None => (None, None),
        }
    }
}

/// Collects the digests of a file's pages in order, up to the reserved number.
pub(super) struct SumSink<'a> {
    new: Option<&'a mut Vec<u128>>,
    reserved: u64,
}

impl SumSink<'_> {
    pub(super) fn extend(&mut self, digests: &[u128]) {
        if let Some(new) = self.new.as_mut() {
            if (new.len() + digests.len()) as u64 > self.reserved {
                // The file grew past its reservation while it was read: no record for it.
                new.clear();
                new.shrink_to_fit();
                self.new = None;
            } else {
                new.extend_from_slice(digests);
            }
        }
    }
}

/// The chunk digests to keep while a file of `len` bytes is read (cut at pages of `page` bytes,
/// or by content when `page` is 0), with the previous version's if they describe the stamped
/// content: `None` for a small file, one too large for them, or when the backup's budget is
/// spent.
pub(super) fn sum_state(
    repo: &Repo,
    budget: &AtomicU64,
    path: &std::path::Path,
    page: u32,
    len: u64,
    previous: Option<&FileStamp>,
) -> Result<Option<SumState>> {
    // Small files are cheap to hash: a record each would only fill the directory.
    let min = match page {
        0 => MIN_FILE_SIZE,
        _ => MIN_PAGED_SIZE,
    };
    if len < min {
        return Ok(None);
    }
    // Pages, or content-defined chunks (at least half the average size but for a few).
    let unit = match page {
        0 => (repo.chunker().params().avg as u64 / 2).max(1),
        p => p as u64,
    };
    // Room for the file to grow a little while it is read.
    let want = (len / unit + 1).saturating_add(SUM_PAGES_MAX / 64);
    if len / unit > SUM_PAGES_MAX {
        return Ok(None);
    }
    let reserved = budget
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
            left.checked_sub(want)
        })
        .is_ok();
    if !reserved {
        return Ok(None);
    }
    let recorded = match previous {
        Some(p) if p.page_size == page => {
            let key = repo.file_key(path.as_os_str().as_bytes());
            crate::pagesums::load(repo, &key)
                .filter(|r| r.content == p.content && r.page_size == page)
        }
        _ => None,
    };
    let (seed, prev) = match recorded {
        Some(r) => (r.seed, r.sums),
        None => {
            let mut seed = [0u8; 8];
            crate::sys::getrandom(&mut seed);
            (u64::from_le_bytes(seed), Vec::new())
        }
    };
    Ok(Some(SumState {
        seed,
        prev,
        new: Vec::with_capacity((len / unit) as usize),
        reserved: want,
    }))
}

/// The [`PageSums`] record of a file just read (sealed in an encrypted repository), if its
/// digests cover every chunk. The digests stay held (within the backup's budget) until the commit.
pub(super) fn sum_record(
    repo: &Repo,
    budget: &AtomicU64,
    content: &Content,
    size: u64,
    page_size: u32,
    st: SumState,
) -> Result<Option<Vec<u8>>> {
    let give_back = |n: u64| budget.fetch_add(n, Ordering::Relaxed);
    let complete = match page_size {
        // One digest per chunk of the content (checked as they were made, see `read_cdc`).
        0 => !st.new.is_empty() || size == 0,
        p => st.new.len() as u64 == size.div_ceil(p as u64),
    };
    if !complete {
        give_back(st.reserved);
        return Ok(None);
    }
    give_back(st.reserved - st.new.len() as u64);
    let record = PageSums {
        content: content.clone(),
        page_size,
        seed: st.seed,
        sums: st.new,
    };
    record.to_file_bytes(repo.keys())
}

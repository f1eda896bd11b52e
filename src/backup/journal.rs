//! A followed database's new image from its capture journal (see [`crate::follow`]): when the
//! log no longer holds the place the previous image ended at (a checkpoint reset it), the
//! journal still holds every transaction since, up to the place the new image ends at. The new
//! image is the previous one with their pages put in; the database itself is not read.

use super::digests::SumState;
use super::log::place_changes;
use super::mapped::MapWriter;
use super::writer::Shared;
use crate::error::Result;
use crate::follow::journal::{self, Changes, PageAt};
use crate::source::wal::LogPos;
use std::path::Path;
use std::time::{Duration, Instant};

/// How long a snapshot waits for a running follower to copy the transactions up to the place
/// its image ends at.
const CATCH_UP: Duration = Duration::from_secs(3);

/// Builds the image of `pages` pages that ends at `to` from the previous page map (which ended
/// at `from`) and the journal of the database at `path`; `None` when there is no journal, or it
/// does not run from `from` to `to` (the caller then reads the database).
#[allow(clippy::too_many_arguments)]
pub(super) fn read_journal_changes(
    shared: &Shared,
    path: &Path,
    page: u32,
    writer: &mut MapWriter<'_>,
    sums: Option<&mut SumState>,
    from: LogPos,
    to: LogPos,
    pages: u64,
) -> Result<Option<(u64, u64)>> {
    let dir = crate::follow::journal_dir(shared.repo, path);
    if writer.prev.is_none() || !dir.is_dir() {
        return Ok(None);
    }
    let Some(changes) = wait_for(&dir, &from, &to)? else {
        return Ok(None);
    };
    if changes.db_pages as u64 != pages {
        return Ok(None);
    }
    let changed: Vec<u32> = changes.pages.keys().copied().collect();
    let at: Vec<PageAt> = changes.pages.values().copied().collect();
    let Some(readers) = changes.readers(page)? else {
        return Ok(None);
    };
    let page_len = page as usize;
    let fill = |first: usize, out: &mut [u8]| -> Result<()> {
        let n = out.len() / page_len;
        let wanted = at[first..first + n].iter().copied().enumerate();
        changes.images(&readers, wanted, |k, src| {
            out[k * page_len..(k + 1) * page_len].copy_from_slice(src);
            Ok(())
        })
    };
    place_changes(shared, writer, sums, page, pages, &changed, &fill).map(Some)
}

/// The journal's changes from `from` to `to`, waiting a little for a running follower (one
/// whose status is fresh) that has not copied up to `to` yet.
fn wait_for(dir: &Path, from: &LogPos, to: &LogPos) -> Result<Option<Changes>> {
    let deadline = Instant::now() + CATCH_UP;
    loop {
        if let Some(c) = journal::changes(dir, from, to)? {
            return Ok(Some(c));
        }
        let seen = caught_up_ms(dir);
        let fresh = seen.is_some_and(|ms| chrono::Utc::now().timestamp_millis() - ms < 5_000);
        if !fresh || Instant::now() >= deadline {
            return Ok(None);
        }
        // Until the follower finishes another round.
        while caught_up_ms(dir) == seen && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// When the follower last read the log to its end.
fn caught_up_ms(dir: &Path) -> Option<i64> {
    crate::follow::status(dir).map(|s| s.caught_up_ms)
}

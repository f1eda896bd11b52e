//! Removing snapshots and reclaiming the space nothing references any more.
//!
//! `gc` runs under the repository lock, which every writer (backup, forget, gc) holds for its
//! whole run, so no backup can deduplicate against a blob while gc decides to drop it.
//!
//! Removing a snapshot takes away its references in the same index transaction that drops it
//! (see [`crate::refs`]), so gc never walks a snapshot. gc is two steps:
//! 1. [`plan`] decides, per pack, from its [`crate::index::PackUse`] row: packs with no live
//!    blob are deleted; packs whose unused bytes exceed `max_unused` times their live bytes are
//!    rewritten with only their live blobs (so afterwards packs hold at most live x
//!    (1 + max_unused) bytes); packs that stay but have indexed blobs without references have
//!    those entries dropped; pack files the index does not know (left by an interrupted backup
//!    or gc) are deleted. The [`GcPlan`] names each of them and why; `gc --dry-run` prints it
//!    ([`forecast`]).
//! 2. [`execute`] reads only the trailers of the packs the plan names, and judges each of their
//!    blobs by its own reference count. Rewritten packs are written and fsynced; then one index
//!    transaction points moved blobs at their new packs, drops every blob without references
//!    (so nothing can deduplicate against a blob whose children are gone) and drops the old
//!    packs; only after it commits are old pack files deleted. A crash at any point leaves
//!    every snapshot restorable; the next gc finishes.
//! 3. When the index file is more than twice what its tables use (redb never shrinks it), it is
//!    copied into a compact one that replaces it (`compact`).

mod compact;
mod execute;
mod file_cache;
mod plan;
mod report;

pub use execute::{bytes_to_rewrite, execute, execute_with};
pub use plan::{Fate, GcPlan, PlannedPack, UnknownPack, plan};
pub use report::{GcReport, forecast};

use crate::error::Result;
use crate::id::SnapshotId;
use crate::index::SNAPSHOTS;
use crate::repo::Repo;

/// Removes snapshots: their manifest files first, then, in one transaction, their index entries
/// and their references (after counting those of snapshots added since the last count). A
/// crash in between leaves the snapshot listed, and the next writer restores its file from the
/// index: it is never half-removed.
pub fn remove_snapshots(repo: &Repo, ids: &[SnapshotId]) -> Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    for id in ids {
        let name = crate::manifest::object_name(id);
        if repo.backend.exists(&name)? {
            repo.backend.delete(&name)?;
        }
    }
    repo.ensure_current()?;
    let txn = repo.index.write()?;
    {
        let mut removed = Vec::new();
        {
            let mut snaps = txn.open_table(SNAPSHOTS)?;
            for id in ids {
                if let Some(bytes) = snaps.remove(id.as_bytes())? {
                    removed.push((*id, bytes.value().to_vec()));
                }
            }
        }
        crate::refs::settle(repo.backend.as_ref(), repo.keys(), &txn, &removed)?;
    }
    txn.commit()?;
    Ok(())
}

#[derive(Clone, Debug)]
pub struct GcOptions {
    pub dry_run: bool,
    /// Rewrite packs whose unused bytes exceed this fraction of their live bytes (0.0 to 1.0).
    pub max_unused: f64,
}

impl Default for GcOptions {
    fn default() -> Self {
        GcOptions {
            dry_run: false,
            max_unused: 0.1,
        }
    }
}

/// Plans a gc and carries the plan out, or with `dry_run` reports what it would do.
pub fn gc(repo: &Repo, opts: &GcOptions) -> Result<GcReport> {
    let plan = plan(repo, opts.max_unused)?;
    if opts.dry_run {
        forecast(repo, plan)
    } else {
        execute(repo, plan)
    }
}

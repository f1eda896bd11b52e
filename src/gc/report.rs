//! What a gc did, or in a dry run what it would do.

use super::file_cache::split_file_keys;
use super::plan::{Fate, GcPlan};
use crate::error::Result;
use crate::index::{IndexReader, REFS};
use crate::repo::Repo;

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct GcReport {
    pub dry_run: bool,
    /// Snapshots added since the last count whose references gc counted first.
    pub counted_snapshots: u64,
    pub snapshots: u64,
    pub live_blobs: u64,
    pub dead_blobs: u64,
    pub packs_before: u64,
    pub packs_deleted: u64,
    pub packs_rewritten: u64,
    pub packs_written: u64,
    pub unknown_pack_files: u64,
    pub bytes_before: u64,
    pub bytes_after: u64,
    pub bytes_reclaimed: u64,
    /// After gc: bytes of compressed chunk data in packs, and the part of it that is live.
    pub frame_bytes_after: u64,
    pub live_bytes_after: u64,
    /// File-cache entries dropped because what they name is gone from the index (no snapshot
    /// holds that version of the file any more), and chunk-digest records removed with them
    /// (in a dry run: that would be).
    pub file_entries_dropped: u64,
    pub page_sums_removed: u64,
    /// Readers (restore, verify...) that were running when gc was about to delete pack files;
    /// while there are any, the pack files gc no longer needs are kept (and counted here) for
    /// the next gc to delete.
    pub readers: u64,
    pub packs_deferred: u64,
    pub bytes_deferred: u64,
    /// The index file's size before and after gc copied it into a compact one (when it was
    /// well over what it holds).
    pub index_compacted: Option<(u64, u64)>,
    /// In a dry run, the plan itself: every pack deleted, rewritten or trimmed, and why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plan: Option<GcPlan>,
}

impl GcReport {
    /// The figures a plan fixes before anything is done.
    pub(super) fn planned(plan: &GcPlan) -> GcReport {
        GcReport {
            counted_snapshots: plan.counted_snapshots,
            snapshots: plan.snapshots,
            live_blobs: plan.live_blobs,
            dead_blobs: plan.dead_blobs,
            packs_before: plan.packs_before,
            packs_deleted: plan.with_fate(Fate::Delete).count() as u64,
            packs_rewritten: plan.with_fate(Fate::Rewrite).count() as u64,
            unknown_pack_files: plan.unknown_packs.len() as u64,
            bytes_before: plan.bytes_before,
            ..GcReport::default()
        }
    }
}

/// What carrying out `plan` would report, changing nothing: sizes after gc from the plan, and
/// the file-cache entries and chunk-digest records gc would drop. The plan goes in the report.
pub fn forecast(repo: &Repo, mut plan: GcPlan) -> Result<GcReport> {
    // Who would keep the deleted files for the next gc, were it run now.
    plan.readers = crate::readers::live(repo.backend.as_ref())?.len() as u64;
    let mut report = GcReport::planned(&plan);
    report.dry_run = true;
    report.frame_bytes_after = plan.kept_frame_bytes + plan.rewritten_live_bytes;
    report.live_bytes_after = plan.kept_live_bytes + plan.rewritten_live_bytes;
    report.bytes_after = report.bytes_before - plan.bytes_removed + plan.rewritten_live_bytes;
    report.bytes_reclaimed = report.bytes_before - report.bytes_after;
    // What gc would drop: stamps whose root blob is unindexed or unreferenced.
    let txn = repo.index.read()?;
    let index = IndexReader::new(&txn)?;
    if let Some(files) = crate::index::open_files(&txn)? {
        let refs = txn.open_table(REFS)?;
        let (stale, kept) = split_file_keys(&files, |id| {
            Ok(index.contains(id)? && refs.get(id.as_bytes())?.is_some())
        })?;
        report.file_entries_dropped = stale.len() as u64;
        report.page_sums_removed =
            crate::pagesums::sweep(repo, kept.iter().map(Vec::as_slice), false);
    }
    report.plan = Some(plan);
    Ok(report)
}

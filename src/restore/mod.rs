//! Restore: reassemble files from verified chunks, stage each beside its destination, fsync,
//! rename into place. A reader of the destination sees the old file or the complete new one.
//!
//! A restore selects the snapshot's entries and checks their paths (`selection`), stages the
//! directories that exist already (`staging`), reads each file's chunks in groups (`groups`) and
//! writes them beside their destinations (`files`), recording every change it makes to the
//! target ([`changes`]). Files that other processes hold open are found first ([`live`]): an
//! open database is written in place through SQLite, any other open file stops the restore
//! before it changes anything. A restore guarded by a restore point rolls back what it changed
//! when it fails ([`rollback`]).

pub mod changes;
pub mod dump;
mod files;
mod groups;
pub mod instant;
pub mod live;
pub mod paged;
mod report;
pub mod rollback;
mod selection;
mod staging;
mod temporaries;

pub use report::{RestoreReport, RestoredDatabase};
pub use selection::{Replaced, check_entries, check_entry_path, replaced, select};

use crate::backup::BackupReport;
use crate::blobs::BlobReader;
use crate::error::{Error, IoContext, Result};
use crate::index::IndexReader;
use crate::manifest::{Entry, EntryKind, Manifest};
use crate::repo::Repo;
use changes::Changes;
use files::{Writes, panicked, restore_entries};
use groups::write_content;
use live::LivePlan;
use rollback::{Rollback, roll_back};
use staging::{left_out, plan_stages};
use std::ffi::OsStr;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

/// What to restore, where, and how.
pub struct RestoreOptions {
    pub target: PathBuf,
    /// Only entries equal to or below these snapshot paths.
    pub paths: Vec<String>,
    /// Leave out what exists below a restored directory but is not in the snapshot (by default
    /// it is kept).
    pub delete: bool,
    /// The check each restored database gets as soon as it is written, before it is put in
    /// place; its verdict is in the report ([`RestoredDatabase::check`]). Checked databases are
    /// written through the page cache, where the check finds them (otherwise large files go
    /// straight to the device).
    pub check: Option<SqliteCheck>,
    /// Replace files that other processes hold open as any other file, instead of refusing
    /// (see [`live`]); open databases are still written in place where SQLite can.
    pub force: bool,
    /// Called with the number of file bytes just written (for a progress bar), from any thread.
    pub progress: Option<Progress>,
}

/// A restore's progress callback: bytes of file content written since the last call.
pub type Progress = std::sync::Arc<dyn Fn(u64) + Send + Sync>;

impl RestoreOptions {
    /// Everything, into `target`, keeping files the snapshot does not have.
    pub fn new(target: PathBuf) -> Self {
        RestoreOptions {
            target,
            paths: vec![],
            delete: false,
            check: None,
            force: false,
            progress: None,
        }
    }
}

/// How restored databases are checked.
///
/// Every chunk a restore reads is checked against its hash, so a restored image holds exactly
/// the bytes that were saved; an image saved through SQLite is one committed state. What a
/// check can still find is a copy saved as plain bytes while it was written (or that SQLite could
/// not open), or damage the database already had when it was saved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SqliteCheck {
    /// `PRAGMA quick_check` of the images that were not read through SQLite (copied as plain
    /// bytes, or saved by a version that did not record how): the default.
    Copied,
    /// `PRAGMA quick_check` of every database: every page of every b-tree, without comparing
    /// indexes with their tables.
    Quick,
    /// `PRAGMA integrity_check` of every database: also every index against its table.
    Full,
}

impl SqliteCheck {
    /// Whether `entry` gets this check, and then whether it is the full one.
    pub fn of(self, entry: &crate::manifest::Entry) -> Option<bool> {
        match self {
            _ if entry.page_size == 0 => None,
            SqliteCheck::Copied if entry.through_sqlite => None,
            SqliteCheck::Copied | SqliteCheck::Quick => Some(false),
            SqliteCheck::Full => Some(true),
        }
    }
}

/// The files other processes hold open among those a restore with `opts` of `manifest` would
/// replace or remove (see [`live`]): an error naming them and their processes unless each is a
/// database SQLite can write into in place (or `opts.force`). Changes nothing; a restore looks
/// again as it starts.
pub fn open_files(manifest: &Manifest, opts: &RestoreOptions) -> Result<LivePlan> {
    let entries = select(manifest, &opts.paths)?;
    check_entries(&entries)?;
    match fs::canonicalize(&opts.target) {
        Ok(target) => survey(&target, &entries, opts),
        Err(_) => Ok(LivePlan::default()),
    }
}

/// [`live::survey`] of a restore of `entries` into `target` (resolved).
fn survey(target: &Path, entries: &[&Entry], opts: &RestoreOptions) -> Result<LivePlan> {
    let removed = match opts.delete {
        true => left_out(target, entries, &opts.paths),
        false => vec![],
    };
    live::survey(target, entries, &removed, opts.force)
}

/// A restore of at least this many bytes reads the index ahead (see [`Repo::prefetch_index`]),
/// and each pack it touches (see [`crate::storage::Backend::will_need`]).
const PREFETCH_FROM: u64 = 64 << 20;

/// Memory a restore may spend on the index in memory (see [`IndexReader::load_blobs`]).
const LOADED_INDEX_MAX: u64 = 32 << 20;

/// Whether to read the whole blob table into memory for a restore of `bytes`: it fits in
/// [`LOADED_INDEX_MAX`], and the restore is expected to look up at least a quarter as many
/// blobs as the table has. Reading the table costs about a fifth of a B-tree lookup per blob
/// (45-74 ms for the 314,000 blobs of W1 after five hourly backups). The expectation counts one
/// chunk per average chunk size of the repository's chunker; database files cut at their pages
/// have smaller chunks, so it errs low.
fn loading_pays(repo: &Repo, index: &IndexReader, bytes: u64) -> Result<bool> {
    let blobs = index.blob_count()?;
    if blobs.saturating_mul(crate::index::LOADED_BLOB_BYTES) > LOADED_INDEX_MAX {
        return Ok(false);
    }
    let expected = bytes / u64::from(repo.config.chunker.avg.max(1));
    Ok(expected.saturating_mul(4) >= blobs)
}

/// Restores the selected entries of `manifest` below `opts.target`.
///
/// A selected directory that already exists at its destination is restored into a staging
/// directory beside it and swapped in whole (`renameat2(RENAME_EXCHANGE)`, else two renames), so
/// an application never sees it half-restored; if any of its files fails, the existing
/// directory is left untouched. Files of the old directory that the snapshot does not have are
/// carried over (hard links, so they keep their inodes; fifos and sockets too) unless
/// `opts.delete`. Everything else is restored file by file, each renamed into place complete.
///
/// Before anything changes, the files it would replace are compared with those other processes
/// hold open ([`live`]): a database an application has open is written in place through
/// SQLite (in a directory swapped whole, too), any other open file fails the restore with an
/// error naming the processes, unless `opts.force`.
pub fn restore(repo: &Repo, manifest: &Manifest, opts: &RestoreOptions) -> Result<RestoreReport> {
    let changes = Changes::new();
    let report = restore_undoable(repo, manifest, opts, &changes);
    changes.keep();
    report
}

/// [`restore`], recording in `changes` what it changes in the target, so that the caller can
/// undo exactly that if the restore fails ([`Changes::undo`]) or keep it ([`Changes::keep`]).
///
/// Whatever happens, nothing of the restore's own is left in the target once `changes` is kept
/// or undone: no temporary files, no staging directories. A panic inside (a damaged index can
/// make redb panic) becomes an error.
pub fn restore_undoable(
    repo: &Repo,
    manifest: &Manifest,
    opts: &RestoreOptions,
    changes: &Changes,
) -> Result<RestoreReport> {
    catch_unwind(AssertUnwindSafe(|| {
        restore_recording(repo, manifest, opts, changes)
    }))
    .unwrap_or_else(|p| Err(panicked(p)))
}

fn restore_recording(
    repo: &Repo,
    manifest: &Manifest,
    opts: &RestoreOptions,
    changes: &Changes,
) -> Result<RestoreReport> {
    let entries = select(manifest, &opts.paths)?;
    check_entries(&entries)?;
    // Sizes are only a hint here (each is checked against its chunk list before it is used).
    let bytes = entries
        .iter()
        .fold(0u64, |sum, e| sum.saturating_add(e.size));
    let large = bytes >= PREFETCH_FROM;
    if large {
        repo.prefetch_index();
    }
    fs::create_dir_all(&opts.target).ctx("create", &opts.target)?;
    let target = fs::canonicalize(&opts.target).ctx("resolve", &opts.target)?;
    let live = survey(&target, &entries, opts)?;
    // The logs of an open database are its application's: the snapshot's are not put there.
    let entries: Vec<&Entry> = entries
        .into_iter()
        .filter(|e| !live.is_log_of_open_database(&target.join(OsStr::from_bytes(&e.path))))
        .collect();
    let txn = repo.index.read()?;
    let index = IndexReader::new(&txn)?;
    let load = large && loading_pays(repo, &index, bytes)?;
    let mut blobs = BlobReader::new(repo, &index)?;
    blobs.set_prefetch(large);
    std::thread::scope(|s| {
        if load {
            // Read while the restore starts: its first reads wait on the disk anyway, and its
            // lookups meanwhile go through the B-tree (with the same answers).
            s.spawn(|| load_index(&index));
        }
        restore_selected(&blobs, &target, &entries, opts, &live, changes)
    })
}

/// Reads the index's blob table into memory. A damaged part of the index fails only the files
/// whose chunks it holds, as it does when they are looked up one by one.
fn load_index(index: &IndexReader) {
    match catch_unwind(AssertUnwindSafe(|| index.load_blobs())) {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            tracing::warn!("reading the index into memory: {e}; looking chunks up one by one")
        }
        Err(p) => tracing::warn!(
            "reading the index into memory: {}; looking chunks up one by one",
            panicked(p)
        ),
    }
}

/// Restores `entries` into `target` (see [`restore`]): the directories that exist already are
/// staged and swapped whole, everything else is written in place.
fn restore_selected(
    blobs: &BlobReader,
    target: &Path,
    entries: &[&Entry],
    opts: &RestoreOptions,
    live: &LivePlan,
    changes: &Changes,
) -> Result<RestoreReport> {
    let stages = plan_stages(target, entries, &opts.paths, changes)?;
    let (staged, direct): (Vec<&Entry>, Vec<&Entry>) = entries
        .iter()
        .partition(|e| stages.iter().any(|st| st.holds(&e.path)));
    let how = Writes {
        check: opts.check,
        live,
        progress: opts.progress.as_deref(),
    };
    let mut report = restore_entries(blobs, target, &direct, how, Some(changes))?;
    report.notes.extend(live.notes());
    for stage in &stages {
        match stage.restore(blobs, &staged, opts.delete, how, changes) {
            Ok(r) => report.merge(r),
            Err(e) => report.errors.push(format!(
                "{}: {e}; the existing directory was left as it was",
                stage.dest.display()
            )),
        }
    }
    Ok(report)
}

/// A restore guarded by a restore point: its result, and how the target was put back when it
/// failed.
pub struct GuardedRestore {
    pub result: Result<RestoreReport>,
    /// Set when the restore failed and there was a restore point to roll back to.
    pub rollback: Option<Rollback>,
}

/// [`restore`] after restore point `point` was taken (see [`rollback::restore_point`]). A
/// restore that fails, with an error or with any file not restored, is rolled back: what it
/// changed in the target is undone, and only that, the files it replaced coming back from the
/// point. Otherwise, or without a point, its changes are kept.
pub fn restore_with_point(
    repo: &Repo,
    manifest: &Manifest,
    opts: &RestoreOptions,
    point: Option<&BackupReport>,
) -> GuardedRestore {
    let changes = Changes::new();
    let result = restore_undoable(repo, manifest, opts, &changes);
    let failed = match &result {
        Ok(r) => !r.errors.is_empty(),
        Err(_) => true,
    };
    let rollback = match point {
        Some(point) if failed => Some(roll_back(repo, &point.manifest, &opts.target, changes)),
        _ => {
            changes.keep();
            None
        }
    };
    GuardedRestore { result, rollback }
}

/// Writes the selected files' bytes to `out`, one after another.
pub fn restore_to_writer(
    repo: &Repo,
    manifest: &Manifest,
    paths: &[String],
    out: &mut dyn Write,
) -> Result<u64> {
    let entries = select(manifest, paths)?;
    let txn = repo.index.read()?;
    let index = IndexReader::new(&txn)?;
    let blobs = BlobReader::new(repo, &index)?;
    let mut total = 0;
    for e in entries.iter().filter(|e| e.kind == EntryKind::File) {
        total += write_content(&blobs, e, &mut |data| {
            out.write_all(data)
                .map_err(|e| Error::io("write to stdout", e))
        })?;
    }
    out.flush().map_err(|e| Error::io("write to stdout", e))?;
    Ok(total)
}

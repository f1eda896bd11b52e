//! The backup pipeline, top to bottom (`pipeline` below reads as these steps, each a call into
//! the submodule named here):
//!
//! 1. walk the sources into a sorted list of entries, and set the stores apart (`sources`);
//! 2. reuse the chunk list of every file whose stamp (size, mtime, ctime, inode) matches the file
//!    cache, without reading it (`cache`);
//! 3. read the other files through a bounded window, cut them into chunks, hash the chunks
//!    (BLAKE3, in parallel), skip chunks the repository already has, compress the new ones (zstd,
//!    in parallel) and append them to packs; build each file's chunk-list tree as it goes. Stores
//!    are captured as a whole after the other files; streams come last (`ingest`);
//! 4. wait until every pack is written and fsynced; gather what the reads gave (`collect`) and
//!    build the manifest (`record`);
//! 5. commit the index (blob locations, packs, the snapshot, file stamps) in one transaction
//!    (`crate::commit`);
//! 6. write the manifest file.
//!
//! A crash before step 5 leaves only unreferenced pack files; after it, the snapshot is complete
//! (step 6 is redone by the next writer if it was interrupted).
//!
//! Below `ingest`: `file` reads one file, cut by content (`cdc`) or at database pages (`pages`);
//! `previous` and `digests` tell which chunks the previous version already had, so they need no
//! BLAKE3; `writer` holds what the reading threads share and stores their chunks.

use crate::commit::commit;
use crate::error::{Error, Result};
use crate::hooks::Hooks;
use crate::id::SnapshotId;
use crate::index::{IndexReader, META_NEXT_PACK};
use crate::manifest::Manifest;
use crate::repo::Repo;
use crate::source::capture::CaptureOptions;
use crate::source::streams::StreamSource;
use std::path::PathBuf;
use std::time::Instant;

mod cache;
mod cdc;
mod collect;
mod digests;
mod file;
mod ingest;
mod journal;
mod log;
mod mapped;
mod pages;
mod pgbase;
mod previous;
mod record;
mod sources;
mod writer;

pub struct BackupOptions<'a> {
    pub sources: Vec<PathBuf>,
    pub name: Option<String>,
    pub tags: Vec<String>,
    pub kind: String,
    /// Patterns of paths not to back up (see [`crate::source::walk::Excludes`]).
    pub excludes: Vec<String>,
    /// Do not enter directories on another file system than their source (mount points).
    pub one_file_system: bool,
    /// Called with the number of bytes just processed (for a progress bar).
    pub progress: Option<&'a (dyn Fn(u64) + Sync)>,
    /// Called once with the number of bytes that will be read.
    pub on_plan: Option<&'a dyn Fn(u64)>,
    /// Copy SQLite databases as plain files instead of reading a consistent image through
    /// SQLite (and back up their -wal/-shm/-journal files too).
    pub raw_sqlite: bool,
    /// SQLite databases named as such (`--sqlite`): read through SQLite as one consistent
    /// image, whatever `raw_sqlite` says, or the backup fails.
    pub databases: Vec<NamedPath>,
    /// Named streams (command output, standard input, database dumps) stored as files of the
    /// snapshot.
    pub streams: Vec<StreamSource>,
    /// PostgreSQL base backups, each stored as a directory of the snapshot.
    pub pg_bases: Vec<crate::source::pgbase::PgBaseSource>,
    /// Retries of files and stores that change while they are read, and the stores to capture
    /// as one.
    pub capture: CaptureOptions,
    /// Commands run before and after the capture.
    pub hooks: Hooks,
}

/// A file and, optionally, the name it gets in the snapshot (by default its file name).
#[derive(Clone, Debug)]
pub struct NamedPath {
    pub path: PathBuf,
    pub name: Option<String>,
}

impl BackupOptions<'_> {
    /// A manual snapshot of `sources` with no name, tags, exclusions or progress reporting.
    pub fn new(sources: Vec<PathBuf>) -> Self {
        BackupOptions {
            sources,
            name: None,
            tags: vec![],
            kind: "manual".into(),
            excludes: vec![],
            one_file_system: false,
            progress: None,
            on_plan: None,
            raw_sqlite: false,
            databases: vec![],
            streams: vec![],
            pg_bases: vec![],
            capture: CaptureOptions::default(),
            hooks: Hooks::default(),
        }
    }
}

pub struct BackupReport {
    pub id: SnapshotId,
    pub manifest: Manifest,
    /// Things the user should know that did not fail the snapshot (skipped special files...).
    pub warnings: Vec<String>,
    /// Wall time of each phase in milliseconds, in order (for tuning).
    pub phases_ms: Vec<(&'static str, f64)>,
    /// The after hook failed (the snapshot itself is saved).
    pub after_hook_error: Option<String>,
}

impl BackupReport {
    /// True when some files could not be read.
    pub fn partial(&self) -> bool {
        !self.manifest.errors.is_empty()
    }
}

/// Wall time per phase.
struct Phases {
    last: Instant,
    done: Vec<(&'static str, f64)>,
}

impl Phases {
    fn new(start: Instant) -> Phases {
        Phases {
            last: start,
            done: Vec::new(),
        }
    }

    fn mark(&mut self, name: &'static str) {
        let now = Instant::now();
        self.done
            .push((name, (now - self.last).as_secs_f64() * 1000.0));
        self.last = now;
    }
}

/// Backs up `opts.sources` (and the databases and streams it names) into `repo` as one
/// snapshot. Runs the hooks around it: the before hook first (a failure stops the backup), the
/// after hook always, once the before hook has been started.
pub fn backup(repo: &Repo, opts: &BackupOptions) -> Result<BackupReport> {
    match opts.hooks.around(|| pipeline(repo, opts)) {
        (Ok(mut report), Err(e)) => {
            report.after_hook_error = Some(e.to_string());
            Ok(report)
        }
        (Err(e), Err(h)) => Err(Error::invalid(format!("{e} (and then: {h})"))),
        (result, Ok(())) => result,
    }
}

/// What a backup would do, without doing it (`backup --dry-run`): the walk and the file cache
/// only; nothing is read, run or written.
#[derive(Debug, Default)]
pub struct BackupPlan {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    /// Sum of the sizes of the files.
    pub bytes: u64,
    /// Files that changed since the last snapshot (or are new), which a backup would read.
    pub files_to_read: u64,
    pub bytes_to_read: u64,
    pub warnings: Vec<String>,
    pub errors: Vec<String>,
}

/// Plans a backup of `opts` (see [`BackupPlan`]); the streams (commands, standard input, dumps)
/// are not run.
pub fn plan(repo: &Repo, opts: &BackupOptions) -> Result<BackupPlan> {
    let (walk, problems) = sources::walk(repo, opts)?;
    let txn = repo.index.read()?;
    let reader = IndexReader::new(&txn)?;
    let (_, to_read) = cache::consult(repo, &txn, &reader, &walk)?;
    let mut plan = BackupPlan {
        warnings: problems.warnings,
        errors: problems.errors,
        ..Default::default()
    };
    for item in walk.items.iter().chain(&walk.grouped) {
        match item.kind {
            crate::manifest::EntryKind::File => {
                plan.files += 1;
                plan.bytes += item.meta.len();
            }
            crate::manifest::EntryKind::Dir => plan.dirs += 1,
            crate::manifest::EntryKind::Symlink => plan.symlinks += 1,
        }
    }
    plan.files_to_read = to_read.files.len() as u64;
    plan.bytes_to_read = to_read.bytes(&walk.items);
    for g in stale_store_files(&walk, &to_read) {
        plan.files_to_read += 1;
        plan.bytes_to_read += g.meta.len();
    }
    Ok(plan)
}

/// The stores' files the file cache does not know as they are now: those a backup reads.
fn stale_store_files<'w>(
    walk: &'w sources::Walk,
    to_read: &'w cache::ToRead,
) -> impl Iterator<Item = &'w crate::source::walk::WalkItem> {
    walk.grouped.iter().filter(|g| {
        let now = crate::source::capture::Seen::of(&g.meta);
        g.kind == crate::manifest::EntryKind::File
            && !to_read
                .known
                .iter()
                .any(|k| k.get(&g.abs).is_some_and(|(s, _)| *s == now))
    })
}

/// The backup between its hooks: the steps of the module documentation, in order.
fn pipeline(repo: &Repo, opts: &BackupOptions) -> Result<BackupReport> {
    let started = Instant::now();
    let start_ns = now_ns();
    if opts.sources.is_empty()
        && opts.streams.is_empty()
        && opts.databases.is_empty()
        && opts.pg_bases.is_empty()
    {
        return Err(Error::invalid("nothing to back up: give at least one PATH"));
    }

    // 1. Walk.
    let (walk, problems) = sources::walk(repo, opts)?;
    // 2. File cache.
    let txn = repo.index.read()?;
    let reader = IndexReader::new(&txn)?;
    let (contents, to_read) = cache::consult(repo, &txn, &reader, &walk)?;
    let mut phases = Phases::new(started);
    phases.mark("walk and file cache");
    if let Some(f) = opts.on_plan {
        let stores: u64 = stale_store_files(&walk, &to_read)
            .map(|g| g.meta.len())
            .sum();
        f(to_read.bytes(&walk.items) + stores);
    }
    // 3. Read, chunk, hash, dedup, compress, pack.
    let first_pack = crate::index::meta(&txn, META_NEXT_PACK)?.unwrap_or(0) as u32;
    // No read transaction may live through the index commits below: redb cannot reuse a page
    // freed after the oldest live reader began, and a large first backup's index file then
    // grows with the square of its size (10 GB for 8.8 million chunks, measured).
    drop(txn);
    let read = ingest::ingest(repo, opts, &walk, to_read, reader, first_pack, start_ns);
    // 4. Every pack is now durable (or we stop here, leaving only unreferenced packs). What the
    // reads gave goes into the manifest.
    let packs = read.packs?;
    let streamed = read.streams?;
    let bases = read.bases?;
    phases.mark("read, chunk, store");
    let collected = collect::collect(
        repo,
        &opts.capture,
        &walk,
        contents,
        read.files,
        read.stores,
        problems,
    )?;
    let manifest = record::manifest(
        opts,
        &walk,
        collected.listing,
        (streamed, bases),
        &read.written,
        started,
        start_ns,
    );
    let (id, framed) = manifest.encode(repo.keys())?;
    phases.mark("manifest");
    // 5. Commit the index.
    commit(
        repo,
        packs,
        read.written.next_pack,
        &id,
        &framed,
        &collected.stamps,
        wal_name(&manifest),
    )?;
    phases.mark("index commit");
    // 6. Write the manifest file.
    repo.backend
        .put(&crate::manifest::object_name(&id), &framed)?;
    phases.mark("manifest file");
    let mut warnings = collected.warnings;
    warnings.extend(
        manifest
            .errors
            .iter()
            .map(|e| format!("not backed up: {e}")),
    );
    Ok(BackupReport {
        id,
        manifest,
        warnings,
        phases_ms: phases.done,
        after_hook_error: None,
    })
}

/// The name an archived WAL file's snapshot is found by (`None` for every other snapshot).
pub(crate) fn wal_name(manifest: &crate::manifest::Manifest) -> Option<&str> {
    match manifest.kind == crate::snapshots::PG_WAL {
        true => manifest.name.as_deref(),
        false => None,
    }
}

pub(super) fn now_ns() -> i64 {
    chrono::Utc::now().timestamp_nanos_opt().unwrap_or(i64::MAX)
}

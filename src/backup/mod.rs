//! The backup pipeline, top to bottom:
//!
//! 1. walk the sources into a sorted list of entries;
//! 2. reuse the chunk list of every file whose stamp (size, mtime, ctime, inode) matches the file
//!    cache, without reading it;
//! 3. read the other files through a bounded window, cut them into chunks, hash the chunks
//!    (BLAKE3, in parallel), skip chunks the repository already has, compress the new ones (zstd,
//!    in parallel) and append them to packs; build each file's chunk-list tree as it goes;
//! 4. wait until every pack is written and fsynced;
//! 5. commit the index (blob locations, packs, the snapshot, file stamps) in one transaction;
//! 6. write the manifest file.
//!
//! A crash before step 5 leaves only unreferenced pack files; after it, the snapshot is complete
//! (step 6 is redone by the next writer if it was interrupted).

use crate::commit::{commit, insert_packs};
use crate::error::{Error, Result};
use crate::id::{ChunkId, SnapshotId};
use crate::index::{FileStamp, IndexReader, META_NEXT_PACK};
use crate::manifest::{
    Capture, Content, Entry, EntryKind, Manifest, SnapshotStats, Source, SourceKind,
};
use crate::packer::Packer;
use crate::repo::Repo;
use crate::source::capture::{
    CaptureOptions, GroupCapture, Hooks, Seen, capture_group, find_groups, run_hook,
};
use crate::source::sqlite::{check_sqlite_source, looks_paged, without_sqlite_siblings};
use crate::source::streams::StreamSource;
use crate::source::walk::{WalkItem, walk_sources_excluding};
use crate::sys::mtime_ns;
use cache::{Cached, Stored, cache_lookup};
use digests::SUM_BUDGET;
use file::{ReadFile, read_stably};
use ingest::{Got, ReadStream, StoreIo, read_stream_source};
use rayon::prelude::*;
use std::collections::{HashMap, HashSet};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;
use writer::Shared;

mod cache;
mod cdc;
mod digests;
mod file;
mod ingest;
mod pages;
mod previous;
mod writer;

pub struct BackupOptions<'a> {
    pub sources: Vec<PathBuf>,
    pub name: Option<String>,
    pub tags: Vec<String>,
    pub kind: String,
    /// Patterns of paths not to back up (see [`crate::source::walk::Excludes`]).
    pub excludes: Vec<String>,
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
            progress: None,
            on_plan: None,
            raw_sqlite: false,
            databases: vec![],
            streams: vec![],
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

/// Files at least this large are read one at a time, with parallel hashing inside the file.
const LARGE_FILE: u64 = 4 << 20;

/// Packs whose blob entries go into one intermediate index transaction. Few large transactions
/// keep the index file small: each transaction of scattered inserts copies most B-tree leaves, and
/// redb reuses the freed pages only later. Measured on W1's first backup: one transaction per
/// pack left a 570 MB index file, eight packs per transaction 79 MB.
const PACKS_PER_INDEX_TXN: usize = 8;

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

/// Runs the hooks around [`capture`]: the before hook first (a failure stops the backup), the
/// after hook always, once the before hook has been started.
pub fn backup(repo: &Repo, opts: &BackupOptions) -> Result<BackupReport> {
    let hooks = &opts.hooks;
    let hook = |which, cmd: &Option<String>| match cmd {
        Some(cmd) => run_hook(which, cmd, hooks.timeout),
        None => Ok(()),
    };
    let result = hook("before", &hooks.before).and_then(|()| capture(repo, opts));
    let after = hook("after", &hooks.after);
    match (result, after) {
        (Ok(mut report), Err(e)) => {
            report.after_hook_error = Some(e.to_string());
            Ok(report)
        }
        (Err(e), Err(h)) => Err(Error::invalid(format!("{e} (and then: {h})"))),
        (result, Ok(())) => result,
    }
}

fn capture(repo: &Repo, opts: &BackupOptions) -> Result<BackupReport> {
    let started = Instant::now();
    let start_ns = now_ns();
    if opts.sources.is_empty() && opts.streams.is_empty() && opts.databases.is_empty() {
        return Err(Error::invalid("nothing to back up: give at least one PATH"));
    }

    // 1. Walk.
    let mut databases = HashSet::new();
    let mut named: Vec<(PathBuf, Option<String>)> =
        opts.sources.iter().map(|p| (p.clone(), None)).collect();
    for db in &opts.databases {
        let abs = check_sqlite_source(&db.path)?;
        databases.insert(abs.clone());
        let name = db.name.clone().or_else(|| {
            db.path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
        });
        named.push((abs, name));
    }
    let excludes = crate::source::walk::Excludes::new(&opts.excludes);
    let walked = walk_sources_excluding(&named, &repo.root, &excludes)?;
    for (i, st) in opts.streams.iter().enumerate() {
        let clash = walked.sources.iter().any(|(n, _)| n == &st.name)
            || opts.streams[..i].iter().any(|o| o.name == st.name);
        crate::source::walk::check_source_name(&st.name)?;
        if clash {
            return Err(Error::invalid(format!(
                "two sources are named {:?}; give each its own NAME",
                st.name
            )));
        }
    }
    let mut warnings = walked.warnings;
    let mut errors = walked.errors;
    let items = if opts.raw_sqlite {
        walked.items
    } else {
        without_sqlite_siblings(walked.items)
    };
    // Stores are captured as a whole, after everything else; their databases only ever as
    // consistent images.
    let groups = find_groups(&items, &opts.capture.groups)?;
    let (grouped, items): (Vec<WalkItem>, Vec<WalkItem>) = items
        .into_iter()
        .partition(|i| groups.iter().any(|g| g.holds(&i.abs)));
    for item in &grouped {
        if item.kind == EntryKind::File && looks_paged(&item.abs) {
            databases.insert(item.abs.clone());
        }
    }
    // 2. File cache.
    let txn = repo.index.read()?;
    let reader = IndexReader::new(&txn)?;
    let mut to_read = Vec::new();
    let mut contents: Vec<Option<Stored>> = vec![None; items.len()];
    let mut previous: Vec<Option<FileStamp>> = vec![None; items.len()];
    for (i, item) in items.iter().enumerate() {
        if item.kind != EntryKind::File {
            continue;
        }
        match cache_lookup(repo, &txn, &reader, item)? {
            Cached::Hit(c) => contents[i] = Some(c),
            Cached::Miss(stamp) => {
                previous[i] = stamp;
                to_read.push(i);
            }
        }
    }
    let mut known: Vec<HashMap<PathBuf, (Seen, Got)>> =
        groups.iter().map(|_| HashMap::new()).collect();
    for item in grouped.iter().filter(|i| i.kind == EntryKind::File) {
        if let Cached::Hit(stored) = cache_lookup(repo, &txn, &reader, item)?
            && let Some(g) = groups.iter().position(|g| g.holds(&item.abs))
        {
            known[g].insert(
                item.abs.clone(),
                (Seen::of(&item.meta), Got::Cached(stored)),
            );
        }
    }
    let mut phases = Phases::new(started);
    phases.mark("walk and file cache");
    let planned: u64 = to_read.iter().map(|&i| items[i].meta.len()).sum();
    if let Some(f) = opts.on_plan {
        f(planned);
    }
    // 3. Read, chunk, hash, dedup, compress, pack.
    let first_pack = crate::index::meta(&txn, META_NEXT_PACK)?.unwrap_or(0) as u32;
    // No read transaction may live through the index commits below: redb cannot reuse a page
    // freed after the oldest live reader began, and a large first backup's index file then
    // grows with the square of its size (10 GB for 8.8 million chunks, measured).
    drop(txn);
    let (packer, writer_thread) = Packer::new(
        repo.backend.as_ref(),
        first_pack,
        repo.config.pack_target,
        repo.mac_key(),
    );
    let shared = Shared {
        repo,
        reader: RwLock::new(Arc::new(reader)),
        key: repo.id_key().copied(),
        added: Mutex::new(HashSet::new()),
        packer,
        new_chunks: AtomicU64::new(0),
        new_raw: AtomicU64::new(0),
        new_stored: AtomicU64::new(0),
        progress: opts.progress,
        raw_sqlite: opts.raw_sqlite,
        databases: &databases,
        sum_budget: AtomicU64::new(SUM_BUDGET),
    };
    let (read_results, stores, streamed, packs) = std::thread::scope(|s| {
        // Full packs are recorded in the index while reading goes on, a few per transaction, so
        // the index never holds a whole backup's dirty pages and the commit at the end is small.
        // Blobs indexed without a snapshot are harmless: their packs are durable, and the next
        // backup reuses them.
        let writer = s.spawn(|| {
            writer_thread.run(PACKS_PER_INDEX_TXN, &mut |packs| {
                let ids: Vec<ChunkId> = packs
                    .iter()
                    .flat_map(|p| p.entries.iter().map(|e| e.id))
                    .collect();
                let txn = repo.index.write()?;
                insert_packs(&txn, packs)?;
                txn.commit()?;
                // Readers see the new blobs first, then they leave the in-memory set.
                let fresh = Arc::new(IndexReader::new(&repo.index.read()?)?);
                *shared.reader.write().unwrap_or_else(|p| p.into_inner()) = fresh;
                let mut added = shared.added.lock().unwrap_or_else(|p| p.into_inner());
                for id in &ids {
                    added.remove(id);
                }
                Ok(())
            })
        });
        // Large files one at a time, each read with parallelism inside it; small files in
        // parallel with each other. Either way only a few read buffers exist at once.
        let (large, small): (Vec<usize>, Vec<usize>) = to_read
            .iter()
            .partition(|&&i| items[i].meta.len() >= LARGE_FILE);
        let capture_opts = &opts.capture;
        let read = |i: usize| {
            (
                i,
                read_stably(
                    &shared,
                    &items[i],
                    previous[i].as_ref(),
                    start_ns,
                    capture_opts,
                ),
            )
        };
        // Two lanes of large files side by side: page-aligned databases (parallel inside, but
        // with a barrier per round) and the rest (cut by content, which is sequential), so each
        // fills the other's idle time. Still at most one large file per lane at a time.
        let (paged, streamed): (Vec<usize>, Vec<usize>) = large
            .into_iter()
            .partition(|&i| repo.config.sqlite_pages && looks_paged(&items[i].abs));
        let (mut results, streamed): (Vec<(usize, Result<ReadFile>)>, Vec<_>) = rayon::join(
            || paged.into_iter().map(read).collect(),
            || streamed.into_iter().map(read).collect(),
        );
        results.extend(streamed);
        results.extend(small.into_par_iter().map(read).collect::<Vec<_>>());
        // Stores, one at a time, each as a whole.
        let stores: Vec<Result<GroupCapture<Got>>> = groups
            .iter()
            .zip(known)
            .map(|(group, known)| {
                let txn = repo.index.read()?;
                let mut io = StoreIo {
                    shared: &shared,
                    group,
                    txn: &txn,
                    excludes: &excludes,
                    start_ns,
                    is_db: HashMap::new(),
                };
                capture_group(&opts.capture, &mut io, known)
            })
            .collect();
        // Streams last, one at a time; any failure fails the whole snapshot.
        let streamed: Result<Vec<ReadStream>> = opts
            .streams
            .iter()
            .map(|st| read_stream_source(&shared, st))
            .collect();
        let finished = shared.packer.finish();
        if finished.is_err() {
            shared.packer.abandon();
        }
        let packs = writer
            .join()
            .unwrap_or_else(|_| Err(Error::invalid("pack writer thread panicked")));
        (results, stores, streamed, finished.and(packs))
    });
    // 4. Every pack is now durable (or we stop here, leaving only unreferenced packs).
    let packs = packs?;
    let streamed = streamed?;
    phases.mark("read, chunk, store");

    let mut stamps = Vec::new();
    let mut bytes_read = 0;
    let mut captures = Vec::new();
    let mut notes = Vec::new();
    let mut accept = |abs: &std::path::Path, rf: ReadFile| {
        notes.extend(rf.notes);
        bytes_read += rf.size;
        if let Some(stamp) = rf.stamp {
            stamps.push((repo.file_key(abs.as_os_str().as_bytes()), stamp, rf.sums));
        }
        (rf.content, rf.size, rf.page_size)
    };
    for (i, result) in read_results {
        let item = &items[i];
        match result {
            Err(e) if databases.contains(&item.abs) => {
                return Err(Error::invalid(format!(
                    "sqlite source {}: {e}",
                    item.abs.display()
                )));
            }
            Ok(rf) => {
                if !rf.stable && !opts.capture.allow_unstable {
                    return Err(Error::invalid(format!(
                        "{} kept changing while it was read ({} reads); nothing was recorded: \
                         {UNSTABLE_HINT}",
                        item.abs.display(),
                        rf.attempts
                    )));
                }
                if rf.attempts > 1 || !rf.stable {
                    captures.push(Capture {
                        path: item.rel_lossy(),
                        kind: "file".into(),
                        attempts: rf.attempts,
                        consistent: rf.stable,
                        note: if rf.stable {
                            String::new()
                        } else {
                            "changed while it was read".into()
                        },
                    });
                }
                contents[i] = Some(accept(&item.abs, rf));
            }
            // Removed between the walk and the read: left out, with a warning.
            Err(e) if e.kind() == crate::ErrorKind::NotFound => {
                warnings.push(format!(
                    "{}: vanished during the backup; not in the snapshot",
                    item.abs.display()
                ));
            }
            Err(e) if e.kind() == crate::ErrorKind::Io => {
                errors.push(format!("{}: {e}", item.abs.display()));
            }
            Err(e) => return Err(e),
        }
    }
    let mut listed: Vec<(&WalkItem, Option<Stored>)> = items.iter().zip(contents).collect();
    let mut store_items = Vec::new();
    for (group, store) in groups.iter().zip(stores) {
        let what = format!("{} store {}", group.kind.as_str(), group.root.display());
        let store = store.map_err(|e| Error::invalid(format!("{what}: {e}")))?;
        let changed = summarize(&store.changed);
        if !store.stable && !opts.capture.allow_unstable {
            return Err(Error::invalid(format!(
                "{what} kept changing while it was read ({} attempts; {changed}); nothing was \
                 recorded: {UNSTABLE_HINT}",
                store.attempts
            )));
        }
        errors.extend(store.errors);
        captures.push(Capture {
            path: String::from_utf8_lossy(&group.rel).into_owned(),
            kind: group.kind.as_str().into(),
            attempts: store.attempts,
            consistent: store.stable,
            note: changed,
        });
        for (item, got) in store.items {
            let content = match got {
                None => None,
                Some(Got::Cached(stored)) => Some(stored),
                Some(Got::Read(rf)) => Some(accept(&item.abs, *rf)),
            };
            store_items.push((item, content));
        }
    }
    warnings.extend(notes);
    listed.extend(store_items.iter().map(|(item, c)| (item, c.clone())));
    listed.sort_by(|a, b| a.0.rel.cmp(&b.0.rel));

    // 5. Manifest.
    let mut entries = Vec::with_capacity(listed.len());
    let mut stats = SnapshotStats::default();
    for (item, content) in listed {
        let (content, size, page_size) = match item.kind {
            EntryKind::File => match content {
                Some(c) => c,
                None => continue, // unreadable or vanished: listed in errors or warnings
            },
            _ => (Content::Empty, 0, 0),
        };
        match item.kind {
            EntryKind::File => {
                stats.files += 1;
                stats.bytes += size;
            }
            EntryKind::Dir => stats.dirs += 1,
            EntryKind::Symlink => stats.symlinks += 1,
        }
        entries.push(Entry {
            path: item.rel.clone(),
            kind: item.kind,
            mode: item.meta.mode(),
            uid: item.meta.uid(),
            gid: item.meta.gid(),
            mtime_ns: mtime_ns(&item.meta),
            size,
            content,
            target: item.target.clone(),
            page_size,
        });
    }
    let mut stream_details = Vec::with_capacity(streamed.len());
    for (st, (content, size, details)) in opts.streams.iter().zip(streamed) {
        stream_details.push(details);
        stats.files += 1;
        stats.bytes += size;
        bytes_read += size;
        entries.push(Entry {
            path: st.name.as_bytes().to_vec(),
            kind: EntryKind::File,
            mode: libc::S_IFREG | 0o600,
            // SAFETY: geteuid and getegid have no preconditions.
            uid: unsafe { libc::geteuid() },
            gid: unsafe { libc::getegid() },
            mtime_ns: start_ns,
            size,
            content,
            target: None,
            page_size: 0,
        });
    }
    stats.bytes_read = bytes_read;
    stats.new_chunks = shared.new_chunks.load(Ordering::Relaxed);
    stats.new_raw_bytes = shared.new_raw.load(Ordering::Relaxed);
    stats.new_stored_bytes = shared.new_stored.load(Ordering::Relaxed);
    let next_pack = shared.packer.next_pack_no();
    drop(shared);
    stats.duration_ms = started.elapsed().as_millis() as u64;
    let manifest = Manifest {
        time_ns: start_ns,
        hostname: crate::sys::hostname(),
        name: opts.name.clone(),
        kind: opts.kind.clone(),
        tags: opts.tags.clone(),
        sources: walked
            .sources
            .iter()
            .map(|(name, path)| Source {
                name: name.clone(),
                path: path.display().to_string(),
                kind: if databases.contains(path) {
                    SourceKind::Sqlite
                } else {
                    SourceKind::Path
                },
                details: vec![],
            })
            .chain(
                opts.streams
                    .iter()
                    .zip(stream_details)
                    .map(|(st, details)| {
                        let (kind, path) = st.describe();
                        Source {
                            name: st.name.clone(),
                            path,
                            kind,
                            details,
                        }
                    }),
            )
            .collect(),
        entries,
        stats,
        errors,
        captures,
    };
    let (id, framed) = manifest.encode(repo.keys())?;
    phases.mark("manifest");
    // 6. Commit the index, then write the manifest file.
    commit(repo, packs, next_pack, &id, &framed, &stamps)?;
    phases.mark("index commit");
    repo.backend
        .put(&crate::manifest::object_name(&id), &framed)?;
    phases.mark("manifest file");
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

/// What to do about something that kept changing while it was read.
const UNSTABLE_HINT: &str = "pause the writer around the backup (--before/--after hooks), allow \
    more reads (--capture-retries), or record it anyway, marked as possibly inconsistent \
    (--allow-unstable)";

/// The first few of a list of changes, for a message.
fn summarize(changed: &[String]) -> String {
    const SHOWN: usize = 3;
    let mut s = changed[..changed.len().min(SHOWN)].join("; ");
    if changed.len() > SHOWN {
        s.push_str(&format!("; and {} more", changed.len() - SHOWN));
    }
    s
}

fn now_ns() -> i64 {
    chrono::Utc::now().timestamp_nanos_opt().unwrap_or(i64::MAX)
}

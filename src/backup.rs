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

use crate::chunker::{ChunkStream, CutMode, sqlite_page_size};
use crate::compress::compress;
use crate::error::{Error, IoContext, Result};
use crate::id::{ChunkId, SnapshotId};
use crate::index::{
    BLOBS, BlobLoc, FILES, FileStamp, IndexReader, META, META_NEXT_PACK, PACK_USE, PACKS, PackInfo,
    REFS, SNAPSHOTS, UNCOUNTED,
};
use crate::manifest::{
    Capture, Content, Entry, EntryKind, Manifest, SnapshotStats, Source, SourceKind,
};
use crate::pack::BlobKind;
use crate::packer::{Packer, WrittenPack};
use crate::pagesums::PageSums;
use crate::refs::UsageCache;
use crate::repo::Repo;
use crate::source::capture::{
    CaptureOptions, FileRead, Group, GroupCapture, GroupIo, Hooks, Seen, backoff, capture_group,
    find_groups, run_hook,
};
use crate::source::walk::{WalkItem, walk_sources_excluding};
use crate::sys::{ctime_ns, mtime_ns};
use crate::tree::TreeBuilder;
use rayon::prelude::*;
use redb::ReadableTable;
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

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

/// Files whose ctime is this close to the start of the backup are not trusted for the fast path
/// next time: a later write within the same timestamp tick would go unnoticed.
const RACY_WINDOW_NS: i64 = 100_000_000;

/// State shared by the worker threads of one backup.
struct Shared<'r> {
    repo: &'r Repo,
    /// The index as of the last commit this backup made (swapped as packs are indexed).
    reader: RwLock<Arc<IndexReader>>,
    key: Option<[u8; 32]>,
    /// Blobs added by this backup and not yet in `reader`: bounded by the packs in flight, not by
    /// the size of the backup.
    added: Mutex<HashSet<ChunkId>>,
    packer: Packer<'r>,
    new_chunks: AtomicU64,
    new_raw: AtomicU64,
    new_stored: AtomicU64,
    progress: Option<&'r (dyn Fn(u64) + Sync)>,
    raw_sqlite: bool,
    /// Databases named with `--sqlite`: a consistent image or the backup fails.
    databases: &'r HashSet<PathBuf>,
    /// Chunk digests this backup may still hold until its commit (see [`SUM_BUDGET`]).
    sum_budget: AtomicU64,
}

impl Shared<'_> {
    /// True if the blob must be stored; marks it as added so no other thread stores it too.
    /// (A blob whose pack is indexed between the two checks can be stored twice; the index then
    /// points at the second copy and the first is garbage: wasteful, never wrong.)
    fn claim(&self, id: &ChunkId) -> Result<bool> {
        let reader = self
            .reader
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if reader.contains(id)? {
            return Ok(false);
        }
        Ok(self
            .added
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(*id))
    }

    /// Compresses `raw`, the consecutive blobs `members` (id and length) of one file, into one
    /// frame and adds it to the current pack.
    fn store(&self, kind: BlobKind, members: &[(ChunkId, usize)], raw: &[u8]) -> Result<()> {
        let frame = self.seal(kind, members, raw)?;
        self.append(frame)
    }

    /// Compresses, checks and (in an encrypted repository) encrypts one frame, for [`append`].
    ///
    /// [`append`]: Shared::append
    fn seal(&self, kind: BlobKind, members: &[(ChunkId, usize)], raw: &[u8]) -> Result<Sealed> {
        debug_assert_eq!(members.iter().map(|m| m.1).sum::<usize>(), raw.len());
        let (compression, mut stored) = compress(raw, self.repo.config.zstd_level)?;
        if cfg!(debug_assertions) && std::env::var_os("STRATA_FAULT_DAMAGE_FRAMES").is_some() {
            // Fault injection for tests (debug builds only): a compressor that damages frames.
            let last = stored.len() - 1;
            stored[last / 2] ^= 0x5A;
        }
        crate::compress::check_frame(&stored, compression, raw.len(), members, self.repo.id_key())?;
        let mut placed = Vec::with_capacity(members.len());
        let mut at = 0u32;
        for (id, len) in members {
            placed.push((*id, at, *len as u32));
            at += *len as u32;
        }
        self.new_chunks
            .fetch_add(members.len() as u64, Ordering::Relaxed);
        if kind == BlobKind::Data {
            self.new_raw.fetch_add(raw.len() as u64, Ordering::Relaxed);
        }
        self.new_stored
            .fetch_add(stored.len() as u64, Ordering::Relaxed);
        // A failure here is the repository's (a full disk...), not the source file's: it ends
        // the backup instead of being reported as an unreadable file.
        let stored = match self.repo.seal_frame(&stored)? {
            std::borrow::Cow::Owned(sealed) => Some(sealed),
            std::borrow::Cow::Borrowed(_) => None,
        }
        .unwrap_or(stored);
        Ok(Sealed {
            kind,
            compression,
            stored,
            raw_len: raw.len() as u32,
            placed,
        })
    }

    /// Adds a sealed frame to the current pack.
    fn append(&self, f: Sealed) -> Result<()> {
        self.packer
            .add_frame(f.kind, f.compression, &f.stored, f.raw_len, &f.placed)
            .map_err(|e| Error::invalid(format!("writing to the repository: {e}")))
    }

    fn store_node(&self, id: ChunkId, bytes: Vec<u8>) -> Result<()> {
        if let Some(cache) = self.repo.backend.node_cache() {
            cache.insert(id, &bytes);
        }
        if self.claim(&id)? {
            self.store(BlobKind::Node, &[(id, bytes.len())], &bytes)?;
        }
        Ok(())
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

/// Result of reading one file.
struct ReadFile {
    content: Content,
    size: u64,
    page_size: u32,
    /// The stamp to remember, unless the file changed while it was read.
    stamp: Option<FileStamp>,
    /// The [`PageSums`] record to keep with the stamp (encoded, sealed if encrypted).
    sums: Option<Vec<u8>>,
    /// Worth telling the user (a database that had to be copied raw...).
    notes: Vec<String>,
    /// The file's stamp when the read began.
    seen: Seen,
    /// Whether the bytes are the file as it was at one instant: it did not change while it was
    /// read, or it was read as one consistent image through SQLite.
    stable: bool,
    /// Reads it took.
    attempts: u32,
}

/// A file's content as the manifest records it: (content, size, page size).
type Stored = (Content, u64, u32);

/// What a store's capture knows of one of its files.
enum Got {
    /// From the file cache.
    Cached(Stored),
    Read(Box<ReadFile>),
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

/// Whether the file cache still describes `item` (and its content is in the repository).
enum Cached {
    Hit(Stored),
    /// Not cached, or changed since: the stamp cached for it, if any, as a hint.
    Miss(Option<FileStamp>),
}

fn cache_lookup(
    repo: &Repo,
    txn: &redb::ReadTransaction,
    reader: &IndexReader,
    item: &WalkItem,
) -> Result<Cached> {
    Ok(match cached_stamp(repo, txn, &item.abs)? {
        Some(stamp)
            if stamp_matches(&stamp, &item.meta)
                && stamp.wal == wal_stamp(&item.abs, stamp.page_size)
                && content_present(reader, &stamp.content)? =>
        {
            Cached::Hit((stamp.content, stamp.size, stamp.page_size))
        }
        stamp => Cached::Miss(stamp),
    })
}

/// The file cache's stamp for the file at `abs`, if any.
fn cached_stamp(
    repo: &Repo,
    txn: &redb::ReadTransaction,
    abs: &std::path::Path,
) -> Result<Option<FileStamp>> {
    crate::index::file_stamp(txn, &repo.file_key(abs.as_os_str().as_bytes()))
}

/// Reads a file again, with backoff, while it changes during the read (at most
/// `opts.retries` more times).
fn read_stably(
    shared: &Shared,
    item: &WalkItem,
    previous: Option<&FileStamp>,
    start_ns: i64,
    opts: &CaptureOptions,
) -> Result<ReadFile> {
    let mut attempt = 1;
    loop {
        let mut rf = read_file(shared, item, previous, start_ns)?;
        rf.attempts = attempt;
        if rf.stable || attempt > opts.retries {
            return Ok(rf);
        }
        std::thread::sleep(backoff(attempt));
        attempt += 1;
    }
}

/// A store's files as the backup reaches them.
struct StoreIo<'a, 'r> {
    shared: &'a Shared<'r>,
    group: &'a Group,
    txn: &'a redb::ReadTransaction,
    excludes: &'a crate::source::walk::Excludes,
    start_ns: i64,
    /// Which files are SQLite databases, once looked at.
    is_db: HashMap<PathBuf, bool>,
}

impl GroupIo<Got> for StoreIo<'_, '_> {
    fn list(&mut self) -> Result<(Vec<WalkItem>, Vec<String>)> {
        let rel = self.group.rel.clone();
        let prefix = rel.iter().position(|&b| b == b'/').unwrap_or(rel.len()) + 1;
        let walked = crate::source::walk::walk_below(
            &self.group.root,
            rel,
            prefix,
            &self.shared.repo.root,
            self.excludes,
        )?;
        Ok((walked.items, walked.errors))
    }

    fn is_database(&mut self, item: &WalkItem) -> bool {
        let databases = self.shared.databases;
        *self
            .is_db
            .entry(item.abs.clone())
            .or_insert_with(|| databases.contains(&item.abs) || looks_paged(&item.abs))
    }

    fn read(&mut self, item: &WalkItem) -> Result<Option<FileRead<Got>>> {
        let previous = cached_stamp(self.shared.repo, self.txn, &item.abs)?;
        match read_file(self.shared, item, previous.as_ref(), self.start_ns) {
            Ok(rf) => Ok(Some(FileRead {
                seen: rf.seen,
                stable: rf.stable,
                data: Got::Read(Box::new(rf)),
            })),
            Err(e) if e.kind() == crate::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// A file's stamp to keep, under its cache key, with its page digest record (if any).
pub(crate) type KeptStamp = (Vec<u8>, FileStamp, Option<Vec<u8>>);

/// Packs whose blob entries go into one intermediate index transaction. Few large transactions
/// keep the index file small: each transaction of scattered inserts copies most B-tree leaves, and
/// redb reuses the freed pages only later. Measured on W1's first backup: one transaction per
/// pack left a 570 MB index file, eight packs per transaction 79 MB.
const PACKS_PER_INDEX_TXN: usize = 8;

pub(crate) fn commit(
    repo: &Repo,
    packs: Vec<WrittenPack>,
    next_pack: u32,
    id: &SnapshotId,
    framed: &[u8],
    stamps: &[KeptStamp],
) -> Result<()> {
    // The last packs, the snapshot and the file stamps commit together, durably. The snapshot's
    // references are counted by the next forget or gc (see `refs`).
    repo.ensure_current()?;
    let txn = repo.index.write()?;
    insert_packs(&txn, packs)?;
    txn.open_table(UNCOUNTED)?.insert(id.as_bytes(), 0)?;
    {
        let mut meta = txn.open_table(META)?;
        let recorded = meta.get(META_NEXT_PACK)?.map(|v| v.value()).unwrap_or(0);
        meta.insert(META_NEXT_PACK, recorded.max(next_pack as u64))?;
        let mut snaps = txn.open_table(SNAPSHOTS)?;
        snaps.insert(id.as_bytes(), framed)?;
        let mut files = txn.open_table(FILES)?;
        for (path, stamp, _) in stamps {
            files.insert(path.as_slice(), crate::codec::encode(stamp)?.as_slice())?;
        }
    }
    txn.commit()?;
    // Had the index been replaced or the lock taken between the check above and the commit,
    // the snapshot would be in a file nobody reads: fail rather than report it saved.
    repo.ensure_current()?;
    // Page digests follow the stamps they describe (a record left behind by a crash here
    // names content the stamp no longer does, and is ignored).
    let records: Vec<(&[u8], Option<&[u8]>)> = stamps
        .iter()
        .filter(|(_, stamp, sums)| sums.is_some() || stamp.size >= LARGE_FILE)
        .map(|(key, _, sums)| (key.as_slice(), sums.as_deref()))
        .collect();
    crate::pagesums::store(repo, &records);
    if let Some(cache) = repo.backend.node_cache() {
        // Only a cache: a node it failed to keep is downloaded again when needed.
        let _ = cache.flush();
    }
    Ok(())
}

/// Below this many new blobs, index inserts are sorted by id.
const SORTED_INSERT_MAX: usize = 100_000;

/// Records packs and the locations of their blobs.
///
/// A small batch (an hourly backup's few thousand blobs) is inserted in id order, so the B-tree
/// pages it touches are visited once each, in order. A large batch (a first backup) goes in pack
/// order, which is random in id order: that leaves pages with room, where sorted bulk inserts
/// would fill them completely and the next backup's scattered inserts would split (and copy)
/// nearly every page.
pub(crate) fn insert_packs(txn: &redb::WriteTransaction, packs: Vec<WrittenPack>) -> Result<()> {
    let mut blobs = txn.open_table(BLOBS)?;
    let mut pack_table = txn.open_table(PACKS)?;
    let mut use_table = txn.open_table(PACK_USE)?;
    let refs = txn.open_table(REFS)?;
    let mut usage = UsageCache::default();
    let mut locs: Vec<(ChunkId, BlobLoc)> = Vec::new();
    let max_no = packs.iter().map(|p| p.no).max();
    for p in packs {
        for e in &p.entries {
            locs.push((e.id, BlobLoc::from_entry(p.no, e)));
        }
        let info = PackInfo {
            id: p.id,
            size: p.size,
            blobs: p.entries.len() as u32,
        };
        pack_table.insert(p.no, &info.encode())?;
    }
    // Pack numbers are never reused, even if this backup dies before its final commit.
    if let Some(max) = max_no {
        let mut meta = txn.open_table(META)?;
        let next = meta.get(META_NEXT_PACK)?.map(|v| v.value()).unwrap_or(0);
        meta.insert(META_NEXT_PACK, next.max(max as u64 + 1))?;
    }
    if locs.len() < SORTED_INSERT_MAX {
        locs.sort_unstable_by_key(|(id, _)| *id);
    }
    for (id, loc) in &locs {
        let old = blobs
            .insert(id.as_bytes(), &loc.encode())?
            .map(|v| BlobLoc::decode(v.value()))
            .transpose()?;
        usage.get(&use_table, loc.pack)?.indexed += 1;
        // A blob stored again (two threads raced, or gc moved it): the index now points at the
        // new copy, and the old pack's accounting gives it up.
        if let Some(old) = old {
            let row = usage.get(&use_table, old.pack)?;
            row.indexed = row.indexed.saturating_sub(1);
            if refs.get(id.as_bytes())?.is_some() {
                row.lose(&old);
                usage.get(&use_table, loc.pack)?.gain(loc);
            }
        }
    }
    usage.flush(&mut use_table)?;
    Ok(())
}

fn now_ns() -> i64 {
    chrono::Utc::now().timestamp_nanos_opt().unwrap_or(i64::MAX)
}

fn stamp_matches(s: &FileStamp, m: &std::fs::Metadata) -> bool {
    let cached = Seen {
        size: s.size,
        mtime_ns: s.mtime_ns,
        ctime_ns: s.ctime_ns,
        ino: s.ino,
        dev: s.dev,
    };
    cached == Seen::of(m)
}

fn content_present(reader: &IndexReader, content: &Content) -> Result<bool> {
    match content {
        Content::Empty => Ok(true),
        Content::Chunk(id) | Content::Tree(id) => reader.contains(id),
    }
}

/// Tracks the previous version of a file so unchanged chunks at the same offset are recognised
/// without an index lookup.
struct PreviousVersion<'a> {
    walker: crate::tree::LeafWalker<'a>,
    current: Option<(u64, ChunkId, u64)>,
    next_offset: u64,
    broken: bool,
}

impl<'a> PreviousVersion<'a> {
    fn new(walker: crate::tree::LeafWalker<'a>) -> Self {
        PreviousVersion {
            walker,
            current: None,
            next_offset: 0,
            broken: false,
        }
    }

    /// The next chunk of the previous version, in file order.
    fn next_chunk(&mut self) -> Option<Known> {
        if self.current.is_none() && !self.broken {
            self.advance();
        }
        self.current.take()
    }

    /// The chunks of the previous version that start in `[start, end)`, by ascending offset.
    /// Calls must ask for ranges in ascending order.
    fn chunks_in(&mut self, start: u64, end: u64) -> Vec<Known> {
        let mut out = Vec::new();
        loop {
            if self.current.is_none() {
                if self.broken {
                    return out;
                }
                self.advance();
                continue;
            }
            let (off, id, len) = self.current.expect("checked above");
            if off >= end {
                return out;
            }
            if off >= start {
                out.push((off, id, len));
            }
            self.current = None;
        }
    }

    fn advance(&mut self) {
        match self.walker.next_leaf() {
            Ok(Some(e)) => {
                self.current = Some((self.next_offset, e.id, e.bytes));
                self.next_offset += e.bytes;
            }
            // The previous version is only a hint: on its end or any error, stop using it.
            _ => self.broken = true,
        }
    }

    fn has(&mut self, offset: u64, id: &ChunkId) -> bool {
        loop {
            if self.broken {
                return false;
            }
            if let Some((off, cid, len)) = self.current
                && off + len > offset
            {
                return off == offset && cid == *id;
            }
            self.advance();
        }
    }
}

fn read_file(
    shared: &Shared,
    item: &WalkItem,
    previous: Option<&FileStamp>,
    start_ns: i64,
) -> Result<ReadFile> {
    let path = &item.abs;
    let file = File::open(path).ctx("open", path)?;
    let before = file.metadata().ctx("stat", path)?;
    unsafe_advise_sequential(&file);
    let repo = shared.repo;
    let mut header = [0u8; 100];
    let header_len = read_full_at(&file, &mut header, 0).ctx("read", path)?;
    let strict = shared.databases.contains(path);
    let page_size = if repo.config.sqlite_pages || strict {
        sqlite_page_size(&header[..header_len]).unwrap_or(0)
    } else {
        0
    };
    let mode = if page_size > 0 {
        CutMode::Fixed(page_size)
    } else {
        CutMode::Cdc
    };

    // Nodes of the previous version are read through the index as it was when we started.
    let prev_index = match previous {
        Some(_) => Some(IndexReader::new(&repo.index.read()?)?),
        None => None,
    };
    let mut sums = sum_state(shared, path, page_size, before.len(), previous)?;
    let blob_reader = match &prev_index {
        Some(index) => Some(crate::blobs::BlobReader::new(repo, index)?),
        None => None,
    };
    let fetch = |id: &ChunkId| match &blob_reader {
        Some(r) => r.read(id),
        None => Err(Error::not_found("no previous version")),
    };
    // The previous version is only a hint: if it cannot be read (its snapshots were forgotten
    // and collected), the file is simply deduplicated through the index.
    let mut prev = match previous {
        Some(p) if p.page_size == page_size => {
            crate::tree::LeafWalker::new(&p.content, p.size, &fetch)
                .ok()
                .map(PreviousVersion::new)
        }
        _ => None,
    };

    // For a file cut by content: the previous version's chunks once more, for `CdcSkip`.
    let cdc_prev = match (mode, previous) {
        (CutMode::Cdc, Some(p))
            if p.page_size == 0 && sums.as_ref().is_some_and(|s| !s.prev.is_empty()) =>
        {
            crate::tree::LeafWalker::new(&p.content, p.size, &fetch)
                .ok()
                .map(|w| (PreviousVersion::new(w), p.size))
        }
        _ => None,
    };
    let mut builder = TreeBuilder::new(shared.key);
    let mut emit = |id: ChunkId, bytes: Vec<u8>| shared.store_node(id, bytes);
    let mut state = FileState {
        prev: prev.as_mut(),
        sums: sums.as_mut(),
        builder: &mut builder,
        emit: &mut emit,
    };
    let wal_before = wal_stamp(path, page_size);
    let mut notes = Vec::new();
    let mut captured = false;
    let size = match mode {
        CutMode::Fixed(page) if !shared.raw_sqlite || strict => {
            let read = crate::source::sqlite::ReadSnapshot::begin(path).and_then(|snap| {
                if snap.page_size != page {
                    return Err(Error::invalid(format!(
                        "{}: page size {} where the header says {page}",
                        path.display(),
                        snap.page_size
                    )));
                }
                if snap.wal {
                    read_sqlite(shared, snap, path, page, &mut state)
                } else {
                    // Rollback journal: the file is the image while the snapshot holds.
                    let size =
                        read_pages(shared, &file, path, page, &mut state, snap.image().bytes())?;
                    if size != snap.image().bytes() {
                        return Err(Error::invalid(format!(
                            "{}: {size} bytes read of a {}-byte image",
                            path.display(),
                            snap.image().bytes()
                        )));
                    }
                    Ok(size)
                }
            });
            match read {
                Ok(size) => {
                    captured = true;
                    size
                }
                // SQLite could not open it (damaged, or only looks like a database): the
                // bytes as they are are still worth keeping.
                // Failing part-way: this file is not backed up (the snapshot is partial).
                Err(e) if strict => {
                    return Err(Error::invalid(format!(
                        "{}: cannot read a consistent image through SQLite: {e}",
                        path.display()
                    )));
                }
                Err(e) if !state.builder.is_empty() => {
                    return Err(Error::io_path(
                        "read",
                        path,
                        std::io::Error::other(e.to_string()),
                    ));
                }
                Err(e) => {
                    notes.push(format!(
                        "{}: not readable as a SQLite database ({e}); copied as a plain file",
                        path.display()
                    ));
                    read_pages(shared, &file, path, page, &mut state, u64::MAX)?
                }
            }
        }
        CutMode::Fixed(page) => read_pages(shared, &file, path, page, &mut state, u64::MAX)?,
        CutMode::Cdc => {
            // A window no larger than the file (plus room to decide the last cut).
            let window = (before.len() as usize)
                .saturating_add(1)
                .min(crate::chunker::WINDOW);
            read_cdc(shared, &file, window, &mut state, cdc_prev).ctx("read", path)?
        }
    };
    let content = builder.finish(&mut emit)?;
    let after = std::fs::metadata(path).ctx("stat", path)?;
    let wal_after = wal_stamp(path, page_size);
    // A captured image can be longer than the main file (pages still in the WAL).
    let seen = Seen::of(&before);
    let unchanged =
        seen == Seen::of(&after) && wal_before == wal_after && (captured || size == before.len());
    let racy = ctime_ns(&before) >= start_ns - RACY_WINDOW_NS
        || wal_before.is_some_and(|w| w.2 >= start_ns - RACY_WINDOW_NS);
    let stamp = (unchanged && !racy).then(|| FileStamp {
        wal: wal_before,
        ..stamp_of(&before, content.clone(), page_size)
    });
    let sums = match (&stamp, sums) {
        (Some(_), Some(st)) => sum_record(shared, &content, size, page_size, st)?,
        (_, Some(st)) => {
            shared.sum_budget.fetch_add(st.reserved, Ordering::Relaxed);
            None
        }
        _ => None,
    };
    Ok(ReadFile {
        content,
        size,
        page_size,
        stamp,
        sums,
        notes,
        seen,
        stable: captured || unchanged,
        attempts: 1,
    })
}

/// The chunk digests to keep while a file of `len` bytes is read (cut at pages of `page` bytes,
/// or by content when `page` is 0), with the previous version's if they describe the stamped
/// content: `None` for a small file, one too large for them, or when the backup's budget is
/// spent.
fn sum_state(
    shared: &Shared,
    path: &std::path::Path,
    page: u32,
    len: u64,
    previous: Option<&FileStamp>,
) -> Result<Option<SumState>> {
    // Small files are cheap to hash: a record each would only fill the directory.
    if len < LARGE_FILE {
        return Ok(None);
    }
    // Pages, or content-defined chunks (at least half the average size but for a few).
    let unit = match page {
        0 => (shared.repo.chunker().params().avg as u64 / 2).max(1),
        p => p as u64,
    };
    // Room for the file to grow a little while it is read.
    let want = (len / unit + 1).saturating_add(SUM_PAGES_MAX / 64);
    if len / unit > SUM_PAGES_MAX {
        return Ok(None);
    }
    let reserved = shared
        .sum_budget
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
            left.checked_sub(want)
        })
        .is_ok();
    if !reserved {
        return Ok(None);
    }
    let recorded = match previous {
        Some(p) if p.page_size == page => {
            let key = shared.repo.file_key(path.as_os_str().as_bytes());
            crate::pagesums::load(shared.repo, &key)
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
fn sum_record(
    shared: &Shared,
    content: &Content,
    size: u64,
    page_size: u32,
    st: SumState,
) -> Result<Option<Vec<u8>>> {
    let give_back = |n: u64| shared.sum_budget.fetch_add(n, Ordering::Relaxed);
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
    record.to_file_bytes(shared.repo.keys())
}

/// Cuts what `reader` yields by content and stores it; returns the bytes read. I/O errors come
/// back as `std::io::Error` for the caller to name the source.
fn read_cdc(
    shared: &Shared,
    reader: impl std::io::Read,
    window: usize,
    state: &mut FileState,
    previous: Option<(PreviousVersion, u64)>,
) -> std::result::Result<u64, ReadError> {
    let chunker = shared.repo.chunker();
    let mut stream = ChunkStream::with_window(reader, chunker, CutMode::Cdc, window);
    let (sums, mut sink) = SumState::split_opt(state.sums.take());
    let mut skip = match (sums, previous) {
        (Some(ctx), Some((prev, prev_size))) => Some(CdcSkip {
            prev,
            ahead: std::collections::VecDeque::new(),
            next_index: 0,
            ctx,
            prev_size,
            max: chunker.params().max as usize,
            checked: None,
            reused: Vec::new(),
        }),
        _ => None,
    };
    loop {
        let batch = match skip.as_mut() {
            Some(k) => stream.next_batch_known(&mut |at, rest| k.at(at, rest)),
            None => stream.next_batch(),
        }
        .map_err(ReadError::Io)?;
        let Some((offset, bytes, lens)) = batch else {
            break;
        };
        let mut spans = Vec::with_capacity(lens.len());
        let mut pos = 0usize;
        for len in lens {
            spans.push(Span {
                seg: 0,
                start: pos,
                len,
                offset: offset + pos as u64,
            });
            pos += len;
        }
        let reused = skip
            .as_mut()
            .map(|k| std::mem::take(&mut k.reused))
            .unwrap_or_default();
        let found = |off: u64| {
            reused
                .binary_search_by_key(&off, |r| r.0)
                .ok()
                .map(|i| (reused[i].1, reused[i].2))
        };
        let hashed: Vec<(ChunkId, Option<u128>)> = spans
            .par_iter()
            .map(|sp| match found(sp.offset) {
                Some((id, digest)) => (id, Some(digest)),
                None => {
                    let data = &bytes[sp.start..sp.start + sp.len];
                    (
                        ChunkId::hash(shared.key.as_ref(), data),
                        sums.map(|s| s.digest(data)),
                    )
                }
            })
            .collect();
        if let Some(sink) = sink.as_mut() {
            let digests: Vec<u128> = hashed.iter().filter_map(|h| h.1).collect();
            sink.extend(&digests);
        }
        let ids: Vec<ChunkId> = hashed.into_iter().map(|h| h.0).collect();
        process_batch(shared, &[bytes], &spans, &ids, state).map_err(ReadError::Store)?;
    }
    Ok(stream.bytes_read())
}

/// Recognises, in a file cut by content, the chunks of the previous version that the cutter
/// would cut again, so they need neither cutting nor BLAKE3.
///
/// FastCDC decides where a chunk that starts at `p` ends from the bytes `p .. p + len` and the
/// byte at `p + len` (the next chunk's first), given how much input there is past `p`, which is
/// capped at the largest chunk size. So a chunk of the previous version that started at `p`
/// ends at the same place in this one when: both versions have at least the largest chunk size
/// of input past `p`; the chunk's bytes have its recorded digest; and so do the bytes of the
/// chunk after it (which covers the byte that decided the cut). Everywhere else the cutter runs,
/// and once one of its cuts lands where a previous chunk began, chunks are recognised again.
struct CdcSkip<'a, 'w> {
    prev: PreviousVersion<'w>,
    /// The previous version's chunks taken from `prev` and not passed yet: offset, id, length,
    /// digest.
    ahead: std::collections::VecDeque<(u64, ChunkId, u64, u128)>,
    /// Number of the next chunk `prev` gives (its digest's index).
    next_index: usize,
    ctx: SumCtx<'a>,
    prev_size: u64,
    max: usize,
    /// The chunk last found to match (offset, digest), to skip digesting it twice.
    checked: Option<(u64, u128)>,
    /// Chunks recognised since the caller last took them: offset, id, digest.
    reused: Vec<(u64, ChunkId, u128)>,
}

impl CdcSkip<'_, '_> {
    /// Makes `ahead` hold at least `n` chunks, unless the previous version ends first.
    fn fill(&mut self, n: usize) {
        while self.ahead.len() < n {
            let Some((off, id, len)) = self.prev.next_chunk() else {
                return;
            };
            let digest = self.ctx.prev.get(self.next_index).copied();
            self.next_index += 1;
            match digest {
                Some(d) => self.ahead.push_back((off, id, len, d)),
                // Fewer digests than chunks: recognise nothing past them.
                None => return,
            }
        }
    }

    fn matches(&mut self, at: u64, bytes: &[u8], digest: u128) -> bool {
        if self.checked == Some((at, digest)) {
            return true;
        }
        self.ctx.digest(bytes) == digest
    }

    /// The length of the chunk at file offset `at` if it is the previous version's, with
    /// `rest` the input from `at` on.
    fn at(&mut self, at: u64, rest: &[u8]) -> Option<usize> {
        if rest.len() < self.max || at.saturating_add(self.max as u64) > self.prev_size {
            return None;
        }
        loop {
            self.fill(1);
            match self.ahead.front() {
                Some(c) if c.0 < at => {
                    self.ahead.pop_front();
                }
                Some(_) => break,
                None => return None,
            }
        }
        self.fill(2);
        let (off, id, len, digest) = *self.ahead.front()?;
        let (next_off, _, next_len, next_digest) = *self.ahead.get(1)?;
        let (len, next_len) = (len as usize, next_len as usize);
        if off != at || next_off != at + len as u64 || rest.len() < len + next_len {
            return None;
        }
        if !self.matches(at, &rest[..len], digest)
            || !self.matches(next_off, &rest[len..len + next_len], next_digest)
        {
            return None;
        }
        self.checked = Some((next_off, next_digest));
        self.reused.push((at, id, digest));
        self.ahead.pop_front();
        Some(len)
    }
}

/// Why reading a source failed: its own I/O, or storing what was read.
enum ReadError {
    Io(std::io::Error),
    Store(Error),
}

trait ReadContext<T> {
    fn ctx(self, what: &str, path: &std::path::Path) -> Result<T>;
}

impl<T> ReadContext<T> for std::result::Result<T, ReadError> {
    fn ctx(self, what: &str, path: &std::path::Path) -> Result<T> {
        self.map_err(|e| match e {
            ReadError::Io(io) => Error::io_path(what, path, io),
            ReadError::Store(e) => e,
        })
    }
}

/// A named stream stored as one file of the snapshot.
#[derive(Clone, Debug)]
pub struct StreamSource {
    /// Its name (a top-level name in the snapshot).
    pub name: String,
    pub from: StreamFrom,
}

#[derive(Clone, Debug)]
pub enum StreamFrom {
    /// Standard output of `sh -c COMMAND`; the snapshot fails if the command fails.
    Command(String),
    Stdin,
    /// A plain-format `pg_dump` of the database this connection string (keyword/value or URI)
    /// names.
    Postgres(String),
    /// The RDB file a Redis server sends to a replica, fetched with `redis-cli --rdb`, from a
    /// `redis://` URL or a Unix socket (`unix:///path` or `/path`).
    Redis(String),
}

/// Options given to `pg_dump`. Plain format without compression: a table that did not change
/// dumps to the same text, so it deduplicates; compressed or custom-format dumps scramble it.
pub const PG_DUMP_OPTIONS: [&str; 2] = ["--format=plain", "--no-password"];

impl StreamSource {
    /// How the manifest records where it came from.
    fn describe(&self) -> (SourceKind, String) {
        match &self.from {
            StreamFrom::Command(c) => (SourceKind::Command, format!("command: {c}")),
            StreamFrom::Stdin => (SourceKind::Stdin, "standard input".into()),
            StreamFrom::Postgres(c) => (SourceKind::Postgres, redact_conninfo(c)),
            StreamFrom::Redis(u) => (SourceKind::Redis, redact_conninfo(u)),
        }
    }

    /// The program that produces the stream.
    fn command(&self) -> Option<std::process::Command> {
        let mut cmd;
        match &self.from {
            StreamFrom::Stdin => return None,
            StreamFrom::Command(c) => {
                cmd = std::process::Command::new("sh");
                cmd.arg("-c").arg(c);
            }
            StreamFrom::Postgres(conn) => {
                cmd = std::process::Command::new("pg_dump");
                cmd.args(PG_DUMP_OPTIONS).arg(format!("--dbname={conn}"));
            }
            StreamFrom::Redis(url) => {
                cmd = std::process::Command::new("redis-cli");
                match url.strip_prefix("unix://") {
                    Some(path) => cmd.arg("-s").arg(path),
                    None if url.starts_with('/') => cmd.arg("-s").arg(url),
                    None => cmd.arg("-u").arg(url),
                };
                cmd.args(["--rdb", "-"]);
            }
        }
        Some(cmd)
    }

    /// What the first bytes of the stream say about its source.
    fn details(&self, head: &[u8]) -> Vec<(String, String)> {
        match &self.from {
            StreamFrom::Postgres(_) => {
                let mut d = vec![("dump options".to_string(), PG_DUMP_OPTIONS.join(" "))];
                let text = String::from_utf8_lossy(head);
                for (prefix, key) in [
                    ("-- Dumped from database version ", "server version"),
                    ("-- Dumped by pg_dump version ", "pg_dump version"),
                ] {
                    if let Some(v) = text.lines().find_map(|l| l.strip_prefix(prefix)) {
                        d.push((key.to_string(), v.trim().to_string()));
                    }
                }
                d
            }
            StreamFrom::Redis(_) => rdb_details(head),
            _ => vec![],
        }
    }
}

/// Removes the password from a connection string or URL before it is recorded.
pub fn redact_conninfo(conn: &str) -> String {
    if let Some((scheme, rest)) = conn.split_once("://") {
        let (auth, host) = match rest.split_once('@') {
            Some((a, h)) if !a.contains('/') => (Some(a), h),
            _ => (None, rest),
        };
        return match auth.and_then(|a| a.split_once(':')) {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
            None => conn.to_string(),
        };
    }
    conn.split_whitespace()
        .map(|kv| match kv.split_once('=') {
            Some(("password", _)) => "password=***".to_string(),
            _ => kv.to_string(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The RDB format version and the `redis-ver` auxiliary field from the start of an RDB file.
fn rdb_details(head: &[u8]) -> Vec<(String, String)> {
    let mut d = Vec::new();
    if head.len() >= 9 && &head[..5] == b"REDIS" {
        d.push((
            "rdb version".to_string(),
            String::from_utf8_lossy(&head[5..9])
                .trim_start_matches('0')
                .to_string(),
        ));
    }
    const KEY: &[u8] = b"\x09redis-ver";
    if let Some(at) = head.windows(KEY.len()).position(|w| w == KEY) {
        let rest = &head[at + KEY.len()..];
        // A string of fewer than 64 bytes: its length in one byte, then the bytes.
        if let Some((&len, value)) = rest.split_first()
            && len < 64
            && value.len() >= len as usize
        {
            d.push((
                "server version".to_string(),
                String::from_utf8_lossy(&value[..len as usize]).into_owned(),
            ));
        }
    }
    d
}

/// Keeps a copy of the first bytes that pass through a reader.
struct Head<R> {
    inner: R,
    head: Vec<u8>,
}

const HEAD_BYTES: usize = 4096;

impl<R: std::io::Read> std::io::Read for Head<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        let room = HEAD_BYTES.saturating_sub(self.head.len()).min(n);
        self.head.extend_from_slice(&buf[..room]);
        Ok(n)
    }
}

/// A stream read to its end: its content, size and details for its `Source`.
type ReadStream = (Content, u64, Vec<(String, String)>);

/// Reads a stream source to its end.
fn read_stream_source(shared: &Shared, src: &StreamSource) -> Result<ReadStream> {
    let mut builder = TreeBuilder::new(shared.key);
    let mut emit = |id: ChunkId, bytes: Vec<u8>| shared.store_node(id, bytes);
    let mut state = FileState {
        prev: None,
        sums: None,
        builder: &mut builder,
        emit: &mut emit,
    };
    let what = std::path::PathBuf::from(&src.name);
    let (kind, described) = src.describe();
    let kind = kind.as_str();
    let (size, head) = match src.command() {
        None => {
            let mut input = Head {
                inner: std::io::stdin().lock(),
                head: Vec::new(),
            };
            let size = read_cdc(shared, &mut input, crate::chunker::WINDOW, &mut state, None)
                .ctx("read standard input for", &what)?;
            (size, input.head)
        }
        Some(mut command) => {
            let program = command.get_program().to_string_lossy().into_owned();
            let mut child = command
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .map_err(|e| {
                    Error::invalid(format!(
                        "{kind} source {} ({described}): cannot run {program}: {e}",
                        src.name
                    ))
                })?;
            let mut out = Head {
                inner: child.stdout.take().expect("stdout is piped"),
                head: Vec::new(),
            };
            let read = read_cdc(shared, &mut out, crate::chunker::WINDOW, &mut state, None);
            if read.is_err() {
                let _ = child.kill();
            }
            let status = child.wait().map_err(|e| {
                Error::invalid(format!(
                    "{kind} source {} ({described}): waiting for {program}: {e}",
                    src.name
                ))
            })?;
            let size = read.ctx("read the output of the command for", &what)?;
            if !status.success() {
                return Err(Error::invalid(format!(
                    "{kind} source {} ({described}): {program} failed ({status})",
                    src.name
                )));
            }
            (size, out.head)
        }
    };
    let content = builder.finish(&mut emit)?;
    Ok((content, size, src.details(&head)))
}

/// A chunk inside one of a batch's buffers.
struct Span {
    seg: usize,
    start: usize,
    len: usize,
    /// Offset of the chunk in the file.
    offset: u64,
}

/// Per-file state carried from batch to batch.
struct FileState<'s, 'p, 'e> {
    prev: Option<&'s mut PreviousVersion<'p>>,
    /// Page digests, for a page-aligned file that keeps them.
    sums: Option<&'s mut SumState>,
    builder: &'s mut TreeBuilder,
    emit: &'s mut (dyn FnMut(ChunkId, Vec<u8>) -> Result<()> + Send + 'e),
}

/// Dedups a batch of hashed chunks, stores the new ones (compressing in parallel) and appends
/// all of them, in order, to the file's chunk-list tree.
fn process_batch(
    shared: &Shared,
    bufs: &[&[u8]],
    spans: &[Span],
    ids: &[ChunkId],
    state: &mut FileState,
) -> Result<()> {
    // Chunks at the same offset as in the previous version are known without a lookup.
    let candidates: Vec<usize> = match state.prev.as_mut() {
        Some(p) => (0..spans.len())
            .filter(|&i| !p.has(spans[i].offset, &ids[i]))
            .collect(),
        None => (0..spans.len()).collect(),
    };
    let fresh: Vec<usize> = candidates
        .par_iter()
        .filter_map(|&i| match shared.claim(&ids[i]) {
            Ok(true) => Some(Ok(i)),
            Ok(false) => None,
            Err(e) => Some(Err(e)),
        })
        .collect::<Result<_>>()?;
    // Runs of new chunks that follow each other in the file are compressed together.
    let mut frames: Vec<Vec<usize>> = Vec::new();
    let mut frame_bytes = 0;
    for i in fresh {
        let len = spans[i].len;
        match frames.last_mut() {
            Some(f)
                if *f.last().expect("frames are never empty") + 1 == i
                    && spans[i - 1].seg == spans[i].seg
                    && frame_bytes + len <= FRAME_TARGET =>
            {
                f.push(i);
                frame_bytes += len;
            }
            _ => {
                frames.push(vec![i]);
                frame_bytes = len;
            }
        }
    }
    // Compressed in parallel, appended in file order: a restore then reads a file's new
    // chunks from one stretch of a pack, not from frames scattered among its neighbours'.
    let sealed: Vec<Sealed> = frames
        .par_iter()
        .map(|f| {
            let members: Vec<(ChunkId, usize)> =
                f.iter().map(|&i| (ids[i], spans[i].len)).collect();
            let (first, last) = (&spans[f[0]], &spans[f[f.len() - 1]]);
            shared.seal(
                BlobKind::Data,
                &members,
                &bufs[first.seg][first.start..last.start + last.len],
            )
        })
        .collect::<Result<_>>()?;
    for frame in sealed {
        shared.append(frame)?;
    }
    let mut bytes = 0;
    for (sp, id) in spans.iter().zip(ids) {
        state.builder.push(*id, sp.len as u64, state.emit)?;
        bytes += sp.len as u64;
    }
    if let Some(p) = shared.progress {
        p(bytes);
    }
    Ok(())
}

/// A compressed (and in an encrypted repository, encrypted) frame, ready for a pack.
struct Sealed {
    kind: BlobKind,
    compression: crate::compress::Compression,
    stored: Vec<u8>,
    raw_len: u32,
    placed: Vec<(ChunkId, u32, u32)>,
}

/// Consecutive new chunks are compressed together up to this many raw bytes.
const FRAME_TARGET: usize = 64 << 10;

/// Segment of a page-aligned file read and hashed by one task.
const SEGMENT: usize = 1 << 20;
/// Segments handed out per round; the file's chunk list is extended in order after each round.
const SEGMENTS_PER_ROUND: usize = 64;

thread_local! {
    static SEGMENT_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Reads a file cut at fixed page boundaries. Boundaries do not depend on content, so every
/// segment is read, hashed, deduplicated and compressed by its own task, in parallel, with one
/// reused buffer per thread. Extending the chunk-list tree (in file order) and walking the
/// previous version for the next round run beside the current round's segments.
fn read_pages(
    shared: &Shared,
    file: &File,
    path: &std::path::Path,
    page: u32,
    state: &mut FileState,
    limit: u64,
) -> Result<u64> {
    let page = page as usize;
    let round_bytes = (SEGMENTS_PER_ROUND * SEGMENT) as u64;
    let mut prev = state.prev.take();
    let builder = &mut *state.builder;
    let emit = &mut *state.emit;
    let (sums, mut sink) = SumState::split_opt(state.sums.as_deref_mut());
    // The previous version's pages in a round: the same page at the same offset needs no index
    // lookup.
    let mut known = match prev.as_mut() {
        Some(p) => p.chunks_in(0, round_bytes),
        None => Vec::new(),
    };
    let mut push = |segments: Vec<Segment>| -> Result<()> {
        for (n, ids, digests) in segments {
            if let Some(sink) = sink.as_mut() {
                sink.extend(&digests);
            }
            let mut left = n;
            for id in ids {
                let len = page.min(left);
                builder.push(id, len as u64, emit)?;
                left -= len;
            }
        }
        Ok(())
    };
    let mut pending: Vec<Segment> = Vec::new();
    let mut offset = 0u64;
    loop {
        let next_start = offset + round_bytes;
        let to_push = std::mem::take(&mut pending);
        let ((pushed, next_known), segments) = rayon::join(
            || {
                let pushed = push(to_push);
                let next_known = match prev.as_mut() {
                    Some(p) => p.chunks_in(next_start, next_start + round_bytes),
                    None => Vec::new(),
                };
                (pushed, next_known)
            },
            || {
                (0..SEGMENTS_PER_ROUND)
                    .into_par_iter()
                    .map(|k| {
                        read_segment(
                            shared,
                            file,
                            path,
                            page,
                            offset + (k * SEGMENT) as u64,
                            limit,
                            &known,
                            sums,
                        )
                    })
                    .collect::<Vec<Result<Segment>>>()
            },
        );
        pushed?;
        known = next_known;
        for segment in segments {
            let (n, ids, digests) = segment?;
            offset += n as u64;
            if let Some(p) = shared.progress {
                p(n as u64);
            }
            pending.push((n, ids, digests));
            // The first short segment is the end of the file.
            if n < SEGMENT {
                push(pending)?;
                return Ok(offset);
            }
        }
    }
}

/// A segment read: its length, its page ids and (for a file that keeps them) page digests.
type Segment = (usize, Vec<ChunkId>, Vec<u128>);

/// Reads, hashes and stores one segment at `at` (nothing at or past `limit`).
#[allow(clippy::too_many_arguments)]
fn read_segment(
    shared: &Shared,
    file: &File,
    path: &std::path::Path,
    page: usize,
    at: u64,
    limit: u64,
    known: &[Known],
    sums: Option<SumCtx>,
) -> Result<Segment> {
    SEGMENT_BUF.with(|buf| {
        let mut buf = buf.borrow_mut();
        let want = limit.saturating_sub(at).min(SEGMENT as u64) as usize;
        buf.resize(SEGMENT, 0);
        let n = read_full_at(file, &mut buf[..want], at).ctx("read", path)?;
        let (ids, digests) = store_segment(shared, &buf[..n], page, at, known, sums)?;
        Ok((n, ids, digests))
    })
}

/// A chunk of the previous version: its offset in the file, id and length.
type Known = (u64, ChunkId, u64);

/// The previous version's chunk at file offset `off`, if one started there.
fn known_at(known: &[Known], off: u64) -> Option<&Known> {
    known
        .binary_search_by_key(&off, |k| k.0)
        .ok()
        .map(|p| &known[p])
}

/// True if the previous version had the page `id` at file offset `off`.
fn is_known(known: &[Known], off: u64, id: &ChunkId) -> bool {
    known_at(known, off).is_some_and(|k| k.1 == *id)
}

/// At most this many page digests are kept per file (16 MiB: a 4 GiB database of 4 KiB pages);
/// a larger file's pages are all hashed with BLAKE3 on every backup.
const SUM_PAGES_MAX: u64 = 1 << 20;
/// Page digests a backup holds at once for its commit (32 MiB), over all its files.
const SUM_BUDGET: u64 = 2 << 20;

/// The chunk digests of a file being read: the previous version's, by chunk number, and this
/// version's as its chunks are read (see [`PageSums`]).
struct SumState {
    seed: u64,
    prev: Vec<u128>,
    new: Vec<u128>,
    /// Digests reserved from [`Shared::sum_budget`]; beyond them the file gets no record.
    reserved: u64,
}

/// What the page readers need of a [`SumState`].
#[derive(Clone, Copy)]
struct SumCtx<'a> {
    seed: u64,
    prev: &'a [u128],
}

impl SumCtx<'_> {
    fn digest(&self, page: &[u8]) -> u128 {
        PageSums::digest(self.seed, page)
    }

    /// The previous version's id of the page at `off`, if the previous version had a page of
    /// the same length there with the same digest.
    fn unchanged(
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
    /// Splits into what the readers share and where the digests of read chunks go (both `None`
    /// for a file that keeps no digests).
    fn split_opt(state: Option<&mut SumState>) -> (Option<SumCtx<'_>>, Option<SumSink<'_>>) {
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
struct SumSink<'a> {
    new: Option<&'a mut Vec<u128>>,
    reserved: u64,
}

impl SumSink<'_> {
    fn extend(&mut self, digests: &[u128]) {
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

/// A page that may be new: where it is in a buffer, its length, its file offset and its id.
type Candidate = (usize, usize, u64, ChunkId);

/// Stores the candidates that are new. Runs of new pages that follow each other both in `buf`
/// and in the file are compressed together.
fn store_fresh(shared: &Shared, buf: &[u8], pages: &[Candidate]) -> Result<()> {
    let mut run: Vec<(ChunkId, usize)> = Vec::new();
    let (mut run_start, mut run_bytes, mut run_end_off) = (0usize, 0usize, 0u64);
    for &(start, len, off, id) in pages {
        let fresh = shared.claim(&id)?;
        let follows = run_start + run_bytes == start && run_end_off == off;
        if !run.is_empty() && (!fresh || !follows || run_bytes + len > FRAME_TARGET) {
            let raw = &buf[run_start..run_start + run_bytes];
            shared.store(BlobKind::Data, &run, raw)?;
            run.clear();
        }
        if fresh {
            if run.is_empty() {
                run_start = start;
                run_bytes = 0;
            }
            run.push((id, len));
            run_bytes += len;
            run_end_off = off + len as u64;
        }
    }
    if !run.is_empty() {
        shared.store(BlobKind::Data, &run, &buf[run_start..run_start + run_bytes])?;
    }
    Ok(())
}

/// Hashes the pages of `data` (a segment at file offset `at`), stores those that are new, and
/// returns every page's id and, with `sums`, digest. A page whose digest and length are the
/// previous version's at the same offset keeps that version's id without BLAKE3.
fn store_segment(
    shared: &Shared,
    data: &[u8],
    page: usize,
    at: u64,
    known: &[Known],
    sums: Option<SumCtx>,
) -> Result<(Vec<ChunkId>, Vec<u128>)> {
    let key = shared.key.as_ref();
    let mut digests = Vec::new();
    let ids: Vec<ChunkId> = data
        .chunks(page)
        .enumerate()
        .map(|(j, c)| match sums {
            Some(s) => {
                let d = s.digest(c);
                digests.push(d);
                s.unchanged(known, page, at + (j * page) as u64, c.len(), d)
                    .unwrap_or_else(|| ChunkId::hash(key, c))
            }
            None => ChunkId::hash(key, c),
        })
        .collect();
    let pages: Vec<Candidate> = ids
        .iter()
        .zip(data.chunks(page))
        .enumerate()
        .map(|(j, (id, c))| (j * page, c.len(), at + (j * page) as u64, *id))
        .filter(|&(_, _, off, id)| !is_known(known, off, &id))
        .collect();
    store_fresh(shared, data, &pages)?;
    Ok((ids, digests))
}

/// Segments of a captured database processed per round (bounded memory: a round's buffers
/// plus the few the reader has filled ahead).
const SQLITE_ROUND: usize = 8;

/// Reads a SQLite database as one consistent image through SQLite (see [`crate::source::sqlite`]): a
/// reader thread fills 1 MiB segments of whole pages in order, and each round of segments is
/// hashed, deduplicated and stored in parallel as for any page-aligned file.
fn read_sqlite(
    shared: &Shared,
    snapshot: crate::source::sqlite::ReadSnapshot,
    path: &std::path::Path,
    page: u32,
    state: &mut FileState,
) -> Result<u64> {
    use std::sync::mpsc::sync_channel;
    let (full_tx, full_rx) = sync_channel::<Vec<u8>>(4);
    let (free_tx, free_rx) = sync_channel::<Vec<u8>>(SQLITE_ROUND + 6);
    let page_len = page as usize;
    let (sums, mut sink) = SumState::split_opt(state.sums.as_deref_mut());
    std::thread::scope(|s| {
        let reader = s.spawn(move || -> Result<crate::source::sqlite::Image> {
            let take = || {
                free_rx
                    .try_recv()
                    .unwrap_or_else(|_| Vec::with_capacity(SEGMENT))
            };
            let mut buf = take();
            let image = snapshot.read_pages(&mut |p| {
                if p.len() != page_len {
                    return Err(Error::invalid(format!(
                        "{}: page size changed to {} while reading",
                        path.display(),
                        p.len()
                    )));
                }
                buf.extend_from_slice(p);
                if buf.len() >= SEGMENT {
                    let full = std::mem::replace(&mut buf, take());
                    full_tx
                        .send(full)
                        .map_err(|_| Error::invalid("backup stopped reading"))?;
                }
                Ok(())
            })?;
            if !buf.is_empty() {
                let _ = full_tx.send(buf);
            }
            Ok(image)
        });
        let processed = (|| -> Result<u64> {
            let mut offset = 0u64;
            loop {
                let mut round: Vec<Vec<u8>> = Vec::with_capacity(SQLITE_ROUND);
                while round.len() < SQLITE_ROUND {
                    match full_rx.recv() {
                        Ok(b) => round.push(b),
                        Err(_) => break,
                    }
                }
                if round.is_empty() {
                    return Ok(offset);
                }
                let round_len: u64 = round.iter().map(|b| b.len() as u64).sum();
                let known = match state.prev.as_mut() {
                    Some(p) => p.chunks_in(offset, offset + round_len),
                    None => Vec::new(),
                };
                let mut starts = Vec::with_capacity(round.len());
                let mut at = offset;
                for b in &round {
                    starts.push(at);
                    at += b.len() as u64;
                }
                let results: Vec<Result<(Vec<ChunkId>, Vec<u128>)>> = round
                    .par_iter()
                    .zip(starts.par_iter())
                    .map(|(data, &at)| store_segment(shared, data, page_len, at, &known, sums))
                    .collect();
                for (segment, data) in results.into_iter().zip(&round) {
                    let (ids, digests) = segment?;
                    if let Some(sink) = sink.as_mut() {
                        sink.extend(&digests);
                    }
                    for id in ids {
                        state.builder.push(id, page_len as u64, state.emit)?;
                    }
                    if let Some(p) = shared.progress {
                        p(data.len() as u64);
                    }
                }
                offset += round_len;
                for mut b in round {
                    b.clear();
                    let _ = free_tx.try_send(b);
                }
            }
        })();
        // Stop the reader if processing failed, then collect its result.
        drop(full_rx);
        let image = reader
            .join()
            .unwrap_or_else(|_| Err(Error::invalid("SQLite reader thread panicked")));
        let size = processed?;
        let image = image?;
        if image.page_size != page || image.bytes() != size {
            return Err(Error::invalid(format!(
                "{}: SQLite image of {} pages of {} bytes, {size} bytes stored",
                path.display(),
                image.pages,
                image.page_size
            )));
        }
        Ok(size)
    })
}

/// Whether a file starts like a SQLite database (it is then read page-aligned). Only a guess for
/// scheduling: `read_file` decides for itself.
/// Checks that a path named with `--sqlite` is a SQLite database; returns its absolute path (a
/// symlink is followed to the database it points to).
fn check_sqlite_source(path: &std::path::Path) -> Result<PathBuf> {
    let shown = path.display();
    let abs = std::fs::canonicalize(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::NotFound(format!("sqlite source {shown}: no such file"))
        } else {
            Error::io_path("resolve", path, e)
        }
    })?;
    let file = File::open(&abs).map_err(|e| Error::io_path("open", path, e))?;
    if !file
        .metadata()
        .map_err(|e| Error::io_path("stat", path, e))?
        .is_file()
    {
        return Err(Error::invalid(format!(
            "sqlite source {shown}: not a regular file"
        )));
    }
    let mut header = [0u8; 100];
    let n = read_full_at(&file, &mut header, 0).map_err(|e| Error::io_path("read", path, e))?;
    if sqlite_page_size(&header[..n]).is_none() {
        return Err(Error::invalid(format!(
            "sqlite source {shown}: not a SQLite database (no SQLite header)"
        )));
    }
    Ok(abs)
}

fn looks_paged(path: &std::path::Path) -> bool {
    let mut header = [0u8; 100];
    File::open(path)
        .and_then(|f| read_full_at(&f, &mut header, 0))
        .is_ok_and(|n| sqlite_page_size(&header[..n]).is_some())
}

/// Reads until `buf` is full or the file ends; returns the bytes read.
fn read_full_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read_at(&mut buf[n..], offset + n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn stamp_of(m: &std::fs::Metadata, content: Content, page_size: u32) -> FileStamp {
    FileStamp {
        size: m.len(),
        mtime_ns: mtime_ns(m),
        ctime_ns: ctime_ns(m),
        ino: m.ino(),
        dev: m.dev(),
        content,
        page_size,
        wal: None,
    }
}

/// The stamp of a database's write-ahead log (`None` when the file is not cut at pages or has
/// no log).
fn wal_stamp(db: &std::path::Path, page_size: u32) -> Option<(u64, i64, i64, u64)> {
    if page_size == 0 {
        return None;
    }
    let mut name = db.as_os_str().to_os_string();
    name.push("-wal");
    std::fs::metadata(&name)
        .ok()
        .map(|m| (m.len(), mtime_ns(&m), ctime_ns(&m), m.ino()))
}

/// Drops the -wal, -shm and -journal files of SQLite databases that are backed up: the
/// database is read through SQLite as one consistent image, and a log restored beside that
/// image would be replayed over it.
fn without_sqlite_siblings(items: Vec<WalkItem>) -> Vec<WalkItem> {
    let files: HashSet<&std::path::Path> = items
        .iter()
        .filter(|i| i.kind == EntryKind::File)
        .map(|i| i.abs.as_path())
        .collect();
    let mut drop = HashSet::new();
    for item in items.iter().filter(|i| i.kind == EntryKind::File) {
        let name = item.abs.as_os_str().as_bytes();
        for suffix in crate::source::sqlite::SIBLING_SUFFIXES {
            if let Some(base) = name.strip_suffix(suffix.as_bytes()) {
                let base = std::path::Path::new(std::ffi::OsStr::from_bytes(base));
                if files.contains(base) && looks_paged(base) {
                    drop.insert(item.abs.clone());
                }
            }
        }
    }
    drop_items(items, &drop)
}

fn drop_items(items: Vec<WalkItem>, drop: &HashSet<PathBuf>) -> Vec<WalkItem> {
    if drop.is_empty() {
        return items;
    }
    items
        .into_iter()
        .filter(|i| !drop.contains(&i.abs))
        .collect()
}

fn unsafe_advise_sequential(file: &File) {
    use std::os::fd::AsRawFd;
    // SAFETY: posix_fadvise only gives the kernel a hint about this open descriptor.
    unsafe {
        libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_SEQUENTIAL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_not_recorded() {
        assert_eq!(
            redact_conninfo("host=/tmp password=hunter2 dbname=app"),
            "host=/tmp password=*** dbname=app"
        );
        assert_eq!(
            redact_conninfo("postgresql://me:hunter2@db.local:5432/app"),
            "postgresql://me:***@db.local:5432/app"
        );
        assert_eq!(
            redact_conninfo("redis://:hunter2@127.0.0.1:6379/0"),
            "redis://:***@127.0.0.1:6379/0"
        );
        assert_eq!(
            redact_conninfo("postgresql://db.local/app"),
            "postgresql://db.local/app"
        );
    }

    #[test]
    fn rdb_header_details() {
        let mut head = b"REDIS0010\xfa\x09redis-ver\x067.0.15\xfa\x0aredis-bits".to_vec();
        let d = rdb_details(&head);
        assert_eq!(
            d,
            vec![
                ("rdb version".to_string(), "10".to_string()),
                ("server version".to_string(), "7.0.15".to_string())
            ]
        );
        // Cut short or not an RDB file: nothing made up.
        head.truncate(14);
        assert_eq!(rdb_details(&head).len(), 1);
        assert!(rdb_details(b"-- PostgreSQL database dump").is_empty());
    }
}

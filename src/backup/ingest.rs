//! Reading what the file cache does not know, and storing it: the files outside the stores,
//! then the stores one at a time, each as a whole, then the named streams. Meanwhile full packs
//! are written, and indexed a few at a time.

use super::BackupOptions;
use super::cache::{Stored, ToRead, cached_stamp};
use super::cdc::{ReadContext, store_whole};
use super::file::{ReadFile, read_file, read_stably};
use super::pgbase::{ReadBase, read_pg_base};
use super::sources::Walk;
use super::writer::Shared;
use crate::chunker::CutMode;
use crate::error::{Error, Result};
use crate::index::IndexReader;
use crate::manifest::Content;
use crate::packer::{Packer, WrittenPack};
use crate::repo::Repo;
use crate::source::capture::{
    CaptureOptions, FileRead, Group, GroupCapture, GroupIo, Seen, capture_group,
};
use crate::source::sqlite::looks_paged;
use crate::source::streams::StreamSource;
use crate::source::walk::{Excludes, WalkItem};
use rayon::prelude::*;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;

/// Files at least this large are read one at a time, with parallel hashing inside the file.
const LARGE_FILE: u64 = 4 << 20;

/// Packs whose blob entries go into one intermediate index transaction. Few large transactions
/// keep the index file small: each transaction of scattered inserts copies most B-tree leaves, and
/// redb reuses the freed pages only later. Measured on W1's first backup: one transaction per
/// pack left a 570 MB index file, eight packs per transaction 79 MB.
const PACKS_PER_INDEX_TXN: usize = 8;

/// What the reads gave.
pub(super) struct Ingested {
    /// The files read outside the stores, by index in [`Walk::items`].
    pub(super) files: Vec<(usize, Result<ReadFile>)>,
    /// Each store's capture.
    pub(super) stores: Vec<Result<GroupCapture<Got>>>,
    /// The streams, each read to its end.
    pub(super) streams: Result<Vec<ReadStream>>,
    /// The PostgreSQL base backups, each read to its end.
    pub(super) bases: Result<Vec<ReadBase>>,
    /// The packs written and fsynced but not yet in the index.
    pub(super) packs: Result<Vec<WrittenPack>>,
    pub(super) written: Written,
}

/// What the backup added to the repository.
pub(super) struct Written {
    pub(super) chunks: u64,
    pub(super) raw_bytes: u64,
    pub(super) stored_bytes: u64,
    /// The number the next pack gets.
    pub(super) next_pack: u32,
}

/// Reads, cuts, hashes and stores everything `to_read` names, the stores and the streams, with
/// `reader` (the index as of the file cache lookups) telling which chunks the repository has.
/// Packs are numbered from `first_pack`.
pub(super) fn ingest(
    repo: &Repo,
    opts: &BackupOptions,
    walk: &Walk,
    to_read: ToRead,
    reader: IndexReader,
    first_pack: u32,
    start_ns: i64,
) -> Ingested {
    let (packer, writer_thread) = Packer::new(
        repo.backend.as_ref(),
        first_pack,
        repo.config.pack_target,
        repo.mac_key(),
    );
    let shared = Shared::new(
        repo,
        reader,
        packer,
        opts.progress,
        opts.raw_sqlite,
        &walk.databases,
    );
    let (files, stores, streams, bases, packs) = std::thread::scope(|s| {
        // Full packs are recorded in the index while reading goes on, a few per transaction, so
        // the index never holds a whole backup's dirty pages and the commit at the end is small.
        // Blobs indexed without a snapshot are harmless: their packs are durable, and the next
        // backup reuses them.
        let writer = s.spawn(|| {
            writer_thread.run(PACKS_PER_INDEX_TXN, &mut |packs| shared.index_packs(packs))
        });
        let files = read_files(&shared, &walk.items, &to_read, start_ns, &opts.capture);
        let stores = capture_stores(&shared, walk, to_read.known, start_ns, &opts.capture);
        // Streams last, one at a time; any failure fails the whole snapshot.
        let streams: Result<Vec<ReadStream>> = opts
            .streams
            .iter()
            .map(|st| read_stream_source(&shared, st, opts.kind == crate::snapshots::PG_WAL))
            .collect();
        let bases: Result<Vec<ReadBase>> = match streams {
            Ok(_) => opts
                .pg_bases
                .iter()
                .map(|b| read_pg_base(&shared, b))
                .collect(),
            Err(_) => Ok(vec![]),
        };
        let finished = shared.packer.finish();
        if finished.is_err() {
            shared.packer.abandon();
        }
        let packs = writer
            .join()
            .unwrap_or_else(|_| Err(Error::invalid("pack writer thread panicked")));
        (files, stores, streams, bases, finished.and(packs))
    });
    let written = Written {
        chunks: shared.new_chunks.load(Ordering::Relaxed),
        raw_bytes: shared.new_raw.load(Ordering::Relaxed),
        stored_bytes: shared.new_stored.load(Ordering::Relaxed),
        next_pack: shared.packer.next_pack_no(),
    };
    Ingested {
        files,
        stores,
        streams,
        bases,
        packs,
        written,
    }
}

/// Reads the files outside the stores: large files one at a time, each read with parallelism
/// inside it; small files in parallel with each other. Either way only a few read buffers exist
/// at once.
fn read_files(
    shared: &Shared,
    items: &[WalkItem],
    to_read: &ToRead,
    start_ns: i64,
    opts: &CaptureOptions,
) -> Vec<(usize, Result<ReadFile>)> {
    let (large, small): (Vec<usize>, Vec<usize>) = to_read
        .files
        .iter()
        .partition(|&&i| items[i].meta.len() >= LARGE_FILE);
    let read = |i: usize| {
        (
            i,
            read_stably(
                shared,
                &items[i],
                to_read.previous[i].as_ref(),
                start_ns,
                opts,
            ),
        )
    };
    // Two lanes of large files side by side: page-aligned databases (parallel inside, but
    // with a barrier per round) and the rest (cut by content, which is sequential), so each
    // fills the other's idle time. Still at most one large file per lane at a time.
    let (paged, streamed): (Vec<usize>, Vec<usize>) = large
        .into_iter()
        .partition(|&i| shared.repo.config.sqlite_pages && looks_paged(&items[i].abs));
    let (mut results, streamed): (Vec<(usize, Result<ReadFile>)>, Vec<_>) = rayon::join(
        || paged.into_iter().map(read).collect(),
        || streamed.into_iter().map(read).collect(),
    );
    results.extend(streamed);
    results.extend(small.into_par_iter().map(read).collect::<Vec<_>>());
    results
}

/// Captures the stores, one at a time, each as a whole; `known` holds, per store, the files the
/// file cache knows.
fn capture_stores(
    shared: &Shared,
    walk: &Walk,
    known: Vec<HashMap<PathBuf, (Seen, Stored)>>,
    start_ns: i64,
    opts: &CaptureOptions,
) -> Vec<Result<GroupCapture<Got>>> {
    walk.groups
        .iter()
        .zip(known)
        .map(|(group, known)| {
            let txn = shared.repo.index.read()?;
            let mut io = StoreIo {
                shared,
                group,
                txn: &txn,
                excludes: &walk.excludes,
                start_ns,
                is_db: HashMap::new(),
            };
            let known = known
                .into_iter()
                .map(|(path, (seen, stored))| (path, (seen, Got::Cached(stored))))
                .collect();
            capture_group(opts, &mut io, known)
        })
        .collect()
}

/// What a store's capture knows of one of its files.
pub(super) enum Got {
    /// From the file cache.
    Cached(Stored),
    Read(Box<ReadFile>),
}

/// A store's files as the backup reaches them.
struct StoreIo<'a, 'r> {
    shared: &'a Shared<'r>,
    group: &'a Group,
    txn: &'a redb::ReadTransaction,
    excludes: &'a Excludes,
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

/// A stream read to its end: its content, size and details for its `Source`.
pub(super) type ReadStream = (Content, u64, Vec<(String, String)>);

/// Reads a stream source to its end; `wal` for an archived WAL file, cut at its 8 KiB pages as
/// a base backup's copy of it is.
fn read_stream_source(shared: &Shared, src: &StreamSource, wal: bool) -> Result<ReadStream> {
    let what = PathBuf::from(&src.name);
    let mode = match wal {
        true => CutMode::Fixed(crate::source::pgbase::PAGE),
        false => CutMode::Cdc,
    };
    let ((content, size), details) = src.read_with(|input, reading| {
        store_whole(shared, input, mode, crate::chunker::WINDOW).ctx(reading, &what)
    })?;
    Ok((content, size, details))
}

//! Reading one file: cut by content or at pages, read again while it changes, and stamped for
//! the file cache when it held still.

use super::cache::stamp_seen;
use super::cdc::{ReadContext, read_cdc};
use super::digests::{sum_record, sum_state};
use super::log::read_log_changes;
use super::mapped::MapWriter;
use super::pages::{Overlay, SEGMENT, read_pages, read_sqlite};
use super::previous::PreviousVersion;
use super::writer::{FileState, Shared};
use crate::chunker::{CutMode, sqlite_page_size};
use crate::error::{Error, IoContext, Result};
use crate::id::ChunkId;
use crate::index::{FileStamp, IndexReader, LogPosition, LogStamp, WalStamp};
use crate::manifest::Content;
use crate::source::capture::{CaptureOptions, Seen, backoff};
use crate::source::read_full_at;
use crate::source::sqlite::{Log, ReadSnapshot, Since, wal_stamp};
use crate::source::wal::LogPos;
use crate::source::walk::WalkItem;
use crate::sys::{ctime_ns, mtime_ns};
use crate::tree::TreeBuilder;
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::Ordering;

/// Files whose ctime is this close to the start of the backup are not trusted for the fast path
/// next time: a later write within the same timestamp tick would go unnoticed.
const RACY_WINDOW_NS: i64 = 100_000_000;

/// Result of reading one file.
pub(super) struct ReadFile {
    pub(super) content: Content,
    pub(super) size: u64,
    /// The bytes read: the size, or less for a database read from its log's new frames.
    pub(super) read: u64,
    pub(super) page_size: u32,
    /// For a database: its image was read inside a SQLite read transaction (one committed state).
    pub(super) through_sqlite: bool,
    /// The stamp to remember, unless the file changed while it was read.
    pub(super) stamp: Option<FileStamp>,
    /// The [`PageSums`](crate::pagesums::PageSums) record to keep with the stamp (encoded, sealed
    /// if encrypted).
    pub(super) sums: Option<Vec<u8>>,
    /// Worth telling the user (a database that had to be copied raw...).
    pub(super) notes: Vec<String>,
    /// The file's stamp when the read began.
    pub(super) seen: Seen,
    /// Whether the bytes are the file as it was at one instant: it did not change while it was
    /// read, or it was read as one consistent image through SQLite.
    pub(super) stable: bool,
    /// Reads it took.
    pub(super) attempts: u32,
}

/// Reads a file again, with backoff, while it changes during the read (at most
/// `opts.retries` more times).
pub(super) fn read_stably(
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

pub(super) fn read_file(
    shared: &Shared,
    item: &WalkItem,
    previous: Option<&FileStamp>,
    start_ns: i64,
) -> Result<ReadFile> {
    let resumable = previous.is_some_and(|p| matches!(p.wal, LogStamp::Frames { .. }));
    match read_once(shared, item, previous, start_ns, true) {
        // Going on from the previous image failed (its chunk list could not be read, say):
        // read the whole database instead.
        Err(_) if resumable => read_once(shared, item, previous, start_ns, false),
        read => read,
    }
}

fn read_once(
    shared: &Shared,
    item: &WalkItem,
    previous: Option<&FileStamp>,
    start_ns: i64,
    resume: bool,
) -> Result<ReadFile> {
    let path = &item.abs;
    let file = File::open(path).ctx("open", path)?;
    let before = file.metadata().ctx("stat", path)?;
    unsafe_advise_sequential(&file);
    let repo = shared.repo;
    let strict = shared.databases.contains(path);
    let page_size = page_size_of(shared, &file, path, strict)?;
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
    let mut sums = sum_state(
        repo,
        &shared.sum_budget,
        path,
        page_size,
        before.len(),
        previous,
    )?;
    let blob_reader = match &prev_index {
        Some(index) => Some(crate::blobs::BlobReader::new(repo, index)?),
        None => None,
    };
    let fetch = |id: &ChunkId| match &blob_reader {
        Some(r) => r.read(id),
        None => Err(Error::not_found("no previous version")),
    };
    let mut prev = match previous {
        Some(p) if p.page_size == page_size => PreviousVersion::of(p, &fetch),
        _ => None,
    };
    // For a file cut by content: the previous version's chunks once more, for `CdcSkip`.
    let cdc_prev = match (mode, previous) {
        (CutMode::Cdc, Some(p))
            if p.page_size == 0 && sums.as_ref().is_some_and(|s| !s.prev.is_empty()) =>
        {
            PreviousVersion::of(p, &fetch).map(|v| (v, p.size))
        }
        _ => None,
    };

    // A database (its main file whole pages: the image may be mostly in its log) is stored as
    // a page map.
    let mut map_writer = (page_size > 0
        && before.len() <= super::mapped::MAX_FILE
        && before.len().is_multiple_of(page_size as u64))
    .then(|| MapWriter::new(page_size, before.len(), SEGMENT, previous, &fetch));
    let mut builder = TreeBuilder::new(shared.key);
    let mut emit = |id: ChunkId, bytes: Vec<u8>| shared.store_node(id, bytes);
    let mut state = FileState {
        prev: prev.as_mut(),
        sums: sums.as_mut(),
        builder: &mut builder,
        map: map_writer.as_mut(),
        emit: &mut emit,
    };
    let wal_before = wal_stamp(path, page_size);
    // Where the previous image ended in the database's log, to go on from there.
    let went_on = match &state.map {
        Some(m) => m.prev.is_some(),
        None => state.prev.is_some(),
    };
    let since = match previous {
        Some(p) if resume && went_on => resume_point(p, &before, follower_place(shared, path)),
        _ => None,
    };
    let mut notes = Vec::new();
    let mut pinned: Option<Pinned> = None;
    let (size, captured) = match mode {
        CutMode::Fixed(page) if !shared.raw_sqlite || strict => {
            let db = Database {
                file: &file,
                path,
                page,
                strict,
                since: since.as_ref(),
            };
            let (size, captured, log) = read_database(shared, &db, &mut state, &mut notes)?;
            pinned = log;
            (size, captured)
        }
        CutMode::Fixed(page) => {
            let size = read_pages(shared, &file, path, page, &mut state, u64::MAX, None)?;
            (size, false)
        }
        CutMode::Cdc => {
            // A window no larger than the file (plus room to decide the last cut).
            let window = (before.len() as usize)
                .saturating_add(1)
                .min(crate::chunker::WINDOW);
            let size = read_cdc(shared, &file, CutMode::Cdc, window, &mut state, cdc_prev)
                .ctx("read", path)?;
            (size, false)
        }
    };
    let content = match (state.map.is_some(), map_writer) {
        (true, Some(writer)) => writer.finish(shared, size)?,
        _ => builder.finish(&mut emit)?,
    };

    let after = std::fs::metadata(path).ctx("stat", path)?;
    let wal_after = wal_stamp(path, page_size);
    // A captured image can be longer than the main file (pages still in the WAL).
    let seen = Seen::of(&before);
    let unchanged =
        seen == Seen::of(&after) && wal_before == wal_after && (captured || size == before.len());
    let racy = ctime_ns(&before) >= start_ns - RACY_WINDOW_NS
        || wal_before.is_some_and(|w| w.mtime_ns >= start_ns - RACY_WINDOW_NS);
    // The content's size is the stamp's when there is no log, else the log's stamp holds it.
    let read = pinned.as_ref().map_or(size, |p| p.read);
    // A log this read created (and removes) is not the database's: it gets no `Frames` stamp.
    let wal = match (pinned, wal_before) {
        (
            Some(Pinned {
                log: Some(log),
                position,
                ..
            }),
            log_before,
        ) if position.frames > 0 || log_before.is_some() => Some(LogStamp::Frames {
            log,
            image: size,
            position,
        }),
        (_, Some(log)) => Some(LogStamp::Log { log, image: size }),
        _ => (size == before.len()).then_some(LogStamp::None),
    };
    let stamp = match wal {
        Some(wal) if unchanged && !racy => Some(FileStamp {
            wal,
            ..stamp_of(&before, content.clone(), page_size, captured)
        }),
        // A database's stamp is kept as the previous version all the same (its page map, its
        // page digests and, for an image that is one committed state, its log's position then,
        // to go on from), but with an mtime no file has, so the file cache never takes it as the
        // file's current state.
        Some(wal) if page_size > 0 || matches!(wal, LogStamp::Frames { .. }) => Some(FileStamp {
            wal,
            mtime_ns: i64::MIN,
            ..stamp_of(&before, content.clone(), page_size, captured)
        }),
        _ => None,
    };
    let sums = match (&stamp, sums) {
        (Some(_), Some(st)) => sum_record(repo, &shared.sum_budget, &content, size, page_size, st)?,
        (_, Some(st)) => {
            shared.sum_budget.fetch_add(st.reserved, Ordering::Relaxed);
            None
        }
        _ => None,
    };
    Ok(ReadFile {
        content,
        size,
        read,
        page_size,
        through_sqlite: captured && page_size > 0,
        stamp,
        sums,
        notes,
        seen,
        stable: captured || unchanged,
        attempts: 1,
    })
}

/// The page size to cut the file at, from its SQLite header (when databases are cut at pages,
/// or it was named as a database), or 0 to cut it by content.
fn page_size_of(shared: &Shared, file: &File, path: &Path, strict: bool) -> Result<u32> {
    let mut header = [0u8; 100];
    let header_len = read_full_at(file, &mut header, 0).ctx("read", path)?;
    Ok(if shared.repo.config.sqlite_pages || strict {
        sqlite_page_size(&header[..header_len]).unwrap_or(0)
    } else {
        0
    })
}

/// A database to read: its open main file, its path and page size, whether it was named as a
/// database, and where its previous image ended in its log.
struct Database<'a> {
    file: &'a File,
    path: &'a Path,
    page: u32,
    strict: bool,
    since: Option<&'a Since>,
}

/// An image read from the main file and the log: the log's stamp, where the image ends in it,
/// and the bytes read (only the changed pages when it went on from the previous image).
struct Pinned {
    log: Option<WalStamp>,
    position: LogPosition,
    read: u64,
}

/// Reads a file that starts like a SQLite database as one consistent image through SQLite;
/// returns its size, whether it was read so and, for an image read from the main file and the
/// log, its place in the log. One SQLite cannot open is copied as it is, with a note, unless it
/// was named as a database (`strict`).
fn read_database(
    shared: &Shared,
    db: &Database,
    state: &mut FileState,
    notes: &mut Vec<String>,
) -> Result<(u64, bool, Option<Pinned>)> {
    let read =
        ReadSnapshot::begin(db.path, db.since).and_then(|snap| read_image(shared, snap, db, state));
    let path = db.path;
    match read {
        Ok((size, pinned)) => Ok((size, true, pinned)),
        // SQLite could not open it (damaged, or only looks like a database): the
        // bytes as they are are still worth keeping.
        // Failing part-way: this file is not backed up (the snapshot is partial).
        Err(e) if db.strict => Err(Error::invalid(format!(
            "{}: cannot read a consistent image through SQLite: {e}",
            path.display()
        ))),
        Err(e) if !state.builder.is_empty() || state.map.as_ref().is_some_and(|m| m.started) => {
            Err(Error::io_path(
                "read",
                path,
                std::io::Error::other(e.to_string()),
            ))
        }
        Err(e) => {
            notes.push(format!(
                "{}: not readable as a SQLite database ({e}); copied as a plain file",
                path.display()
            ));
            // A copy of the bytes as they are is a chunk list, not a page map.
            state.map = None;
            let size = read_pages(shared, db.file, path, db.page, state, u64::MAX, None)?;
            Ok((size, false, None))
        }
    }
}

/// Reads the image a SQLite read transaction holds. In rollback-journal mode, from the file
/// itself (no writer can commit while the transaction lasts). In WAL mode, from the main file
/// with the log's committed frames put over it, or only the frames since the previous image,
/// when the log was parsed; else through SQLite.
fn read_image(
    shared: &Shared,
    snap: ReadSnapshot,
    db: &Database,
    state: &mut FileState,
) -> Result<(u64, Option<Pinned>)> {
    let (path, page) = (db.path, db.page);
    if snap.page_size != page {
        return Err(Error::invalid(format!(
            "{}: page size {} where the header says {page}",
            path.display(),
            snap.page_size
        )));
    }
    let image = snap.image().bytes();
    let (size, pinned) = match (&snap.log, snap.wal) {
        (Log::Unknown, true) => (read_sqlite(shared, snap, path, page, state)?, None),
        (Log::Unknown, false) => (
            read_pages(shared, db.file, path, page, state, image, None)?,
            None,
        ),
        (Log::Pinned(log), _) => {
            let from_journal = match (log.since, db.since, log.stamp) {
                (None, Some(since), Some(now)) => {
                    journal_changes(shared, db, state, since, now, log.position, snap.pages)?
                }
                _ => None,
            };
            let (size, read) = if let Some(done) = from_journal {
                done
            } else if log.since.is_some() {
                read_log_changes(shared, db.file, path, page, state, log, snap.pages)?
            } else {
                let map = log.whole_map()?;
                let overlay = match (&log.file, &map) {
                    (Some(file), Some(map)) => Some(Overlay { log: file, map }),
                    _ => None,
                };
                let size = read_pages(shared, db.file, path, page, state, image, overlay.as_ref())?;
                (size, size)
            };
            let pinned = Pinned {
                log: log.stamp,
                position: log.position,
                read,
            };
            (size, Some(pinned))
        }
    };
    if size != image {
        return Err(Error::invalid(format!(
            "{}: {size} bytes read of a {image}-byte image",
            path.display(),
        )));
    }
    Ok((size, pinned))
}

/// The image of a followed database from its capture journal, when the journal runs from the
/// place the previous image ended at (`since`) to the one this image ends at (`now`, `at`).
fn journal_changes(
    shared: &Shared,
    db: &Database,
    state: &mut FileState,
    since: &Since,
    now: WalStamp,
    at: LogPosition,
    pages: u64,
) -> Result<Option<(u64, u64)>> {
    let Some(writer) = state.map.as_deref_mut() else {
        return Ok(None);
    };
    let pos = |log: &WalStamp, p: &LogPosition| LogPos {
        salt1: log.salt1,
        salt2: log.salt2,
        frame: p.frames,
        checksum: p.checksum,
    };
    let (from, to) = (pos(&since.log, &since.position), pos(&now, &at));
    super::journal::read_journal_changes(
        shared,
        db.path,
        db.page,
        writer,
        state.sums.as_deref_mut(),
        from,
        to,
        pages,
    )
}

/// Where the follower of the database at `path` last was in its log, if one is following it.
fn follower_place(shared: &Shared, path: &Path) -> Option<crate::source::wal::LogPos> {
    let dir = crate::follow::journal_dir(shared.repo, path);
    crate::follow::status(&dir)
        .filter(|s| s.following)
        .and_then(|s| s.place)
}

/// Where the previous image of a database ended in its log, if it was read from the log and
/// the main file is still the same file.
fn resume_point(
    previous: &FileStamp,
    now: &std::fs::Metadata,
    hint: Option<crate::source::wal::LogPos>,
) -> Option<Since> {
    match previous.wal {
        LogStamp::Frames { log, position, .. }
            if previous.ino == now.ino() && previous.dev == now.dev() =>
        {
            Some(Since {
                log,
                position,
                main_unchanged: Seen::of(now) == stamp_seen(previous),
                hint,
            })
        }
        _ => None,
    }
}

fn stamp_of(m: &std::fs::Metadata, content: Content, page_size: u32, sqlite: bool) -> FileStamp {
    FileStamp {
        size: m.len(),
        mtime_ns: mtime_ns(m),
        ctime_ns: ctime_ns(m),
        ino: m.ino(),
        dev: m.dev(),
        content,
        page_size,
        wal: LogStamp::None,
        through_sqlite: sqlite,
    }
}

fn unsafe_advise_sequential(file: &File) {
    use std::os::fd::AsRawFd;
    // SAFETY: posix_fadvise only gives the kernel a hint about this open descriptor.
    unsafe {
        libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_SEQUENTIAL);
    }
}

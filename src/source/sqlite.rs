//! Consistent images of live SQLite databases.
//!
//! Copying a database file while an application writes to it can give a file SQLite cannot open
//! (pages from different transactions), and in WAL mode the newest committed pages are not in
//! the main file at all. strata instead opens the database and starts a read transaction. In
//! rollback-journal mode every committed page is in the main file and no writer can commit while
//! the transaction lasts, so the file itself is read, as fast as any file. In WAL mode the
//! transaction is started and the log parsed ([`crate::source::wal`]) while a second connection
//! holds the writer's lock for that moment ([`PinnedLog`]): the image is then the main file with
//! the log's committed frames put over it, read as fast as the file, or, going on from the
//! previous image, only the frames since. Without that lock (a read-only file, a long
//! transaction), every page is read through the `sqlite_dbpage` table: exactly the pages of one
//! committed state, streamed in page order with bounded memory.
//!
//! Writers are not stopped: in WAL mode they go on committing (the WAL only cannot be
//! checkpointed past the reader until it finishes); in rollback-journal mode a commit waits for
//! the read to end, which takes about as long as reading the file. Nothing is written to the
//! database and no lock outlives the read.
//!
//! Beside the reader: whether a file is a database (`looks_paged`, `check_sqlite_source` for one
//! named with `--sqlite`), the -wal, -shm and -journal files that belong to a live database and
//! not to its image, and the stamp of a database's log, which the file cache compares.

use crate::chunker::sqlite_page_size;
use crate::error::{Error, Result};
use crate::index::{LogPosition, WalStamp};
use crate::manifest::EntryKind;
use crate::source::read_full_at;
use crate::source::wal;
use crate::source::walk::WalkItem;
use crate::sys::mtime_ns;
use rusqlite::config::DbConfig;
use rusqlite::{Connection, OpenFlags};
use std::collections::HashSet;
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long to wait for a writer's exclusive lock (a commit in progress) before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);
/// How often to try again while a writer holds the lock.
const BUSY_POLL: Duration = Duration::from_micros(500);

/// SQLite's own busy handler backs off to one try every 100 ms. A writer that commits
/// continuously holds its exclusive lock for a moment per commit and takes it again at once, so
/// such tries keep landing inside a commit: a snapshot once waited 10 s that way. Trying every
/// half millisecond finds the gap between two commits.
fn busy(tries: i32) -> bool {
    if BUSY_POLL * (tries.max(0) as u32) >= BUSY_TIMEOUT {
        return false;
    }
    std::thread::sleep(BUSY_POLL);
    true
}

/// Sibling files SQLite keeps beside a database; they belong to the live file, not to an image.
pub const SIBLING_SUFFIXES: [&str; 3] = ["-wal", "-shm", "-journal"];

/// The paths of `db`'s -wal, -shm and -journal files.
pub fn siblings(db: &Path) -> impl Iterator<Item = std::path::PathBuf> + '_ {
    SIBLING_SUFFIXES
        .iter()
        .map(move |suffix| sibling(db, suffix))
}

/// The path of `db` with `suffix` appended (`-wal`...).
pub(crate) fn sibling(db: &Path, suffix: &str) -> PathBuf {
    let mut name = db.as_os_str().to_os_string();
    name.push(suffix);
    PathBuf::from(name)
}

/// What a capture saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Image {
    pub page_size: u32,
    pub pages: u64,
}

impl Image {
    pub fn bytes(&self) -> u64 {
        self.page_size as u64 * self.pages
    }
}

fn sql_err(path: &Path, e: rusqlite::Error) -> Error {
    Error::invalid(format!("{}: SQLite: {e}", path.display()))
}

fn open(path: &Path, write: bool) -> Result<Connection> {
    let access = if write {
        OpenFlags::SQLITE_OPEN_READ_WRITE
    } else {
        OpenFlags::SQLITE_OPEN_READ_ONLY
    };
    let mut conn = Connection::open_with_flags(
        path,
        access | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI,
    )
    .map_err(|e| sql_err(path, e))?;
    conn.busy_handler(Some(busy))
        .map_err(|e| sql_err(path, e))?;
    // Closing must leave the application's log as it is: no checkpoint into the main file, and
    // no log removed, whoever else has the database open.
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)
        .map_err(|e| sql_err(path, e))?;
    Ok(conn)
}

/// A connection for a follower (see `crate::follow`): read-write (it runs checkpoints), waiting
/// on locks like every other, and never checkpointing or removing the log on close.
pub(crate) fn open_follower(path: &Path) -> Result<Connection> {
    open(path, true)
}

/// Removes the `-wal` and `-shm` files a read created beside a database that had neither, once
/// its connection is closed (dropped after it).
struct FreshLog(Option<PathBuf>);

impl FreshLog {
    /// Notes, before a read opens `db`, whether it has neither a `-wal` nor a `-shm` file.
    fn before(db: &Path) -> FreshLog {
        let absent = |suffix| matches!(std::fs::symlink_metadata(sibling(db, suffix)), Err(e) if e.kind() == std::io::ErrorKind::NotFound);
        FreshLog((absent("-wal") && absent("-shm")).then(|| db.to_path_buf()))
    }
}

impl Drop for FreshLog {
    fn drop(&mut self) {
        let Some(db) = &self.0 else {
            return;
        };
        let wal = sibling(db, "-wal");
        match std::fs::symlink_metadata(&wal) {
            // Frames in the log are another connection's commits: it stays.
            Ok(m) if m.len() > 0 => return,
            Ok(_) => {}
            Err(_) if !sibling(db, "-shm").exists() => return,
            Err(_) => {}
        }
        // SQLite removes a WAL database's -wal and -shm when its last connection closes: a
        // connection that may checkpoint on close does so only if it takes the exclusive lock,
        // which no other open connection allows. The log is empty: nothing is checkpointed.
        let Ok(conn) = Connection::open_with_flags(
            db,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        ) else {
            return;
        };
        let _ = conn.query_row("SELECT count(*) FROM sqlite_schema", [], |r| {
            r.get::<_, i64>(0)
        });
        let _ = conn.close();
    }
}

/// A read transaction on a database: while it lives, the committed state it sees cannot change
/// under it.
pub struct ReadSnapshot {
    conn: Connection,
    /// Dropped after `conn` is closed.
    _fresh: FreshLog,
    path: std::path::PathBuf,
    pub page_size: u32,
    pub pages: u64,
    /// The database is in WAL mode: committed pages may be in the log. Otherwise every committed
    /// page is in the main file, and no writer can commit until this snapshot ends, so the
    /// file's first `page_size * pages` bytes are the image.
    pub wal: bool,
    /// In WAL mode, where the image's pages are.
    pub log: Log,
}

/// Where the pages of a WAL database's image are.
pub enum Log {
    /// Not known: the image must be read through SQLite ([`ReadSnapshot::read_pages`]).
    Unknown,
    /// The log was parsed while no writer could append to it (see [`ReadSnapshot::begin`]).
    Pinned(PinnedLog),
}

/// A database's log as a read transaction sees it, parsed while no writer could commit.
///
/// The read transaction holds the image in place afterwards: either it uses frames of the log,
/// and then no checkpoint moves past them and the log is not reset, so those frames and every
/// page of the main file they do not replace stay as they are; or it uses none (everything was
/// already in the main file), and then no checkpoint writes into the main file at all, though
/// the log may be reset and written over. Each frame is checked again when it is read
/// ([`wal::read_frame`]): one written over is found out, and its page then comes from the main
/// file, which holds the image whole in that case.
pub struct PinnedLog {
    /// The `-wal` file, `None` when there is none (or no valid header: SQLite then treats the
    /// log as empty): the main file holds the whole image.
    pub file: Option<File>,
    /// The committed frames: the whole log, or those after `since` when `since` is given.
    pub map: Option<wal::LogMap>,
    /// The image ends at this position of the log (where the next backup may go on from).
    pub position: LogPosition,
    /// The log's stamp while no writer could change it: the state of the log the image is.
    pub stamp: Option<WalStamp>,
    /// The map holds only the frames after this position, which an earlier image ended at: the
    /// image is that one with these frames' pages put in.
    pub since: Option<LogPosition>,
    /// The map starts at a follower's place (see [`Since::hint`]), not where an image ended:
    /// it is not an overlay for the main file; [`PinnedLog::whole_map`] is.
    pub partial: bool,
}

/// The previous image of a database, for [`ReadSnapshot::begin`]: the stamp of the log it was
/// read from and where it ended in it, and whether the main file is as it was then.
#[derive(Clone, Copy, Debug)]
pub struct Since {
    pub log: WalStamp,
    pub position: LogPosition,
    /// The main file's stamp has not changed since that image was read. A log is only reset
    /// once all its frames are in the main file, and that writes the main file: with the main
    /// file unchanged, the previous image is the main file with, at most, the frames of the log
    /// as it is now.
    pub main_unchanged: bool,
    /// A later place in the log, known to end a committed transaction (a follower's, which
    /// checked every frame up to it): when the log no longer holds `position`, only the frames
    /// after this one are parsed while writers wait (the image then comes from the follower's
    /// journal; see [`PinnedLog::partial`]).
    pub hint: Option<wal::LogPos>,
}

impl ReadSnapshot {
    /// Opens `path` and starts a read transaction. A WAL database's log is parsed too, if a
    /// writer's lock can be had for that moment (see [`PinnedLog`]); with `since`, only its
    /// frames after that earlier position, if the log still holds it.
    pub fn begin(path: &Path, since: Option<&Since>) -> Result<ReadSnapshot> {
        let fresh = FreshLog::before(path);
        let pinned = if in_wal_mode(path) {
            Self::begin_pinned(path, since).ok()
        } else {
            None
        };
        match pinned {
            Some(snap) => Ok(snap),
            None => Self::begin_plain(path),
        }
        .map(|mut snap| {
            snap._fresh = fresh;
            snap
        })
    }

    /// A read transaction alone.
    fn begin_plain(path: &Path) -> Result<ReadSnapshot> {
        // Read-only first: such a connection never touches the application's journal. A WAL
        // database whose -shm does not exist yet needs write access to set it up (nothing is
        // written to the database itself).
        Self::begin_with(path, false).or_else(|_| Self::begin_with(path, true))
    }

    /// A read transaction started, and the log parsed, while another connection holds the
    /// writer's lock: no commit falls between the two, so the log's committed frames are
    /// exactly those the transaction sees. The lock is released before the image is read;
    /// writers wait only for the parse (of the frames after `since`, when it still holds).
    fn begin_pinned(path: &Path, since: Option<&Since>) -> Result<ReadSnapshot> {
        let mut writer = open(path, true)?;
        writer
            .busy_handler(Some(busy_briefly))
            .map_err(|e| sql_err(path, e))?;
        writer
            .execute_batch("BEGIN IMMEDIATE")
            .map_err(|e| sql_err(path, e))?;
        let snap = (|| {
            let mut snap = Self::begin_plain(path)?;
            if snap.wal {
                snap.log = Log::Pinned(pin_log(path, &snap, since)?);
            }
            Ok(snap)
        })();
        let _ = writer.execute_batch("ROLLBACK");
        snap
    }

    fn begin_with(path: &Path, write: bool) -> Result<ReadSnapshot> {
        let conn = open(path, write)?;
        conn.execute_batch("BEGIN DEFERRED")
            .map_err(|e| sql_err(path, e))?;
        let snap = (|| {
            // The first read takes the snapshot (and the shared lock in rollback mode).
            let _: i64 = conn
                .query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0))
                .map_err(|e| sql_err(path, e))?;
            let mode: String = conn
                .query_row("PRAGMA journal_mode", [], |r| r.get(0))
                .map_err(|e| sql_err(path, e))?;
            let page_size: i64 = conn
                .query_row("PRAGMA page_size", [], |r| r.get(0))
                .map_err(|e| sql_err(path, e))?;
            let pages: i64 = conn
                .query_row("PRAGMA page_count", [], |r| r.get(0))
                .map_err(|e| sql_err(path, e))?;
            Ok((mode.eq_ignore_ascii_case("wal"), page_size, pages))
        })();
        match snap {
            Ok((wal, page_size, pages)) => Ok(ReadSnapshot {
                conn,
                _fresh: FreshLog(None),
                path: path.to_path_buf(),
                page_size: page_size as u32,
                pages: pages as u64,
                wal,
                log: Log::Unknown,
            }),
            Err(e) => {
                let _ = conn.execute_batch("ROLLBACK");
                Err(e)
            }
        }
    }

    pub fn image(&self) -> Image {
        Image {
            page_size: self.page_size,
            pages: self.pages,
        }
    }

    /// Hands every page of the snapshot, in order, to `on_page`.
    pub fn read_pages(&self, on_page: &mut dyn FnMut(&[u8]) -> Result<()>) -> Result<Image> {
        let path = &self.path;
        let mut stmt = self
            .conn
            .prepare("SELECT pgno, data FROM sqlite_dbpage")
            .map_err(|e| sql_err(path, e))?;
        let mut rows = stmt.query([]).map_err(|e| sql_err(path, e))?;
        let mut pages = 0u64;
        while let Some(row) = rows.next().map_err(|e| sql_err(path, e))? {
            let pgno: i64 = row.get(0).map_err(|e| sql_err(path, e))?;
            let data = row
                .get_ref(1)
                .and_then(|v| v.as_blob().map_err(Into::into))
                .map_err(|e| sql_err(path, e))?;
            pages += 1;
            if pgno as u64 != pages || data.len() != self.page_size as usize {
                return Err(Error::invalid(format!(
                    "{}: SQLite returned page {pgno} of {} bytes where page {pages} of {} was \
                     expected",
                    path.display(),
                    data.len(),
                    self.page_size
                )));
            }
            on_page(data)?;
        }
        if pages != self.pages {
            return Err(Error::invalid(format!(
                "{}: read {pages} pages of {}",
                path.display(),
                self.pages
            )));
        }
        Ok(self.image())
    }

    /// Hands every page of the snapshot, in order, to `on_full` in buffers of whole pages, each
    /// of at least `segment` bytes but the last (handed on unless empty, whatever `on_full` then
    /// says). Empty buffers come from `take`. Stops at the first error of `on_full`, or at a page
    /// of another size than the snapshot's.
    pub fn read_segments(
        &self,
        segment: usize,
        mut take: impl FnMut() -> Vec<u8>,
        mut on_full: impl FnMut(Vec<u8>) -> Result<()>,
    ) -> Result<Image> {
        let page_len = self.page_size as usize;
        let mut buf = take();
        let image = self.read_pages(&mut |p| {
            if p.len() != page_len {
                return Err(Error::invalid(format!(
                    "{}: page size changed to {} while reading",
                    self.path.display(),
                    p.len()
                )));
            }
            buf.extend_from_slice(p);
            if buf.len() >= segment {
                let full = std::mem::replace(&mut buf, take());
                on_full(full)?;
            }
            Ok(())
        })?;
        if !buf.is_empty() {
            let _ = on_full(buf);
        }
        Ok(image)
    }
}

impl Drop for ReadSnapshot {
    fn drop(&mut self) {
        // Ends the read transaction (nothing was written).
        let _ = self.conn.execute_batch("ROLLBACK");
    }
}

/// Reads a consistent image of the database at `path` through SQLite, handing each page, in
/// order, to `on_page`.
pub fn capture(path: &Path, on_page: &mut dyn FnMut(&[u8]) -> Result<()>) -> Result<Image> {
    ReadSnapshot::begin_plain(path)?.read_pages(on_page)
}

/// How long to wait for the writer's lock to parse a log: a writer holding it longer (a long
/// transaction) is not waited for; the image is then read through SQLite.
const PIN_TIMEOUT: Duration = Duration::from_secs(2);

fn busy_briefly(tries: i32) -> bool {
    if BUSY_POLL * (tries.max(0) as u32) >= PIN_TIMEOUT {
        return false;
    }
    std::thread::sleep(BUSY_POLL);
    true
}

/// Whether the database header says WAL mode (file format versions at bytes 18 and 19 are 2).
pub(crate) fn in_wal_mode(path: &Path) -> bool {
    let mut header = [0u8; 20];
    File::open(path)
        .and_then(|f| read_full_at(&f, &mut header, 0))
        .is_ok_and(|n| n == header.len() && header[18] == 2 && header[19] == 2)
}

/// Parses the log of the database `snap` reads (the writer's lock held), from `since` when the
/// log still holds that position.
fn pin_log(path: &Path, snap: &ReadSnapshot, since: Option<&Since>) -> Result<PinnedLog> {
    let wal_path = sibling(path, "-wal");
    let stamp = wal_stamp(path, snap.page_size);
    let file = match File::open(&wal_path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(PinnedLog::empty(None)),
        Err(e) => return Err(Error::io_path("open", &wal_path, e)),
    };
    let Some(header) =
        wal::Header::read(&file).map_err(|e| Error::io_path("read", &wal_path, e))?
    else {
        // No valid header: SQLite treats the log as empty.
        return Ok(PinnedLog::empty(stamp));
    };
    if header.page_size != snap.page_size {
        return Err(Error::invalid(format!(
            "{}: log of {}-byte pages for a database of {}-byte pages",
            wal_path.display(),
            header.page_size,
            snap.page_size
        )));
    }
    // Where the previous image ended in this log: at its recorded position if the log is the
    // same one and still holds it; before this log's first frame if the main file has not
    // changed since (see `Since::main_unchanged`).
    let resume = since.and_then(|s| {
        let same = s.log.checkpoint == header.checkpoint
            && s.log.salt1 == header.salt1
            && s.log.salt2 == header.salt2;
        if same && wal::holds(&file, &header, s.position.frames, s.position.checksum) {
            Some(s.position)
        } else if s.main_unchanged {
            Some(LogPosition {
                frames: 0,
                checksum: header.checksum(),
            })
        } else {
            None
        }
    });
    let hint = match resume {
        Some(_) => None,
        None => since.and_then(|s| s.hint).filter(|h| {
            header.owns(h) && h.frame > 0 && wal::holds(&file, &header, h.frame, h.checksum)
        }),
    };
    let map = match (resume, hint) {
        (Some(p), _) => wal::LogMap::scan_from(&file, header, p.frames + 1, p.checksum)?,
        (None, Some(h)) => wal::LogMap::scan_from(&file, header, h.frame + 1, h.checksum)?,
        (None, None) => wal::LogMap::scan(&file, header)?,
    };
    // The committed log ends where the transaction's image does: SQLite counts the pages.
    if map.frames >= map.from && map.db_pages as u64 != snap.pages {
        return Err(Error::invalid(format!(
            "{}: the log's last commit has {} pages, SQLite reads {}",
            path.display(),
            map.db_pages,
            snap.pages
        )));
    }
    Ok(PinnedLog {
        position: LogPosition {
            frames: map.frames,
            checksum: map.checksum,
        },
        since: resume,
        partial: hint.is_some(),
        stamp,
        file: Some(file),
        map: Some(map),
    })
}

impl PinnedLog {
    /// A log with no frame: the main file holds the image.
    fn empty(stamp: Option<WalStamp>) -> PinnedLog {
        PinnedLog {
            file: None,
            map: None,
            position: LogPosition {
                frames: 0,
                checksum: (0, 0),
            },
            stamp,
            since: None,
            partial: false,
        }
    }

    /// The map of every committed frame up to where the image ends: `map` itself, or for a
    /// partial one, the log read again from its first frame to that place (no frame there
    /// moves while the read transaction lasts).
    pub fn whole_map(&self) -> Result<Option<std::borrow::Cow<'_, wal::LogMap>>> {
        let (Some(file), Some(map)) = (&self.file, &self.map) else {
            return Ok(None);
        };
        if !self.partial {
            return Ok(Some(std::borrow::Cow::Borrowed(map)));
        }
        let h = map.header;
        let whole = wal::LogMap::scan_between(file, h, 1, h.checksum(), self.position.frames)?;
        if whole.frames != self.position.frames || whole.checksum != self.position.checksum {
            return Err(Error::corrupt(
                "the log changed under a read transaction (its frames do not end where they did)",
            ));
        }
        Ok(Some(std::borrow::Cow::Owned(whole)))
    }
}

/// `PRAGMA integrity_check` of the database at `path`: `Ok(())` or what SQLite reported.
///
/// The file is opened `immutable`: exactly its bytes are checked, and SQLite creates no `-wal`
/// or `-shm` file beside it (a read-only open of a WAL-mode database would, and leave them).
/// Meant for a file just restored, which nothing else writes yet.
pub fn integrity_check(path: &Path) -> Result<std::result::Result<(), String>> {
    check_image(path, true)
}

/// `PRAGMA integrity_check` (`full`) or `PRAGMA quick_check` of the image at `path`, opened as
/// [`integrity_check`] opens it. The quick check walks every page of every b-tree as the full
/// one does, and leaves out what costs the most: comparing each index with its table (and the
/// UNIQUE constraints that comparison proves).
pub fn check_image(path: &Path, full: bool) -> Result<std::result::Result<(), String>> {
    let conn = open_image(path)?;
    // Pages are read through a map of the file, not copied into SQLite's cache one by one.
    conn.pragma_update(None, "mmap_size", MMAP_MAX)
        .map_err(|e| sql_err(path, e))?;
    let pragma = match full {
        true => "PRAGMA integrity_check",
        false => "PRAGMA quick_check",
    };
    let mut stmt = conn.prepare(pragma).map_err(|e| sql_err(path, e))?;
    let lines: Vec<String> = stmt
        .query_map([], |r| r.get(0))
        .and_then(|rows| rows.collect())
        .map_err(|e| sql_err(path, e))?;
    Ok(if lines == ["ok"] {
        Ok(())
    } else {
        Err(lines.join("; "))
    })
}

/// The most of a database image a check maps into memory (SQLite caps it at its own limit).
const MMAP_MAX: i64 = 1 << 40;

/// Opens the database image at `path` read-only and `immutable` (see [`integrity_check`]).
pub(crate) fn open_image(path: &Path) -> Result<Connection> {
    use std::os::unix::ffi::OsStrExt;
    let mut uri = String::from("file:");
    for &b in path.as_os_str().as_bytes() {
        match b {
            b'%' | b'?' | b'#' => uri.push_str(&format!("%{b:02X}")),
            b if b.is_ascii() => uri.push(b as char),
            b => uri.push_str(&format!("%{b:02X}")),
        }
    }
    uri.push_str("?immutable=1");
    Connection::open_with_flags(
        &uri,
        OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI,
    )
    .map_err(|e| sql_err(path, e))
}

/// Opens the live database at `path` for writing, waiting out other connections' locks as a
/// capture's reads do; closing it leaves the log to the application.
pub(crate) fn open_live(path: &Path) -> Result<Connection> {
    open(path, true)
}

/// Checks that a path named with `--sqlite` is a SQLite database; returns its absolute path (a
/// symlink is followed to the database it points to).
pub(crate) fn check_sqlite_source(path: &std::path::Path) -> Result<PathBuf> {
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

/// Whether a file starts like a SQLite database (it is then read page-aligned). Only a guess for
/// scheduling: `read_file` decides for itself.
pub(crate) fn looks_paged(path: &std::path::Path) -> bool {
    let mut header = [0u8; 100];
    File::open(path)
        .and_then(|f| read_full_at(&f, &mut header, 0))
        .is_ok_and(|n| sqlite_page_size(&header[..n]).is_some())
}

/// The stamp of a database's write-ahead log (`None` when the file is not cut at pages or has
/// no log). The `-shm` file is left out: readers write it.
pub(crate) fn wal_stamp(db: &Path, page_size: u32) -> Option<WalStamp> {
    if page_size == 0 {
        return None;
    }
    let file = File::open(sibling(db, "-wal")).ok()?;
    let meta = file.metadata().ok()?;
    // magic, format version, page size, checkpoint sequence, salt-1, salt-2 (big-endian).
    let mut header = [0u8; 24];
    let n = read_full_at(&file, &mut header, 0).unwrap_or(0);
    if n < header.len() {
        header = [0u8; 24];
    }
    let word = |at: usize| {
        u32::from_be_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]])
    };
    Some(WalStamp {
        size: meta.len(),
        mtime_ns: mtime_ns(&meta),
        checkpoint: word(12),
        salt1: word(16),
        salt2: word(20),
    })
}

/// Drops the -wal, -shm and -journal files of SQLite databases that are backed up: the
/// database is read through SQLite as one consistent image, and a log restored beside that
/// image would be replayed over it.
pub(crate) fn without_sqlite_siblings(items: Vec<WalkItem>) -> Vec<WalkItem> {
    let files: HashSet<&std::path::Path> = items
        .iter()
        .filter(|i| i.kind == EntryKind::File)
        .map(|i| i.abs.as_path())
        .collect();
    let mut drop = HashSet::new();
    for item in items.iter().filter(|i| i.kind == EntryKind::File) {
        let name = item.abs.as_os_str().as_bytes();
        for suffix in SIBLING_SUFFIXES {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integrity_check_leaves_no_files_behind() {
        let dir = tempfile::tempdir().unwrap();
        // A name that needs escaping in a URI.
        let path = dir.path().join("odd ?#% name.db");
        let c = Connection::open(&path).unwrap();
        c.execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE t(a); INSERT INTO t VALUES (1);")
            .unwrap();
        drop(c);
        let names = || {
            let mut v: Vec<String> = std::fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        };
        assert_eq!(names(), vec!["odd ?#% name.db".to_string()]);
        assert_eq!(integrity_check(&path).unwrap(), Ok(()));
        assert_eq!(check_image(&path, false).unwrap(), Ok(()));
        assert_eq!(names(), vec!["odd ?#% name.db".to_string()]);
        // Damage never passes, either check.
        let mut bytes = std::fs::read(&path).unwrap();
        let page = bytes.len() / 2;
        bytes[page..page + 200].fill(0x5A);
        std::fs::write(&path, &bytes).unwrap();
        assert!(!matches!(integrity_check(&path), Ok(Ok(()))));
        assert!(!matches!(check_image(&path, false), Ok(Ok(()))));
    }

    #[test]
    fn captures_committed_state_including_the_wal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let w = Connection::open(&path).unwrap();
        w.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0;
             CREATE TABLE t(x INTEGER, pad BLOB);",
        )
        .unwrap();
        for i in 0..200 {
            w.execute("INSERT INTO t VALUES (?1, zeroblob(500))", [i])
                .unwrap();
        }
        // The rows are in the WAL, not in the main file.
        assert!(dir.path().join("db-wal").metadata().unwrap().len() > 0);

        let mut image = Vec::new();
        let info = capture(&path, &mut |p| {
            image.extend_from_slice(p);
            Ok(())
        })
        .unwrap();
        assert_eq!(image.len() as u64, info.bytes());
        let copy = dir.path().join("copy");
        std::fs::write(&copy, &image).unwrap();
        assert_eq!(integrity_check(&copy).unwrap(), Ok(()));
        let c = Connection::open(&copy).unwrap();
        let n: i64 = c
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 200);

        // Not a database: a clear error.
        let junk = dir.path().join("junk");
        std::fs::write(&junk, vec![7u8; 8192]).unwrap();
        assert!(capture(&junk, &mut |_| Ok(())).is_err());
    }
}

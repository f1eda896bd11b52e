//! The follower: copies each transaction a WAL database commits into its capture journal as the
//! transaction appears in the log, and takes over checkpoints so that the log never moves on
//! past frames it has not copied.
//!
//! **Pinning.** The follower holds a read transaction at all times, on one of two connections
//! in turn. A reader whose snapshot uses the log (SQLite's read marks 1 and up) keeps every
//! checkpoint from copying frames past its mark and the log from being reset; a reader that
//! started when the whole log was already in the main file (read mark 0) keeps every checkpoint
//! from writing at all. Every round (at most one each 25 ms, when the log changes) reads the log
//! to its end and appends what it found to the journal. Every 5 s the read transaction moves
//! on: the new one is taken first, the log read to its end, the journal fsynced, and only
//! then the old one ended. So a frame can be written over (the log reset) only after it was
//! copied and made durable.
//!
//! **Checkpoints.** The application's own automatic checkpoints go on (PASSIVE, they stop at
//! the follower's mark). Once the log holds [`FollowOptions::checkpoint_frames`] frames (at most
//! every 5 s) the follower lets go of it: it makes its journal durable, ends its read
//! transaction and copies on without one (for at most a second), so that the application's
//! next automatic checkpoint can copy the whole log and its next writer reset it; what the old
//! generation held past the place is copied from the reset log (see [`Follower::copy`]). When
//! letting go did not get the log reset, or the log is four times the threshold, the follower
//! runs a PASSIVE checkpoint itself as it lets go. Past [`FollowOptions::emergency_frames`] (a
//! writer that never pauses), it takes the writer's lock for one checkpoint (`BEGIN
//! IMMEDIATE`, nothing written): the application's writers wait up to their own busy timeout.
//!
//! **Losing its place.** The follower goes on only from a place it can prove: the last frame
//! it copied still carries the salts and checksum it had, or the log was reset exactly once
//! (its first salt one more). Otherwise (the log cut short or written over
//! by another process, the database replaced, its journal mode switched away from WAL) it says
//! why, and starts a new chain at the log's end: snapshots then read the database whole once.

use super::journal::{Entry, JournalWriter};
use crate::error::{Error, IoContext, Result};
use crate::source::read_full_at;
use crate::source::sqlite::{in_wal_mode, open_follower, sibling};
use crate::source::wal::{Header, LogMap, LogPos, TxnReader, committed_end, holds};
use rusqlite::Connection;
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The read transaction moves on (after an fsync of the journal) at most this often.
const ADVANCE_EVERY: Duration = Duration::from_secs(5);
/// After its checkpoint, the follower waits this long at most without a read transaction for
/// the application to reset the log.
const UNPINNED_MAX: Duration = Duration::from_secs(1);
/// The follower's own PASSIVE checkpoints come at most this often.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(5);
/// A database written to within this long is busy: rounds come every `poll`, not on writes.
const BUSY_FOR: Duration = Duration::from_secs(1);
/// The longest wait of an idle follower for a write (its periodic work runs at least this
/// often).
const IDLE_WAIT: Duration = Duration::from_millis(250);

/// How a follower runs.
#[derive(Clone, Debug)]
pub struct FollowOptions {
    /// The wait between two rounds while the database is busy (or always, without inotify).
    pub poll: Duration,
    /// The shortest time between two rounds.
    pub min_round: Duration,
    /// Frames in the log past which the follower runs a PASSIVE checkpoint.
    pub checkpoint_frames: u32,
    /// Frames in the log past which the follower takes the writer's lock to reset it.
    pub emergency_frames: u32,
    /// Frames read from the log per journal record (a larger transaction goes in pieces).
    pub batch_frames: u32,
    /// Journal segments last written longer ago than this are removed.
    pub keep: Duration,
}

impl Default for FollowOptions {
    fn default() -> Self {
        FollowOptions {
            poll: Duration::from_millis(20),
            min_round: Duration::from_millis(25),
            checkpoint_frames: 1000,
            emergency_frames: 1 << 16,
            batch_frames: 4096,
            keep: Duration::from_secs(24 * 3600),
        }
    }
}

/// What a follower reports (also written, as JSON, to `status.json` in its journal).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Status {
    pub database: PathBuf,
    pub pid: u32,
    /// The follower runs (false in the status it writes as it stops).
    pub running: bool,
    /// Whether the follower has a place in the log (it has none before the database has a log,
    /// and from losing its place until it finds the log's end again).
    pub following: bool,
    /// Transactions and pages copied since the follower started.
    pub transactions: u64,
    pub pages: u64,
    /// Unix milliseconds of the last round that read the log to its end.
    pub caught_up_ms: i64,
    /// Where that round ended in the log (a snapshot parses the log only past it).
    pub place: Option<LogPos>,
    /// Frames in the log now, and its size in bytes.
    pub log_frames: u32,
    pub log_bytes: u64,
    pub checkpoints: u64,
    pub resets: u64,
    /// Places lost (each costs the next snapshot a full read), and the last reason.
    pub fallbacks: u64,
    pub last_fallback: Option<String>,
}

/// Where the follower is in the log.
#[derive(Clone, Copy, Debug)]
struct Place {
    header: Header,
    pos: LogPos,
    db_pages: u32,
    /// The log file was empty (truncated) when last looked at.
    truncated: bool,
}

/// The salts of frame `n` of the log (`None` past its end).
fn frame_salts(log: &File, header: &Header, n: u32) -> Result<Option<(u32, u32)>> {
    let mut b = [0u8; 16];
    let got =
        read_full_at(log, &mut b, header.frame_offset(n)).map_err(|e| Error::io("read log", e))?;
    if got < b.len() {
        return Ok(None);
    }
    let word = |at: usize| u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
    Ok(Some((word(8), word(12))))
}

/// Follows one database.
pub struct Follower {
    path: PathBuf,
    dir: PathBuf,
    journal: JournalWriter,
    conns: [Connection; 2],
    pinned: Option<usize>,
    place: Option<Place>,
    identity: (u64, u64),
    /// The database file, open for as long as the follower's connections are: closing any
    /// descriptor of it would drop every POSIX lock this process holds on it, SQLite's too
    /// (and then an application closing its last connection would checkpoint and remove the
    /// log under the follower).
    main: File,
    page_size: u32,
    opts: FollowOptions,
    pub status: Status,
    last_status: Option<Instant>,
    last_checkpoint: Option<Instant>,
    last_prune: Option<Instant>,
    last_advance: Option<Instant>,
    /// The log was reset since the follower last let go of it (true before the first time).
    reset_since_let_go: bool,
    /// Pinned without a break since a round found no log: a new one starts at its first frame.
    since_empty: bool,
    /// A checkpoint ran with no read transaction held since the last copy: a reset log may
    /// have frames of its old generation not copied yet.
    window: bool,
}

fn now_ns() -> i64 {
    chrono::Utc::now().timestamp_nanos_opt().unwrap_or(i64::MAX)
}

fn sql(path: &Path, e: rusqlite::Error) -> Error {
    Error::invalid(format!("{}: SQLite: {e}", path.display()))
}

impl Follower {
    /// A follower of the WAL database at `path` keeping its journal in `dir`.
    pub fn new(path: &Path, dir: &Path, opts: FollowOptions) -> Result<Follower> {
        let meta = std::fs::metadata(path).ctx("stat", path)?;
        if !in_wal_mode(path) {
            return Err(Error::invalid(format!(
                "{}: not in WAL mode; switch it with `PRAGMA journal_mode=WAL` (a database in \
                 rollback-journal mode is backed up by scheduled snapshots only)",
                path.display()
            )));
        }
        let main = File::open(path).ctx("open", path)?;
        let conns = [open_follower(path)?, open_follower(path)?];
        let page_size: i64 = conns[0]
            .query_row("PRAGMA page_size", [], |r| r.get(0))
            .map_err(|e| sql(path, e))?;
        let page_size = u32::try_from(page_size)
            .ok()
            .filter(|p| p.is_power_of_two() && (512..=65536).contains(p))
            .ok_or_else(|| Error::invalid(format!("{}: page size {page_size}", path.display())))?;
        let journal = JournalWriter::open(dir, page_size)?;
        Ok(Follower {
            path: path.to_path_buf(),
            dir: dir.to_path_buf(),
            journal,
            conns,
            pinned: None,
            place: None,
            identity: (meta.dev(), meta.ino()),
            main,
            page_size,
            opts,
            status: Status {
                database: path.to_path_buf(),
                pid: std::process::id(),
                ..Status::default()
            },
            last_status: None,
            last_checkpoint: None,
            last_prune: None,
            last_advance: None,
            reset_since_let_go: true,
            since_empty: false,
            window: false,
        })
    }

    /// Follows until `stop` is set, waiting for the log to change between rounds.
    pub fn run(&mut self, stop: &AtomicBool) -> Result<()> {
        let mut watch = super::watch::LogWatch::new(&self.path);
        let mut last_round: Option<Instant> = None;
        let mut busy_until: Option<Instant> = None;
        self.status.running = true;
        while !stop.load(Ordering::Relaxed) {
            // Commits that come close together are copied together: fewer journal writes
            // beside the application's own.
            if let Some(wait) =
                last_round.and_then(|t| self.opts.min_round.checked_sub(t.elapsed()))
            {
                std::thread::sleep(wait);
            }
            last_round = Some(Instant::now());
            if let Err(e) = self.round() {
                match self.place.is_some() {
                    true => self.lose(&format!("{e}")),
                    false => tracing::debug!("follow {}: {e}", self.path.display()),
                }
            }
            self.write_status(false);
            self.prune();
            // Busy (written to within BUSY_FOR): the next round comes from the clock. Idle:
            // the next write wakes the follower (see the watch's notes).
            if watch.drain() || !watch.watching() {
                busy_until = Some(Instant::now() + BUSY_FOR);
            }
            match busy_until.is_some_and(|t| Instant::now() < t) {
                true => std::thread::sleep(self.opts.poll),
                false => watch.wait(IDLE_WAIT),
            }
        }
        let synced = self.journal.sync();
        self.release_all();
        self.status.running = false;
        self.write_status(true);
        synced
    }

    /// One round: the log read to its end into the journal (every 5 s under a new read
    /// transaction, the journal fsynced before the old one ends), and a checkpoint when the log
    /// has grown.
    pub fn round(&mut self) -> Result<()> {
        let meta = std::fs::metadata(&self.path).ctx("stat", &self.path)?;
        if (meta.dev(), meta.ino()) != self.identity {
            self.identity = (meta.dev(), meta.ino());
            self.release_all();
            // The old connections close before the old file's descriptor does.
            self.conns = [open_follower(&self.path)?, open_follower(&self.path)?];
            self.main = File::open(&self.path).ctx("open", &self.path)?;
            self.lose("the database file was replaced");
        }
        if !self.in_wal_mode() {
            self.release_all();
            if self.place.is_some() {
                self.lose("the database left WAL mode");
            }
            return Ok(());
        }
        // Between moves of the read transaction, rounds only copy (the frames past its mark stay
        // in the log): one fsync of the journal a second instead of one per round.
        // After a checkpoint, rounds go on without a read transaction (copying every 25 ms)
        // until the application's writer resets the log, for at most UNPINNED_MAX: a read
        // transaction taken before would keep the log from being reset.
        let waiting = self.pinned.is_none()
            && self.window
            && self
                .last_checkpoint
                .is_some_and(|t| t.elapsed() < UNPINNED_MAX);
        let due = self.pinned.is_none()
            || self
                .last_advance
                .is_none_or(|t| t.elapsed() >= ADVANCE_EVERY);
        if waiting {
            self.copy()?;
            if !self.window {
                // The reset came (and what the old log held past the place was copied).
                self.advance()?;
            }
        } else if due {
            self.advance()?;
        } else {
            self.copy()?;
        }
        let frames = self.place.map_or(0, |p| p.pos.frame);
        self.status.log_frames = frames;
        if frames >= self.opts.emergency_frames {
            self.emergency_reset()?;
        } else if frames >= self.opts.checkpoint_frames
            && self.last_checkpoint.is_none_or(|t| {
                t.elapsed()
                    >= if self.reset_since_let_go {
                        CHECKPOINT_EVERY
                    } else {
                        UNPINNED_MAX * 2
                    }
            })
        {
            // An application that checkpoints (SQLite's default, every 1,000 pages) copies the
            // log itself once the follower lets go; the follower checkpoints itself a log that
            // has grown well past that, or that letting go did not get reset.
            let run =
                !self.reset_since_let_go || frames >= self.opts.checkpoint_frames.saturating_mul(4);
            self.last_checkpoint = Some(Instant::now());
            self.reset_since_let_go = false;
            self.checkpoint(run)?;
        }
        Ok(())
    }

    /// Pins the other connection, copies the log to its end, makes the journal durable, then
    /// unpins the old one.
    fn advance(&mut self) -> Result<()> {
        let next = self.pinned.map_or(0, |k| 1 - k);
        self.pin(next)?;
        // What was copied is durable before the old mark lets checkpoints go past it.
        let copied = self.copy().and_then(|_| self.journal.sync());
        if let Some(old) = self.pinned.replace(next) {
            self.unpin(old);
        }
        self.last_advance = Some(Instant::now());
        copied
    }

    fn pin(&self, k: usize) -> Result<()> {
        let c = &self.conns[k];
        c.execute_batch("BEGIN DEFERRED")
            .map_err(|e| sql(&self.path, e))?;
        let read = c.query_row("SELECT count(*) FROM sqlite_schema", [], |r| {
            r.get::<_, i64>(0)
        });
        if let Err(e) = read {
            let _ = c.execute_batch("ROLLBACK");
            return Err(sql(&self.path, e));
        }
        Ok(())
    }

    fn unpin(&self, k: usize) {
        let _ = self.conns[k].execute_batch("ROLLBACK");
    }

    fn release_all(&mut self) {
        self.since_empty = false;
        if let Some(k) = self.pinned.take() {
            self.unpin(k);
        }
    }

    /// Forgets the place (after saying why): the next round starts a new chain.
    fn lose(&mut self, why: &str) {
        tracing::warn!(
            "follow {}: lost its place in the log ({why}); the next snapshot reads the database whole",
            self.path.display()
        );
        self.place = None;
        self.since_empty = false;
        self.status.following = false;
        self.status.fallbacks += 1;
        self.status.last_fallback = Some(why.to_string());
    }

    /// Copies every transaction committed after the place into the journal (while a read
    /// transaction pins the log).
    fn copy(&mut self) -> Result<()> {
        let wal_path = sibling(&self.path, "-wal");
        let log = match File::open(&wal_path) {
            Ok(f) => Some(f),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(Error::io_path("open", &wal_path, e)),
        };
        let header = match &log {
            Some(f) => Header::read(f).ctx("read", &wal_path)?,
            None => None,
        };
        self.status.log_bytes = match &log {
            Some(f) => f.metadata().map(|m| m.len()).unwrap_or(0),
            None => 0,
        };
        let (Some(log), Some(header)) = (log, header) else {
            // No log (or an empty one): the main file holds every commit. A reset log comes
            // back with the next generation's header; a first one, while the follower stays
            // pinned, starts at its first frame.
            let cut = self.place.is_some() && !self.window && self.log_was_cut();
            match self.place.as_mut() {
                // Truncated while nothing was pinned: frames not copied may have gone with it.
                Some(_) if self.window => {
                    self.window = false;
                    self.lose("the log was truncated while the follower was checkpointing");
                }
                // While pinned, SQLite empties the log only as its writer starts it again (with
                // `journal_size_limit`), when its index says it holds no frame. An index that
                // says it holds frames the file no longer has: another process cut the log.
                Some(_) if cut => {
                    self.lose("the log was cut short by another process");
                }
                Some(p) => p.truncated = true,
                None => self.since_empty = true,
            }
            self.caught_up();
            return Ok(());
        };
        if header.page_size != self.page_size {
            return Err(Error::invalid(format!(
                "{}: log page size {} where the database has {}",
                wal_path.display(),
                header.page_size,
                self.page_size
            )));
        }
        let mut place = match self.place {
            // Pinned since the log was empty: no frame of it can have reached the main file,
            // and the image before its first frame is the main file.
            None if self.since_empty => {
                self.since_empty = false;
                self.status.following = true;
                let place = Place {
                    header,
                    pos: header.start(),
                    db_pages: self.main_pages()?,
                    truncated: false,
                };
                self.mark_start(&place)?;
                place
            }
            None => {
                // A new chain, from the log's committed end.
                let map = LogMap::scan(&log, header)?;
                let pos = LogPos {
                    frame: map.frames,
                    checksum: map.checksum,
                    ..header.start()
                };
                let db_pages = match map.db_pages {
                    0 => self.main_pages()?,
                    n => n,
                };
                let place = Place {
                    header,
                    pos,
                    db_pages,
                    truncated: false,
                };
                self.mark_start(&place)?;
                self.place = Some(place);
                self.status.following = true;
                self.caught_up();
                return Ok(());
            }
            Some(p) => p,
        };
        if !header.owns(&place.pos) {
            // (The header's checkpoint sequence is the resetting connection's own count, not a
            // shared one: only the first salt tells.)
            let once = header.salt1 == place.header.salt1.wrapping_add(1);
            if !once {
                self.lose("the log was reset by another process or replaced");
                return Ok(());
            }
            // Reset once, after the whole log was in the main file (see the module's notes):
            // the new generation follows on from the end of the old. After a checkpoint with
            // nothing pinned, the old generation may have frames past the place: those not yet
            // written over by the new one are copied; one written over loses the place.
            if self.window {
                self.window = false;
                place = match self.copy_old_generation(&log, &header, place)? {
                    Some(p) => p,
                    None => {
                        self.lose("the log was reset before its last frames were copied");
                        return Ok(());
                    }
                };
            }
            let mut reset = [Entry {
                seq: 0,
                time_ns: now_ns(),
                start: place.pos,
                end: header.start(),
                db_pages: place.db_pages,
                pages: Vec::new(),
                more: false,
            }];
            self.journal.append(&mut reset, &[])?;
            self.status.resets += 1;
            self.reset_since_let_go = true;
            place = Place {
                header,
                pos: header.start(),
                db_pages: place.db_pages,
                truncated: false,
            };
            self.place = Some(place);
        } else if !holds(&log, &header, place.pos.frame, place.pos.checksum) {
            self.lose("the log no longer holds the last frame copied");
            return Ok(());
        }
        if self.pinned.is_some() {
            self.window = false;
        }
        self.copy_from(&log, &header, &mut place)?;
        if self.place.is_some() {
            self.place = Some(place);
        }
        self.caught_up();
        Ok(())
    }

    /// Copies the transactions of `header`'s generation after `place` into the journal.
    fn copy_from(&mut self, log: &File, header: &Header, place: &mut Place) -> Result<()> {
        let until = committed_end(log, header, place.pos)?;
        let mut reader = TxnReader::new(*header, place.pos, until);
        while reader.more() {
            // A bounded number of frames at a time: a large transaction goes into the journal
            // in pieces, and only the last one ends it.
            let txns = match reader.read(log, self.opts.batch_frames) {
                Ok(t) => t,
                Err(e) => {
                    self.lose(&format!("{e}"));
                    return Ok(());
                }
            };
            let time_ns = now_ns();
            let mut images = Vec::new();
            let mut entries: Vec<Entry> = Vec::with_capacity(txns.len());
            for t in txns {
                self.status.pages += t.pages.len() as u64;
                if !t.more {
                    self.status.transactions += 1;
                    place.pos = t.end;
                    place.db_pages = t.db_pages;
                }
                images.extend_from_slice(&t.data);
                entries.push(Entry {
                    seq: 0,
                    time_ns,
                    start: t.start,
                    end: t.end,
                    db_pages: t.db_pages,
                    pages: t.pages,
                    more: t.more,
                });
            }
            self.journal.append(&mut entries, &images)?;
            self.place = Some(*place);
        }
        Ok(())
    }

    /// After a reset that may have come between a copy and a checkpoint: copies what is left
    /// of the old generation past `place`, and returns where it ended, or `None` when the new
    /// generation has already written over the frame after that (the old one may have had
    /// more).
    fn copy_old_generation(
        &mut self,
        log: &File,
        new: &Header,
        mut place: Place,
    ) -> Result<Option<Place>> {
        let old = place.header;
        self.copy_from(log, &old, &mut place)?;
        if self.place.is_none() {
            return Ok(None);
        }
        match frame_salts(log, &old, place.pos.frame + 1)? {
            Some(salts) if salts == (new.salt1, new.salt2) => Ok(None),
            // Another generation's leftover, or the end of the file: the old one ended here.
            _ => Ok(Some(place)),
        }
    }

    /// Whether the database header says WAL mode (file format versions 2 at bytes 18 and 19),
    /// read through the descriptor kept open.
    fn in_wal_mode(&self) -> bool {
        let mut h = [0u8; 20];
        read_full_at(&self.main, &mut h, 0).is_ok_and(|n| n == h.len() && h[18] == 2 && h[19] == 2)
    }

    /// Whether SQLite's index of the log says it holds frames (the log file is empty).
    fn log_was_cut(&self) -> bool {
        File::open(sibling(&self.path, "-shm"))
            .ok()
            .and_then(|f| crate::source::wal::indexed_frames(&f))
            .is_some_and(|n| n > 0)
    }

    /// Notes in the journal that a chain starts at `place` (an entry with no pages that starts
    /// and ends there), so that a chain the follower no longer writes is seen to end where it
    /// ended, not to go on unseen.
    fn mark_start(&mut self, place: &Place) -> Result<()> {
        let mut start = [Entry {
            seq: 0,
            time_ns: now_ns(),
            start: place.pos,
            end: place.pos,
            db_pages: place.db_pages,
            pages: Vec::new(),
            more: false,
        }];
        self.journal.append(&mut start, &[])
    }

    /// The database's size in pages from its main file (when the log holds no commit).
    fn main_pages(&self) -> Result<u32> {
        let len = std::fs::metadata(&self.path).ctx("stat", &self.path)?.len();
        u32::try_from(len / self.page_size as u64)
            .map_err(|_| Error::invalid(format!("{}: too many pages", self.path.display())))
    }

    fn caught_up(&mut self) {
        self.status.following = self.place.is_some();
        self.status.place = self.place.map(|p| p.pos);
        self.status.caught_up_ms = chrono::Utc::now().timestamp_millis();
    }

    /// Lets go of the log (the journal made durable first, then the read transaction ended), so
    /// that the application's own automatic checkpoint after its next commit (or, with `run`,
    /// a PASSIVE checkpoint run here) can copy the whole log into the main file and the
    /// application's next writer can reset it.
    /// The follower takes a read transaction again at its next round, a few milliseconds on:
    /// frames committed in between are then in the reset log's old generation, and that round
    /// copies them from there (see [`Follower::copy`]), or loses its place if the new
    /// generation has already written over them.
    fn checkpoint(&mut self, run: bool) -> Result<()> {
        self.copy()?;
        self.journal.sync()?;
        let Some(pinned) = self.pinned.take() else {
            return Ok(());
        };
        self.unpin(pinned);
        self.window = true;
        if run {
            self.conns[pinned]
                .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get::<_, i64>(0))
                .map_err(|e| sql(&self.path, e))?;
            self.status.checkpoints += 1;
        }
        Ok(())
    }

    /// Resets a log that a writer never lets go below `emergency_frames`: holding the writer's
    /// lock (nothing written), copy to the end, checkpoint all, pin at mark 0, let go.
    fn emergency_reset(&mut self) -> Result<()> {
        let Some(pinned) = self.pinned else {
            return Ok(());
        };
        let locker = 1 - pinned;
        self.conns[locker]
            .execute_batch("BEGIN IMMEDIATE")
            .map_err(|e| sql(&self.path, e))?;
        let result = (|| {
            // No commit can come now: copy to the end, then let the checkpoint copy everything.
            self.copy()?;
            self.journal.sync()?;
            self.unpin(pinned);
            self.pinned = None;
            let checker = open_follower(&self.path)?;
            let _ = checker
                .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get::<_, i64>(0))
                .map_err(|e| sql(&self.path, e))?;
            self.status.checkpoints += 1;
            // Pinned again while no writer can commit: the log is all in the main file, so
            // this read starts at mark 0 and lets the next writer reset the log.
            self.pin(pinned)?;
            self.pinned = Some(pinned);
            Ok(())
        })();
        let _ = self.conns[locker].execute_batch("ROLLBACK");
        if self.pinned.is_none() {
            self.pin(pinned)?;
            self.pinned = Some(pinned);
        }
        result
    }

    /// Removes journal segments older than [`FollowOptions::keep`], once a minute.
    fn prune(&mut self) {
        if self
            .last_prune
            .is_some_and(|t| t.elapsed() < Duration::from_secs(60))
        {
            return;
        }
        self.last_prune = Some(Instant::now());
        let cutoff = std::time::SystemTime::now() - self.opts.keep;
        if let Err(e) = super::journal::prune_older_than(&self.dir, cutoff) {
            tracing::warn!("follow {}: pruning the journal: {e}", self.path.display());
        }
    }

    /// Writes `status.json` in the journal's directory, at most once a second unless `now`.
    fn write_status(&mut self, now: bool) {
        if !now
            && self
                .last_status
                .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
        {
            return;
        }
        self.last_status = Some(Instant::now());
        let Ok(json) = serde_json::to_vec_pretty(&self.status) else {
            return;
        };
        let tmp = self.dir.join(".status.json.tmp");
        if std::fs::write(&tmp, json).is_ok() {
            let _ = std::fs::rename(&tmp, self.dir.join("status.json"));
        }
    }
}

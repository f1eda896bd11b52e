//! A SQLite write-ahead log (`-wal` file), parsed directly: which frames are committed, and the
//! newest committed frame of each page.
//!
//! The layout is SQLite's documented WAL format (<https://www.sqlite.org/fileformat2.html>,
//! "The Write-Ahead Log"). A 32-byte header (magic, format version, page size, checkpoint
//! sequence, two salts, a checksum of the first 24 bytes), then frames: a 24-byte header (page
//! number, the database size in pages for the last frame of a transaction and 0 for the others,
//! the two salts, and a checksum over everything since the log header) and one page. All
//! integers are big-endian. A frame belongs to the log when its salts are the header's and its
//! cumulative checksum holds; the committed log ends at the last such frame that ends a
//! transaction. A log reset (after a checkpoint moved everything into the main file) writes a new
//! header with new salts and starts again at the first frame, so frames left over from before
//! fail the salt test.
//!
//! Everything read here is untrusted: a damaged or hostile log ends the parse early or fails it
//! with [`Error::Corrupt`], never a panic, and callers check what it yields against the read
//! transaction SQLite itself holds.

use crate::error::{Error, Result};
use crate::source::read_full_at;
use std::collections::HashMap;
use std::fs::File;

/// Size of the log header.
pub const HEADER_LEN: u64 = 32;
/// Size of a frame header.
pub const FRAME_HEADER_LEN: u64 = 24;
/// Magic numbers: the low bit says whether checksums read words big-endian.
const MAGIC_LE: u32 = 0x377f_0682;
const MAGIC_BE: u32 = 0x377f_0683;
const FORMAT_VERSION: u32 = 3_007_000;
/// How much of the log one read takes while scanning.
const SCAN_BLOCK: usize = 4 << 20;

/// A log header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub page_size: u32,
    pub checkpoint: u32,
    pub salt1: u32,
    pub salt2: u32,
    /// Checksums read 32-bit words big-endian (magic 0x377f0683) rather than little-endian.
    big_endian: bool,
    /// The checksum of the header: where the chain of frame checksums starts.
    checksum: Checksum,
}

/// SQLite's running checksum: two 32-bit sums.
pub type Checksum = (u32, u32);

/// Extends `sum` over `data` (a multiple of 8 bytes), as SQLite does.
fn checksum(big_endian: bool, mut sum: Checksum, data: &[u8]) -> Checksum {
    let word = |b: &[u8]| {
        let b = [b[0], b[1], b[2], b[3]];
        if big_endian {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        }
    };
    for pair in data.chunks_exact(8) {
        sum.0 = sum.0.wrapping_add(word(&pair[..4])).wrapping_add(sum.1);
        sum.1 = sum.1.wrapping_add(word(&pair[4..])).wrapping_add(sum.0);
    }
    sum
}

fn be(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

impl Header {
    /// Parses a log header; `None` if it is not one (too short, another magic or version, a bad
    /// page size, or a checksum that does not hold: SQLite treats such a log as empty).
    pub fn parse(b: &[u8]) -> Option<Header> {
        if b.len() < HEADER_LEN as usize {
            return None;
        }
        let big_endian = match be(b, 0) {
            MAGIC_LE => false,
            MAGIC_BE => true,
            _ => return None,
        };
        if be(b, 4) != FORMAT_VERSION {
            return None;
        }
        let page_size = match be(b, 8) {
            1 => 65536,
            n => n,
        };
        if !(512..=65536).contains(&page_size) || !page_size.is_power_of_two() {
            return None;
        }
        let sum = checksum(big_endian, (0, 0), &b[..24]);
        if sum != (be(b, 24), be(b, 28)) {
            return None;
        }
        Some(Header {
            page_size,
            checkpoint: be(b, 12),
            salt1: be(b, 16),
            salt2: be(b, 20),
            big_endian,
            checksum: sum,
        })
    }

    /// Reads and parses the header of the log open as `file`.
    pub fn read(file: &File) -> std::io::Result<Option<Header>> {
        let mut b = [0u8; HEADER_LEN as usize];
        let n = read_full_at(file, &mut b, 0)?;
        Ok(Header::parse(&b[..n]))
    }

    /// The header's checksum, which the first frame's continues.
    pub fn checksum(&self) -> Checksum {
        self.checksum
    }

    fn frame_len(&self) -> u64 {
        FRAME_HEADER_LEN + self.page_size as u64
    }

    /// The file offset of frame `n` (numbered from 1).
    pub fn frame_offset(&self, n: u32) -> u64 {
        HEADER_LEN + (n as u64 - 1) * self.frame_len()
    }

    /// Checks one frame (its header and page, as read from the log) that follows a frame whose
    /// cumulative checksum was `before`: its salts, its checksum, and (when given) its page
    /// number. Returns the frame's page number, database size field and checksum.
    fn check_frame(&self, frame: &[u8], before: Checksum) -> Option<(u32, u32, Checksum)> {
        if be(frame, 8) != self.salt1 || be(frame, 12) != self.salt2 {
            return None;
        }
        let pgno = be(frame, 0);
        if pgno == 0 {
            return None;
        }
        let sum = checksum(self.big_endian, before, &frame[..8]);
        let sum = checksum(self.big_endian, sum, &frame[FRAME_HEADER_LEN as usize..]);
        (sum == (be(frame, 16), be(frame, 20))).then_some((pgno, be(frame, 4), sum))
    }
}

/// Where the newest committed version of a page is in the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameRef {
    /// The frame's number (from 1).
    pub frame: u32,
    /// The cumulative checksum of the frame before it: with it the frame can be checked alone
    /// when it is read again.
    pub before: Checksum,
}

/// The committed part of a log: how far it goes, and the newest frame of each page in it.
#[derive(Clone, Debug)]
pub struct LogMap {
    pub header: Header,
    /// Frames up to and including the last commit frame (SQLite's `mxFrame`), counted from the
    /// first frame of the log (not from `from`).
    pub frames: u32,
    /// The database's size in pages after the last commit (0 with no commit in the log).
    pub db_pages: u32,
    /// The cumulative checksum at the last commit frame (the header's when there is none).
    pub checksum: Checksum,
    /// The first frame this map covers (1 for a whole log).
    pub from: u32,
    /// Page number -> its newest committed frame at or after `from`.
    pub pages: HashMap<u32, FrameRef>,
}

impl LogMap {
    /// A log with no committed frame after `from`.
    fn empty(header: Header, from: u32, checksum: Checksum) -> LogMap {
        LogMap {
            header,
            frames: from - 1,
            db_pages: 0,
            checksum,
            from,
            pages: HashMap::new(),
        }
    }

    /// Scans the log open as `file` from its first frame.
    pub fn scan(file: &File, header: Header) -> Result<LogMap> {
        Self::scan_from(file, header, 1, header.checksum)
    }

    /// Scans the log from frame `from`, whose predecessor's cumulative checksum is `before`
    /// (the header's for frame 1), to the end of its valid frames. Only committed frames count:
    /// those of a transaction still being written (no commit frame after them) are left out.
    pub fn scan_from(file: &File, header: Header, from: u32, before: Checksum) -> Result<LogMap> {
        Self::scan_between(file, header, from, before, u32::MAX)
    }

    /// [`LogMap::scan_from`], reading no frame past `until`.
    pub fn scan_between(
        file: &File,
        header: Header,
        from: u32,
        before: Checksum,
        until: u32,
    ) -> Result<LogMap> {
        if from == 0 {
            return Err(Error::invalid("log frames are numbered from 1"));
        }
        let frame_len = header.frame_len() as usize;
        let mut map = LogMap::empty(header, from, before);
        // Frames since the last commit, not yet known to be committed.
        let mut pending: Vec<(u32, FrameRef)> = Vec::new();
        let mut sum = before;
        let mut n = from;
        let per_block = (SCAN_BLOCK / frame_len).max(1);
        let mut buf = vec![0u8; per_block * frame_len];
        'blocks: loop {
            let at = header.frame_offset(n);
            let got = read_full_at(file, &mut buf, at).map_err(|e| Error::io("read log", e))?;
            let whole = got / frame_len;
            for frame in buf[..whole * frame_len].chunks_exact(frame_len) {
                if n > until {
                    break 'blocks;
                }
                let Some((pgno, db_pages, next)) = header.check_frame(frame, sum) else {
                    break 'blocks;
                };
                pending.push((
                    pgno,
                    FrameRef {
                        frame: n,
                        before: sum,
                    },
                ));
                sum = next;
                if db_pages != 0 {
                    for (pgno, at) in pending.drain(..) {
                        map.pages.insert(pgno, at);
                    }
                    map.frames = n;
                    map.db_pages = db_pages;
                    map.checksum = sum;
                }
                n = n
                    .checked_add(1)
                    .ok_or_else(|| Error::corrupt("log: too many frames"))?;
            }
            if whole < per_block {
                break;
            }
        }
        // Pages of a transaction cut short by the end of the file are not in the map: drop
        // those a commit did not cover.
        Ok(map)
    }

    /// Whether page `pgno` of the image comes from the log.
    pub fn get(&self, pgno: u32) -> Option<FrameRef> {
        self.pages.get(&pgno).copied()
    }
}

/// A place in a log: the end of a committed transaction, or (frame 0) the start of a log before
/// its first frame. The salts name the log's generation (a reset draws new ones) and the
/// cumulative checksum ties the place to every frame before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct LogPos {
    pub salt1: u32,
    pub salt2: u32,
    pub frame: u32,
    pub checksum: Checksum,
}

impl Header {
    /// The place before this log's first frame.
    pub fn start(&self) -> LogPos {
        LogPos {
            salt1: self.salt1,
            salt2: self.salt2,
            frame: 0,
            checksum: self.checksum,
        }
    }

    /// Whether `pos` is a place in this log's generation.
    pub fn owns(&self, pos: &LogPos) -> bool {
        pos.salt1 == self.salt1 && pos.salt2 == self.salt2
    }
}

/// A committed transaction read from a log, or a piece of one: its pages, each at its newest
/// image in the piece, in the order first written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogTxn {
    pub start: LogPos,
    /// Where the transaction ends; for a piece that the next one continues (`more`), its
    /// start.
    pub end: LogPos,
    /// The database's size in pages after it (0 for a piece the next one continues).
    pub db_pages: u32,
    pub pages: Vec<u32>,
    /// The pages' bytes, one page each, in the order of `pages`.
    pub data: Vec<u8>,
    /// The transaction goes on in the next piece.
    pub more: bool,
}

/// The committed end of the log after `from` (a place in this header's generation): the last
/// frame that ends a transaction and checks out, and the checksum there; `from` if none.
pub fn committed_end(file: &File, header: &Header, from: LogPos) -> Result<LogPos> {
    if !header.owns(&from) {
        return Err(Error::invalid("log position of another generation"));
    }
    let frame_len = header.frame_len() as usize;
    // Usually a few new frames, and past them stale frames of an earlier generation (a log is
    // written over from its start after a reset, not truncated): reads start at 16 frames and
    // double while every frame checks out, so a round does not copy megabytes of stale frames
    // (a large read here, beside the application's writer, showed in its commit latency).
    let past = file
        .metadata()
        .map_err(|e| Error::io("stat log", e))?
        .len()
        .saturating_sub(header.frame_offset(from.frame.saturating_add(1)));
    let most = (SCAN_BLOCK / frame_len).max(1);
    let mut per_block = 16.min(most).min((past as usize).div_ceil(frame_len)).max(1);
    let mut buf = Vec::new();
    let (mut end, mut sum) = (from, from.checksum);
    let mut n = from
        .frame
        .checked_add(1)
        .ok_or_else(|| Error::corrupt("log: too many frames"))?;
    'blocks: loop {
        buf.resize(per_block * frame_len, 0);
        let got = read_full_at(file, &mut buf, header.frame_offset(n))
            .map_err(|e| Error::io("read log", e))?;
        let whole = got / frame_len;
        for frame in buf[..whole * frame_len].chunks_exact(frame_len) {
            let Some((_, db_pages, next)) = header.check_frame(frame, sum) else {
                break 'blocks;
            };
            sum = next;
            if db_pages != 0 {
                end = LogPos {
                    frame: n,
                    checksum: sum,
                    ..end
                };
            }
            n = n
                .checked_add(1)
                .ok_or_else(|| Error::corrupt("log: too many frames"))?;
        }
        if whole < per_block {
            break;
        }
        per_block = (per_block * 2).min(most);
    }
    Ok(end)
}

/// Reads the frames of a log from a committed place up to a committed end, a bounded number at
/// a time, as transactions and pieces of transactions (see [`LogTxn::more`]). Each frame is
/// checked again (salts and the chain of checksums) as it is read.
pub struct TxnReader {
    header: Header,
    /// Where the transaction being read started.
    start: LogPos,
    /// The next frame, and the checksum before it.
    next: u32,
    sum: Checksum,
    until: u32,
}

impl TxnReader {
    /// A reader of the transactions after `from` up to `until` (a committed end, as
    /// [`committed_end`] finds it).
    pub fn new(header: Header, from: LogPos, until: LogPos) -> TxnReader {
        TxnReader {
            header,
            start: from,
            next: from.frame + 1,
            sum: from.checksum,
            until: until.frame,
        }
    }

    /// Whether frames are left to read.
    pub fn more(&self) -> bool {
        self.next <= self.until
    }

    /// Reads up to `max_frames` more frames: the transactions they end, and a piece of the one
    /// they do not (`more`). A frame that no longer checks out is an error: the log was written
    /// over while pinned, which a follower treats as a lost place.
    pub fn read(&mut self, file: &File, max_frames: u32) -> Result<Vec<LogTxn>> {
        let header = &self.header;
        let frame_len = header.frame_len() as usize;
        let page = header.page_size as usize;
        let count = (self.until + 1 - self.next.min(self.until + 1)).min(max_frames) as usize;
        let mut buf = vec![0u8; count * frame_len];
        let got = read_full_at(file, &mut buf, header.frame_offset(self.next))
            .map_err(|e| Error::io("read log", e))?;
        if got < buf.len() {
            return Err(Error::invalid(
                "the log is shorter than its committed frames",
            ));
        }
        let mut out = Vec::new();
        let mut open = LogTxn {
            start: self.start,
            end: self.start,
            db_pages: 0,
            pages: Vec::new(),
            data: Vec::new(),
            more: true,
        };
        let mut slot: HashMap<u32, usize> = HashMap::new();
        for frame in buf.chunks_exact(frame_len) {
            let (pgno, db_pages, next) = header
                .check_frame(frame, self.sum)
                .ok_or_else(|| Error::invalid("a committed frame of the log changed"))?;
            let image = &frame[FRAME_HEADER_LEN as usize..];
            match slot.get(&pgno) {
                Some(&i) => open.data[i * page..(i + 1) * page].copy_from_slice(image),
                None => {
                    slot.insert(pgno, open.pages.len());
                    open.pages.push(pgno);
                    open.data.extend_from_slice(image);
                }
            }
            self.sum = next;
            if db_pages != 0 {
                let end = LogPos {
                    frame: self.next,
                    checksum: next,
                    ..self.start
                };
                out.push(LogTxn {
                    start: self.start,
                    end,
                    db_pages,
                    pages: std::mem::take(&mut open.pages),
                    data: std::mem::take(&mut open.data),
                    more: false,
                });
                self.start = end;
                open.start = end;
                open.end = end;
                slot.clear();
            }
            self.next += 1;
        }
        if !open.pages.is_empty() {
            out.push(open);
        }
        Ok(out)
    }
}

/// How many frames SQLite's index of the log (the `-shm` file, whose header it keeps twice, in
/// the machine's byte order) says the log holds; `None` when there is no index or its two
/// copies of the header differ (a writer is changing it) or it is not initialised.
pub fn indexed_frames(shm: &File) -> Option<u32> {
    let mut h = [0u8; 96];
    if read_full_at(shm, &mut h, 0).ok()? < h.len() || h[..48] != h[48..] || h[12] == 0 {
        return None;
    }
    Some(u32::from_ne_bytes(h[16..20].try_into().expect("4 bytes")))
}

/// Whether the log still holds the position an earlier scan ended at: frame `frames` (0: none)
/// with the cumulative checksum `checksum`. The frame there must end a transaction, carry the
/// header's salts and that checksum; at frame 0 the checksum is the header's own.
pub fn holds(file: &File, header: &Header, frames: u32, checksum: Checksum) -> bool {
    if frames == 0 {
        return checksum == header.checksum;
    }
    let mut b = [0u8; FRAME_HEADER_LEN as usize];
    matches!(read_full_at(file, &mut b, header.frame_offset(frames)), Ok(n) if n == b.len())
        && be(&b, 4) != 0
        && be(&b, 8) == header.salt1
        && be(&b, 12) == header.salt2
        && (be(&b, 16), be(&b, 20)) == checksum
}

/// Reads the page of frame `at` into `out` (one page long), checking the frame again: its salts,
/// page number and checksum. `Ok(false)` when the frame is no longer what the scan saw (the log
/// was reset and written over since).
pub fn read_frame(
    file: &File,
    header: &Header,
    pgno: u32,
    at: FrameRef,
    out: &mut [u8],
    scratch: &mut Vec<u8>,
) -> Result<bool> {
    let frame_len = header.frame_len() as usize;
    if out.len() != header.page_size as usize {
        return Err(Error::invalid("log page buffer of the wrong size"));
    }
    scratch.resize(frame_len, 0);
    let got = read_full_at(file, scratch, header.frame_offset(at.frame))
        .map_err(|e| Error::io("read log", e))?;
    if got < frame_len {
        return Ok(false);
    }
    match header.check_frame(scratch, at.before) {
        Some((p, _, _)) if p == pgno => {
            out.copy_from_slice(&scratch[FRAME_HEADER_LEN as usize..]);
            Ok(true)
        }
        _ => Ok(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::Connection;

    /// A WAL database with autocheckpoint off and some committed transactions; the connection
    /// stays open so the log keeps its frames.
    fn database(dir: &std::path::Path) -> (std::path::PathBuf, Connection) {
        let db = dir.join("t.db");
        let c = Connection::open(&db).unwrap();
        c.execute_batch(
            "PRAGMA page_size=1024; PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0;
             CREATE TABLE t(n INTEGER PRIMARY KEY, pad BLOB);",
        )
        .unwrap();
        for n in 0..50 {
            c.execute("INSERT INTO t VALUES (?1, randomblob(700))", [n])
                .unwrap();
        }
        (db, c)
    }

    fn wal(db: &std::path::Path) -> File {
        let mut p = db.as_os_str().to_os_string();
        p.push("-wal");
        File::open(p).unwrap()
    }

    /// The image built from the main file and the log's newest frames equals what SQLite reads.
    #[test]
    fn the_map_rebuilds_the_database_sqlite_sees() {
        let dir = tempfile::tempdir().unwrap();
        let (db, c) = database(dir.path());
        let log = wal(&db);
        let header = Header::read(&log).unwrap().expect("a log header");
        assert_eq!(header.page_size, 1024);
        let map = LogMap::scan(&log, header).unwrap();
        let pages: u32 = c.query_row("PRAGMA page_count", [], |r| r.get(0)).unwrap();
        assert_eq!(map.db_pages, pages);
        assert!(map.frames >= 50);
        let main = std::fs::read(&db).unwrap();
        let mut stmt = c.prepare("SELECT pgno, data FROM sqlite_dbpage").unwrap();
        let mut rows = stmt.query([]).unwrap();
        let (mut page, mut scratch) = (vec![0u8; 1024], Vec::new());
        let mut from_log = 0;
        while let Some(row) = rows.next().unwrap() {
            let pgno: u32 = row.get(0).unwrap();
            let data: Vec<u8> = row.get(1).unwrap();
            match map.get(pgno) {
                Some(at) => {
                    assert!(read_frame(&log, &header, pgno, at, &mut page, &mut scratch).unwrap());
                    from_log += 1;
                }
                None => {
                    let at = (pgno as usize - 1) * 1024;
                    page.copy_from_slice(&main[at..at + 1024]);
                }
            }
            assert_eq!(page, data, "page {pgno}");
        }
        assert!(from_log > 0);
    }

    /// Scanning on from the last commit finds exactly the frames written since.
    #[test]
    fn a_scan_from_a_position_sees_only_the_new_frames() {
        let dir = tempfile::tempdir().unwrap();
        let (db, c) = database(dir.path());
        let log = wal(&db);
        let header = Header::read(&log).unwrap().unwrap();
        let first = LogMap::scan(&log, header).unwrap();
        c.execute("UPDATE t SET pad = randomblob(700) WHERE n = 7", [])
            .unwrap();
        let next = LogMap::scan_from(&log, header, first.frames + 1, first.checksum).unwrap();
        assert!(next.frames > first.frames);
        assert!(!next.pages.is_empty());
        assert!(next.pages.values().all(|f| f.frame > first.frames));
        let whole = LogMap::scan(&log, header).unwrap();
        assert_eq!(whole.frames, next.frames);
        assert_eq!(whole.checksum, next.checksum);
        assert_eq!(whole.db_pages, next.db_pages);
        // A wrong starting checksum: nothing after it is valid.
        let wrong = LogMap::scan_from(&log, header, first.frames + 1, (1, 2)).unwrap();
        assert!(wrong.pages.is_empty());
    }

    /// Read a few frames at a time, the transactions come in pieces that, put together, are the
    /// pages the log's map has.
    #[test]
    fn transactions_read_in_pieces_cover_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let (db, c) = database(dir.path());
        c.execute_batch("UPDATE t SET pad = randomblob(700)")
            .unwrap();
        let log = wal(&db);
        let header = Header::read(&log).unwrap().unwrap();
        let map = LogMap::scan(&log, header).unwrap();
        let end = committed_end(&log, &header, header.start()).unwrap();
        assert_eq!((end.frame, end.checksum), (map.frames, map.checksum));
        let mut reader = TxnReader::new(header, header.start(), end);
        let (mut pieces, mut ends, mut last) = (0, 0, header.start());
        let mut newest: HashMap<u32, Vec<u8>> = HashMap::new();
        while reader.more() {
            for t in reader.read(&log, 7).unwrap() {
                assert_eq!(t.start, last);
                assert_eq!(t.data.len(), t.pages.len() * 1024);
                for (p, d) in t.pages.iter().zip(t.data.chunks_exact(1024)) {
                    newest.insert(*p, d.to_vec());
                }
                match t.more {
                    true => pieces += 1,
                    false => {
                        ends += 1;
                        last = t.end;
                    }
                }
            }
        }
        assert!(
            pieces > 0 && ends >= 50,
            "{pieces} pieces, {ends} transactions"
        );
        assert_eq!(last, end);
        let (mut page, mut scratch) = (vec![0u8; 1024], Vec::new());
        for (pgno, at) in &map.pages {
            assert!(read_frame(&log, &header, *pgno, *at, &mut page, &mut scratch).unwrap());
            assert_eq!(newest[pgno], page, "page {pgno}");
        }
    }

    /// A damaged byte ends the committed log before the frame it is in; hostile headers are
    /// refused.
    #[test]
    fn damage_ends_the_log_and_bad_headers_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (db, _c) = database(dir.path());
        let mut p = db.as_os_str().to_os_string();
        p.push("-wal");
        let mut bytes = std::fs::read(&p).unwrap();
        let header = Header::parse(&bytes).unwrap();
        let whole = LogMap::scan(&wal(&db), header).unwrap();
        let at = header.frame_offset(10) as usize + 100;
        bytes[at] ^= 0xff;
        let copy = dir.path().join("copy-wal");
        std::fs::write(&copy, &bytes).unwrap();
        let cut = LogMap::scan(&File::open(&copy).unwrap(), header).unwrap();
        assert!(cut.frames < 10 && cut.frames < whole.frames);
        for bad in [&bytes[..31], &[0u8; 32][..]] {
            assert!(Header::parse(bad).is_none());
        }
        let mut h = bytes[..32].to_vec();
        h[11] = 3; // page size 1027, checksum no longer holds either
        assert!(Header::parse(&h).is_none());
    }
}

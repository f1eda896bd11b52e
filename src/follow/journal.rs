//! The capture journal: the transactions a follower copied from a database's log, kept on
//! local disk (fsynced before the follower lets the log move on) until snapshots take them.
//!
//! A journal is a directory of segment files named by the sequence number of their first entry
//! (16 hex digits, `.journal`). A segment is a header and records; a record holds one or more
//! entries, written and fsynced together:
//!
//! ```text
//! segment: magic "STRAFJNL", version u32 (1), page size u32, first sequence u64, 8 zero bytes
//! record:  body length u32, body, XXH3-64 of the body u64
//! body:    head length u32, head (bincode: Vec<Entry>), XXH3-64 of the head u64, page images
//!          (zstd, or raw if that is not smaller: a flag byte 1 or 0 first)
//! ```
//!
//! All integers little-endian. An [`Entry`] is a transaction committed in the log (where it
//! started and ended, the database's size after it, its pages) or, with no pages, the log's
//! reset into a new generation. Entries form chains: each starts where the one before ended. A
//! follower that loses its place (see `follow`) starts a new chain; a snapshot uses a journal
//! only when one chain runs from the place its previous image ended to the place the new image
//! ends, so a gap or a damaged record can only cost a full read of the database, never a wrong
//! image.
//!
//! Everything read here is untrusted: a torn record at the end of the last segment (a follower
//! killed while writing) ends the journal there; damage anywhere else ends it too, and is
//! reported.

use crate::error::{Error, IoContext, Result};
use crate::source::wal::LogPos;
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"STRAFJNL";
const VERSION: u32 = 1;
/// magic, version, page size, first sequence, zero.
const HEADER_LEN: usize = 8 + 4 + 4 + 8 + 8;
const EXT: &str = "journal";
/// A record's body is at most this large (a transaction of 64 MiB of pages, with room).
const BODY_MAX: usize = 80 << 20;
/// A record holds at most this many page images (a follower writes a batch of at most 4,096).
const RECORD_PAGES_MAX: usize = 1 << 17;
/// A segment is closed once it passes this size.
pub const SEGMENT_BYTES: u64 = 64 << 20;
/// ... or once it is this old, so that old entries can be removed a segment at a time.
const SEGMENT_AGE: std::time::Duration = std::time::Duration::from_secs(3600);
/// zstd level of the page images: fast, as the follower runs beside the application.
const LEVEL: i32 = 1;

/// One transaction copied from the log, or the log's reset (no pages).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub seq: u64,
    /// When the follower saw it committed (Unix nanoseconds).
    pub time_ns: i64,
    pub start: LogPos,
    pub end: LogPos,
    pub db_pages: u32,
    pub pages: Vec<u32>,
    /// A piece of a transaction that the next entry continues (its end is its start, and its
    /// pages count only once the piece that ends the transaction is there).
    pub more: bool,
}

/// Appends records to a journal directory.
pub struct JournalWriter {
    dir: PathBuf,
    page_size: u32,
    file: Option<(File, u64, std::time::Instant)>,
    next_seq: u64,
    /// Records were appended since the last [`JournalWriter::sync`].
    unsynced: bool,
}

impl JournalWriter {
    /// Opens the journal in `dir` (made if missing) for a database of `page_size` pages. New
    /// records go to a new segment; sequence numbers go on from the last entry found.
    pub fn open(dir: &Path, page_size: u32) -> Result<JournalWriter> {
        std::fs::create_dir_all(dir).ctx("create", dir)?;
        let mut next_seq = 0;
        if let Some(last) = segments(dir)?.last() {
            // A segment's name is its first sequence number; entries written go on from it.
            let named = last
                .file_stem()
                .and_then(|s| s.to_str())
                .and_then(|s| u64::from_str_radix(s, 16).ok())
                .unwrap_or(0);
            next_seq = named;
            if let Ok(mut reader) = SegmentReader::open(last) {
                while let Ok(Some(rec)) = reader.next_record() {
                    if let Some(e) = rec.entries.last() {
                        next_seq = next_seq.max(e.seq + 1);
                    }
                }
            }
            next_seq = next_seq.max(named + 1);
        }
        Ok(JournalWriter {
            dir: dir.to_path_buf(),
            page_size,
            file: None,
            next_seq,
            unsynced: false,
        })
    }

    /// Makes every record appended so far durable.
    pub fn sync(&mut self) -> Result<()> {
        if let (true, Some((f, _, _))) = (self.unsynced, &self.file) {
            f.sync_data().ctx("fsync", &self.dir)?;
        }
        self.unsynced = false;
        Ok(())
    }

    /// The sequence number the next entry gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Appends one record of `entries` (their sequence numbers are set here) with their pages'
    /// images, one page each in entry order; [`JournalWriter::sync`] makes it durable.
    pub fn append(&mut self, entries: &mut [Entry], images: &[u8]) -> Result<()> {
        let page = self.page_size as usize;
        let count: usize = entries.iter().map(|e| e.pages.len()).sum();
        if images.len() != count * page {
            return Err(Error::invalid(
                "journal record: images do not match the pages",
            ));
        }
        for e in entries.iter_mut() {
            e.seq = self.next_seq;
            self.next_seq += 1;
        }
        let head = crate::codec::encode(&entries.to_vec())?;
        let (flag, stored) = match crate::compress::compress(images, LEVEL)? {
            (crate::compress::Compression::Zstd, z) => (1u8, z),
            (_, raw) => (0u8, raw),
        };
        let mut body = Vec::with_capacity(4 + head.len() + 8 + 1 + stored.len());
        body.extend_from_slice(&(head.len() as u32).to_le_bytes());
        body.extend_from_slice(&head);
        body.extend_from_slice(&twox_hash::XxHash3_64::oneshot(&head).to_le_bytes());
        body.push(flag);
        body.extend_from_slice(&stored);
        if body.len() > BODY_MAX {
            return Err(Error::invalid("journal record too large"));
        }
        let mut record = Vec::with_capacity(body.len() + 12);
        record.extend_from_slice(&(body.len() as u32).to_le_bytes());
        record.extend_from_slice(&body);
        record.extend_from_slice(&twox_hash::XxHash3_64::oneshot(&body).to_le_bytes());
        let first = entries.first().map_or(self.next_seq, |e| e.seq);
        let dir = self.dir.clone();
        let (file, len, opened) = self.segment(first)?;
        file.write_all_at(&record, *len).ctx("write", &dir)?;
        *len += record.len() as u64;
        let full = *len >= SEGMENT_BYTES || opened.elapsed() >= SEGMENT_AGE;
        self.unsynced = true;
        if full {
            self.sync()?;
            self.file = None;
        }
        Ok(())
    }

    /// The open segment, or a new one whose first entry is `first`.
    fn segment(&mut self, first: u64) -> Result<&mut (File, u64, std::time::Instant)> {
        if self.file.is_none() {
            let path = self.dir.join(format!("{first:016x}.{EXT}"));
            let mut f = OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .open(&path)
                .ctx("create", &path)?;
            let mut h = Vec::with_capacity(HEADER_LEN);
            h.extend_from_slice(MAGIC);
            h.extend_from_slice(&VERSION.to_le_bytes());
            h.extend_from_slice(&self.page_size.to_le_bytes());
            h.extend_from_slice(&first.to_le_bytes());
            h.extend_from_slice(&[0u8; 8]);
            f.write_all(&h)
                .and_then(|_| f.sync_all())
                .ctx("write", &path)?;
            // The segment's blocks allocated at once (its size unchanged): appends then do not
            // allocate, which the application's own fsyncs would wait for.
            // SAFETY: a plain system call on a descriptor `f` owns.
            let _ = unsafe {
                libc::fallocate(
                    std::os::fd::AsRawFd::as_raw_fd(&f),
                    libc::FALLOC_FL_KEEP_SIZE,
                    0,
                    SEGMENT_BYTES as libc::off_t,
                )
            };
            crate::sys::sync_dir(&self.dir)?;
            self.file = Some((f, HEADER_LEN as u64, std::time::Instant::now()));
        }
        Ok(self.file.as_mut().expect("opened above"))
    }
}

/// The segment files of a journal, oldest first.
pub fn segments(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io_path("list", dir, e)),
    };
    for item in rd {
        let item = item.ctx("list", dir)?;
        let name = item.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(stem) = name.strip_suffix(&format!(".{EXT}")) else {
            continue;
        };
        if let Ok(seq) = u64::from_str_radix(stem, 16) {
            out.push((seq, item.path()));
        }
    }
    out.sort();
    Ok(out.into_iter().map(|(_, p)| p).collect())
}

/// A record read back: its entries, and where its page images are.
pub struct Record {
    pub entries: Vec<Entry>,
    /// The segment and the offset of the record's body in it.
    pub at: (usize, u64),
}

/// Reads one segment's records in order.
pub struct SegmentReader {
    file: File,
    path: PathBuf,
    pub page_size: u32,
    pub first_seq: u64,
    offset: u64,
    len: u64,
}

impl SegmentReader {
    pub fn open(path: &Path) -> Result<SegmentReader> {
        let file = File::open(path).ctx("open", path)?;
        let len = file.metadata().ctx("stat", path)?.len();
        let mut h = [0u8; HEADER_LEN];
        let n = crate::source::read_full_at(&file, &mut h, 0).ctx("read", path)?;
        if n < HEADER_LEN || &h[..8] != MAGIC {
            return Err(Error::corrupt(format!(
                "{}: not a capture journal segment",
                path.display()
            )));
        }
        let version = u32::from_le_bytes(h[8..12].try_into().expect("4 bytes"));
        if version != VERSION {
            return Err(Error::VersionUnsupported(format!(
                "{}: capture journal version {version}; this strata reads version {VERSION}",
                path.display()
            )));
        }
        let page_size = u32::from_le_bytes(h[12..16].try_into().expect("4 bytes"));
        if !page_size.is_power_of_two() || !(512..=65536).contains(&page_size) {
            return Err(Error::corrupt(format!(
                "{}: page size {page_size} in a capture journal segment",
                path.display()
            )));
        }
        Ok(SegmentReader {
            file,
            path: path.to_path_buf(),
            page_size,
            first_seq: u64::from_le_bytes(h[16..24].try_into().expect("8 bytes")),
            offset: HEADER_LEN as u64,
            len,
        })
    }

    fn damage(&self, what: &str) -> Error {
        Error::corrupt(format!(
            "{}: capture journal damaged at byte {} ({what})",
            self.path.display(),
            self.offset
        ))
    }

    /// The next record's entries (its body's offset in `at.1`; `at.0` is left 0), or `None` at
    /// the end of what was written whole. Only the head is read (and checked against its own
    /// checksum); the images are read, and the whole body checked, by
    /// [`SegmentReader::images_at`]. A record cut short is the end (a follower stopped while
    /// writing it); a bad length or head checksum before the end is damage.
    pub fn next_record(&mut self) -> Result<Option<Record>> {
        if self.offset + 8 > self.len {
            return Ok(None);
        }
        let mut l = [0u8; 8];
        crate::source::read_full_at(&self.file, &mut l, self.offset).ctx("read", &self.path)?;
        let body_len = u32::from_le_bytes(l[..4].try_into().expect("4 bytes")) as usize;
        let head_len = u32::from_le_bytes(l[4..].try_into().expect("4 bytes")) as usize;
        let end = self.offset + 4 + body_len as u64 + 8;
        if body_len > BODY_MAX {
            return Err(self.damage("record length"));
        }
        if end > self.len {
            return Ok(None);
        }
        if head_len + 4 + 8 + 1 > body_len {
            return Err(self.damage("record head length"));
        }
        let mut head = vec![0u8; head_len + 8];
        let n = crate::source::read_full_at(&self.file, &mut head, self.offset + 8)
            .ctx("read", &self.path)?;
        if n < head.len() {
            return Ok(None);
        }
        let sum = u64::from_le_bytes(head[head_len..].try_into().expect("8 bytes"));
        head.truncate(head_len);
        if twox_hash::XxHash3_64::oneshot(&head) != sum {
            // The last record may be torn mid-write; anything before it is damage.
            return match end == self.len {
                true => Ok(None),
                false => Err(self.damage("record head checksum")),
            };
        }
        let entries: Vec<Entry> = crate::codec::decode(&head, "capture journal record")?;
        let at = self.offset + 4;
        self.offset = end;
        Ok(Some(Record {
            entries,
            at: (0, at),
        }))
    }

    /// The page images of the record whose body is at `at`, `pages` pages of them.
    pub fn images_at(&self, at: u64, pages: usize) -> Result<Vec<u8>> {
        let mut l = [0u8; 4];
        crate::source::read_full_at(&self.file, &mut l, at - 4).ctx("read", &self.path)?;
        let body_len = u32::from_le_bytes(l) as usize;
        if body_len > BODY_MAX {
            return Err(self.damage("record length"));
        }
        let mut body = vec![0u8; body_len + 8];
        let n = crate::source::read_full_at(&self.file, &mut body, at).ctx("read", &self.path)?;
        if n < body.len() {
            return Err(self.damage("record cut short"));
        }
        let sum = u64::from_le_bytes(body[body_len..].try_into().expect("8 bytes"));
        body.truncate(body_len);
        if twox_hash::XxHash3_64::oneshot(&body) != sum {
            return Err(self.damage("record checksum"));
        }
        let (_, images) = split_body(&body).ok_or_else(|| self.damage("record head"))?;
        let raw = Some(pages)
            .filter(|n| *n <= RECORD_PAGES_MAX)
            .and_then(|n| n.checked_mul(self.page_size as usize))
            .ok_or_else(|| self.damage("record size"))?;
        let (flag, stored) = images.split_first().ok_or_else(|| self.damage("images"))?;
        let compression = match flag {
            0 => crate::compress::Compression::None,
            1 => crate::compress::Compression::Zstd,
            _ => return Err(self.damage("image flag")),
        };
        crate::compress::decompress(stored, compression, raw)
    }
}

/// A record body's head and the rest (the images with their flag byte), past the head's
/// checksum.
fn split_body(body: &[u8]) -> Option<(&[u8], &[u8])> {
    let (l, rest) = body.split_first_chunk::<4>()?;
    let l = u32::from_le_bytes(*l) as usize;
    let (head, rest) = rest.split_at_checked(l)?;
    Some((head, rest.get(8..)?))
}

/// Where the newest image of a page is: the segment, the record's body offset, and the page's
/// index among the record's images.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageAt {
    pub segment: usize,
    pub record: u64,
    pub index: u32,
}

/// The changes one chain of a journal holds between two places of the log.
pub struct Changes {
    /// The segments they are in.
    pub segments: Vec<PathBuf>,
    /// Each changed page's newest image, by page number.
    pub pages: std::collections::BTreeMap<u32, PageAt>,
    /// The database's size in pages at `to`.
    pub db_pages: u32,
    /// How many entries ran from `from` to `to`.
    pub entries: u64,
    /// The pages in each record (for reading its images).
    pub record_pages: std::collections::HashMap<(usize, u64), usize>,
}

impl Changes {
    /// Readers of the segments the changes are in; `None` if one holds pages of another size
    /// than `page_size`.
    pub fn readers(&self, page_size: u32) -> Result<Option<Vec<SegmentReader>>> {
        let readers = self
            .segments
            .iter()
            .map(|p| SegmentReader::open(p))
            .collect::<Result<Vec<_>>>()?;
        Ok(readers
            .iter()
            .all(|r| r.page_size == page_size)
            .then_some(readers))
    }

    /// Hands `put` the image at each of `wanted` (a key of the caller's and where the image
    /// is), record by record, so that each record's images are unpacked once.
    pub fn images<K>(
        &self,
        readers: &[SegmentReader],
        wanted: impl IntoIterator<Item = (K, PageAt)>,
        mut put: impl FnMut(K, &[u8]) -> Result<()>,
    ) -> Result<()> {
        let mut by_record: std::collections::BTreeMap<(usize, u64), Vec<(u32, K)>> =
            Default::default();
        for (key, at) in wanted {
            by_record
                .entry((at.segment, at.record))
                .or_default()
                .push((at.index, key));
        }
        for ((segment, record), pages) in by_record {
            let count = *self
                .record_pages
                .get(&(segment, record))
                .ok_or_else(|| Error::corrupt("capture journal: a record moved"))?;
            let reader = readers
                .get(segment)
                .ok_or_else(|| Error::corrupt("capture journal: a segment moved"))?;
            let images = reader.images_at(record, count)?;
            let page = reader.page_size as usize;
            for (index, key) in pages {
                let at = index as usize * page;
                let src = images
                    .get(at..at + page)
                    .ok_or_else(|| Error::corrupt("capture journal: page index out of range"))?;
                put(key, src)?;
            }
        }
        Ok(())
    }
}

/// The changes from `from` to `to`, if one chain of the journal in `dir` runs between them
/// (`Ok(None)` otherwise). `from == to` is an empty chain.
pub fn changes(dir: &Path, from: &LogPos, to: &LogPos) -> Result<Option<Changes>> {
    Ok(chain(dir, from, Stop::At(*to))?.map(|c| c.changes))
}

/// The changes of the transactions committed (as the follower saw them) after `from` and at or
/// before `until_ns`, along the chain from `from`; `None` when no chain starts at `from`.
pub fn changes_until(dir: &Path, from: &LogPos, until_ns: i64) -> Result<Option<Chain>> {
    chain(dir, from, Stop::Until(until_ns))
}

/// What reading a whole journal found: records and page images read and checked, and damage.
#[derive(Debug, Default)]
pub struct Checked {
    pub records: u64,
    pub bytes: u64,
    pub problems: Vec<String>,
}

/// Reads every record of the journal in `dir` whole: each head and each body against its
/// checksum, and the images unpacked. A record cut short at the end of a segment is where a
/// follower stopped, not damage.
pub fn check(dir: &Path) -> Result<Checked> {
    let mut out = Checked::default();
    for path in segments(dir)? {
        let mut reader = match SegmentReader::open(&path) {
            Ok(r) => r,
            Err(e) => {
                out.problems.push(e.to_string());
                continue;
            }
        };
        loop {
            let rec = match reader.next_record() {
                Ok(Some(rec)) => rec,
                Ok(None) => break,
                Err(e) => {
                    out.problems.push(e.to_string());
                    break;
                }
            };
            let pages: usize = rec.entries.iter().map(|e| e.pages.len()).sum();
            match reader.images_at(rec.at.1, pages) {
                Ok(images) => {
                    out.records += 1;
                    out.bytes += images.len() as u64;
                }
                Err(e) => out.problems.push(format!(
                    "{}: the record at byte {}: {e}",
                    path.display(),
                    rec.at.1 - 4
                )),
            }
        }
    }
    Ok(out)
}

/// How far the journal goes from a place: when the entry ending there was committed, and the
/// last entry of the chain it is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reach {
    pub from_ns: i64,
    pub to_ns: i64,
    /// The chain is the journal's last (no gap after it): its follower may still be writing it.
    pub last: bool,
}

/// For each of `places` found in the journal as the end of an entry, how far the chain it is
/// on goes (one pass over the records' heads; the same gaps as a walk along a chain).
pub fn reach(dir: &Path, places: &[LogPos]) -> Result<std::collections::HashMap<LogPos, Reach>> {
    // Chains are numbered as they are met; a place is on the chain current when it was met.
    let mut chain = 0usize;
    let mut ends: Vec<i64> = vec![i64::MIN];
    let mut found: Vec<(LogPos, i64, usize)> = Vec::new();
    let mut at: Option<LogPos> = None;
    let new_chain = |ends: &mut Vec<i64>, at: &mut Option<LogPos>| {
        ends.push(i64::MIN);
        *at = None;
        ends.len() - 1
    };
    for path in segments(dir)? {
        let mut reader = match SegmentReader::open(&path) {
            Ok(r) => r,
            Err(_) => {
                chain = new_chain(&mut ends, &mut at);
                continue;
            }
        };
        loop {
            let rec = match reader.next_record() {
                Ok(Some(rec)) => rec,
                Ok(None) => break,
                Err(_) => {
                    chain = new_chain(&mut ends, &mut at);
                    break;
                }
            };
            for e in &rec.entries {
                if at.is_some_and(|p| e.start != p) {
                    chain = new_chain(&mut ends, &mut at);
                }
                if e.more {
                    continue;
                }
                at = Some(e.end);
                ends[chain] = e.time_ns;
                // The first chain a place is on is the one a walk from it takes.
                if places.contains(&e.end) && !found.iter().any(|f| f.0 == e.end) {
                    found.push((e.end, e.time_ns, chain));
                }
            }
        }
    }
    let last = ends.len() - 1;
    Ok(found
        .into_iter()
        .map(|(pos, from_ns, c)| {
            (
                pos,
                Reach {
                    from_ns,
                    to_ns: ends[c],
                    last: c == last,
                },
            )
        })
        .collect())
}

/// Where a walk along a chain stops.
#[derive(Clone, Copy)]
enum Stop {
    /// After the entry ending there.
    At(LogPos),
    /// Before the first entry committed after this time.
    Until(i64),
}

/// A walk along one chain: the changes, and how far it went.
pub struct Chain {
    pub changes: Changes,
    /// Where the last entry taken ended (`from` when none was).
    pub end: LogPos,
    /// When the last entry taken was committed.
    pub last_ns: Option<i64>,
    /// The chain goes on past the stop (an entry committed later follows).
    pub more: bool,
    /// The chain broke before the stop (a follower lost its place, or stopped and another
    /// started a new chain, or a record is damaged): nothing is known past its end.
    pub broken: bool,
}

/// A gap in the journal (entries that do not follow on, a damaged record, an unreadable
/// segment) during a walk: for `Until`, once the chain was found, its end (returns true); for
/// `At`, the walk starts over, forgetting what the broken chain had gathered, since a later
/// chain may start at the same place (a follower restarted there).
fn gap(
    stop: Stop,
    found: bool,
    out: &mut Chain,
    at: &mut Option<LogPos>,
    pending: &mut Vec<(u32, PageAt)>,
) -> bool {
    if found && matches!(stop, Stop::Until(_)) {
        out.broken = true;
        return true;
    }
    *at = None;
    out.changes.pages.clear();
    out.changes.entries = 0;
    pending.clear();
    false
}

fn chain(dir: &Path, from: &LogPos, stop: Stop) -> Result<Option<Chain>> {
    let segs = segments(dir)?;
    let mut out = Chain {
        changes: Changes {
            segments: segs.clone(),
            pages: Default::default(),
            db_pages: 0,
            entries: 0,
            record_pages: Default::default(),
        },
        end: *from,
        last_ns: None,
        more: false,
        broken: false,
    };
    if matches!(stop, Stop::At(to) if to == *from) {
        return Ok(Some(out));
    }
    let mut at: Option<LogPos> = None;
    // The chain found (for `Until`, once it is there, a gap ends it).
    let mut found = false;
    // Pages of the pieces of a transaction not ended yet.
    let mut pending: Vec<(u32, PageAt)> = Vec::new();
    let finish = |mut out: Chain| {
        let db_pages = out.changes.db_pages;
        if db_pages > 0 {
            out.changes.pages.retain(|pgno, _| *pgno <= db_pages);
        }
        out
    };
    for (k, path) in segs.iter().enumerate() {
        // A segment that cannot be read (damaged, or cut short by a crash before its header
        // was written) is a gap.
        let mut reader = match SegmentReader::open(path) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("{e}");
                if gap(stop, found, &mut out, &mut at, &mut pending) {
                    return Ok(Some(finish(out)));
                }
                continue;
            }
        };
        loop {
            let rec = match reader.next_record() {
                Ok(Some(rec)) => rec,
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!("{e}");
                    if gap(stop, found, &mut out, &mut at, &mut pending) {
                        return Ok(Some(finish(out)));
                    }
                    break;
                }
            };
            let count: usize = rec.entries.iter().map(|e| e.pages.len()).sum();
            out.changes.record_pages.insert((k, rec.at.1), count);
            let mut index = 0u32;
            for e in &rec.entries {
                // A gap ends the chain that started at `from`; a later one may start there again
                // (a follower restarted).
                if at.is_some_and(|p| e.start != p)
                    && gap(stop, found, &mut out, &mut at, &mut pending)
                {
                    return Ok(Some(finish(out)));
                }
                if at.is_none() && e.start == *from {
                    at = Some(*from);
                    found = true;
                }
                if at.is_none() && e.end == *from && !e.more {
                    // The place is this entry's end: the chain goes on from the next.
                    found = true;
                    at = Some(*from);
                    out.last_ns = Some(e.time_ns);
                    index += e.pages.len() as u32;
                    continue;
                }
                if at.is_some() {
                    let place = |j: usize| PageAt {
                        segment: k,
                        record: rec.at.1,
                        index: index + j as u32,
                    };
                    if e.more {
                        // A piece: its pages wait for the end of its transaction.
                        pending.extend(e.pages.iter().enumerate().map(|(j, p)| (*p, place(j))));
                        index += e.pages.len() as u32;
                        continue;
                    }
                    if let Stop::Until(t) = stop
                        && e.time_ns > t
                    {
                        out.more = true;
                        return Ok(Some(finish(out)));
                    }
                    for (pgno, at) in pending.drain(..) {
                        out.changes.pages.insert(pgno, at);
                    }
                    for (j, pgno) in e.pages.iter().enumerate() {
                        out.changes.pages.insert(*pgno, place(j));
                    }
                    out.changes.entries += 1;
                    out.changes.db_pages = e.db_pages;
                    out.end = e.end;
                    out.last_ns = Some(e.time_ns);
                    at = Some(e.end);
                    if matches!(stop, Stop::At(to) if e.end == to) {
                        return Ok(Some(finish(out)));
                    }
                }
                index += e.pages.len() as u32;
            }
        }
    }
    Ok(match (stop, found) {
        (Stop::Until(_), true) => Some(finish(out)),
        _ => None,
    })
}

/// Removes the segments of `dir` last written before `cutoff` (never the newest segment, which
/// a follower may still append to); returns how many.
pub fn prune_older_than(dir: &Path, cutoff: std::time::SystemTime) -> Result<u64> {
    let segs = segments(dir)?;
    let mut removed = 0;
    for seg in segs.iter().take(segs.len().saturating_sub(1)) {
        let old = std::fs::metadata(seg)
            .and_then(|m| m.modified())
            .is_ok_and(|t| t < cutoff);
        if old {
            std::fs::remove_file(seg).ctx("remove", seg)?;
            removed += 1;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(frame: u32) -> LogPos {
        LogPos {
            salt1: 7,
            salt2: 9,
            frame,
            checksum: (frame, frame * 3),
        }
    }

    fn entry(from: u32, to: u32, pages: &[u32]) -> Entry {
        Entry {
            seq: 0,
            time_ns: to as i64 * 1000,
            start: pos(from),
            end: pos(to),
            db_pages: 100,
            pages: pages.to_vec(),
            more: false,
        }
    }

    fn images(pages: &[u32], tag: u8) -> Vec<u8> {
        pages
            .iter()
            .flat_map(|p| vec![*p as u8 ^ tag; 512])
            .collect()
    }

    /// A chain broken by an unreadable segment and begun again at the same place gathers only
    /// what the new chain holds.
    #[test]
    fn a_chain_begun_again_forgets_the_broken_one() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = JournalWriter::open(dir.path(), 512).unwrap();
        w.append(&mut [entry(1, 3, &[5])], &images(&[5], 0))
            .unwrap();
        drop(w);
        std::fs::write(
            dir.path().join("0000000000000001.journal"),
            b"not a segment",
        )
        .unwrap();
        let mut w = JournalWriter::open(dir.path(), 512).unwrap();
        w.append(&mut [entry(1, 4, &[6])], &images(&[6], 0))
            .unwrap();
        let c = changes(dir.path(), &pos(1), &pos(4)).unwrap().unwrap();
        assert_eq!(c.pages.keys().copied().collect::<Vec<_>>(), vec![6]);
        assert_eq!(c.entries, 1);
    }

    /// A transaction in pieces counts only once its last piece is there, and then whole.
    #[test]
    fn pieces_count_with_the_entry_that_ends_them() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = JournalWriter::open(dir.path(), 512).unwrap();
        let piece = |pages: &[u32], t: i64| Entry {
            end: pos(3),
            db_pages: 0,
            more: true,
            time_ns: t,
            ..entry(3, 3, pages)
        };
        w.append(&mut [entry(1, 3, &[1])], &images(&[1], 0))
            .unwrap();
        w.append(&mut [piece(&[2, 3], 3100)], &images(&[2, 3], 0))
            .unwrap();
        w.append(&mut [piece(&[4], 3200)], &images(&[4], 0))
            .unwrap();
        // Cut short: only the pieces are there.
        assert!(changes(dir.path(), &pos(1), &pos(5)).unwrap().is_none());
        let before = changes_until(dir.path(), &pos(1), 9999).unwrap().unwrap();
        assert_eq!(
            before.changes.pages.keys().copied().collect::<Vec<_>>(),
            vec![1]
        );
        w.append(&mut [entry(3, 5, &[2])], &images(&[2], 9))
            .unwrap();
        let c = changes(dir.path(), &pos(1), &pos(5)).unwrap().unwrap();
        assert_eq!(
            c.pages.keys().copied().collect::<Vec<_>>(),
            vec![1, 2, 3, 4]
        );
        // Page 2's newest image is the last entry's.
        assert_eq!(c.pages[&2].index, 0);
        // Up to an instant before the transaction ended: none of its pages.
        let early = changes_until(dir.path(), &pos(1), 4000).unwrap().unwrap();
        assert_eq!(early.changes.pages.len(), 1);
        assert!(early.more);
        assert_eq!(journal_times(dir.path(), pos(5)), Some(5000));
        assert_eq!(journal_times(dir.path(), pos(3)), Some(3000));
    }

    fn journal_times(dir: &Path, p: LogPos) -> Option<i64> {
        reach(dir, &[p]).unwrap().get(&p).map(|r| r.from_ns)
    }

    /// Records written come back: the chain's newest image of each page, chains cut at gaps
    /// and at an instant, a torn tail ignored and a damaged head a gap.
    #[test]
    fn chains_read_back_and_damage_is_a_gap() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = JournalWriter::open(dir.path(), 512).unwrap();
        w.append(&mut [entry(1, 3, &[5, 6])], &images(&[5, 6], 1))
            .unwrap();
        w.append(&mut [entry(3, 4, &[6, 7]), entry(4, 9, &[5])], &{
            let mut i = images(&[6, 7], 2);
            i.extend(images(&[5], 3));
            i
        })
        .unwrap();
        let c = changes(dir.path(), &pos(1), &pos(9)).unwrap().unwrap();
        assert_eq!(c.entries, 3);
        assert_eq!(c.pages.keys().copied().collect::<Vec<_>>(), vec![5, 6, 7]);
        let at = c.pages[&5];
        let reader = SegmentReader::open(&c.segments[at.segment]).unwrap();
        let img = reader
            .images_at(at.record, c.record_pages[&(at.segment, at.record)])
            .unwrap();
        assert_eq!(img[at.index as usize * 512], 5 ^ 3);
        // From the middle, and up to an instant.
        assert_eq!(
            changes(dir.path(), &pos(3), &pos(9))
                .unwrap()
                .unwrap()
                .entries,
            2
        );
        let until = changes_until(dir.path(), &pos(1), 4500).unwrap().unwrap();
        assert_eq!(
            (until.changes.entries, until.more, until.broken),
            (2, true, false)
        );
        // No chain from a place never seen, nor to one.
        assert!(changes(dir.path(), &pos(2), &pos(9)).unwrap().is_none());
        assert!(changes(dir.path(), &pos(1), &pos(8)).unwrap().is_none());

        // A torn record at the end is not there; a damaged head before the end is a gap.
        let seg = segments(dir.path()).unwrap().pop().unwrap();
        let whole = std::fs::read(&seg).unwrap();
        std::fs::write(&seg, &whole[..whole.len() - 10]).unwrap();
        assert!(changes(dir.path(), &pos(1), &pos(9)).unwrap().is_none());
        assert!(changes(dir.path(), &pos(1), &pos(3)).unwrap().is_some());
        let mut bad = whole.clone();
        bad[HEADER_LEN + 12] ^= 0xff;
        std::fs::write(&seg, &bad).unwrap();
        assert!(changes(dir.path(), &pos(1), &pos(3)).unwrap().is_none());
        assert!(changes(dir.path(), &pos(3), &pos(9)).unwrap().is_none());
    }

    /// How far the journal goes from a place: to the end of its chain (a gap ends it), the
    /// last chain marked as such.
    #[test]
    fn reach_ends_at_a_gap() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = JournalWriter::open(dir.path(), 512).unwrap();
        w.append(
            &mut [entry(1, 3, &[5]), entry(3, 4, &[6]), entry(4, 6, &[7])],
            &images(&[5, 6, 7], 0),
        )
        .unwrap();
        // A follower that lost its place starts again elsewhere.
        w.append(
            &mut [entry(10, 12, &[8]), entry(12, 15, &[9])],
            &images(&[8, 9], 0),
        )
        .unwrap();
        let r = reach(dir.path(), &[pos(3), pos(6), pos(12), pos(99)]).unwrap();
        let first = Reach {
            from_ns: 3000,
            to_ns: 6000,
            last: false,
        };
        assert_eq!(r[&pos(3)], first);
        assert_eq!(
            r[&pos(6)],
            Reach {
                from_ns: 6000,
                ..first
            }
        );
        assert_eq!(
            r[&pos(12)],
            Reach {
                from_ns: 12000,
                to_ns: 15000,
                last: true
            }
        );
        assert!(!r.contains_key(&pos(99)));
    }

    /// A whole journal read back: every record, and a damaged body found.
    #[test]
    fn check_reads_every_record_and_finds_damage() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = JournalWriter::open(dir.path(), 512).unwrap();
        w.append(&mut [entry(1, 3, &[5, 6])], &images(&[5, 6], 1))
            .unwrap();
        w.append(&mut [entry(3, 4, &[7])], &images(&[7], 2))
            .unwrap();
        drop(w);
        let c = check(dir.path()).unwrap();
        assert_eq!((c.records, c.bytes, c.problems.len()), (2, 3 * 512, 0));
        // A byte of the first record's images flipped (its head stays whole).
        let seg = segments(dir.path()).unwrap().pop().unwrap();
        let mut bytes = std::fs::read(&seg).unwrap();
        let first_len = u32::from_le_bytes(bytes[HEADER_LEN..HEADER_LEN + 4].try_into().unwrap());
        bytes[HEADER_LEN + 4 + first_len as usize - 1] ^= 0xff;
        std::fs::write(&seg, &bytes).unwrap();
        let c = check(dir.path()).unwrap();
        assert_eq!(c.records, 1);
        assert_eq!(c.problems.len(), 1, "{:?}", c.problems);
        assert!(c.problems[0].contains("checksum"), "{:?}", c.problems);
    }
}

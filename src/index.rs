//! The redb index: a cache of where every blob lives, the snapshot list and the file cache.
//!
//! Every table is defined here. The index can be rebuilt from pack trailers and manifest files;
//! it is never the only copy of anything a restore needs.

use crate::compress::Compression;
use crate::error::{Error, Result};
use crate::id::ChunkId;
use crate::pack::BlobKind;
use rayon::prelude::*;
use redb::{
    Database, ReadOnlyDatabase, ReadTransaction, ReadableDatabase, ReadableTable,
    ReadableTableMetadata, TableDefinition,
};
use std::ops::Bound;
use std::path::Path;

/// blob id -> [`BlobLoc`] (28 bytes).
pub const BLOBS: TableDefinition<&[u8; 32], &[u8; BLOB_LOC_LEN]> = TableDefinition::new("blobs");
/// pack number -> [`PackInfo`] (48 bytes).
pub const PACKS: TableDefinition<u32, &[u8; 48]> = TableDefinition::new("packs");
/// snapshot id -> framed manifest bytes (the same bytes as `snapshots/<id>.snap`).
pub const SNAPSHOTS: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("snapshots");
/// absolute path bytes -> [`FileStamp`] for the unchanged-file fast path.
pub const FILES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("files");
/// named counters and settings.
pub const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// blob id -> its reference count, for blobs with at least one reference (see the `refs` module).
pub const REFS: TableDefinition<&[u8; 32], u32> = TableDefinition::new("refs");
/// snapshot id -> 0: snapshots whose references are not in [`REFS`] yet (a backup adds its
/// snapshot here; the next forget or gc counts it: see the `refs` module).
pub const UNCOUNTED: TableDefinition<&[u8; 32], u8> = TableDefinition::new("uncounted");
/// pack number -> [`PackUse`] (16 bytes): how many of its blobs are indexed and live.
pub const PACK_USE: TableDefinition<u32, &[u8; 16]> = TableDefinition::new("pack_use");
/// Archived WAL files by name (see the `wal_names` file).
pub use wal_names::{META_PG_WAL_COMPLETE, PG_WAL, pg_wal, pg_wal_ids, pg_wal_newest_first};
mod wal_names;

pub const META_NEXT_PACK: &str = "next_pack";
pub const META_INDEX_VERSION: &str = "index_version";
/// 2: reference counts ([`REFS`], [`PACK_USE`]). A version-1 index gets them on its first write
/// open (`refs::upgrade`).
pub const INDEX_VERSION: u64 = 2;

/// Where a blob is stored: its frame in a pack, and its place inside the frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlobLoc {
    pub pack: u32,
    pub frame_offset: u32,
    pub frame_stored_len: u32,
    pub frame_raw_len: u32,
    pub offset_in_frame: u32,
    pub raw_len: u32,
    pub kind: BlobKind,
    pub compression: Compression,
}

/// Encoded size of a [`BlobLoc`].
pub const BLOB_LOC_LEN: usize = 28;

impl BlobLoc {
    pub fn from_entry(pack: u32, e: &crate::pack::PackEntry) -> Self {
        BlobLoc {
            pack,
            frame_offset: e.frame.offset as u32,
            frame_stored_len: e.frame.stored_len,
            frame_raw_len: e.frame.raw_len,
            offset_in_frame: e.offset_in_frame,
            raw_len: e.raw_len,
            kind: e.kind,
            compression: e.frame.compression,
        }
    }

    pub fn encode(&self) -> [u8; BLOB_LOC_LEN] {
        let mut b = [0u8; BLOB_LOC_LEN];
        for (i, v) in [
            self.pack,
            self.frame_offset,
            self.frame_stored_len,
            self.frame_raw_len,
            self.offset_in_frame,
            self.raw_len,
        ]
        .iter()
        .enumerate()
        {
            b[4 * i..4 * i + 4].copy_from_slice(&v.to_le_bytes());
        }
        b[24] = self.kind as u8;
        b[25] = self.compression as u8;
        b
    }

    pub fn decode(b: &[u8; BLOB_LOC_LEN]) -> Result<Self> {
        let le = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
        let loc = BlobLoc {
            pack: le(0),
            frame_offset: le(4),
            frame_stored_len: le(8),
            frame_raw_len: le(12),
            offset_in_frame: le(16),
            raw_len: le(20),
            kind: BlobKind::from_u8(b[24])
                .ok_or_else(|| Error::corrupt("index: blob entry with unknown kind"))?,
            compression: Compression::from_u8(b[25])
                .ok_or_else(|| Error::corrupt("index: blob entry with unknown compression"))?,
        };
        if loc.offset_in_frame as u64 + loc.raw_len as u64 > loc.frame_raw_len as u64
            || loc.frame_raw_len > crate::pack::MAX_BLOB_BYTES
            || loc.frame_stored_len > crate::pack::MAX_BLOB_BYTES
        {
            return Err(Error::corrupt("index: blob entry lies outside its frame"));
        }
        Ok(loc)
    }

    /// The frame this blob is in, as a key for caching decompressed frames.
    pub fn frame_key(&self) -> (u32, u32) {
        (self.pack, self.frame_offset)
    }
}

/// A pack as the index knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PackInfo {
    pub id: ChunkId,
    pub size: u64,
    pub blobs: u32,
}

impl PackInfo {
    pub fn encode(&self) -> [u8; 48] {
        let mut b = [0u8; 48];
        b[0..32].copy_from_slice(self.id.as_bytes());
        b[32..40].copy_from_slice(&self.size.to_le_bytes());
        b[40..44].copy_from_slice(&self.blobs.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8; 48]) -> Self {
        PackInfo {
            id: ChunkId(b[0..32].try_into().unwrap()),
            size: u64::from_le_bytes(b[32..40].try_into().unwrap()),
            blobs: u32::from_le_bytes(b[40..44].try_into().unwrap()),
        }
    }

    /// The pack's object name in the repository.
    pub fn object_name(&self) -> String {
        pack_object_name(&self.id)
    }
}

pub fn pack_object_name(id: &ChunkId) -> String {
    let hex = id.to_hex();
    format!("packs/{}/{}.pack", &hex[..2], hex)
}

/// What a file looked like when it was last read, and what it was stored as.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileStamp {
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    pub ino: u64,
    pub dev: u64,
    pub content: crate::manifest::Content,
    /// Whether the file was cut at database pages (a change of cut mode must re-read it).
    pub page_size: u32,
    /// For a file cut at database pages: its write-ahead log as it was then. A commit in WAL
    /// mode changes only the log.
    pub wal: LogStamp,
    /// For a file cut at database pages: whether its image was read through SQLite (see
    /// `manifest::Entry::through_sqlite`).
    pub through_sqlite: bool,
}

/// A [`FileStamp`] as index version 2 wrote it before `through_sqlite` (still decoded: its file
/// keeps its cache entry, as a database copied as plain bytes).
#[derive(serde::Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
struct FileStampV1 {
    size: u64,
    mtime_ns: i64,
    ctime_ns: i64,
    ino: u64,
    dev: u64,
    content: crate::manifest::Content,
    page_size: u32,
    wal: LogStamp,
}

impl FileStamp {
    /// Decodes a file-cache entry of either layout; `None` when it is damaged.
    pub fn decode(b: &[u8]) -> Option<FileStamp> {
        if let Ok(s) = crate::codec::decode::<FileStamp>(b, "file cache") {
            return Some(s);
        }
        let s: FileStampV1 = crate::codec::decode(b, "file cache").ok()?;
        Some(FileStamp {
            size: s.size,
            mtime_ns: s.mtime_ns,
            ctime_ns: s.ctime_ns,
            ino: s.ino,
            dev: s.dev,
            content: s.content,
            page_size: s.page_size,
            wal: s.wal,
            through_sqlite: false,
        })
    }
}

/// The file cache's record of a SQLite database's write-ahead log (`-wal` file).
///
/// Encoded in place of the `Option<(size, mtime, ctime, inode)>` earlier versions wrote: the
/// variant tags 0 and 1 are that option's `None` and `Some`, so their entries still decode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum LogStamp {
    /// No log (or a file not cut at pages): the stamp's size is the content's.
    None,
    /// An earlier version's stamp (size, mtime, ctime, inode). Never taken now, so it never
    /// matches: the database is read again once.
    Metadata(u64, i64, i64, u64),
    /// The log as it was, and the size of the image read through SQLite (larger than the main
    /// file while committed pages are still in the log).
    Log { log: WalStamp, image: u64 },
    /// As `Log`, for an image read from the main file and the log's frames: where the image ends
    /// in the log. A later backup that finds the same log (its checkpoint sequence and salts)
    /// still holding that frame reads only the frames after it.
    Frames {
        log: WalStamp,
        image: u64,
        position: LogPosition,
    },
}

/// Where an image ends in a database's log: its last frame (SQLite's `mxFrame`, 0 when it uses
/// no frame) and the log's cumulative checksum there (the header's at frame 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LogPosition {
    pub frames: u32,
    pub checksum: (u32, u32),
}

/// A write-ahead log's size and mtime, and its header's checkpoint sequence and salts (bytes
/// 12..24, big-endian; zero when the log is shorter than its header). A commit appends frames
/// (size and mtime), or rewrites frames a rolled-back transaction left (mtime); a log reset
/// writes new salts; a checkpoint moves frames into the main file, whose own stamp changes.
/// Readers never write the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WalStamp {
    pub size: u64,
    pub mtime_ns: i64,
    pub checkpoint: u32,
    pub salt1: u32,
    pub salt2: u32,
}

enum Db {
    Write(Database),
    Read(ReadOnlyDatabase),
}

pub struct Index {
    db: Db,
    /// The file opened and its device and inode, to notice it being replaced (by `strata repair
    /// index`) while this process works on the one it opened.
    file: Option<(std::path::PathBuf, u64, u64)>,
}

/// The device and inode of `path`, if it exists.
fn identity(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// The most the index keeps in memory. Every backup, restore or gc is a new process that starts
/// with an empty cache, and a large database's index (one entry per page) is hundreds of MiB: a
/// 16 MiB cache read the same B-tree pages again and again (an hourly backup of an 8.8 GB
/// database spent twice as long walking its previous chunk list). Memory is taken only as pages
/// are read, so a small repository's index costs what it weighs.
const CACHE_BYTES: usize = 256 << 20;

fn map_open_error(e: redb::DatabaseError, path: &Path) -> Error {
    match e {
        redb::DatabaseError::RepairAborted => Error::IndexNeedsRecovery,
        redb::DatabaseError::DatabaseAlreadyOpen => Error::Locked(format!(
            "index {} is open in another process; wait for it to finish",
            path.display()
        )),
        redb::DatabaseError::UpgradeRequired(v) => Error::VersionUnsupported(format!(
            "index {}: redb file format {v} needs a different strata version",
            path.display()
        )),
        other => Error::Corrupt(format!(
            "index {}: {other}; run `strata repair index`",
            path.display()
        )),
    }
}

/// How every index is opened: the cache size and single-writer concurrency.
fn builder() -> redb::Builder {
    let mut b = Database::builder();
    b.set_cache_size(CACHE_BYTES)
        .set_concurrency_mode(redb::ConcurrencyMode::SingleWriter);
    b
}

/// The index's file when the caller provides it instead of a path: a test's file that keeps
/// unsynced writes in memory and loses them in a simulated crash, for instance.
#[derive(Debug)]
pub struct IndexFile(pub Box<dyn redb::StorageBackend>);

impl redb::StorageBackend for IndexFile {
    fn len(&self) -> std::io::Result<u64> {
        self.0.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        self.0.read(offset, out)
    }

    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.0.set_len(len)
    }

    fn sync_data(&self) -> std::io::Result<()> {
        self.0.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.0.write(offset, data)
    }

    fn close(&self) -> std::io::Result<()> {
        self.0.close()
    }

    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> LockResult<bool> {
        self.0.try_lock_range(start, end)
    }

    fn try_lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> LockResult<bool> {
        self.0.try_lock_shared_range(start, end)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> LockResult<()> {
        self.0.lock_range(start, end)
    }

    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> LockResult<()> {
        self.0.lock_shared_range(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> LockResult<()> {
        self.0.unlock_range(start, end)
    }

    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> LockResult<bool> {
        self.0.query_lock_range(start, end)
    }
}

/// What redb's lock methods return.
type LockResult<T> = std::result::Result<T, redb::BackendError>;

impl Index {
    /// Opens (creating if absent) for writing. The caller holds the repository lock.
    pub fn open_write(path: &Path) -> Result<Self> {
        let mut index = Index::writable(builder().create(path), path)?;
        index.file = identity(path).map(|(dev, ino)| (path.to_path_buf(), dev, ino));
        Ok(index)
    }

    /// [`Index::open_write`] through a given file (a test's, that loses unsynced writes).
    pub fn open_write_with(file: IndexFile, path: &Path) -> Result<Self> {
        Index::writable(builder().create_with_backend(file), path)
    }

    fn writable(
        opened: std::result::Result<Database, redb::DatabaseError>,
        path: &Path,
    ) -> Result<Self> {
        let db = opened.map_err(|e| map_open_error(e, path))?;
        let index = Index {
            db: Db::Write(db),
            file: None,
        };
        index.init_tables()?;
        Ok(index)
    }

    /// Opens an existing index for reading, alongside a possible writer.
    pub fn open_read(path: &Path) -> Result<Self> {
        if !path.exists() {
            return Err(Error::corrupt(format!(
                "index {} is missing; run `strata repair index`",
                path.display()
            )));
        }
        let before = identity(path);
        let db = builder()
            .open_read_only(path)
            .map_err(|e| map_open_error(e, path))?;
        Ok(Index {
            db: Db::Read(db),
            file: before.map(|(dev, ino)| (path.to_path_buf(), dev, ino)),
        })
    }

    /// Fails if the index file on disk is no longer the one this handle opened: it was replaced
    /// (by `strata repair index`), and what this handle commits would be lost with the old file.
    pub fn ensure_current(&self) -> Result<()> {
        let Some((path, dev, ino)) = &self.file else {
            return Ok(());
        };
        if identity(path) == Some((*dev, *ino)) {
            return Ok(());
        }
        Err(Error::Locked(format!(
            "index {} was replaced while this command ran (by `strata repair index`?); what \
             this command wrote after that is not in it: run the command again",
            path.display()
        )))
    }

    fn init_tables(&self) -> Result<()> {
        let txn = self.write()?;
        {
            txn.open_table(BLOBS)?;
            txn.open_table(PACKS)?;
            txn.open_table(SNAPSHOTS)?;
            txn.open_table(FILES)?;
            txn.open_table(REFS)?;
            txn.open_table(UNCOUNTED)?;
            txn.open_table(PACK_USE)?;
            let mut meta = txn.open_table(META)?;
            let version = meta.get(META_INDEX_VERSION)?.map(|v| v.value());
            match version {
                None => {
                    meta.insert(META_INDEX_VERSION, INDEX_VERSION)?;
                }
                Some(v) if v > INDEX_VERSION => {
                    return Err(Error::VersionUnsupported(format!(
                        "index version {v} is newer than this strata supports ({INDEX_VERSION})"
                    )));
                }
                Some(_) => {}
            }
        }
        txn.commit()?;
        Ok(())
    }

    pub fn read(&self) -> Result<ReadTransaction> {
        Ok(match &self.db {
            Db::Write(db) => db.begin_read()?,
            Db::Read(db) => db.begin_read()?,
        })
    }

    pub fn write(&self) -> Result<redb::WriteTransaction> {
        match &self.db {
            Db::Write(db) => Ok(db.begin_write()?),
            Db::Read(_) => Err(Error::invalid("index opened read-only")),
        }
    }
}

/// Finds blobs and packs: the index as of a read transaction ([`IndexReader`]), or the tables of
/// a write transaction ([`WriteLocator`]).
pub trait Locate {
    fn blob(&self, id: &ChunkId) -> Result<Option<BlobLoc>>;
    fn pack(&self, no: u32) -> Result<PackInfo>;
}

fn missing_pack(no: u32) -> Error {
    Error::corrupt(format!(
        "index refers to pack #{no}, which it does not list; run `strata repair index`"
    ))
}

impl Locate for IndexReader {
    fn blob(&self, id: &ChunkId) -> Result<Option<BlobLoc>> {
        IndexReader::blob(self, id)
    }
    fn pack(&self, no: u32) -> Result<PackInfo> {
        IndexReader::pack(self, no)
    }
}

/// The blob and pack tables of a write transaction, read-only, for reading blobs while other
/// tables of the same transaction change.
pub struct WriteLocator<'t> {
    blobs: redb::Table<'t, &'static [u8; 32], &'static [u8; BLOB_LOC_LEN]>,
    packs: redb::Table<'t, u32, &'static [u8; 48]>,
}

impl<'t> WriteLocator<'t> {
    pub fn new(txn: &'t redb::WriteTransaction) -> Result<Self> {
        Ok(WriteLocator {
            blobs: txn.open_table(BLOBS)?,
            packs: txn.open_table(PACKS)?,
        })
    }
}

impl Locate for WriteLocator<'_> {
    fn blob(&self, id: &ChunkId) -> Result<Option<BlobLoc>> {
        match self.blobs.get(id.as_bytes())? {
            Some(v) => Ok(Some(BlobLoc::decode(v.value())?)),
            None => Ok(None),
        }
    }
    fn pack(&self, no: u32) -> Result<PackInfo> {
        match self.packs.get(no)? {
            Some(v) => Ok(PackInfo::decode(v.value())),
            None => Err(missing_pack(no)),
        }
    }
}

/// What the index knows of one pack's blobs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct PackUse {
    /// Blobs the blob table places in this pack.
    pub indexed: u32,
    /// Of those, the ones with a reference count above zero.
    pub live_blobs: u32,
    /// Their share of the pack's frame bytes (see [`share`]).
    pub live_bytes: u64,
}

impl PackUse {
    pub fn encode(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0..4].copy_from_slice(&self.indexed.to_le_bytes());
        b[4..8].copy_from_slice(&self.live_blobs.to_le_bytes());
        b[8..16].copy_from_slice(&self.live_bytes.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8; 16]) -> Self {
        PackUse {
            indexed: u32::from_le_bytes(b[0..4].try_into().expect("4 bytes")),
            live_blobs: u32::from_le_bytes(b[4..8].try_into().expect("4 bytes")),
            live_bytes: u64::from_le_bytes(b[8..16].try_into().expect("8 bytes")),
        }
    }

    pub fn gain(&mut self, loc: &BlobLoc) {
        self.live_blobs = self.live_blobs.saturating_add(1);
        self.live_bytes = self.live_bytes.saturating_add(share(loc));
    }

    pub fn lose(&mut self, loc: &BlobLoc) {
        self.live_blobs = self.live_blobs.saturating_sub(1);
        self.live_bytes = self.live_bytes.saturating_sub(share(loc));
    }
}

/// A blob's share of its pack's bytes: its part of the stored frame it is in.
pub fn share(loc: &BlobLoc) -> u64 {
    loc.frame_stored_len as u64 * loc.raw_len as u64 / (loc.frame_raw_len as u64).max(1)
}

/// Read-side helpers over one transaction.
pub struct IndexReader {
    blobs: Option<redb::ReadOnlyTable<&'static [u8; 32], &'static [u8; BLOB_LOC_LEN]>>,
    packs: Option<redb::ReadOnlyTable<u32, &'static [u8; 48]>>,
    /// The blob table in memory, once [`IndexReader::load_blobs`] has made it (lookups use the
    /// B-tree until then, and give the same answers).
    loaded: std::sync::OnceLock<LoadedBlobs>,
}

/// Bytes of memory one blob takes in [`LoadedBlobs`].
pub const LOADED_BLOB_BYTES: u64 = (32 + BLOB_LOC_LEN) as u64;

/// The blob table read whole into memory: ids in order, each with its encoded location.
///
/// A large restore looks up most of the index's blobs; one pass over the table and a lookup in
/// memory each cost a fraction of a B-tree descent per blob. The table is split by the first
/// byte of the id (ids are BLAKE3 output, so the parts are about equal), the parts are read in
/// parallel, and within a part a table of offsets by the id's leading bits narrows each
/// lookup to a few entries before a binary search. Ids from a hostile index that crowd into
/// one range only make that search longer: it stays a binary search.
struct LoadedBlobs {
    parts: Vec<LoadedPart>,
}

/// Parts of [`LoadedBlobs`]: a power of two, so that the first byte names the part.
const LOADED_PARTS: usize = 8;

#[derive(Default)]
struct LoadedPart {
    ids: Vec<[u8; 32]>,
    locs: Vec<[u8; BLOB_LOC_LEN]>,
    /// `starts[k]` is the first position whose id's leading `bits` bits (after the part's own)
    /// are at least `k`; one more entry closes the last range.
    starts: Vec<u32>,
    bits: u32,
}

impl LoadedPart {
    fn read(
        t: &redb::ReadOnlyTable<&'static [u8; 32], &'static [u8; BLOB_LOC_LEN]>,
        first: u8,
        last: u8,
        expect: usize,
    ) -> Result<LoadedPart> {
        let (mut lo, mut hi) = ([0u8; 32], [0xffu8; 32]);
        lo[0] = first;
        hi[0] = last;
        let mut part = LoadedPart {
            ids: Vec::with_capacity(expect),
            locs: Vec::with_capacity(expect),
            ..LoadedPart::default()
        };
        for item in t.range::<&[u8; 32]>(&lo..=&hi)? {
            let (k, v) = item?;
            part.ids.push(*k.value());
            part.locs.push(*v.value());
        }
        part.ids.shrink_to_fit();
        part.locs.shrink_to_fit();
        // About four ids per range of the offset table.
        part.bits = (part.ids.len() / 4).max(1).ilog2().min(20);
        let buckets = 1usize << part.bits;
        part.starts = Vec::with_capacity(buckets + 1);
        let mut at = 0usize;
        for k in 0..buckets {
            while at < part.ids.len() && part.bucket(&part.ids[at]) < k {
                at += 1;
            }
            part.starts.push(at as u32);
        }
        part.starts.push(part.ids.len() as u32);
        Ok(part)
    }

    /// The range of the offset table `id` falls in: its bits after the part's first bits.
    fn bucket(&self, id: &[u8; 32]) -> usize {
        if self.bits == 0 {
            return 0;
        }
        let lead = u64::from_be_bytes(id[..8].try_into().expect("8 bytes"));
        ((lead << LOADED_PARTS.ilog2()) >> (64 - self.bits)) as usize
    }

    fn get(&self, id: &[u8; 32]) -> Option<&[u8; BLOB_LOC_LEN]> {
        let k = self.bucket(id);
        let (from, to) = (self.starts[k] as usize, self.starts[k + 1] as usize);
        let at = self.ids[from..to].binary_search(id).ok()?;
        Some(&self.locs[from + at])
    }
}

impl LoadedBlobs {
    fn part_of(id: &[u8; 32]) -> usize {
        (id[0] >> (8 - LOADED_PARTS.ilog2())) as usize
    }

    fn get(&self, id: &[u8; 32]) -> Option<&[u8; BLOB_LOC_LEN]> {
        self.parts[Self::part_of(id)].get(id)
    }
}

fn open_opt<K: redb::Key + 'static, V: redb::Value + 'static>(
    txn: &ReadTransaction,
    def: TableDefinition<K, V>,
) -> Result<Option<redb::ReadOnlyTable<K, V>>> {
    match txn.open_table(def) {
        Ok(t) => Ok(Some(t)),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

impl IndexReader {
    pub fn new(txn: &ReadTransaction) -> Result<Self> {
        Ok(IndexReader {
            blobs: open_opt(txn, BLOBS)?,
            packs: open_opt(txn, PACKS)?,
            loaded: std::sync::OnceLock::new(),
        })
    }

    /// Blobs in the index (0 without a blob table).
    pub fn blob_count(&self) -> Result<u64> {
        match &self.blobs {
            Some(t) => Ok(t.len()?),
            None => Ok(0),
        }
    }

    /// Reads the whole blob table into memory (about [`LOADED_BLOB_BYTES`] per blob), so that
    /// [`IndexReader::blob`] no longer walks the B-tree. Other threads may look blobs up
    /// meanwhile.
    pub fn load_blobs(&self) -> Result<()> {
        let Some(t) = &self.blobs else {
            return Ok(());
        };
        let step = 256 / LOADED_PARTS;
        // Each part's share and a little more: BLAKE3 ids spread evenly.
        let expect = (t.len()? as usize / LOADED_PARTS).saturating_mul(17) / 16 + 64;
        let parts = (0..LOADED_PARTS)
            .into_par_iter()
            .map(|i| LoadedPart::read(t, (i * step) as u8, (i * step + step - 1) as u8, expect))
            .collect::<Result<Vec<_>>>()?;
        let _ = self.loaded.set(LoadedBlobs { parts });
        Ok(())
    }

    pub fn blob(&self, id: &ChunkId) -> Result<Option<BlobLoc>> {
        if let Some(loaded) = self.loaded.get() {
            return loaded.get(id.as_bytes()).map(BlobLoc::decode).transpose();
        }
        let Some(t) = &self.blobs else {
            return Ok(None);
        };
        match t.get(id.as_bytes())? {
            Some(v) => Ok(Some(BlobLoc::decode(v.value())?)),
            None => Ok(None),
        }
    }

    pub fn contains(&self, id: &ChunkId) -> Result<bool> {
        if let Some(loaded) = self.loaded.get() {
            return Ok(loaded.get(id.as_bytes()).is_some());
        }
        let Some(t) = &self.blobs else {
            return Ok(false);
        };
        Ok(t.get(id.as_bytes())?.is_some())
    }

    pub fn pack(&self, no: u32) -> Result<PackInfo> {
        let t = self
            .packs
            .as_ref()
            .ok_or_else(|| Error::corrupt("index has no pack table"))?;
        match t.get(no)? {
            Some(v) => Ok(PackInfo::decode(v.value())),
            None => Err(missing_pack(no)),
        }
    }

    pub fn packs(&self) -> Result<Vec<(u32, PackInfo)>> {
        let mut out = Vec::new();
        if let Some(t) = &self.packs {
            for item in t.iter()? {
                let (k, v) = item?;
                out.push((k.value(), PackInfo::decode(v.value())));
            }
        }
        Ok(out)
    }

    /// Calls `f` for every blob in the index.
    pub fn for_each_blob(&self, mut f: impl FnMut(ChunkId, BlobLoc) -> Result<()>) -> Result<()> {
        if let Some(t) = &self.blobs {
            for item in t.iter()? {
                let (k, v) = item?;
                f(ChunkId(*k.value()), BlobLoc::decode(v.value())?)?;
            }
        }
        Ok(())
    }
}

/// All snapshots' framed manifests, keyed by id.
pub fn snapshot_manifests(txn: &ReadTransaction) -> Result<Vec<(ChunkId, Vec<u8>)>> {
    let mut out = Vec::new();
    if let Some(t) = open_opt(txn, SNAPSHOTS)? {
        for item in t.iter()? {
            let (k, v) = item?;
            out.push((ChunkId(*k.value()), v.value().to_vec()));
        }
    }
    Ok(out)
}

/// Ids of the snapshots in the index (without reading their manifests).
pub fn snapshot_ids(txn: &ReadTransaction) -> Result<Vec<ChunkId>> {
    let mut out = Vec::new();
    if let Some(t) = open_opt(txn, SNAPSHOTS)? {
        for item in t.iter()? {
            out.push(ChunkId(*item?.0.value()));
        }
    }
    Ok(out)
}

/// The manifest bytes of one snapshot.
pub fn snapshot_manifest(txn: &ReadTransaction, id: &ChunkId) -> Result<Option<Vec<u8>>> {
    match open_opt(txn, SNAPSHOTS)? {
        Some(t) => Ok(t.get(id.as_bytes())?.map(|v| v.value().to_vec())),
        None => Ok(None),
    }
}

/// The file-cache table, if the index has one.
pub fn open_files(
    txn: &ReadTransaction,
) -> Result<Option<redb::ReadOnlyTable<&'static [u8], &'static [u8]>>> {
    open_opt(txn, FILES)
}

pub fn file_stamp(txn: &ReadTransaction, path: &[u8]) -> Result<Option<FileStamp>> {
    let Some(t) = open_opt(txn, FILES)? else {
        return Ok(None);
    };
    match t.get(path)? {
        // A damaged cache entry is not an error: the file is simply read again.
        Some(v) => Ok(FileStamp::decode(v.value())),
        None => Ok(None),
    }
}

/// Every pack's [`PackUse`] row.
pub fn pack_uses(txn: &ReadTransaction) -> Result<std::collections::HashMap<u32, PackUse>> {
    let mut out = std::collections::HashMap::new();
    if let Some(t) = open_opt(txn, PACK_USE)? {
        for item in t.iter()? {
            let (k, v) = item?;
            out.insert(k.value(), PackUse::decode(v.value()));
        }
    }
    Ok(out)
}

/// Snapshots whose references are not counted yet.
pub fn uncounted(txn: &ReadTransaction) -> Result<std::collections::HashSet<ChunkId>> {
    let mut out = std::collections::HashSet::new();
    if let Some(t) = open_opt(txn, UNCOUNTED)? {
        for item in t.iter()? {
            out.insert(ChunkId(*item?.0.value()));
        }
    }
    Ok(out)
}

/// Every reference count, or `None` for an index from before counts were kept.
pub fn ref_counts(
    txn: &ReadTransaction,
) -> Result<Option<std::collections::HashMap<ChunkId, u32>>> {
    if meta(txn, META_INDEX_VERSION)?.unwrap_or(0) < 2 {
        return Ok(None);
    }
    let mut out = std::collections::HashMap::new();
    if let Some(t) = open_opt(txn, REFS)? {
        for item in t.iter()? {
            let (k, v) = item?;
            out.insert(ChunkId(*k.value()), v.value());
        }
    }
    Ok(Some(out))
}

pub fn meta(txn: &ReadTransaction, key: &str) -> Result<Option<u64>> {
    let Some(t) = open_opt(txn, META)? else {
        return Ok(None);
    };
    Ok(t.get(key)?.map(|v| v.value()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_stamps_of_both_layouts_decode() {
        let old = FileStampV1 {
            size: 8192,
            mtime_ns: 5,
            ctime_ns: 6,
            ino: 7,
            dev: 8,
            content: crate::manifest::Content::Tree(ChunkId([3; 32])),
            page_size: 4096,
            wal: LogStamp::None,
        };
        let bytes = crate::codec::encode(&old).unwrap();
        let stamp = FileStamp::decode(&bytes).unwrap();
        assert_eq!(
            (stamp.size, stamp.page_size, stamp.wal),
            (8192, 4096, LogStamp::None)
        );
        assert!(!stamp.through_sqlite);
        let new = FileStamp {
            through_sqlite: true,
            ..stamp
        };
        let bytes = crate::codec::encode(&new).unwrap();
        assert_eq!(FileStamp::decode(&bytes), Some(new));
        assert_eq!(
            FileStamp::decode(&bytes[..bytes.len() - 1]).map(|s| s.through_sqlite),
            Some(false)
        );
        assert_eq!(FileStamp::decode(&bytes[..bytes.len() - 2]), None);
    }

    fn loc(i: u32) -> BlobLoc {
        BlobLoc {
            pack: i,
            frame_offset: i.wrapping_mul(7),
            frame_stored_len: 100 + i,
            frame_raw_len: 200 + i,
            offset_in_frame: i % 64,
            raw_len: 1 + i % 4096,
            kind: BlobKind::Data,
            compression: Compression::Zstd,
        }
    }

    /// Writes `ids` with locations `loc(position)`, then checks every lookup, and as many absent
    /// ids, against the B-tree and against the table loaded into memory.
    fn check_loaded(ids: &[ChunkId], absent: &[ChunkId]) {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open_write(&dir.path().join("index.redb")).unwrap();
        let txn = index.write().unwrap();
        {
            let mut t = txn.open_table(BLOBS).unwrap();
            for (i, id) in ids.iter().enumerate() {
                t.insert(id.as_bytes(), &loc(i as u32).encode()).unwrap();
            }
        }
        txn.commit().unwrap();
        let read = index.read().unwrap();
        let reader = IndexReader::new(&read).unwrap();
        assert_eq!(reader.blob_count().unwrap(), ids.len() as u64);
        let before: Vec<_> = ids.iter().map(|id| reader.blob(id).unwrap()).collect();
        reader.load_blobs().unwrap();
        assert!(reader.loaded.get().is_some());
        for (i, id) in ids.iter().enumerate() {
            let got = reader.blob(id).unwrap();
            assert_eq!(got, Some(loc(i as u32)), "id #{i}");
            assert_eq!(got, before[i]);
            assert!(reader.contains(id).unwrap());
        }
        for id in absent {
            assert_eq!(reader.blob(id).unwrap(), None);
            assert!(!reader.contains(id).unwrap());
        }
    }

    fn hashed(n: u32, salt: &str) -> Vec<ChunkId> {
        (0..n)
            .map(|i| ChunkId(*blake3::hash(format!("{salt}{i}").as_bytes()).as_bytes()))
            .collect()
    }

    #[test]
    fn loaded_blobs_find_what_the_btree_finds() {
        for n in [0, 1, 3, 17, 5_000, 40_000] {
            check_loaded(&hashed(n, "present"), &hashed(500, "absent"));
        }
    }

    #[test]
    fn loaded_blobs_survive_ids_crowded_into_one_range() {
        // Ids a hostile index could hold: the same first 31 bytes, or all zero or all 0xff but
        // for the last byte. Every part and offset range but one is empty.
        let mut ids = Vec::new();
        for b in 0..=255u8 {
            let mut low = [0u8; 32];
            low[31] = b;
            let mut high = [0xffu8; 32];
            high[31] = b;
            let mut mid = [0x5au8; 32];
            mid[31] = b;
            ids.extend([ChunkId(low), ChunkId(high), ChunkId(mid)]);
        }
        let mut absent = hashed(100, "absent");
        let mut gap = [0x5au8; 32];
        gap[30] = 0x5b;
        absent.push(ChunkId(gap));
        check_loaded(&ids, &absent);
    }
}

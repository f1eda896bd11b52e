//! Snapshot manifests: what a snapshot holds, file by file.
//!
//! A manifest is encoded with bincode (through [`crate::codec`]), compressed with zstd and framed
//! (magic `STRASNAP`, version 6; version 1, whose sources had no kind, version 2, which had no
//! capture records, version 3, whose entries did not say how a database was read, version 4,
//! which had no page maps, and version 5, which had no PostgreSQL base backups, are still read:
//! version 5 only added [`Content::Pages`], version 6 only adds [`SourceKind::PgBase`]). Its id
//! is the BLAKE3 of the encoded (uncompressed) manifest, and
//! it is stored twice: in the index and as `snapshots/<id>.snap`.

use crate::codec::{self, frame};
use crate::crypto::{Keys, Object};
use crate::error::{Error, Result};
use crate::id::{ChunkId, SnapshotId};
use serde::{Deserialize, Serialize};

pub const MAGIC: &[u8; 8] = b"STRASNAP";
pub const VERSION: u32 = 6;

/// How a file's bytes are found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Content {
    /// A file of zero bytes.
    Empty,
    /// A file of exactly one chunk.
    Chunk(ChunkId),
    /// The root node of the file's chunk-list tree.
    Tree(ChunkId),
    /// The page map of a file cut at pages (see [`crate::pagemap`]); manifest version 5.
    Pages(ChunkId),
}

impl Content {
    /// The blob a file entry names, if any.
    pub fn root(&self) -> Option<&ChunkId> {
        match self {
            Content::Empty => None,
            Content::Chunk(id) | Content::Tree(id) | Content::Pages(id) => Some(id),
        }
    }
}

/// In JSON `file`, `dir` or `symlink` (bincode, the manifest's own encoding, stores the variant's
/// number).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Relative path inside the snapshot, '/'-separated raw bytes; the first component names the
    /// source it came from.
    pub path: Vec<u8>,
    pub kind: EntryKind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime_ns: i64,
    pub size: u64,
    pub content: Content,
    /// Symlink target, raw bytes.
    pub target: Option<Vec<u8>>,
    /// For SQLite files: the page size the file was cut at.
    pub page_size: u32,
    /// For a file cut at database pages: its image was read inside a SQLite read transaction,
    /// so it is one committed state of the database. False for one copied as plain bytes (SQLite
    /// could not open it, or `--raw-sqlite`), and for every entry of a version 1-3 manifest.
    pub through_sqlite: bool,
}

/// An entry as format versions 1 to 3 recorded it (without `through_sqlite`).
#[derive(Deserialize)]
#[cfg_attr(test, derive(Serialize))]
struct EntryV3 {
    path: Vec<u8>,
    kind: EntryKind,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime_ns: i64,
    size: u64,
    content: Content,
    target: Option<Vec<u8>>,
    page_size: u32,
}

impl From<EntryV3> for Entry {
    fn from(e: EntryV3) -> Entry {
        Entry {
            path: e.path,
            kind: e.kind,
            mode: e.mode,
            uid: e.uid,
            gid: e.gid,
            mtime_ns: e.mtime_ns,
            size: e.size,
            content: e.content,
            target: e.target,
            page_size: e.page_size,
            through_sqlite: false,
        }
    }
}

impl Entry {
    pub fn path_lossy(&self) -> String {
        String::from_utf8_lossy(&self.path).into_owned()
    }
}

/// What kind of source a top-level name of the snapshot came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SourceKind {
    /// A file or directory.
    Path,
    /// A SQLite database named with `--sqlite`, captured through SQLite.
    Sqlite,
    /// The output of `pg_dump`.
    Postgres,
    /// An RDB file fetched with `redis-cli --rdb`.
    Redis,
    /// The output of a shell command.
    Command,
    /// Standard input.
    Stdin,
    /// A PostgreSQL base backup streamed by `pg_basebackup` (see `source::pgbase`); its
    /// details say where it starts and ends in the WAL. Manifest version 6.
    PgBase,
}

impl SourceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::Path => "path",
            SourceKind::Sqlite => "sqlite",
            SourceKind::Postgres => "postgres",
            SourceKind::Redis => "redis",
            SourceKind::Command => "command",
            SourceKind::Stdin => "stdin",
            SourceKind::PgBase => "pg-base",
        }
    }
}

/// One source of a snapshot: a PATH given to `strata backup`, a database, or a stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Source {
    /// The top-level name it has inside the snapshot.
    pub name: String,
    /// Where it was read from: an absolute path, or a description (`command: CMD`, a
    /// connection string without its password...).
    pub path: String,
    pub kind: SourceKind,
    /// What else is worth knowing, as (key, value): server version, dump options...
    pub details: Vec<(String, String)>,
}

/// A source as format version 1 recorded it.
#[derive(Deserialize)]
struct SourceV1 {
    name: String,
    path: String,
}

/// How a file or a store that changed while it was read was captured. Recorded for every store
/// (a directory whose files must agree, such as a ChromaDB directory) and for every file that
/// had to be read more than once.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capture {
    /// Its path inside the snapshot.
    pub path: String,
    /// `file`, `chromadb` (a ChromaDB directory) or `group` (a directory named with `--group`).
    pub kind: String,
    /// Reads of it (1 when nothing changed).
    pub attempts: u32,
    /// False when it kept changing and was recorded anyway (`--allow-unstable`): the snapshot
    /// may hold it torn, or its files from different moments.
    pub consistent: bool,
    /// What changed during the last attempt, when it was not consistent.
    pub note: String,
}

/// A manifest as format version 3 recorded it (identical but for its entries).
#[derive(Deserialize)]
#[cfg_attr(test, derive(Serialize))]
struct ManifestV3 {
    time_ns: i64,
    hostname: String,
    name: Option<String>,
    kind: String,
    tags: Vec<String>,
    sources: Vec<Source>,
    entries: Vec<EntryV3>,
    stats: SnapshotStats,
    errors: Vec<String>,
    captures: Vec<Capture>,
}

impl From<ManifestV3> for Manifest {
    fn from(m: ManifestV3) -> Manifest {
        Manifest {
            time_ns: m.time_ns,
            hostname: m.hostname,
            name: m.name,
            kind: m.kind,
            tags: m.tags,
            sources: m.sources,
            entries: m.entries.into_iter().map(Entry::from).collect(),
            stats: m.stats,
            errors: m.errors,
            captures: m.captures,
        }
    }
}

/// A manifest as format version 2 recorded it (version 3 but for capture records).
#[derive(Deserialize)]
struct ManifestV2 {
    time_ns: i64,
    hostname: String,
    name: Option<String>,
    kind: String,
    tags: Vec<String>,
    sources: Vec<Source>,
    entries: Vec<EntryV3>,
    stats: SnapshotStats,
    errors: Vec<String>,
}

impl From<ManifestV2> for Manifest {
    fn from(m: ManifestV2) -> Manifest {
        Manifest {
            time_ns: m.time_ns,
            hostname: m.hostname,
            name: m.name,
            kind: m.kind,
            tags: m.tags,
            sources: m.sources,
            entries: m.entries.into_iter().map(Entry::from).collect(),
            stats: m.stats,
            errors: m.errors,
            captures: vec![],
        }
    }
}

/// A manifest as format version 1 recorded it (version 2 but for its sources).
#[derive(Deserialize)]
struct ManifestV1 {
    time_ns: i64,
    hostname: String,
    name: Option<String>,
    kind: String,
    tags: Vec<String>,
    sources: Vec<SourceV1>,
    entries: Vec<EntryV3>,
    stats: SnapshotStats,
    errors: Vec<String>,
}

impl From<ManifestV1> for ManifestV2 {
    fn from(m: ManifestV1) -> ManifestV2 {
        let sources = m
            .sources
            .into_iter()
            .map(|s| {
                let kind = if s.path.starts_with("command: ") {
                    SourceKind::Command
                } else if s.path == "standard input" {
                    SourceKind::Stdin
                } else {
                    SourceKind::Path
                };
                Source {
                    name: s.name,
                    path: s.path,
                    kind,
                    details: vec![],
                }
            })
            .collect();
        ManifestV2 {
            time_ns: m.time_ns,
            hostname: m.hostname,
            name: m.name,
            kind: m.kind,
            tags: m.tags,
            sources,
            entries: m.entries,
            stats: m.stats,
            errors: m.errors,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotStats {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    /// Sum of the sizes of all files.
    pub bytes: u64,
    /// Bytes read from disk (files not covered by the file cache).
    pub bytes_read: u64,
    pub new_chunks: u64,
    /// Raw bytes of new data chunks, and stored (compressed) bytes of all blobs this snapshot
    /// added (data chunks and chunk-list nodes).
    pub new_raw_bytes: u64,
    pub new_stored_bytes: u64,
    pub duration_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Unix time in nanoseconds.
    pub time_ns: i64,
    pub hostname: String,
    pub name: Option<String>,
    pub kind: String,
    pub tags: Vec<String>,
    pub sources: Vec<Source>,
    pub entries: Vec<Entry>,
    pub stats: SnapshotStats,
    /// Files that could not be read; a non-empty list makes the snapshot partial.
    pub errors: Vec<String>,
    /// Stores, and files that changed while they were read (see [`Capture`]).
    pub captures: Vec<Capture>,
}

impl Manifest {
    /// Encodes; returns (id, framed file bytes).
    ///
    /// In an encrypted repository (`keys` given) the id is a keyed hash and the compressed
    /// manifest is sealed.
    pub fn encode(&self, keys: Option<&Keys>) -> Result<(SnapshotId, Vec<u8>)> {
        let plain = codec::encode(self)?;
        let id = ChunkId::hash(keys.map(|k| k.id_key()), &plain);
        let mut packed =
            zstd::bulk::compress(&plain, 3).map_err(|e| Error::io("compressing manifest", e))?;
        if let Some(k) = keys {
            packed = k.seal(Object::Manifest, &packed)?;
        }
        Ok((id, frame::wrap(MAGIC, VERSION, &packed)))
    }

    /// Decodes framed bytes and checks that they hash to `expected` (when given).
    pub fn decode(
        bytes: &[u8],
        expected: Option<&SnapshotId>,
        keys: Option<&Keys>,
    ) -> Result<Manifest> {
        let what = match expected {
            Some(id) => format!("snapshot {}", id.short()),
            None => "snapshot manifest".to_string(),
        };
        let (version, packed) = frame::unwrap(MAGIC, VERSION, bytes, &what)?;
        let opened;
        let packed = match keys {
            Some(k) => {
                opened = k.open(Object::Manifest, packed, &what)?;
                &opened[..]
            }
            None => packed,
        };
        let key = keys.map(|k| k.id_key());
        let plain = zstd::bulk::decompress(packed, codec::DECODE_LIMIT).map_err(|e| {
            Error::corrupt(format!(
                "{what}: cannot decompress ({e}; a manifest holds at most {} MiB)",
                codec::DECODE_LIMIT >> 20
            ))
        })?;
        if let Some(id) = expected
            && ChunkId::hash(key, &plain) != *id
        {
            return Err(Error::corrupt(format!(
                "{what}: content does not match its id"
            )));
        }
        match version {
            1 => {
                let v1 = codec::decode::<ManifestV1>(&plain, &what)?;
                return Ok(ManifestV2::from(v1).into());
            }
            2 => return Ok(codec::decode::<ManifestV2>(&plain, &what)?.into()),
            3 => return Ok(codec::decode::<ManifestV3>(&plain, &what)?.into()),
            _ => {}
        }
        codec::decode(&plain, &what)
    }

    /// What was recorded although it kept changing while it was read.
    pub fn inconsistent(&self) -> impl Iterator<Item = &Capture> {
        self.captures.iter().filter(|c| !c.consistent)
    }

    pub fn time(&self) -> chrono::DateTime<chrono::Local> {
        chrono::DateTime::from_timestamp_nanos(self.time_ns).with_timezone(&chrono::Local)
    }
}

pub fn object_name(id: &SnapshotId) -> String {
    format!("snapshots/{}.snap", id.to_hex())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_entry() -> impl Strategy<Value = Entry> {
        (
            proptest::collection::vec(any::<u8>(), 1..40),
            0u8..3,
            any::<u32>(),
            any::<i64>(),
            any::<u64>(),
            any::<[u8; 32]>(),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..20)),
        )
            .prop_map(|(path, k, mode, mtime_ns, size, id, target)| Entry {
                path,
                kind: [EntryKind::File, EntryKind::Dir, EntryKind::Symlink][k as usize],
                mode,
                uid: mode / 3,
                gid: mode / 5,
                mtime_ns,
                size,
                content: match k {
                    0 => Content::Tree(ChunkId(id)),
                    1 => Content::Empty,
                    _ if id[0] % 2 == 0 => Content::Pages(ChunkId(id)),
                    _ => Content::Chunk(ChunkId(id)),
                },
                target,
                page_size: if k == 0 { 4096 } else { 0 },
                through_sqlite: k == 0 && mode % 2 == 0,
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn manifest_round_trip(entries in proptest::collection::vec(arb_entry(), 0..30), name in proptest::option::of("[a-z]{1,10}"), time_ns in any::<i64>()) {
            let m = Manifest {
                time_ns,
                hostname: "h".into(),
                name,
                kind: "manual".into(),
                tags: vec!["t".into()],
                sources: vec![Source { name: "a".into(), path: "/a".into(), kind: SourceKind::Postgres, details: vec![("server".into(), "15".into())] }],
                entries,
                stats: SnapshotStats::default(),
                errors: vec![],
                captures: vec![Capture { path: "a/store".into(), kind: "chromadb".into(), attempts: 2, consistent: false, note: "x changed".into() }],
            };
            let (id, bytes) = m.encode(None).unwrap();
            prop_assert_eq!(Manifest::decode(&bytes, Some(&id), None).unwrap(), m.clone());
            let other = ChunkId::hash(None, b"other");
            prop_assert!(Manifest::decode(&bytes, Some(&other), None).is_err());
        }

        #[test]
        fn version_3_manifests_still_decode(entries in proptest::collection::vec(arb_entry(), 0..10)) {
            let old = ManifestV3 {
                time_ns: 7,
                hostname: "h".into(),
                name: None,
                kind: "hourly".into(),
                tags: vec![],
                sources: vec![],
                entries: entries.iter().map(|e| EntryV3 {
                    path: e.path.clone(),
                    kind: e.kind,
                    mode: e.mode,
                    uid: e.uid,
                    gid: e.gid,
                    mtime_ns: e.mtime_ns,
                    size: e.size,
                    content: e.content.clone(),
                    target: e.target.clone(),
                    page_size: e.page_size,
                }).collect(),
                stats: SnapshotStats::default(),
                errors: vec![],
                captures: vec![],
            };
            let plain = codec::encode(&old).unwrap();
            let packed = zstd::bulk::compress(&plain, 3).unwrap();
            let bytes = frame::wrap(MAGIC, 3, &packed);
            let m = Manifest::decode(&bytes, Some(&ChunkId::hash(None, &plain)), None).unwrap();
            // Nothing said how a database was read then: each counts as copied.
            let expected: Vec<Entry> = entries
                .into_iter()
                .map(|e| Entry { through_sqlite: false, ..e })
                .collect();
            prop_assert_eq!(m.entries, expected);
            prop_assert_eq!(m.kind, "hourly");
        }

        #[test]
        fn hostile_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Manifest::decode(&bytes, None, None);
            let framed = frame::wrap(MAGIC, VERSION, &bytes);
            let _ = Manifest::decode(&framed, None, None);
        }
    }
}

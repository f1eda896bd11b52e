//! The file cache: files whose stamp has not changed since the last backup keep their chunk
//! list without being read.

use super::sources::Walk;
use crate::error::Result;
use crate::index::{FileStamp, IndexReader, LogStamp};
use crate::manifest::{Content, EntryKind};
use crate::repo::Repo;
use crate::source::capture::Seen;
use crate::source::sqlite::wal_stamp;
use crate::source::walk::WalkItem;
use std::collections::HashMap;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

/// What a file was stored as: its content and size, the page size it was cut at (0 when cut by
/// content), and for a database whether its image was read through SQLite.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Stored {
    pub(super) content: Content,
    pub(super) size: u64,
    pub(super) page_size: u32,
    pub(super) through_sqlite: bool,
}

/// What the file cache leaves to read.
pub(super) struct ToRead {
    /// The files outside the stores to read, by their index in [`Walk::items`].
    pub(super) files: Vec<usize>,
    /// Per item, the stamp the cache had for it, if any: a hint (its chunks as last stored).
    pub(super) previous: Vec<Option<FileStamp>>,
    /// Per store, the files the cache knows, at the stamp it knows them at.
    pub(super) known: Vec<HashMap<PathBuf, (Seen, Stored)>>,
}

impl ToRead {
    /// The bytes of the files to read outside the stores, as the walk found them.
    pub(super) fn bytes(&self, items: &[WalkItem]) -> u64 {
        self.files.iter().map(|&i| items[i].meta.len()).sum()
    }
}

/// Looks every walked file up in the file cache: the content of each file outside the stores
/// that the cache still describes (by index in [`Walk::items`]), and what is left to read.
pub(super) fn consult(
    repo: &Repo,
    txn: &redb::ReadTransaction,
    reader: &IndexReader,
    walk: &Walk,
) -> Result<(Vec<Option<Stored>>, ToRead)> {
    let items = &walk.items;
    let mut files = Vec::new();
    let mut contents: Vec<Option<Stored>> = vec![None; items.len()];
    let mut previous: Vec<Option<FileStamp>> = vec![None; items.len()];
    for (i, item) in items.iter().enumerate() {
        if item.kind != EntryKind::File {
            continue;
        }
        match cache_lookup(repo, txn, reader, item)? {
            Cached::Hit(c) => contents[i] = Some(c),
            Cached::Miss(stamp) => {
                previous[i] = stamp;
                files.push(i);
            }
        }
    }
    let mut known: Vec<HashMap<PathBuf, (Seen, Stored)>> =
        walk.groups.iter().map(|_| HashMap::new()).collect();
    for item in walk.grouped.iter().filter(|i| i.kind == EntryKind::File) {
        if let Cached::Hit(stored) = cache_lookup(repo, txn, reader, item)?
            && let Some(g) = walk.groups.iter().position(|g| g.holds(&item.abs))
        {
            known[g].insert(item.abs.clone(), (Seen::of(&item.meta), stored));
        }
    }
    let to_read = ToRead {
        files,
        previous,
        known,
    };
    Ok((contents, to_read))
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
        Some(stamp) if stamp_matches(&stamp, &item.meta) => match content_size(&stamp, &item.abs) {
            Some(size) if content_present(reader, &stamp.content)? => Cached::Hit(Stored {
                content: stamp.content,
                size,
                page_size: stamp.page_size,
                through_sqlite: stamp.through_sqlite,
            }),
            _ => Cached::Miss(Some(stamp)),
        },
        stamp => Cached::Miss(stamp),
    })
}

/// The size of the content `stamp` records, if the database's log (if any) is as it was then.
fn content_size(stamp: &FileStamp, abs: &std::path::Path) -> Option<u64> {
    match (&stamp.wal, wal_stamp(abs, stamp.page_size)) {
        (LogStamp::None, None) => Some(stamp.size),
        (LogStamp::Log { log, image }, Some(now)) if *log == now => Some(*image),
        (LogStamp::Frames { log, image, .. }, Some(now)) if *log == now => Some(*image),
        _ => None,
    }
}

/// The file cache's stamp for the file at `abs`, if any.
pub(super) fn cached_stamp(
    repo: &Repo,
    txn: &redb::ReadTransaction,
    abs: &std::path::Path,
) -> Result<Option<FileStamp>> {
    crate::index::file_stamp(txn, &repo.file_key(abs.as_os_str().as_bytes()))
}

fn stamp_matches(s: &FileStamp, m: &std::fs::Metadata) -> bool {
    stamp_seen(s) == Seen::of(m)
}

/// What a file-cache stamp says the file looked like.
pub(super) fn stamp_seen(s: &FileStamp) -> Seen {
    Seen {
        size: s.size,
        mtime_ns: s.mtime_ns,
        ctime_ns: s.ctime_ns,
        ino: s.ino,
        dev: s.dev,
    }
}

fn content_present(reader: &IndexReader, content: &Content) -> Result<bool> {
    match content {
        Content::Empty => Ok(true),
        Content::Chunk(id) | Content::Tree(id) | Content::Pages(id) => reader.contains(id),
    }
}

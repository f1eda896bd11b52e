//! The file cache: files whose stamp has not changed since the last backup keep their chunk
//! list without being read.

use crate::error::Result;
use crate::index::{FileStamp, IndexReader};
use crate::manifest::Content;
use crate::repo::Repo;
use crate::source::capture::Seen;
use crate::source::sqlite::wal_stamp;
use crate::source::walk::WalkItem;
use std::os::unix::ffi::OsStrExt;

/// A file's content as the manifest records it: (content, size, page size).
pub(super) type Stored = (Content, u64, u32);

/// Whether the file cache still describes `item` (and its content is in the repository).
pub(super) enum Cached {
    Hit(Stored),
    /// Not cached, or changed since: the stamp cached for it, if any, as a hint.
    Miss(Option<FileStamp>),
}

pub(super) fn cache_lookup(
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
pub(super) fn cached_stamp(
    repo: &Repo,
    txn: &redb::ReadTransaction,
    abs: &std::path::Path,
) -> Result<Option<FileStamp>> {
    crate::index::file_stamp(txn, &repo.file_key(abs.as_os_str().as_bytes()))
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

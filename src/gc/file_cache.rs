//! The index's file cache as gc sees it: entries naming a file version no snapshot holds any
//! more are dropped, with the chunk-digest records kept beside them.

use crate::error::Result;
use crate::id::ChunkId;
use crate::index::FileStamp;
use crate::manifest::Content;
use redb::ReadableTable;

/// File-cache keys (absolute source paths).
pub(super) type FileKeys = Vec<Vec<u8>>;

/// The keys of the file-cache entries, split into those whose content's root blob `live`
/// rejects (or that cannot be read) and the rest. The first kind a backup could not reuse, and
/// they would stay forever for a file no longer backed up.
pub(super) fn split_file_keys(
    files: &impl ReadableTable<&'static [u8], &'static [u8]>,
    live: impl Fn(&ChunkId) -> Result<bool>,
) -> Result<(FileKeys, FileKeys)> {
    let (mut stale, mut kept) = (Vec::new(), Vec::new());
    for item in files.iter()? {
        let (key, value) = item?;
        let keep = match FileStamp::decode(value.value()) {
            Some(stamp) => match stamp.content {
                Content::Empty => true,
                Content::Chunk(id) | Content::Tree(id) | Content::Pages(id) => live(&id)?,
            },
            None => false,
        };
        match keep {
            true => kept.push(key.value().to_vec()),
            false => stale.push(key.value().to_vec()),
        }
    }
    Ok((stale, kept))
}

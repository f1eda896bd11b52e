//! Giving the index's free space back. redb reuses the pages it frees but never shrinks its
//! file, so after gc drops most of the blobs `index.redb` keeps its largest size (5 MB where a
//! fresh index of what is left takes 1 MB). When the file is well over what its tables use, gc
//! copies every table into a new file, in key order, and renames it over the old one, as
//! `repair index` does: a reader that opened the old file goes on reading it, and the next
//! command opens the new one. A crash before the rename leaves the old index as it was (and a
//! stray copy, removed next time); after it, the new one is complete and durable.

use crate::error::{IoContext, Result};
use crate::index::{
    BLOBS, FILES, Index, META, PACK_USE, PACKS, PG_WAL, REFS, SNAPSHOTS, UNCOUNTED,
};
use crate::layout::INDEX_NAME;
use crate::repo::Repo;
use redb::{ReadableTable, TableDefinition};
use std::fs;

/// The copy is made when the file is more than this many times the bytes its tables use...
const WORTH_RATIO: u64 = 2;
/// ...and at least this much smaller.
const WORTH_BYTES: u64 = 256 << 10;
/// Where the copy is built, beside the index.
const COPY_NAME: &str = "index.redb.compact";

/// The index file's size before and after, when it was compacted.
pub(super) fn compact_index(repo: &Repo) -> Result<Option<(u64, u64)>> {
    let path = repo.root.join(INDEX_NAME);
    let copy = repo.root.join(COPY_NAME);
    // Only a repository whose index is its own file here (not the local cache of one on S3).
    let Ok(before) = fs::metadata(&path).map(|m| m.len()) else {
        return Ok(None);
    };
    let _ = fs::remove_file(&copy);
    let used = {
        let txn = repo.index.write()?;
        let stats = txn.stats()?;
        txn.abort()?;
        (stats.leaf_pages() + stats.branch_pages()) * stats.page_size() as u64
            + stats.metadata_bytes()
    };
    if before < used.saturating_mul(WORTH_RATIO) || before - used < WORTH_BYTES {
        return Ok(None);
    }
    {
        let fresh = Index::open_write(&copy)?;
        let from = repo.index.read()?;
        let to = fresh.write()?;
        copy_table(&from, &to, BLOBS)?;
        copy_table(&from, &to, PACKS)?;
        copy_table(&from, &to, SNAPSHOTS)?;
        copy_table(&from, &to, FILES)?;
        copy_table(&from, &to, META)?;
        copy_table(&from, &to, REFS)?;
        copy_table(&from, &to, UNCOUNTED)?;
        copy_table(&from, &to, PACK_USE)?;
        copy_table(&from, &to, PG_WAL)?;
        to.commit()?;
    }
    // The index this gc committed to must still be the repository's.
    repo.ensure_current()?;
    crate::repair::replace_index(&repo.root, &copy)?;
    let after = fs::metadata(&path).ctx("stat", &path)?.len();
    Ok(Some((before, after)))
}

/// Every row of table `def`, from `from` into `to` (nothing when `from` has no such table).
fn copy_table<K: redb::Key + 'static, V: redb::Value + 'static>(
    from: &redb::ReadTransaction,
    to: &redb::WriteTransaction,
    def: TableDefinition<K, V>,
) -> Result<()> {
    let src = match from.open_table(def) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let mut dst = to.open_table(def)?;
    for row in src.iter()? {
        let (k, v) = row?;
        dst.insert(k.value(), v.value())?;
    }
    Ok(())
}

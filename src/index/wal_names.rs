//! The index's table of archived WAL files (see `pg::archive`): a cache of the `pg-wal`
//! snapshots' manifests that finds one by its file name.

use super::open_opt;
use crate::error::Result;
use crate::id::ChunkId;
use redb::{ReadTransaction, ReadableTable, TableDefinition};

/// archived WAL file name -> the id of the `pg-wal` snapshot holding it. It names every such
/// snapshot only while [`META_PG_WAL_COMPLETE`] is 1; a row whose snapshot is gone (deleted)
/// means the name is not archived.
pub const PG_WAL: TableDefinition<&str, &[u8; 32]> = TableDefinition::new("pg_wal");
/// 1 once [`PG_WAL`] names every `pg-wal` snapshot: set when a repository is created, or by
/// the first archiver's full pass over the manifests. Absent in a rebuilt index.
pub const META_PG_WAL_COMPLETE: &str = "pg_wal_complete";

/// The snapshot [`PG_WAL`] names for an archived WAL file.
pub fn pg_wal(txn: &ReadTransaction, name: &str) -> Result<Option<ChunkId>> {
    match open_opt(txn, PG_WAL)? {
        Some(t) => Ok(t.get(name)?.map(|v| ChunkId(*v.value()))),
        None => Ok(None),
    }
}

/// The ids of every archived WAL file's snapshot, when [`PG_WAL`] names them all.
pub fn pg_wal_ids(txn: &ReadTransaction) -> Result<Option<std::collections::HashSet<ChunkId>>> {
    if super::meta(txn, META_PG_WAL_COMPLETE)? != Some(1) {
        return Ok(None);
    }
    let mut out = std::collections::HashSet::new();
    if let Some(t) = open_opt(txn, PG_WAL)? {
        for item in t.iter()? {
            out.insert(ChunkId(*item?.1.value()));
        }
    }
    Ok(Some(out))
}

/// Visits [`PG_WAL`]'s rows from the last name to the first (for segments, newest first) until
/// `visit` returns false. Rows may name deleted snapshots; none when the table is absent.
pub fn pg_wal_newest_first(
    txn: &ReadTransaction,
    mut visit: impl FnMut(&str, ChunkId) -> Result<bool>,
) -> Result<()> {
    if let Some(t) = open_opt(txn, PG_WAL)? {
        for item in t.iter()?.rev() {
            let (name, id) = item?;
            if !visit(name.value(), ChunkId(*id.value()))? {
                break;
            }
        }
    }
    Ok(())
}

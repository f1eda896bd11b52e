//! A local cache of chunk-list nodes for repositories on object storage.
//!
//! An hourly backup walks the chunk list of every changed file's previous version, and a
//! restore walks the chunk lists of what it restores. On a local disk those reads are cheap;
//! on object storage each node would be a ranged GET with its round trip. So a remote
//! repository keeps every node it writes or reads in `nodes.redb` beside its index cache, and
//! fills in what is missing (after an index rebuild, on a new machine) with parallel ranged
//! reads. Entries are checked against their id on every read, like blobs from a pack: a damaged
//! cache costs a download, never a wrong byte. It is only a cache: deleting it loses nothing.

use crate::error::{Error, IoContext, Result};
use crate::id::ChunkId;
use redb::{Database, ReadOnlyDatabase, ReadableDatabase, TableDefinition};
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Mutex;

/// node id -> its plain bytes.
const NODES: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("nodes");

enum Db {
    Write(Database),
    Read(ReadOnlyDatabase),
}

pub struct NodeCache {
    db: Db,
    /// Nodes added since the last flush.
    pending: Mutex<HashMap<ChunkId, Vec<u8>>>,
}

impl NodeCache {
    /// Opens (or creates) the cache at `path`. While another process writes it, it is opened
    /// read-only and new nodes are not kept; a file that does not open is replaced.
    pub fn open(path: &Path) -> Result<NodeCache> {
        let db = match Database::create(path) {
            Ok(db) => Db::Write(db),
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => Db::Read(
                ReadOnlyDatabase::open(path)
                    .map_err(|e| Error::Index(format!("node cache {}: {e}", path.display())))?,
            ),
            Err(_) => {
                // Damaged or from an incompatible version: it is only a cache.
                std::fs::remove_file(path).ctx("remove", path)?;
                Db::Write(
                    Database::create(path)
                        .map_err(|e| Error::Index(format!("node cache {}: {e}", path.display())))?,
                )
            }
        };
        Ok(NodeCache {
            db,
            pending: Mutex::new(HashMap::new()),
        })
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<ChunkId, Vec<u8>>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn begin_read(&self) -> Result<redb::ReadTransaction> {
        Ok(match &self.db {
            Db::Write(db) => db.begin_read()?,
            Db::Read(db) => db.begin_read()?,
        })
    }

    /// The cached bytes of node `id`, unchecked (the caller checks them against the id).
    pub fn get(&self, id: &ChunkId) -> Option<Vec<u8>> {
        if let Some(b) = self.pending().get(id) {
            return Some(b.clone());
        }
        let table = self.begin_read().ok()?.open_table(NODES).ok()?;
        let got = table.get(id.as_bytes()).ok()??;
        Some(got.value().to_vec())
    }

    /// Whether the cache holds no node.
    pub fn is_empty(&self) -> bool {
        if !self.pending().is_empty() {
            return false;
        }
        match self.begin_read().and_then(|txn| Ok(txn.open_table(NODES)?)) {
            Ok(t) => redb::ReadableTableMetadata::is_empty(&t).unwrap_or(true),
            Err(_) => true,
        }
    }

    /// The ids of every cached node.
    pub fn ids(&self) -> Result<HashSet<ChunkId>> {
        let mut ids: HashSet<ChunkId> = self.pending().keys().copied().collect();
        let table = match self.begin_read()?.open_table(NODES) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(ids),
            Err(e) => return Err(e.into()),
        };
        for row in redb::ReadableTable::iter(&table)? {
            ids.insert(ChunkId(*row?.0.value()));
        }
        Ok(ids)
    }

    /// Whether node `id` is cached.
    pub fn contains(&self, id: &ChunkId) -> bool {
        self.get(id).is_some()
    }

    /// Keeps node `id` (written at the next [`NodeCache::flush`]).
    pub fn insert(&self, id: ChunkId, bytes: &[u8]) {
        if let Db::Write(_) = self.db {
            self.pending().entry(id).or_insert_with(|| bytes.to_vec());
        }
    }

    /// Writes the nodes added since the last flush.
    pub fn flush(&self) -> Result<()> {
        let Db::Write(db) = &self.db else {
            return Ok(());
        };
        let pending = std::mem::take(&mut *self.pending());
        if pending.is_empty() {
            return Ok(());
        }
        let txn = db.begin_write()?;
        {
            let mut table = txn.open_table(NODES)?;
            for (id, bytes) in &pending {
                table.insert(id.as_bytes(), bytes.as_slice())?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// Drops cached nodes for which `keep` is false (nodes the repository no longer has).
    /// Returns how many were dropped.
    pub fn retain(&self, keep: &dyn Fn(&ChunkId) -> Result<bool>) -> Result<u64> {
        self.flush()?;
        let Db::Write(db) = &self.db else {
            return Ok(0);
        };
        let txn = db.begin_write()?;
        let mut gone = Vec::new();
        {
            let mut table = txn.open_table(NODES)?;
            for row in redb::ReadableTable::iter(&table)? {
                let id = ChunkId(*row?.0.value());
                if !keep(&id)? {
                    gone.push(id);
                }
            }
            for id in &gone {
                table.remove(id.as_bytes())?;
            }
        }
        txn.commit()?;
        Ok(gone.len() as u64)
    }
}

impl Drop for NodeCache {
    fn drop(&mut self) {
        // Best effort: what is not written is fetched again when needed.
        let _ = self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_flushed_nodes_and_replaces_a_damaged_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nodes.redb");
        let a = ChunkId::hash(None, b"a");
        let b = ChunkId::hash(None, b"b");
        {
            let cache = NodeCache::open(&path).unwrap();
            cache.insert(a, b"node a");
            assert_eq!(cache.get(&a).as_deref(), Some(&b"node a"[..]));
            cache.flush().unwrap();
            cache.insert(b, b"node b");
            // Dropped: b is flushed too.
        }
        let cache = NodeCache::open(&path).unwrap();
        assert_eq!(cache.get(&a).as_deref(), Some(&b"node a"[..]));
        assert_eq!(cache.get(&b).as_deref(), Some(&b"node b"[..]));
        assert_eq!(cache.retain(&|id| Ok(*id == a)).unwrap(), 1);
        assert!(cache.contains(&a) && !cache.contains(&b));
        drop(cache);

        std::fs::write(&path, b"not a redb file at all").unwrap();
        let cache = NodeCache::open(&path).unwrap();
        assert!(!cache.contains(&a));
        cache.insert(a, b"again");
        cache.flush().unwrap();
        assert!(cache.contains(&a));
    }
}

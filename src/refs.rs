//! Reference counts, kept in the index and changed in the transaction that adds or removes a
//! snapshot.
//!
//! A blob's count is the number of references to it from snapshot manifests (one per file entry)
//! plus those from the chunk-list nodes that are themselves counted (one per entry of such a
//! node). A node's children are counted while the node's own count is above zero: when it rises
//! from zero its children gain one reference each, and when it falls to zero they lose one. So
//! adding a snapshot costs one update per file plus one per entry of each new node, and removing
//! one costs one per file plus one per entry of each node that dies: both in proportion to what
//! changed, not to the size of the repository.
//!
//! Per pack, [`PackUse`] records how many blobs the index places in it and how many of those are
//! live (count above zero), with their share of the pack's bytes, so `gc` finds the packs worth
//! deleting or rewriting without looking at any blob.
//!
//! Invariants, checked by `verify`'s full recount:
//! - every blob with a count is in the blob table, and every blob a counted node lists is counted;
//! - [`PackUse`] matches the blob table and the counts;
//! - after `gc`, every blob in the blob table has a count (blobs at zero are dropped together,
//!   so a later backup that deduplicates against an indexed node always finds its children).

use crate::blobs::BlobReader;
use crate::error::{Error, Result};
use crate::id::ChunkId;
use crate::index::{BLOBS, BlobLoc, Locate, META, META_INDEX_VERSION, PACK_USE, REFS, UNCOUNTED};
use crate::manifest::Manifest;
use crate::pack::BlobKind;
use crate::pagemap::children;
use redb::ReadableTable;
use std::collections::HashMap;

pub use crate::index::{PackUse, share};

/// The blobs a manifest references directly, one per file entry.
pub fn roots(manifest: &Manifest) -> impl Iterator<Item = ChunkId> + '_ {
    manifest
        .entries
        .iter()
        .filter_map(|e| e.content.root().copied())
}

/// The pack-use rows a transaction changes, read on first use and written back by
/// [`UsageCache::flush`].
#[derive(Default)]
pub struct UsageCache {
    rows: HashMap<u32, PackUse>,
}

impl UsageCache {
    pub fn get<T: ReadableTable<u32, &'static [u8; 16]>>(
        &mut self,
        table: &T,
        pack: u32,
    ) -> Result<&mut PackUse> {
        Ok(match self.rows.entry(pack) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => e.insert(
                table
                    .get(pack)?
                    .map(|v| PackUse::decode(v.value()))
                    .unwrap_or_default(),
            ),
        })
    }

    pub fn flush(self, table: &mut redb::Table<u32, &'static [u8; 16]>) -> Result<()> {
        for (pack, row) in self.rows {
            table.insert(pack, &row.encode())?;
        }
        Ok(())
    }
}

/// Adds or takes away references inside one write transaction.
pub struct Counter<'t> {
    refs: redb::Table<'t, &'static [u8; 32], u32>,
    usage_table: redb::Table<'t, u32, &'static [u8; 16]>,
    usage: UsageCache,
}

impl<'t> Counter<'t> {
    pub fn new(txn: &'t redb::WriteTransaction) -> Result<Self> {
        Ok(Counter {
            refs: txn.open_table(REFS)?,
            usage_table: txn.open_table(PACK_USE)?,
            usage: UsageCache::default(),
        })
    }

    /// One more reference to each of `ids` (one per occurrence); a blob that had none passes
    /// one to each of its children (for a node), and so on down.
    pub fn add<L: Locate + ?Sized>(
        &mut self,
        ids: Vec<ChunkId>,
        nodes: &BlobReader<L>,
    ) -> Result<()> {
        self.change(ids, true, nodes)
    }

    /// One reference less to each of `ids`; a blob that loses its last takes one from each of
    /// its children (for a node), and so on down. A damaged node then keeps its children's
    /// references: a leak, never a loss.
    pub fn remove<L: Locate + ?Sized>(
        &mut self,
        ids: Vec<ChunkId>,
        nodes: &BlobReader<L>,
    ) -> Result<()> {
        self.change(ids, false, nodes)
    }

    /// Level by level, each level's ids in sorted order (neighbouring B-tree pages, visited
    /// once); only a count that crosses zero looks the blob up.
    fn change<L: Locate + ?Sized>(
        &mut self,
        mut level: Vec<ChunkId>,
        up: bool,
        nodes: &BlobReader<L>,
    ) -> Result<()> {
        while !level.is_empty() {
            level.sort_unstable();
            let mut next = Vec::new();
            // Each distinct id once, with how many references it gains or loses.
            for run in level.chunk_by(|a, b| a == b) {
                let (id, k) = (run[0], run.len() as u32);
                let old = self
                    .refs
                    .get(id.as_bytes())?
                    .map(|v| v.value())
                    .unwrap_or(0);
                let new = if up {
                    old.checked_add(k).ok_or_else(|| {
                        Error::corrupt(format!("reference count of chunk {id} overflows"))
                    })?
                } else {
                    old.checked_sub(k).ok_or_else(|| {
                        Error::corrupt(format!(
                            "chunk {id} has no reference to remove: the reference counts are \
                             damaged; run `strata repair index`"
                        ))
                    })?
                };
                if (old == 0) == (new == 0) {
                    self.refs.insert(id.as_bytes(), new)?;
                    continue;
                }
                let loc = nodes.locate(&id)?;
                if new == 0 {
                    self.refs.remove(id.as_bytes())?;
                } else {
                    self.refs.insert(id.as_bytes(), new)?;
                }
                let row = self.usage.get(&self.usage_table, loc.pack)?;
                if up {
                    row.gain(&loc)
                } else {
                    row.lose(&loc)
                }
                if loc.kind == BlobKind::Node {
                    match nodes.read(&id).and_then(|b| children(&b, &id)) {
                        Ok(kids) => next.extend(kids),
                        // A damaged node being let go: its children keep the references it
                        // gave them (a leak, never a loss; verify's recount reports it and
                        // `repair index` settles it). A failed read, or adding a node, fails:
                        // its children must be counted.
                        Err(e) if !up && e.kind() == crate::ErrorKind::Corrupt => {}
                        Err(e) => return Err(e),
                    }
                }
            }
            level = next;
        }
        Ok(())
    }

    pub fn finish(mut self) -> Result<()> {
        self.usage.flush(&mut self.usage_table)
    }
}

/// The result of [`count_all`].
#[derive(Default)]
pub struct Recount {
    pub counts: HashMap<ChunkId, u32>,
    /// References to blobs the index does not have.
    pub missing: u64,
    /// Indexed nodes that could not be read: their children are not counted through them.
    pub unreadable: Vec<(ChunkId, Error)>,
}

/// Counts every reference from scratch: from the manifests, and from each node reached, once per
/// node. A referenced blob the index does not have is left out; a node that cannot be read is
/// counted but its children are not (the caller decides whether either is an error).
pub fn count_all<L: Locate + ?Sized>(
    manifests: &[(ChunkId, Vec<u8>)],
    keys: Option<&crate::crypto::Keys>,
    nodes: &BlobReader<L>,
) -> Result<Recount> {
    let mut out = Recount::default();
    for (snap, bytes) in manifests {
        let manifest = Manifest::decode(bytes, Some(snap), keys)?;
        let mut stack: Vec<ChunkId> = roots(&manifest).collect();
        while let Some(id) = stack.pop() {
            let Some(loc) = nodes.find(&id)? else {
                out.missing += 1;
                continue;
            };
            let c = out.counts.entry(id).or_insert(0);
            *c = c.saturating_add(1);
            if *c == 1 && loc.kind == BlobKind::Node {
                match nodes.read(&id).and_then(|b| children(&b, &id)) {
                    Ok(kids) => stack.extend(kids),
                    Err(e) if e.kind() == crate::ErrorKind::Corrupt => out.unreadable.push((id, e)),
                    Err(e) => return Err(e),
                }
            }
        }
    }
    Ok(out)
}

/// Replaces the counts and pack use of the index with `counts` (from [`count_all`]), in `txn`.
pub fn write_counts(txn: &redb::WriteTransaction, counts: &HashMap<ChunkId, u32>) -> Result<()> {
    txn.delete_table(REFS)?;
    txn.delete_table(PACK_USE)?;
    txn.delete_table(UNCOUNTED)?;
    txn.open_table(UNCOUNTED)?;
    let mut ids: Vec<(&ChunkId, &u32)> = counts.iter().collect();
    ids.sort_unstable();
    {
        let mut refs = txn.open_table(REFS)?;
        for (id, c) in ids {
            refs.insert(id.as_bytes(), *c)?;
        }
    }
    let mut usage = pack_use_of(txn.open_table(BLOBS)?.iter()?, counts)?;
    // Every pack has a row, also one whose blobs are all indexed in other packs.
    for item in txn.open_table(crate::index::PACKS)?.iter()? {
        usage.entry(item?.0.value()).or_default();
    }
    let mut table = txn.open_table(PACK_USE)?;
    for (pack, row) in usage {
        table.insert(pack, &row.encode())?;
    }
    let mut meta = txn.open_table(META)?;
    meta.insert(META_INDEX_VERSION, crate::index::INDEX_VERSION)?;
    Ok(())
}

/// Every pack's use, computed from the blob table and the counts.
pub fn pack_use_of(
    blobs: redb::Range<'_, &'static [u8; 32], &'static [u8; crate::index::BLOB_LOC_LEN]>,
    counts: &HashMap<ChunkId, u32>,
) -> Result<HashMap<u32, PackUse>> {
    let mut usage: HashMap<u32, PackUse> = HashMap::new();
    for item in blobs {
        let (k, v) = item?;
        tally(
            &mut usage,
            &ChunkId(*k.value()),
            &BlobLoc::decode(v.value())?,
            counts,
        );
    }
    Ok(usage)
}

/// Adds blob `id`, indexed at `loc`, to the pack use computed from `counts`.
pub fn tally(
    usage: &mut HashMap<u32, PackUse>,
    id: &ChunkId,
    loc: &BlobLoc,
    counts: &HashMap<ChunkId, u32>,
) {
    let row = usage.entry(loc.pack).or_default();
    row.indexed += 1;
    if counts.contains_key(id) {
        row.gain(loc);
    }
}

/// Counts, in `txn`, the references of every snapshot added since the last count, then takes
/// away those of `removed` (snapshots just dropped from the snapshot table, with their manifest
/// bytes; one never counted is simply no longer pending). Returns how many snapshots were
/// counted.
pub fn settle(
    backend: &dyn crate::storage::Backend,
    keys: Option<&crate::crypto::Keys>,
    txn: &redb::WriteTransaction,
    removed: &[(ChunkId, Vec<u8>)],
) -> Result<u64> {
    let mut pending: std::collections::HashSet<ChunkId> = std::collections::HashSet::new();
    {
        let mut table = txn.open_table(UNCOUNTED)?;
        for item in table.iter()? {
            pending.insert(ChunkId(*item?.0.value()));
        }
        table.retain(|_, _| false)?;
    }
    let mut add = Vec::new();
    let mut counted = 0;
    {
        let snaps = txn.open_table(crate::index::SNAPSHOTS)?;
        for id in &pending {
            // A pending snapshot removed now was never counted: nothing to add or take away.
            if let Some(bytes) = snaps.get(id.as_bytes())? {
                let manifest = Manifest::decode(bytes.value(), Some(id), keys)?;
                add.extend(roots(&manifest));
                counted += 1;
            }
        }
    }
    let mut take = Vec::new();
    for (id, bytes) in removed {
        if !pending.contains(id) {
            let manifest = Manifest::decode(bytes, Some(id), keys)?;
            take.extend(roots(&manifest));
        }
    }
    if add.is_empty() && take.is_empty() {
        return Ok(counted);
    }
    let locator = crate::index::WriteLocator::new(txn)?;
    let nodes = BlobReader::over(backend, keys, &locator);
    let mut counter = Counter::new(txn)?;
    // Additions first, so a blob the removed and the added snapshots share never drops to zero
    // on the way.
    counter.add(add, &nodes)?;
    counter.remove(take, &nodes)?;
    counter.finish()?;
    Ok(counted)
}

/// Gives a version-1 index (before reference counts) its counts, once, under the lock.
pub fn upgrade(
    index_db: &crate::index::Index,
    backend: &dyn crate::storage::Backend,
    keys: Option<&crate::crypto::Keys>,
) -> Result<()> {
    let txn = index_db.read()?;
    let version = crate::index::meta(&txn, META_INDEX_VERSION)?.unwrap_or(0);
    if version >= 2 {
        return Ok(());
    }
    let index = crate::index::IndexReader::new(&txn)?;
    let blobs = BlobReader::over(backend, keys, &index);
    let manifests = crate::index::snapshot_manifests(&txn)?;
    let recount = count_all(&manifests, keys, &blobs)?;
    if let Some((id, e)) = recount.unreadable.into_iter().next() {
        return Err(Error::corrupt(format!(
            "counting references (a one-time upgrade of the index): node {id}: {e}; run \
             `strata repair index`"
        )));
    }
    let counts = recount.counts;
    drop(blobs);
    drop(index);
    drop(txn);
    let wtxn = index_db.write()?;
    write_counts(&wtxn, &counts)?;
    wtxn.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_use_round_trip() {
        let u = PackUse {
            indexed: 7,
            live_blobs: 3,
            live_bytes: 1 << 40,
        };
        assert_eq!(PackUse::decode(&u.encode()), u);
    }
}

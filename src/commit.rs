//! Committing to the index: written packs (the locations of their blobs, and each pack's
//! accounting), and a snapshot together with the file stamps its backup keeps.
//!
//! Backup, copy and gc commit here. It is not part of [`crate::index`], which knows the tables
//! only: a commit also checks that the repository is still the writer's own ([`Repo`]), counts
//! pack use against references ([`crate::refs`]) and writes the page digests that follow the
//! stamps ([`crate::pagesums`]), all of which sit above the index.

use crate::error::Result;
use crate::id::{ChunkId, SnapshotId};
use crate::index::{
    BLOBS, BlobLoc, FILES, FileStamp, META, META_NEXT_PACK, PACK_USE, PACKS, PG_WAL, PackInfo,
    REFS, SNAPSHOTS, UNCOUNTED,
};
use crate::packer::WrittenPack;
use crate::pagesums::{MIN_FILE_SIZE, MIN_PAGED_SIZE};
use crate::refs::UsageCache;
use crate::repo::Repo;
use redb::ReadableTable;

/// A file's stamp to keep, under its cache key, with its page digest record (if any).
pub(crate) type KeptStamp = (Vec<u8>, FileStamp, Option<Vec<u8>>);

pub(crate) fn commit(
    repo: &Repo,
    packs: Vec<WrittenPack>,
    next_pack: u32,
    id: &SnapshotId,
    framed: &[u8],
    stamps: &[KeptStamp],
    wal_name: Option<&str>,
) -> Result<()> {
    // The last packs, the snapshot and the file stamps commit together, durably. The snapshot's
    // references are counted by the next forget or gc (see `refs`).
    repo.ensure_current()?;
    let txn = repo.index.write()?;
    insert_packs(&txn, packs)?;
    txn.open_table(UNCOUNTED)?.insert(id.as_bytes(), 0)?;
    {
        let mut meta = txn.open_table(META)?;
        let recorded = meta.get(META_NEXT_PACK)?.map(|v| v.value()).unwrap_or(0);
        meta.insert(META_NEXT_PACK, recorded.max(next_pack as u64))?;
        let mut snaps = txn.open_table(SNAPSHOTS)?;
        snaps.insert(id.as_bytes(), framed)?;
        // An archived WAL file's snapshot is found by its name (see `pg::archive`).
        if let Some(name) = wal_name {
            txn.open_table(PG_WAL)?.insert(name, id.as_bytes())?;
        }
        let mut files = txn.open_table(FILES)?;
        for (path, stamp, _) in stamps {
            files.insert(path.as_slice(), crate::codec::encode(stamp)?.as_slice())?;
        }
    }
    txn.commit()?;
    // Had the index been replaced or the lock taken between the check above and the commit,
    // the snapshot would be in a file nobody reads: fail rather than report it saved.
    repo.ensure_current()?;
    // Page digests follow the stamps they describe (a record left behind by a crash here
    // names content the stamp no longer does, and is ignored).
    let records: Vec<(&[u8], Option<&[u8]>)> = stamps
        .iter()
        .filter(|(_, stamp, sums)| {
            sums.is_some()
                || stamp.size >= MIN_FILE_SIZE
                || (stamp.page_size > 0 && stamp.size >= MIN_PAGED_SIZE)
        })
        .map(|(key, _, sums)| (key.as_slice(), sums.as_deref()))
        .collect();
    crate::pagesums::store(repo, &records);
    // Followed databases: where this snapshot's image ends in the log, for restores to an
    // instant (best effort, as the records above).
    for (key, stamp, _) in stamps {
        if let crate::index::LogStamp::Frames { log, position, .. } = &stamp.wal {
            let pos = crate::source::wal::LogPos {
                salt1: log.salt1,
                salt2: log.salt2,
                frame: position.frames,
                checksum: position.checksum,
            };
            crate::follow::attached::attach(repo, key, id, &pos);
        }
    }
    if let Some(cache) = repo.backend.node_cache() {
        // Only a cache: a node it failed to keep is downloaded again when needed.
        let _ = cache.flush();
    }
    Ok(())
}

/// Below this many new blobs, index inserts are sorted by id.
const SORTED_INSERT_MAX: usize = 100_000;

/// Records packs and the locations of their blobs.
///
/// A small batch (an hourly backup's few thousand blobs) is inserted in id order, so the B-tree
/// pages it touches are visited once each, in order. A large batch (a first backup) goes in pack
/// order, which is random in id order: that leaves pages with room, where sorted bulk inserts
/// would fill them completely and the next backup's scattered inserts would split (and copy)
/// nearly every page.
pub(crate) fn insert_packs(txn: &redb::WriteTransaction, packs: Vec<WrittenPack>) -> Result<()> {
    let mut blobs = txn.open_table(BLOBS)?;
    let mut pack_table = txn.open_table(PACKS)?;
    let mut use_table = txn.open_table(PACK_USE)?;
    let refs = txn.open_table(REFS)?;
    let mut usage = UsageCache::default();
    let mut locs: Vec<(ChunkId, BlobLoc)> = Vec::new();
    let max_no = packs.iter().map(|p| p.no).max();
    for p in packs {
        for e in &p.entries {
            locs.push((e.id, BlobLoc::from_entry(p.no, e)));
        }
        let info = PackInfo {
            id: p.id,
            size: p.size,
            blobs: p.entries.len() as u32,
        };
        pack_table.insert(p.no, &info.encode())?;
    }
    // Pack numbers are never reused, even if this backup dies before its final commit.
    if let Some(max) = max_no {
        let mut meta = txn.open_table(META)?;
        let next = meta.get(META_NEXT_PACK)?.map(|v| v.value()).unwrap_or(0);
        meta.insert(META_NEXT_PACK, next.max(max as u64 + 1))?;
    }
    if locs.len() < SORTED_INSERT_MAX {
        locs.sort_unstable_by_key(|(id, _)| *id);
    }
    for (id, loc) in &locs {
        let old = blobs
            .insert(id.as_bytes(), &loc.encode())?
            .map(|v| BlobLoc::decode(v.value()))
            .transpose()?;
        usage.get(&use_table, loc.pack)?.indexed += 1;
        // A blob stored again (two threads raced, or gc moved it): the index now points at the
        // new copy, and the old pack's accounting gives it up.
        if let Some(old) = old {
            let row = usage.get(&use_table, old.pack)?;
            row.indexed = row.indexed.saturating_sub(1);
            if refs.get(id.as_bytes())?.is_some() {
                row.lose(&old);
                usage.get(&use_table, loc.pack)?.gain(loc);
            }
        }
    }
    usage.flush(&mut use_table)?;
    Ok(())
}

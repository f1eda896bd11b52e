//! Repository-wide figures: sizes, dedup and compression ratios.

use crate::error::Result;
use crate::index::IndexReader;
use crate::pack::BlobKind;
use crate::repo::Repo;
use crate::snapshots::Snapshot;

#[derive(Debug, Default, serde::Serialize)]
pub struct RepoStats {
    pub snapshots: u64,
    /// Sum over snapshots of the bytes of all their files.
    pub logical_bytes: u64,
    /// Raw bytes of the unique data chunks (the files' bytes, each stored once).
    pub unique_bytes: u64,
    /// Raw bytes of the chunk-list nodes (which chunks make up each file): metadata, not data.
    pub metadata_bytes: u64,
    /// Compressed bytes of all unique blobs (each blob's share of its frame).
    pub compressed_bytes: u64,
    /// Bytes of pack files, manifests and the index on disk.
    pub stored_bytes: u64,
    pub pack_bytes: u64,
    pub index_bytes: u64,
    pub manifest_bytes: u64,
    /// Unique data chunks.
    pub chunks: u64,
    /// Chunk-list nodes.
    pub nodes: u64,
    pub packs: u64,
    /// logical / unique (data only: 1.0 when nothing is stored twice).
    pub dedup_ratio: f64,
    /// (unique + metadata) / compressed.
    pub compression_ratio: f64,
    /// logical / stored.
    pub total_ratio: f64,
    pub oldest: Option<String>,
    pub newest: Option<String>,
}

pub fn stats(repo: &Repo, snaps: &[Snapshot]) -> Result<RepoStats> {
    let txn = repo.index.read()?;
    let index = IndexReader::new(&txn)?;
    let mut s = RepoStats {
        snapshots: snaps.len() as u64,
        ..Default::default()
    };
    for snap in snaps {
        s.logical_bytes += snap.manifest.stats.bytes;
        s.manifest_bytes += snap.manifest_bytes as u64;
    }
    index.for_each_blob(|_, loc| {
        match loc.kind {
            BlobKind::Data => {
                s.chunks += 1;
                s.unique_bytes += loc.raw_len as u64;
            }
            BlobKind::Node => {
                s.nodes += 1;
                s.metadata_bytes += loc.raw_len as u64;
            }
        }
        // A blob's share of its frame's stored bytes.
        s.compressed_bytes += (loc.frame_stored_len as u64 * loc.raw_len as u64)
            .checked_div(loc.frame_raw_len as u64)
            .unwrap_or(0);
        Ok(())
    })?;
    for (_, p) in index.packs()? {
        s.packs += 1;
        s.pack_bytes += p.size;
    }
    s.index_bytes = std::fs::metadata(repo.root.join(crate::repo::INDEX_NAME))
        .map(|m| m.len())
        .unwrap_or(0);
    s.stored_bytes = s.pack_bytes + s.index_bytes + s.manifest_bytes;
    let ratio = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    s.dedup_ratio = ratio(s.logical_bytes, s.unique_bytes);
    s.compression_ratio = ratio(s.unique_bytes + s.metadata_bytes, s.compressed_bytes);
    s.total_ratio = ratio(s.logical_bytes, s.stored_bytes);
    s.oldest = snaps.first().map(|x| x.manifest.time().to_rfc3339());
    s.newest = snaps.last().map(|x| x.manifest.time().to_rfc3339());
    Ok(s)
}

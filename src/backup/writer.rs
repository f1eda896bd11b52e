//! Where a backup's chunks go: the state its reading threads share (what the repository has,
//! the pack being filled, the counts), and one file's chunk list as it is built.

use super::digests::{SUM_BUDGET, SumState};
use super::previous::PreviousVersion;
use crate::commit::insert_packs;
use crate::compress::compress;
use crate::error::{Error, Result};
use crate::id::ChunkId;
use crate::index::IndexReader;
use crate::pack::BlobKind;
use crate::packer::{Packer, WrittenPack};
use crate::repo::Repo;
use crate::tree::TreeBuilder;
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

/// State shared by the worker threads of one backup.
pub(super) struct Shared<'r> {
    pub(super) repo: &'r Repo,
    /// The index as of the last commit this backup made (swapped as packs are indexed).
    pub(super) reader: RwLock<Arc<IndexReader>>,
    pub(super) key: Option<[u8; 32]>,
    /// Blobs added by this backup and not yet in `reader`: bounded by the packs in flight, not by
    /// the size of the backup.
    pub(super) added: Mutex<HashSet<ChunkId>>,
    pub(super) packer: Packer<'r>,
    pub(super) new_chunks: AtomicU64,
    pub(super) new_raw: AtomicU64,
    pub(super) new_stored: AtomicU64,
    pub(super) progress: Option<&'r (dyn Fn(u64) + Sync)>,
    pub(super) raw_sqlite: bool,
    /// Databases named with `--sqlite`: a consistent image or the backup fails.
    pub(super) databases: &'r HashSet<PathBuf>,
    /// Chunk digests this backup may still hold until its commit (see [`SUM_BUDGET`]).
    pub(super) sum_budget: AtomicU64,
}

impl<'r> Shared<'r> {
    /// The state of a backup that starts from the index `reader` and fills packs with `packer`.
    pub(super) fn new(
        repo: &'r Repo,
        reader: IndexReader,
        packer: Packer<'r>,
        progress: Option<&'r (dyn Fn(u64) + Sync)>,
        raw_sqlite: bool,
        databases: &'r HashSet<PathBuf>,
    ) -> Self {
        Shared {
            repo,
            reader: RwLock::new(Arc::new(reader)),
            key: repo.id_key().copied(),
            added: Mutex::new(HashSet::new()),
            packer,
            new_chunks: AtomicU64::new(0),
            new_raw: AtomicU64::new(0),
            new_stored: AtomicU64::new(0),
            progress,
            raw_sqlite,
            databases,
            sum_budget: AtomicU64::new(SUM_BUDGET),
        }
    }

    /// Records written packs and their blobs in the index, in a transaction of their own, then
    /// has the readers look blobs up in the index as it is now.
    pub(super) fn index_packs(&self, packs: Vec<WrittenPack>) -> Result<()> {
        let repo = self.repo;
        let ids: Vec<ChunkId> = packs
            .iter()
            .flat_map(|p| p.entries.iter().map(|e| e.id))
            .collect();
        let txn = repo.index.write()?;
        insert_packs(&txn, packs)?;
        txn.commit()?;
        // Readers see the new blobs first, then they leave the in-memory set.
        let fresh = Arc::new(IndexReader::new(&repo.index.read()?)?);
        *self.reader.write().unwrap_or_else(|p| p.into_inner()) = fresh;
        let mut added = self.added.lock().unwrap_or_else(|p| p.into_inner());
        for id in &ids {
            added.remove(id);
        }
        Ok(())
    }

    /// True if the blob must be stored; marks it as added so no other thread stores it too.
    /// (A blob whose pack is indexed between the two checks can be stored twice; the index then
    /// points at the second copy and the first is garbage: wasteful, never wrong.)
    pub(super) fn claim(&self, id: &ChunkId) -> Result<bool> {
        let reader = self
            .reader
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if reader.contains(id)? {
            return Ok(false);
        }
        Ok(self
            .added
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(*id))
    }

    /// Compresses `raw`, the consecutive blobs `members` (id and length) of one file, into one
    /// frame and adds it to the current pack.
    pub(super) fn store(
        &self,
        kind: BlobKind,
        members: &[(ChunkId, usize)],
        raw: &[u8],
    ) -> Result<()> {
        let frame = self.seal(kind, members, raw)?;
        self.append(frame)
    }

    /// Compresses, checks and (in an encrypted repository) encrypts one frame, for [`append`].
    ///
    /// [`append`]: Shared::append
    pub(super) fn seal(
        &self,
        kind: BlobKind,
        members: &[(ChunkId, usize)],
        raw: &[u8],
    ) -> Result<Sealed> {
        debug_assert_eq!(members.iter().map(|m| m.1).sum::<usize>(), raw.len());
        let (compression, mut stored) = compress(raw, self.repo.config.zstd_level)?;
        if cfg!(feature = "testing") && std::env::var_os("STRATA_FAULT_DAMAGE_FRAMES").is_some() {
            // Fault injection for tests (the `testing` feature only): a compressor that damages
            // frames.
            let last = stored.len() - 1;
            stored[last / 2] ^= 0x5A;
        }
        crate::compress::check_frame(&stored, compression, raw.len(), members, self.repo.id_key())?;
        let mut placed = Vec::with_capacity(members.len());
        let mut at = 0u32;
        for (id, len) in members {
            placed.push((*id, at, *len as u32));
            at += *len as u32;
        }
        self.new_chunks
            .fetch_add(members.len() as u64, Ordering::Relaxed);
        if kind == BlobKind::Data {
            self.new_raw.fetch_add(raw.len() as u64, Ordering::Relaxed);
        }
        self.new_stored
            .fetch_add(stored.len() as u64, Ordering::Relaxed);
        // A failure here is the repository's (a full disk...), not the source file's: it ends
        // the backup instead of being reported as an unreadable file.
        let stored = match self.repo.seal_frame(&stored)? {
            std::borrow::Cow::Owned(sealed) => Some(sealed),
            std::borrow::Cow::Borrowed(_) => None,
        }
        .unwrap_or(stored);
        Ok(Sealed {
            kind,
            compression,
            stored,
            raw_len: raw.len() as u32,
            placed,
        })
    }

    /// Adds a sealed frame to the current pack.
    pub(super) fn append(&self, f: Sealed) -> Result<()> {
        self.packer
            .add_frame(f.kind, f.compression, &f.stored, f.raw_len, &f.placed)
            .map_err(|e| Error::invalid(format!("writing to the repository: {e}")))
    }

    pub(super) fn store_node(&self, id: ChunkId, bytes: Vec<u8>) -> Result<()> {
        if let Some(cache) = self.repo.backend.node_cache() {
            cache.insert(id, &bytes);
        }
        if self.claim(&id)? {
            self.store(BlobKind::Node, &[(id, bytes.len())], &bytes)?;
        }
        Ok(())
    }
}

/// A compressed (and in an encrypted repository, encrypted) frame, ready for a pack.
pub(super) struct Sealed {
    kind: BlobKind,
    compression: crate::compress::Compression,
    stored: Vec<u8>,
    raw_len: u32,
    placed: Vec<(ChunkId, u32, u32)>,
}

/// Consecutive new chunks are compressed together up to this many raw bytes.
pub(super) const FRAME_TARGET: usize = 64 << 10;

/// Per-file state carried from batch to batch.
pub(super) struct FileState<'s, 'p, 'e> {
    pub(super) prev: Option<&'s mut PreviousVersion<'p>>,
    /// Page digests, for a page-aligned file that keeps them.
    pub(super) sums: Option<&'s mut SumState>,
    pub(super) builder: &'s mut TreeBuilder,
    /// For a file stored as a page map: the map being made (the builder then stays empty).
    pub(super) map: Option<&'s mut super::mapped::MapWriter<'p>>,
    pub(super) emit: &'s mut (dyn FnMut(ChunkId, Vec<u8>) -> Result<()> + Send + 'e),
}

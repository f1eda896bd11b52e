//! Reading blobs by id: the index says which pack, frame and place; the frame is read (and, in
//! an encrypted repository, opened), decompressed, and each blob checked against its id before
//! anyone sees it. Used by restore, verify, gc, copy, repair and the node cache.

use crate::error::{Error, Result};
use crate::id::ChunkId;
use crate::index::{BlobLoc, IndexReader, Locate};
use crate::pack::BlobKind;
use std::collections::HashMap;
use std::sync::Mutex;

/// Reads blobs by id through the index (or, inside a write transaction, its tables), verifying
/// each against its id.
pub struct BlobReader<'a, L: ?Sized = IndexReader> {
    backend: &'a dyn crate::storage::Backend,
    keys: Option<&'a crate::crypto::Keys>,
    index: &'a L,
    packs: Mutex<HashMap<u32, String>>,
    /// Ask the backend to read each pack ahead when it is first named (a large restore, which
    /// reads most of every pack it touches).
    prefetch: bool,
}

impl<'a, L: Locate + ?Sized> BlobReader<'a, L> {
    /// A reader of the blobs `index` locates in `backend`'s packs.
    pub fn over(
        backend: &'a dyn crate::storage::Backend,
        keys: Option<&'a crate::crypto::Keys>,
        index: &'a L,
    ) -> Self {
        BlobReader {
            backend,
            keys,
            index,
            packs: Mutex::new(HashMap::new()),
            prefetch: false,
        }
    }

    pub fn pack_name(&self, no: u32) -> Result<String> {
        let mut packs = self.packs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = packs.get(&no) {
            return Ok(n.clone());
        }
        let name = self.index.pack(no)?.object_name();
        packs.insert(no, name.clone());
        // Not under the lock: the hint itself can take milliseconds (the kernel allocates the
        // pack's pages and queues their reads), and every other thread needs the lock.
        drop(packs);
        if self.prefetch {
            self.backend.will_need(&name);
        }
        Ok(name)
    }

    /// Reads `len` stored bytes at `offset` of pack object `pack`.
    pub fn read_span(&self, pack: &str, offset: u64, len: usize) -> Result<Vec<u8>> {
        self.backend
            .get_range(pack, offset, len)
            .map_err(|e| match e.kind() {
                crate::ErrorKind::NotFound => Error::corrupt(format!("{pack} is missing")),
                // A failed read is not damage: it may succeed next time.
                crate::ErrorKind::Io => e,
                _ => Error::corrupt(format!("{pack}: {len} bytes at offset {offset}: {e}")),
            })
    }

    /// Like [`Self::read_span`], into a buffer of exactly the wanted length; `sequential` for a
    /// piece of a large file's read (see [`crate::storage::Backend::read_into_sequential`]).
    pub fn read_span_into(
        &self,
        pack: &str,
        offset: u64,
        buf: &mut [u8],
        sequential: bool,
    ) -> Result<()> {
        let read = if sequential {
            self.backend.read_into_sequential(pack, offset, buf)
        } else {
            self.backend.read_into(pack, offset, buf)
        };
        read.map_err(|e| match e.kind() {
            crate::ErrorKind::NotFound => Error::corrupt(format!("{pack} is missing")),
            crate::ErrorKind::Io => e,
            _ => Error::corrupt(format!(
                "{pack}: {} bytes at offset {offset}: {e}",
                buf.len()
            )),
        })
    }

    /// The keys frames are opened with (an encrypted repository).
    pub fn keys(&self) -> Option<&'a crate::crypto::Keys> {
        self.keys
    }

    pub fn backend(&self) -> &'a dyn crate::storage::Backend {
        self.backend
    }

    /// Whether the packs are on object storage (where a request costs a round trip).
    pub fn remote(&self) -> bool {
        self.backend.parallelism().is_some()
    }

    /// Ask the backend to read each pack ahead when it is first named (for a large restore).
    pub fn set_prefetch(&mut self, on: bool) {
        self.prefetch = on;
    }

    /// Where blob `id` is, if the index has it.
    pub fn find(&self, id: &ChunkId) -> Result<Option<BlobLoc>> {
        self.index.blob(id)
    }

    pub fn locate(&self, id: &ChunkId) -> Result<BlobLoc> {
        self.index.blob(id)?.ok_or_else(|| {
            Error::corrupt(format!(
                "chunk {id} is missing from the index; run `strata verify`"
            ))
        })
    }

    /// The plain bytes of blob `id`, checked against its id.
    pub fn read(&self, id: &ChunkId) -> Result<Vec<u8>> {
        let loc = self.locate(id)?;
        let cache = match loc.kind {
            BlobKind::Node => self.backend.node_cache(),
            BlobKind::Data => None,
        };
        if let Some(cache) = cache
            && let Some(bytes) = cache.get(id)
            && ChunkId::hash(self.keys.map(|k| k.id_key()), &bytes) == *id
        {
            return Ok(bytes);
        }
        let (frame, pack) = self.read_frame(&loc)?;
        let blob = blob_in_frame(&frame, &loc, &pack)?;
        check_hash(blob, &loc, id, self.keys.map(|k| k.id_key()), &pack)?;
        if let Some(cache) = cache {
            cache.insert(*id, blob);
        }
        Ok(blob.to_vec())
    }

    /// [`Self::read`] of a data blob without allocating for it: `f` gets its checked bytes, in
    /// buffers kept per thread (`f` must not call this again).
    pub fn read_with<T>(&self, id: &ChunkId, f: impl FnOnce(&[u8]) -> Result<T>) -> Result<T> {
        let loc = self.locate(id)?;
        if loc.kind == BlobKind::Node {
            return f(&self.read(id)?);
        }
        let pack = self.pack_name(loc.pack)?;
        READ_STORED.with(|stored| {
            READ_FRAME.with(|frame| {
                let mut stored = stored.borrow_mut();
                stored.resize(loc.frame_stored_len as usize, 0);
                self.read_span_into(&pack, loc.frame_offset as u64, &mut stored, false)?;
                let mut frame = frame.borrow_mut();
                frame.resize(loc.frame_raw_len as usize, 0);
                decode_frame(self.keys, &stored, &loc, &pack, &mut frame)?;
                let blob = blob_in_frame(&frame, &loc, &pack)?;
                check_hash(blob, &loc, id, self.keys.map(|k| k.id_key()), &pack)?;
                f(blob)
            })
        })
    }

    /// The decompressed frame that holds the blob at `loc`, and the name of its pack (for
    /// messages). Its blobs are not checked yet.
    pub fn read_frame(&self, loc: &BlobLoc) -> Result<(Vec<u8>, String)> {
        let pack = self.pack_name(loc.pack)?;
        let stored = self.read_span(
            &pack,
            loc.frame_offset as u64,
            loc.frame_stored_len as usize,
        )?;
        let mut frame = vec![0u8; loc.frame_raw_len as usize];
        decode_frame(self.keys, &stored, loc, &pack, &mut frame)?;
        Ok((frame, pack))
    }
}

thread_local! {
    static READ_STORED: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    static READ_FRAME: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Opens (in an encrypted repository) and decompresses a frame into `dst` (exactly its raw
/// length).
pub fn decode_frame(
    keys: Option<&crate::crypto::Keys>,
    stored: &[u8],
    loc: &BlobLoc,
    pack: &str,
    dst: &mut [u8],
) -> Result<()> {
    crate::pack::decode_stored(
        keys,
        stored,
        loc.compression,
        loc.frame_offset as u64,
        pack,
        dst,
    )
}

/// Names the first chunk a damaged frame held, for the user.
pub fn with_chunk(e: Error, id: &ChunkId) -> Error {
    Error::corrupt(format!("{e} (chunk {id})"))
}

/// Checks that `data` (a blob taken from its frame) hashes to `id`.
pub fn check_hash(
    data: &[u8],
    loc: &BlobLoc,
    id: &ChunkId,
    key: Option<&[u8; 32]>,
    pack: &str,
) -> Result<()> {
    if ChunkId::hash(key, data) != *id {
        return Err(Error::corrupt(format!(
            "{pack}: chunk {id} in frame at offset {}: hash mismatch",
            loc.frame_offset
        )));
    }
    Ok(())
}

/// The bytes of the blob at `loc` inside its decompressed frame; an index entry pointing outside
/// the frame is damage, not a reason to panic.
pub fn blob_in_frame<'f>(raw: &'f [u8], loc: &BlobLoc, pack: &str) -> Result<&'f [u8]> {
    let start = loc.offset_in_frame as usize;
    raw.get(start..start + loc.raw_len as usize).ok_or_else(|| {
        Error::corrupt(format!(
            "{pack}: blob at {start}+{} lies outside its frame at offset {}",
            loc.raw_len, loc.frame_offset
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compress::Compression;

    fn loc(offset_in_frame: u32, raw_len: u32, frame_raw_len: u32) -> BlobLoc {
        BlobLoc {
            pack: 7,
            frame_offset: 4096,
            frame_stored_len: frame_raw_len,
            frame_raw_len,
            offset_in_frame,
            raw_len,
            kind: BlobKind::Data,
            compression: Compression::None,
        }
    }

    #[test]
    fn a_blob_is_cut_from_its_frame_and_a_place_outside_it_is_damage() {
        let frame: Vec<u8> = (0..100u8).collect();
        let inside = blob_in_frame(&frame, &loc(10, 5, 100), "p.pack").unwrap();
        assert_eq!(inside, &[10, 11, 12, 13, 14]);
        for outside in [loc(98, 5, 100), loc(100, 1, 100), loc(u32::MAX, 2, 100)] {
            let e = blob_in_frame(&frame, &outside, "p.pack").unwrap_err();
            assert_eq!(e.kind(), crate::ErrorKind::Corrupt);
            assert!(e.to_string().contains("p.pack"), "{e}");
            assert!(e.to_string().contains("outside its frame"), "{e}");
        }
    }

    #[test]
    fn a_blob_must_hash_to_its_id_keyed_or_not() {
        let data = b"some chunk";
        let l = loc(0, data.len() as u32, data.len() as u32);
        let plain = ChunkId::hash(None, data);
        check_hash(data, &l, &plain, None, "p.pack").unwrap();
        let key = [9u8; 32];
        let keyed = ChunkId::hash(Some(&key), data);
        check_hash(data, &l, &keyed, Some(&key), "p.pack").unwrap();
        // The plain id does not pass in an encrypted repository, nor a changed byte anywhere.
        assert!(check_hash(data, &l, &plain, Some(&key), "p.pack").is_err());
        let e = check_hash(b"some chunK", &l, &plain, None, "p.pack").unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Corrupt);
        assert!(e.to_string().contains(&plain.to_string()), "{e}");
        assert!(e.to_string().contains("hash mismatch"), "{e}");
    }

    #[test]
    fn a_damaged_frame_names_its_pack_and_place() {
        let l = BlobLoc {
            compression: Compression::Zstd,
            ..loc(0, 4, 4)
        };
        let mut out = [0u8; 4];
        let e = decode_frame(None, b"not zstd", &l, "p.pack", &mut out).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Corrupt);
        assert!(
            e.to_string().contains("p.pack: frame at offset 4096"),
            "{e}"
        );
    }
}

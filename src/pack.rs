//! Pack files: append-only containers of compressed blobs that describe themselves.
//!
//! Blobs are stored in frames: a frame is one zstd frame (or raw bytes) holding one blob, or
//! several consecutive small blobs compressed together, which compresses better and much faster
//! than compressing each 4 KiB page on its own.
//!
//! ```text
//! header   0  8  magic "STRAPACK"
//!          8  4  version (u32 LE) = 1
//!          12 4  reserved, zero
//! frames   16 .. stored bytes of each frame, back to back
//! trailer     N x 64-byte blob entries (see [`PackEntry`])
//! footer      8  trailer offset (u64)     4 entry count (u32)   4 version (u32)
//!             32 BLAKE3 of the trailer    8 magic "STRAPEND"
//! ```
//! A pack's name is the BLAKE3 of the whole file, so a pack can also be checked as a unit.

use crate::compress::Compression;
use crate::error::{Error, Result};
use crate::id::ChunkId;
use crate::storage::ObjectWriter;

pub const MAGIC: &[u8; 8] = b"STRAPACK";
pub const END_MAGIC: &[u8; 8] = b"STRAPEND";
pub const VERSION: u32 = 1;
pub const HEADER_LEN: usize = 16;
pub const ENTRY_LEN: usize = 64;
pub const FOOTER_LEN: usize = 8 + 4 + 4 + 32 + 8;
/// Packs never grow past this, so offsets fit in 32 bits in the index.
pub const MAX_PACK_BYTES: u64 = 1 << 31;
/// No blob or frame is larger than this (the largest FastCDC chunk is 16 MiB).
pub const MAX_BLOB_BYTES: u32 = 32 << 20;

/// What a blob holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum BlobKind {
    Data = 0,
    /// A node of a file's chunk-list tree.
    Node = 1,
}

impl BlobKind {
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(BlobKind::Data),
            1 => Some(BlobKind::Node),
            _ => None,
        }
    }
}

/// One trailer entry, per blob:
/// `id[32] | frame offset u64 | frame stored_len u32 | frame raw_len u32 | offset in frame u32 |
///  raw_len u32 | kind u8 | compression u8 | reserved[6]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PackEntry {
    pub id: ChunkId,
    pub frame: Frame,
    /// Where the blob starts inside the frame's decompressed bytes.
    pub offset_in_frame: u32,
    pub raw_len: u32,
    pub kind: BlobKind,
}

/// A run of stored bytes in a pack that decompresses on its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Frame {
    pub offset: u64,
    pub stored_len: u32,
    pub raw_len: u32,
    pub compression: Compression,
}

impl PackEntry {
    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.id.as_bytes());
        out.extend_from_slice(&self.frame.offset.to_le_bytes());
        out.extend_from_slice(&self.frame.stored_len.to_le_bytes());
        out.extend_from_slice(&self.frame.raw_len.to_le_bytes());
        out.extend_from_slice(&self.offset_in_frame.to_le_bytes());
        out.extend_from_slice(&self.raw_len.to_le_bytes());
        out.push(self.kind as u8);
        out.push(self.frame.compression as u8);
        out.extend_from_slice(&[0u8; 6]);
    }

    fn read(b: &[u8]) -> Option<Self> {
        let le32 = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
        Some(PackEntry {
            id: ChunkId(b[0..32].try_into().unwrap()),
            frame: Frame {
                offset: u64::from_le_bytes(b[32..40].try_into().unwrap()),
                stored_len: le32(40),
                raw_len: le32(44),
                compression: Compression::from_u8(b[57])?,
            },
            offset_in_frame: le32(48),
            raw_len: le32(52),
            kind: BlobKind::from_u8(b[56])?,
        })
    }
}

/// A blob inside a frame being added: id, offset in the frame's raw bytes, raw length.
pub type Member = (ChunkId, u32, u32);

/// Where a pack's bytes go as it is built.
pub trait PackSink {
    fn put(&mut self, data: &[u8]) -> Result<()>;
}

impl PackSink for Vec<u8> {
    fn put(&mut self, data: &[u8]) -> Result<()> {
        self.extend_from_slice(data);
        Ok(())
    }
}

impl PackSink for Box<dyn ObjectWriter + '_> {
    fn put(&mut self, data: &[u8]) -> Result<()> {
        self.write(data)
    }
}

/// Builds one pack front to back into a sink (memory, or an object being stored as it grows),
/// hashing it on the way for its id.
pub struct PackWriter<S: PackSink = Vec<u8>> {
    out: S,
    len: u64,
    hasher: blake3::Hasher,
    entries: Vec<PackEntry>,
    /// In an encrypted repository the trailer checksum is a keyed BLAKE3 (a MAC) under this key.
    mac_key: Option<[u8; 32]>,
}

impl Default for PackWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl PackWriter {
    /// A pack built in memory.
    pub fn new() -> Self {
        Self::to_sink(Vec::with_capacity(1 << 20)).expect("writing to memory cannot fail")
    }
}

impl<S: PackSink> PackWriter<S> {
    pub fn to_sink(out: S) -> Result<Self> {
        let mut w = PackWriter {
            out,
            len: 0,
            hasher: blake3::Hasher::new(),
            entries: Vec::new(),
            mac_key: None,
        };
        let mut header = [0u8; HEADER_LEN];
        header[..8].copy_from_slice(MAGIC);
        header[8..12].copy_from_slice(&VERSION.to_le_bytes());
        w.emit(&header)?;
        Ok(w)
    }

    /// Authenticates the trailer with a MAC under `key` (encrypted repositories).
    pub fn with_mac_key(mut self, key: Option<&[u8; 32]>) -> Self {
        self.mac_key = key.copied();
        self
    }

    fn emit(&mut self, data: &[u8]) -> Result<()> {
        self.out.put(data)?;
        self.hasher.update(data);
        self.len += data.len() as u64;
        Ok(())
    }

    /// Appends a frame holding `members` (all of `kind`).
    pub fn add_frame(
        &mut self,
        kind: BlobKind,
        compression: Compression,
        stored: &[u8],
        raw_len: u32,
        members: &[Member],
    ) -> Result<()> {
        let frame = Frame {
            offset: self.len,
            stored_len: stored.len() as u32,
            raw_len,
            compression,
        };
        self.emit(stored)?;
        for &(id, offset_in_frame, len) in members {
            self.entries.push(PackEntry {
                id,
                frame,
                offset_in_frame,
                raw_len: len,
                kind,
            });
        }
        Ok(())
    }

    /// Appends a frame holding one blob.
    pub fn add(
        &mut self,
        kind: BlobKind,
        id: ChunkId,
        compression: Compression,
        stored: &[u8],
        raw_len: u32,
    ) -> Result<()> {
        self.add_frame(kind, compression, stored, raw_len, &[(id, 0, raw_len)])
    }

    /// Bytes the finished pack would have, roughly.
    pub fn len(&self) -> usize {
        self.len as usize + self.entries.len() * ENTRY_LEN + FOOTER_LEN
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Appends trailer and footer; returns the pack's id (BLAKE3 of the file), the sink, the
    /// pack's size and its entries.
    pub fn finish(mut self) -> Result<(ChunkId, S, u64, Vec<PackEntry>)> {
        let trailer_offset = self.len;
        let mut tail = Vec::with_capacity(self.entries.len() * ENTRY_LEN + FOOTER_LEN);
        for e in &self.entries {
            e.write(&mut tail);
        }
        let sum = trailer_sum(&tail, self.mac_key.as_ref());
        tail.extend_from_slice(&trailer_offset.to_le_bytes());
        tail.extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        tail.extend_from_slice(&VERSION.to_le_bytes());
        tail.extend_from_slice(sum.as_bytes());
        tail.extend_from_slice(END_MAGIC);
        self.emit(&tail)?;
        let id = ChunkId(*self.hasher.finalize().as_bytes());
        Ok((id, self.out, self.len, self.entries))
    }
}

/// Parses the footer at the end of a pack of `file_len` bytes: returns (trailer offset, count).
pub fn parse_footer(footer: &[u8], file_len: u64, what: &str) -> Result<(u64, u32)> {
    if footer.len() != FOOTER_LEN || file_len < (HEADER_LEN + FOOTER_LEN) as u64 {
        return Err(Error::corrupt(format!("{what}: too short to be a pack")));
    }
    if &footer[FOOTER_LEN - 8..] != END_MAGIC {
        return Err(Error::corrupt(format!(
            "{what}: footer magic missing (truncated pack?)"
        )));
    }
    let trailer_offset = u64::from_le_bytes(footer[0..8].try_into().unwrap());
    let count = u32::from_le_bytes(footer[8..12].try_into().unwrap());
    let version = u32::from_le_bytes(footer[12..16].try_into().unwrap());
    if version != VERSION {
        return Err(Error::VersionUnsupported(format!(
            "{what}: pack version {version} is not supported (this strata reads {VERSION})"
        )));
    }
    let expected_end = trailer_offset
        .checked_add(count as u64 * ENTRY_LEN as u64)
        .and_then(|v| v.checked_add(FOOTER_LEN as u64));
    if trailer_offset < HEADER_LEN as u64 || expected_end != Some(file_len) {
        return Err(Error::corrupt(format!(
            "{what}: trailer offset {trailer_offset} and {count} entries do not fit a {file_len}-byte pack"
        )));
    }
    Ok((trailer_offset, count))
}

/// The footer's checksum of the trailer: BLAKE3, or keyed BLAKE3 under the repository's MAC key.
fn trailer_sum(trailer: &[u8], mac_key: Option<&[u8; 32]>) -> blake3::Hash {
    match mac_key {
        Some(k) => blake3::keyed_hash(k, trailer),
        None => blake3::hash(trailer),
    }
}

/// Parses and checks a trailer (the entries between `trailer_offset` and the footer); in an
/// encrypted repository `mac_key` authenticates it.
pub fn parse_trailer(
    trailer: &[u8],
    footer: &[u8],
    trailer_offset: u64,
    what: &str,
    mac_key: Option<&[u8; 32]>,
) -> Result<Vec<PackEntry>> {
    // Constant-time comparison (blake3::Hash's PartialEq) for the MAC.
    let sum = trailer_sum(trailer, mac_key);
    let recorded: [u8; 32] = footer[16..48].try_into().expect("32 bytes");
    if sum != blake3::Hash::from(recorded) {
        return Err(Error::corrupt(format!(
            "{what}: trailer checksum mismatch{}",
            if mac_key.is_some() {
                " (damaged, tampered with, or from another repository)"
            } else {
                ""
            }
        )));
    }
    let mut entries: Vec<PackEntry> = Vec::with_capacity(trailer.len() / ENTRY_LEN);
    let mut next_free = HEADER_LEN as u64;
    for (i, raw) in trailer.chunks_exact(ENTRY_LEN).enumerate() {
        let e = PackEntry::read(raw)
            .ok_or_else(|| Error::corrupt(format!("{what}: entry {i} has an unknown kind")))?;
        let bad = |why: &str| {
            Error::corrupt(format!(
                "{what}: entry {i} (frame at {}, {} bytes): {why}",
                e.frame.offset, e.frame.stored_len
            ))
        };
        if e.frame.raw_len > MAX_BLOB_BYTES || e.frame.stored_len > MAX_BLOB_BYTES {
            return Err(bad("too large"));
        }
        // Sealed frames (encrypted repositories) carry a nonce and a tag.
        let overhead = if mac_key.is_some() {
            crate::crypto::OVERHEAD as u32
        } else {
            0
        };
        if e.frame.compression == Compression::None
            && e.frame.stored_len != e.frame.raw_len.saturating_add(overhead)
        {
            return Err(bad("raw frame with differing lengths"));
        }
        let member_end = e.offset_in_frame as u64 + e.raw_len as u64;
        if member_end > e.frame.raw_len as u64 {
            return Err(bad("blob lies outside its frame"));
        }
        match entries.last() {
            // Another blob of the frame before it: must follow it inside the frame.
            Some(prev) if prev.frame == e.frame => {
                if (e.offset_in_frame as u64) < prev.offset_in_frame as u64 + prev.raw_len as u64 {
                    return Err(bad("blobs of a frame overlap"));
                }
            }
            _ => {
                let end = e.frame.offset.checked_add(e.frame.stored_len as u64);
                if e.frame.offset < next_free || end.is_none_or(|end| end > trailer_offset) {
                    return Err(bad("frame lies outside the frame area or overlaps another"));
                }
                next_free = e.frame.offset + e.frame.stored_len as u64;
            }
        }
        entries.push(e);
    }
    Ok(entries)
}

/// Reads the entries of pack `name` from its footer and trailer only (its size, and the entries).
pub fn read_entries(
    backend: &dyn crate::storage::Backend,
    name: &str,
    mac_key: Option<&[u8; 32]>,
) -> Result<(u64, Vec<PackEntry>)> {
    let size = backend.size(name)?;
    if size < (HEADER_LEN + FOOTER_LEN) as u64 {
        return Err(Error::corrupt(format!("{name}: too short to be a pack")));
    }
    if backend.get_range(name, 0, 8)? != MAGIC {
        return Err(Error::corrupt(format!("{name}: wrong magic bytes")));
    }
    let footer = backend.get_range(name, size - FOOTER_LEN as u64, FOOTER_LEN)?;
    let (trailer_offset, _) = parse_footer(&footer, size, name)?;
    let trailer_len = (size - FOOTER_LEN as u64 - trailer_offset) as usize;
    let trailer = backend.get_range(name, trailer_offset, trailer_len)?;
    let entries = parse_trailer(&trailer, &footer, trailer_offset, name, mac_key)?;
    Ok((size, entries))
}

/// Parses a whole pack held in memory.
pub fn parse_pack(bytes: &[u8], what: &str, mac_key: Option<&[u8; 32]>) -> Result<Vec<PackEntry>> {
    if bytes.len() < HEADER_LEN + FOOTER_LEN {
        return Err(Error::corrupt(format!("{what}: too short to be a pack")));
    }
    if &bytes[..8] != MAGIC {
        return Err(Error::corrupt(format!("{what}: wrong magic bytes")));
    }
    let footer = &bytes[bytes.len() - FOOTER_LEN..];
    let (off, _) = parse_footer(footer, bytes.len() as u64, what)?;
    parse_trailer(
        &bytes[off as usize..bytes.len() - FOOTER_LEN],
        footer,
        off,
        what,
        mac_key,
    )
}

/// What can be saved of a pack that does not parse (damaged magic, trailer, checksum or
/// footer): the trailer is looked for where the footer's offset or its entry count puts it,
/// its entries are read one by one, and an entry is kept only if its frame, read and decoded,
/// holds bytes that hash to the entry's id (and, sealed, authenticate). No checksum is trusted:
/// every kept blob is proven by its content. Returns the kept entries of the best candidate.
pub fn salvage(bytes: &[u8], keys: Option<&crate::crypto::Keys>) -> Vec<PackEntry> {
    if bytes.len() < HEADER_LEN + FOOTER_LEN {
        return vec![];
    }
    let footer_at = bytes.len() - FOOTER_LEN;
    let footer = &bytes[footer_at..];
    let offset = u64::from_le_bytes(footer[0..8].try_into().unwrap());
    let count = u32::from_le_bytes(footer[8..12].try_into().unwrap()) as u64;
    let area = (footer_at - HEADER_LEN) as u64;
    let mut candidates = vec![];
    if (HEADER_LEN as u64..=footer_at as u64).contains(&offset) {
        candidates.push(offset);
    }
    if count * ENTRY_LEN as u64 <= area {
        candidates.push(footer_at as u64 - count * ENTRY_LEN as u64);
    }
    let mut best: Vec<PackEntry> = vec![];
    let mut raw = Vec::new();
    for start in candidates {
        let trailer = &bytes[start as usize..footer_at];
        let kept: Vec<PackEntry> = trailer
            .chunks_exact(ENTRY_LEN)
            .filter_map(PackEntry::read)
            .filter(|e| e.frame.offset.saturating_add(e.frame.stored_len as u64) <= start)
            .filter(|e| proven(bytes, e, keys, &mut raw))
            .collect();
        if kept.len() > best.len() {
            best = kept;
        }
    }
    best
}

/// Whether `e` is what the pack's `bytes` hold: its frame lies after the header, decodes (and,
/// sealed, authenticates), and the blob's place in it hashes to the entry's id. `raw` is scratch.
pub fn proven(
    bytes: &[u8],
    e: &PackEntry,
    keys: Option<&crate::crypto::Keys>,
    raw: &mut Vec<u8>,
) -> bool {
    let member_end = e.offset_in_frame as u64 + e.raw_len as u64;
    let stored = e
        .frame
        .offset
        .checked_add(e.frame.stored_len as u64)
        .and_then(|end| bytes.get(e.frame.offset as usize..end as usize));
    let Some(stored) = stored else {
        return false;
    };
    if e.frame.offset < HEADER_LEN as u64
        || e.frame.raw_len > MAX_BLOB_BYTES
        || member_end > e.frame.raw_len as u64
    {
        return false;
    }
    raw.resize(e.frame.raw_len as usize, 0);
    let decoded = decode_stored(
        keys,
        stored,
        e.frame.compression,
        e.frame.offset,
        "salvage",
        raw,
    );
    decoded.is_ok()
        && ChunkId::hash(
            keys.map(|k| k.id_key()),
            &raw[e.offset_in_frame as usize..member_end as usize],
        ) == e.id
}

/// Opens (in an encrypted repository) and decompresses a frame's stored bytes into `dst` (exactly
/// its raw length).
pub fn decode_stored(
    keys: Option<&crate::crypto::Keys>,
    stored: &[u8],
    compression: crate::compress::Compression,
    offset: u64,
    pack: &str,
    dst: &mut [u8],
) -> Result<()> {
    let what = || format!("{pack}: frame at offset {offset}");
    let opened;
    let body = match keys {
        Some(k) => {
            opened = k.open(crate::crypto::Object::Frame, stored, &what())?;
            &opened[..]
        }
        None => stored,
    };
    crate::compress::decompress_into(body, compression, dst)
        .map_err(|e| Error::corrupt(format!("{}: {e}", what())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> (ChunkId, Vec<u8>, Vec<PackEntry>) {
        let mut w = PackWriter::new();
        for i in 0..5u8 {
            let data = vec![i; 100 + i as usize];
            w.add(
                BlobKind::Data,
                ChunkId::hash(None, &data),
                Compression::None,
                &data,
                data.len() as u32,
            )
            .unwrap();
        }
        // A frame of three blobs.
        let parts: Vec<Vec<u8>> = (0..3u8).map(|i| vec![100 + i; 50]).collect();
        let joined = parts.concat();
        let members: Vec<Member> = parts
            .iter()
            .enumerate()
            .map(|(i, p)| (ChunkId::hash(None, p), (i * 50) as u32, 50))
            .collect();
        w.add_frame(BlobKind::Data, Compression::None, &joined, 150, &members)
            .unwrap();
        let (id, bytes, size, entries) = w.finish().unwrap();
        assert_eq!(size, bytes.len() as u64);
        (id, bytes, entries)
    }

    #[test]
    fn salvage_keeps_what_the_content_proves() {
        let (_, bytes, entries) = sample();
        let all = salvage(&bytes, None);
        assert_eq!(all, entries);
        // Header magic gone: everything still proven.
        let mut b = bytes.clone();
        b[0] ^= 1;
        assert!(parse_pack(&b, "p", None).is_err());
        assert_eq!(salvage(&b, None), entries);
        // One trailer entry's id damaged: the checksum fails, the other entries are kept.
        let footer_at = bytes.len() - FOOTER_LEN;
        let trailer_at = footer_at - entries.len() * ENTRY_LEN;
        let mut b = bytes.clone();
        b[trailer_at + ENTRY_LEN + 5] ^= 1;
        assert!(parse_pack(&b, "p", None).is_err());
        let kept = salvage(&b, None);
        assert_eq!(kept.len(), entries.len() - 1);
        assert!(kept.iter().all(|e| entries.contains(e)));
        // The footer's trailer offset damaged: found from the entry count.
        let mut b = bytes.clone();
        b[footer_at + 2] ^= 0x40;
        assert_eq!(salvage(&b, None), entries);
        // A frame damaged: its blobs are left out, never kept with wrong bytes.
        let mut b = bytes.clone();
        let f = entries[0].frame;
        b[f.offset as usize] ^= 1;
        let kept = salvage(&b, None);
        assert!(!kept.iter().any(|e| e.frame == f));
        assert_eq!(kept.len(), entries.len() - 1);
        // Too short or garbage: nothing, no panic.
        assert!(salvage(&bytes[..10], None).is_empty());
        assert!(salvage(&vec![0xA5; 500], None).is_empty());
    }

    #[test]
    fn round_trip() {
        let (id, bytes, entries) = sample();
        assert_eq!(id, ChunkId(*blake3::hash(&bytes).as_bytes()));
        assert_eq!(parse_pack(&bytes, "p", None).unwrap(), entries);
        for e in &entries {
            let f = e.frame;
            let frame = &bytes[f.offset as usize..(f.offset + f.stored_len as u64) as usize];
            let blob = &frame[e.offset_in_frame as usize..(e.offset_in_frame + e.raw_len) as usize];
            assert_eq!(ChunkId::hash(None, blob), e.id);
        }
    }

    proptest::proptest! {
        #[test]
        fn hostile_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400)) {
            if let Ok(entries) = parse_pack(&bytes, "p", None) {
                for e in entries {
                    proptest::prop_assert!(e.frame.offset + e.frame.stored_len as u64 <= bytes.len() as u64);
                }
            }
        }
    }

    #[test]
    fn damage_in_trailer_or_footer_is_detected() {
        let (_, bytes, entries) = sample();
        let trailer_start = entries
            .last()
            .map(|e| e.frame.offset + e.frame.stored_len as u64)
            .unwrap() as usize;
        for i in (0..8).chain(trailer_start..bytes.len()) {
            let mut bad = bytes.clone();
            bad[i] ^= 0x01;
            // Reserved bytes are ignored only if they are in the header; everything else counts.
            if (12..16).contains(&i) {
                continue;
            }
            assert!(
                parse_pack(&bad, "p", None).is_err(),
                "flip at {i} not detected"
            );
        }
        for n in 0..bytes.len() {
            assert!(parse_pack(&bytes[..n], "p", None).is_err());
        }
    }
}

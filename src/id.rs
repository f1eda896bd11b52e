//! Content identifiers: 32-byte BLAKE3 digests shown as lowercase hex.

use crate::error::{Error, Result};
use std::fmt;
use std::str::FromStr;

/// The id of a stored object (a data chunk or a chunk-list node): BLAKE3 of its plain bytes,
/// keyed by the repository's id key when the key scheme provides one.
#[derive(
    Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct ChunkId(pub [u8; 32]);

/// The id of a snapshot: BLAKE3 of its encoded manifest.
pub type SnapshotId = ChunkId;

impl ChunkId {
    pub const LEN: usize = 32;

    /// Hashes `data` with the repository's id function (`key` is `None` for unkeyed repositories).
    pub fn hash(key: Option<&[u8; 32]>, data: &[u8]) -> Self {
        match key {
            None => ChunkId(*blake3::hash(data).as_bytes()),
            Some(k) => ChunkId(*blake3::keyed_hash(k, data).as_bytes()),
        }
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub fn to_hex(&self) -> String {
        let mut s = String::with_capacity(64);
        for b in self.0 {
            s.push_str(&format!("{b:02x}"));
        }
        s
    }

    /// The first 8 hex digits, as printed in listings.
    pub fn short(&self) -> String {
        self.to_hex()[..8].to_string()
    }

    /// A number taken from the id's bytes, used for content-defined cuts of chunk lists.
    pub fn cut_bits(&self) -> u32 {
        u32::from_le_bytes([self.0[28], self.0[29], self.0[30], self.0[31]])
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkId({})", self.short())
    }
}

impl FromStr for ChunkId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        if s.len() != 64 {
            return Err(Error::invalid(format!("not a 64-digit hex id: {s:?}")));
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16)
                .map_err(|_| Error::invalid(format!("not a hex id: {s:?}")))?;
        }
        Ok(ChunkId(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let id = ChunkId::hash(None, b"hello");
        let parsed: ChunkId = id.to_hex().parse().unwrap();
        assert_eq!(id, parsed);
        assert_eq!(
            id.to_hex(),
            "ea8f163db38682925e4491c5e58d4bb3506ef8c14eb78a86e908c5624a67200f"
        );
        assert!("zz".parse::<ChunkId>().is_err());
        assert!("g".repeat(64).parse::<ChunkId>().is_err());
    }

    #[test]
    fn keyed_differs() {
        let key = [7u8; 32];
        assert_ne!(ChunkId::hash(None, b"x"), ChunkId::hash(Some(&key), b"x"));
    }
}

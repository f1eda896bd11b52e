//! The one place that serializes metadata (and words the errors of TOML settings files).
//!
//! Structured metadata (manifests, snapshot summaries, the config) is encoded with bincode 2
//! (standard configuration: little-endian, variable-length integers) with a size limit, so a
//! hostile length prefix cannot make us allocate without bound. Files that hold such payloads
//! are wrapped in a [`frame`]: magic, version, length, payload and a BLAKE3 checksum.

use crate::error::{Error, Result};
use serde::{Serialize, de::DeserializeOwned};

/// Upper bound on any single decoded metadata object.
pub const DECODE_LIMIT: usize = 256 << 20;

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<DECODE_LIMIT>()
}

pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    bincode::serde::encode_to_vec(value, config())
        .map_err(|e| Error::invalid(format!("encoding metadata: {e}")))
}

/// Decodes `bytes`, which must be consumed exactly. `what` names the object in errors.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T> {
    let (value, used) = bincode::serde::decode_from_slice(bytes, config())
        .map_err(|e| Error::corrupt(format!("{what}: cannot decode: {e}")))?;
    if used != bytes.len() {
        return Err(Error::corrupt(format!(
            "{what}: {} trailing bytes after the encoded object",
            bytes.len() - used
        )));
    }
    Ok(value)
}

/// Framed file layout (all integers little-endian):
///
/// ```text
/// 0   8  magic
/// 8   4  version (u32)
/// 12  8  payload length N (u64)
/// 20  N  payload
/// 20+N 32 BLAKE3 of bytes [0, 20+N)
/// ```
pub mod frame {
    use super::*;

    pub const MAGIC_LEN: usize = 8;
    const VERSION_OFFSET: usize = MAGIC_LEN;
    const LEN_OFFSET: usize = VERSION_OFFSET + 4;
    pub const HEADER_LEN: usize = LEN_OFFSET + 8;
    pub const CHECKSUM_LEN: usize = 32;

    pub fn wrap(magic: &[u8; MAGIC_LEN], version: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + payload.len() + CHECKSUM_LEN);
        out.extend_from_slice(magic);
        out.extend_from_slice(&version.to_le_bytes());
        out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
        out.extend_from_slice(payload);
        let sum = blake3::hash(&out);
        out.extend_from_slice(sum.as_bytes());
        out
    }

    /// Checks magic, checksum and version (`max_version` is the newest this build reads) and
    /// returns `(version, payload)`.
    pub fn unwrap<'a>(
        magic: &[u8; MAGIC_LEN],
        max_version: u32,
        bytes: &'a [u8],
        what: &str,
    ) -> Result<(u32, &'a [u8])> {
        if bytes.len() < HEADER_LEN + CHECKSUM_LEN {
            return Err(Error::corrupt(format!(
                "{what}: truncated ({} bytes)",
                bytes.len()
            )));
        }
        if &bytes[..MAGIC_LEN] != magic {
            return Err(Error::corrupt(format!("{what}: wrong magic bytes")));
        }
        let version = u32::from_le_bytes(bytes[VERSION_OFFSET..LEN_OFFSET].try_into().unwrap());
        let len = u64::from_le_bytes(bytes[LEN_OFFSET..HEADER_LEN].try_into().unwrap());
        let expected = (HEADER_LEN + CHECKSUM_LEN) as u64;
        if len.checked_add(expected) != Some(bytes.len() as u64) {
            return Err(Error::corrupt(format!(
                "{what}: length field says {len} payload bytes, file has {}",
                bytes.len()
            )));
        }
        let body_end = HEADER_LEN + len as usize;
        let sum = blake3::hash(&bytes[..body_end]);
        if sum.as_bytes() != &bytes[body_end..] {
            return Err(Error::corrupt(format!("{what}: checksum mismatch")));
        }
        if version == 0 || version > max_version {
            return Err(Error::VersionUnsupported(format!(
                "{what}: format version {version} is not supported by this strata \
                 (reads up to {max_version}); upgrade strata"
            )));
        }
        Ok((version, &bytes[HEADER_LEN..body_end]))
    }
}

/// The 1-based line of byte `offset` of `text` (for messages about settings files).
pub fn line_at(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// A settings file's TOML error as `FILE:LINE: message`, at the line where it was found.
pub fn toml_error(text: &str, file: &str, e: &toml::de::Error) -> String {
    match e.span() {
        Some(s) => format!("{file}:{}: {}", line_at(text, s.start), e.message()),
        None => format!("{file}: {}", e.message()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_round_trip_and_damage() {
        let framed = frame::wrap(b"TESTMAGC", 1, b"payload");
        let (v, p) = frame::unwrap(b"TESTMAGC", 1, &framed, "t").unwrap();
        assert_eq!((v, p), (1, &b"payload"[..]));
        for i in 0..framed.len() {
            let mut bad = framed.clone();
            bad[i] ^= 0x10;
            assert!(
                frame::unwrap(b"TESTMAGC", 1, &bad, "t").is_err(),
                "flip at {i}"
            );
        }
        for n in 0..framed.len() {
            assert!(frame::unwrap(b"TESTMAGC", 1, &framed[..n], "t").is_err());
        }
        let newer = frame::wrap(b"TESTMAGC", 2, b"x");
        let err = frame::unwrap(b"TESTMAGC", 1, &newer, "t").unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::VersionUnsupported);
    }

    #[test]
    fn decode_rejects_trailing_and_garbage() {
        let bytes = encode(&(1u32, "x".to_string())).unwrap();
        let back: (u32, String) = decode(&bytes, "t").unwrap();
        assert_eq!(back, (1, "x".to_string()));
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode::<(u32, String)>(&longer, "t").is_err());
        // A huge length prefix must fail, not allocate.
        let hostile = [0xfcu8, 0xff, 0xff, 0xff, 0xff, 0x7f];
        assert!(decode::<Vec<u64>>(&hostile, "t").is_err());
    }
}

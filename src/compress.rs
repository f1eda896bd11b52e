//! zstd encode/decode of single chunks, with per-thread reusable contexts.

use crate::error::{Error, Result};
use std::cell::RefCell;

/// How a blob's bytes are stored in a pack.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Compression {
    None = 0,
    Zstd = 1,
}

impl Compression {
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(Compression::None),
            1 => Some(Compression::Zstd),
            _ => None,
        }
    }
}

thread_local! {
    static COMPRESSOR: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> = const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
}

/// Compresses `data` at `level`; returns the raw bytes unchanged (and `Compression::None`) when
/// compression does not make them smaller.
pub fn compress(data: &[u8], level: i32) -> Result<(Compression, Vec<u8>)> {
    COMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.as_ref().map(|(l, _)| *l) != Some(level) {
            let c = zstd::bulk::Compressor::new(level)
                .map_err(|e| Error::invalid(format!("zstd level {level}: {e}")))?;
            *slot = Some((level, c));
        }
        let (_, c) = slot.as_mut().expect("set above");
        let out = c
            .compress(data)
            .map_err(|e| Error::io("zstd compression", e))?;
        if out.len() < data.len() {
            Ok((Compression::Zstd, out))
        } else {
            Ok((Compression::None, data.to_vec()))
        }
    })
}

/// Decompresses a blob that must expand to exactly `raw_len` bytes.
pub fn decompress(stored: &[u8], compression: Compression, raw_len: usize) -> Result<Vec<u8>> {
    let mut out = vec![0u8; raw_len];
    decompress_into(stored, compression, &mut out)?;
    Ok(out)
}

/// Decompresses a blob into `dst`, which must be exactly its raw length.
pub fn decompress_into(stored: &[u8], compression: Compression, dst: &mut [u8]) -> Result<()> {
    match compression {
        Compression::None => {
            if stored.len() != dst.len() {
                return Err(Error::corrupt(format!(
                    "stored length {} differs from raw length {}",
                    stored.len(),
                    dst.len()
                )));
            }
            dst.copy_from_slice(stored);
            Ok(())
        }
        Compression::Zstd => DECOMPRESSOR.with(|cell| {
            let mut slot = cell.borrow_mut();
            if slot.is_none() {
                *slot = Some(
                    zstd::bulk::Decompressor::new()
                        .map_err(|e| Error::io("zstd decompressor", e))?,
                );
            }
            let d = slot.as_mut().expect("set above");
            let n = d
                .decompress_to_buffer(stored, dst)
                .map_err(|e| Error::corrupt(format!("zstd: {e}")))?;
            if n != dst.len() {
                return Err(Error::corrupt(format!(
                    "zstd produced {n} bytes, expected {}",
                    dst.len()
                )));
            }
            Ok(())
        }),
    }
}

thread_local! {
    static CHECK_BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Decodes a frame that is about to be written and checks every member (id, length, in order)
/// against its id, so a frame that would not read back as what was hashed (a compressor bug, a
/// wrong copy between hashing and compressing) never reaches a pack. restic lost data that way
/// (restic #4677) and checks its blobs before upload since; so does strata.
pub fn check_frame(
    stored: &[u8],
    compression: Compression,
    raw_len: usize,
    members: &[(crate::id::ChunkId, usize)],
    key: Option<&[u8; 32]>,
) -> Result<()> {
    CHECK_BUF.with(|cell| {
        let mut buf = cell.borrow_mut();
        buf.resize(raw_len, 0);
        decompress_into(stored, compression, &mut buf).map_err(|e| {
            Error::invalid(format!(
                "a frame just compressed does not decode ({e}); nothing was stored"
            ))
        })?;
        let mut at = 0;
        for (id, len) in members {
            let got = buf
                .get(at..at + len)
                .map(|b| crate::id::ChunkId::hash(key, b));
            if got.as_ref() != Some(id) {
                return Err(Error::invalid(format!(
                    "a frame just compressed does not read back as chunk {id}; nothing was stored"
                )));
            }
            at += len;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_raw_fallback() {
        let text = b"hello hello hello hello hello hello hello".repeat(50);
        let (c, z) = compress(&text, 3).unwrap();
        assert_eq!(c, Compression::Zstd);
        assert!(z.len() < text.len());
        assert_eq!(decompress(&z, c, text.len()).unwrap(), text);
        let noise: Vec<u8> = (0..255u8).collect();
        let (c, z) = compress(&noise, 3).unwrap();
        assert_eq!(c, Compression::None);
        assert_eq!(z, noise);
        assert!(decompress(&z, c, 10).is_err());
        assert!(decompress(b"garbage", Compression::Zstd, 10).is_err());
        let mut dst = vec![0; text.len()];
        let (c, z) = compress(&text, 1).unwrap();
        decompress_into(&z, c, &mut dst).unwrap();
        assert_eq!(dst, text);
        let mut short = vec![0; text.len() - 1];
        assert!(decompress_into(&z, c, &mut short).is_err());
    }

    #[test]
    fn a_frame_that_does_not_read_back_is_caught_before_it_is_written() {
        use crate::id::ChunkId;
        let a = b"first chunk first chunk first chunk".repeat(40);
        let b = b"second".repeat(100);
        let raw = [a.clone(), b.clone()].concat();
        let members = [
            (ChunkId::hash(None, &a), a.len()),
            (ChunkId::hash(None, &b), b.len()),
        ];
        let (c, z) = compress(&raw, 1).unwrap();
        check_frame(&z, c, raw.len(), &members, None).unwrap();
        // A keyed repository's ids do not match plain ones.
        assert!(check_frame(&z, c, raw.len(), &members, Some(&[1; 32])).is_err());
        // Damage anywhere in the frame: caught, unless the frame still decodes to the very
        // same bytes (a flag bit zstd does not need), which is harmless.
        let mut caught = 0;
        for i in 0..z.len() {
            let mut bad = z.clone();
            bad[i] ^= 0x20;
            match check_frame(&bad, c, raw.len(), &members, None) {
                Err(err) => {
                    assert!(err.to_string().contains("nothing was stored"), "{err}");
                    caught += 1;
                }
                Ok(()) => assert_eq!(decompress(&bad, c, raw.len()).unwrap(), raw),
            }
        }
        assert!(caught * 10 > z.len() * 9, "{caught} of {}", z.len());
        // A raw frame with a wrong byte.
        let mut copy = raw.clone();
        copy[a.len() + 3] ^= 1;
        assert!(check_frame(&copy, Compression::None, raw.len(), &members, None).is_err());
    }
}

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
}

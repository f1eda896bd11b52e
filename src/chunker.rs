//! Where files are cut into chunks. Knows nothing about repositories.
//!
//! Two ways to cut:
//! - FastCDC (v2020, normalization level 1) for general files: cut points depend on content, so an
//!   insertion moves only nearby boundaries.
//! - Page alignment for SQLite database files: cuts every `page_size` bytes, so a page rewritten in
//!   place changes exactly one chunk (see [`sqlite_page_size`]).
//!
//! Files are read through a bounded window ([`ChunkStream`]) so memory does not grow with file size.
//! A FastCDC cut is only decided once `max` bytes (or the end of file) are in the window, which
//! makes boundaries identical to cutting the whole file at once.

use crate::error::{Error, Result};
use fastcdc::v2020::{MASKS, cut_gear, get_gear_with_seed};
use std::io::Read;

/// FastCDC size parameters in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChunkerParams {
    pub min: u32,
    pub avg: u32,
    pub max: u32,
}

impl Default for ChunkerParams {
    /// 2 / 8 / 32 KiB, chosen on the W1 workload (see docs/PERFORMANCE.md).
    fn default() -> Self {
        ChunkerParams {
            min: 2 << 10,
            avg: 8 << 10,
            max: 32 << 10,
        }
    }
}

impl ChunkerParams {
    pub fn validate(&self) -> Result<()> {
        use fastcdc::v2020::{
            AVERAGE_MAX, AVERAGE_MIN, MAXIMUM_MAX, MAXIMUM_MIN, MINIMUM_MAX, MINIMUM_MIN,
        };
        let ok = (MINIMUM_MIN..=MINIMUM_MAX).contains(&self.min)
            && (AVERAGE_MIN..=AVERAGE_MAX).contains(&self.avg)
            && (MAXIMUM_MIN..=MAXIMUM_MAX).contains(&self.max)
            && self.min < self.avg
            && self.avg < self.max
            && self.avg.is_power_of_two();
        if ok {
            Ok(())
        } else {
            Err(Error::invalid(format!(
                "chunk sizes min={} avg={} max={} are invalid: need {}<=min<avg<max<={}, \
                 avg a power of two between {} and {}",
                self.min, self.avg, self.max, MINIMUM_MIN, MAXIMUM_MAX, AVERAGE_MIN, AVERAGE_MAX
            )))
        }
    }
}

/// How a particular file is cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CutMode {
    Cdc,
    /// Fixed-size chunks of this many bytes (a database page).
    Fixed(u32),
}

/// A FastCDC cutter with its gear tables (seeded by the key scheme; seed 0 = the standard table).
pub struct Chunker {
    params: ChunkerParams,
    mask_s: u64,
    mask_l: u64,
    gear: Box<[u64; 256]>,
    gear_ls: Box<[u64; 256]>,
}

impl Chunker {
    pub fn new(params: ChunkerParams, seed: u64) -> Result<Self> {
        params.validate()?;
        let bits = params.avg.trailing_zeros();
        let (gear, gear_ls) = get_gear_with_seed(seed);
        Ok(Chunker {
            params,
            mask_s: MASKS[(bits + 1) as usize],
            mask_l: MASKS[(bits - 1) as usize],
            gear,
            gear_ls,
        })
    }

    /// A cutter with a secret gear table (`gear_ls` is derived: each word shifted left by one,
    /// as FastCDC v2020 uses it).
    pub fn with_gear(params: ChunkerParams, gear: Box<[u64; 256]>) -> Result<Self> {
        let mut c = Chunker::new(params, 0)?;
        let mut gear_ls = Box::new([0u64; 256]);
        for (l, g) in gear_ls.iter_mut().zip(gear.iter()) {
            *l = g << 1;
        }
        c.gear = gear;
        c.gear_ls = gear_ls;
        Ok(c)
    }

    pub fn params(&self) -> ChunkerParams {
        self.params
    }

    /// Length of the next chunk at the start of `data`, or `None` when more bytes are needed to
    /// decide (`eof` false and fewer than `max` bytes available).
    pub fn next_cut(&self, data: &[u8], eof: bool, mode: CutMode) -> Option<usize> {
        if data.is_empty() {
            return None;
        }
        match mode {
            CutMode::Fixed(size) => {
                let size = size as usize;
                if data.len() >= size {
                    Some(size)
                } else if eof {
                    Some(data.len())
                } else {
                    None
                }
            }
            CutMode::Cdc => {
                let max = self.params.max as usize;
                if data.len() < max && !eof {
                    return None;
                }
                let (_, len) = cut_gear(
                    data,
                    self.params.min as usize,
                    self.params.avg as usize,
                    max,
                    self.mask_s,
                    self.mask_l,
                    self.mask_s << 1,
                    self.mask_l << 1,
                    &self.gear,
                    &self.gear_ls,
                );
                Some(len.max(1).min(data.len()))
            }
        }
    }

    /// Cuts a whole in-memory buffer; returns chunk lengths.
    pub fn cut_all(&self, data: &[u8], mode: CutMode) -> Vec<usize> {
        let mut out = Vec::new();
        let mut pos = 0;
        while let Some(len) = self.next_cut(&data[pos..], true, mode) {
            out.push(len);
            pos += len;
        }
        out
    }
}

/// A batch of whole chunks: file offset of the first byte, the bytes, and the chunk lengths.
pub type Batch<'a> = (u64, &'a [u8], Vec<usize>);

/// Reads from `R` through a window of bounded size and hands out batches of whole chunks.
pub struct ChunkStream<'c, R> {
    reader: R,
    chunker: &'c Chunker,
    mode: CutMode,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    eof: bool,
    /// Bytes handed out so far: the file offset of the next chunk.
    offset: u64,
}

/// Window size: large enough for good parallelism within a file, small enough to bound memory.
pub const WINDOW: usize = 8 << 20;

impl<'c, R: Read> ChunkStream<'c, R> {
    pub fn new(reader: R, chunker: &'c Chunker, mode: CutMode) -> Self {
        Self::with_window(reader, chunker, mode, WINDOW)
    }

    pub fn with_window(reader: R, chunker: &'c Chunker, mode: CutMode, window: usize) -> Self {
        let window = window.max(2 * chunker.params.max as usize);
        ChunkStream {
            reader,
            chunker,
            mode,
            buf: vec![0; window],
            start: 0,
            end: 0,
            eof: false,
            offset: 0,
        }
    }

    fn fill(&mut self) -> std::io::Result<()> {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        while self.end < self.buf.len() && !self.eof {
            match self.reader.read(&mut self.buf[self.end..]) {
                Ok(0) => self.eof = true,
                Ok(n) => self.end += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// The next batch: the file offset of its first byte, the bytes, and the chunk lengths that
    /// tile them. `None` at end of input.
    pub fn next_batch(&mut self) -> std::io::Result<Option<Batch<'_>>> {
        self.next_batch_known(&mut |_, _| None)
    }

    /// Like [`ChunkStream::next_batch`], but at each chunk boundary `known(offset, rest)` may
    /// answer with the length of the chunk that starts there, where the caller can tell that the
    /// cutter would cut there too (see `backup::cdc::CdcSkip`); the cutter runs only where it does
    /// not.
    pub fn next_batch_known(
        &mut self,
        known: &mut dyn FnMut(u64, &[u8]) -> Option<usize>,
    ) -> std::io::Result<Option<Batch<'_>>> {
        self.fill()?;
        let mut lens = Vec::new();
        let mut pos = self.start;
        loop {
            let at = self.offset + (pos - self.start) as u64;
            let rest = &self.buf[pos..self.end];
            let len = match known(at, rest).filter(|&l| l > 0 && l <= rest.len()) {
                Some(l) => l,
                None => match self.chunker.next_cut(rest, self.eof, self.mode) {
                    Some(l) => l,
                    None => break,
                },
            };
            lens.push(len);
            pos += len;
        }
        if lens.is_empty() {
            return Ok(None);
        }
        let offset = self.offset;
        let batch = &self.buf[self.start..pos];
        self.offset += batch.len() as u64;
        self.start = pos;
        Ok(Some((offset, batch, lens)))
    }

    pub fn bytes_read(&self) -> u64 {
        self.offset
    }
}

/// The page size of a SQLite database file, from its 100-byte header, if `header` is one.
pub fn sqlite_page_size(header: &[u8]) -> Option<u32> {
    if header.len() < 100 || &header[..16] != b"SQLite format 3\0" {
        return None;
    }
    let raw = u16::from_be_bytes([header[16], header[17]]) as u32;
    let size = if raw == 1 { 65536 } else { raw };
    (size.is_power_of_two() && (512..=65536).contains(&size)).then_some(size)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn seeded(len: usize, seed: u64) -> Vec<u8> {
        // xorshift: deterministic, no dependency on a rand crate.
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    fn small() -> Chunker {
        Chunker::new(
            ChunkerParams {
                min: 256,
                avg: 1024,
                max: 4096,
            },
            0,
        )
        .unwrap()
    }

    fn stream_lens(c: &Chunker, data: &[u8], mode: CutMode, window: usize) -> Vec<usize> {
        let mut s = ChunkStream::with_window(data, c, mode, window);
        let mut out = Vec::new();
        let mut joined = Vec::new();
        while let Some((off, bytes, lens)) = s.next_batch().unwrap() {
            assert_eq!(off as usize, joined.len());
            assert_eq!(lens.iter().sum::<usize>(), bytes.len());
            joined.extend_from_slice(bytes);
            out.extend(lens);
        }
        assert_eq!(joined, data);
        out
    }

    /// Golden test: these boundaries are part of the format. Changing the chunker changes dedup
    /// against every existing repository, so this must only change with a new chunker version.
    #[test]
    fn golden_boundaries() {
        let data = seeded(1 << 20, 42);
        let c = Chunker::new(ChunkerParams::default(), 0).unwrap();
        let lens = c.cut_all(&data, CutMode::Cdc);
        let first: [usize; 8] = lens[..8].try_into().unwrap();
        assert_eq!(lens.iter().sum::<usize>(), data.len());
        assert_eq!(
            (lens.len(), first),
            GOLDEN,
            "chunk boundaries of seeded data changed"
        );
    }
    const GOLDEN: (usize, [usize; 8]) = (109, [8349, 4592, 2466, 4293, 4991, 2187, 6150, 8649]);

    /// Our windowed use of the gear cutter agrees with the fastcdc crate's own v2020 iterator.
    #[test]
    fn matches_reference_fastcdc() {
        let data = seeded(3 << 20, 7);
        let p = ChunkerParams::default();
        let c = Chunker::new(p, 0).unwrap();
        let reference: Vec<usize> = fastcdc::v2020::FastCDC::new(&data, p.min, p.avg, p.max)
            .map(|ch| ch.length)
            .collect();
        assert_eq!(stream_lens(&c, &data, CutMode::Cdc, 100_000), reference);
    }

    #[test]
    fn sqlite_header() {
        let mut h = vec![0u8; 100];
        h[..16].copy_from_slice(b"SQLite format 3\0");
        h[16..18].copy_from_slice(&4096u16.to_be_bytes());
        assert_eq!(sqlite_page_size(&h), Some(4096));
        h[16..18].copy_from_slice(&1u16.to_be_bytes());
        assert_eq!(sqlite_page_size(&h), Some(65536));
        h[16..18].copy_from_slice(&1000u16.to_be_bytes());
        assert_eq!(sqlite_page_size(&h), None);
        assert_eq!(sqlite_page_size(&h[..50]), None);
    }

    #[test]
    fn bad_params_rejected() {
        let p = ChunkerParams {
            min: 8,
            avg: 1000,
            max: 10,
        };
        assert!(Chunker::new(p, 0).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn chunks_tile_input_and_respect_bounds(len in 0usize..60_000, seed in any::<u64>(), window in 8192usize..20_000) {
            let c = small();
            let data = seeded(len, seed);
            let whole = c.cut_all(&data, CutMode::Cdc);
            prop_assert_eq!(whole.iter().sum::<usize>(), len);
            for (i, l) in whole.iter().enumerate() {
                prop_assert!(*l <= 4096);
                if i + 1 < whole.len() { prop_assert!(*l >= 256); }
            }
            // A bounded window gives exactly the same boundaries.
            prop_assert_eq!(stream_lens(&c, &data, CutMode::Cdc, window), whole);
        }

        #[test]
        fn fixed_mode_cuts_pages(len in 0usize..50_000, page in prop::sample::select(vec![512u32, 1024, 4096])) {
            let c = small();
            let data = seeded(len, 3);
            let lens = stream_lens(&c, &data, CutMode::Fixed(page), 9000);
            for (i, l) in lens.iter().enumerate() {
                if i + 1 < lens.len() { prop_assert_eq!(*l, page as usize); }
            }
        }

        #[test]
        fn an_edit_moves_only_nearby_boundaries(seed in any::<u64>(), at in 1000usize..30_000) {
            let c = small();
            let data = seeded(64_000, seed);
            let mut edited = data.clone();
            edited.insert(at, 0xAB);
            let cuts = |lens: Vec<usize>| {
                let mut acc = 0; lens.into_iter().map(|l| { acc += l; acc }).collect::<Vec<_>>()
            };
            let a = cuts(c.cut_all(&data, CutMode::Cdc));
            let b: std::collections::HashSet<usize> = cuts(c.cut_all(&edited, CutMode::Cdc)).into_iter().map(|x| x - 1).collect();
            // Cut points well past the edit (beyond four max-size chunks) resynchronize.
            let far: Vec<&usize> = a.iter().filter(|&&x| x > at + 4 * 4096 && x < data.len()).collect();
            let kept = far.iter().filter(|x| b.contains(x)).count();
            prop_assert_eq!(kept, far.len());
        }
    }
}

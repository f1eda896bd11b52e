//! `strata tune`: runs strata's own chunker, hasher and compressor over the user's data with
//! several settings, without writing a repository, and measures what each would cost.

use crate::chunker::{ChunkStream, Chunker, ChunkerParams, CutMode, sqlite_page_size};
use crate::error::{IoContext, Result};
use crate::id::ChunkId;
use crate::manifest::EntryKind;
use crate::source::walk::walk_sources;
use std::collections::HashSet;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::time::Instant;

/// Index bytes per stored chunk, measured on W1 (75 MiB of redb for 284,000 chunks).
const INDEX_BYTES_PER_CHUNK: u64 = 260;

/// One chunking setting tried.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Setting {
    pub min: u32,
    pub avg: u32,
    pub max: u32,
    /// Cut SQLite files at pages.
    pub sqlite_pages: bool,
}

impl Setting {
    pub fn init_flags(&self) -> String {
        let k = |v: u32| format!("{}k", v >> 10);
        format!(
            "--chunk-min {} --chunk-avg {} --chunk-max {}{}",
            k(self.min),
            k(self.avg),
            k(self.max),
            if self.sqlite_pages {
                ""
            } else {
                " --no-sqlite-pages"
            }
        )
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ChunkingResult {
    pub setting: Setting,
    pub bytes: u64,
    pub chunks: u64,
    /// Chunking and hashing, MB/s of input, on one thread.
    pub mb_per_s: f64,
    /// Bytes a backup would store: chunks found neither in the previous generation (when given)
    /// nor earlier in the data itself.
    pub new_bytes: u64,
    /// `new_bytes` compressed with zstd level 1 in 64 KiB frames, as a backup would store them.
    pub new_stored_bytes: u64,
    /// Chunks a backup would add (each costs an index entry).
    pub new_chunks: u64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct LevelResult {
    pub level: i32,
    /// Compression, MB/s of input, on one thread.
    pub mb_per_s: f64,
    /// Stored / raw.
    pub ratio: f64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct TuneReport {
    pub chunking: Vec<ChunkingResult>,
    pub levels: Vec<LevelResult>,
    pub recommended: Setting,
    pub recommended_level: i32,
    pub reason: String,
}

pub fn default_settings() -> Vec<Setting> {
    let mut out = Vec::new();
    for (min, avg, max) in [
        (1u32, 4u32, 16u32),
        (2, 8, 32),
        (4, 16, 64),
        (16, 64, 256),
        (64, 256, 1024),
    ] {
        for pages in [true, false] {
            out.push(Setting {
                min: min << 10,
                avg: avg << 10,
                max: max << 10,
                sqlite_pages: pages,
            });
        }
    }
    out
}

/// Regular files below `paths`, with their SQLite page size (0 if not a database).
fn files(paths: &[PathBuf]) -> Result<Vec<(PathBuf, u32)>> {
    let walked = walk_sources(paths, std::path::Path::new("/nonexistent-strata-repo"))?;
    let mut out = Vec::new();
    for item in walked.items {
        if item.kind != EntryKind::File {
            continue;
        }
        let f = File::open(&item.abs).ctx("open", &item.abs)?;
        let mut header = [0u8; 100];
        let n = f.read_at(&mut header, 0).unwrap_or(0);
        out.push((item.abs, sqlite_page_size(&header[..n]).unwrap_or(0)));
    }
    Ok(out)
}

/// Calls `f` with every chunk of the files under `setting`.
fn for_each_chunk(
    files: &[(PathBuf, u32)],
    setting: &Setting,
    f: &mut dyn FnMut(&[u8]),
) -> Result<()> {
    let chunker = Chunker::new(
        ChunkerParams {
            min: setting.min,
            avg: setting.avg,
            max: setting.max,
        },
        0,
    )?;
    for (path, page) in files {
        let mode = if setting.sqlite_pages && *page > 0 {
            CutMode::Fixed(*page)
        } else {
            CutMode::Cdc
        };
        let file = File::open(path).ctx("open", path)?;
        let mut stream = ChunkStream::new(&file, &chunker, mode);
        while let Some((_, bytes, lens)) = stream.next_batch().ctx("read", path)? {
            let mut at = 0;
            for len in lens {
                f(&bytes[at..at + len]);
                at += len;
            }
        }
    }
    Ok(())
}

/// Measures every setting on `paths`; `previous` is an older generation of the same data.
pub fn tune(paths: &[PathBuf], previous: &[PathBuf], settings: &[Setting]) -> Result<TuneReport> {
    let current = files(paths)?;
    let older = files(previous)?;
    warm_page_cache(&current, &older)?;
    let mut chunking = Vec::new();
    for setting in settings {
        chunking.push(measure_chunking(&current, &older, setting)?);
    }
    let levels = measure_levels(&level_sample(&current)?)?;
    let best = cheapest(&chunking);
    let recommended = best
        .map(|r| r.setting.clone())
        .unwrap_or_else(|| default_settings()[2].clone());
    let reason = reason(best, &chunking, previous.is_empty());
    Ok(TuneReport {
        recommended_level: recommended_level(&levels),
        chunking,
        levels,
        recommended,
        reason,
    })
}

/// Reads every file once, so the first setting does not pay for a cold page cache.
fn warm_page_cache(current: &[(PathBuf, u32)], older: &[(PathBuf, u32)]) -> Result<()> {
    for (path, _) in current.iter().chain(older) {
        let mut f = File::open(path).ctx("open", path)?;
        std::io::copy(&mut f, &mut std::io::sink()).ctx("read", path)?;
    }
    Ok(())
}

/// What a backup of `current` would store under `setting`, after one of `older`.
fn measure_chunking(
    current: &[(PathBuf, u32)],
    older: &[(PathBuf, u32)],
    setting: &Setting,
) -> Result<ChunkingResult> {
    let mut known: HashSet<ChunkId> = HashSet::new();
    for_each_chunk(older, setting, &mut |c| {
        known.insert(ChunkId::hash(None, c));
    })?;
    let (mut bytes, mut chunks, mut new_bytes, mut new_stored) = (0u64, 0u64, 0u64, 0u64);
    let mut new_chunks = 0u64;
    let mut frame: Vec<u8> = Vec::new();
    let mut compress_time = 0.0;
    let started = Instant::now();
    for_each_chunk(current, setting, &mut |c| {
        bytes += c.len() as u64;
        chunks += 1;
        let id = ChunkId::hash(None, c);
        if known.insert(id) {
            new_bytes += c.len() as u64;
            new_chunks += 1;
            frame.extend_from_slice(c);
            if frame.len() >= 64 << 10 {
                let t = Instant::now();
                new_stored += crate::compress::compress(&frame, 1)
                    .map(|(_, z)| z.len())
                    .unwrap_or(frame.len()) as u64;
                compress_time += t.elapsed().as_secs_f64();
                frame.clear();
            }
        }
    })?;
    if !frame.is_empty() {
        new_stored += crate::compress::compress(&frame, 1)
            .map(|(_, z)| z.len())
            .unwrap_or(frame.len()) as u64;
    }
    let secs = (started.elapsed().as_secs_f64() - compress_time).max(1e-9);
    Ok(ChunkingResult {
        setting: setting.clone(),
        bytes,
        chunks,
        mb_per_s: bytes as f64 / secs / 1e6,
        new_bytes,
        new_stored_bytes: new_stored,
        new_chunks,
    })
}

/// Up to 64 MiB of the data, cut with the strata default, for trying zstd levels on.
fn level_sample(current: &[(PathBuf, u32)]) -> Result<Vec<u8>> {
    let mut sample: Vec<u8> = Vec::new();
    for_each_chunk(
        current,
        &Setting {
            min: 2 << 10,
            avg: 8 << 10,
            max: 32 << 10,
            sqlite_pages: true,
        },
        &mut |c| {
            if sample.len() < 64 << 20 {
                sample.extend_from_slice(c);
            }
        },
    )?;
    Ok(sample)
}

/// Speed and ratio of several zstd levels on `sample`, in 64 KiB frames.
fn measure_levels(sample: &[u8]) -> Result<Vec<LevelResult>> {
    let mut levels = Vec::new();
    for level in [-3, -1, 1, 3, 6] {
        let started = Instant::now();
        let mut stored = 0u64;
        for frame in sample.chunks(64 << 10) {
            stored += crate::compress::compress(frame, level)?.1.len() as u64;
        }
        levels.push(LevelResult {
            level,
            mb_per_s: sample.len() as f64 / started.elapsed().as_secs_f64().max(1e-9) / 1e6,
            ratio: if sample.is_empty() {
                1.0
            } else {
                stored as f64 / sample.len() as f64
            },
        });
    }
    Ok(levels)
}

/// The cheapest setting to keep: fewest stored new bytes, counting the index entry each new
/// chunk costs (~260 bytes in the redb index, measured on W1), among settings at least half as
/// fast as the fastest.
fn cheapest(chunking: &[ChunkingResult]) -> Option<&ChunkingResult> {
    let fastest = chunking.iter().map(|r| r.mb_per_s).fold(0.0, f64::max);
    let cost = |r: &ChunkingResult| r.new_stored_bytes + INDEX_BYTES_PER_CHUNK * r.new_chunks;
    chunking
        .iter()
        .filter(|r| r.mb_per_s >= fastest / 2.0)
        .min_by_key(|r| cost(r))
        .or_else(|| chunking.first())
}

/// The fastest level within 2% of the best ratio that compresses at 200 MB/s or more.
fn recommended_level(levels: &[LevelResult]) -> i32 {
    let usable: Vec<&LevelResult> = levels.iter().filter(|l| l.mb_per_s >= 200.0).collect();
    let best_ratio = usable.iter().map(|l| l.ratio).fold(f64::INFINITY, f64::min);
    usable
        .iter()
        .filter(|l| l.ratio <= best_ratio * 1.02)
        .max_by(|a, b| a.mb_per_s.total_cmp(&b.mb_per_s))
        .map(|l| l.level)
        .unwrap_or(1)
}

/// Why `best` is recommended, against the default setting.
fn reason(best: Option<&ChunkingResult>, chunking: &[ChunkingResult], first: bool) -> String {
    let what = if first {
        "a first backup"
    } else {
        "a backup of the change"
    };
    let default = chunking
        .iter()
        .find(|r| r.setting.avg == 8 << 10 && r.setting.sqlite_pages);
    match (best, default) {
        (Some(b), Some(d)) => format!(
            "{what} would store {:.1} MiB in {} new chunks with {}, against {:.1} MiB in {} \
             with the default {}; smaller chunks find more duplicates but cost more index \
             entries and time per byte",
            b.new_stored_bytes as f64 / 1048576.0,
            b.new_chunks,
            b.setting.init_flags(),
            d.new_stored_bytes as f64 / 1048576.0,
            d.new_chunks,
            d.setting.init_flags()
        ),
        _ => format!("{what}: no data measured"),
    }
}

//! Throughput of each pipeline stage and of backup/restore end to end, in bytes per second.
//!
//!     cargo bench --bench throughput
//!     STRATA_BENCH_INDEX_MAX=10000000 cargo bench --bench throughput -- index   # up to 10^7 entries
//!     STRATA_BENCH_DATA=W1/app.db cargo bench --bench throughput -- stages      # stages on a real file
//!
//! The data is half text-like (compressible) and half noise, like an application database, or
//! for the stages the first 256 MiB of the file `STRATA_BENCH_DATA` names.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use strata::backup::{BackupOptions, backup};
use strata::chunker::{ChunkStream, Chunker, ChunkerParams, CutMode};
use strata::id::ChunkId;
use strata::repo::{Config, Repo};

fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn mixed(len: usize) -> Vec<u8> {
    let words: [&[u8]; 6] = [
        b"user ",
        b"assistant ",
        b"memory ",
        b"the ",
        b"vector ",
        b"\n",
    ];
    let n = noise(len, 7);
    let mut out = Vec::with_capacity(len);
    let mut i = 0;
    while out.len() < len / 2 {
        out.extend_from_slice(words[n[i] as usize % words.len()]);
        i += 1;
    }
    out.extend_from_slice(&n[..len - out.len()]);
    out
}

/// The data the stages run on: `STRATA_BENCH_DATA`'s first 256 MiB, else 32 MiB of [`mixed`].
fn stage_data() -> Vec<u8> {
    let Some(path) = std::env::var_os("STRATA_BENCH_DATA") else {
        return mixed(32 << 20);
    };
    use std::io::Read;
    let mut data = Vec::new();
    std::fs::File::open(&path)
        .and_then(|f| f.take(256 << 20).read_to_end(&mut data))
        .unwrap_or_else(|e| panic!("STRATA_BENCH_DATA {}: {e}", path.display()));
    data
}

fn stages(c: &mut Criterion) {
    let data = stage_data();
    let mut g = c.benchmark_group("stages");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.sample_size(10);

    let chunker = Chunker::new(ChunkerParams::default(), 0).unwrap();
    for (name, mode) in [
        ("fastcdc 2k/8k/32k", CutMode::Cdc),
        ("page-aligned cut 4 KiB", CutMode::Fixed(4096)),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut s = ChunkStream::new(&data[..], &chunker, mode);
                let mut n = 0;
                while let Some((_, _, lens)) = s.next_batch().unwrap() {
                    n += lens.len();
                }
                black_box(n)
            })
        });
    }
    g.bench_function("blake3 per 4 KiB chunk", |b| {
        b.iter(|| {
            for c in data.chunks(4096) {
                black_box(ChunkId::hash(None, c));
            }
        })
    });
    for level in [-3, 1, 3] {
        g.bench_with_input(
            BenchmarkId::new("zstd per 8 KiB chunk", level),
            &level,
            |b, &level| {
                b.iter(|| {
                    let mut out = 0;
                    for c in data.chunks(8192) {
                        out += strata::compress::compress(c, level).unwrap().1.len();
                    }
                    black_box(out)
                })
            },
        );
    }
    // What the pipeline does: runs of new chunks compressed together in 64 KiB frames.
    for level in [1, 3] {
        g.bench_with_input(
            BenchmarkId::new("zstd per 64 KiB frame", level),
            &level,
            |b, &level| {
                b.iter(|| {
                    let mut out = 0;
                    for c in data.chunks(64 << 10) {
                        out += strata::compress::compress(c, level).unwrap().1.len();
                    }
                    black_box(out)
                })
            },
        );
    }
    // The CPU a backup cannot avoid for each new 64 KiB of a database: BLAKE3 of its 4 KiB pages
    // (their ids), zstd at the default level, and the check that decodes the frame and rehashes
    // every page before it may be written. Per core: a backup of N bytes of new pages on C cores
    // needs at least N / (C x this) seconds.
    g.bench_function("new frame: page ids + zstd 1 + check", |b| {
        b.iter(|| {
            let mut out = 0;
            for frame in data.chunks(64 << 10) {
                let members: Vec<(ChunkId, usize)> = frame
                    .chunks(4096)
                    .map(|p| (ChunkId::hash(None, p), p.len()))
                    .collect();
                let (compression, stored) = strata::compress::compress(frame, 1).unwrap();
                strata::compress::check_frame(&stored, compression, frame.len(), &members, None)
                    .unwrap();
                out += stored.len();
            }
            black_box(out)
        })
    });
    // Packs: frames appended to a pack streamed to disk, fsynced and renamed into place.
    use strata::storage::Backend;
    let dir = tempfile::tempdir().unwrap();
    let backend = strata::storage::LocalBackend::new(dir.path());
    let frame = &data[..64 << 10];
    g.bench_function("pack write to disk (16 MiB packs)", |b| {
        b.iter(|| {
            let mut packs = 0;
            for part in data.chunks(16 << 20) {
                let mut w =
                    strata::pack::PackWriter::to_sink(backend.create("packs").unwrap()).unwrap();
                for (i, f) in part.chunks(frame.len()).enumerate() {
                    let id = ChunkId::hash(None, &(i as u64).to_le_bytes());
                    w.add(
                        strata::pack::BlobKind::Data,
                        id,
                        strata::compress::Compression::None,
                        f,
                        f.len() as u32,
                    )
                    .unwrap();
                }
                let (id, object, _, _) = w.finish().unwrap();
                object
                    .commit(&strata::index::pack_object_name(&id))
                    .unwrap();
                packs += 1;
            }
            black_box(packs)
        })
    });
    g.finish();
}

/// Blob index lookups and inserts at different index sizes (entries per second).
/// Inserts blob locations in id order in one committed transaction, as a backup does.
fn insert_sorted(index: &strata::index::Index, mut batch: Vec<(ChunkId, strata::index::BlobLoc)>) {
    batch.sort_unstable_by_key(|(k, _)| *k);
    let txn = index.write().unwrap();
    {
        let mut t = txn.open_table(strata::index::BLOBS).unwrap();
        for (k, v) in &batch {
            t.insert(k.as_bytes(), &v.encode()).unwrap();
        }
    }
    txn.commit().unwrap();
}

fn index(c: &mut Criterion) {
    use strata::index::{BlobLoc, Index, IndexReader};
    let mut g = c.benchmark_group("index");
    g.sample_size(10);
    let sizes: Vec<u64> = match std::env::var("STRATA_BENCH_INDEX_MAX") {
        Ok(v) => {
            let max: u64 = v.parse().unwrap();
            [10_000u64, 100_000, 1_000_000, 10_000_000]
                .into_iter()
                .filter(|&n| n <= max)
                .collect()
        }
        Err(_) => vec![10_000, 100_000, 1_000_000],
    };
    let loc = |i: u64| BlobLoc {
        pack: (i / 4000) as u32,
        frame_offset: (i % 4000) as u32 * 4096,
        frame_stored_len: 4096,
        frame_raw_len: 4096,
        offset_in_frame: 0,
        raw_len: 4096,
        kind: strata::pack::BlobKind::Data,
        compression: strata::compress::Compression::None,
    };
    let id = |i: u64| ChunkId::hash(None, &i.to_le_bytes());
    for &n in &sizes {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open_write(&dir.path().join("index.redb")).unwrap();
        // Filled in sorted batches of 100,000, as backups insert them.
        let mut next = 0u64;
        while next < n {
            let end = (next + 100_000).min(n);
            insert_sorted(&index, (next..end).map(|i| (id(i), loc(i))).collect());
            next = end;
        }
        g.throughput(Throughput::Elements(10_000));
        let rtxn = index.read().unwrap();
        let reader = IndexReader::new(&rtxn).unwrap();
        g.bench_with_input(BenchmarkId::new("lookup 10k present", n), &n, |b, &n| {
            b.iter(|| {
                let mut found = 0;
                for i in 0..10_000u64 {
                    found += reader.contains(&id(i * 7919 % n)).unwrap() as u32;
                }
                black_box(found)
            })
        });
        g.bench_with_input(BenchmarkId::new("lookup 10k absent", n), &n, |b, _| {
            b.iter(|| {
                let mut found = 0;
                for i in 0..10_000u64 {
                    found += reader.contains(&id(u64::MAX - i)).unwrap() as u32;
                }
                black_box(found)
            })
        });
        drop(reader);
        drop(rtxn);
        let mut round = 0u64;
        g.bench_with_input(BenchmarkId::new("insert 10k + commit", n), &n, |b, _| {
            b.iter(|| {
                round += 1;
                insert_sorted(
                    &index,
                    (0..10_000u64)
                        .map(|i| (id(u64::MAX / 2 + round * 10_000 + i), loc(i)))
                        .collect(),
                );
            })
        });
    }
    g.finish();
}

fn options(src: &std::path::Path) -> BackupOptions<'static> {
    BackupOptions::new(vec![src.to_path_buf()])
}

fn end_to_end(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let data = mixed(256 << 20);
    std::fs::write(src.join("data.bin"), &data).unwrap();
    let mut g = c.benchmark_group("end_to_end");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.sample_size(10);
    drop(data);

    g.bench_function("backup 256 MiB (new repository)", |b| {
        b.iter_with_setup(
            || {
                let repo = dir.path().join("bench-repo");
                let _ = std::fs::remove_dir_all(&repo);
                Repo::init(&repo, Config::new(ChunkerParams::default(), 1).unwrap()).unwrap()
            },
            |repo| black_box(backup(&repo, &options(&src)).unwrap().id),
        )
    });

    let repo_path = dir.path().join("restore-repo");
    let repo = Repo::init(
        &repo_path,
        Config::new(ChunkerParams::default(), 1).unwrap(),
    )
    .unwrap();
    let report = backup(&repo, &options(&src)).unwrap();
    g.bench_function("restore 256 MiB", |b| {
        b.iter(|| {
            let target = dir.path().join("restored");
            let _ = std::fs::remove_dir_all(&target);
            let r = strata::restore::restore(
                &repo,
                &report.manifest,
                &strata::restore::RestoreOptions::new(target),
            )
            .unwrap();
            black_box(r.bytes)
        })
    });
    g.finish();
}

criterion_group!(benches, stages, index, end_to_end);
criterion_main!(benches);

//! Throughput of each pipeline stage and of backup/restore end to end, in bytes per second.
//!
//!     cargo bench --bench throughput
//!
//! The data is half text-like (compressible) and half noise, like an application database.

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

fn stages(c: &mut Criterion) {
    let data = mixed(32 << 20);
    let mut g = c.benchmark_group("stages");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.sample_size(10);

    let chunker = Chunker::new(ChunkerParams::default(), 0).unwrap();
    g.bench_function("fastcdc 2k/8k/32k", |b| {
        b.iter(|| {
            let mut s = ChunkStream::new(&data[..], &chunker, CutMode::Cdc);
            let mut n = 0;
            while let Some((_, _, lens)) = s.next_batch().unwrap() {
                n += lens.len();
            }
            black_box(n)
        })
    });
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
                &strata::restore::RestoreOptions {
                    target,
                    paths: vec![],
                },
            )
            .unwrap();
            black_box(r.bytes)
        })
    });
    g.finish();
}

criterion_group!(benches, stages, end_to_end);
criterion_main!(benches);

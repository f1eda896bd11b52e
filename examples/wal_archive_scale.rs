//! How the number of archived WAL files affects the commands that see every snapshot: archives
//! N small WAL files (one snapshot each) and times `strata list`, `strata backup` of a small
//! directory, `strata gc` and one more `pg archive-wal`, with the binary given as the first
//! argument, at each N given after it.
//!
//! `cargo run --release --example wal_archive_scale -- target/release/strata 0 1000 5000`

use std::process::Command;
use std::time::{Duration, Instant};
use strata::pg::archive::archive;
use strata::{Config, Repo, chunker::ChunkerParams};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let bin = args
        .first()
        .ok_or("usage: wal_archive_scale STRATA_BIN N...")?;
    let tmp = tempfile::tempdir()?;
    let root = tmp.path().join("repo");
    let app = tmp.path().join("app");
    std::fs::create_dir_all(&app)?;
    for i in 0..20u64 {
        std::fs::write(app.join(format!("f{i}")), seeded(64 << 10, i))?;
    }
    let repo = Repo::init(&root, Config::new(ChunkerParams::default(), 1)?)?;
    drop(repo);
    let seg = tmp.path().join("seg");
    let mut have = 0usize;
    let mut segment_no = 1u64;
    let run = |a: &[&str]| -> Result<Duration, Box<dyn std::error::Error>> {
        let start = Instant::now();
        let out = Command::new(bin)
            .arg("--repo")
            .arg(&root)
            .args(a)
            .output()?;
        if !out.status.success() {
            return Err(format!("{a:?}: {}", String::from_utf8_lossy(&out.stderr)).into());
        }
        Ok(start.elapsed())
    };
    println!(
        "archived  archive-wal(ms)  restore-wal missing(ms)  list(ms)  backup(ms)  gc(ms)  gc again(ms)  \
         library archive(ms/file)"
    );
    for n in args[1..].iter().map(|s| s.parse::<usize>()) {
        let n = n?;
        let repo = Repo::open(&root, true, "scale")?;
        let start = Instant::now();
        let added = n.saturating_sub(have);
        while have < n {
            std::fs::write(&seg, seeded(8 << 10, 1000 + segment_no))?;
            archive(&repo, &seg, &format!("{:024X}", segment_no))?;
            segment_no += 1;
            have += 1;
        }
        let per_file = start.elapsed().as_secs_f64() * 1000.0 / added.max(1) as f64;
        drop(repo);
        std::fs::write(&seg, seeded(8 << 10, 1000 + segment_no))?;
        let name = format!("{:024X}", segment_no);
        segment_no += 1;
        have += 1;
        let archive_ms = run(&["pg", "archive-wal", seg.to_str().unwrap(), &name])?;
        let missing = {
            let start = Instant::now();
            let out = Command::new(bin)
                .arg("--repo")
                .arg(&root)
                .args(["pg", "restore-wal", "00000009.history"])
                .arg(tmp.path().join("absent"))
                .output()?;
            if out.status.success() {
                return Err("restore-wal of a missing file succeeded".into());
            }
            start.elapsed()
        };
        let list = run(&["list"])?;
        std::fs::write(app.join("changing"), seeded(4096, n as u64))?;
        let backup = run(&["backup", app.to_str().unwrap()])?;
        // The first gc counts the references of the files archived since the last; the
        // second is what a gc with nothing new costs.
        let gc = run(&["gc"])?;
        let gc_again = run(&["gc"])?;
        println!(
            "{have:>8}  {:>15.0}  {:>24.0}  {:>8.0}  {:>10.0}  {:>6.0}  {:>12.0}  {per_file:>10.1}",
            ms(archive_ms),
            ms(missing),
            ms(list),
            ms(backup),
            ms(gc),
            ms(gc_again)
        );
    }
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Deterministic pseudo-random bytes.
fn seeded(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

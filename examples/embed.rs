//! Snapshots from inside a program: create a repository, snapshot a directory twice (the second
//! costs almost nothing), list the snapshots and restore the first one.
//!
//!     cargo run --example embed [DIR]
//!
//! Without DIR it snapshots a small directory it makes itself. Everything goes to a temporary
//! directory that is removed at the end.

use std::path::PathBuf;
use strata::backup::{BackupOptions, backup};
use strata::chunker::ChunkerParams;
use strata::restore::{RestoreOptions, restore};
use strata::{Config, Repo, snapshots};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let work = std::env::temp_dir().join(format!("strata-embed-{}", std::process::id()));
    let source = match std::env::args_os().nth(1) {
        Some(dir) => PathBuf::from(dir),
        None => {
            let dir = work.join("app-state");
            std::fs::create_dir_all(&dir)?;
            std::fs::write(
                dir.join("memory.jsonl"),
                "{\"role\":\"user\",\"text\":\"hi\"}\n",
            )?;
            dir
        }
    };

    let repo = Repo::init(
        &work.join("repo"),
        Config::new(ChunkerParams::default(), 1)?,
    )?;
    let mut opts = BackupOptions::new(vec![source.clone()]);
    opts.name = Some("first".into());
    let first = backup(&repo, &opts)?;
    opts.name = Some("second".into());
    let second = backup(&repo, &opts)?;
    println!(
        "snapshot {}: {} files, {} bytes stored; snapshot {}: {} bytes stored",
        first.id.short(),
        first.manifest.stats.files,
        first.manifest.stats.new_stored_bytes,
        second.id.short(),
        second.manifest.stats.new_stored_bytes
    );

    let all = snapshots::list(&repo)?;
    let snap = snapshots::resolve(&all, "first")?;
    let target = work.join("restored");
    let report = restore(&repo, &snap.manifest, &RestoreOptions::new(target.clone()))?;
    println!(
        "restored {} files ({} bytes) into {}",
        report.files,
        report.bytes,
        target.display()
    );
    drop(repo);
    std::fs::remove_dir_all(&work)?;
    Ok(())
}

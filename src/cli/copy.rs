//! `strata copy`: replicate snapshots into another repository, sending only missing data.

use super::output::{bytes, print_json};
use anyhow::{Context, Result};
use clap::Args;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use strata::repo::Repo;
use strata::snapshots;

#[derive(Args)]
pub struct CopyArgs {
    /// Repository to copy from (its passphrase: STRATA_FROM_PASSWORD or
    /// STRATA_FROM_PASSWORD_FILE, else the destination's)
    #[arg(long)]
    from: PathBuf,
    /// Repository to copy into (its passphrase: STRATA_PASSWORD or --password-file)
    #[arg(long)]
    to: PathBuf,
    /// Snapshots to copy (id prefix, name or `latest`); all of them if none is named
    snaps: Vec<String>,
    #[arg(long)]
    json: bool,
}

/// The source's passphrase, if given apart from the destination's.
fn from_passphrase() -> Result<Option<String>> {
    if let Some(file) = std::env::var_os("STRATA_FROM_PASSWORD_FILE") {
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("reading {}", Path::new(&file).display()))?;
        return Ok(Some(text.trim_end_matches(['\n', '\r']).to_string()));
    }
    Ok(std::env::var("STRATA_FROM_PASSWORD").ok())
}

/// Opens the repository snapshots come from: read-only, with its own passphrase if one is
/// given for it.
pub fn open_source(path: &Path, write: bool, command: &str) -> Result<Repo> {
    let backend = strata::repo::backend_for(path)?;
    let config = strata::repo::load_config(backend.as_ref(), path)
        .with_context(|| format!("opening repository {}", path.display()))?;
    let repo = match from_passphrase()? {
        Some(pass) if config.key_scheme == strata::crypto::SCHEME => {
            Repo::open_with_passphrase(path, write, command, &pass)
        }
        _ => Repo::open(path, write, command),
    };
    repo.with_context(|| format!("opening repository {}", path.display()))
}

pub fn copy(args: CopyArgs) -> Result<ExitCode> {
    let src = open_source(&args.from, false, "copy")?;
    let dst = Repo::open(&args.to, true, "copy")
        .with_context(|| format!("opening repository {}", args.to.display()))?;
    let snaps = snapshots::list(&src)?;
    let ids: Vec<_> = if args.snaps.is_empty() {
        snaps.iter().map(|s| s.id).collect()
    } else {
        let mut chosen = Vec::new();
        for spec in &args.snaps {
            chosen.push(snapshots::resolve(&snaps, spec)?);
        }
        chosen.sort_by_key(|s| (s.manifest.time_ns, s.id));
        chosen.dedup_by_key(|s| s.id);
        chosen.iter().map(|s| s.id).collect()
    };
    let started = std::time::Instant::now();
    let report = strata::copy::copy(&src, &dst, &ids).context("copy failed")?;
    if args.json {
        print_json(&report)?;
    } else {
        println!(
            "copied {} snapshot(s) ({} already there): {} blobs, {} read, {} written in {} pack(s), {:.2} s",
            report.copied.len(),
            report.already_there,
            report.blobs_copied,
            bytes(report.bytes_copied),
            bytes(report.pack_bytes),
            report.packs_written,
            started.elapsed().as_secs_f64()
        );
    }
    Ok(ExitCode::SUCCESS)
}

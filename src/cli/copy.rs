//! `strata copy`: replicate snapshots into another repository, sending only missing data.

use super::RepoPath;
use super::output::{bytes, print_json};
use anyhow::{Context, Result};
use clap::Args;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use strata::repo::{Key, OpenOptions, Repo};
use strata::snapshots;

#[derive(Args)]
#[command(
    after_help = "Examples:\n  strata copy --from /backups/app --to s3://bucket/app\n  strata copy --from /backups/app --to /mnt/usb/app latest"
)]
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
    /// Print the result as JSON on standard output (for scripts)
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
/// given for it, else the one of the command line.
pub fn open_source(path: &Path, rp: &RepoPath, write: bool, command: &str) -> Result<Repo> {
    let from = from_passphrase()?;
    let ask = || rp.passphrase();
    let key = match &from {
        Some(pass) => Key::Passphrase(pass),
        None => Key::Ask(&ask),
    };
    OpenOptions::new(command)
        .write(write)
        .key(key)
        .open(path)
        .with_context(|| format!("opening repository {}", path.display()))
}

pub fn copy(rp: &RepoPath, args: CopyArgs) -> Result<ExitCode> {
    let src = open_source(&args.from, rp, false, "copy")?;
    let to = RepoPath {
        path: args.to.clone(),
        is_default: false,
        password_file: rp.password_file.clone(),
        retry_lock: rp.retry_lock,
    };
    let dst = super::open(&to, true, "copy")?;
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
    // A bar of snapshots copied, with the bytes written so far.
    let bar = super::output::byte_bar(args.json).inspect(|b| {
        b.set_length(ids.len() as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} {pos}/{len} snapshots, {msg} written [{wide_bar}] {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
    });
    let written = std::cell::Cell::new(0u64);
    let tick = |n: u64| {
        written.set(written.get() + n);
        if let Some(b) = &bar {
            b.set_message(super::output::bytes(written.get()));
            b.inc(1);
        }
    };
    let report = strata::copy::copy_with(&src, &dst, &ids, Some(&tick)).context("copy failed");
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    let report = report?;
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

//! `strata repair index`.

use super::RepoPath;
use super::output::print_json;
use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use std::process::ExitCode;

#[derive(Args)]
#[command(after_help = "Examples:\n  strata repair index --dry-run\n  strata repair index")]
pub struct RepairArgs {
    #[command(subcommand)]
    what: RepairWhat,
}

#[derive(Subcommand)]
enum RepairWhat {
    /// Rebuild index.redb from the pack trailers and snapshot manifest files
    Index {
        /// Only report what would be rebuilt
        #[arg(long)]
        dry_run: bool,
        /// Print the result as JSON on standard output (for scripts)
        #[arg(long)]
        json: bool,
    },
}

pub fn repair(rp: &RepoPath, args: RepairArgs) -> Result<ExitCode> {
    let RepairWhat::Index { dry_run, json } = args.what;
    let ask = || rp.passphrase();
    let report = strata::repair::rebuild_index(&rp.path, dry_run, &strata::repo::Key::Ask(&ask))
        .with_context(|| format!("repairing the index of {}", rp.path.display()))?;
    if json {
        print_json(&report)?;
    } else {
        for d in &report.damaged {
            eprintln!("skipped: {d}");
        }
        if report.missing_blobs > 0 {
            eprintln!(
                "{} references from snapshots point at chunks no pack holds; `strata verify` \
                 names the files that cannot be restored",
                report.missing_blobs
            );
        }
        println!(
            "{} {} packs ({} blobs, {} duplicates) and {} snapshots{}",
            if dry_run { "would index" } else { "indexed" },
            report.packs,
            report.blobs,
            report.duplicate_blobs,
            report.snapshots,
            if dry_run {
                ""
            } else {
                "; run `strata verify` to check every snapshot"
            }
        );
    }
    if !report.lost.is_empty() {
        // What those files held is not (all) in the index: a script must not take this for a
        // clean repair.
        eprintln!(
            "strata: {} damaged file(s) could not be used in full ({}); what they held is not \
             in the rebuilt index",
            report.lost.len(),
            report.lost.join(", ")
        );
        return Ok(ExitCode::from(super::EXIT_DAMAGE));
    }
    Ok(ExitCode::SUCCESS)
}

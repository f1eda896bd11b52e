//! `strata tune`.

use super::output::{bytes, print_json};
use anyhow::Result;
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args)]
#[command(
    after_help = "Examples:\n  strata tune ~/app\n  strata tune ~/app --previous /backups/app-yesterday"
)]
pub struct TuneArgs {
    /// Data to measure (as it is now)
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// An older copy of the same data (repeatable): measures what a backup of the change costs
    #[arg(long)]
    previous: Vec<PathBuf>,
    /// Print the result as JSON on standard output (for scripts)
    #[arg(long)]
    json: bool,
}

pub fn tune(args: TuneArgs) -> Result<ExitCode> {
    let report = strata::tune::tune(
        &args.paths,
        &args.previous,
        &strata::tune::default_settings(),
    )?;
    if args.json {
        print_json(&report)?;
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<22} {:>6} {:>10} {:>12} {:>10} {:>12} {:>14}",
        "chunking", "pages", "chunks", "avg chunk", "MB/s", "new raw", "new stored"
    );
    for r in &report.chunking {
        let s = &r.setting;
        println!(
            "{:<22} {:>6} {:>10} {:>12} {:>10.0} {:>12} {:>14}",
            format!("{}k/{}k/{}k", s.min >> 10, s.avg >> 10, s.max >> 10),
            if s.sqlite_pages { "yes" } else { "no" },
            r.chunks,
            bytes(r.bytes / r.chunks.max(1)),
            r.mb_per_s,
            bytes(r.new_bytes),
            bytes(r.new_stored_bytes)
        );
    }
    println!();
    println!("{:<10} {:>10} {:>8}", "zstd level", "MB/s", "ratio");
    for l in &report.levels {
        println!("{:<10} {:>10.0} {:>8.3}", l.level, l.mb_per_s, l.ratio);
    }
    println!();
    println!(
        "recommended: strata init {} --zstd-level {}",
        report.recommended.init_flags(),
        report.recommended_level
    );
    println!("why: {}", report.reason);
    Ok(ExitCode::SUCCESS)
}

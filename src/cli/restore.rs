//! `strata restore` and `strata verify`.

use super::EXIT_DAMAGE;
use super::output::{bytes, print_json};
use anyhow::{Result, bail};
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;
use strata::repo::Repo;
use strata::restore::RestoreOptions;
use strata::snapshots;

#[derive(Args)]
pub struct RestoreArgs {
    /// Snapshot: id prefix, name or `latest` (omit with --at)
    snap: Option<String>,
    /// Directory to restore into (omit with --to-stdout)
    target: Option<PathBuf>,
    /// The newest snapshot at or before this time ("2026-11-20 14:00" or RFC 3339)
    #[arg(long)]
    at: Option<String>,
    /// Restore only this path of the snapshot (repeatable), e.g. data/app.db
    #[arg(long = "path")]
    paths: Vec<String>,
    /// Write the selected files' bytes to standard output
    #[arg(long)]
    to_stdout: bool,
    /// Run `PRAGMA integrity_check` on every restored SQLite database and report it
    #[arg(long)]
    check_sqlite: bool,
    #[arg(long)]
    json: bool,
}

pub fn restore(repo: &Repo, args: RestoreArgs) -> Result<ExitCode> {
    let snaps = snapshots::list(repo)?;
    // With --at, the one positional argument is the target.
    let (snap, target) = match (&args.at, args.snap, args.target) {
        (Some(t), first, None) => (
            snapshots::at_time(&snaps, snapshots::parse_time(t)?)?,
            first.map(PathBuf::from),
        ),
        (Some(_), _, Some(_)) => bail!("give either SNAP or --at, not both"),
        (None, Some(s), target) => (snapshots::resolve(&snaps, &s)?, target),
        (None, None, _) => {
            bail!("which snapshot? give SNAP (an id prefix, a name, `latest`) or --at TIME")
        }
    };
    if args.to_stdout {
        if target.is_some() {
            bail!("--to-stdout takes no TARGET");
        }
        let mut out = std::io::stdout().lock();
        strata::restore::restore_to_writer(repo, &snap.manifest, &args.paths, &mut out)?;
        return Ok(ExitCode::SUCCESS);
    }
    let Some(target) = target else {
        bail!("where to? give a TARGET directory (or --to-stdout)");
    };
    let started = std::time::Instant::now();
    let report = strata::restore::restore(
        repo,
        &snap.manifest,
        &RestoreOptions {
            target: target.clone(),
            paths: args.paths.clone(),
        },
    )?;
    // Databases: integrity of each restored image, when asked.
    let mut checks: Vec<(String, std::result::Result<(), String>)> = Vec::new();
    if args.check_sqlite {
        for db in &report.databases {
            let verdict = match strata::sqlite::integrity_check(db) {
                Ok(v) => v,
                Err(e) => Err(e.to_string()),
            };
            checks.push((db.display().to_string(), verdict));
        }
    }
    let bad_checks = checks.iter().filter(|(_, v)| v.is_err()).count();
    if args.json {
        #[derive(serde::Serialize)]
        struct Check<'a> {
            database: &'a str,
            ok: bool,
            problems: Option<&'a str>,
        }
        #[derive(serde::Serialize)]
        struct Out<'a> {
            snapshot: String,
            target: String,
            files: u64,
            dirs: u64,
            symlinks: u64,
            bytes: u64,
            errors: &'a [String],
            integrity: Vec<Check<'a>>,
        }
        print_json(&Out {
            snapshot: snap.id.to_hex(),
            target: target.display().to_string(),
            files: report.files,
            dirs: report.dirs,
            symlinks: report.symlinks,
            bytes: report.bytes,
            errors: &report.errors,
            integrity: checks
                .iter()
                .map(|(d, v)| Check {
                    database: d,
                    ok: v.is_ok(),
                    problems: v.as_ref().err().map(|s| s.as_str()),
                })
                .collect(),
        })?;
    } else {
        for e in &report.errors {
            eprintln!("not restored: {e}");
        }
        println!(
            "restored snapshot {} into {}: {} files, {} dirs, {} symlinks, {} in {:.2} s",
            snap.id.short(),
            target.display(),
            report.files,
            report.dirs,
            report.symlinks,
            bytes(report.bytes),
            started.elapsed().as_secs_f64()
        );
        for (db, v) in &checks {
            match v {
                Ok(()) => println!("{db}: integrity_check ok"),
                Err(problems) => println!("{db}: integrity_check FAILED: {problems}"),
            }
        }
    }
    if bad_checks > 0 {
        eprintln!("strata: {bad_checks} restored database(s) failed their integrity check");
        return Ok(ExitCode::from(EXIT_DAMAGE));
    }
    if !report.errors.is_empty() {
        eprintln!(
            "strata: {} file(s) could not be restored",
            report.errors.len()
        );
        return Ok(ExitCode::from(EXIT_DAMAGE));
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Args)]
pub struct VerifyArgs {
    /// Read every pack and check every chunk against its hash
    #[arg(long)]
    read_data: bool,
    #[arg(long)]
    json: bool,
}

pub fn verify(repo: &Repo, args: VerifyArgs) -> Result<ExitCode> {
    let report = strata::verify::verify(repo, args.read_data)?;
    if args.json {
        print_json(&report)?;
    } else {
        for p in &report.problems {
            let mut where_ = String::new();
            if let Some(s) = &p.snapshot {
                where_.push_str(&format!("snapshot {s}: "));
            }
            if let Some(path) = &p.path {
                where_.push_str(&format!("{path}: "));
            }
            println!("damaged: {where_}{}", p.message);
        }
        for n in &report.notes {
            println!("note: {n}");
        }
        if report.unreferenced_blobs > 0 {
            println!(
                "{} stored chunks ({}) are referenced by no snapshot; `strata gc` reclaims them",
                report.unreferenced_blobs,
                bytes(report.unreferenced_bytes)
            );
        }
        println!(
            "checked {} snapshots, {} files, {} packs{}: {}",
            report.snapshots,
            report.files,
            report.packs,
            if args.read_data {
                format!(
                    ", {} chunks ({} read)",
                    report.blobs_read,
                    bytes(report.bytes_read)
                )
            } else {
                String::new()
            },
            if report.ok() {
                "no problems found".to_string()
            } else {
                format!("{} problems", report.problems.len())
            }
        );
    }
    Ok(if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_DAMAGE)
    })
}

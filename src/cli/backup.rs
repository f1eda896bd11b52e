//! `strata init` and `strata backup`.

use super::output::{bytes, print_json};
use super::{EXIT_PARTIAL, RepoPath, create_default, open};
use anyhow::{Context, Result, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use strata::backup::{BackupOptions, StreamFrom, StreamSource, backup as run_backup};
use strata::chunker::ChunkerParams;
use strata::repo::{Config, Repo};

pub const DEFAULT_ZSTD_LEVEL: i32 = 1;

#[derive(Args)]
pub struct InitArgs {
    /// Smallest chunk (e.g. 2k, 2KiB, 2048)
    #[arg(long, value_parser = parse_size)]
    chunk_min: Option<u32>,
    /// Average chunk size, a power of two
    #[arg(long, value_parser = parse_size)]
    chunk_avg: Option<u32>,
    /// Largest chunk
    #[arg(long, value_parser = parse_size)]
    chunk_max: Option<u32>,
    /// zstd compression level (negative levels are faster)
    #[arg(long, default_value_t = DEFAULT_ZSTD_LEVEL, allow_negative_numbers = true)]
    zstd_level: i32,
    /// Cut SQLite files like any other file instead of at page boundaries
    #[arg(long)]
    no_sqlite_pages: bool,
}

/// Parses sizes such as `4096`, `16k`, `16KiB`, `1m`.
pub fn parse_size(s: &str) -> Result<u32, String> {
    let t = s.trim().to_ascii_lowercase();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("not a size: {s:?}"))?;
    let mult: u64 = match unit.trim() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        _ => return Err(format!("unknown size unit in {s:?} (use k or m)")),
    };
    u32::try_from(n * mult).map_err(|_| format!("size too large: {s:?}"))
}

pub fn init(rp: &RepoPath, args: InitArgs) -> Result<ExitCode> {
    let d = ChunkerParams::default();
    let params = ChunkerParams {
        min: args.chunk_min.unwrap_or(d.min),
        avg: args.chunk_avg.unwrap_or(d.avg),
        max: args.chunk_max.unwrap_or(d.max),
    };
    let mut config = Config::new(params, args.zstd_level)?;
    config.sqlite_pages = !args.no_sqlite_pages;
    Repo::init(&rp.path, config)
        .with_context(|| format!("creating repository {}", rp.path.display()))?;
    println!(
        "created repository {} (chunks {}/{}/{} bytes, zstd level {})",
        rp.path.display(),
        params.min,
        params.avg,
        params.max,
        args.zstd_level
    );
    Ok(ExitCode::SUCCESS)
}

#[derive(Args)]
pub struct BackupArgs {
    /// Files and directories to snapshot (one snapshot holds them all)
    #[arg(required_unless_present_any = ["from_command", "stdin"])]
    paths: Vec<PathBuf>,
    /// Also store the standard output of a shell command as NAME, e.g.
    /// `--from-command 'pg_dump mydb'=mydb.sql`; the snapshot fails if the command does
    /// (repeatable)
    #[arg(long = "from-command", value_name = "'CMD'=NAME")]
    from_command: Vec<String>,
    /// Also store standard input as NAME
    #[arg(long, value_name = "NAME")]
    stdin: Option<String>,
    /// A name to find the snapshot by
    #[arg(long)]
    name: Option<String>,
    /// Tags (repeatable)
    #[arg(long = "tag")]
    tags: Vec<String>,
    /// Kind of snapshot, used by retention policies
    #[arg(long, default_value = "manual", value_parser = ["manual", "hourly", "daily", "weekly", "monthly", "restore-point"])]
    kind: String,
    /// Leave out paths matching this pattern (repeatable): `*.tmp` matches names anywhere,
    /// `logs/*.gz` paths below a source, `**` any depth
    #[arg(long = "exclude")]
    excludes: Vec<String>,
    /// Copy SQLite databases as plain files (with their -wal/-shm/-journal files) instead of
    /// reading a consistent image through SQLite
    #[arg(long)]
    raw_sqlite: bool,
    /// Machine-readable output
    #[arg(long)]
    json: bool,
}

#[derive(serde::Serialize)]
struct BackupJson<'a> {
    id: String,
    time: String,
    partial: bool,
    stats: &'a strata::manifest::SnapshotStats,
    warnings: &'a [String],
    errors: &'a [String],
    /// Wall milliseconds per phase, in order.
    phases: Vec<PhaseJson>,
}

#[derive(serde::Serialize)]
struct PhaseJson {
    phase: &'static str,
    ms: f64,
}

pub fn backup(rp: &RepoPath, args: BackupArgs) -> Result<ExitCode> {
    for p in &args.paths {
        if std::fs::symlink_metadata(p).is_err() {
            bail!("{}: no such file or directory", p.display());
        }
    }
    let mut streams = Vec::new();
    for spec in &args.from_command {
        match spec.rsplit_once('=') {
            Some((cmd, name)) if !cmd.trim().is_empty() && !name.is_empty() => {
                streams.push(StreamSource {
                    name: name.to_string(),
                    from: StreamFrom::Command(cmd.to_string()),
                })
            }
            _ => bail!("--from-command {spec:?}: expected 'COMMAND'=NAME"),
        }
    }
    if let Some(name) = &args.stdin {
        streams.push(StreamSource {
            name: name.clone(),
            from: StreamFrom::Stdin,
        });
    }
    let repo = if rp.is_default && !rp.path.join(strata::repo::CONFIG_NAME).exists() {
        let repo = create_default(rp)?;
        eprintln!("created repository {}", rp.path.display());
        repo
    } else {
        open(rp, true, "backup")?
    };
    let bar = if std::io::stderr().is_terminal() && !args.json {
        let b = ProgressBar::new(0);
        b.set_style(
            ProgressStyle::with_template(
                "{spinner} {bytes}/{total_bytes} {bytes_per_sec} [{wide_bar}] {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        Some(b)
    } else {
        None
    };
    let progress = |n: u64| {
        if let Some(b) = &bar {
            b.inc(n);
        }
    };
    let plan = |total: u64| {
        if let Some(b) = &bar {
            b.set_length(total);
        }
    };
    let opts = BackupOptions {
        sources: args.paths.clone(),
        name: args.name.clone(),
        tags: args.tags.clone(),
        kind: args.kind.clone(),
        excludes: args.excludes.clone(),
        progress: Some(&progress),
        on_plan: Some(&plan),
        raw_sqlite: args.raw_sqlite,
        streams,
    };
    let report = run_backup(&repo, &opts).context("backup failed; nothing was recorded")?;
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    let m = &report.manifest;
    let s = &m.stats;
    if args.json {
        print_json(&BackupJson {
            id: report.id.to_hex(),
            time: m.time().to_rfc3339(),
            partial: report.partial(),
            stats: s,
            warnings: &report.warnings,
            errors: &m.errors,
            phases: report
                .phases_ms
                .iter()
                .map(|&(phase, ms)| PhaseJson { phase, ms })
                .collect(),
        })?;
    } else {
        for w in &report.warnings {
            eprintln!("warning: {w}");
        }
        let dedup = if s.bytes_read > 0 {
            100.0 * (1.0 - s.new_raw_bytes as f64 / s.bytes_read as f64)
        } else {
            100.0
        };
        println!(
            "snapshot {} saved{}: {} files, {} total, {} read, {} new ({} stored), {:.1}% of read bytes deduplicated, {:.2} s",
            report.id.short(),
            if report.partial() { " (PARTIAL)" } else { "" },
            s.files,
            bytes(s.bytes),
            bytes(s.bytes_read),
            bytes(s.new_raw_bytes),
            bytes(s.new_stored_bytes),
            dedup,
            s.duration_ms as f64 / 1000.0
        );
    }
    if report.partial() {
        eprintln!(
            "strata: {} path(s) could not be read; the snapshot is partial",
            m.errors.len()
        );
        return Ok(ExitCode::from(EXIT_PARTIAL));
    }
    Ok(ExitCode::SUCCESS)
}

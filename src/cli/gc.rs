//! `strata forget`, `delete` and `gc`.

use super::output::{bytes, print_json};
use anyhow::{Result, bail};
use clap::Args;
use std::process::ExitCode;
use strata::gc::{GcOptions, GcReport, gc, remove_snapshots};
use strata::repo::Repo;
use strata::retention::{Candidate, Policy, decide, parse_duration};
use strata::snapshots;

#[derive(Args)]
pub struct ForgetArgs {
    /// Snapshots to remove whatever the policy says (id prefix, name or `latest`)
    snaps: Vec<String>,
    /// Keep the N newest snapshots
    #[arg(long)]
    keep_last: Option<usize>,
    /// Keep the newest snapshot of each of the last N hours that have one
    #[arg(long)]
    keep_hourly: Option<usize>,
    /// ... of each of the last N days
    #[arg(long)]
    keep_daily: Option<usize>,
    /// ... of each of the last N ISO weeks
    #[arg(long)]
    keep_weekly: Option<usize>,
    /// ... of each of the last N months
    #[arg(long)]
    keep_monthly: Option<usize>,
    /// ... of each of the last N years
    #[arg(long)]
    keep_yearly: Option<usize>,
    /// Keep every snapshot newer than this (e.g. 7d, 12h, 2w, 1d12h)
    #[arg(long)]
    keep_within: Option<String>,
    /// Keep snapshots with this tag (repeatable)
    #[arg(long = "keep-tag")]
    keep_tags: Vec<String>,
    /// Apply the policy only to snapshots of this kind
    #[arg(long)]
    kind: Option<String>,
    /// Show what would be removed; change nothing
    #[arg(long)]
    dry_run: bool,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct DeleteArgs {
    /// Snapshots to remove (id prefix, name or `latest`)
    #[arg(required = true)]
    snaps: Vec<String>,
}

#[derive(Args)]
pub struct GcArgs {
    /// Show the plan; change nothing
    #[arg(long)]
    dry_run: bool,
    /// Rewrite packs with more unused space than this (e.g. 10%, or 0.1)
    #[arg(long, default_value = "10%")]
    max_unused: String,
    #[arg(long)]
    json: bool,
}

#[derive(serde::Serialize)]
struct DecisionJson {
    id: String,
    time: String,
    kind: String,
    keep: bool,
    reasons: Vec<String>,
}

pub fn forget(repo: &Repo, args: ForgetArgs) -> Result<ExitCode> {
    let keep_within_ns = match &args.keep_within {
        Some(s) => match parse_duration(s) {
            Some(ns) => Some(ns),
            None => bail!("--keep-within {s:?}: expected a duration such as 7d, 12h, 2w or 1d12h"),
        },
        None => None,
    };
    let policy = Policy {
        keep_last: args.keep_last,
        keep_hourly: args.keep_hourly,
        keep_daily: args.keep_daily,
        keep_weekly: args.keep_weekly,
        keep_monthly: args.keep_monthly,
        keep_yearly: args.keep_yearly,
        keep_within_ns,
        keep_tags: args.keep_tags.clone(),
    };
    if policy.is_empty() && args.snaps.is_empty() {
        bail!("nothing to forget: name snapshots or give a policy such as --keep-last 24");
    }
    let snaps = snapshots::list(repo)?;
    let mut named = Vec::new();
    for spec in &args.snaps {
        named.push(snapshots::resolve(&snaps, spec)?.id);
    }
    let candidates: Vec<Candidate> = snaps
        .iter()
        .map(|s| Candidate {
            id: s.id,
            time_ns: s.manifest.time_ns,
            kind: s.manifest.kind.clone(),
            tags: s.manifest.tags.clone(),
        })
        .collect();
    let now = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(i64::MAX);
    let mut decisions = if policy.is_empty() {
        // Only named snapshots go; the rest stay without a policy reason.
        candidates
            .iter()
            .rev()
            .map(|c| strata::retention::Decision {
                id: c.id,
                time_ns: c.time_ns,
                kind: c.kind.clone(),
                keep: true,
                reasons: vec!["not named".into()],
            })
            .collect()
    } else {
        decide(
            &candidates,
            &policy,
            args.kind.as_deref(),
            now,
            &chrono::Local,
        )
    };
    for d in &mut decisions {
        if named.contains(&d.id) {
            d.keep = false;
            d.reasons = vec!["named".into()];
        }
    }
    let remove: Vec<_> = decisions.iter().filter(|d| !d.keep).map(|d| d.id).collect();
    if !args.dry_run {
        remove_snapshots(repo, &remove)?;
    }
    if args.json {
        let out: Vec<DecisionJson> = decisions
            .iter()
            .map(|d| DecisionJson {
                id: d.id.to_hex(),
                time: chrono::DateTime::from_timestamp_nanos(d.time_ns)
                    .with_timezone(&chrono::Local)
                    .to_rfc3339(),
                kind: d.kind.clone(),
                keep: d.keep,
                reasons: d.reasons.clone(),
            })
            .collect();
        print_json(&out)?;
    } else {
        for d in &decisions {
            let time = chrono::DateTime::from_timestamp_nanos(d.time_ns)
                .with_timezone(&chrono::Local)
                .format("%Y-%m-%d %H:%M:%S");
            let what = if d.keep { "keep  " } else { "remove" };
            let why = if d.keep {
                d.reasons.join(", ")
            } else if d.reasons.is_empty() {
                "no rule keeps it".into()
            } else {
                d.reasons.join(", ")
            };
            println!("{what} {} {time} {:<13} {why}", d.id.short(), d.kind);
        }
        let verb = if args.dry_run {
            "would remove"
        } else {
            "removed"
        };
        println!(
            "{verb} {} of {} snapshots; run `strata gc` to reclaim their space",
            remove.len(),
            decisions.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn delete(repo: &Repo, args: DeleteArgs) -> Result<ExitCode> {
    let snaps = snapshots::list(repo)?;
    let mut ids = Vec::new();
    for spec in &args.snaps {
        ids.push(snapshots::resolve(&snaps, spec)?.id);
    }
    ids.dedup();
    remove_snapshots(repo, &ids)?;
    for id in &ids {
        println!("removed snapshot {}", id.short());
    }
    println!("run `strata gc` to reclaim their space");
    Ok(ExitCode::SUCCESS)
}

/// "10%" or "0.1" as a fraction.
fn parse_fraction(s: &str) -> Option<f64> {
    let v = match s.strip_suffix('%') {
        Some(p) => p.trim().parse::<f64>().ok()? / 100.0,
        None => s.trim().parse::<f64>().ok()?,
    };
    (0.0..=1.0).contains(&v).then_some(v)
}

pub fn run_gc(repo: &Repo, args: GcArgs) -> Result<ExitCode> {
    let Some(max_unused) = parse_fraction(&args.max_unused) else {
        bail!(
            "--max-unused {:?}: expected a share such as 10% or 0.1",
            args.max_unused
        );
    };
    let report: GcReport = gc(
        repo,
        &GcOptions {
            dry_run: args.dry_run,
            max_unused,
        },
    )?;
    if args.json {
        print_json(&report)?;
    } else {
        let r = &report;
        let verb = if r.dry_run { "would " } else { "" };
        println!(
            "{} snapshots, {} live and {} unreferenced blobs in {} packs",
            r.snapshots, r.live_blobs, r.dead_blobs, r.packs_before
        );
        println!(
            "{verb}delete {} packs, {verb}rewrite {} packs into {}, {verb}delete {} unknown pack files",
            r.packs_deleted,
            r.packs_rewritten,
            if r.dry_run {
                "new ones".to_string()
            } else {
                r.packs_written.to_string()
            },
            r.unknown_pack_files
        );
        println!(
            "packs: {} -> {} ({verb}reclaim {})",
            bytes(r.bytes_before),
            bytes(r.bytes_after),
            bytes(r.bytes_reclaimed)
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    #[test]
    fn fractions() {
        assert_eq!(super::parse_fraction("10%"), Some(0.1));
        assert_eq!(super::parse_fraction("0.25"), Some(0.25));
        assert_eq!(super::parse_fraction("0"), Some(0.0));
        assert_eq!(super::parse_fraction("150%"), None);
        assert_eq!(super::parse_fraction("x"), None);
    }
}

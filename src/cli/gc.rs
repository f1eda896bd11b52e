//! `strata forget`, `delete` and `gc`.

use super::output::{bytes, print_json};
use anyhow::{Context, Result, bail};
use clap::Args;
use std::collections::HashSet;
use std::process::ExitCode;
use strata::gc::{GcPlan, GcReport, forecast, remove_snapshots};
use strata::repo::Repo;
use strata::retention::{
    Candidate, Decision, Forget, PROTECTED_KINDS, Policy, Rules, Settings, decide_forget,
    parse_duration,
};
use strata::snapshots;

#[derive(Args)]
#[command(
    after_help = "Examples:\n  strata forget --kind hourly --keep-last 24\n  strata forget --keep-daily 7 --keep-weekly 4 --dry-run\n  strata forget --kind restore-point --keep-last 5\n  strata forget 1a2b3c4d"
)]
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
    /// Apply the policy only to snapshots of this kind (restore points only follow a policy
    /// given for their kind; manual snapshots are only removed by name)
    #[arg(long)]
    kind: Option<String>,
    /// Apply the policy (and --max-snapshots) only to snapshots with this tag, e.g. `job=app`;
    /// the others are kept
    #[arg(long = "tag", value_name = "TAG")]
    scope_tag: Option<String>,
    /// Keep at most N snapshots (of kinds that are not protected); the oldest go first
    #[arg(long)]
    max_snapshots: Option<usize>,
    /// Show what would be removed; change nothing
    #[arg(long)]
    dry_run: bool,
    /// Print the result as JSON on standard output (for scripts)
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
#[command(after_help = "Examples:\n  strata delete 1a2b3c4d\n  strata delete nightly")]
pub struct DeleteArgs {
    /// Snapshots to remove (id prefix, name or `latest`)
    #[arg(required = true)]
    snaps: Vec<String>,
}

#[derive(Args)]
#[command(after_help = "Examples:\n  strata gc --dry-run\n  strata gc\n  strata gc --max-unused 0")]
pub struct GcArgs {
    /// Show the plan; change nothing
    #[arg(long)]
    dry_run: bool,
    /// Rewrite packs with more unused space than this (e.g. 10%, or 0.1)
    #[arg(long, default_value = "10%")]
    max_unused: String,
    /// Print the result as JSON on standard output (for scripts)
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
#[command(
    after_help = "Examples:\n  strata config show\n  strata config set retention.hourly keep-last=24\n  strata config set max-snapshots 500\n  strata config check strata.toml"
)]
pub struct ConfigArgs {
    #[command(subcommand)]
    action: ConfigAction,
}

#[derive(clap::Subcommand)]
enum ConfigAction {
    /// Show the repository's settings
    Show {
        /// Print the result as JSON on standard output (for scripts)
        #[arg(long)]
        json: bool,
    },
    /// Set `retention.KIND RULES` (e.g. `retention.daily keep-within=7d`) or `max-snapshots N`
    Set { key: String, value: String },
    /// Remove a retention setting
    Unset { key: String },
    /// Check a `strata serve` configuration file (errors name the line)
    Check { file: std::path::PathBuf },
}

impl ConfigArgs {
    /// Whether the command changes the repository (and so needs the lock).
    pub fn writes(&self) -> bool {
        !matches!(self.action, ConfigAction::Show { .. })
    }

    /// The file `config check` names (which needs no repository).
    pub fn check_file(&self) -> Option<&std::path::Path> {
        match &self.action {
            ConfigAction::Check { file } => Some(file),
            _ => None,
        }
    }
}

/// Kinds a stored policy can govern.
const POLICY_KINDS: [&str; 4] = ["hourly", "daily", "weekly", "monthly"];

pub fn config(repo: &Repo, args: ConfigArgs) -> Result<ExitCode> {
    let mut settings = Settings::load(repo.backend.as_ref(), repo.keys())?;
    match args.action {
        ConfigAction::Show { json } => {
            if json {
                #[derive(serde::Serialize)]
                struct Out<'a> {
                    repository: &'a strata::repo::Config,
                    retention: &'a Settings,
                }
                print_json(&Out {
                    repository: &repo.config,
                    retention: &settings,
                })?;
            } else {
                let c = &repo.config;
                println!(
                    "chunks: {}/{}/{} bytes (min/avg/max){}, zstd level {}, packs of {}",
                    c.chunker.min,
                    c.chunker.avg,
                    c.chunker.max,
                    if c.sqlite_pages {
                        ", SQLite files cut at pages"
                    } else {
                        ""
                    },
                    c.zstd_level,
                    bytes(c.pack_target)
                );
                if settings.is_empty() {
                    println!("retention: none stored (`strata forget` needs rules or snapshots)");
                }
                for (kind, p) in &settings.policies {
                    println!("retention.{kind}: {}", describe(p));
                }
                if let Some(n) = settings.max_snapshots {
                    println!("max-snapshots: {n}");
                }
                for k in PROTECTED_KINDS {
                    match k {
                        snapshots::PG_WAL | snapshots::PG_POINT => println!(
                            "{k} snapshots: kept until deleted, or until they lie before the \
                             oldest base backup's start"
                        ),
                        _ => println!("{k} snapshots: kept until deleted"),
                    }
                }
            }
            return Ok(ExitCode::SUCCESS);
        }
        ConfigAction::Set { key, value } => match key.as_str() {
            "max-snapshots" => match value.parse::<usize>() {
                Ok(n) if n > 0 => settings.max_snapshots = Some(n),
                _ => bail!("max-snapshots: expected a positive count, got {value:?}"),
            },
            _ => {
                let kind = policy_kind(&key)?;
                settings.policies.insert(kind, Policy::parse(&value)?);
            }
        },
        ConfigAction::Check { file } => return super::serve::check_config(&file),
        ConfigAction::Unset { key } => {
            if key == "max-snapshots" {
                settings.max_snapshots = None;
            } else {
                let kind = policy_kind(&key)?;
                if settings.policies.remove(&kind).is_none() {
                    bail!("{key} is not set");
                }
            }
        }
    }
    settings.store(repo.backend.as_ref(), repo.keys())?;
    println!("saved; `strata forget` without rules now applies it (try --dry-run)");
    Ok(ExitCode::SUCCESS)
}

fn policy_kind(key: &str) -> Result<String> {
    match key.strip_prefix("retention.") {
        Some(k) if POLICY_KINDS.contains(&k) => Ok(k.to_string()),
        Some(k) if PROTECTED_KINDS.contains(&k) => {
            bail!("{k} snapshots are kept until deleted; no policy applies to them")
        }
        _ => bail!(
            "unknown setting {key:?}: use retention.hourly, retention.daily, retention.weekly, \
             retention.monthly or max-snapshots"
        ),
    }
}

fn describe(p: &Policy) -> String {
    let mut parts = Vec::new();
    for (name, v) in p.counts() {
        if let Some(n) = v {
            parts.push(format!("{name}={n}"));
        }
    }
    if let Some(ns) = p.keep_within_ns {
        parts.push(format!("keep-within={}s", ns / 1_000_000_000));
    }
    for t in &p.keep_tags {
        parts.push(format!("keep-tag={t}"));
    }
    parts.join(",")
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
    let policy = given_policy(&args)?;
    let settings = Settings::load(repo.backend.as_ref(), repo.keys())?;
    let use_settings = policy.is_empty() && args.max_snapshots.is_none() && args.snaps.is_empty();
    if use_settings && settings.is_empty() {
        bail!(
            "nothing to forget: name snapshots, give a policy such as --keep-last 24, or store \
             one with `strata config set retention.hourly keep-last=24`"
        );
    }
    if use_settings && args.scope_tag.is_some() {
        bail!("--tag limits a policy given on the command line; give one, such as --keep-last 24");
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
    let rules = if use_settings {
        Rules::Stored(&settings)
    } else if policy.is_empty() {
        Rules::NamedOnly
    } else {
        Rules::Given {
            policy: &policy,
            kind: args.kind.as_deref(),
        }
    };
    let request = Forget {
        rules,
        scope_tag: args.scope_tag.as_deref(),
        max_snapshots: args.max_snapshots,
        named: &named,
    };
    let now = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(i64::MAX);
    let mut decisions = decide_forget(&candidates, &request, now, &chrono::Local);
    let wal = with_unneeded_wal(&snaps, &mut decisions)?;
    let remove: Vec<_> = decisions.iter().filter(|d| !d.keep).map(|d| d.id).collect();
    if !args.dry_run {
        remove_snapshots(repo, &remove)?;
    }
    if args.json {
        print_decisions_json(&decisions)?;
    } else {
        print_decisions(&decisions, remove.len(), args.dry_run);
        for line in wal.describe(if args.dry_run {
            "would remove"
        } else {
            "removed"
        }) {
            println!("{line}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Adds to what `decisions` remove the archived WAL files and restore point records that no
/// base backup left after them needs (see `strata::pg::retain`): a policy never removes those
/// kinds itself, so this rule is the only one that does.
fn with_unneeded_wal(
    snaps: &[snapshots::Snapshot],
    decisions: &mut [Decision],
) -> Result<strata::pg::retain::Reclaimable> {
    let removing: HashSet<_> = decisions.iter().filter(|d| !d.keep).map(|d| d.id).collect();
    let found = strata::pg::retain::ArchiveView::of(snaps)
        .context("cannot tell which archived WAL files the base backups need")?
        .reclaimable(&removing);
    let start = found.start_segment().unwrap_or_default();
    let gone: HashSet<_> = found.ids().collect();
    for d in decisions.iter_mut().filter(|d| gone.contains(&d.id)) {
        d.keep = false;
        d.reasons = vec![format!("before the oldest base backup (start {start})")];
    }
    Ok(found)
}

/// The policy the command line gives (empty when it gives none).
fn given_policy(args: &ForgetArgs) -> Result<Policy> {
    let keep_within_ns = match &args.keep_within {
        Some(s) => match parse_duration(s) {
            Some(ns) => Some(ns),
            None => super::usage!(
                "--keep-within {s:?}: expected a duration such as 7d, 12h, 2w or 1d12h"
            ),
        },
        None => None,
    };
    Ok(Policy {
        keep_last: args.keep_last,
        keep_hourly: args.keep_hourly,
        keep_daily: args.keep_daily,
        keep_weekly: args.keep_weekly,
        keep_monthly: args.keep_monthly,
        keep_yearly: args.keep_yearly,
        keep_within_ns,
        keep_tags: args.keep_tags.clone(),
    })
}

fn print_decisions_json(decisions: &[Decision]) -> Result<()> {
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
    print_json(&out)
}

fn print_decisions(decisions: &[Decision], removed: usize, dry_run: bool) {
    // Archived WAL files and restore point records are summed up after (a busy server archives
    // a file a minute): one line each would bury the snapshots that matter.
    let wal = |k: &str| k == snapshots::PG_WAL || k == snapshots::PG_POINT;
    for d in decisions.iter().filter(|d| !wal(&d.kind)) {
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
    let verb = if dry_run { "would remove" } else { "removed" };
    if removed > 0 {
        println!(
            "{verb} {} of {} snapshots; run `strata gc` to reclaim their space",
            removed,
            decisions.len()
        );
        return;
    }
    let protected = decisions
        .iter()
        .filter(|d| d.reasons.iter().any(|r| r.ends_with("kept until deleted")))
        .count();
    match protected {
        0 => println!(
            "nothing to remove: the rules keep all {} snapshots",
            decisions.len()
        ),
        n => println!(
            "nothing to remove: {n} of {} snapshots are manual ones or restore points, which a \
             policy leaves alone: `strata delete SNAP` removes a snapshot by name, and \
             `strata forget --kind restore-point --keep-last 5` rotates restore points",
            decisions.len()
        ),
    }
}

pub fn delete(repo: &Repo, args: DeleteArgs) -> Result<ExitCode> {
    let snaps = snapshots::list(repo)?;
    let mut ids = Vec::new();
    for spec in &args.snaps {
        ids.push(snapshots::resolve(&snaps, spec)?.id);
    }
    let mut seen = HashSet::new();
    ids.retain(|id| seen.insert(*id));
    let wal = strata::pg::retain::ArchiveView::of(&snaps)
        .context("cannot tell which archived WAL files the base backups need")?
        .reclaimable(&ids.iter().copied().collect());
    let named = ids.len();
    ids.extend(wal.ids());
    remove_snapshots(repo, &ids)?;
    for id in &ids[..named] {
        println!("removed snapshot {}", id.short());
    }
    for line in wal.describe("removed") {
        println!("{line}");
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
        super::usage!(
            "--max-unused {:?}: expected a share such as 10% or 0.1",
            args.max_unused
        );
    };
    let plan = strata::gc::plan(repo, max_unused)?;
    let report: GcReport = if args.dry_run {
        forecast(repo, plan)?
    } else {
        let bar = super::output::byte_bar(args.json);
        if let Some(b) = &bar {
            b.set_length(strata::gc::bytes_to_rewrite(&plan));
        }
        let tick = |n: u64| {
            if let Some(b) = &bar {
                b.inc(n);
            }
        };
        let report = strata::gc::execute_with(repo, plan, Some(&tick))?;
        if let Some(b) = &bar {
            b.finish_and_clear();
        }
        report
    };
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
        if let Some((before, after)) = r.index_compacted {
            println!("index: {} -> {} (compacted)", bytes(before), bytes(after));
        }
        if r.file_entries_dropped > 0 || r.page_sums_removed > 0 {
            println!(
                "{} {} file-cache entries of file versions no snapshot holds, and {} chunk-digest records",
                if r.dry_run { "would drop" } else { "dropped" },
                r.file_entries_dropped,
                r.page_sums_removed
            );
        }
        if r.packs_deferred > 0 {
            println!(
                "kept {} pack files ({}) that {} running reader(s) may still read; the next gc \
                 deletes them",
                r.packs_deferred,
                bytes(r.bytes_deferred),
                r.readers
            );
        }
        if let Some(plan) = &r.plan {
            print_plan(plan);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The plan of a dry run, pack by pack.
fn print_plan(plan: &GcPlan) {
    for p in &plan.packs {
        let what = match p.fate {
            strata::gc::Fate::Delete => "delete ",
            strata::gc::Fate::Rewrite => "rewrite",
            strata::gc::Fate::Trim => "trim   ",
        };
        println!(
            "{what} pack #{} {} ({}): {}",
            p.pack,
            p.name,
            bytes(p.bytes),
            p.reason
        );
    }
    for u in &plan.unknown_packs {
        println!(
            "delete  {} ({}): a pack file the index does not know",
            u.name,
            bytes(u.bytes)
        );
    }
    println!("keep    {} packs as they are", plan.packs_kept);
    if plan.readers > 0 {
        println!(
            "{} reader(s) running now: while any still runs when gc is done, the files it no \
             longer needs stay for the next gc",
            plan.readers
        );
    }
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

//! `strata restore` and `strata verify`.

use super::EXIT_DAMAGE;
use super::output::{bytes, print_json};
use anyhow::{Context, Result, bail};
use clap::Args;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;
use strata::backup::BackupReport;
use strata::hooks::Hooks;
use strata::repo::Repo;
use strata::restore::live::Holder;
use strata::restore::rollback::{self, Rollback};
use strata::restore::{RestoreOptions, RestoreReport, SqliteCheck};
use strata::snapshots;
use strata::verify::ReadData;

#[derive(Args)]
#[command(
    after_help = "Examples:\n  strata restore latest /tmp/restore\n  strata restore latest --path app/app.db --to-original\n  strata restore --at '2026-12-07 14:00' --path app.db /tmp/before\n  strata restore latest --path app.sql --to-stdout | psql -d fresh_db"
)]
pub struct RestoreArgs {
    /// Snapshot: id prefix, name or `latest` (omit with --at)
    snap: Option<String>,
    /// Directory to restore into: a snapshot path P lands at TARGET/P, so `--path app` restores
    /// TARGET/app (omit with --to-stdout or --to-original)
    target: Option<PathBuf>,
    /// The newest snapshot at or before this time ("2026-11-20 14:00" or RFC 3339); with one
    /// --path of a followed database, the database as committed at that instant
    #[arg(long)]
    at: Option<String>,
    /// Restore only this path of the snapshot (repeatable), e.g. data/app.db
    #[arg(long = "path")]
    paths: Vec<String>,
    /// Put the source back where it was backed up from (the snapshot's `app` taken from
    /// /srv/app goes back to /srv/app), instead of into a TARGET; one source at a time
    #[arg(long, conflicts_with = "to_stdout")]
    to_original: bool,
    /// Write the selected files' bytes to standard output
    #[arg(long, conflicts_with_all = ["before", "after"])]
    to_stdout: bool,
    /// Which restored SQLite databases are checked as soon as they are written, and how:
    /// `copied` (`PRAGMA quick_check` of those whose image was copied as plain bytes rather than
    /// read through SQLite, which is one committed state), `quick` (`PRAGMA quick_check` of every
    /// one: every page of every b-tree) or `full` (`PRAGMA integrity_check` of every one: also
    /// every index against its table). A database that does not pass fails the restore with exit
    /// code 3
    #[arg(long, value_enum, value_name = "LEVEL", default_value_t = CheckLevel::Copied)]
    check_sqlite: CheckLevel,
    /// Do not check the restored SQLite databases
    #[arg(long, conflicts_with = "check_sqlite")]
    no_check_sqlite: bool,
    /// Do not snapshot what the restore replaces first (by default a snapshot of kind
    /// restore-point is taken, and used to put the target back if the restore fails)
    #[arg(long)]
    no_restore_point: bool,
    /// Remove what exists below a restored directory but is not in the snapshot (by default it
    /// is kept)
    #[arg(long)]
    delete: bool,
    /// Replace files that other processes hold open (by default the restore refuses, naming
    /// them; a SQLite database an application has open is written in place through SQLite
    /// either way)
    #[arg(long)]
    force: bool,
    /// A shell command to run before the restore changes anything (e.g. one that stops the
    /// application); the restore fails if it fails
    #[arg(long, value_name = "CMD")]
    before: Option<String>,
    /// A shell command to run when the restore ends, whether it succeeded or not (e.g. one
    /// that starts the application again)
    #[arg(long, value_name = "CMD")]
    after: Option<String>,
    /// Seconds a hook may run before it is killed (and counts as failed)
    #[arg(long, value_name = "SECS", default_value_t = Hooks::default().timeout.as_secs())]
    hook_timeout: u64,
    /// Print the result as JSON on standard output (for scripts)
    #[arg(long)]
    json: bool,
}

/// How restored databases are checked (`--check-sqlite`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum CheckLevel {
    Copied,
    Quick,
    Full,
}

impl RestoreArgs {
    /// The target directory, wherever it was given.
    fn target_arg(&self) -> Option<PathBuf> {
        match &self.at {
            Some(_) => self.snap.as_ref().map(PathBuf::from),
            None => self.target.clone(),
        }
    }

    /// Whether this restore may replace existing files and so take a restore point (which
    /// needs the repository lock).
    pub fn may_replace(&self) -> bool {
        !self.to_stdout
            && !self.no_restore_point
            && (self.to_original || self.target_arg().is_some_and(|t| rollback::may_replace(&t)))
    }

    /// The check restored databases get.
    fn check(&self) -> Option<SqliteCheck> {
        match (self.no_check_sqlite, self.check_sqlite) {
            (true, _) => None,
            (false, CheckLevel::Copied) => Some(SqliteCheck::Copied),
            (false, CheckLevel::Quick) => Some(SqliteCheck::Quick),
            (false, CheckLevel::Full) => Some(SqliteCheck::Full),
        }
    }
}

pub fn restore(repo: &Repo, args: RestoreArgs) -> Result<ExitCode> {
    let take_point = args.may_replace();
    let snaps = snapshots::list(repo)?;
    // One followed database to an instant: from its journal, to the transaction.
    if let (Some(t), [path], false, false) = (
        &args.at,
        args.paths.as_slice(),
        args.to_stdout,
        args.to_original,
    ) {
        let at_ns = snapshots::parse_time(t)?;
        if let Some(plan) = strata::restore::instant::plan(repo, &snaps, path, at_ns)? {
            let Some(target) = args.target_arg() else {
                super::usage!("where to? give a TARGET directory");
            };
            return restore_instant(repo, &plan, &target, at_ns, args.json);
        }
    }
    // With --at, the one positional argument is the target.
    let (snap, target) = match (&args.at, &args.snap, &args.target) {
        (Some(t), first, None) => (
            snapshots::at_time(&snaps, snapshots::parse_time(t)?)?,
            first.as_ref().map(PathBuf::from),
        ),
        (Some(_), _, Some(_)) => super::usage!("give either SNAP or --at, not both"),
        (None, Some(s), target) => (snapshots::resolve(&snaps, s)?, target.clone()),
        (None, None, _) => {
            super::usage!("which snapshot? give SNAP (an id prefix, a name, `latest`) or --at TIME")
        }
    };
    if args.to_stdout {
        if target.is_some() {
            super::usage!("--to-stdout takes no TARGET");
        }
        let mut out = std::io::stdout().lock();
        strata::restore::restore_to_writer(repo, &snap.manifest, &args.paths, &mut out)?;
        return Ok(ExitCode::SUCCESS);
    }
    let target = match (args.to_original, target) {
        (true, Some(t)) => super::usage!(
            "--to-original puts the source back where it came from: give no TARGET (got {})",
            t.display()
        ),
        (true, None) => Some(original_parent(&snap.manifest, &args.paths)?),
        (false, t) => t,
    };
    let Some(target) = target else {
        super::usage!("where to? give a TARGET directory (or --to-original, or --to-stdout)");
    };
    let take_point = take_point && (args.to_original || rollback::may_replace(&target));
    let started = std::time::Instant::now();
    let bar = super::output::byte_bar(args.json);
    let progress: Option<strata::restore::Progress> = bar.clone().map(|b| {
        let total: u64 = strata::restore::select(&snap.manifest, &args.paths)
            .map(|entries| entries.iter().map(|e| e.size).sum())
            .unwrap_or(0);
        b.set_length(total);
        std::sync::Arc::new(move |n| b.inc(n)) as strata::restore::Progress
    });
    let opts = RestoreOptions {
        target: target.clone(),
        paths: args.paths.clone(),
        delete: args.delete,
        check: args.check(),
        force: args.force,
        progress,
    };
    let hooks = Hooks {
        before: args.before.clone(),
        after: args.after.clone(),
        timeout: Duration::from_secs(args.hook_timeout),
    };
    let (result, after) = hooks.around(|| restore_guarded(repo, snap, &opts, take_point));
    let (result, point) = match result {
        Ok((report, point)) => (Ok(report), point),
        Err(e) => (Err(e), None),
    };
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    let report = match (result, &after) {
        (Ok(report), _) => report,
        (Err(e), Ok(())) => return Err(e),
        (Err(e), Err(h)) => bail!("{e:#} (and then: {h})"),
    };
    let after_hook_error = after.err().map(|e| e.to_string());
    let stores = restored_stores(&snap.manifest, &target);
    let restored = Restored {
        snapshot: &snap.id,
        target: &target,
        report: &report,
        check: opts.check,
        stores: &stores,
        after_hook_error: after_hook_error.as_deref(),
        landed: top_names(&snap.manifest, &args.paths),
        restore_point: point,
    };
    if args.json {
        print_restored_json(&restored)?;
    } else {
        print_restored(&restored, started);
    }
    let bad_checks = report
        .databases
        .iter()
        .filter(|db| matches!(db.check, Some(Err(_))))
        .count();
    if let Some(e) = &after_hook_error {
        eprintln!("strata: the restore ended, but {e}");
    }
    if bad_checks > 0 {
        eprintln!("strata: {bad_checks} restored database(s) failed their check");
        return Ok(ExitCode::from(EXIT_DAMAGE));
    }
    if !report.errors.is_empty() {
        eprintln!(
            "strata: {} file(s) could not be restored",
            report.errors.len()
        );
        return Ok(ExitCode::from(EXIT_DAMAGE));
    }
    if after_hook_error.is_some() {
        return Ok(ExitCode::from(super::EXIT_ERROR));
    }
    Ok(ExitCode::SUCCESS)
}

/// The restore between the hooks: files other processes hold open are looked for first (a
/// refusal changes nothing and saves no restore point), then what the restore replaces is saved
/// (when `take_point`), then the restore runs, rolled back if it fails.
/// The snapshot's top-level names that `paths` select (all when empty), in order.
fn top_names(manifest: &strata::manifest::Manifest, paths: &[String]) -> Vec<String> {
    let mut names: Vec<String> = strata::restore::select(manifest, paths)
        .unwrap_or_default()
        .iter()
        .map(|e| {
            let p = e.path_lossy();
            p.split('/').next().unwrap_or("").to_string()
        })
        .collect();
    names.dedup();
    names
}

/// Writes a followed database as it was at `at_ns` to TARGET/PATH (a new file: the snapshot's
/// image with the journal's pages over it, checked, then renamed into place).
fn restore_instant(
    repo: &Repo,
    plan: &strata::restore::instant::Plan,
    target: &std::path::Path,
    at_ns: i64,
    json: bool,
) -> Result<ExitCode> {
    use strata::restore::instant::format_ns;
    let dest = target.join(&plan.entry);
    if dest.exists() {
        bail!(
            "{} exists: a restore to an instant writes a new file; choose another TARGET",
            dest.display()
        );
    }
    let dir = dest
        .parent()
        .context("restore target has no directory")?
        .to_path_buf();
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let name = dest
        .file_name()
        .context("restore target has no name")?
        .to_string_lossy()
        .into_owned();
    let tmp = dir.join(format!(".{name}.strata-tmp.{}", std::process::id()));
    let written = (|| -> Result<u64> {
        let size = strata::restore::instant::write(repo, plan, &tmp)?;
        match strata::source::sqlite::check_image(&tmp, false)? {
            Ok(()) => {}
            Err(why) => bail!("the database as of then does not pass quick_check: {why}"),
        }
        std::fs::rename(&tmp, &dest)
            .with_context(|| format!("renaming into {}", dest.display()))?;
        strata::sys::sync_dir(&dir)?;
        Ok(size)
    })();
    let size = match written {
        Ok(s) => s,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    let chain = &plan.chain;
    let last_ns = chain.last_ns.filter(|_| chain.changes.entries > 0);
    if json {
        let v = serde_json::json!({
            "snapshot": plan.snapshot.id.to_string(),
            "path": plan.entry,
            "target": dest,
            "at": format_ns(at_ns),
            "snapshot_image": format_ns(plan.base_ns),
            "transactions": chain.changes.entries,
            "pages": chain.changes.pages.len(),
            "last_transaction": last_ns.map(format_ns),
            "bytes": size,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!(
            "restored {} as it was at {} into {}: snapshot {} (committed at {}) and {} \
             transaction(s) from its journal{}",
            plan.entry,
            format_ns(at_ns),
            dest.display(),
            plan.snapshot.id,
            format_ns(plan.base_ns),
            chain.changes.entries,
            last_ns
                .map(|t| format!(", the last committed at {}", format_ns(t)))
                .unwrap_or_default()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Where `--to-original` restores: the directory that held the one source the selection
/// `paths` falls in (all of the snapshot when empty), so that its name lands where it was.
fn original_parent(manifest: &strata::manifest::Manifest, paths: &[String]) -> Result<PathBuf> {
    let mut names: Vec<String> = match paths.is_empty() {
        true => manifest.sources.iter().map(|s| s.name.clone()).collect(),
        false => paths
            .iter()
            .map(|p| {
                p.trim_matches('/')
                    .split('/')
                    .next()
                    .unwrap_or("")
                    .to_string()
            })
            .collect(),
    };
    names.sort();
    names.dedup();
    let [name] = names.as_slice() else {
        bail!(
            "--to-original restores one source at a time; this selection holds {}: choose one \
             with --path NAME",
            names.join(", ")
        );
    };
    let Some(source) = manifest.sources.iter().find(|s| &s.name == name) else {
        bail!("{name:?} is not one of the snapshot's sources");
    };
    let from = std::path::Path::new(&source.path);
    match (from.is_absolute(), from.parent(), from.file_name()) {
        (true, Some(parent), Some(base)) if base.to_string_lossy() == *name => {
            Ok(parent.to_path_buf())
        }
        (true, Some(_), Some(_)) => bail!(
            "{name} was backed up from {} under another name: restore it into a TARGET \
             instead (it lands at TARGET/{name})",
            source.path
        ),
        _ => bail!(
            "{name} came from {:?}, not a path on this machine: restore it into a TARGET",
            source.path
        ),
    }
}

fn restore_guarded(
    repo: &Repo,
    snap: &snapshots::Snapshot,
    opts: &RestoreOptions,
    take_point: bool,
) -> Result<(RestoreReport, Option<String>)> {
    strata::restore::open_files(&snap.manifest, opts)?;
    let target = &opts.target;
    // Safe restore: what is about to be replaced is saved first.
    let mut point = None;
    if take_point
        && let Some(plan) = rollback::restore_point(&snap.manifest, &snap.id, &opts.paths, target)?
    {
        let saved = plan
            .save(repo)
            .context("saving what the restore would replace (use --no-restore-point to skip)")?;
        eprintln!(
            "restore point {}: what this restore replaces is saved (kind restore-point)",
            saved.id.short()
        );
        point = Some(saved);
    }
    let guarded = strata::restore::restore_with_point(repo, &snap.manifest, opts, point.as_ref());
    if let (Some(rollback), Some(point)) = (&guarded.rollback, &point) {
        print_rollback(rollback, point, target);
    }
    let id = point.map(|p| p.id.to_hex());
    Ok((guarded.result?, id))
}

/// What a restore did, for printing.
struct Restored<'a> {
    snapshot: &'a strata::SnapshotId,
    target: &'a Path,
    report: &'a RestoreReport,
    /// The check the restored databases got.
    check: Option<SqliteCheck>,
    stores: &'a [StoreJson],
    /// The after hook's failure (the restore itself is done).
    after_hook_error: Option<&'a str>,
    /// The snapshot's top-level names the restore selected.
    landed: Vec<String>,
    /// The restore point taken of what the restore replaced, if any.
    restore_point: Option<String>,
}

/// The name of the pragma a check runs.
fn pragma(check: Option<SqliteCheck>) -> &'static str {
    match check {
        Some(SqliteCheck::Full) => "integrity_check",
        _ => "quick_check",
    }
}

/// The report as one JSON object (its fields are part of the command line's interface).
fn print_restored_json(r: &Restored) -> Result<()> {
    let Restored {
        snapshot,
        target,
        report,
        check,
        stores,
        after_hook_error,
        landed: _,
        restore_point,
    } = r;
    #[derive(serde::Serialize)]
    struct Check<'a> {
        database: String,
        ok: bool,
        problems: Option<&'a str>,
    }
    #[derive(serde::Serialize)]
    struct Live<'a> {
        database: String,
        /// The processes that held it open.
        holders: &'a [Holder],
    }
    #[derive(serde::Serialize)]
    struct Out<'a> {
        snapshot: String,
        target: String,
        files: u64,
        dirs: u64,
        symlinks: u64,
        bytes: u64,
        /// Existing directories replaced whole by a staged copy.
        swapped: Vec<String>,
        /// Files kept from those directories (not in the snapshot; without --delete).
        kept: u64,
        errors: &'a [String],
        notes: &'a [String],
        /// The check restored databases got: "quick_check", "integrity_check" or null.
        check: Option<&'static str>,
        integrity: Vec<Check<'a>>,
        /// Databases the default check (`copied`) leaves out: read through SQLite when saved.
        unchecked: Vec<String>,
        /// Databases that applications had open, written in place through SQLite.
        live: Vec<Live<'a>>,
        /// Stores restored (ChromaDB directories, groups), and how to verify each.
        stores: &'a [StoreJson],
        /// The after hook's failure (the restore itself is done).
        after_hook_error: Option<&'a str>,
        /// The snapshot (kind restore-point) of what the restore replaced, if one was taken.
        restore_point: Option<&'a str>,
    }
    let shown = |p: &Path| p.display().to_string();
    print_json(&Out {
        snapshot: snapshot.to_hex(),
        target: target.display().to_string(),
        files: report.files,
        dirs: report.dirs,
        symlinks: report.symlinks,
        bytes: report.bytes,
        swapped: report.swapped.iter().map(|p| shown(p)).collect(),
        kept: report.kept,
        errors: &report.errors,
        notes: &report.notes,
        check: check.map(|c| pragma(Some(c))),
        integrity: report
            .databases
            .iter()
            .filter_map(|db| {
                db.check.as_ref().map(|v| Check {
                    database: shown(&db.path),
                    ok: v.is_ok(),
                    problems: v.as_ref().err().map(|s| s.as_str()),
                })
            })
            .collect(),
        unchecked: match check {
            Some(SqliteCheck::Copied) => report
                .databases
                .iter()
                .filter(|db| db.check.is_none())
                .map(|db| shown(&db.path))
                .collect(),
            _ => vec![],
        },
        live: report
            .databases
            .iter()
            .filter_map(|db| {
                db.live.as_ref().map(|holders| Live {
                    database: shown(&db.path),
                    holders,
                })
            })
            .collect(),
        stores,
        after_hook_error: *after_hook_error,
        restore_point: restore_point.as_deref(),
    })
}

/// The report for a person; `started` is when the restore began.
fn print_restored(r: &Restored, started: std::time::Instant) {
    let Restored {
        snapshot,
        target,
        report,
        check,
        stores,
        after_hook_error: _,
        landed,
        restore_point: _,
    } = r;
    for e in &report.errors {
        eprintln!("not restored: {e}");
    }
    for n in &report.notes {
        eprintln!("note: {n}");
    }
    for d in &report.swapped {
        println!("{}: replaced as a whole by the restored copy", d.display());
    }
    if report.kept > 0 {
        println!(
            "kept {} file(s) the snapshot does not have (--delete removes them)",
            report.kept
        );
    }
    println!(
        "restored snapshot {} into {}: {} files, {} dirs, {} symlinks, {} in {:.2} s",
        snapshot.short(),
        target.display(),
        report.files,
        report.dirs,
        report.symlinks,
        bytes(report.bytes),
        started.elapsed().as_secs_f64()
    );
    // Where the snapshot's top-level names landed (a path P of the snapshot is TARGET/P).
    for name in landed.iter().take(5) {
        println!("  {name} -> {}", target.join(name).display());
    }
    if landed.len() > 5 {
        println!("  and {} more below {}", landed.len() - 5, target.display());
    }
    let pragma = pragma(*check);
    for db in &report.databases {
        let path = db.path.display();
        if let Some(holders) = &db.live {
            let held: Vec<String> = holders.iter().map(|h| h.to_string()).collect();
            println!(
                "{path}: open in {}; written in place through SQLite",
                held.join(", ")
            );
        }
        match &db.check {
            Some(Ok(())) => println!("{path}: {pragma} ok"),
            Some(Err(problems)) => println!("{path}: {pragma} FAILED: {problems}"),
            None if *check == Some(SqliteCheck::Copied) => {
                println!(
                    "{path}: read through SQLite when saved; not checked (--check-sqlite=quick)"
                )
            }
            None => {}
        }
    }
    for st in stores.iter() {
        println!("{}: {}", st.path, st.verify);
    }
}

/// Tells how the target of a failed restore was put back from restore point `point`.
fn print_rollback(rollback: &Rollback, point: &BackupReport, target: &Path) {
    match rollback {
        Rollback::Unchanged => eprintln!(
            "strata: the restore failed before it changed anything; {} is as it was",
            target.display()
        ),
        Rollback::Undone => eprintln!(
            "strata: the restore failed; what it changed in {} is back as it was (restore \
             point {})",
            target.display(),
            point.id.short()
        ),
        Rollback::Partial(problems) => {
            for p in problems {
                eprintln!("not put back: {p}");
            }
            eprintln!(
                "strata: the restore failed and putting the target back failed in part; restore \
                 point {} holds what was there",
                point.id.short()
            );
        }
    }
}

#[derive(serde::Serialize)]
struct StoreJson {
    path: String,
    kind: String,
    consistent: bool,
    /// How to check the restored store.
    verify: String,
}

/// The stores of `m` that this restore wrote below `target`, each with how to verify it.
fn restored_stores(m: &strata::Manifest, target: &std::path::Path) -> Vec<StoreJson> {
    m.captures
        .iter()
        .filter(|c| c.kind != "file")
        .filter_map(|c| {
            let dir = target.join(&c.path);
            dir.is_dir().then(|| {
                let when = if c.consistent {
                    "captured at one instant".to_string()
                } else {
                    format!(
                        "recorded while it kept changing ({}), so it may not open",
                        c.note
                    )
                };
                let how = if c.kind == "chromadb" {
                    format!(
                        "to verify it, open it with chromadb.PersistentClient(path={:?}) and query \
                         a document you know; Chroma replays its log into the vector index on open",
                        dir.display().to_string()
                    )
                } else {
                    "verify it with the application that owns it".to_string()
                };
                StoreJson {
                    path: dir.display().to_string(),
                    kind: c.kind.clone(),
                    consistent: c.consistent,
                    verify: format!("a {} store, {when}; {how}", c.kind),
                }
            })
        })
        .collect()
}

#[derive(Args)]
#[command(
    after_help = "Examples:\n  strata verify\n  strata verify --read-data\n  strata verify --read-data-subset 10%"
)]
pub struct VerifyArgs {
    /// Read every pack and check every chunk against its hash
    #[arg(long)]
    read_data: bool,
    /// Read only part of the packs: `10%` reads a different tenth each day (so a daily run
    /// covers the repository in ten days); `3/10` reads the third tenth
    #[arg(long, value_name = "N% | K/N", conflicts_with = "read_data")]
    read_data_subset: Option<String>,
    /// Print the result as JSON on standard output (for scripts)
    #[arg(long)]
    json: bool,
}

/// `N%` (today's part of 100/N) or `K/N` (1-based) as the packs to read.
fn parse_subset(s: &str, day: u64) -> Option<ReadData> {
    let s = s.trim();
    if let Some(pct) = s.strip_suffix('%') {
        let pct: f64 = pct.trim().parse().ok()?;
        if !(pct > 0.0 && pct <= 100.0) {
            return None;
        }
        let of = (100.0 / pct).round().max(1.0) as u32;
        return Some(ReadData::Part {
            part: (day % of as u64) as u32,
            of,
        });
    }
    let (k, n) = s.split_once('/')?;
    let (k, n): (u32, u32) = (k.trim().parse().ok()?, n.trim().parse().ok()?);
    (n >= 1 && (1..=n).contains(&k)).then(|| ReadData::Part { part: k - 1, of: n })
}

pub fn verify(repo: &Repo, args: VerifyArgs) -> Result<ExitCode> {
    let read = match &args.read_data_subset {
        Some(spec) => {
            let day = chrono::Utc::now().timestamp().max(0) as u64 / 86_400;
            match parse_subset(spec, day) {
                Some(r) => r,
                None => super::usage!(
                    "--read-data-subset {spec:?}: expected a share such as 10% or a part such as 3/10"
                ),
            }
        }
        None if args.read_data => ReadData::All,
        None => ReadData::Nothing,
    };
    let bar = match read {
        ReadData::Nothing => None,
        _ => super::output::byte_bar(args.json),
    };
    if let Some(b) = &bar {
        b.set_length(strata::verify::bytes_to_read(repo, read)?);
    }
    let tick = |n: u64| {
        if let Some(b) = &bar {
            b.inc(n);
        }
    };
    let report = strata::verify::verify_reading_with(repo, read, Some(&tick))?;
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    let read_data = read != ReadData::Nothing;
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
                "{} stored chunks ({}) are referenced by no snapshot: `strata gc` drops them, and \
                 their space comes back as their packs are deleted or rewritten (those more than \
                 --max-unused, 10% by default, unused; `--max-unused 0` for every one)",
                report.unreferenced_blobs,
                bytes(report.unreferenced_bytes)
            );
        }
        println!(
            "checked {} snapshots, {} files, {} packs{}: {}",
            report.snapshots,
            report.files,
            report.packs,
            if read_data {
                let part = match read {
                    ReadData::Part { part, of } => format!(" of part {} of {of}", part + 1),
                    _ => String::new(),
                };
                let journals = match report.journal_records {
                    0 => String::new(),
                    n => format!(", {n} capture journal records"),
                };
                format!(
                    ", {} chunks in {} packs{part}{journals} ({} read)",
                    report.blobs_read,
                    report.packs_read,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subsets() {
        assert_eq!(
            parse_subset("10%", 23),
            Some(ReadData::Part { part: 3, of: 10 })
        );
        assert_eq!(
            parse_subset("100%", 5),
            Some(ReadData::Part { part: 0, of: 1 })
        );
        assert_eq!(
            parse_subset("3/10", 0),
            Some(ReadData::Part { part: 2, of: 10 })
        );
        for bad in ["0%", "150%", "0/10", "11/10", "x", "3/0"] {
            assert_eq!(parse_subset(bad, 0), None, "{bad}");
        }
    }
}

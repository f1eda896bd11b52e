//! `strata pg`: PostgreSQL's WAL archive (`archive-wal` for `archive_command`, `restore-wal`
//! for `restore_command`). See docs/POSTGRES.md.

use super::{RepoPath, open};
use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use strata::pg::archive::{self, Archived};

/// How long `pg restore-point` waits for a lock another strata process holds (a backup, a gc)
/// unless `--retry-lock` says otherwise, before failing.
const ARCHIVE_LOCK_WAIT: Duration = Duration::from_secs(10 * 60);

#[derive(Args)]
#[command(
    after_help = "Examples:\n  strata pg archive-wal --repo /var/lib/strata/repo pg_wal/000000010000000000000001 000000010000000000000001\n  strata pg restore-wal --repo /var/lib/strata/repo 00000002.history pg_wal/RECOVERYHISTORY\n  strata list --kind pg-wal\n\nIn postgresql.conf (see docs/POSTGRES.md):\n  archive_command = 'strata pg archive-wal --repo /var/lib/strata/repo %p %f'\n  restore_command = 'strata pg restore-wal --repo /var/lib/strata/repo %f %p'"
)]
pub struct PgArgs {
    #[command(subcommand)]
    command: PgCommand,
}

#[derive(Subcommand)]
enum PgCommand {
    /// Store a WAL file in the repository (for `archive_command`): exits 0 only once it is
    /// durably stored, or already held with the same bytes
    #[command(
        after_help = "In postgresql.conf:\n  archive_command = 'strata pg archive-wal --repo /var/lib/strata/repo %p %f'"
    )]
    ArchiveWal(ArchiveWalArgs),
    /// Write an archived WAL file to a path (for `restore_command`): exits non-zero, writing
    /// nothing, when the archive does not hold it
    #[command(
        after_help = "In postgresql.conf (or the recovery settings):\n  restore_command = 'strata pg restore-wal --repo /var/lib/strata/repo %f %p'"
    )]
    RestoreWal(RestoreWalArgs),
    /// Name the server's current position in its WAL (`pg_create_restore_point`), a moment a
    /// recovery can later stop at by name (`recovery_target_name`)
    #[command(
        after_help = "Examples:\n  strata pg restore-point --db 'host=/run/postgresql dbname=app' before-migration-42"
    )]
    RestorePoint(RestorePointArgs),
    /// Lay down a data directory that recovers to a moment: the newest base backup before it,
    /// `recovery.signal`, and recovery settings whose `restore_command` fetches the WAL from
    /// this repository; then start the server on it
    #[command(
        after_help = "Examples:\n  strata pg restore --at '2026-12-08 14:03:27' /srv/pg/restored\n  strata pg restore --at 2026-12-08T14:03:27.123456Z /srv/pg/restored\n  strata pg restore --lsn 0/5A000028 /srv/pg/restored\n  strata pg restore --name before-migration-42 --no-archive /tmp/look\n  strata pg restore /srv/pg/restored          (to the end of the archive)\n\nThe files keep their recorded owner; run as the server's user (postgres) or as root."
    )]
    Restore(PgRestoreArgs),
}

#[derive(Args)]
struct PgRestoreArgs {
    /// Recover to this moment (commits at it included): RFC 3339 with fractional seconds
    /// (2026-12-08T14:03:27.123456Z), or a local time as `restore --at` takes it
    /// ('2026-12-08 14:03:27', the end of that second)
    #[arg(long, value_name = "TIME", conflicts_with_all = ["lsn", "name"])]
    at: Option<String>,
    /// Recover to this WAL position (0/5A000028), included
    #[arg(long, value_name = "LSN", conflicts_with = "name")]
    lsn: Option<String>,
    /// Recover to this restore point (`strata pg restore-point NAME`)
    #[arg(long, value_name = "RESTORE_POINT")]
    name: Option<String>,
    /// What the server does at the target: promote (open for writes on a new timeline), pause
    /// (stay read-only, to look before deciding), shutdown
    #[arg(long, value_enum, default_value = "promote")]
    action: ActionArg,
    /// The timeline to follow (recovery_target_timeline): latest (PostgreSQL's default),
    /// current (the base backup's), or a number
    #[arg(long, value_name = "TIMELINE")]
    timeline: Option<String>,
    /// Set archive_mode = off in the copy, so that its new timeline stays out of the archive:
    /// for a copy made to look at the past beside the server that goes on
    #[arg(long)]
    no_archive: bool,
    /// The new data directory (absent or empty)
    target_dir: PathBuf,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ActionArg {
    Promote,
    Pause,
    Shutdown,
}

#[derive(Args)]
struct RestorePointArgs {
    /// How to reach the server: a libpq connection string or postgresql:// URL (psql's own
    /// environment, PGHOST and the rest, when not given)
    #[arg(long, value_name = "CONNSTR")]
    db: Option<String>,
    /// The restore point's name (at most 63 bytes)
    name: String,
}

#[derive(Args)]
struct ArchiveWalArgs {
    /// The file to archive (PostgreSQL's %p, relative to the data directory)
    path: PathBuf,
    /// Its name in the archive (PostgreSQL's %f)
    name: String,
}

#[derive(Args)]
struct RestoreWalArgs {
    /// The archived file's name (PostgreSQL's %f)
    name: String,
    /// Where to write it (PostgreSQL's %p)
    path: PathBuf,
}

pub fn pg(rp: &RepoPath, args: PgArgs) -> Result<ExitCode> {
    match args.command {
        PgCommand::ArchiveWal(a) => archive_wal(rp, a),
        PgCommand::RestoreWal(a) => restore_wal(rp, a),
        PgCommand::RestorePoint(a) => restore_point(rp, a),
        PgCommand::Restore(a) => pg_restore(rp, a),
    }
}

fn pg_restore(rp: &RepoPath, args: PgRestoreArgs) -> Result<ExitCode> {
    use strata::pg::lsn::Lsn;
    use strata::pg::recover::{Action, RecoverOptions, Target};
    let target = match (&args.at, &args.lsn, &args.name) {
        (Some(t), _, _) => match strata::snapshots::parse_time(t) {
            Ok(ns) => Target::Time(ns),
            Err(e) => super::usage!("--at: {e}"),
        },
        (_, Some(l), _) => match Lsn::parse(l) {
            Ok(l) => Target::Lsn(l),
            Err(e) => super::usage!("--lsn: {e}"),
        },
        (_, _, Some(n)) => {
            if let Err(e) = strata::pg::check_restore_point_name(n) {
                super::usage!("--name: {e}");
            }
            Target::Name(n.clone(), None)
        }
        _ => Target::End,
    };
    if let Some(t) = &args.timeline
        && !(t == "latest" || t == "current" || t.parse::<u32>().is_ok_and(|n| n > 0))
    {
        super::usage!("--timeline {t:?}: expected latest, current or a timeline number");
    }
    let repo = open(rp, false, "pg restore")?;
    let exe = std::env::current_exe().context("finding the strata program for restore_command")?;
    let repo_dir = std::path::absolute(&rp.path).context("the repository's path")?;
    let password_file = match &rp.password_file {
        Some(p) => Some(std::path::absolute(p).context("the passphrase file's path")?),
        None => None,
    };
    if repo.keys().is_some() && password_file.is_none() {
        eprintln!(
            "note: the repository is encrypted and its passphrase came from STRATA_PASSWORD; \
             the server needs it in its environment to run restore_command (or restore with \
             --password-file)"
        );
    }
    let opts = RecoverOptions {
        target,
        action: match args.action {
            ActionArg::Promote => Action::Promote,
            ActionArg::Pause => Action::Pause,
            ActionArg::Shutdown => Action::Shutdown,
        },
        timeline: args.timeline.clone(),
        restore_command: strata::pg::recover::restore_command(
            &exe,
            &repo_dir,
            password_file.as_ref(),
        ),
        no_archive: args.no_archive,
    };
    let done = strata::pg::recover::recover(&repo, &args.target_dir, &opts)?;
    let b = &done.base;
    println!(
        "restored base backup {} of snapshot {} (WAL {} to {}, timeline {}, ended {}) into {}: \
         {} files, {}",
        b.name,
        b.snapshot.short(),
        b.info.start_lsn,
        b.info.stop_lsn,
        b.info.timeline,
        strata::pg::recover::fmt_time(b.info.stop_time_ns),
        args.target_dir.display(),
        done.report.files,
        super::output::bytes(done.report.bytes)
    );
    println!("recovery settings (in postgresql.auto.conf, with recovery.signal):");
    for (k, v) in &done.settings {
        println!("  {k} = '{v}'");
    }
    let dir = std::path::absolute(&args.target_dir).unwrap_or(args.target_dir.clone());
    println!("start the server on it (as its user; -o '-p PORT' to run it beside another):");
    println!(
        "  pg_ctl -D {} -l {} start",
        strata::pg::recover::shell_quote(&dir.to_string_lossy()),
        strata::pg::recover::shell_quote(&dir.join("recovery.log").to_string_lossy())
    );
    Ok(ExitCode::SUCCESS)
}

fn restore_point(rp: &RepoPath, args: RestorePointArgs) -> Result<ExitCode> {
    if let Err(e) = strata::pg::check_restore_point_name(&args.name) {
        super::usage!("{e}");
    }
    let lsn = strata::pg::create_restore_point(args.db.as_deref(), &args.name)?;
    println!("{lsn}");
    if rp.path.join(strata::repo::CONFIG_NAME).exists() {
        let repo = open(&waiting(rp), true, "pg restore-point")?;
        let at = strata::pg::lsn::Lsn::parse(&lsn)?;
        let id = strata::pg::record_restore_point(&repo, &args.name, at)
            .context("recording the restore point in the repository")?;
        eprintln!(
            "recorded in {} (snapshot {}): `strata pg restore --name` starts from the base \
             backup before it",
            rp.path.display(),
            id.short()
        );
    } else {
        eprintln!(
            "note: no repository at {} to record it in; `strata pg restore --name` will \
             start from the oldest base backup",
            rp.path.display()
        );
    }
    eprintln!(
        "restore point {:?} at {lsn}: a recovery can stop there (recovery_target_name) once \
         the WAL up to it is archived",
        args.name
    );
    Ok(ExitCode::SUCCESS)
}

/// `rp`, waiting for the lock [`ARCHIVE_LOCK_WAIT`] unless `--retry-lock` says otherwise.
fn waiting(rp: &RepoPath) -> RepoPath {
    RepoPath {
        path: rp.path.clone(),
        is_default: rp.is_default,
        password_file: rp.password_file.clone(),
        retry_lock: Some(rp.retry_lock.unwrap_or(ARCHIVE_LOCK_WAIT)),
    }
}

fn archive_wal(rp: &RepoPath, args: ArchiveWalArgs) -> Result<ExitCode> {
    if let Err(e) = archive::check_name(&args.name) {
        super::usage!("{e}");
    }
    let is_locked = |e: &anyhow::Error| {
        e.chain()
            .find_map(|c| c.downcast_ref::<strata::Error>())
            .map(strata::Error::kind)
            == Some(strata::ErrorKind::Locked)
    };
    let done = match rp.retry_lock {
        // Told how long to wait: wait, and never spool.
        Some(wait) => {
            let repo = open(rp, true, "pg archive-wal").map_err(|e| {
                if is_locked(&e) {
                    e.context(format!(
                        "{} not archived: the repository stayed locked for {}s; PostgreSQL \
                         will try again",
                        args.name,
                        wait.as_secs()
                    ))
                } else {
                    e
                }
            })?;
            archive::archive(&repo, &args.path, &args.name)
        }
        // Another archiver's short hold is waited for; a backup's or a gc's long one is not:
        // the file goes to the spool, which the next archiver empties.
        None => match open(rp, true, "pg archive-wal") {
            Ok(repo) => archive::archive(&repo, &args.path, &args.name),
            Err(e) if is_locked(&e) => {
                let repo = open(rp, false, "pg archive-wal").with_context(|| {
                    format!(
                        "{} not archived: the repository is locked ({e:#})",
                        args.name
                    )
                })?;
                archive::spool(&repo, &args.path, &args.name)
            }
            Err(e) => return Err(e),
        },
    };
    match done.with_context(|| format!("archiving {}", args.path.display()))? {
        Archived::Stored(id) => eprintln!("archived {} as snapshot {}", args.name, id.short()),
        Archived::AlreadyHad(id) => eprintln!(
            "{} was already archived with the same contents (snapshot {})",
            args.name,
            id.short()
        ),
        Archived::Spooled => eprintln!(
            "{} is in the repository's spool (another strata process holds the repository); \
             the next archive-wal stores it as its snapshot",
            args.name
        ),
        Archived::AlreadySpooled => eprintln!(
            "{} was already in the repository's spool with the same contents",
            args.name
        ),
    }
    Ok(ExitCode::SUCCESS)
}

fn restore_wal(rp: &RepoPath, args: RestoreWalArgs) -> Result<ExitCode> {
    if let Err(e) = archive::check_name(&args.name) {
        super::usage!("{e}");
    }
    let repo = open(rp, false, "pg restore-wal")?;
    archive::restore(&repo, &args.name, &args.path)?;
    Ok(ExitCode::SUCCESS)
}

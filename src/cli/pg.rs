//! `strata pg`: PostgreSQL's WAL archive (`archive-wal` for `archive_command`, `restore-wal`
//! for `restore_command`). See docs/POSTGRES.md.

use super::{RepoPath, open};
use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use strata::pg::archive::{self, Archived};

/// How long `archive-wal` waits for a lock another strata process holds (a backup, a gc)
/// unless `--retry-lock` says otherwise. PostgreSQL waits for its `archive_command` and keeps
/// the WAL meanwhile; past this the call fails and PostgreSQL tries again later.
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
        PgCommand::RestorePoint(a) => restore_point(a),
    }
}

fn restore_point(args: RestorePointArgs) -> Result<ExitCode> {
    if let Err(e) = strata::pg::check_restore_point_name(&args.name) {
        super::usage!("{e}");
    }
    let lsn = strata::pg::create_restore_point(args.db.as_deref(), &args.name)?;
    println!("{lsn}");
    eprintln!(
        "restore point {:?} at {lsn}: a recovery can stop there (recovery_target_name) once \
         the WAL up to it is archived",
        args.name
    );
    Ok(ExitCode::SUCCESS)
}

fn archive_wal(rp: &RepoPath, args: ArchiveWalArgs) -> Result<ExitCode> {
    if let Err(e) = archive::check_name(&args.name) {
        super::usage!("{e}");
    }
    let wait = rp.retry_lock.unwrap_or(ARCHIVE_LOCK_WAIT);
    let waiting = RepoPath {
        path: rp.path.clone(),
        is_default: rp.is_default,
        password_file: rp.password_file.clone(),
        retry_lock: Some(wait),
    };
    let repo = open(&waiting, true, "pg archive-wal").map_err(|e| {
        match e
            .chain()
            .find_map(|c| c.downcast_ref::<strata::Error>())
            .map(strata::Error::kind)
        {
            Some(strata::ErrorKind::Locked) => e.context(format!(
                "{} not archived: the repository stayed locked for {}s; PostgreSQL will try \
                 again (wait longer with --retry-lock)",
                args.name,
                wait.as_secs()
            )),
            _ => e,
        }
    })?;
    match archive::archive(&repo, &args.path, &args.name)
        .with_context(|| format!("archiving {}", args.path.display()))?
    {
        Archived::Stored(id) => eprintln!("archived {} as snapshot {}", args.name, id.short()),
        Archived::AlreadyHad(id) => eprintln!(
            "{} was already archived with the same contents (snapshot {})",
            args.name,
            id.short()
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

//! Command-line definitions and dispatch. Each command lives in its own file; output for humans
//! and for `--json` is produced here, never in the library.
//!
//! Exit codes: 0 success, 1 error, 2 usage, 3 damage found (verify, restore), 4 partial backup,
//! (some files could not be read), 5 the repository is locked by another process (or the lock
//! was taken away: run again).

mod backup;
mod browse;
mod copy;
mod environment;
mod follow;
mod gc;
mod inspect;
mod key;
mod mount;
mod output;
mod pg;
mod repair;
mod restore;
mod serve;
mod shell;
mod tune;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use strata::repo::{Config, Key, OpenOptions, Repo, default_location};

pub const EXIT_ERROR: u8 = 1;
pub const EXIT_DAMAGE: u8 = 3;
pub const EXIT_PARTIAL: u8 = 4;
pub const EXIT_LOCKED: u8 = 5;
pub const EXIT_USAGE: u8 = 2;

/// A mistake in how a command was called that clap cannot see (two options that do not go
/// together, a value that does not read): exit code 2, as for clap's own.
#[derive(Debug)]
pub struct Usage(pub String);

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl std::error::Error for Usage {}

/// Returns a [`Usage`] error from the current function.
macro_rules! usage {
    ($($arg:tt)*) => {
        return Err(anyhow::Error::new($crate::strata_cli::Usage(format!($($arg)*))))
    };
}
pub(crate) use usage;

#[derive(Parser)]
#[command(
    name = "strata",
    version,
    about = "Deduplicating, verifiable snapshots of application state",
    long_about = None
)]
pub struct Cli {
    /// Repository directory [default: $XDG_DATA_HOME/strata/repo]
    #[arg(long, global = true, env = "STRATA_REPO")]
    repo: Option<PathBuf>,
    /// File holding the passphrase of an encrypted repository (or set STRATA_PASSWORD)
    #[arg(long, global = true, env = "STRATA_PASSWORD_FILE")]
    password_file: Option<PathBuf>,
    /// When another process holds the repository's lock, wait up to this long for it (30s, 5m,
    /// 1h) instead of failing at once (exit code 5)
    #[arg(
        long,
        global = true,
        env = "STRATA_RETRY_LOCK",
        value_name = "DURATION"
    )]
    retry_lock: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a repository
    Init(backup::InitArgs),
    /// Snapshot files and directories
    Backup(backup::BackupArgs),
    /// List snapshots
    List(inspect::ListArgs),
    /// Show one snapshot's details and entries
    Show(inspect::ShowArgs),
    /// List the files and directories in a snapshot (one level, or all below a path with -r)
    Ls(browse::LsArgs),
    /// Find paths by name in every snapshot (or those given), with their size and time in each
    Find(browse::FindArgs),
    /// Write one file of a snapshot to standard output, or a directory as a tar archive
    Dump(browse::DumpArgs),
    /// Show the snapshots as a read-only file system (FUSE) until Ctrl-C or umount
    Mount(mount::MountArgs),
    /// Copy each transaction of WAL databases into their journals as it commits, until Ctrl-C
    Follow(follow::FollowArgs),
    /// Repository statistics
    Stats(inspect::JsonArg),
    /// Paths added, removed and changed between two snapshots
    Diff(inspect::DiffArgs),
    /// Restore a snapshot (or some of its paths)
    Restore(restore::RestoreArgs),
    /// Remove snapshots by retention policy (or by name); `gc` then reclaims their space
    Forget(gc::ForgetArgs),
    /// Remove the named snapshots
    Delete(gc::DeleteArgs),
    /// Reclaim the space of data no snapshot references
    Gc(gc::GcArgs),
    /// Show or change repository settings (retention policies per kind)
    Config(gc::ConfigArgs),
    /// Check the repository's integrity
    Verify(restore::VerifyArgs),
    /// Measure chunking and compression settings on your data (writes nothing)
    Tune(tune::TuneArgs),
    /// Rebuild repository metadata from the repository's own files
    Repair(repair::RepairArgs),
    /// Manage the passphrases of an encrypted repository
    Key(key::KeyArgs),
    /// Copy snapshots into another repository (only the data it lacks)
    Copy(copy::CopyArgs),
    /// PostgreSQL's WAL archive: `archive-wal` for archive_command, `restore-wal` for
    /// restore_command
    Pg(pg::PgArgs),
    /// Remove a stale repository lock
    Unlock(UnlockArgs),
    /// Run scheduled snapshots and the HTTP admin API, metrics and web page
    Serve(serve::ServeArgs),
    /// Print a completion script for bash, zsh, fish, elvish or PowerShell
    Completions(shell::CompletionsArgs),
    /// Print the manual page (or write one per command into a directory)
    Man(shell::ManArgs),
}

/// glibc raises its mmap threshold each time a large block is freed, after which pack and read
/// buffers come from per-thread heaps that are never returned to the system: peak memory then
/// grows with the number of threads instead of staying bounded. A fixed threshold keeps large
/// buffers in their own mappings, released on free.
fn bound_allocator() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only changes allocator tuning; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 << 10);
    }
}

/// An empty `STRATA_*` variable counts as unset (clap would take `STRATA_REPO=` as an empty
/// value and refuse it), as restic treats its own.
fn drop_empty_variables() {
    let empty: Vec<std::ffi::OsString> = std::env::vars_os()
        .filter(|(k, v)| v.is_empty() && k.as_encoded_bytes().starts_with(b"STRATA_"))
        .map(|(k, _)| k)
        .collect();
    for k in empty {
        // SAFETY: called first thing in main, before any other thread exists.
        unsafe { std::env::remove_var(k) }
    }
}

pub fn main() -> ExitCode {
    drop_empty_variables();
    bound_allocator();
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    // A panic (a bug, or a library tripping over damaged input such as a corrupt index) ends
    // the command with one clear line and an exit code, not a backtrace. One inside the index
    // database is damage (exit 3, with the repair to run); `println!` into a closed pipe is the
    // reader having seen enough (a quiet exit).
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        let file = info.location().map(|l| l.file()).unwrap_or("");
        let at = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let kind = panic_kind(&msg, file);
        let _ = PANIC_KIND.set(kind);
        match kind {
            PanicKind::ClosedStdout => {}
            // Damage, not a bug of strata: the database's "internal error" (an `unreachable!`
            // it reached on a damaged page) is not called one.
            PanicKind::Index => eprintln!(
                "strata: error: the index is damaged ({}{at}); the packs and snapshot files \
                 are not affected: run `strata repair index`, then `strata verify`",
                msg.trim_start_matches("internal error: ")
            ),
            PanicKind::Bug => eprintln!(
                "strata: internal error: {msg}{at}\nstrata: committed snapshots are not affected \
                 by this failure; run `strata verify`, and `strata repair index` if it reports a \
                 damaged index"
            ),
        }
    }));
    match std::panic::catch_unwind(|| run(cli)) {
        Ok(Ok(code)) => code,
        Ok(Err(e)) => {
            if is_broken_pipe(&e) {
                return ExitCode::SUCCESS;
            }
            eprintln!("strata: error: {e:#}");
            ExitCode::from(exit_code_of(&e))
        }
        Err(_) => match PANIC_KIND.get() {
            Some(PanicKind::ClosedStdout) => ExitCode::SUCCESS,
            Some(PanicKind::Index) => ExitCode::from(EXIT_DAMAGE),
            _ => ExitCode::from(EXIT_ERROR),
        },
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PanicKind {
    ClosedStdout,
    Index,
    Bug,
}

/// The first panic's kind, for the exit code.
static PANIC_KIND: std::sync::OnceLock<PanicKind> = std::sync::OnceLock::new();

/// What a panic with this message, raised in this source file, means for the user.
fn panic_kind(msg: &str, file: &str) -> PanicKind {
    if msg.starts_with("failed printing to stdout") && msg.contains("Broken pipe") {
        PanicKind::ClosedStdout
    } else if file.contains("/redb-") || file.starts_with("redb-") {
        PanicKind::Index
    } else {
        PanicKind::Bug
    }
}

/// The exit code of a failed command, from the library's error kind where there is one.
fn exit_code_of(e: &anyhow::Error) -> u8 {
    if e.chain().any(|c| c.downcast_ref::<Usage>().is_some()) {
        return EXIT_USAGE;
    }
    let kind = e
        .chain()
        .find_map(|c| c.downcast_ref::<strata::Error>())
        .map(strata::Error::kind);
    match kind {
        Some(strata::ErrorKind::Locked) => EXIT_LOCKED,
        _ => EXIT_ERROR,
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            || c.to_string().contains("Broken pipe")
    })
}

#[derive(clap::Args)]
#[command(after_help = "Examples:\n  strata unlock\n  strata unlock --force")]
pub struct UnlockArgs {
    /// Remove the lock even if its holder is still running on this machine (that process then
    /// fails at its next commit instead of saving)
    #[arg(long)]
    force: bool,
}

/// Which repository to use, whether it came from the default location, and the file holding
/// its passphrase if one was named.
struct RepoPath {
    path: PathBuf,
    is_default: bool,
    password_file: Option<PathBuf>,
    /// How long to wait for another process's lock (`--retry-lock`).
    retry_lock: Option<std::time::Duration>,
}

impl RepoPath {
    /// The passphrase of this (encrypted) repository, asked for now.
    fn passphrase(&self) -> strata::Result<String> {
        environment::passphrase(
            self.password_file.as_deref(),
            "strata repository passphrase: ",
        )
    }
}

impl Cli {
    fn repo_path(&self) -> Result<RepoPath> {
        let retry_lock = match &self.retry_lock {
            None => None,
            Some(s) => match strata::retention::parse_duration(s) {
                Some(ns) => Some(std::time::Duration::from_nanos(ns.max(0) as u64)),
                None => {
                    usage!("--retry-lock {s:?}: expected a duration such as 30s, 5m or 1h")
                }
            },
        };
        let (path, is_default) = match &self.repo {
            Some(p) => (p.clone(), false),
            None => (default_location(), true),
        };
        Ok(RepoPath {
            path,
            is_default,
            password_file: self.password_file.clone(),
            retry_lock,
        })
    }
}

/// The commands that hold a repository's lock only briefly, as the lock file names them.
const SHORT_HOLDERS: [&str; 2] = ["(pg archive-wal)", "(pg restore-point)"];
/// How long a command waits for one of them when not told to wait (`--retry-lock`).
const SHORT_HOLD_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

fn open(rp: &RepoPath, write: bool, command: &str) -> Result<Repo> {
    // Asked once, however many times the lock makes us try.
    let asked = std::sync::OnceLock::new();
    let ask = || match asked.get() {
        Some(p) => Ok(String::clone(p)),
        None => {
            let p = rp.passphrase()?;
            Ok(asked.get_or_init(|| p).clone())
        }
    };
    let mut deadline = rp.retry_lock.map(|d| std::time::Instant::now() + d);
    let mut pause = std::time::Duration::from_millis(100);
    let mut said = false;
    loop {
        let opened = OpenOptions::new(command)
            .write(write)
            .key(Key::Ask(&ask))
            .open(&rp.path);
        // PostgreSQL's archiver holds the lock for a moment per WAL file, a file every few
        // seconds under load: a command that meets it waits rather than fails.
        if let (Err(strata::Error::Locked(why)), None) = (&opened, deadline)
            && SHORT_HOLDERS.iter().any(|h| why.contains(h))
        {
            deadline = Some(std::time::Instant::now() + SHORT_HOLD_WAIT);
        }
        match (opened, deadline) {
            (Err(strata::Error::Locked(why)), Some(deadline))
                if std::time::Instant::now() + pause < deadline =>
            {
                if !said {
                    eprintln!("strata: waiting for the repository's lock: {why}");
                    said = true;
                }
                std::thread::sleep(pause);
                pause = (pause * 2).min(std::time::Duration::from_secs(2));
            }
            (opened, _) => {
                return opened.with_context(|| format!("opening repository {}", rp.path.display()));
            }
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    let rp = cli.repo_path()?;
    strata::s3::configure(environment::s3_options())?;
    match cli.command {
        Command::Init(args) => backup::init(&rp, args),
        Command::Backup(args) => backup::backup(&rp, args),
        Command::List(args) => inspect::list(&open(&rp, false, "list")?, args),
        Command::Show(args) => inspect::show(&open(&rp, false, "show")?, args),
        Command::Ls(args) => browse::ls(&open(&rp, false, "ls")?, args),
        Command::Find(args) => browse::find(&open(&rp, false, "find")?, args),
        Command::Dump(args) => browse::dump(&open(&rp, false, "dump")?, args),
        Command::Mount(args) => mount::mount(open(&rp, false, "mount")?, args),
        Command::Follow(args) => follow::follow(&open(&rp, false, "follow")?, args),
        Command::Stats(args) => inspect::stats(&open(&rp, false, "stats")?, args),
        Command::Diff(args) => inspect::diff(&open(&rp, false, "diff")?, args),
        Command::Restore(args) => {
            restore::restore(&open(&rp, args.may_replace(), "restore")?, args)
        }
        Command::Forget(args) => gc::forget(&open(&rp, true, "forget")?, args),
        Command::Delete(args) => gc::delete(&open(&rp, true, "delete")?, args),
        Command::Gc(args) => gc::run_gc(&open(&rp, true, "gc")?, args),
        Command::Config(args) => match args.check_file() {
            Some(file) => serve::check_config(file),
            None => gc::config(&open(&rp, args.writes(), "config")?, args),
        },
        Command::Copy(args) => copy::copy(&rp, args),
        Command::Pg(args) => pg::pg(&rp, args),
        Command::Serve(args) => serve::serve(rp.path.clone(), args),
        Command::Verify(args) => restore::verify(&open(&rp, false, "verify")?, args),
        Command::Repair(args) => repair::repair(&rp, args),
        Command::Tune(args) => tune::tune(args),
        Command::Completions(args) => shell::completions(args),
        Command::Man(args) => shell::man(args),
        Command::Key(args) => key::key(&rp, args),
        Command::Unlock(args) => {
            if strata::repo::force_unlock(&rp.path, args.force)? {
                println!("removed the lock of {}", rp.path.display());
            } else {
                println!("{} was not locked", rp.path.display());
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Creates the repository with default settings (used by `backup` on the default location).
fn create_default(rp: &RepoPath) -> Result<Repo> {
    let config = Config::new(Default::default(), backup::DEFAULT_ZSTD_LEVEL)?;
    Repo::init(&rp.path, config)
        .with_context(|| format!("creating repository {}", rp.path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panics_are_told_apart_by_message_and_place() {
        assert_eq!(
            panic_kind(
                "failed printing to stdout: Broken pipe (os error 32)",
                "library/std/src/io/stdio.rs"
            ),
            PanicKind::ClosedStdout
        );
        assert_eq!(
            panic_kind(
                "index out of bounds",
                "/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/redb-4.6.0/src/tree_store/btree.rs"
            ),
            PanicKind::Index
        );
        assert_eq!(
            panic_kind(
                "failed printing to stdout: No space left",
                "src/cli/inspect.rs"
            ),
            PanicKind::Bug
        );
        assert_eq!(panic_kind("oops", "src/restore/files.rs"), PanicKind::Bug);
    }
}

//! `strata follow`: copies every transaction of WAL databases into their capture journals as it
//! is committed, until Ctrl-C (see `strata::follow`). `strata serve` runs it for jobs with
//! `follow = true`.

use anyhow::{Context, Result, bail};
use clap::Args;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use strata::follow::follower::{FollowOptions, Follower};
use strata::repo::Repo;

#[derive(Args)]
#[command(
    after_help = "Snapshots of a followed database (`strata backup`) take its changes from the \
                  journal instead of reading it again after a checkpoint reset its log.\n\n\
                  Examples:\n  strata follow /srv/app/app.db &\n  strata backup /srv/app"
)]
pub struct FollowArgs {
    /// SQLite databases in WAL mode
    #[arg(required = true)]
    databases: Vec<PathBuf>,
    /// Checkpoint once the log holds this many frames
    #[arg(long, value_name = "N", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    checkpoint_frames: u32,
    /// How long the journal is kept (30m, 24h, 7d)
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = parse_keep)]
    keep: std::time::Duration,
}

fn parse_keep(s: &str) -> Result<std::time::Duration, String> {
    strata::retention::parse_duration(s)
        .filter(|n| *n > 0)
        .map(|n| std::time::Duration::from_nanos(n as u64))
        .ok_or_else(|| format!("{s:?}: expected a duration such as 30m, 24h or 7d"))
}

pub fn follow(repo: &Repo, args: FollowArgs) -> Result<ExitCode> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop))?;
    }
    let mut followers = Vec::new();
    let mut locks = Vec::new();
    for db in &args.databases {
        let abs = std::path::absolute(db).with_context(|| format!("{}", db.display()))?;
        let dir = strata::follow::journal_dir(repo, &abs);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        locks.push(lock(&dir, &abs)?);
        let opts = FollowOptions {
            checkpoint_frames: args.checkpoint_frames,
            keep: args.keep,
            ..FollowOptions::default()
        };
        let f = Follower::new(&abs, &dir, opts)
            .with_context(|| format!("following {}", abs.display()))?;
        eprintln!("following {} (journal in {})", abs.display(), dir.display());
        followers.push(f);
    }
    let failed = std::thread::scope(|s| {
        let handles: Vec<_> = followers
            .iter_mut()
            .map(|f| {
                let stop = &stop;
                s.spawn(move || f.run(stop))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join())
            .filter(|r| !matches!(r, Ok(Ok(()))))
            .count()
    });
    drop(locks);
    match failed {
        0 => Ok(ExitCode::SUCCESS),
        n => bail!("{n} follower(s) failed"),
    }
}

/// Holds the journal's lock: one follower per database.
fn lock(dir: &std::path::Path, db: &std::path::Path) -> Result<std::fs::File> {
    let path = dir.join("follow.lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: a plain system call on a descriptor `f` owns.
    let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if r != 0 {
        let holder = std::fs::read_to_string(dir.join("status.json"))
            .ok()
            .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
            .and_then(|v| v.get("pid").and_then(|p| p.as_u64()));
        match holder {
            Some(pid) => bail!(
                "{} is already followed (by pid {pid}); one follower per database",
                db.display()
            ),
            None => bail!(
                "{} is already followed; one follower per database",
                db.display()
            ),
        }
    }
    Ok(f)
}

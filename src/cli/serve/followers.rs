//! The followers of jobs with `follow = true`: one `strata follow` child per job, for its SQLite
//! databases, started with the daemon, started again (after a growing pause) if it stops, and
//! stopped with the daemon. Their state comes from the `status.json` each keeps beside its
//! journal (see `strata::follow`), for `/metrics`, `/health` and `/api/followers`.

use super::Daemon;
use serde::Serialize;
use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// `/health` is degraded when a followed database has not been read to the end of its log for
/// this long.
pub const LAG_LIMIT_S: f64 = 10.0;
/// Longest pause before a stopped follower is started again.
const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// One job's follower.
struct Proc {
    job: String,
    keep_s: i64,
    databases: Vec<PathBuf>,
    journals: Vec<PathBuf>,
    child: Option<Child>,
    restarts: u64,
    backoff: Duration,
    next_start: Instant,
    last_exit: Option<String>,
}

/// Every job's follower.
pub struct Followers {
    procs: Mutex<Vec<Proc>>,
}

/// What `/api/followers` says of one followed database.
#[derive(Serialize)]
pub struct FollowedDb {
    job: String,
    database: PathBuf,
    running: bool,
    restarts: u64,
    last_exit: Option<String>,
    /// Seconds since the follower last read the log to its end (`None`: never).
    lag_s: Option<f64>,
    /// The follower's own status (see `strata::follow::follower::Status`).
    status: Option<strata::follow::follower::Status>,
    /// The spans of time the database can be restored to (`restore --at`), from the
    /// snapshots noted in its journal.
    pub restorable: Vec<super::super::inspect::TimeSpan>,
    #[serde(skip)]
    pub journal: PathBuf,
}

impl Followers {
    /// The followers of `daemon`'s jobs with `follow = true` (none started yet).
    pub fn new(daemon: &Daemon) -> anyhow::Result<Followers> {
        let mut procs = Vec::new();
        let jobs: Vec<_> = daemon.cfg.jobs.iter().filter(|j| j.follow).collect();
        if !jobs.is_empty() {
            let repo = daemon.open_read()?;
            for j in jobs {
                let databases: Vec<PathBuf> = j
                    .sqlite
                    .iter()
                    .map(|s| std::path::absolute(s).unwrap_or_else(|_| PathBuf::from(s)))
                    .collect();
                let journals = databases
                    .iter()
                    .map(|d| strata::follow::journal_dir(&repo, d))
                    .collect();
                procs.push(Proc {
                    job: j.name.clone(),
                    keep_s: j.pitr_window_s,
                    databases,
                    journals,
                    child: None,
                    restarts: 0,
                    backoff: Duration::from_secs(1),
                    next_start: Instant::now(),
                    last_exit: None,
                });
            }
        }
        Ok(Followers {
            procs: Mutex::new(procs),
        })
    }

    /// Starts the followers that are not running and are due; notes those that stopped.
    pub fn tend(&self, daemon: &Daemon) {
        let mut procs = self.procs.lock().unwrap_or_else(|e| e.into_inner());
        for p in procs.iter_mut() {
            if let Some(c) = p.child.as_mut() {
                match c.try_wait() {
                    Ok(None) => continue,
                    Ok(Some(status)) => {
                        let why = format!("stopped ({status})");
                        tracing::warn!(job = p.job.as_str(), "follower {why}; starting it again");
                        p.last_exit = Some(why);
                        p.child = None;
                        p.next_start = Instant::now() + p.backoff;
                        p.backoff = (p.backoff * 2).min(BACKOFF_MAX);
                        p.restarts += 1;
                    }
                    Err(_) => continue,
                }
            }
            if p.child.is_none() && Instant::now() >= p.next_start {
                match start(daemon, p) {
                    Ok(c) => {
                        tracing::info!(job = p.job.as_str(), pid = c.id(), "follower started");
                        p.child = Some(c);
                    }
                    Err(e) => {
                        p.last_exit = Some(format!("{e:#}"));
                        p.next_start = Instant::now() + p.backoff;
                        p.backoff = (p.backoff * 2).min(BACKOFF_MAX);
                    }
                }
            }
        }
    }

    /// Stops every follower (SIGTERM, then SIGKILL after a few seconds).
    pub fn stop(&self) {
        let mut procs = self.procs.lock().unwrap_or_else(|e| e.into_inner());
        for c in procs.iter_mut().filter_map(|p| p.child.as_mut()) {
            // SAFETY: kill has no memory effects; the pid is a child we started.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for c in procs.iter_mut().filter_map(|p| p.child.as_mut()) {
            while matches!(c.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Each followed database's state.
    pub fn list(&self) -> Vec<FollowedDb> {
        let procs = self.procs.lock().unwrap_or_else(|e| e.into_inner());
        let now_ms = chrono::Utc::now().timestamp_millis();
        let mut out = Vec::new();
        for p in procs.iter() {
            for (db, dir) in p.databases.iter().zip(&p.journals) {
                let status = strata::follow::status(dir);
                let lag_s = status
                    .as_ref()
                    .map(|s| s.caught_up_ms)
                    .filter(|ms| *ms > 0)
                    .map(|ms| (now_ms - ms).max(0) as f64 / 1000.0);
                out.push(FollowedDb {
                    job: p.job.clone(),
                    database: db.clone(),
                    running: p.child.is_some(),
                    restarts: p.restarts,
                    last_exit: p.last_exit.clone(),
                    lag_s,
                    status,
                    restorable: Vec::new(),
                    journal: dir.clone(),
                });
            }
        }
        out
    }

    /// Sets the followers' series of `/metrics`.
    pub fn update_metrics(&self, m: &super::metrics::Metrics) {
        for f in self.list() {
            let label = super::metrics::DbLabel {
                job: f.job.clone(),
                database: f.database.display().to_string(),
            };
            let number = |n: fn(&strata::follow::follower::Status) -> u64| {
                f.status.as_ref().map_or(0, |s| n(s) as i64)
            };
            m.follow_running
                .get_or_create(&label)
                .set(i64::from(f.running));
            m.follow_lag
                .get_or_create(&label)
                .set(f.lag_s.unwrap_or(f64::NAN));
            m.follow_log_bytes
                .get_or_create(&label)
                .set(number(|s| s.log_bytes));
            m.follow_transactions
                .get_or_create(&label)
                .set(number(|s| s.transactions));
            m.follow_checkpoints
                .get_or_create(&label)
                .set(number(|s| s.checkpoints));
            m.follow_fallbacks
                .get_or_create(&label)
                .set(number(|s| s.fallbacks));
        }
    }

    /// Reasons for `/health` to say degraded.
    pub fn health(&self) -> Vec<String> {
        let mut reasons = Vec::new();
        for f in self.list() {
            let db = f.database.display();
            if !f.running {
                reasons.push(format!(
                    "job {}: the follower of {db} is not running ({})",
                    f.job,
                    f.last_exit.as_deref().unwrap_or("starting")
                ));
            } else if let Some(lag) = f.lag_s.filter(|l| *l > LAG_LIMIT_S) {
                reasons.push(format!(
                    "job {}: the follower of {db} is {lag:.0} s behind (threshold {LAG_LIMIT_S:.0} s)",
                    f.job
                ));
            }
        }
        reasons
    }
}

/// Starts `strata follow` for one job; its error output goes to the daemon's log.
fn start(daemon: &Daemon, p: &Proc) -> anyhow::Result<Child> {
    let mut cmd = Command::new(&daemon.exe);
    cmd.arg("--repo")
        .arg(&daemon.repo)
        .arg("follow")
        .arg("--keep")
        .arg(format!("{}s", p.keep_s.max(1)))
        .args(&p.databases)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(pass) = &daemon.passphrase {
        cmd.env_remove("STRATA_PASSWORD_FILE")
            .env("STRATA_PASSWORD", pass);
    }
    // A daemon killed outright (SIGKILL) takes its followers with it. (Started from the main
    // thread, which lives as long as the daemon: the signal follows the thread that forked.)
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn()?;
    if let Some(err) = child.stderr.take() {
        let job = p.job.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(err).lines().map_while(|l| l.ok()) {
                tracing::info!(job = job.as_str(), "follow: {line}");
            }
        });
    }
    Ok(child)
}

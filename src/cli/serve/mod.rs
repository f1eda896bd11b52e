//! `strata serve`: one long-running process that takes scheduled snapshots, applies each job's
//! retention policy, collects garbage, and answers an HTTP admin API with metrics and a page.
//!
//! Every operation that changes the repository (a snapshot, forget, gc, delete, restore) runs as
//! a child `strata` process, one at a time, in order: the daemon holds no repository lock between
//! operations, so the command line keeps working beside it, and a child that dies cannot take
//! the daemon with it. Reads (list, show, stats) run in the daemon itself on a read-only index.
//! Verify runs beside the writer, one at a time.
//!
//! This file holds the daemon's shared state; `lifecycle` starts, schedules and stops it,
//! `operations` runs what is queued, `http` checks and routes each request to `handlers`.

mod config;
mod followers;
mod handlers;
mod http;
mod lifecycle;
mod metrics;
mod operations;
mod pg_watch;
mod roots;
mod token_file;
mod wire;

use anyhow::{Context, Result, bail};
use chrono::{DateTime, Local, Utc};
use clap::Args;
use config::{Job, ServeConfig};
use metrics::Metrics;
use serde::Serialize;
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, mpsc};
use strata::repo::Repo;

pub use lifecycle::serve;

#[derive(Args)]
#[command(
    after_help = "Examples:\n  strata serve --config /etc/strata/strata.toml\n  strata serve --new-token ops"
)]
pub struct ServeArgs {
    /// Configuration file (strata.toml); without it, settings come from STRATA_* variables
    #[arg(long, env = "STRATA_CONFIG")]
    config: Option<PathBuf>,
    /// Log lines as JSON objects instead of text
    #[arg(long, value_parser = ["text", "json"])]
    log_format: Option<String>,
    /// Print a new random API token and the [[token]] entry that accepts it, then exit
    #[arg(long, value_name = "NAME")]
    new_token: Option<String>,
}

/// `strata config check FILE`.
pub fn check_config(file: &Path) -> Result<ExitCode> {
    let c = ServeConfig::load(Some(file))?;
    println!(
        "{}: ok; listens on {}, {} token(s), {} job(s)",
        file.display(),
        c.listen,
        c.tokens.len(),
        c.jobs.len()
    );
    if c.tokens.is_empty() {
        match c
            .token_file
            .clone()
            .map_or_else(token_file::default_path, Ok)
        {
            Ok(p) => println!("  API token: in {} (made at start if missing)", p.display()),
            Err(e) => println!("  API token: {e:#}"),
        }
    }
    for (what, roots) in [
        ("restores through the API into", &c.restore_roots),
        ("snapshots of request paths from", &c.backup_roots),
    ] {
        if roots.is_empty() {
            println!("  {what}: none (off)");
        } else {
            let list: Vec<String> = roots.iter().map(|r| r.display().to_string()).collect();
            println!("  {what}: {}", list.join(", "));
        }
    }
    let now = Local::now();
    for j in &c.jobs {
        let next = j.schedule.map(|s| s.next_after(&now));
        println!(
            "  job {}: {}{}, kind {}, next run {}",
            j.name,
            j.schedule
                .map(|s| s.to_string())
                .unwrap_or_else(|| "on request only".into()),
            if j.on_start { ", on start" } else { "" },
            j.kind,
            next.map(|t| t.format("%Y-%m-%d %H:%M").to_string())
                .unwrap_or_else(|| "-".into())
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// What a queued or finished operation is.
#[derive(Clone, Debug)]
enum Task {
    Job(String),
    Snapshot(AdHoc),
    Delete(String),
    Restore(RestoreRequest),
    Verify { read_data: bool },
}

/// A snapshot of sources given in the request rather than a job's.
#[derive(Clone, Debug, Default)]
pub struct AdHoc {
    pub paths: Vec<PathBuf>,
    pub sqlite: Vec<String>,
    pub name: Option<String>,
    pub tags: Vec<String>,
    pub kind: Option<String>,
}

#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreRequest {
    /// Id prefix, name or `latest`.
    snapshot: Option<String>,
    /// The newest snapshot at or before this time.
    at: Option<String>,
    target: PathBuf,
    #[serde(default)]
    paths: Vec<String>,
    /// Take a restore point of what the restore replaces (default true).
    restore_point: Option<bool>,
    #[serde(default)]
    delete: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct Operation {
    id: u64,
    what: String,
    job: Option<String>,
    requested_by: String,
    status: &'static str,
    queued: String,
    started: Option<String>,
    finished: Option<String>,
    /// The command's JSON output, when it gave one.
    result: Option<serde_json::Value>,
    error: Option<String>,
    /// How far a running command has got, when it says.
    #[serde(skip_serializing_if = "Option::is_none")]
    progress: Option<OpProgress>,
}

/// Bytes done of a total, as a running command reports them.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct OpProgress {
    done: u64,
    total: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct JobStatus {
    name: String,
    schedule: Option<String>,
    kind: String,
    on_start: bool,
    retention: Option<String>,
    max_snapshots: Option<usize>,
    running: bool,
    last_run: Option<String>,
    last_status: Option<&'static str>,
    last_success: Option<String>,
    last_error: Option<String>,
    next_run: Option<String>,
    alert_after_s: i64,
    #[serde(skip)]
    next_due: Option<DateTime<Local>>,
    #[serde(skip)]
    last_success_at: Option<DateTime<Utc>>,
    #[serde(skip)]
    queued: bool,
}

impl JobStatus {
    /// A configured job before anything is known of its runs.
    fn new(j: &Job) -> JobStatus {
        JobStatus {
            name: j.name.clone(),
            schedule: j.schedule.map(|s| s.to_string()),
            kind: j.kind.clone(),
            on_start: j.on_start,
            retention: j.retention.as_ref().map(|_| "set".into()),
            max_snapshots: j.max_snapshots,
            running: false,
            last_run: None,
            last_status: None,
            last_success: None,
            last_error: None,
            next_run: None,
            alert_after_s: j.alert_after_s,
            next_due: None,
            last_success_at: None,
            queued: false,
        }
    }
}

/// State shared by the scheduler, the workers and the HTTP threads.
pub struct Daemon {
    cfg: ServeConfig,
    repo: PathBuf,
    exe: PathBuf,
    /// The passphrase of an encrypted repository, for the children, and its unlocked key for
    /// the daemon's own reads.
    passphrase: Option<String>,
    master: Option<([u8; 32], String)>,
    jobs: Mutex<Vec<JobStatus>>,
    ops: Mutex<VecDeque<Operation>>,
    next_op: AtomicU64,
    writer: Mutex<mpsc::Sender<(u64, Task)>>,
    verifier: Mutex<mpsc::Sender<(u64, Task)>>,
    metrics: Metrics,
    stopping: AtomicBool,
    /// Children running now, to stop when the grace period ends.
    children: Mutex<Vec<u32>>,
    started: DateTime<Utc>,
    wake: (Mutex<()>, Condvar),
    /// The followers of jobs with `follow = true`.
    followers: std::sync::OnceLock<followers::Followers>,
    /// What the repository holds of PostgreSQL, and the server's archiver.
    pg_watch: pg_watch::PgWatch,
}

const KEEP_OPERATIONS: usize = 500;

fn now_text() -> String {
    Local::now().to_rfc3339()
}

impl Daemon {
    fn open_read(&self) -> Result<Repo> {
        let repo = match &self.master {
            Some(m) => strata::repo::OpenOptions::new("serve")
                .key(strata::repo::Key::Master(m))
                .open(&self.repo),
            None => Repo::open(&self.repo, false, "serve"),
        };
        repo.with_context(|| format!("opening repository {}", self.repo.display()))
    }

    /// Queues `task`, returning its operation id.
    fn submit(&self, task: Task, who: &str) -> Result<u64> {
        if self.stopping.load(Ordering::SeqCst) {
            bail!("the daemon is shutting down");
        }
        let id = self.next_op.fetch_add(1, Ordering::SeqCst);
        let (what, job) = match &task {
            Task::Job(name) => ("snapshot".to_string(), Some(name.clone())),
            Task::Snapshot(_) => ("snapshot".to_string(), None),
            Task::Delete(s) => (format!("delete {s}"), None),
            Task::Restore(r) => (
                format!(
                    "restore {} to {}",
                    r.snapshot
                        .clone()
                        .or_else(|| r.at.as_ref().map(|t| format!("at {t}")))
                        .unwrap_or_default(),
                    r.target.display()
                ),
                None,
            ),
            Task::Verify { read_data } => (
                if *read_data {
                    "verify --read-data".to_string()
                } else {
                    "verify".to_string()
                },
                None,
            ),
        };
        {
            let mut ops = self.ops.lock().unwrap_or_else(|e| e.into_inner());
            ops.push_back(Operation {
                id,
                what,
                job: job.clone(),
                requested_by: who.to_string(),
                status: "queued",
                queued: now_text(),
                started: None,
                finished: None,
                result: None,
                error: None,
                progress: None,
            });
            while ops.len() > KEEP_OPERATIONS {
                ops.pop_front();
            }
        }
        if let Some(name) = &job {
            self.with_job(name, |j| j.queued = true);
        }
        let lane = match task {
            Task::Verify { .. } => &self.verifier,
            _ => &self.writer,
        };
        lane.lock()
            .unwrap_or_else(|e| e.into_inner())
            .send((id, task))
            .map_err(|_| anyhow::anyhow!("the worker has stopped"))?;
        Ok(id)
    }

    fn with_job(&self, name: &str, f: impl FnOnce(&mut JobStatus)) {
        let mut jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(j) = jobs.iter_mut().find(|j| j.name == name) {
            f(j);
        }
    }

    fn update_op(&self, id: u64, f: impl FnOnce(&mut Operation)) {
        let mut ops = self.ops.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(op) = ops.iter_mut().find(|o| o.id == id) {
            f(op);
        }
    }

    pub fn operation(&self, id: u64) -> Option<Operation> {
        let ops = self.ops.lock().unwrap_or_else(|e| e.into_inner());
        ops.iter().find(|o| o.id == id).cloned()
    }

    pub fn operations(&self) -> Vec<Operation> {
        let ops = self.ops.lock().unwrap_or_else(|e| e.into_inner());
        ops.iter().rev().cloned().collect()
    }

    pub fn job_statuses(&self) -> Vec<JobStatus> {
        self.jobs.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn job_config(&self, name: &str) -> Option<&Job> {
        self.cfg.jobs.iter().find(|j| j.name == name)
    }

    /// `ok`, or the reasons the daemon is degraded.
    pub fn health(&self) -> Vec<String> {
        let mut reasons = Vec::new();
        let now = Utc::now();
        for j in self.job_statuses() {
            if j.last_status == Some("failed") {
                reasons.push(format!(
                    "job {}: the last run failed: {}",
                    j.name,
                    j.last_error.as_deref().unwrap_or("unknown error")
                ));
            }
            if j.schedule.is_none() {
                continue;
            }
            let since = j.last_success_at.unwrap_or(self.started);
            let age = (now - since).num_seconds();
            if age > j.alert_after_s {
                reasons.push(format!(
                    "job {}: no successful snapshot for {} (threshold {})",
                    j.name,
                    human_seconds(age),
                    human_seconds(j.alert_after_s)
                ));
            }
        }
        if let Some(f) = self.followers.get() {
            reasons.extend(f.health());
        }
        reasons.extend(self.pg_watch.health());
        match disk_free(&self.repo) {
            Some(free) if free < self.cfg.disk_min_free => reasons.push(format!(
                "repository disk almost full: {:.1}% free (threshold {:.1}%)",
                free * 100.0,
                self.cfg.disk_min_free * 100.0
            )),
            _ => {}
        }
        reasons
    }
}

fn human_seconds(s: i64) -> String {
    if s >= 2 * 3600 {
        format!("{}h", s / 3600)
    } else if s >= 120 {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

/// The free fraction of the file system holding `path`.
fn disk_free(path: &Path) -> Option<f64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: c is a valid NUL-terminated path and st a writable statvfs.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 || st.f_blocks == 0 {
        return None;
    }
    Some(st.f_bavail as f64 / st.f_blocks as f64)
}

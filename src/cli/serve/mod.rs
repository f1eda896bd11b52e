//! `strata serve`: one long-running process that takes scheduled snapshots, applies each job's
//! retention policy, collects garbage, and answers an HTTP admin API with metrics and a page.
//!
//! Every operation that changes the repository (a snapshot, forget, gc, delete, restore) runs as
//! a child `strata` process, one at a time, in order: the daemon holds no repository lock between
//! operations, so the command line keeps working beside it, and a child that dies cannot take
//! the daemon with it. Reads (list, show, stats) run in the daemon itself on a read-only index.
//! Verify runs beside the writer, one at a time.

mod config;
mod handlers;
mod http;
mod metrics;
mod operations;
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
use std::sync::{Arc, Condvar, Mutex, mpsc};
use std::time::{Duration, Instant};
use strata::repo::Repo;
use strata::snapshots;

#[derive(Args)]
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
}

const KEEP_OPERATIONS: usize = 500;

fn now_text() -> String {
    Local::now().to_rfc3339()
}

impl Daemon {
    fn open_read(&self) -> Result<Repo> {
        let repo = match &self.master {
            Some(m) => Repo::open_with_master(&self.repo, false, "serve", m.clone()),
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

/// Newest snapshot time of each job, from the `job=NAME` tags in the repository.
fn last_runs(repo: &Repo) -> Result<Vec<(String, DateTime<Utc>)>> {
    let snaps = snapshots::list(repo)?;
    let mut out: Vec<(String, DateTime<Utc>)> = Vec::new();
    for s in &snaps {
        for t in &s.manifest.tags {
            if let Some(name) = t.strip_prefix("job=") {
                let time = s.manifest.time().with_timezone(&Utc);
                match out.iter_mut().find(|(n, _)| n == name) {
                    Some((_, t0)) if *t0 < time => *t0 = time,
                    Some(_) => {}
                    None => out.push((name.to_string(), time)),
                }
            }
        }
    }
    Ok(out)
}

fn init_logging(json: bool) {
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    if json {
        let _ = builder.json().flatten_event(true).try_init();
    } else {
        let _ = builder.try_init();
    }
}

pub fn serve(repo_path: PathBuf, args: ServeArgs) -> Result<ExitCode> {
    if let Some(name) = args.new_token {
        let mut raw = [0u8; 24];
        strata::repo::secure_random(&mut raw)?;
        let token: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        println!("token (give it to clients as `Authorization: Bearer TOKEN`; it is not stored):");
        println!("  {token}");
        println!("add to strata.toml:");
        println!(
            "[[token]]\nname = {name:?}\nblake3 = \"{}\"",
            blake3::hash(token.as_bytes())
        );
        return Ok(ExitCode::SUCCESS);
    }
    let mut cfg = ServeConfig::load(args.config.as_deref())?;
    if let Some(f) = args.log_format {
        cfg.json_logs = f == "json";
    }
    init_logging(cfg.json_logs);
    // Without a [[token]], the token kept in the token file (made now if missing).
    let token_path = if cfg.tokens.is_empty() {
        let path = match &cfg.token_file {
            Some(p) => p.clone(),
            None => token_file::default_path()?,
        };
        let token = token_file::load_or_create(&path)?;
        cfg.tokens.push(config::Token {
            name: "local".into(),
            hash: blake3::hash(token.as_bytes()),
        });
        Some(path)
    } else {
        None
    };
    let repo = cfg.repo.clone().unwrap_or(repo_path);
    let exe = std::env::current_exe().context("finding the strata executable")?;
    let backend = strata::repo::backend_for(&repo)?;
    let config = strata::repo::load_config(backend.as_ref(), &repo)?;
    let (passphrase, master) = if config.key_scheme == strata::crypto::SCHEME {
        // The configuration's password file, else the environment or a prompt. (Children get
        // the passphrase itself: see `operations`.)
        let pass = match &cfg.password_file {
            Some(f) => strata::crypto::read_passphrase_file(f)?,
            None => strata::crypto::passphrase("strata repository passphrase: ")?,
        };
        let master = strata::repo::unlock(backend.as_ref(), &config, &pass)?;
        (Some(pass), Some(master))
    } else {
        (None, None)
    };
    let (wtx, wrx) = mpsc::channel();
    let (vtx, vrx) = mpsc::channel();
    let now = Local::now();
    let daemon = Arc::new(Daemon {
        jobs: Mutex::new(
            cfg.jobs
                .iter()
                .map(|j| JobStatus {
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
                })
                .collect(),
        ),
        cfg,
        repo,
        exe,
        passphrase,
        master,
        ops: Mutex::new(VecDeque::new()),
        next_op: AtomicU64::new(1),
        writer: Mutex::new(wtx),
        verifier: Mutex::new(vtx),
        metrics: Metrics::new(),
        stopping: AtomicBool::new(false),
        children: Mutex::new(Vec::new()),
        started: Utc::now(),
        wake: (Mutex::new(()), Condvar::new()),
    });
    // When each job last ran, from the repository: a run missed while the daemon was down
    // runs once now.
    let previous = {
        let repo = daemon.open_read()?;
        last_runs(&repo)?
    };
    let mut due_now = Vec::new();
    for job in &daemon.cfg.jobs {
        let last = previous
            .iter()
            .find(|(n, _)| *n == job.name)
            .map(|(_, t)| t.with_timezone(&Local));
        let missed = match (job.schedule, last) {
            (Some(s), Some(l)) => s.missed(&l, &now),
            _ => false,
        };
        if job.on_start || missed {
            due_now.push(job.name.clone());
        }
        let next = job
            .schedule
            .map(|s| s.next_after(&last.unwrap_or(now).max(now)));
        daemon.with_job(&job.name, |j| {
            j.next_due = next;
            j.next_run = next.map(|t| t.to_rfc3339());
            if let Some(l) = last {
                j.last_success_at = Some(l.with_timezone(&Utc));
                j.last_success = Some(l.to_rfc3339());
            }
        });
        if missed {
            tracing::info!(
                job = job.name.as_str(),
                "a scheduled run was missed; running it now"
            );
        }
    }
    daemon.refresh_repo_metrics();
    // Every job's series exist from the start (at zero), so alerts on them work at once.
    for name in daemon
        .cfg
        .jobs
        .iter()
        .map(|j| j.name.as_str())
        .chain(["api"])
    {
        let label = Metrics::job(name);
        let m = &daemon.metrics;
        m.snapshots.get_or_create(&label).inc_by(0);
        m.failed.get_or_create(&label).inc_by(0);
        m.bytes_read.get_or_create(&label).inc_by(0);
        m.bytes_added.get_or_create(&label).inc_by(0);
        m.bytes_stored.get_or_create(&label).inc_by(0);
    }

    let mut threads = Vec::new();
    for (rx, lane) in [(wrx, "writer"), (vrx, "verifier")] {
        let d = daemon.clone();
        threads.push(
            std::thread::Builder::new()
                .name(lane.into())
                .spawn(move || {
                    while let Ok((id, task)) = rx.recv() {
                        d.run(id, task);
                    }
                })
                .context("starting a worker")?,
        );
    }
    for name in due_now {
        daemon.submit(Task::Job(name), "schedule")?;
    }
    let server = http::Server::start(daemon.clone())?;
    tracing::info!(
        listen = %daemon.cfg.listen,
        repo = %daemon.repo.display(),
        jobs = daemon.cfg.jobs.len(),
        "strata serve started"
    );
    if let Some(p) = &token_path {
        eprintln!(
            "strata serve: API token in {} (open http://{}/#token=$(cat {}))",
            p.display(),
            server.addr(),
            p.display()
        );
    }
    eprintln!("strata serve: listening on http://{}", server.addr());

    let term = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, term.clone()).context("installing a signal handler")?;
    }
    // The scheduler.
    while !term.load(Ordering::SeqCst) {
        let now = Local::now();
        let mut due = Vec::new();
        {
            let mut jobs = daemon.jobs.lock().unwrap_or_else(|e| e.into_inner());
            for j in jobs.iter_mut() {
                let Some(at) = j.next_due else { continue };
                if at > now {
                    continue;
                }
                let schedule = daemon.job_config(&j.name).and_then(|c| c.schedule);
                let next = schedule.map(|s| s.next_after(&at.max(now)));
                j.next_due = next;
                j.next_run = next.map(|t| t.to_rfc3339());
                if !j.queued && !j.running {
                    due.push(j.name.clone());
                }
            }
        }
        for name in due {
            if let Err(e) = daemon.submit(Task::Job(name.clone()), "schedule") {
                tracing::warn!(job = name.as_str(), error = format!("{e:#}"), "not started");
            }
        }
        let (lock, cv) = &daemon.wake;
        let guard = lock.lock().unwrap_or_else(|e| e.into_inner());
        let _ = cv.wait_timeout(guard, Duration::from_millis(200));
    }
    tracing::info!("shutting down: no new operations; waiting for the running one");
    daemon.stopping.store(true, Ordering::SeqCst);
    server.stop();
    // Closing the lanes ends the workers once the running operation is done; queued ones are
    // cancelled by `run`.
    drop(std::mem::replace(
        &mut *daemon.writer.lock().unwrap_or_else(|e| e.into_inner()),
        mpsc::channel().0,
    ));
    drop(std::mem::replace(
        &mut *daemon.verifier.lock().unwrap_or_else(|e| e.into_inner()),
        mpsc::channel().0,
    ));
    let deadline = Instant::now() + Duration::from_secs(daemon.cfg.shutdown_grace_s);
    let second = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        let _ = signal_hook::flag::register(sig, second.clone());
    }
    while threads.iter().any(|t| !t.is_finished()) {
        if Instant::now() >= deadline || second.load(Ordering::SeqCst) {
            let pids = daemon
                .children
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            tracing::warn!(
                children = pids.len(),
                "grace period over: stopping the running operation (the repository keeps its \
                 last committed state)"
            );
            for pid in pids {
                // SAFETY: kill has no memory effects; the pid is a child we started.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    for t in threads {
        let _ = t.join();
    }
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

//! The life of a `strata serve` process: setting up (configuration, API token, the repository's
//! key, the jobs' state), the workers and the listener, the scheduler loop until a signal, and a
//! shutdown that lets the running operation finish within the grace period.

use super::config::{self, ServeConfig};
use super::metrics::Metrics;
use super::{Daemon, JobStatus, ServeArgs, Task, http, token_file};
use anyhow::{Context, Result};
use chrono::{DateTime, Local, Utc};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use strata::repo::Repo;
use strata::snapshots;

/// The receiving ends of the writer's and the verifier's queues.
type Lanes = [(mpsc::Receiver<(u64, Task)>, &'static str); 2];

pub fn serve(repo_path: PathBuf, args: ServeArgs) -> Result<ExitCode> {
    if let Some(name) = args.new_token {
        return new_token(&name);
    }
    let mut cfg = ServeConfig::load(args.config.as_deref())?;
    if let Some(f) = args.log_format {
        cfg.json_logs = f == "json";
    }
    init_logging(cfg.json_logs);
    let token_path = local_token(&mut cfg)?;
    let (daemon, lanes) = open(cfg, repo_path)?;
    let due_now = catch_up(&daemon)?;
    daemon.refresh_repo_metrics();
    zero_job_series(&daemon);
    let workers = start_workers(&daemon, lanes)?;
    super::pg_watch::PgWatch::start(daemon.clone())?;
    for name in due_now {
        daemon.submit(Task::Job(name), "schedule")?;
    }
    let server = listen(&daemon, token_path.as_deref())?;
    let term = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, term.clone()).context("installing a signal handler")?;
    }
    schedule(&daemon, &term);
    shut_down(&daemon, server, workers);
    Ok(ExitCode::SUCCESS)
}

/// `strata serve --new-token NAME`: a new random token, and the `[[token]]` entry for it.
fn new_token(name: &str) -> Result<ExitCode> {
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
    Ok(ExitCode::SUCCESS)
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

/// Without a `[[token]]`, the token kept in the token file (made now if missing) is accepted;
/// returns that file.
fn local_token(cfg: &mut ServeConfig) -> Result<Option<PathBuf>> {
    if !cfg.tokens.is_empty() {
        return Ok(None);
    }
    let path = match &cfg.token_file {
        Some(p) => p.clone(),
        None => token_file::default_path()?,
    };
    let token = token_file::load_or_create(&path)?;
    cfg.tokens.push(config::Token {
        name: "local".into(),
        hash: blake3::hash(token.as_bytes()),
    });
    Ok(Some(path))
}

/// The daemon's state for `cfg`, with the repository's key unlocked if it is encrypted, and the
/// queues its workers will read.
fn open(cfg: ServeConfig, repo_path: PathBuf) -> Result<(Arc<Daemon>, Lanes)> {
    let repo = cfg.repo.clone().unwrap_or(repo_path);
    let exe = std::env::current_exe().context("finding the strata executable")?;
    let backend = strata::repo::backend_for(&repo)?;
    let config = strata::repo::load_config(backend.as_ref(), &repo)?;
    let (passphrase, master) = if config.key_scheme == strata::crypto::SCHEME {
        // The configuration's password file, else the environment or a prompt. (Children get
        // the passphrase itself: see `operations`.)
        let pass = super::super::environment::passphrase(
            cfg.password_file.as_deref(),
            "strata repository passphrase: ",
        )?;
        let master = strata::repo::unlock(backend.as_ref(), &config, &pass)?;
        (Some(pass), Some(master))
    } else {
        (None, None)
    };
    let (wtx, wrx) = mpsc::channel();
    let (vtx, vrx) = mpsc::channel();
    let cfg_pg = cfg.pg_archive.clone();
    let daemon = Arc::new(Daemon {
        jobs: Mutex::new(cfg.jobs.iter().map(JobStatus::new).collect()),
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
        followers: std::sync::OnceLock::new(),
        pg_watch: super::pg_watch::PgWatch::new(cfg_pg),
    });
    let followers = super::followers::Followers::new(&daemon)?;
    let _ = daemon.followers.set(followers);
    Ok((daemon, [(wrx, "writer"), (vrx, "verifier")]))
}

/// Sets each job's last success and next run from the snapshots in the repository, and returns
/// the jobs to run now: those run on start, and those whose scheduled run was missed while the
/// daemon was down (run once).
fn catch_up(daemon: &Daemon) -> Result<Vec<String>> {
    let now = Local::now();
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
    Ok(due_now)
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

/// Every job's series exist from the start (at zero), so alerts on them work at once.
fn zero_job_series(daemon: &Daemon) {
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
}

/// One thread per lane, running its operations in order until the lane is closed.
fn start_workers(daemon: &Arc<Daemon>, lanes: Lanes) -> Result<Vec<JoinHandle<()>>> {
    let mut threads = Vec::new();
    for (rx, lane) in lanes {
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
    Ok(threads)
}

/// Starts the HTTP server, and says where it listens (and, for a token file, how to open the
/// page with it).
fn listen(daemon: &Arc<Daemon>, token_path: Option<&Path>) -> Result<http::Server> {
    let server = http::Server::start(daemon.clone())?;
    tracing::info!(
        listen = %daemon.cfg.listen,
        repo = %daemon.repo.display(),
        jobs = daemon.cfg.jobs.len(),
        "strata serve started"
    );
    if let Some(p) = token_path {
        eprintln!(
            "strata serve: API token in {} (open http://{}/#token=$(cat {}))",
            p.display(),
            server.addr(),
            p.display()
        );
    }
    eprintln!("strata serve: listening on http://{}", server.addr());
    Ok(server)
}

/// The scheduler: queues each job when it is due, until `term` is set.
fn schedule(daemon: &Daemon, term: &AtomicBool) {
    while !term.load(Ordering::SeqCst) {
        if let Some(f) = daemon.followers.get() {
            f.tend(daemon);
        }
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
}

/// Takes no new operations, stops the listener, and waits for the running operation until the
/// grace period ends or a second signal comes; then stops the children still running.
fn shut_down(daemon: &Daemon, server: http::Server, workers: Vec<JoinHandle<()>>) {
    tracing::info!("shutting down: no new operations; waiting for the running one");
    daemon.stopping.store(true, Ordering::SeqCst);
    if let Some(f) = daemon.followers.get() {
        f.stop();
    }
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
    while workers.iter().any(|t| !t.is_finished()) {
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
    for t in workers {
        let _ = t.join();
    }
    tracing::info!("stopped");
}

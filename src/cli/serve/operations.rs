//! Running operations: each change to the repository is a child `strata` process; a job's run
//! is its snapshot, then its retention policy, then gc when enough garbage has accumulated.

use super::config::Job;
use super::metrics::Metrics;
use super::roots;
use super::{AdHoc, Daemon, RestoreRequest, Task, now_text};
use anyhow::{Context, Result, anyhow, bail};
use chrono::Utc;
use std::io::Read;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::Instant;
use strata::snapshots;

/// How long an operation waits for a repository lock another process holds.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(600);

thread_local! {
    /// The operation this worker thread runs, whose progress its child's lines report.
    static CURRENT_OP: std::cell::Cell<Option<u64>> = const { std::cell::Cell::new(None) };
}

impl Daemon {
    /// Runs `strata ARGS...`; while another process (a `strata` on the command line) holds the
    /// repository lock, waits for it, up to [`LOCK_WAIT`].
    fn child(&self, args: &[String]) -> Result<ChildOutput> {
        let until = Instant::now() + LOCK_WAIT;
        let mut said = false;
        loop {
            let out = self.child_once(args)?;
            let locked = out.code == Some(i32::from(super::super::EXIT_LOCKED));
            if !locked || Instant::now() >= until || self.stopping.load(Ordering::SeqCst) {
                return Ok(out);
            }
            if !said {
                tracing::info!(
                    holder = out.stderr.trim(),
                    "waiting for the repository lock"
                );
                said = true;
            }
            std::thread::sleep(std::time::Duration::from_secs(1));
        }
    }

    /// Runs `strata ARGS... ` against the repository; returns its exit code, its JSON output
    /// (if any) and the last lines of its error output.
    fn child_once(&self, args: &[String]) -> Result<ChildOutput> {
        let mut cmd = Command::new(&self.exe);
        cmd.arg("--repo")
            .arg(&self.repo)
            .args(args)
            .env(super::super::output::PROGRESS_LINES, "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(p) = &self.passphrase {
            cmd.env_remove("STRATA_PASSWORD_FILE")
                .env("STRATA_PASSWORD", p);
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", self.exe.display()))?;
        let pid = child.id();
        self.children
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(pid);
        let stderr = child.stderr.take();
        let op = CURRENT_OP.with(|c| c.get());
        let (out, status, errors) = std::thread::scope(|scope| {
            let errors = scope.spawn(|| {
                // Progress lines go to the operation; the rest is kept for its error.
                let mut s = String::new();
                let Some(e) = stderr else {
                    return s;
                };
                for line in
                    std::io::BufRead::lines(std::io::BufReader::new(e)).map_while(|l| l.ok())
                {
                    match (op, super::super::output::parse_progress_line(&line)) {
                        (Some(id), Some((done, total))) => self.update_op(id, |o| {
                            o.progress = Some(super::OpProgress { done, total })
                        }),
                        (_, Some(_)) => {}
                        (_, None) => {
                            s.push_str(&line);
                            s.push('\n');
                        }
                    }
                }
                s
            });
            let mut out = String::new();
            if let Some(o) = child.stdout.as_mut() {
                let _ = o.read_to_string(&mut out);
            }
            let status = child.wait();
            (out, status, errors.join().unwrap_or_default())
        });
        let status = status.context("waiting for a child strata")?;
        self.children
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|&p| p != pid);
        let tail: Vec<&str> = errors.lines().rev().take(5).collect();
        Ok(ChildOutput {
            code: status.code(),
            json: serde_json::from_str(&out).ok(),
            stderr: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
        })
    }

    /// Runs one operation to its end.
    pub(super) fn run(&self, id: u64, task: Task) {
        CURRENT_OP.with(|c| c.set(Some(id)));
        if self.stopping.load(Ordering::SeqCst) {
            self.update_op(id, |o| {
                o.status = "cancelled";
                o.error = Some("the daemon shut down before it started".into());
            });
            if let Task::Job(name) = &task {
                self.with_job(name, |j| j.queued = false);
            }
            return;
        }
        self.update_op(id, |o| {
            o.status = "running";
            o.started = Some(now_text());
        });
        let outcome = match &task {
            Task::Job(name) => self.run_job(name),
            Task::Snapshot(a) => self.run_adhoc(a),
            Task::Delete(s) => self.simple(&["delete".into(), s.clone()]),
            Task::Restore(r) => self.run_restore(r),
            Task::Verify { read_data } => {
                let mut args = vec!["verify".to_string(), "--json".into()];
                if *read_data {
                    args.push("--read-data".into());
                }
                self.simple(&args)
            }
        };
        let (status, result, error) = match outcome {
            Ok(Outcome { ok: true, json, .. }) => ("succeeded", json, None),
            Ok(Outcome {
                ok: false,
                json,
                error,
            }) => ("failed", json, error),
            Err(e) => ("failed", None, Some(format!("{e:#}"))),
        };
        if status == "failed" {
            tracing::warn!(
                op = id,
                error = error.as_deref().unwrap_or(""),
                "operation failed"
            );
        } else {
            tracing::info!(op = id, "operation succeeded");
        }
        self.update_op(id, |o| {
            o.status = status;
            o.finished = Some(now_text());
            o.result = result;
            o.error = error;
        });
    }

    /// A command whose exit code alone says whether it worked.
    fn simple(&self, args: &[String]) -> Result<Outcome> {
        let out = self.child(args)?;
        Ok(Outcome {
            ok: out.code == Some(0),
            error: (out.code != Some(0)).then(|| out.describe()),
            json: out.json,
        })
    }

    /// Runs a restore. The target is checked against `restore_roots` again here, just before
    /// the child starts (it may have changed since the request was accepted), and the child is
    /// given the resolved path.
    fn run_restore(&self, r: &RestoreRequest) -> Result<Outcome> {
        let roots = &self.cfg.restore_roots;
        let target = roots::restore_target(roots, &r.target).map_err(|e| anyhow!("{e}"))?;
        // A missing target is made private; an existing one keeps its mode (see below).
        let before = match std::fs::symlink_metadata(&target) {
            Ok(m) => m.permissions().mode() & 0o7777,
            Err(_) => {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(&target)
                    .with_context(|| format!("creating {}", target.display()))?;
                // What was made must still be where it was checked to be.
                if roots::restore_target(roots, &r.target).ok().as_ref() != Some(&target) {
                    bail!("{} changed while it was being made", r.target.display());
                }
                0o700
            }
        };
        let mut args = vec!["restore".to_string(), "--json".into()];
        for p in &r.paths {
            args.push(format!("--path={p}"));
        }
        if r.restore_point == Some(false) {
            args.push("--no-restore-point".into());
        }
        if r.delete {
            args.push("--delete".into());
        }
        // Options first, then `--`: a snapshot named like an option stays a name.
        match (&r.snapshot, &r.at) {
            (Some(s), None) => args.extend(["--".into(), s.clone()]),
            (None, Some(t)) => args.extend([format!("--at={t}"), "--".into()]),
            _ => bail!("give either snapshot or at"),
        }
        args.push(utf8(&target)?);
        let outcome = self.simple(&args);
        // The restore writes the snapshot's entries below the target, never the target's own
        // mode; should it ever be loosened, it is put back.
        if let Ok(m) = std::fs::symlink_metadata(&target)
            && m.is_dir()
            && m.permissions().mode() & 0o7777 & !before != 0
        {
            tracing::warn!(
                target = %target.display(),
                was = format!("{before:04o}"),
                now = format!("{:04o}", m.permissions().mode() & 0o7777),
                "the restore loosened its target directory's mode; putting it back"
            );
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(before))
                .with_context(|| format!("setting the mode of {}", target.display()))?;
        }
        outcome
    }

    /// Runs a snapshot of sources given in a request; they are checked against `backup_roots`
    /// again here, and the child is given the resolved paths.
    fn run_adhoc(&self, a: &AdHoc) -> Result<Outcome> {
        let (paths, sqlite) = roots::backup_sources(&self.cfg.backup_roots, &a.paths, &a.sqlite)
            .map_err(|e| anyhow!("{e}"))?;
        let mut args = vec![
            "backup".to_string(),
            "--json".into(),
            format!(
                "--kind={}",
                a.kind.clone().unwrap_or_else(|| "manual".into())
            ),
        ];
        if let Some(n) = &a.name {
            args.push(format!("--name={n}"));
        }
        for t in &a.tags {
            args.push(format!("--tag={t}"));
        }
        for s in &sqlite {
            args.push(format!("--sqlite={s}"));
        }
        args.push("--".into());
        for p in &paths {
            args.push(utf8(p)?);
        }
        self.snapshot("api", &args)
    }

    /// Runs a backup child and records its figures under `job`.
    fn snapshot(&self, job: &str, args: &[String]) -> Result<Outcome> {
        let started = Instant::now();
        let out = self.child(args);
        let label = Metrics::job(job);
        let m = &self.metrics;
        m.duration
            .get_or_create(&label)
            .observe(started.elapsed().as_secs_f64());
        let out = match out {
            Ok(o) => o,
            Err(e) => {
                m.failed.get_or_create(&label).inc();
                return Err(e);
            }
        };
        let saved = matches!(out.code, Some(0) | Some(4)) && out.json.is_some();
        if saved {
            m.snapshots.get_or_create(&label).inc();
            if let Some(stats) = out.json.as_ref().and_then(|j| j.get("stats")) {
                let n = |k: &str| stats.get(k).and_then(|v| v.as_u64()).unwrap_or(0);
                m.bytes_read.get_or_create(&label).inc_by(n("bytes_read"));
                m.bytes_added
                    .get_or_create(&label)
                    .inc_by(n("new_raw_bytes"));
                m.bytes_stored
                    .get_or_create(&label)
                    .inc_by(n("new_stored_bytes"));
            }
        }
        let ok = out.code == Some(0) && saved;
        if ok {
            m.last_success
                .get_or_create(&label)
                .set(Utc::now().timestamp());
        } else {
            m.failed.get_or_create(&label).inc();
        }
        let error = if ok {
            None
        } else if out.code == Some(4) {
            Some(format!("partial snapshot: {}", out.describe()))
        } else {
            Some(out.describe())
        };
        Ok(Outcome {
            ok,
            json: out.json,
            error,
        })
    }

    fn run_job(&self, name: &str) -> Result<Outcome> {
        let Some(job) = self.job_config(name).cloned() else {
            bail!("no job named {name:?}");
        };
        self.with_job(name, |j| {
            j.running = true;
            j.queued = false;
            j.last_run = Some(now_text());
        });
        tracing::info!(job = name, "snapshot started");
        let result = self.snapshot(name, &backup_args(&job));
        let (status, error) = match &result {
            Ok(o) if o.ok => ("succeeded", None),
            Ok(o) => ("failed", o.error.clone()),
            Err(e) => ("failed", Some(format!("{e:#}"))),
        };
        let mut after = Vec::new();
        if matches!(&result, Ok(o) if o.json.is_some()) {
            if let Err(e) = self.retain(&job) {
                after.push(format!("retention: {e:#}"));
            }
            if let Err(e) = self.collect_garbage() {
                after.push(format!("gc: {e:#}"));
            }
        }
        self.refresh_repo_metrics();
        let error = match (error, after.is_empty()) {
            (e, true) => e,
            (Some(e), false) => Some(format!("{e}; {}", after.join("; "))),
            (None, false) => Some(after.join("; ")),
        };
        let ok = status == "succeeded" && after.is_empty();
        self.with_job(name, |j| {
            j.running = false;
            j.last_status = Some(if ok { "succeeded" } else { "failed" });
            j.last_error = error.clone();
            if status == "succeeded" {
                j.last_success_at = Some(Utc::now());
                j.last_success = Some(now_text());
            }
        });
        match &error {
            Some(e) => tracing::warn!(job = name, error = e.as_str(), "snapshot run failed"),
            None => tracing::info!(job = name, "snapshot run succeeded"),
        }
        result.map(|o| Outcome { ok, error, ..o })
    }

    /// Applies the job's retention policy to the job's own snapshots.
    fn retain(&self, job: &Job) -> Result<()> {
        if job.retention.is_none() && job.max_snapshots.is_none() {
            return Ok(());
        }
        let mut args = vec![
            "forget".to_string(),
            "--json".into(),
            "--tag".into(),
            job_tag(&job.name),
        ];
        if let Some(p) = &job.retention {
            // The rules' names are forget's flags.
            for (rule, v) in p.counts() {
                if let Some(n) = v {
                    args.push(format!("--{rule}"));
                    args.push(n.to_string());
                }
            }
            if let Some(ns) = p.keep_within_ns {
                args.push("--keep-within".into());
                args.push(format!("{}s", ns / 1_000_000_000));
            }
            for t in &p.keep_tags {
                args.push("--keep-tag".into());
                args.push(t.clone());
            }
        } else {
            // Only the cap: everything is kept by the policy, then the cap applies.
            args.push("--keep-within".into());
            args.push("100y".into());
        }
        if let Some(n) = job.max_snapshots {
            args.push("--max-snapshots".into());
            args.push(n.to_string());
        }
        let out = self.child(&args)?;
        if out.code != Some(0) {
            bail!("{}", out.describe());
        }
        let removed = out.json.as_ref().and_then(|j| j.as_array()).map_or(0, |a| {
            a.iter()
                .filter(|d| d.get("keep").and_then(|k| k.as_bool()) == Some(false))
                .count()
        });
        if removed > 0 {
            tracing::info!(job = job.name.as_str(), removed, "retention applied");
        }
        self.metrics.forgotten.inc_by(removed as u64);
        Ok(())
    }

    /// Runs gc when what it would reclaim reaches `gc_min_garbage`.
    fn collect_garbage(&self) -> Result<()> {
        let plan = self.child(&["gc".into(), "--dry-run".into(), "--json".into()])?;
        if plan.code != Some(0) {
            bail!("{}", plan.describe());
        }
        let would = plan.number("bytes_reclaimed");
        if would < self.cfg.gc_min_garbage.max(1) {
            return Ok(());
        }
        let done = self.child(&["gc".into(), "--json".into()])?;
        if done.code != Some(0) {
            bail!("{}", done.describe());
        }
        let reclaimed = done.number("bytes_reclaimed");
        self.metrics.gc_runs.inc();
        self.metrics.gc_reclaimed.inc_by(reclaimed);
        tracing::info!(reclaimed, "gc ran");
        Ok(())
    }

    pub(super) fn refresh_repo_metrics(&self) {
        let figures = self.open_read().and_then(|repo| {
            let snaps = snapshots::list(&repo)?;
            Ok(strata::stats::stats(&repo, &snaps)?)
        });
        match figures {
            Ok(s) => {
                self.metrics.repo_bytes.set(s.stored_bytes as i64);
                self.metrics.repo_snapshots.set(s.snapshots as i64);
                self.metrics.dedup_ratio.set(s.dedup_ratio);
            }
            Err(e) => tracing::warn!(error = format!("{e:#}"), "repository figures"),
        }
    }
}

struct ChildOutput {
    code: Option<i32>,
    json: Option<serde_json::Value>,
    stderr: String,
}

impl ChildOutput {
    /// A number at the top of the JSON output (0 if absent).
    fn number(&self, key: &str) -> u64 {
        self.json
            .as_ref()
            .and_then(|j| j.get(key))
            .and_then(|v| v.as_u64())
            .unwrap_or(0)
    }

    fn describe(&self) -> String {
        let code = match self.code {
            Some(c) => format!("exit code {c}"),
            None => "killed by a signal".into(),
        };
        if self.stderr.trim().is_empty() {
            code
        } else {
            format!("{} ({code})", self.stderr.trim())
        }
    }
}

struct Outcome {
    ok: bool,
    json: Option<serde_json::Value>,
    error: Option<String>,
}

/// A path as a child's argument; one that is not UTF-8 is refused rather than changed.
fn utf8(p: &Path) -> Result<String> {
    p.to_str()
        .map(str::to_string)
        .ok_or_else(|| anyhow!("{}: not a UTF-8 path", p.display()))
}

fn job_tag(name: &str) -> String {
    format!("job={name}")
}

/// `strata backup` arguments for a job, as its configuration names its sources.
fn backup_args(job: &Job) -> Vec<String> {
    let mut a = vec![
        "backup".to_string(),
        "--json".into(),
        "--kind".into(),
        job.kind.clone(),
        "--tag".into(),
        job_tag(&job.name),
    ];
    let mut flag = |f: &str, vals: &[String]| {
        for v in vals {
            a.push(f.to_string());
            a.push(v.clone());
        }
    };
    flag("--tag", &job.tags);
    flag("--sqlite", &job.sqlite);
    flag("--postgres", &job.postgres);
    flag("--pg-base", &job.pg_base);
    flag("--redis", &job.redis);
    flag("--from-command", &job.commands);
    flag("--exclude", &job.exclude);
    a.push("--".into());
    a.extend(job.paths.iter().map(|p| p.display().to_string()));
    a
}

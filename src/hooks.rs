//! Commands run around a job that touches an application's data: `before` when the job starts
//! (a backup's capture, a restore's changes to its target), `after` when it ends. An application
//! that can pause, or be stopped and started, uses them to stay out of the job's way.

use crate::error::{Error, Result};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Commands run around a job: `before` when it starts (the job fails if it does), `after` when
/// it ends, whether it succeeded or not.
#[derive(Clone, Debug)]
pub struct Hooks {
    pub before: Option<String>,
    pub after: Option<String>,
    /// How long each may run before it is killed (and counts as failed).
    pub timeout: Duration,
}

impl Default for Hooks {
    fn default() -> Self {
        Hooks {
            before: None,
            after: None,
            timeout: Duration::from_secs(60),
        }
    }
}

impl Hooks {
    /// Runs `job` between the hooks: the before hook first (when it fails, `job` does not run
    /// and its error is the result), then `job`, then the after hook, whatever happened before.
    /// Returns the job's result (or the before hook's failure) and the after hook's.
    pub fn around<T, E: From<Error>>(
        &self,
        job: impl FnOnce() -> std::result::Result<T, E>,
    ) -> (std::result::Result<T, E>, Result<()>) {
        let hook = |which, cmd: &Option<String>| match cmd {
            Some(cmd) => run_hook(which, cmd, self.timeout),
            None => Ok(()),
        };
        let result = match hook("before", &self.before) {
            Ok(()) => job(),
            Err(e) => Err(E::from(e)),
        };
        let after = hook("after", &self.after);
        (result, after)
    }
}

/// Runs a hook (`sh -c CMD`), killing it and its children after `timeout`. Its output is kept
/// for the error message, not printed.
pub fn run_hook(which: &str, cmd: &str, timeout: Duration) -> Result<()> {
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|e| Error::io(format!("{which} hook: starting sh"), e))?;
    let (out_t, err_t) = (drain(child.stdout.take()), drain(child.stderr.take()));
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if started.elapsed() >= timeout => {
                // SAFETY: kill has no memory-safety preconditions; the group is the hook's own.
                unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
                let _ = child.wait();
                break None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => return Err(Error::io(format!("{which} hook: waiting"), e)),
        }
    };
    let _ = out_t.join();
    let stderr = err_t.join().unwrap_or_default();
    let tail = String::from_utf8_lossy(&stderr);
    let tail = tail.trim();
    let tail = match tail.char_indices().rev().nth(400) {
        Some((i, _)) => &tail[i..],
        None => tail,
    };
    let said = if tail.is_empty() {
        String::new()
    } else {
        format!(": {tail}")
    };
    match status {
        Some(s) if s.success() => Ok(()),
        Some(s) => Err(Error::invalid(format!(
            "{which} hook {cmd:?} failed ({s}){said}"
        ))),
        None => Err(Error::invalid(format!(
            "{which} hook {cmd:?} did not finish within {} s and was killed{said}",
            timeout.as_secs_f64()
        ))),
    }
}

/// Reads a pipe to its end on a thread of its own.
fn drain<R: std::io::Read + Send + 'static>(pipe: Option<R>) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_end(&mut bytes);
        }
        bytes
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hooks_report_failure_output_and_timeouts() {
        run_hook("before", "true", Duration::from_secs(5)).unwrap();
        let e = run_hook(
            "before",
            "echo paused-not >&2; exit 3",
            Duration::from_secs(5),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("before hook") && e.contains("paused-not"), "{e}");
        let e = run_hook("after", "sleep 30", Duration::from_millis(200))
            .unwrap_err()
            .to_string();
        assert!(e.contains("did not finish"), "{e}");
    }

    #[test]
    fn the_after_hook_runs_whatever_happened_before() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        let hooks = |before: &str| Hooks {
            before: Some(format!("{before} && echo before >> {}", log.display())),
            after: Some(format!("echo after >> {}", log.display())),
            timeout: Duration::from_secs(30),
        };
        let ran = std::cell::Cell::new(0);
        let job = || -> Result<u32> {
            ran.set(ran.get() + 1);
            std::fs::write(dir.path().join("job"), b"")
                .map_err(|e| Error::io("job", e))
                .map(|()| 7)
        };
        let (result, after) = hooks("true").around(job);
        assert_eq!((result.unwrap(), after.is_ok()), (7, true));
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "before\nafter\n");
        // A failing before hook: the job does not run, the after hook does.
        std::fs::remove_file(&log).unwrap();
        let (result, after) = hooks("false").around(job);
        let e = result.unwrap_err().to_string();
        assert!(e.contains("before hook"), "{e}");
        assert!(after.is_ok());
        assert_eq!(ran.get(), 1);
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "after\n");
    }
}

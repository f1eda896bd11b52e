//! Waiting for a database's log to change: inotify on the database's directory (a commit
//! writes the `-wal` file), with a poll as the fallback and the upper bound of every wait.
//!
//! A wakeup on a write runs the follower right beside the application's writer, often on its
//! CPU (the scheduler puts a task woken by another near it), in the middle of its commit: on a
//! 2-CPU machine that showed in the writer's commit latency (p99 +35% at 100 commits/s). So a
//! write only wakes a follower that was idle; while the database is busy, rounds come from the
//! clock and the events are only drained ([`LogWatch::drain`]).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

/// A watch on the directory of one database.
pub struct LogWatch {
    fd: Option<OwnedFd>,
}

impl LogWatch {
    /// Watches the directory of `db`; without inotify, every wait is the whole timeout.
    pub fn new(db: &Path) -> LogWatch {
        let dir = match db.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        LogWatch {
            fd: watch(dir).ok(),
        }
    }

    /// Whether writes wake a waiting follower (without inotify, every wait is a poll).
    pub fn watching(&self) -> bool {
        self.fd.is_some()
    }

    /// Whether something in the directory was written, created or removed since the last
    /// wait or drain, without waiting.
    pub fn drain(&mut self) -> bool {
        let Some(fd) = &self.fd else {
            return false;
        };
        let mut seen = false;
        let mut buf = [0u8; 4096];
        loop {
            // SAFETY: reading into a buffer of the length given; the descriptor is non-blocking.
            let r = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if r <= 0 {
                return seen;
            }
            seen = true;
        }
    }

    /// Waits until something in the directory is written, created or removed, or `timeout`.
    pub fn wait(&mut self, timeout: Duration) {
        let Some(fd) = &self.fd else {
            std::thread::sleep(timeout);
            return;
        };
        let mut p = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd for the duration of the call.
        let n = unsafe { libc::poll(&mut p, 1, ms) };
        if n > 0 {
            // What changed is read from the log itself.
            self.drain();
        }
    }
}

fn watch(dir: &Path) -> std::io::Result<OwnedFd> {
    use std::os::unix::ffi::OsStrExt;
    // SAFETY: plain system calls; the descriptor is owned from here on.
    let raw = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
    if raw < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `raw` is a new descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut path = dir.as_os_str().as_bytes().to_vec();
    path.push(0);
    let mask = libc::IN_MODIFY | libc::IN_CREATE | libc::IN_DELETE | libc::IN_MOVED_TO;
    // SAFETY: `path` is NUL-terminated and outlives the call.
    let w = unsafe { libc::inotify_add_watch(fd.as_raw_fd(), path.as_ptr().cast(), mask) };
    if w < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(fd)
}

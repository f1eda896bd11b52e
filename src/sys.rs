//! What strata asks of the operating system beyond files: random bytes, the host's name,
//! whether a process lives. Knows nothing of repositories.

use crate::error::{Error, Result};
use std::fs;

/// Random bytes from the kernel, or an error: for keys and nonces, which must be secret.
pub fn secure_random(buf: &mut [u8]) -> Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        let rest = &mut buf[filled..];
        // SAFETY: the pointer and length describe the writable rest of `buf`.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(Error::io("getrandom", e));
        }
        filled += n as usize;
    }
    Ok(())
}

/// Random bytes from the kernel.
pub fn getrandom(buf: &mut [u8]) {
    use std::io::Read;
    let filled = fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(buf));
    if filled.is_err() {
        // Fall back to time and pid: ids only need to be unique, not secret, without a key scheme.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let h = blake3::hash(format!("{t}-{}", std::process::id()).as_bytes());
        for (b, s) in buf.iter_mut().zip(h.as_bytes().iter().cycle()) {
            *b = *s;
        }
    }
}

pub fn hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// Whether a process with this pid exists on this machine.
pub fn pid_alive(pid: u32) -> bool {
    // SAFETY: kill with signal 0 only checks for existence and permission.
    let r = unsafe { libc::kill(pid as libc::pid_t, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// A file's modification time in nanoseconds since the epoch.
pub(crate) fn mtime_ns(m: &std::fs::Metadata) -> i64 {
    use std::os::unix::fs::MetadataExt;
    m.mtime().saturating_mul(1_000_000_000) + m.mtime_nsec()
}

/// A file's status-change time in nanoseconds since the epoch.
pub(crate) fn ctime_ns(m: &std::fs::Metadata) -> i64 {
    use std::os::unix::fs::MetadataExt;
    m.ctime().saturating_mul(1_000_000_000) + m.ctime_nsec()
}

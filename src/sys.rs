//! What strata asks of the operating system beyond files: random bytes, the host's name,
//! whether a process lives. Knows nothing of repositories.

use crate::error::{Error, IoContext, Result};
use std::fs::{self, File};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

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

/// Makes the directory's entries durable (after a create, rename or delete inside it).
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .ctx("fsync directory", dir)
}

/// Sets a file's modification time (nanoseconds since the epoch), through a symlink if `follow`.
pub(crate) fn set_mtime(path: &Path, mtime_ns: i64, follow: bool) -> Result<()> {
    let ts = libc::timespec {
        tv_sec: mtime_ns.div_euclid(1_000_000_000) as libc::time_t,
        tv_nsec: mtime_ns.rem_euclid(1_000_000_000) as libc::c_long,
    };
    let times = [
        libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        ts,
    ];
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| Error::invalid("path contains NUL"))?;
    let flags = if follow { 0 } else { libc::AT_SYMLINK_NOFOLLOW };
    // SAFETY: c is a valid NUL-terminated path and times points to two timespecs.
    let r = unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), flags) };
    if r != 0 {
        return Err(Error::io_path(
            "set mtime",
            path,
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// Swaps `staged` and `dest` in one step where the filesystem can (`RENAME_EXCHANGE`); else
/// moves `dest` to `aside` (a path beside `staged`, in the same directory) and `staged` to
/// `dest`. Returns where the tree that was at `dest` is now.
pub(crate) fn exchange(staged: &Path, dest: &Path, aside: &Path) -> Result<PathBuf> {
    let stage_dir = staged.parent().unwrap_or(Path::new("/"));
    let a = std::ffi::CString::new(staged.as_os_str().as_bytes())
        .map_err(|_| Error::invalid("path contains NUL"))?;
    let b = std::ffi::CString::new(dest.as_os_str().as_bytes())
        .map_err(|_| Error::invalid("path contains NUL"))?;
    // SAFETY: both are valid NUL-terminated paths; renameat2 only reads them.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if r == 0 {
        sync_dir(stage_dir)?;
        return Ok(staged.to_path_buf());
    }
    let err = std::io::Error::last_os_error();
    if !matches!(
        err.raw_os_error(),
        Some(libc::EINVAL) | Some(libc::ENOSYS) | Some(libc::EOPNOTSUPP)
    ) {
        return Err(Error::io_path("swap in the restored directory", dest, err));
    }
    fs::rename(dest, aside).ctx("move aside", dest)?;
    if let Err(e) = fs::rename(staged, dest) {
        // Put the old directory back rather than leave nothing there.
        return Err(match fs::rename(aside, dest) {
            Ok(()) => Error::io_path("swap in the restored directory", dest, e),
            Err(_) => Error::io(
                format!(
                    "swap in the restored directory {} (what was there is now at {})",
                    dest.display(),
                    aside.display()
                ),
                e,
            ),
        });
    }
    sync_dir(stage_dir)?;
    Ok(aside.to_path_buf())
}

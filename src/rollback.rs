//! What a restore changed in its target, so that a failed restore can undo exactly that and
//! nothing else. Files the restore never touched keep their inodes (an application holding one
//! open goes on writing to the file that is there), their hard links, and whatever they are
//! (fifos and sockets included).
//!
//! A restore records, as it goes: files and symlinks it put where nothing was, existing ones it
//! replaced, SQLite logs it removed beside a replaced database, directories it created, existing
//! directories whose owner, mode or time it set, and existing directories it swapped whole. A
//! swapped directory's previous tree is kept in its staging directory until the changes are
//! kept ([`Changes::keep`], also on drop: the staging directory goes) or undone
//! ([`Changes::undo`]: the previous tree is swapped back, the very inodes that were there).

use crate::error::{IoContext, Result};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// One change a restore made below its target. Paths are absolute, below the resolved target.
#[derive(Debug)]
pub enum Change {
    /// A file or symlink put where nothing was.
    Created(PathBuf),
    /// An existing file, symlink or special file replaced by the snapshot's.
    Replaced(PathBuf),
    /// A file deleted: a SQLite log (`-wal`, `-journal`...) of a database that was replaced.
    Removed(PathBuf),
    /// A directory created.
    CreatedDir(PathBuf),
    /// An existing directory whose owner, mode or time was set; what they were.
    DirMeta {
        path: PathBuf,
        uid: u32,
        gid: u32,
        mode: u32,
        mtime_ns: i64,
    },
    /// An existing directory replaced whole by a staged copy; the tree that was there is now at
    /// `old`, inside the staging directory `stage`.
    Swapped {
        dest: PathBuf,
        old: PathBuf,
        stage: PathBuf,
    },
}

/// The changes of one restore (see the module documentation).
#[derive(Debug, Default)]
pub struct Changes {
    list: Mutex<Vec<Change>>,
}

impl Changes {
    pub fn new() -> Self {
        Changes::default()
    }

    pub(crate) fn record(&self, change: Change) {
        self.list
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(change);
    }

    /// True when the restore changed nothing in its target.
    pub fn is_empty(&self) -> bool {
        self.list
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
    }

    /// Makes the changes final: the trees that swapped directories replaced are removed.
    pub fn keep(self) {
        drop(self);
    }

    /// Puts back what the restore changed, and only that: swapped directories get their
    /// previous trees back, created files and directories go, directories get their owner,
    /// mode and time back, and `put_back` is asked to restore the files that were replaced
    /// (first list) or removed (second list) from a copy taken before (a restore point). Returns
    /// what could not be put back, one line each.
    pub fn undo(self, put_back: &mut PutBack) -> Vec<String> {
        let list = std::mem::take(&mut *self.list.lock().unwrap_or_else(|p| p.into_inner()));
        let mut problems = Vec::new();
        let (mut replaced, mut removed, mut dirs, mut metas) = (vec![], vec![], vec![], vec![]);
        for change in list.into_iter().rev() {
            match change {
                Change::Swapped { dest, old, stage } => match swap_back(&dest, &old, &stage) {
                    Ok(()) => {
                        let _ = fs::remove_dir_all(&stage);
                    }
                    Err(e) => problems.push(format!(
                        "{}: {e}; the directory that was there is kept at {}",
                        dest.display(),
                        old.display()
                    )),
                },
                Change::Created(path) => match fs::symlink_metadata(&path) {
                    Ok(m) if !m.is_dir() => {
                        if let Err(e) = fs::remove_file(&path) {
                            problems.push(format!("{}: remove: {e}", path.display()));
                        }
                    }
                    _ => {}
                },
                Change::Replaced(path) => replaced.push(path),
                Change::Removed(path) => removed.push(path),
                Change::CreatedDir(path) => dirs.push(path),
                meta @ Change::DirMeta { .. } => metas.push(meta),
            }
        }
        if !replaced.is_empty() || !removed.is_empty() {
            match put_back(&replaced, &removed) {
                Ok(p) => problems.extend(p),
                Err(e) => problems.push(format!(
                    "putting back {} replaced file(s): {e}",
                    replaced.len() + removed.len()
                )),
            }
        }
        // Deepest first, so a directory is empty when its turn comes.
        dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        for d in dirs {
            match fs::remove_dir(&d) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => problems.push(format!("{}: remove directory: {e}", d.display())),
            }
        }
        for meta in metas {
            if let Change::DirMeta {
                path,
                uid,
                gid,
                mode,
                mtime_ns,
            } = meta
                && let Err(e) = set_dir_meta(&path, uid, gid, mode, mtime_ns)
            {
                problems.push(e.to_string());
            }
        }
        problems
    }
}

/// Restores the files a restore replaced (first list) and removed (second list) from a copy
/// taken before it; returns what it could not put back.
pub type PutBack<'a> = dyn FnMut(&[PathBuf], &[PathBuf]) -> Result<Vec<String>> + 'a;

impl Drop for Changes {
    fn drop(&mut self) {
        let list = self.list.get_mut().unwrap_or_else(|p| p.into_inner());
        for change in list.drain(..) {
            if let Change::Swapped { stage, .. } = change {
                let _ = fs::remove_dir_all(&stage);
            }
        }
    }
}

/// Swaps the previous tree at `old` back to `dest`; the restored tree ends up in `stage`.
fn swap_back(dest: &Path, old: &Path, stage: &Path) -> Result<()> {
    crate::sys::exchange(old, dest, &stage.join(".new"))?;
    Ok(())
}

fn set_dir_meta(path: &Path, uid: u32, gid: u32, mode: u32, mtime_ns: i64) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        std::os::unix::fs::lchown(path, Some(uid), Some(gid)).ctx("set owner", path)?;
    }
    fs::set_permissions(path, fs::Permissions::from_mode(mode & 0o7777))
        .ctx("set permissions", path)?;
    crate::sys::set_mtime(path, mtime_ns, true)
}

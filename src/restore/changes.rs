//! What a restore changed in its target, so that a failed restore can undo exactly that and
//! nothing else. Files the restore never touched keep their inodes (an application holding one
//! open goes on writing to the file that is there), their hard links, and whatever they are
//! (fifos and sockets included).
//!
//! A restore records, as it goes: files and symlinks it put where nothing was, existing ones it
//! replaced, open databases it wrote into, SQLite logs it removed beside a replaced database,
//! directories it created, existing directories whose owner, mode or time it set, and existing
//! directories it swapped whole. A swapped directory's previous tree is kept in its staging
//! directory until the changes are kept ([`Changes::keep`], also on drop: the staging directory
//! goes) or undone ([`Changes::undo`]: the previous tree is swapped back, the very inodes that
//! were there). An open database written in place is put back the way it was written: its
//! previous content from the restore point, through SQLite.

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
    /// A database an application had open, written in place through SQLite (see
    /// [`crate::restore::live`]): the same file, with the snapshot's content.
    Rewritten(PathBuf),
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
                Change::Replaced(path) | Change::Rewritten(path) => replaced.push(path),
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};

    fn inode(p: &Path) -> u64 {
        fs::symlink_metadata(p).unwrap().ino()
    }

    /// A target with a file, a hard-linked pair, a fifo and a directory that a restore will not
    /// touch, and a file and a SQLite log it will replace and remove.
    fn target() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path().join("target");
        fs::create_dir_all(t.join("keep")).unwrap();
        fs::write(t.join("untouched"), b"u").unwrap();
        fs::write(t.join("keep/linked"), b"l").unwrap();
        fs::hard_link(t.join("keep/linked"), t.join("keep/link")).unwrap();
        let fifo = std::ffi::CString::new(t.join("fifo").into_os_string().into_encoded_bytes());
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.unwrap().as_ptr(), 0o600) }, 0);
        fs::write(t.join("app.db"), b"old").unwrap();
        (dir, t)
    }

    #[test]
    fn undo_reverts_only_what_was_recorded() {
        let (_dir, t) = target();
        let untouched = ["untouched", "keep/linked", "keep/link", "fifo", "keep"]
            .map(|p| (p, inode(&t.join(p))));
        let changes = Changes::new();
        // What a restore does: replaces app.db (by rename), removes its log, creates a file and
        // a directory with a file in it.
        fs::write(t.join(".new"), b"new").unwrap();
        fs::rename(t.join(".new"), t.join("app.db")).unwrap();
        changes.record(Change::Replaced(t.join("app.db")));
        changes.record(Change::Removed(t.join("app.db-wal")));
        fs::write(t.join("created"), b"c").unwrap();
        changes.record(Change::Created(t.join("created")));
        fs::create_dir_all(t.join("made/deeper")).unwrap();
        changes.record(Change::CreatedDir(t.join("made")));
        changes.record(Change::CreatedDir(t.join("made/deeper")));
        fs::write(t.join("made/deeper/file"), b"f").unwrap();
        changes.record(Change::Created(t.join("made/deeper/file")));
        assert!(!changes.is_empty());

        let mut asked = Vec::new();
        let problems = changes.undo(&mut |replaced: &[PathBuf], removed: &[PathBuf]| {
            asked.push((replaced.to_vec(), removed.to_vec()));
            fs::write(&replaced[0], b"old").unwrap();
            Ok(vec![])
        });
        assert_eq!(problems, Vec::<String>::new());
        // Replaced and removed files are asked for once, from the restore point.
        assert_eq!(
            asked,
            vec![(vec![t.join("app.db")], vec![t.join("app.db-wal")])]
        );
        assert_eq!(fs::read(t.join("app.db")).unwrap(), b"old");
        assert!(!t.join("created").exists());
        assert!(!t.join("made").exists());
        // Everything else is the very same inode, the linked pair still one.
        for (p, ino) in untouched {
            assert_eq!(inode(&t.join(p)), ino, "{p}");
        }
        assert!(
            fs::symlink_metadata(t.join("fifo"))
                .unwrap()
                .file_type()
                .is_fifo()
        );
        assert_eq!(fs::metadata(t.join("keep/link")).unwrap().nlink(), 2);
    }

    #[test]
    fn nothing_recorded_nothing_undone() {
        let (_dir, t) = target();
        let changes = Changes::new();
        assert!(changes.is_empty());
        let problems =
            changes.undo(&mut |_: &[PathBuf], _: &[PathBuf]| panic!("nothing was replaced"));
        assert!(problems.is_empty());
        assert_eq!(fs::read(t.join("app.db")).unwrap(), b"old");
        assert_eq!(fs::read(t.join("untouched")).unwrap(), b"u");
    }

    #[test]
    fn a_created_path_that_became_a_directory_is_left() {
        // A path recorded as created is removed only while it is not a directory (a directory
        // there is not the file the restore made).
        let (_dir, t) = target();
        let changes = Changes::new();
        fs::create_dir(t.join("created")).unwrap();
        changes.record(Change::Created(t.join("created")));
        assert!(
            changes
                .undo(&mut |_: &[PathBuf], _: &[PathBuf]| Ok(vec![]))
                .is_empty()
        );
        assert!(t.join("created").is_dir());
    }

    #[test]
    fn directory_metadata_is_set_back() {
        let (_dir, t) = target();
        let keep = t.join("keep");
        let before = fs::metadata(&keep).unwrap();
        let changes = Changes::new();
        changes.record(Change::DirMeta {
            path: keep.clone(),
            uid: before.uid(),
            gid: before.gid(),
            mode: before.mode(),
            mtime_ns: crate::sys::mtime_ns(&before),
        });
        fs::set_permissions(&keep, fs::Permissions::from_mode(0o700)).unwrap();
        crate::sys::set_mtime(&keep, 1_000_000_000, true).unwrap();
        assert!(
            changes
                .undo(&mut |_: &[PathBuf], _: &[PathBuf]| Ok(vec![]))
                .is_empty()
        );
        let after = fs::metadata(&keep).unwrap();
        assert_eq!(after.mode() & 0o7777, before.mode() & 0o7777);
        assert_eq!(crate::sys::mtime_ns(&after), crate::sys::mtime_ns(&before));
    }

    /// Swaps a staged `app` in for the target's, as a restore does; returns the changes.
    fn swapped(t: &Path) -> (Changes, PathBuf) {
        let stage = t.join(".app.strata-restore.1.0");
        fs::create_dir_all(stage.join("app")).unwrap();
        fs::write(stage.join("app/new"), b"n").unwrap();
        let old =
            crate::sys::exchange(&stage.join("app"), &t.join("app"), &stage.join(".old")).unwrap();
        let changes = Changes::new();
        changes.record(Change::Swapped {
            dest: t.join("app"),
            old,
            stage: stage.clone(),
        });
        (changes, stage)
    }

    #[test]
    fn a_swapped_directory_comes_back_as_the_same_inodes() {
        let (_dir, t) = target();
        fs::create_dir(t.join("app")).unwrap();
        fs::write(t.join("app/a"), b"a").unwrap();
        fs::hard_link(t.join("app/a"), t.join("app/b")).unwrap();
        let (app, a) = (inode(&t.join("app")), inode(&t.join("app/a")));
        let (changes, stage) = swapped(&t);
        assert!(t.join("app/new").exists());
        assert!(
            changes
                .undo(&mut |_: &[PathBuf], _: &[PathBuf]| Ok(vec![]))
                .is_empty()
        );
        assert_eq!(inode(&t.join("app")), app);
        assert_eq!(inode(&t.join("app/a")), a);
        assert_eq!(inode(&t.join("app/b")), a);
        assert!(!t.join("app/new").exists());
        assert!(!stage.exists(), "the staging directory goes");
    }

    #[test]
    fn keeping_removes_only_the_replaced_tree() {
        let (_dir, t) = target();
        fs::create_dir(t.join("app")).unwrap();
        fs::write(t.join("app/a"), b"a").unwrap();
        let (changes, stage) = swapped(&t);
        let restored = inode(&t.join("app"));
        changes.keep();
        assert!(!stage.exists());
        assert_eq!(inode(&t.join("app")), restored);
        assert!(t.join("app/new").exists() && !t.join("app/a").exists());
        assert_eq!(fs::read(t.join("untouched")).unwrap(), b"u");
    }
}

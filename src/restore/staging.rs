//! Restoring over an existing directory: the snapshot's tree is restored into a staging
//! directory beside it, what the existing directory has and the snapshot does not is carried
//! over, and the two are swapped (`renameat2(RENAME_EXCHANGE)`, else two renames), so an
//! application sees the old directory or the complete new one, never a mix. The replaced tree
//! waits in the staging directory until the restore's changes are kept or undone (see
//! [`crate::restore::changes`]). A database of the directory that an application has open
//! stays the file it has open: the staged tree gets links to it and its logs, and its restored
//! image is written into it through SQLite once the tree is swapped in (see
//! [`crate::restore::live`]).

use crate::blobs::BlobReader;
use crate::error::{Error, IoContext, Result};
use crate::manifest::{Entry, EntryKind};
use crate::restore::changes::{Change, Changes};
use crate::restore::files::{
    Dirs, Writes, failed_check, forced_note, prepare_parent, remove_stale_sqlite_siblings,
    restore_entries,
};
use crate::restore::live::{self, Holder};
use crate::restore::report::RestoreReport;
use crate::restore::temporaries::{left_by_strata, remove_stale_stages, stage_path};
use crate::source::sqlite::siblings;
use crate::storage::sync_dir;
use crate::sys::{exchange, set_mtime};
use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// A selected directory that exists at its destination and is restored beside it, then swapped
/// in. Its staging directory is removed when it is dropped, unless the swap handed it over to
/// the restore's [`Changes`] (it then holds the replaced tree) or it holds the only copy of the
/// replaced tree after a failed swap.
pub(super) struct Stage {
    /// Its path in the snapshot.
    root: Vec<u8>,
    /// Where it goes (exists, a real directory).
    pub(super) dest: PathBuf,
    /// The staging directory beside `dest`; the staged tree is `dir/NAME`.
    dir: PathBuf,
    /// `dest`'s file name.
    name: Vec<u8>,
    /// The staging directory is someone else's to remove, or must stay.
    kept: std::cell::Cell<bool>,
}

impl Drop for Stage {
    fn drop(&mut self) {
        if !self.kept.get() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

impl Stage {
    /// Whether the snapshot's `path` is this directory or below it.
    pub(super) fn holds(&self, path: &[u8]) -> bool {
        path == self.root.as_slice()
            || (path.len() > self.root.len()
                && path.starts_with(&self.root)
                && path[self.root.len()] == b'/')
    }

    /// The path of an entry below `root`, relative to the staging directory.
    fn rebase(&self, path: &[u8]) -> Vec<u8> {
        let mut out = self.name.clone();
        out.extend_from_slice(&path[self.root.len()..]);
        out
    }

    fn staged(&self) -> PathBuf {
        self.dir.join(OsStr::from_bytes(&self.name))
    }

    /// Restores the entries of `entries` that this directory holds into its staging
    /// directory, carries over what the existing directory has and the snapshot does not
    /// (unless `delete`), and swaps the staged tree in; records the swap in `changes`. When a
    /// file fails, nothing is swapped and the existing directory stays as it was. Open
    /// databases are linked into the staged tree and written in place after the swap.
    pub(super) fn restore(
        &self,
        blobs: &BlobReader,
        entries: &[&Entry],
        delete: bool,
        how: Writes,
        changes: &Changes,
    ) -> Result<RestoreReport> {
        let rebased: Vec<Entry> = entries
            .iter()
            .filter(|e| self.holds(&e.path))
            .map(|e| Entry {
                path: self.rebase(&e.path),
                ..(*e).clone()
            })
            .collect();
        let refs: Vec<&Entry> = rebased.iter().collect();
        let mut report = restore_entries(blobs, &self.dir, &refs, how, None)?;
        if !report.errors.is_empty() {
            return Err(Error::invalid(format!(
                "{} file(s) could not be restored: {}",
                report.errors.len(),
                report.errors.join("; ")
            )));
        }
        let staged = self.staged();
        for db in &mut report.databases {
            if let Ok(rest) = db.path.strip_prefix(&staged) {
                db.path = self.dest.join(rest);
            }
        }
        let open = self.open_databases(&report, how)?;
        // Until the swap, no application starts a transaction: its logs stay as they are linked.
        let locks = open
            .iter()
            .map(|db| live::hold_writes(&db.dest))
            .collect::<Result<Vec<_>>>()?;
        for db in &open {
            db.link_into_stage()?;
        }
        if !delete {
            // Logs of the replaced databases must not come back beside the restored ones.
            let skip: HashSet<PathBuf> = report
                .databases
                .iter()
                .filter(|db| how.live.database(&db.path).is_none())
                .filter_map(|db| db.path.strip_prefix(&self.dest).ok())
                .flat_map(|rest| siblings(&staged.join(rest)).collect::<Vec<_>>())
                .collect();
            keep_extras(&self.dest, &staged, &skip, &mut report)?;
        }
        let aside = self.dir.join(".old");
        let old = exchange(&staged, &self.dest, &aside).inspect_err(|_| {
            // A swap that could not put the old directory back leaves it here.
            if fs::symlink_metadata(&aside).is_ok() {
                self.kept.set(true);
            }
        })?;
        drop(locks);
        self.kept.set(true);
        changes.record(Change::Swapped {
            dest: self.dest.clone(),
            old,
            stage: self.dir.clone(),
        });
        let parent = self.dest.parent().unwrap_or(Path::new("/"));
        if let Err(e) = sync_dir(parent) {
            report.errors.push(e.to_string());
        }
        for db in open {
            db.write(&mut report, how, changes);
        }
        report.swapped.push(self.dest.clone());
        Ok(report)
    }

    /// The databases of this directory that an application has open (see
    /// [`crate::restore::live`]), their restored images checked when asked.
    fn open_databases(&self, report: &RestoreReport, how: Writes) -> Result<Vec<OpenDatabase>> {
        let staged = self.staged();
        let mut open = Vec::new();
        for db in &report.databases {
            let Some(holders) = how.live.database(&db.path) else {
                continue;
            };
            if let Some(Err(problems)) = &db.check {
                return Err(failed_check(&db.path, problems));
            }
            let Ok(rest) = db.path.strip_prefix(&self.dest) else {
                continue;
            };
            open.push(OpenDatabase {
                dest: db.path.clone(),
                staged: staged.join(rest),
                image: self.dir.join(format!(".image.{}", open.len())),
                holders: holders.to_vec(),
            });
        }
        Ok(open)
    }
}

/// A database of a staged directory that an application has open: the staged tree gets the
/// open file itself (hard links to it and its logs), and the restored image is written into it
/// once the tree is swapped in.
struct OpenDatabase {
    dest: PathBuf,
    /// Its place in the staged tree.
    staged: PathBuf,
    /// Where its restored image waits, in the staging directory.
    image: PathBuf,
    holders: Vec<Holder>,
}

impl OpenDatabase {
    /// Moves the restored image aside and links the open database and its logs into the
    /// staged tree in its place.
    fn link_into_stage(&self) -> Result<()> {
        fs::rename(&self.staged, &self.image).ctx("move aside", &self.staged)?;
        fs::hard_link(&self.dest, &self.staged).ctx("link", &self.dest)?;
        for (log, staged) in siblings(&self.dest).zip(siblings(&self.staged)) {
            match fs::hard_link(&log, &staged) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io_path("link", &log, e)),
            }
        }
        sync_dir(self.staged.parent().unwrap_or(Path::new("/")))
    }

    /// Writes the restored image into the open database, now in place; records the change, or
    /// the failure in `report`. A forced restore replaces the database when SQLite cannot
    /// write into it.
    fn write(self, report: &mut RestoreReport, how: Writes, changes: &Changes) {
        let Some(db) = report.databases.iter_mut().find(|d| d.path == self.dest) else {
            return;
        };
        let result = match live::write(&self.image, &self.dest) {
            Ok(()) => {
                changes.record(Change::Rewritten(self.dest.clone()));
                db.live = Some(self.holders);
                let _ = fs::remove_file(&self.image);
                return;
            }
            Err(e) if how.live.force => {
                report.notes.push(forced_note(&self.dest, &e));
                let dirs = Dirs::new(Some(changes));
                remove_stale_sqlite_siblings(&self.dest, &dirs).and_then(|()| {
                    fs::rename(&self.image, &self.dest).ctx("rename into place", &self.dest)?;
                    changes.record(Change::Replaced(self.dest.clone()));
                    Ok(())
                })
            }
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            report.errors.push(e.to_string());
        }
    }
}

/// The selected directories that already exist at their destinations, each with its staging
/// directory made: the top-level directories of `entries`, or those at `paths` when the restore
/// was given paths. A file, symlink or anything else at a directory's destination is not staged
/// (writing the entries refuses it in its turn). Staging directories that killed restores left
/// beside the destinations go first.
pub(super) fn plan_stages(
    target: &Path,
    entries: &[&Entry],
    paths: &[String],
    changes: &Changes,
) -> Result<Vec<Stage>> {
    let dirs = Dirs::new(Some(changes));
    let mut stages: Vec<Stage> = Vec::new();
    for (n, root) in roots(entries, paths).into_iter().enumerate() {
        let dest = prepare_parent(target, &root, &dirs)?;
        let exists = fs::symlink_metadata(&dest).is_ok_and(|m| m.is_dir());
        if !exists {
            continue;
        }
        let name = root
            .rsplit(|&b| b == b'/')
            .next()
            .unwrap_or_default()
            .to_vec();
        if let Some(parent) = dest.parent() {
            remove_stale_stages(parent);
        }
        let dir = stage_path(&dest, &name, n);
        fs::create_dir(&dir).ctx("create staging directory", &dir)?;
        stages.push(Stage {
            root,
            dest,
            dir,
            name,
            kept: std::cell::Cell::new(false),
        });
    }
    Ok(stages)
}

/// The selected directories a restore stages when they exist: the top-level directories of
/// `entries`, or those at `paths` when the restore was given paths; none inside another.
fn roots(entries: &[&Entry], paths: &[String]) -> Vec<Vec<u8>> {
    let roots: Vec<Vec<u8>> = if paths.is_empty() {
        let mut r: Vec<Vec<u8>> = entries
            .iter()
            .map(|e| {
                e.path
                    .split(|&b| b == b'/')
                    .next()
                    .unwrap_or_default()
                    .to_vec()
            })
            .collect();
        r.dedup();
        r
    } else {
        paths
            .iter()
            .map(|p| p.trim_matches('/').as_bytes().to_vec())
            .collect()
    };
    let mut out: Vec<Vec<u8>> = Vec::new();
    for root in roots {
        let is_dir = entries
            .iter()
            .any(|e| e.path == root && e.kind == EntryKind::Dir);
        let inside =
            |r: &Vec<u8>| root == *r || (root.starts_with(r) && root.get(r.len()) == Some(&b'/'));
        if is_dir && !out.iter().any(inside) {
            out.push(root);
        }
    }
    out
}

/// The files below the selected directories that exist already which `entries` do not have:
/// what a restore with `--delete` leaves out of them. What strata left there is not counted.
pub(super) fn left_out(target: &Path, entries: &[&Entry], paths: &[String]) -> Vec<PathBuf> {
    fn walk(dir: &Path, rel: &[u8], have: &HashSet<&[u8]>, out: &mut Vec<PathBuf>) {
        let Ok(listing) = fs::read_dir(dir) else {
            return;
        };
        for item in listing.flatten() {
            let name = item.file_name();
            if left_by_strata(&name) {
                continue;
            }
            let mut path = rel.to_vec();
            path.push(b'/');
            path.extend_from_slice(name.as_bytes());
            match fs::symlink_metadata(item.path()) {
                Ok(m) if m.is_dir() => walk(&item.path(), &path, have, out),
                Ok(m) if m.is_file() && !have.contains(path.as_slice()) => out.push(item.path()),
                _ => {}
            }
        }
    }
    let have: HashSet<&[u8]> = entries.iter().map(|e| e.path.as_slice()).collect();
    let mut out = Vec::new();
    for root in roots(entries, paths) {
        let dest = target.join(OsStr::from_bytes(&root));
        if fs::symlink_metadata(&dest).is_ok_and(|m| m.is_dir()) {
            walk(&dest, &root, &have, &mut out);
        }
    }
    out
}

/// Carries what exists below `old` but not below `new` over into `new`: files, fifos, sockets
/// and devices as hard links, so they stay the same inodes (files are copied where links are
/// impossible), symlinks and directories recreated. Where both have a path, `new` (the
/// snapshot) wins. Temporary files and staging directories strata left are not carried over.
fn keep_extras(
    old: &Path,
    new: &Path,
    skip: &HashSet<PathBuf>,
    report: &mut RestoreReport,
) -> Result<()> {
    for item in fs::read_dir(old).ctx("list", old)? {
        let item = item.ctx("list", old)?;
        let name = item.file_name();
        if left_by_strata(&name) {
            continue;
        }
        let (from, to) = (item.path(), new.join(&name));
        let meta = fs::symlink_metadata(&from).ctx("stat", &from)?;
        match fs::symlink_metadata(&to) {
            Ok(m) => {
                if meta.is_dir() && m.is_dir() {
                    keep_extras(&from, &to, skip, report)?;
                }
                continue;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io_path("stat", &to, e)),
        }
        if skip.contains(&to) {
            continue;
        }
        let ft = meta.file_type();
        if ft.is_dir() {
            fs::create_dir(&to).ctx("create directory", &to)?;
            keep_extras(&from, &to, skip, report)?;
            // SAFETY: geteuid has no preconditions.
            if unsafe { libc::geteuid() } == 0 {
                use std::os::unix::fs::MetadataExt;
                std::os::unix::fs::lchown(&to, Some(meta.uid()), Some(meta.gid()))
                    .ctx("set owner", &to)?;
            }
            fs::set_permissions(&to, meta.permissions()).ctx("set permissions", &to)?;
            set_mtime(&to, crate::sys::mtime_ns(&meta), true)?;
            continue;
        } else if ft.is_symlink() {
            let target = fs::read_link(&from).ctx("read symlink", &from)?;
            std::os::unix::fs::symlink(&target, &to).ctx("create symlink", &to)?;
        } else if fs::hard_link(&from, &to).is_ok() {
            // The same file (fifo, socket...), with its other links.
        } else if ft.is_file() {
            fs::copy(&from, &to).ctx("copy", &from)?;
            set_mtime(&to, crate::sys::mtime_ns(&meta), true)?;
            fs::File::open(&to)
                .and_then(|f| f.sync_all())
                .ctx("fsync", &to)?;
        } else {
            report.notes.push(format!(
                "{}: a special file that could not be linked into the restored directory; not \
                 carried over",
                from.display()
            ));
            continue;
        }
        report.kept += 1;
    }
    sync_dir(new)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Content;
    use std::os::unix::fs::MetadataExt;

    /// Above the largest pid Linux hands out (2^22): never a live process.
    const GONE: u32 = 4_194_999;

    fn entry(path: &str, kind: EntryKind) -> Entry {
        Entry {
            path: path.as_bytes().to_vec(),
            kind,
            mode: 0o755,
            uid: 0,
            gid: 0,
            mtime_ns: 0,
            size: 0,
            content: Content::Empty,
            target: None,
            page_size: 0,
            through_sqlite: false,
        }
    }

    fn inode(p: &Path) -> u64 {
        fs::symlink_metadata(p).unwrap().ino()
    }

    #[test]
    fn only_existing_real_directories_are_staged() {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path();
        let elsewhere = tempfile::tempdir().unwrap();
        fs::create_dir(t.join("app")).unwrap();
        fs::write(t.join("app/x"), b"x").unwrap();
        fs::write(t.join("file_in_the_way"), b"f").unwrap();
        std::os::unix::fs::symlink(elsewhere.path(), t.join("link")).unwrap();
        let stale = t.join(format!(".app.strata-restore.{GONE}.0"));
        let users = t.join(format!("app.strata-restore.{GONE}.0"));
        fs::create_dir(&stale).unwrap();
        fs::create_dir(&users).unwrap();
        let entries = [
            entry("app", EntryKind::Dir),
            entry("app/x", EntryKind::File),
            entry("file_in_the_way", EntryKind::Dir),
            entry("link", EntryKind::Dir),
            entry("fresh", EntryKind::Dir),
            entry("top.txt", EntryKind::File),
        ];
        let refs: Vec<&Entry> = entries.iter().collect();
        let changes = Changes::new();
        let stages = plan_stages(t, &refs, &[], &changes).unwrap();
        assert_eq!(stages.len(), 1);
        let stage = &stages[0];
        assert_eq!(stage.dest, t.join("app"));
        assert_eq!(
            stage.dir,
            t.join(format!(".app.strata-restore.{}.0", std::process::id()))
        );
        assert!(stage.dir.is_dir());
        assert!(stage.holds(b"app") && stage.holds(b"app/x"));
        assert!(!stage.holds(b"apple") && !stage.holds(b"ap"));
        assert_eq!(stage.rebase(b"app/x"), b"app/x");
        // A dead restore's staging directory goes; the user's look-alike stays.
        assert!(!stale.exists());
        assert!(users.is_dir());
        // Nothing of the user's changed: what is in the way is left for the writing to refuse.
        assert!(changes.is_empty());
        assert!(t.join("file_in_the_way").is_file());
        assert!(fs::symlink_metadata(t.join("link")).unwrap().is_symlink());
        assert!(!t.join("fresh").exists());
        // A stage not swapped in takes its staging directory with it.
        let staging = stage.dir.clone();
        drop(stages);
        assert!(!staging.exists());
        assert_eq!(fs::read(t.join("app/x")).unwrap(), b"x");
    }

    #[test]
    fn a_path_below_the_target_is_staged_under_its_own_name() {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path();
        let entries = [
            entry("data", EntryKind::Dir),
            entry("data/app", EntryKind::Dir),
        ];
        let refs: Vec<&Entry> = entries.iter().collect();
        let paths = ["/data/app/".to_string()];
        // Missing: its parent is made (and recorded), nothing is staged.
        let changes = Changes::new();
        assert!(plan_stages(t, &refs, &paths, &changes).unwrap().is_empty());
        assert!(t.join("data").is_dir() && !changes.is_empty());
        fs::create_dir(t.join("data/app")).unwrap();
        let stages = plan_stages(t, &refs, &paths, &Changes::new()).unwrap();
        assert_eq!(stages.len(), 1);
        assert_eq!(stages[0].dest, t.join("data/app"));
        assert_eq!(stages[0].staged(), stages[0].dir.join("app"));
        assert_eq!(stages[0].rebase(b"data/app/f"), b"app/f");
        assert_eq!(stages[0].dir.parent(), Some(t.join("data").as_path()));
    }

    #[test]
    fn a_symlinked_parent_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        let t = dir.path();
        fs::create_dir(elsewhere.path().join("app")).unwrap();
        std::os::unix::fs::symlink(elsewhere.path(), t.join("data")).unwrap();
        let entries = [entry("data/app", EntryKind::Dir)];
        let refs: Vec<&Entry> = entries.iter().collect();
        let paths = ["data/app".to_string()];
        let e = plan_stages(t, &refs, &paths, &Changes::new())
            .err()
            .expect("a symlink on the way");
        assert!(e.to_string().contains("symlink"), "{e}");
        let left: Vec<_> = fs::read_dir(elsewhere.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "nothing staged through the link");
    }

    #[test]
    fn extras_are_carried_over_but_strata_leftovers_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let (old, new) = (dir.path().join("old"), dir.path().join("new"));
        for d in [&old, &new] {
            fs::create_dir_all(d.join("sub")).unwrap();
        }
        fs::write(old.join("user.txt"), b"u").unwrap();
        fs::write(old.join("report.strata-tmp.1.txt"), b"r").unwrap();
        fs::write(old.join(format!(".x.strata-tmp.{GONE}.0")), b"t").unwrap();
        fs::create_dir(old.join(format!(".y.strata-restore.{GONE}.0"))).unwrap();
        fs::write(old.join("both.txt"), b"old").unwrap();
        fs::write(new.join("both.txt"), b"snapshot").unwrap();
        fs::write(old.join("sub/deep.txt"), b"d").unwrap();
        fs::create_dir(old.join("gone_dir")).unwrap();
        fs::write(old.join("gone_dir/f"), b"f").unwrap();
        std::os::unix::fs::symlink("user.txt", old.join("ln")).unwrap();
        fs::write(old.join("app.db-wal"), b"w").unwrap();
        // A directory in the old tree where the snapshot has a file: the snapshot's file wins.
        fs::create_dir(old.join("clash")).unwrap();
        fs::write(old.join("clash/inner"), b"i").unwrap();
        fs::write(new.join("clash"), b"file").unwrap();

        let skip = HashSet::from([new.join("app.db-wal")]);
        let mut report = RestoreReport::default();
        keep_extras(&old, &new, &skip, &mut report).unwrap();

        // Files are the same inodes, linked in.
        for f in [
            "user.txt",
            "report.strata-tmp.1.txt",
            "sub/deep.txt",
            "gone_dir/f",
        ] {
            assert_eq!(inode(&new.join(f)), inode(&old.join(f)), "{f}");
        }
        assert_eq!(
            fs::read_link(new.join("ln")).unwrap(),
            Path::new("user.txt")
        );
        assert_eq!(fs::read(new.join("both.txt")).unwrap(), b"snapshot");
        assert_eq!(fs::read(new.join("clash")).unwrap(), b"file");
        assert!(!new.join(format!(".x.strata-tmp.{GONE}.0")).exists());
        assert!(!new.join(format!(".y.strata-restore.{GONE}.0")).exists());
        assert!(!new.join("app.db-wal").exists());
        assert_eq!(report.kept, 5);
        assert!(report.notes.is_empty());
    }
}

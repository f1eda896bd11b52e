//! Restore points: before a restore replaces anything, what it would replace is saved as a
//! snapshot of kind `restore-point`; a restore that then fails is rolled back to it. Rolling
//! back undoes what the restore changed and nothing else (see [`crate::restore::changes`]):
//! files it never touched keep their inodes, links and kinds, and the files it replaced or
//! removed come back from the point.

use crate::backup::{BackupOptions, BackupReport, backup};
use crate::blobs::BlobReader;
use crate::error::{IoContext, Result};
use crate::id::SnapshotId;
use crate::index::IndexReader;
use crate::manifest::{Entry, EntryKind, Manifest};
use crate::repo::Repo;
use crate::restore::changes::Changes;
use crate::restore::files::{Writes, panicked, restore_entries};
use crate::restore::live;
use crate::restore::report::RestoreReport;
use crate::restore::selection::{check_entries, replaced};
use std::collections::HashSet;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

/// Whether a restore into `target` may replace something there: the target is a directory with
/// something in it. (Only such a restore takes a restore point, which needs the repository's
/// lock.)
pub fn may_replace(target: &Path) -> bool {
    fs::read_dir(target).is_ok_and(|mut d| d.next().is_some())
}

/// A restore point about to be taken: the existing top-level paths of a target that a restore
/// would replace.
#[derive(Debug)]
pub struct RestorePoint {
    /// The paths to save (target/NAME, each an existing top-level path).
    pub sources: Vec<PathBuf>,
    /// The name the point's snapshot gets.
    pub name: String,
}

/// The restore point to take before restoring `paths` (all when empty) of snapshot `snapshot`
/// (whose manifest is `manifest`) into `target`: `None` when the restore would replace nothing
/// that is there.
pub fn restore_point(
    manifest: &Manifest,
    snapshot: &SnapshotId,
    paths: &[String],
    target: &Path,
) -> Result<Option<RestorePoint>> {
    let existing = replaced(manifest, paths, target)?.existing;
    if existing.is_empty() {
        return Ok(None);
    }
    Ok(Some(RestorePoint {
        sources: existing,
        name: format!("before-restore-{}", snapshot.short()),
    }))
}

impl RestorePoint {
    /// Saves what the point holds, as a snapshot of kind `restore-point`.
    pub fn save(&self, repo: &Repo) -> Result<BackupReport> {
        let mut opts = BackupOptions::new(self.sources.clone());
        opts.kind = crate::snapshots::RESTORE_POINT.into();
        opts.name = Some(self.name.clone());
        backup(repo, &opts)
    }
}

/// How a failed restore's target was put back.
#[derive(Debug, PartialEq, Eq)]
pub enum Rollback {
    /// The restore failed before it changed anything.
    Unchanged,
    /// What it changed is back as it was.
    Undone,
    /// Putting back failed in part: what could not be put back, one line each.
    Partial(Vec<String>),
}

/// Undoes what a failed restore changed in `target`, and only that: files it never touched keep
/// their inodes, links and kinds. Files it replaced come back from restore point `point`.
pub(super) fn roll_back(
    repo: &Repo,
    point: &Manifest,
    target: &Path,
    changes: Changes,
) -> Rollback {
    if changes.is_empty() {
        return Rollback::Unchanged;
    }
    let problems = match fs::canonicalize(target) {
        Ok(root) => changes.undo(&mut |replaced: &[PathBuf], removed: &[PathBuf]| {
            put_back(repo, point, &root, replaced, removed)
        }),
        Err(e) => vec![format!("{}: {e}", target.display())],
    };
    if problems.is_empty() {
        Rollback::Undone
    } else {
        Rollback::Partial(problems)
    }
}

/// Restores the files below `root` that a failed restore replaced or removed from restore point
/// `point`, whose sources are the top-level entries of `root` it saved, each under its own name.
/// Returns what could not be put back. A removed file the point does not hold is a SQLite log,
/// which the point leaves out: its database's image there already holds what it held.
fn put_back(
    repo: &Repo,
    point: &Manifest,
    root: &Path,
    replaced: &[PathBuf],
    removed: &[PathBuf],
) -> Result<Vec<String>> {
    let mut problems = Vec::new();
    let mut wanted = Vec::new();
    for path in replaced {
        match path_in_point(point, root, path) {
            Some(p) => wanted.push(p),
            None => problems.push(format!("{}: not in the restore point", path.display())),
        }
    }
    let optional: Vec<Vec<u8>> = removed
        .iter()
        .filter_map(|p| path_in_point(point, root, p))
        .collect();
    wanted.extend(optional.iter().cloned());
    let (report, missing) = restore_files(repo, point, &wanted, root)?;
    problems.extend(report.errors);
    for m in missing.iter().filter(|m| !optional.contains(m)) {
        problems.push(format!(
            "{}: not in the restore point",
            String::from_utf8_lossy(m)
        ));
    }
    Ok(problems)
}

/// The path in restore point `point` of `path` (below `root`, the target the point saved):
/// the source named after its first component, then the rest.
fn path_in_point(point: &Manifest, root: &Path, path: &Path) -> Option<Vec<u8>> {
    let mut parts = path.strip_prefix(root).ok()?.components();
    let first = parts.next()?.as_os_str();
    let source = point
        .sources
        .iter()
        .find(|s| Path::new(&s.path).file_name() == Some(first))?;
    let mut out = source.name.as_bytes().to_vec();
    for p in parts {
        out.push(b'/');
        out.extend_from_slice(p.as_os_str().as_bytes());
    }
    Some(out)
}

/// Restores the files and symlinks of `manifest` at exactly `paths` below `target`, each
/// renamed into place over whatever is there; missing parent directories are created, and no
/// directory is staged or has its metadata set. Returns the report and the paths the manifest
/// holds no file or symlink at.
fn restore_files(
    repo: &Repo,
    manifest: &Manifest,
    paths: &[Vec<u8>],
    target: &Path,
) -> Result<(RestoreReport, Vec<Vec<u8>>)> {
    let wanted: HashSet<&[u8]> = paths.iter().map(|p| p.as_slice()).collect();
    let entries: Vec<&Entry> = manifest
        .entries
        .iter()
        .filter(|e| e.kind != EntryKind::Dir && wanted.contains(e.path.as_slice()))
        .collect();
    check_entries(&entries)?;
    let found: HashSet<&[u8]> = entries.iter().map(|e| e.path.as_slice()).collect();
    let missing = paths
        .iter()
        .filter(|p| !found.contains(p.as_slice()))
        .cloned()
        .collect();
    let target = fs::canonicalize(target).ctx("resolve", target)?;
    let txn = repo.index.read()?;
    let index = IndexReader::new(&txn)?;
    let blobs = BlobReader::new(repo, &index)?;
    // An open database is put back in place as the restore wrote it; nothing is refused.
    let live = live::survey(&target, &entries, &[], true)?;
    let how = Writes {
        check: None,
        live: &live,
        progress: None,
    };
    let report = catch_unwind(AssertUnwindSafe(|| {
        restore_entries(&blobs, &target, &entries, how, None)
    }))
    .unwrap_or_else(|p| Err(panicked(p)))?;
    Ok((report, missing))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunker::ChunkerParams;
    use crate::repo::Config;
    use crate::restore::changes::Change;
    use std::os::unix::fs::MetadataExt;

    fn inode(p: &Path) -> u64 {
        fs::symlink_metadata(p).unwrap().ino()
    }

    /// A repository with a snapshot of a directory `app`, and a target holding its own `app`
    /// (`a` and `a2` one inode, `b`, `sub/c`).
    fn setup() -> (tempfile::TempDir, Repo, BackupReport, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repo::init(
            &dir.path().join("repo"),
            Config::new(ChunkerParams::default(), 1).unwrap(),
        )
        .unwrap();
        let src = dir.path().join("src/app");
        fs::create_dir_all(&src).unwrap();
        fs::write(src.join("b"), b"from the snapshot").unwrap();
        let snap = backup(&repo, &BackupOptions::new(vec![src])).unwrap();
        let t = dir.path().join("target");
        fs::create_dir_all(t.join("app/sub")).unwrap();
        fs::write(t.join("app/a"), b"a").unwrap();
        fs::hard_link(t.join("app/a"), t.join("app/a2")).unwrap();
        fs::write(t.join("app/b"), b"b before").unwrap();
        fs::write(t.join("app/sub/c"), b"c").unwrap();
        let t = fs::canonicalize(t).unwrap();
        (dir, repo, snap, t)
    }

    #[test]
    fn a_point_is_taken_only_of_what_the_restore_replaces() {
        let (dir, _repo, snap, t) = setup();
        assert!(may_replace(&t));
        let empty = dir.path().join("empty");
        fs::create_dir(&empty).unwrap();
        assert!(!may_replace(&empty));
        assert!(!may_replace(&dir.path().join("missing")));
        let point = restore_point(&snap.manifest, &snap.id, &[], &t)
            .unwrap()
            .expect("app is there");
        assert_eq!(point.sources, vec![t.join("app")]);
        assert_eq!(point.name, format!("before-restore-{}", snap.id.short()));
        // A target without the snapshot's names: nothing replaced, no point.
        fs::write(empty.join("other"), b"o").unwrap();
        assert!(may_replace(&empty));
        assert!(
            restore_point(&snap.manifest, &snap.id, &[], &empty)
                .unwrap()
                .is_none()
        );
        // A path the snapshot does not have is an error, before any point.
        let paths = ["nothing-here".to_string()];
        assert!(restore_point(&snap.manifest, &snap.id, &paths, &t).is_err());
    }

    #[test]
    fn rolling_back_undoes_only_what_changed() {
        let (_dir, repo, snap, t) = setup();
        let point = restore_point(&snap.manifest, &snap.id, &[], &t)
            .unwrap()
            .unwrap()
            .save(&repo)
            .unwrap();
        assert_eq!(point.manifest.kind, crate::snapshots::RESTORE_POINT);
        let app = t.join("app");
        let kept = ["a", "a2", "sub", "sub/c"].map(|p| (p, inode(&app.join(p))));
        // A restore that replaced b and made a file, then failed.
        let changes = Changes::new();
        fs::write(app.join(".b.new"), b"from the snapshot").unwrap();
        fs::rename(app.join(".b.new"), app.join("b")).unwrap();
        changes.record(Change::Replaced(app.join("b")));
        fs::write(app.join("made"), b"m").unwrap();
        changes.record(Change::Created(app.join("made")));

        assert_eq!(
            roll_back(&repo, &point.manifest, &t, changes),
            Rollback::Undone
        );
        assert_eq!(fs::read(app.join("b")).unwrap(), b"b before");
        assert!(!app.join("made").exists());
        for (p, ino) in kept {
            assert_eq!(inode(&app.join(p)), ino, "{p}");
        }
        assert_eq!(inode(&app.join("a")), inode(&app.join("a2")));
    }

    #[test]
    fn what_cannot_be_put_back_is_told() {
        let (_dir, repo, snap, t) = setup();
        let point = restore_point(&snap.manifest, &snap.id, &[], &t)
            .unwrap()
            .unwrap()
            .save(&repo)
            .unwrap();
        assert_eq!(
            roll_back(&repo, &point.manifest, &t, Changes::new()),
            Rollback::Unchanged
        );
        // A replaced file outside what the point saved; a removed log the point never held is
        // no problem.
        let changes = Changes::new();
        changes.record(Change::Replaced(t.join("elsewhere/x")));
        changes.record(Change::Removed(t.join("app/b-wal")));
        match roll_back(&repo, &point.manifest, &t, changes) {
            Rollback::Partial(problems) => assert_eq!(
                problems,
                vec![format!(
                    "{}: not in the restore point",
                    t.join("elsewhere/x").display()
                )]
            ),
            other => panic!("{other:?}"),
        }
        assert!(!t.join("app/b-wal").exists());
    }
}

//! The names a restore gives what it makes beside its destinations, and telling them apart from
//! the user's files. Files are written as `.NAME.strata-tmp.PID.N` (see
//! [`crate::storage::temp_name`]) and directories staged as `.NAME.strata-restore.PID.N`, both
//! beside their destination. A killed restore can leave either behind: the next restore removes
//! those whose process is gone, and never carries them over into a restored directory. A name
//! that merely holds a mark (`report.strata-tmp.1.txt`) is the user's.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Temporary files are named `.NAME.strata-tmp.PID.N` beside their destination (see
/// [`crate::storage::temp_name`]).
const TEMP_MARK: &str = ".strata-tmp.";

/// Staging directories are named `.NAME.strata-restore.PID.N` beside the destination.
const STAGE_MARK: &str = ".strata-restore.";

/// The staging directory of this process for `dest` (whose file name is `name`), the `n`th of
/// its restore: `.NAME.strata-restore.PID.N` beside `dest`.
pub(super) fn stage_path(dest: &Path, name: &[u8], n: usize) -> PathBuf {
    let mut dir_name = std::ffi::OsString::from(".");
    dir_name.push(OsStr::from_bytes(name));
    dir_name.push(format!("{STAGE_MARK}{}.{n}", std::process::id()));
    dest.with_file_name(dir_name)
}

/// The process that made the file or directory `name`, when the name is exactly one strata
/// gives its own with `mark`: `.NAME<mark>PID.N`, a leading dot, a name, the mark, then a
/// process id and a counter in decimal. A user's file whose name merely holds the mark
/// (`report.strata-tmp.1.txt`) is not strata's.
fn maker(name: &OsStr, mark: &str) -> Option<u32> {
    let rest = name.to_str()?.strip_prefix('.')?;
    let (base, tail) = rest.rsplit_once(mark)?;
    let (pid, n) = tail.split_once('.')?;
    let decimal = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if base.is_empty() || !decimal(pid) || !decimal(n) {
        return None;
    }
    pid.parse().ok()
}

/// Whether `name` is a temporary file or staging directory of this process, or of one that no
/// longer exists: strata's own, never the user's.
pub(super) fn left_by_strata(name: &OsStr) -> bool {
    [TEMP_MARK, STAGE_MARK]
        .into_iter()
        .filter_map(|mark| maker(name, mark))
        .any(|pid| pid == std::process::id() || !crate::sys::pid_alive(pid))
}

/// Removes temporary files in `dir` whose process no longer exists.
pub(super) fn remove_stale_temp_files(dir: &Path) {
    remove_left_by_dead_processes(dir, TEMP_MARK, |p| fs::remove_file(p));
}

/// Removes staging directories that a killed restore left in `dir` (their process is gone).
/// Each holds either a partly restored copy or, after the swap, the replaced directory.
pub(super) fn remove_stale_stages(dir: &Path) {
    remove_left_by_dead_processes(dir, STAGE_MARK, |p| fs::remove_dir_all(p));
}

/// Removes the entries of `dir` named `.NAME<mark>PID.N` whose process no longer exists.
fn remove_left_by_dead_processes(
    dir: &Path,
    mark: &str,
    remove: impl Fn(&Path) -> std::io::Result<()>,
) {
    let Ok(listing) = fs::read_dir(dir) else {
        return;
    };
    for entry in listing.flatten() {
        let pid = maker(&entry.file_name(), mark);
        if pid.is_some_and(|p| !crate::sys::pid_alive(p)) {
            let _ = remove(&entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Above the largest pid Linux hands out (2^22): never a live process.
    const GONE: u32 = 4_194_999;

    #[test]
    fn only_names_strata_gives_are_its_own() {
        let pid = |n: &str| maker(OsStr::new(n), TEMP_MARK);
        assert_eq!(pid(".a.txt.strata-tmp.4121.0"), Some(4121));
        assert_eq!(pid(".a.strata-tmp.1.txt.strata-tmp.77.3"), Some(77));
        for user in [
            "report.strata-tmp.1.txt",
            ".report.strata-tmp.1.txt",
            "a.strata-tmp.4121.0",
            ".strata-tmp.4121.0",
            ".a.strata-tmp.4121",
            ".a.strata-tmp..0",
            ".a.strata-tmp.-1.0",
            ".a.strata-tmp.41x.0",
            ".a.strata-tmp.4121.0.bak",
        ] {
            assert_eq!(pid(user), None, "{user}");
        }
        let stage = |n: &str| maker(OsStr::new(n), STAGE_MARK);
        assert_eq!(stage(".app.strata-restore.12.0"), Some(12));
        assert_eq!(stage("app.strata-restore.12.0"), None);
        assert!(left_by_strata(OsStr::new(&format!(
            ".x.strata-tmp.{}.9",
            std::process::id()
        ))));
        assert!(left_by_strata(OsStr::new(".x.strata-restore.4194999.0")));
        assert!(!left_by_strata(OsStr::new("x.strata-restore.4194999.0")));
    }

    #[test]
    fn the_names_strata_gives_are_the_ones_it_recognises() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("app.db");
        let tmp = crate::storage::temp_name(&dest);
        assert_eq!(tmp.parent(), Some(dir.path()));
        assert_eq!(
            maker(tmp.file_name().unwrap(), TEMP_MARK),
            Some(std::process::id())
        );
        let stage = stage_path(&dir.path().join("app"), b"app", 3);
        assert_eq!(
            stage.file_name().unwrap(),
            OsStr::new(&format!(".app.strata-restore.{}.3", std::process::id()))
        );
        assert_eq!(
            maker(stage.file_name().unwrap(), STAGE_MARK),
            Some(std::process::id())
        );
        // Each mark is only the other's look-alike, not its own.
        assert_eq!(maker(tmp.file_name().unwrap(), STAGE_MARK), None);
        assert_eq!(maker(stage.file_name().unwrap(), TEMP_MARK), None);
    }

    #[test]
    fn only_leftovers_of_dead_processes_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let me = std::process::id();
        let files = [
            (format!(".a.strata-tmp.{GONE}.0"), false),
            (format!(".a.strata-tmp.{me}.0"), true),
            (format!("a.strata-tmp.{GONE}.0"), true),
            (format!(".a.strata-tmp.{GONE}.0.bak"), true),
            ("report.strata-tmp.1.txt".to_string(), true),
            // A staging directory's name on a file: not a temporary file's.
            (format!(".a.strata-restore.{GONE}.0"), true),
        ];
        for (name, _) in &files {
            fs::write(d.join(name), b"x").unwrap();
        }
        remove_stale_temp_files(d);
        for (name, stays) in &files {
            assert_eq!(d.join(name).exists(), *stays, "{name}");
        }

        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let stages = [
            (format!(".app.strata-restore.{GONE}.1"), false),
            (format!(".app.strata-restore.{me}.1"), true),
            (format!("app.strata-restore.{GONE}.1"), true),
            (format!(".app.strata-tmp.{GONE}.1"), true),
        ];
        for (name, _) in &stages {
            fs::create_dir(d.join(name)).unwrap();
            fs::write(d.join(name).join("inside"), b"x").unwrap();
        }
        remove_stale_stages(d);
        for (name, stays) in &stages {
            assert_eq!(d.join(name).exists(), *stays, "{name}");
        }
    }
}

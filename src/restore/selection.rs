//! Which entries of a snapshot a restore writes, and the checks they pass first: no path may
//! leave the target, none may appear twice.

use crate::error::{Error, Result};
use crate::manifest::{Entry, Manifest};
use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Refuses paths that could escape the target: absolute, empty, `.` or `..` components, NUL.
pub fn check_entry_path(path: &[u8]) -> Result<()> {
    let bad = path.is_empty()
        || path[0] == b'/'
        || path.contains(&0)
        || path
            .split(|&b| b == b'/')
            .any(|c| c.is_empty() || c == b"." || c == b"..");
    if bad {
        return Err(Error::corrupt(format!(
            "snapshot contains an unsafe path {:?}; refusing to restore",
            String::from_utf8_lossy(path)
        )));
    }
    Ok(())
}

/// Refuses a set of entries that holds an unsafe path or the same path twice (a hand-made or
/// tampered manifest: which of two versions to restore would be a guess).
pub fn check_entries(entries: &[&Entry]) -> Result<()> {
    let mut seen = HashSet::with_capacity(entries.len());
    for e in entries {
        check_entry_path(&e.path)?;
        if !seen.insert(e.path.as_slice()) {
            return Err(Error::corrupt(format!(
                "snapshot holds the path {:?} more than once; refusing to restore",
                e.path_lossy()
            )));
        }
    }
    Ok(())
}

/// The entries selected by `paths` (all when empty).
pub fn select<'m>(manifest: &'m Manifest, paths: &[String]) -> Result<Vec<&'m Entry>> {
    let wanted: Vec<Vec<u8>> = paths
        .iter()
        .map(|p| p.trim_matches('/').as_bytes().to_vec())
        .collect();
    let selected: Vec<&Entry> = manifest
        .entries
        .iter()
        .filter(|e| {
            wanted.is_empty()
                || wanted.iter().any(|w| {
                    e.path == *w
                        || (e.path.len() > w.len()
                            && e.path.starts_with(w)
                            && e.path[w.len()] == b'/')
                })
        })
        .collect();
    for w in &wanted {
        let hit = selected.iter().any(|e| e.path.starts_with(w));
        if !hit {
            return Err(Error::not_found(format!(
                "path {:?} is not in the snapshot (paths start with the source name, e.g. {:?})",
                String::from_utf8_lossy(w),
                manifest
                    .sources
                    .first()
                    .map(|s| s.name.as_str())
                    .unwrap_or("")
            )));
        }
    }
    Ok(selected)
}

/// What a restore into `target` would replace.
#[derive(Debug, Default)]
pub struct Replaced {
    /// Existing top-level paths (target/NAME) the selected entries fall under.
    pub existing: Vec<PathBuf>,
}

/// Looks at `target` before a restore of `paths` (all when empty) of `manifest`.
pub fn replaced(manifest: &Manifest, paths: &[String], target: &Path) -> Result<Replaced> {
    let mut out = Replaced::default();
    let mut roots = HashSet::new();
    let entries = select(manifest, paths)?;
    check_entries(&entries)?;
    for e in entries {
        let first = e.path.split(|&b| b == b'/').next().unwrap_or_default();
        let root = target.join(OsStr::from_bytes(first));
        if roots.insert(root.clone()) && fs::symlink_metadata(&root).is_ok() {
            out.existing.push(root);
        }
    }
    Ok(out)
}

//! Following SQLite databases: every transaction a WAL database commits is copied, as it
//! appears in the log, into a capture journal on local disk (see [`journal`]), so that a
//! snapshot of a followed database is the previous one with the journal's pages put in, without
//! reading the database, and so that no checkpoint or log reset can lose a transaction between
//! snapshots (see [`follower`]).
//!
//! A journal lives beside the repository's index, in `follow/<BLAKE3 of the file key>/`, so
//! that `strata backup` finds the journal of each database it reads.

pub mod attached;
pub mod follower;
pub mod journal;
pub mod watch;

use crate::repo::Repo;
use std::path::{Path, PathBuf};

/// The status a follower last wrote in the journal's directory `dir`, if any.
pub fn status(dir: &Path) -> Option<follower::Status> {
    let bytes = std::fs::read(dir.join("status.json")).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The directory of the journal of the database at `path` (absolute).
pub fn journal_dir(repo: &Repo, path: &Path) -> PathBuf {
    use std::os::unix::ffi::OsStrExt;
    let key = repo.file_key(path.as_os_str().as_bytes());
    repo.root
        .join("follow")
        .join(blake3::hash(&key).to_hex().as_str())
}

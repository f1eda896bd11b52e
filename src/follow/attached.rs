//! Where each snapshot of a followed database ends in its log: the starting points of restores
//! to an instant (`restore --at`).
//!
//! After its commit, a backup notes each followed database it stored with a known place in the
//! log in `attached` in the journal's directory: one line per snapshot, `ID SALT1 SALT2 FRAME
//! SUM1 SUM2` (hex, then decimal).

use crate::id::SnapshotId;
use crate::repo::Repo;
use crate::source::wal::LogPos;
use std::io::Write;
use std::path::Path;

const ATTACHED: &str = "attached";

/// Notes that snapshot `id` holds the database with file key `file_key` as it was at `pos` (best
/// effort, after the commit: without the note the snapshot is not a starting point for
/// restores to an instant).
pub fn attach(repo: &Repo, file_key: &[u8], id: &SnapshotId, pos: &LogPos) {
    let dir = repo
        .root
        .join("follow")
        .join(blake3::hash(file_key).to_hex().as_str());
    if !dir.is_dir() {
        return;
    }
    let line = format!(
        "{} {} {} {} {} {}\n",
        id, pos.salt1, pos.salt2, pos.frame, pos.checksum.0, pos.checksum.1
    );
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(ATTACHED))
        .and_then(|mut f| f.write_all(line.as_bytes()).and_then(|_| f.sync_data()));
    if let Err(e) = written {
        tracing::debug!("noting snapshot {id} in {}: {e}", dir.display());
    }
}

/// The snapshots noted in a journal's directory and where their images end (lines that do not
/// parse are skipped).
pub fn attached(dir: &Path) -> Vec<(String, LogPos)> {
    let Ok(text) = std::fs::read_to_string(dir.join(ATTACHED)) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_ascii_whitespace();
            let id = w.next()?.to_string();
            let mut n = || w.next()?.parse::<u32>().ok();
            let pos = LogPos {
                salt1: n()?,
                salt2: n()?,
                frame: n()?,
                checksum: (n()?, n()?),
            };
            Some((id, pos))
        })
        .collect()
}

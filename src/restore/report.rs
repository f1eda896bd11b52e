//! What a restore did: counts, the files it could not restore and why, the databases it wrote
//! (how they passed their check, and which ones applications had open), the directories it
//! swapped whole, and what is worth telling the user.

use crate::restore::live::Holder;
use std::path::PathBuf;

#[derive(Default, Debug)]
pub struct RestoreReport {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub bytes: u64,
    /// Files that could not be restored, with the reason.
    pub errors: Vec<String>,
    /// Restored files that were SQLite databases when backed up.
    pub databases: Vec<RestoredDatabase>,
    /// Existing directories that were replaced as a whole by a staged copy.
    pub swapped: Vec<PathBuf>,
    /// Files and symlinks kept from the replaced directories because the snapshot does not
    /// have them.
    pub kept: u64,
    /// Worth telling the user (special files not carried over...).
    pub notes: Vec<String>,
}

/// A restored file that was a SQLite database when backed up.
#[derive(Debug)]
pub struct RestoredDatabase {
    /// Its destination.
    pub path: PathBuf,
    /// Set when an application had it open: the restored image was written into it through
    /// SQLite (see [`crate::restore::live`]); the processes that held it.
    pub live: Option<Vec<Holder>>,
    /// The check of the restored image, when one ran: passed, or what SQLite reported.
    pub check: Option<std::result::Result<(), String>>,
}

impl RestoreReport {
    pub(super) fn merge(&mut self, other: RestoreReport) {
        self.files += other.files;
        self.dirs += other.dirs;
        self.symlinks += other.symlinks;
        self.bytes += other.bytes;
        self.kept += other.kept;
        self.errors.extend(other.errors);
        self.databases.extend(other.databases);
        self.swapped.extend(other.swapped);
        self.notes.extend(other.notes);
    }
}

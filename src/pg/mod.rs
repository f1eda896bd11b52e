//! PostgreSQL physical backups: the WAL archive ([`archive`]), the files PostgreSQL's
//! `archive_command` hands over, each kept as a snapshot of kind [`archive::WAL_KIND`] named
//! after the file, and given back to its `restore_command`; base backups ([`base`]); recovery
//! from them ([`recover`]); the spool for WAL handed over while the repository is held
//! ([`spool`]); and the retention rule that keeps recovery possible ([`retain`]).

pub mod archive;
/// WAL positions and file names.
pub use crate::source::lsn;
/// Base backups as the backup reads them (kept beside the other sources).
pub use crate::source::pgbase as base;
mod point;
pub mod recover;
pub mod retain;
pub mod spool;

pub use point::{
    check_restore_point_name, create_restore_point, find_restore_point, record_restore_point,
};

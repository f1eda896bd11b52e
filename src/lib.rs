//! strata: a content-addressed, deduplicating snapshot store for application state.
//!
//! A backup walks its sources, cuts every file into chunks (FastCDC for general files, page
//! boundaries for SQLite databases), names each chunk by its BLAKE3 hash, compresses the chunks
//! the repository does not have yet with zstd and appends them to pack files. Each file's list of
//! chunks is itself stored as a content-defined tree of nodes, so an unchanged file costs one id.
//! Packs are fsynced before the redb index that points into them commits; the snapshot manifest
//! commits with the index and is also written as its own file. Restore reads chunks back through
//! the index, checks each against its hash, and renames each finished file into place.
//!
//! # Embedding
//!
//! Snapshot a directory from a program and restore it (`examples/embed.rs` is the same as a
//! program; `strata serve` adds schedules, retention and an HTTP API on top):
//!
//! ```
//! use strata::backup::{BackupOptions, backup};
//! use strata::restore::{RestoreOptions, restore};
//! use strata::{Config, Repo, chunker::ChunkerParams, snapshots};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let tmp = tempfile::tempdir()?;
//! # let (repo_dir, state, target) = (tmp.path().join("repo"), tmp.path().join("state"), tmp.path().join("out"));
//! # std::fs::create_dir_all(&state)?;
//! std::fs::write(state.join("memory.jsonl"), "{\"text\":\"hi\"}\n")?;
//! let repo = Repo::init(&repo_dir, Config::new(ChunkerParams::default(), 1)?)?;
//! let saved = backup(&repo, &BackupOptions::new(vec![state.clone()]))?;
//! let again = backup(&repo, &BackupOptions::new(vec![state.clone()]))?;
//! assert_eq!(again.manifest.stats.new_stored_bytes, 0); // unchanged: nothing new stored
//!
//! let all = snapshots::list(&repo)?;
//! let first = snapshots::resolve(&all, &saved.id.to_hex())?;
//! restore(&repo, &first.manifest, &RestoreOptions::new(target.clone()))?;
//! assert_eq!(std::fs::read(target.join("state/memory.jsonl"))?, std::fs::read(state.join("memory.jsonl"))?);
//! # Ok(())
//! # }
//! ```

pub mod backup;
pub mod blobs;
pub mod chunker;
pub mod codec;
mod commit;
pub mod compress;
pub mod copy;
pub mod crypto;
pub mod diff;
pub mod error;
pub mod follow;
#[cfg(feature = "testing")]
pub mod fuzzing;
pub mod gc;
pub mod hooks;
pub mod id;
pub mod index;
pub mod layout;
pub mod manifest;
pub mod mount;
pub mod nodecache;
pub mod pack;
pub mod packer;
pub mod pagemap;
pub mod pagesums;
pub mod pg;
pub mod readers;
pub mod refs;
pub mod repair;
pub mod repo;
pub mod restore;
pub mod retention;
pub mod s3;
pub mod schedule;
pub mod snapshots;
pub mod source;
pub mod stats;
pub mod storage;
pub mod sys;
pub mod tree;
pub mod tune;
pub mod verify;

pub use error::{Error, ErrorKind, Result};
pub use id::{ChunkId, SnapshotId};
pub use manifest::Manifest;
pub use repo::{Config, Repo};

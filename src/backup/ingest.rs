//! Reading what is not in the file cache: the files of a store as its capture reaches them, and
//! named streams.

use super::cache::{Stored, cached_stamp};
use super::cdc::{ReadContext, read_cdc};
use super::file::{ReadFile, read_file};
use super::writer::{FileState, Shared};
use crate::error::{Error, Result};
use crate::id::ChunkId;
use crate::manifest::Content;
use crate::source::capture::{FileRead, Group, GroupIo};
use crate::source::sqlite::looks_paged;
use crate::source::streams::{Head, StreamSource};
use crate::source::walk::WalkItem;
use crate::tree::TreeBuilder;
use std::collections::HashMap;
use std::path::PathBuf;

/// What a store's capture knows of one of its files.
pub(super) enum Got {
    /// From the file cache.
    Cached(Stored),
    Read(Box<ReadFile>),
}

/// A store's files as the backup reaches them.
pub(super) struct StoreIo<'a, 'r> {
    pub(super) shared: &'a Shared<'r>,
    pub(super) group: &'a Group,
    pub(super) txn: &'a redb::ReadTransaction,
    pub(super) excludes: &'a crate::source::walk::Excludes,
    pub(super) start_ns: i64,
    /// Which files are SQLite databases, once looked at.
    pub(super) is_db: HashMap<PathBuf, bool>,
}

impl GroupIo<Got> for StoreIo<'_, '_> {
    fn list(&mut self) -> Result<(Vec<WalkItem>, Vec<String>)> {
        let rel = self.group.rel.clone();
        let prefix = rel.iter().position(|&b| b == b'/').unwrap_or(rel.len()) + 1;
        let walked = crate::source::walk::walk_below(
            &self.group.root,
            rel,
            prefix,
            &self.shared.repo.root,
            self.excludes,
        )?;
        Ok((walked.items, walked.errors))
    }

    fn is_database(&mut self, item: &WalkItem) -> bool {
        let databases = self.shared.databases;
        *self
            .is_db
            .entry(item.abs.clone())
            .or_insert_with(|| databases.contains(&item.abs) || looks_paged(&item.abs))
    }

    fn read(&mut self, item: &WalkItem) -> Result<Option<FileRead<Got>>> {
        let previous = cached_stamp(self.shared.repo, self.txn, &item.abs)?;
        match read_file(self.shared, item, previous.as_ref(), self.start_ns) {
            Ok(rf) => Ok(Some(FileRead {
                seen: rf.seen,
                stable: rf.stable,
                data: Got::Read(Box::new(rf)),
            })),
            Err(e) if e.kind() == crate::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// A stream read to its end: its content, size and details for its `Source`.
pub(super) type ReadStream = (Content, u64, Vec<(String, String)>);

/// Reads a stream source to its end.
pub(super) fn read_stream_source(shared: &Shared, src: &StreamSource) -> Result<ReadStream> {
    let mut builder = TreeBuilder::new(shared.key);
    let mut emit = |id: ChunkId, bytes: Vec<u8>| shared.store_node(id, bytes);
    let mut state = FileState {
        prev: None,
        sums: None,
        builder: &mut builder,
        emit: &mut emit,
    };
    let what = std::path::PathBuf::from(&src.name);
    let (kind, described) = src.describe();
    let kind = kind.as_str();
    let (size, head) = match src.command() {
        None => {
            let mut input = Head {
                inner: std::io::stdin().lock(),
                head: Vec::new(),
            };
            let size = read_cdc(shared, &mut input, crate::chunker::WINDOW, &mut state, None)
                .ctx("read standard input for", &what)?;
            (size, input.head)
        }
        Some(mut command) => {
            let program = command.get_program().to_string_lossy().into_owned();
            let mut child = command
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .map_err(|e| {
                    Error::invalid(format!(
                        "{kind} source {} ({described}): cannot run {program}: {e}",
                        src.name
                    ))
                })?;
            let mut out = Head {
                inner: child.stdout.take().expect("stdout is piped"),
                head: Vec::new(),
            };
            let read = read_cdc(shared, &mut out, crate::chunker::WINDOW, &mut state, None);
            if read.is_err() {
                let _ = child.kill();
            }
            let status = child.wait().map_err(|e| {
                Error::invalid(format!(
                    "{kind} source {} ({described}): waiting for {program}: {e}",
                    src.name
                ))
            })?;
            let size = read.ctx("read the output of the command for", &what)?;
            if !status.success() {
                return Err(Error::invalid(format!(
                    "{kind} source {} ({described}): {program} failed ({status})",
                    src.name
                )));
            }
            (size, out.head)
        }
    };
    let content = builder.finish(&mut emit)?;
    Ok((content, size, src.details(&head)))
}

//! What the previous version of a file says about this one: its chunks, by offset.

use crate::error::Result;
use crate::id::ChunkId;
use crate::index::FileStamp;
use crate::tree::{LeafWalker, NodeEntry};

/// Tracks the previous version of a file so unchanged chunks at the same offset are recognised
/// without an index lookup.
pub(super) struct PreviousVersion<'a> {
    walker: LeafWalker<'a>,
    current: Option<(u64, ChunkId, u64)>,
    next_offset: u64,
    broken: bool,
}

impl<'a> PreviousVersion<'a> {
    /// The chunks of the version `stamp` names, their nodes read with `fetch`. The previous
    /// version is only a hint: if it cannot be read (its snapshots were forgotten and
    /// collected), `None`, and the file is simply deduplicated through the index.
    pub(super) fn of(
        stamp: &FileStamp,
        fetch: &'a (dyn Fn(&ChunkId) -> Result<Vec<u8>> + Sync),
    ) -> Option<Self> {
        LeafWalker::new(&stamp.content, stamp.size, fetch)
            .ok()
            .map(PreviousVersion::new)
    }

    fn new(walker: LeafWalker<'a>) -> Self {
        PreviousVersion {
            walker,
            current: None,
            next_offset: 0,
            broken: false,
        }
    }

    /// The next chunk of the previous version, in file order.
    pub(super) fn next_chunk(&mut self) -> Option<Known> {
        if self.current.is_none() && !self.broken {
            self.advance();
        }
        self.current.take()
    }

    /// The chunks of the previous version that start in `[start, end)`, by ascending offset.
    /// Calls must ask for ranges in ascending order.
    pub(super) fn chunks_in(&mut self, start: u64, end: u64) -> Vec<Known> {
        let mut out = Vec::new();
        loop {
            if self.current.is_none() {
                if self.broken {
                    return out;
                }
                self.advance();
                continue;
            }
            let (off, id, len) = self.current.expect("checked above");
            if off >= end {
                return out;
            }
            if off >= start {
                out.push((off, id, len));
            }
            self.current = None;
        }
    }

    fn advance(&mut self) {
        match self.walker.next_leaf() {
            Ok(Some(e)) => {
                self.current = Some((self.next_offset, e.id, e.bytes));
                self.next_offset += e.bytes;
            }
            // The previous version is only a hint: on its end or any error, stop using it.
            _ => self.broken = true,
        }
    }

    /// At the start of one of the previous version's leaf nodes (no chunk of it taken yet): that
    /// node's entry and whether it is the last, unread (see [`LeafWalker::next_leaf_node`]).
    pub(super) fn leaf_node(&mut self) -> Option<(NodeEntry, bool)> {
        if self.current.is_some() || self.broken {
            return None;
        }
        self.walker.next_leaf_node().ok().flatten()
    }

    /// Passes the leaf node [`PreviousVersion::leaf_node`] returned.
    pub(super) fn skip_leaf_node(&mut self, leaf: &NodeEntry) {
        self.walker.skip_leaf_node();
        self.next_offset += leaf.bytes;
    }

    pub(super) fn has(&mut self, offset: u64, id: &ChunkId) -> bool {
        loop {
            if self.broken {
                return false;
            }
            if let Some((off, cid, len)) = self.current
                && off + len > offset
            {
                return off == offset && cid == *id;
            }
            self.advance();
        }
    }
}

/// A chunk of the previous version: its offset in the file, id and length.
pub(super) type Known = (u64, ChunkId, u64);

/// The previous version's chunk at file offset `off`, if one started there.
pub(super) fn known_at(known: &[Known], off: u64) -> Option<&Known> {
    known
        .binary_search_by_key(&off, |k| k.0)
        .ok()
        .map(|p| &known[p])
}

/// True if the previous version had the page `id` at file offset `off`.
pub(super) fn is_known(known: &[Known], off: u64, id: &ChunkId) -> bool {
    known_at(known, off).is_some_and(|k| k.1 == *id)
}

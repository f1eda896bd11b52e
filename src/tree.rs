//! Chunk-list trees: a file's list of chunks, stored content-addressed.
//!
//! A file of many chunks is described by a tree of nodes. Leaf nodes (level 0) list data chunk
//! ids with their lengths; a node of level L > 0 lists child nodes of level L - 1 with the number
//! of file bytes below each. A node ends after an entry whose id has its low bits zero (one in
//! [`FANOUT`] on average) or at [`MAX_ENTRIES`], so node boundaries depend on content: an
//! unchanged file costs one root id in the next manifest, and a file with a few changed chunks adds
//! about one leaf per change plus the path to the root.
//!
//! Node encoding (hashed, so it must never change within a version):
//! `version u8 = 1 | level u8 | count u32 LE | count x (id[32] | bytes u64 LE)`.

use crate::error::{Error, Result};
use crate::id::ChunkId;
use crate::manifest::Content;

pub const NODE_VERSION: u8 = 1;
pub const FANOUT: u32 = 64;
pub const MAX_ENTRIES: usize = 1024;
const NODE_HEADER: usize = 6;
const NODE_ENTRY: usize = 40;
/// Trees deeper than this cannot occur for files below 2^64 bytes; deeper means damage.
pub const MAX_LEVEL: u8 = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeEntry {
    pub id: ChunkId,
    /// Raw bytes of the chunk (leaf) or of the whole subtree (interior).
    pub bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub level: u8,
    pub entries: Vec<NodeEntry>,
}

impl Node {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(NODE_HEADER + self.entries.len() * NODE_ENTRY);
        out.push(NODE_VERSION);
        out.push(self.level);
        out.extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        for e in &self.entries {
            out.extend_from_slice(e.id.as_bytes());
            out.extend_from_slice(&e.bytes.to_le_bytes());
        }
        out
    }

    pub fn decode(b: &[u8], what: &dyn std::fmt::Display) -> Result<Node> {
        if b.len() < NODE_HEADER {
            return Err(Error::corrupt(format!("{what}: node too short")));
        }
        if b[0] != NODE_VERSION {
            return Err(Error::corrupt(format!(
                "{what}: unknown node version {}",
                b[0]
            )));
        }
        let level = b[1];
        let count = u32::from_le_bytes(b[2..6].try_into().unwrap()) as usize;
        if level > MAX_LEVEL
            || count == 0
            || count > MAX_ENTRIES
            || b.len() != NODE_HEADER + count * NODE_ENTRY
        {
            return Err(Error::corrupt(format!(
                "{what}: malformed node (level {level}, {count} entries, {} bytes)",
                b.len()
            )));
        }
        let entries = b[NODE_HEADER..]
            .chunks_exact(NODE_ENTRY)
            .map(|e| NodeEntry {
                id: ChunkId(e[..32].try_into().unwrap()),
                bytes: u64::from_le_bytes(e[32..40].try_into().unwrap()),
            })
            .collect();
        Ok(Node { level, entries })
    }

    pub fn total_bytes(&self) -> Option<u64> {
        self.entries
            .iter()
            .try_fold(0u64, |acc, e| acc.checked_add(e.bytes))
    }
}

fn is_cut(id: &ChunkId, len: usize) -> bool {
    len >= MAX_ENTRIES || id.cut_bits().is_multiple_of(FANOUT)
}

/// Builds a tree from chunks pushed in file order. Each finished node is handed to `emit`
/// (id, encoded bytes) bottom-up, so children are always emitted before their parents.
pub struct TreeBuilder {
    levels: Vec<Vec<NodeEntry>>,
    key: Option<[u8; 32]>,
    chunks: u64,
    single: Option<ChunkId>,
}

impl TreeBuilder {
    pub fn new(key: Option<[u8; 32]>) -> Self {
        TreeBuilder {
            levels: vec![Vec::new()],
            key,
            chunks: 0,
            single: None,
        }
    }

    /// True until the first chunk is pushed.
    pub fn is_empty(&self) -> bool {
        self.chunks == 0
    }

    pub fn push(
        &mut self,
        id: ChunkId,
        bytes: u64,
        emit: &mut dyn FnMut(ChunkId, Vec<u8>) -> Result<()>,
    ) -> Result<()> {
        self.chunks += 1;
        self.single = Some(id);
        self.push_at(0, NodeEntry { id, bytes }, emit)
    }

    /// Whether the next chunk pushed starts a leaf node: none is open.
    pub fn at_leaf_start(&self) -> bool {
        self.levels[0].is_empty()
    }

    /// Pushes a whole leaf node already stored (`leaf`: its id and the bytes below it) that
    /// lists `chunks` chunks, instead of its chunks one by one. Only at a leaf's start
    /// ([`TreeBuilder::at_leaf_start`]), and only for a leaf that ended at a cut (not the last
    /// leaf of its tree): pushing its chunks would then build exactly this node.
    pub fn push_leaf(
        &mut self,
        leaf: NodeEntry,
        chunks: u64,
        emit: &mut dyn FnMut(ChunkId, Vec<u8>) -> Result<()>,
    ) -> Result<()> {
        if !self.at_leaf_start() || chunks < 2 {
            return Err(Error::invalid("a whole leaf pushed inside another"));
        }
        self.chunks += chunks;
        if self.levels.len() == 1 {
            self.levels.push(Vec::new());
        }
        self.push_at(1, leaf, emit)
    }

    fn push_at(
        &mut self,
        level: usize,
        entry: NodeEntry,
        emit: &mut dyn FnMut(ChunkId, Vec<u8>) -> Result<()>,
    ) -> Result<()> {
        self.levels[level].push(entry);
        if is_cut(&entry.id, self.levels[level].len()) {
            self.flush_level(level, emit)?;
        }
        Ok(())
    }

    fn flush_level(
        &mut self,
        level: usize,
        emit: &mut dyn FnMut(ChunkId, Vec<u8>) -> Result<()>,
    ) -> Result<()> {
        let entries = std::mem::take(&mut self.levels[level]);
        let node = Node {
            level: level as u8,
            entries,
        };
        let bytes = node.total_bytes().unwrap_or(u64::MAX);
        let encoded = node.encode();
        let id = ChunkId::hash(self.key.as_ref(), &encoded);
        emit(id, encoded)?;
        if self.levels.len() == level + 1 {
            self.levels.push(Vec::new());
        }
        self.push_at(level + 1, NodeEntry { id, bytes }, emit)
    }

    /// Completes the tree and returns how the file's content is referenced.
    pub fn finish(
        mut self,
        emit: &mut dyn FnMut(ChunkId, Vec<u8>) -> Result<()>,
    ) -> Result<Content> {
        match self.chunks {
            0 => return Ok(Content::Empty),
            1 => return Ok(Content::Chunk(self.single.expect("one chunk pushed"))),
            _ => {}
        }
        let mut level = 0;
        loop {
            let top = self.levels.len() - 1;
            let pending = self.levels[level].len();
            let above_empty = self.levels[level + 1..].iter().all(|l| l.is_empty());
            if level > 0 && pending == 1 && above_empty {
                return Ok(Content::Tree(self.levels[level][0].id));
            }
            if pending > 0 {
                self.flush_level(level, emit)?;
            }
            if level == top && self.levels.len() == top + 1 && pending == 0 {
                // Nothing at or above this level: cannot happen with at least two chunks.
                return Err(Error::corrupt("chunk-list tree builder lost its entries"));
            }
            level += 1;
        }
    }
}

/// Reads the leaves of a tree in order, holding one node per level in memory.
pub struct LeafWalker<'a> {
    fetch: &'a (dyn Fn(&ChunkId) -> Result<Vec<u8>> + Sync),
    stack: Vec<(Node, usize)>,
    pending_single: Option<ChunkId>,
    single_len: u64,
}

impl<'a> LeafWalker<'a> {
    /// `fetch` returns a node's plain bytes by id (already checked against the id).
    /// `size` is the file size recorded in the manifest.
    pub fn new(
        content: &Content,
        size: u64,
        fetch: &'a (dyn Fn(&ChunkId) -> Result<Vec<u8>> + Sync),
    ) -> Result<Self> {
        let mut w = LeafWalker {
            fetch,
            stack: Vec::new(),
            pending_single: None,
            single_len: size,
        };
        match content {
            Content::Empty => {}
            Content::Chunk(id) => w.pending_single = Some(*id),
            Content::Tree(root) => {
                let node = w.load(root, None)?;
                w.stack.push((node, 0));
            }
            Content::Pages(map) => {
                return Err(Error::invalid(format!(
                    "page map {} is not a chunk list",
                    map.short()
                )));
            }
        }
        Ok(w)
    }

    /// The file size the root node gives (the sum of its entries), for a file with a chunk-list
    /// tree; `None` for other contents or sizes that overflow. Only the root has been read: the
    /// walk checks the rest.
    pub fn root_total(&self) -> Option<u64> {
        let (root, _) = self.stack.first()?;
        root.entries
            .iter()
            .try_fold(0u64, |sum, e| sum.checked_add(e.bytes))
    }

    fn load(&self, id: &ChunkId, expected_level: Option<u8>) -> Result<Node> {
        let bytes = (self.fetch)(id)?;
        let node = Node::decode(&bytes, &format_args!("chunk-list node {}", id.short()))?;
        if let Some(l) = expected_level
            && node.level != l
        {
            return Err(Error::corrupt(format!(
                "chunk-list node {}: level {} where {l} was expected",
                id.short(),
                node.level
            )));
        }
        Ok(node)
    }

    /// At the start of a leaf node: that node's entry (its id and the bytes below it), unread,
    /// and whether it is the tree's last leaf. `None` inside a leaf, at the end, or when the
    /// root is a leaf. [`LeafWalker::skip_leaf_node`] passes it without reading it;
    /// [`LeafWalker::next_leaf`] reads it.
    pub fn next_leaf_node(&mut self) -> Result<Option<(NodeEntry, bool)>> {
        loop {
            let Some((node, pos)) = self.current() else {
                return Ok(None);
            };
            match node.level {
                0 => return Ok(None),
                1 => {
                    let entry = node.entries[*pos];
                    let last = *pos + 1 == node.entries.len()
                        && self.stack[..self.stack.len() - 1]
                            .iter()
                            .all(|(n, p)| *p >= n.entries.len());
                    return Ok(Some((entry, last)));
                }
                level => {
                    let entry = node.entries[*pos];
                    *pos += 1;
                    self.descend(&entry, level - 1)?;
                }
            }
        }
    }

    /// Passes the leaf node [`LeafWalker::next_leaf_node`] returned, without reading it.
    pub fn skip_leaf_node(&mut self) {
        if let Some((node, pos)) = self.stack.last_mut()
            && node.level == 1
        {
            *pos += 1;
        }
    }

    /// The next (chunk id, length), or `None` at the end.
    pub fn next_leaf(&mut self) -> Result<Option<NodeEntry>> {
        if let Some(id) = self.pending_single.take() {
            return Ok(Some(NodeEntry {
                id,
                bytes: self.single_len,
            }));
        }
        loop {
            let Some((node, pos)) = self.current() else {
                return Ok(None);
            };
            let entry = node.entries[*pos];
            *pos += 1;
            if node.level == 0 {
                return Ok(Some(entry));
            }
            let child_level = node.level - 1;
            self.descend(&entry, child_level)?;
        }
    }

    /// The innermost node with entries left, and the position of the next one (nodes walked to
    /// their end are left on the way).
    fn current(&mut self) -> Option<&mut (Node, usize)> {
        while self
            .stack
            .last()
            .is_some_and(|(node, pos)| *pos >= node.entries.len())
        {
            self.stack.pop();
        }
        self.stack.last_mut()
    }

    /// Reads the child node `entry` names, of level `level`, checks its size against the
    /// entry's, and walks into it.
    fn descend(&mut self, entry: &NodeEntry, level: u8) -> Result<()> {
        let child = self.load(&entry.id, Some(level))?;
        if child.total_bytes() != Some(entry.bytes) {
            return Err(Error::corrupt(format!(
                "chunk-list node {}: size does not match its parent",
                entry.id.short()
            )));
        }
        self.stack.push((child, 0));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;
    use std::sync::Mutex;

    fn build(ids: &[(ChunkId, u64)], store: &mut HashMap<ChunkId, Vec<u8>>) -> Content {
        let mut b = TreeBuilder::new(None);
        let mut emit = |id: ChunkId, bytes: Vec<u8>| {
            store.insert(id, bytes);
            Ok(())
        };
        for (id, len) in ids {
            b.push(*id, *len, &mut emit).unwrap();
        }
        b.finish(&mut emit).unwrap()
    }

    fn leaves(
        content: &Content,
        size: u64,
        store: &HashMap<ChunkId, Vec<u8>>,
    ) -> Vec<(ChunkId, u64)> {
        let fetch = |id: &ChunkId| {
            store
                .get(id)
                .cloned()
                .ok_or_else(|| Error::not_found("node"))
        };
        let mut w = LeafWalker::new(content, size, &fetch).unwrap();
        let mut out = Vec::new();
        while let Some(e) = w.next_leaf().unwrap() {
            out.push((e.id, e.bytes));
        }
        out
    }

    fn ids(n: usize, salt: u64) -> Vec<(ChunkId, u64)> {
        (0..n)
            .map(|i| (ChunkId::hash(None, &(i as u64 ^ salt).to_le_bytes()), 4096))
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        #[test]
        fn tree_round_trip(n in 0usize..5000, salt in any::<u64>()) {
            let list = ids(n, salt);
            let mut store = HashMap::new();
            let content = build(&list, &mut store);
            let size: u64 = list.iter().map(|x| x.1).sum();
            prop_assert_eq!(leaves(&content, size, &store), list);
        }

        /// Rebuilding a tree with some entries replaced, pushing the untouched leaves whole
        /// (unread) where the builder is at a leaf's start, gives the tree built entry by entry.
        #[test]
        fn whole_leaves_pushed_unread_build_the_same_tree(
            n in 2usize..6000,
            salt in any::<u64>(),
            changes in proptest::collection::vec(any::<u16>(), 0..8),
        ) {
            let old = ids(n, salt);
            let mut store = HashMap::new();
            let content = build(&old, &mut store);
            let mut new = old.clone();
            let mut changed = std::collections::BTreeSet::new();
            for (k, c) in changes.iter().enumerate() {
                let at = *c as usize % n;
                new[at] = (ChunkId::hash(None, &[k as u8, 1, 2]), 4096);
                changed.insert(at);
            }
            let expected = build(&new, &mut store);
            let snapshot = store.clone();
            let fetch = |id: &ChunkId| {
                snapshot.get(id).cloned().ok_or_else(|| Error::not_found("node"))
            };
            let mut w = LeafWalker::new(&content, 0, &fetch).unwrap();
            let mut b = TreeBuilder::new(None);
            let mut emit = |id: ChunkId, bytes: Vec<u8>| {
                store.insert(id, bytes);
                Ok(())
            };
            let (mut i, mut skipped) = (0usize, 0usize);
            while i < n {
                if b.at_leaf_start()
                    && let Some((leaf, last)) = w.next_leaf_node().unwrap()
                {
                    let count = (leaf.bytes / 4096) as usize;
                    if !last && count >= 2 && !changed.range(i..i + count).any(|_| true) {
                        w.skip_leaf_node();
                        b.push_leaf(leaf, count as u64, &mut emit).unwrap();
                        i += count;
                        skipped += 1;
                        continue;
                    }
                }
                let e = w.next_leaf().unwrap().unwrap();
                prop_assert_eq!(e.bytes, 4096);
                b.push(new[i].0, 4096, &mut emit).unwrap();
                i += 1;
            }
            prop_assert!(w.next_leaf().unwrap().is_none());
            prop_assert_eq!(b.finish(&mut emit).unwrap(), expected);
            // Large trees with few changes keep most of their leaves.
            if n > 1000 && changes.len() < 4 {
                prop_assert!(skipped > 0);
            }
        }

        #[test]
        fn node_decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Node::decode(&bytes, &"n");
        }
    }

    #[test]
    fn the_root_gives_the_size_of_the_file_it_lists() {
        let mut store = HashMap::new();
        for n in [2usize, 70, 5000] {
            let mut list = ids(n, n as u64);
            list[n / 2].1 = 100;
            let content = build(&list, &mut store);
            let size: u64 = list.iter().map(|x| x.1).sum();
            let fetch = |id: &ChunkId| {
                store
                    .get(id)
                    .cloned()
                    .ok_or_else(|| Error::not_found("node"))
            };
            // The manifest's size does not enter into it: a hostile one gets the true total.
            let w = LeafWalker::new(&content, size + 1, &fetch).unwrap();
            assert_eq!(w.root_total(), Some(size), "{n} chunks");
        }
        let fetch = |_: &ChunkId| -> Result<Vec<u8>> { Err(Error::not_found("node")) };
        let one = Content::Chunk(ChunkId::hash(None, b"x"));
        for content in [Content::Empty, one] {
            let w = LeafWalker::new(&content, 1, &fetch).unwrap();
            assert_eq!(w.root_total(), None);
        }
    }

    #[test]
    fn a_changed_chunk_adds_few_nodes() {
        let list = ids(100_000, 1);
        let mut store = HashMap::new();
        build(&list, &mut store);
        let before = store.len();
        let mut changed = list.clone();
        changed[50_000].0 = ChunkId::hash(None, b"new page");
        let new = Mutex::new(0);
        let mut store2 = store.clone();
        build(&changed, &mut store2);
        *new.lock().unwrap() = store2.len() - before;
        // One leaf plus one node per level above it.
        assert!(
            *new.lock().unwrap() <= 4,
            "added {} nodes",
            store2.len() - before
        );
        assert!(before > 100_000 / 1024);
    }

    #[test]
    fn single_and_empty() {
        let mut store = HashMap::new();
        assert_eq!(build(&[], &mut store), Content::Empty);
        let one = ids(1, 9);
        assert_eq!(build(&one, &mut store), Content::Chunk(one[0].0));
        assert!(store.is_empty());
    }
}

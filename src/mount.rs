//! The repository's snapshots as a read-only file system (`strata mount`, through FUSE):
//!
//! ```text
//! MOUNTPOINT/snapshots/ID/...   each snapshot, by the first 8 hex digits of its id (more where
//!                               two share them), holding its files as they were saved
//!           /by-name/NAME       the newest snapshot of that name: a link to snapshots/ID
//!           /by-time/TIME       each snapshot by its local time, 2026-12-07T14:00:00 (a link)
//!           /latest             the newest snapshot that is not a restore point (a link)
//! ```
//!
//! A file is read when it is read: its chunk list on open, then the chunks a read covers, each
//! checked against its id (a chunk that does not check out fails the read with `EIO`, never
//! gives wrong bytes). The view is of the repository as it was when it was mounted; the mount
//! counts as a reader, so a gc beside it keeps the packs it reads.

use crate::blobs::{BlobReader, blob_in_frame, check_hash};
use crate::error::{Error, Result};
use crate::id::ChunkId;
use crate::index::IndexReader;
use crate::manifest::{Content, Entry, EntryKind};
use crate::repo::Repo;
use crate::snapshots::{RESTORE_POINT, Snapshot};
use crate::tree::LeafWalker;
use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, Request,
};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Snapshots never change: the kernel may keep what it was told.
const TTL: Duration = Duration::from_secs(3600);

const ROOT: u64 = 1;
const SNAPSHOTS: u64 = 2;
const BY_NAME: u64 = 3;
const BY_TIME: u64 = 4;
const LATEST: u64 = 5;
/// Inode kinds, in the top byte.
const TAG_NAME: u64 = 1;
const TAG_TIME: u64 = 2;
const TAG_SNAP: u64 = 3;
const TAG_ENTRY: u64 = 4;

/// What an inode number stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Node {
    Fixed(u64),
    /// A link in by-name, by its place there.
    Name(usize),
    /// A link in by-time.
    Time(usize),
    /// A snapshot's top directory.
    Snap(usize),
    /// Entry `e` of snapshot `s`.
    Entry(usize, usize),
}

impl Node {
    fn ino(self) -> INodeNo {
        INodeNo(match self {
            Node::Fixed(n) => n,
            Node::Name(i) => TAG_NAME << 56 | i as u64,
            Node::Time(i) => TAG_TIME << 56 | i as u64,
            Node::Snap(s) => TAG_SNAP << 56 | s as u64,
            Node::Entry(s, e) => TAG_ENTRY << 56 | (s as u64) << 32 | e as u64,
        })
    }

    fn of(ino: INodeNo) -> Option<Node> {
        let n = u64::from(ino);
        let payload = n & ((1 << 56) - 1);
        Some(match n >> 56 {
            0 if (ROOT..=LATEST).contains(&n) => Node::Fixed(n),
            TAG_NAME => Node::Name(payload as usize),
            TAG_TIME => Node::Time(payload as usize),
            TAG_SNAP => Node::Snap(payload as usize),
            TAG_ENTRY => Node::Entry((payload >> 32) as usize, (payload & 0xFFFF_FFFF) as usize),
            _ => return None,
        })
    }
}

/// The directories of one snapshot: each directory's entries (by index), the top level under
/// `None`.
struct Dirs {
    children: HashMap<Option<usize>, Vec<usize>>,
}

impl Dirs {
    fn of(snap: &Snapshot) -> Dirs {
        let entries = &snap.manifest.entries;
        let by_path: HashMap<&[u8], usize> = entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.kind == EntryKind::Dir)
            .map(|(i, e)| (&e.path[..], i))
            .collect();
        let mut children: HashMap<Option<usize>, Vec<usize>> = HashMap::new();
        for (i, e) in entries.iter().enumerate() {
            let parent = match e.path.iter().rposition(|b| *b == b'/') {
                None => None,
                Some(cut) => match by_path.get(&e.path[..cut]) {
                    Some(&p) => Some(p),
                    // A parent the manifest does not list: not reachable, left out.
                    None => continue,
                },
            };
            children.entry(parent).or_default().push(i);
        }
        Dirs { children }
    }
}

/// A file being read: where each of its chunks starts, and the frames last read for it.
struct OpenFile {
    chunks: Vec<(u64, ChunkId)>,
    size: u64,
    /// The last few frames decompressed, newest last: the kernel's reads of one file come from
    /// more than one thread and not always in order.
    frames: Mutex<std::collections::VecDeque<FrameCache>>,
    /// A file stored as a page map is read through its map instead of `chunks`.
    paged: Option<crate::restore::paged::PagedReader>,
}

/// Frames kept per open file.
const FRAMES_KEPT: usize = 16;

/// A decompressed frame, by pack and offset.
struct FrameCache {
    key: (u32, u32),
    raw: Arc<Vec<u8>>,
    pack: String,
}

/// The read-only file system of a repository's snapshots.
pub struct SnapshotFs {
    repo: Repo,
    /// The index as it was at mount, and the read transaction that holds it there.
    index: IndexReader,
    _txn: redb::ReadTransaction,
    snaps: Vec<Snapshot>,
    /// Directory names under snapshots/, by snapshot.
    dir_names: Vec<String>,
    by_name: Vec<(String, usize)>,
    by_time: Vec<(String, usize)>,
    latest: Option<usize>,
    dirs: Vec<OnceLock<Dirs>>,
    open: Mutex<HashMap<u64, Arc<OpenFile>>>,
    next_fh: AtomicU64,
    mounted: SystemTime,
    uid: u32,
    gid: u32,
}

impl SnapshotFs {
    /// The file system of `snaps` (oldest first, as `snapshots::list` gives them) in `repo`.
    pub fn new(repo: Repo, snaps: Vec<Snapshot>) -> Result<SnapshotFs> {
        let txn = repo.index.read()?;
        let index = IndexReader::new(&txn)?;
        let dir_names = short_names(&snaps);
        let mut by_name: Vec<(String, usize)> = Vec::new();
        for (i, s) in snaps.iter().enumerate() {
            if let Some(n) = &s.manifest.name
                && !n.is_empty()
                && !n.contains('/')
                && n != "."
                && n != ".."
            {
                match by_name.iter_mut().find(|(name, _)| name == n) {
                    Some(slot) => slot.1 = i,
                    None => by_name.push((n.clone(), i)),
                }
            }
        }
        let mut by_time: Vec<(String, usize)> = Vec::new();
        for (i, s) in snaps.iter().enumerate() {
            let base = s.manifest.time().format("%Y-%m-%dT%H:%M:%S").to_string();
            let mut name = base.clone();
            let mut k = 2;
            while by_time.iter().any(|(n, _)| *n == name) {
                name = format!("{base}.{k}");
                k += 1;
            }
            by_time.push((name, i));
        }
        let latest = snaps
            .iter()
            .rposition(|s| s.manifest.kind != RESTORE_POINT)
            .or_else(|| snaps.len().checked_sub(1));
        Ok(SnapshotFs {
            repo,
            index,
            _txn: txn,
            dirs: snaps.iter().map(|_| OnceLock::new()).collect(),
            dir_names,
            by_name,
            by_time,
            latest,
            snaps,
            open: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            mounted: SystemTime::now(),
            // SAFETY: getuid and getgid have no preconditions.
            uid: unsafe { libc::getuid() },
            gid: unsafe { libc::getgid() },
        })
    }

    fn dirs(&self, s: usize) -> &Dirs {
        self.dirs[s].get_or_init(|| Dirs::of(&self.snaps[s]))
    }

    fn entry(&self, s: usize, e: usize) -> Option<&Entry> {
        self.snaps.get(s)?.manifest.entries.get(e)
    }

    /// Where a link points, relative to the link.
    fn link_target(&self, node: Node) -> Option<String> {
        let snap = match node {
            Node::Fixed(LATEST) => {
                return Some(format!("snapshots/{}", self.dir_names[self.latest?]));
            }
            Node::Name(i) => self.by_name.get(i)?.1,
            Node::Time(i) => self.by_time.get(i)?.1,
            _ => return None,
        };
        Some(format!("../snapshots/{}", self.dir_names[snap]))
    }

    fn synthetic(&self, node: Node, kind: FileType, size: u64, time: SystemTime) -> FileAttr {
        FileAttr {
            ino: node.ino(),
            size,
            blocks: 0,
            atime: time,
            mtime: time,
            ctime: time,
            crtime: time,
            kind,
            perm: if kind == FileType::Directory {
                0o555
            } else {
                0o777
            },
            nlink: if kind == FileType::Directory { 2 } else { 1 },
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    fn attr(&self, node: Node) -> Option<FileAttr> {
        Some(match node {
            Node::Fixed(LATEST) | Node::Name(_) | Node::Time(_) => {
                let target = self.link_target(node)?;
                self.synthetic(node, FileType::Symlink, target.len() as u64, self.mounted)
            }
            Node::Fixed(ROOT | SNAPSHOTS | BY_NAME | BY_TIME) => {
                self.synthetic(node, FileType::Directory, 0, self.mounted)
            }
            Node::Fixed(_) => return None,
            Node::Snap(s) => {
                let time = time_of(self.snaps.get(s)?.manifest.time_ns);
                self.synthetic(node, FileType::Directory, 0, time)
            }
            Node::Entry(s, e) => {
                let entry = self.entry(s, e)?;
                let time = time_of(entry.mtime_ns);
                let (kind, size) = match entry.kind {
                    EntryKind::File => (FileType::RegularFile, entry.size),
                    EntryKind::Dir => (FileType::Directory, 0),
                    EntryKind::Symlink => (
                        FileType::Symlink,
                        entry.target.as_ref().map_or(0, |t| t.len() as u64),
                    ),
                };
                FileAttr {
                    ino: node.ino(),
                    size,
                    blocks: size.div_ceil(512),
                    atime: time,
                    mtime: time,
                    ctime: time,
                    crtime: time,
                    kind,
                    perm: (entry.mode & 0o7777) as u16,
                    nlink: if kind == FileType::Directory { 2 } else { 1 },
                    uid: entry.uid,
                    gid: entry.gid,
                    rdev: 0,
                    blksize: 4096,
                    flags: 0,
                }
            }
        })
    }

    /// A directory's entries: (node, kind, name).
    fn list(&self, node: Node) -> Option<Vec<(Node, FileType, Vec<u8>)>> {
        let link = |n: Node, name: &str| (n, FileType::Symlink, name.as_bytes().to_vec());
        Some(match node {
            Node::Fixed(ROOT) => {
                let mut v = vec![
                    (
                        Node::Fixed(SNAPSHOTS),
                        FileType::Directory,
                        b"snapshots".to_vec(),
                    ),
                    (
                        Node::Fixed(BY_NAME),
                        FileType::Directory,
                        b"by-name".to_vec(),
                    ),
                    (
                        Node::Fixed(BY_TIME),
                        FileType::Directory,
                        b"by-time".to_vec(),
                    ),
                ];
                if self.latest.is_some() {
                    v.push(link(Node::Fixed(LATEST), "latest"));
                }
                v
            }
            Node::Fixed(SNAPSHOTS) => self
                .dir_names
                .iter()
                .enumerate()
                .map(|(s, n)| (Node::Snap(s), FileType::Directory, n.as_bytes().to_vec()))
                .collect(),
            Node::Fixed(BY_NAME) => (0..self.by_name.len())
                .map(|i| link(Node::Name(i), &self.by_name[i].0))
                .collect(),
            Node::Fixed(BY_TIME) => (0..self.by_time.len())
                .map(|i| link(Node::Time(i), &self.by_time[i].0))
                .collect(),
            Node::Snap(s) => self.children(s, None),
            Node::Entry(s, e) if self.entry(s, e)?.kind == EntryKind::Dir => {
                self.children(s, Some(e))
            }
            _ => return None,
        })
    }

    fn children(&self, s: usize, parent: Option<usize>) -> Vec<(Node, FileType, Vec<u8>)> {
        let entries = &self.snaps[s].manifest.entries;
        self.dirs(s)
            .children
            .get(&parent)
            .map(|kids| {
                kids.iter()
                    .map(|&e| {
                        let entry = &entries[e];
                        let kind = match entry.kind {
                            EntryKind::File => FileType::RegularFile,
                            EntryKind::Dir => FileType::Directory,
                            EntryKind::Symlink => FileType::Symlink,
                        };
                        let name = entry.path.rsplit(|b| *b == b'/').next().unwrap_or(&[]);
                        (Node::Entry(s, e), kind, name.to_vec())
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Opens the file entry `e` of snapshot `s`: its chunk list, read and checked.
    fn open_file(&self, s: usize, e: usize) -> Result<OpenFile> {
        let entry = self
            .entry(s, e)
            .filter(|e| e.kind == EntryKind::File)
            .ok_or_else(|| Error::invalid("not a file"))?;
        let blobs = BlobReader::new(&self.repo, &self.index)?;
        if let Content::Pages(map) = &entry.content {
            let map = crate::restore::paged::load(&blobs, entry, map)?;
            return Ok(OpenFile {
                chunks: Vec::new(),
                size: entry.size,
                frames: Mutex::new(std::collections::VecDeque::new()),
                paged: Some(crate::restore::paged::PagedReader::new(map)),
            });
        }
        let fetch = |id: &ChunkId| blobs.read(id);
        let mut chunks = Vec::new();
        let mut at = 0u64;
        if !matches!(entry.content, Content::Empty) {
            let mut walker = LeafWalker::new(&entry.content, entry.size, &fetch)?;
            while let Some(leaf) = walker.next_leaf()? {
                chunks.push((at, leaf.id));
                at += leaf.bytes;
            }
        }
        if at != entry.size {
            return Err(Error::corrupt(format!(
                "{}: its chunks hold {at} bytes, the snapshot says {}",
                entry.path_lossy(),
                entry.size
            )));
        }
        Ok(OpenFile {
            chunks,
            size: entry.size,
            frames: Mutex::new(std::collections::VecDeque::new()),
            paged: None,
        })
    }

    /// Up to `len` bytes of `file` at `offset`, every chunk checked against its id.
    fn read_file(&self, file: &OpenFile, offset: u64, len: usize) -> Result<Vec<u8>> {
        let end = offset.saturating_add(len as u64).min(file.size);
        let mut out = Vec::with_capacity(end.saturating_sub(offset) as usize);
        if offset >= end {
            return Ok(out);
        }
        let blobs = BlobReader::new(&self.repo, &self.index)?;
        if let Some(paged) = &file.paged {
            return paged.read_at(&blobs, offset, len);
        }
        let key = blobs.keys().map(|k| k.id_key());
        // The chunk holding `offset`, then on until `end`.
        let mut i = file.chunks.partition_point(|(start, _)| *start <= offset) - 1;
        let mut pos = offset;
        while pos < end {
            let (start, id) = file.chunks[i];
            let chunk_end = file.chunks.get(i + 1).map_or(file.size, |c| c.0);
            let loc = blobs.locate(&id)?;
            let frame_key = (loc.pack, loc.frame_offset);
            let cached = file
                .frames
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .find(|c| c.key == frame_key)
                .map(|c| (Arc::clone(&c.raw), c.pack.clone()));
            let (raw, pack) = match cached {
                Some(hit) => hit,
                None => {
                    let (raw, pack) = blobs.read_frame(&loc)?;
                    let raw = Arc::new(raw);
                    let mut frames = file.frames.lock().unwrap_or_else(|p| p.into_inner());
                    if frames.len() >= FRAMES_KEPT {
                        frames.pop_front();
                    }
                    frames.push_back(FrameCache {
                        key: frame_key,
                        raw: Arc::clone(&raw),
                        pack: pack.clone(),
                    });
                    (raw, pack)
                }
            };
            let data = blob_in_frame(&raw, &loc, &pack)?;
            check_hash(data, &loc, &id, key, &pack)?;
            if data.len() as u64 != chunk_end - start {
                return Err(Error::corrupt(format!(
                    "chunk {id}: {} bytes where the chunk list says {}",
                    data.len(),
                    chunk_end - start
                )));
            }
            let from = (pos - start) as usize;
            let to = (end.min(chunk_end) - start) as usize;
            out.extend_from_slice(&data[from..to]);
            pos = start + to as u64;
            i += 1;
        }
        Ok(out)
    }
}

/// Each snapshot's directory name: the first 8 hex digits of its id, more where that is not
/// enough to tell it from another.
fn short_names(snaps: &[Snapshot]) -> Vec<String> {
    let hexes: Vec<String> = snaps.iter().map(|s| s.id.to_hex()).collect();
    hexes
        .iter()
        .map(|h| {
            let mut n = 8;
            while n < h.len() && hexes.iter().filter(|o| o.starts_with(&h[..n])).count() > 1 {
                n += 4;
            }
            h[..n].to_string()
        })
        .collect()
}

fn time_of(ns: i64) -> SystemTime {
    match u64::try_from(ns) {
        Ok(ns) => UNIX_EPOCH + Duration::from_nanos(ns),
        Err(_) => UNIX_EPOCH,
    }
}

impl Filesystem for SnapshotFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let found = Node::of(parent)
            .and_then(|p| self.list(p))
            .and_then(|list| list.into_iter().find(|(_, _, n)| n == name.as_bytes()))
            .and_then(|(node, _, _)| self.attr(node));
        match found {
            Some(attr) => reply.entry(&TTL, &attr, Generation(0)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match Node::of(ino).and_then(|n| self.attr(n)) {
            Some(attr) => reply.attr(&TTL, &attr),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let Some(node) = Node::of(ino) else {
            return reply.error(Errno::ENOENT);
        };
        match node {
            Node::Entry(s, e) => match self.entry(s, e).and_then(|e| e.target.as_ref()) {
                Some(t) => reply.data(t),
                None => reply.error(Errno::EINVAL),
            },
            _ => match self.link_target(node) {
                Some(t) => reply.data(t.as_bytes()),
                None => reply.error(Errno::EINVAL),
            },
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.0 & libc::O_ACCMODE != libc::O_RDONLY {
            return reply.error(Errno::EROFS);
        }
        let Some(Node::Entry(s, e)) = Node::of(ino) else {
            return reply.error(Errno::EISDIR);
        };
        match self.open_file(s, e) {
            Ok(file) => {
                let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
                self.open
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(fh, Arc::new(file));
                reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE);
            }
            Err(err) => {
                tracing::error!(
                    "mount: opening {}: {err}",
                    self.entry(s, e).map(|e| e.path_lossy()).unwrap_or_default()
                );
                reply.error(Errno::EIO)
            }
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let file = self
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&u64::from(fh))
            .cloned();
        let Some(file) = file else {
            return reply.error(Errno::EBADF);
        };
        match self.read_file(&file, offset, size as usize) {
            Ok(data) => reply.data(&data),
            Err(err) => {
                tracing::error!("mount: reading at {offset}: {err}");
                reply.error(Errno::EIO)
            }
        }
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&u64::from(fh));
        reply.ok();
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let Some(node) = Node::of(ino) else {
            return reply.error(Errno::ENOENT);
        };
        let Some(list) = self.list(node) else {
            return reply.error(Errno::ENOTDIR);
        };
        let mut all = vec![
            (node, FileType::Directory, b".".to_vec()),
            (node, FileType::Directory, b"..".to_vec()),
        ];
        all.extend(list);
        for (i, (n, kind, name)) in all.into_iter().enumerate().skip(offset as usize) {
            if reply.add(n.ino(), (i + 1) as u64, kind, OsStr::from_bytes(&name)) {
                break;
            }
        }
        reply.ok();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inode_numbers_round_trip() {
        for n in [
            Node::Fixed(ROOT),
            Node::Fixed(LATEST),
            Node::Name(0),
            Node::Time(77),
            Node::Snap(12),
            Node::Entry(3, 0),
            Node::Entry((1 << 24) - 1, u32::MAX as usize),
        ] {
            assert_eq!(Node::of(n.ino()), Some(n));
        }
        assert_eq!(Node::of(INodeNo(0)), None);
        assert_eq!(Node::of(INodeNo(6)), None);
        assert_eq!(Node::of(INodeNo(9 << 56)), None);
    }
}

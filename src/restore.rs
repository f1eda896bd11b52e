//! Restore: reassemble files from verified chunks, stage each beside its destination, fsync,
//! rename into place. A reader of the destination sees the old file or the complete new one.

use crate::blobs::{BlobReader, check_hash, decode_frame, with_chunk};
use crate::error::{Error, IoContext, Result};
use crate::id::ChunkId;
use crate::index::{BlobLoc, IndexReader};
use crate::manifest::{Content, Entry, EntryKind, Manifest};
use crate::repo::Repo;
use crate::rollback::{Change, Changes};
use crate::storage::{sync_dir, temp_name};
use crate::sys::{exchange, set_mtime};
use crate::tree::{LeafWalker, NodeEntry};
use rayon::prelude::*;
use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

pub struct RestoreOptions {
    pub target: PathBuf,
    /// Only entries equal to or below these snapshot paths.
    pub paths: Vec<String>,
    /// Leave out what exists below a restored directory but is not in the snapshot (by default
    /// it is kept).
    pub delete: bool,
    /// Databases are about to be read (an integrity check): write them through the page cache,
    /// where the check finds them. Otherwise large files go straight to the device.
    pub cache_databases: bool,
}

impl RestoreOptions {
    /// Everything, into `target`, keeping files the snapshot does not have.
    pub fn new(target: PathBuf) -> Self {
        RestoreOptions {
            target,
            paths: vec![],
            delete: false,
            cache_databases: false,
        }
    }
}

#[derive(Default, Debug)]
pub struct RestoreReport {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub bytes: u64,
    /// Files that could not be restored, with the reason.
    pub errors: Vec<String>,
    /// Restored files that were SQLite databases when backed up (their destinations).
    pub databases: Vec<PathBuf>,
    /// Existing directories that were replaced as a whole by a staged copy.
    pub swapped: Vec<PathBuf>,
    /// Files and symlinks kept from the replaced directories because the snapshot does not
    /// have them.
    pub kept: u64,
    /// Worth telling the user (special files not carried over...).
    pub notes: Vec<String>,
}

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

/// Chunks fetched in parallel per batch while the file is written in order.
const BATCH_BYTES: u64 = 8 << 20;
/// On object storage: larger groups (fewer, longer requests) and batches that keep every
/// request thread busy.
const REMOTE_BATCH_BYTES: u64 = 64 << 20;
const REMOTE_GROUP_BYTES: u64 = 4 << 20;
/// Consecutive chunks handled by one task: read with as few reads as possible, written with one.
const GROUP_BYTES: u64 = 512 << 10;

/// On object storage, frames at most this far apart in a pack are read with one request.
const REMOTE_GAP: u64 = 256 << 10;

/// Bytes of a file handled per batch and per group of a batch (see [`for_each_batch`]), and how
/// far apart two frames may be and still be read with one request: on object storage, where a
/// request costs a round trip, frames a little apart (other files' chunks or chunk-list nodes
/// between them) are read together.
fn read_shape(blobs: &BlobReader) -> (u64, u64, u64) {
    if blobs.remote() {
        (REMOTE_BATCH_BYTES, REMOTE_GROUP_BYTES, REMOTE_GAP)
    } else {
        (BATCH_BYTES, GROUP_BYTES, 0)
    }
}

/// A run of consecutive chunks of one file.
struct Group {
    offset: u64,
    leaves: Vec<NodeEntry>,
}

impl Group {
    fn bytes(&self) -> u64 {
        self.leaves.iter().map(|e| e.bytes).sum()
    }
}

/// Walks a file's chunk list (`walker`, made for `entry`) in groups of consecutive chunks,
/// calling `f` per group in order.
fn for_each_group(
    blobs: &BlobReader,
    entry: &Entry,
    mut walker: LeafWalker,
    f: &mut dyn FnMut(Group) -> Result<()>,
) -> Result<u64> {
    let (_, group_max, _) = read_shape(blobs);
    let mut offset = 0u64;
    let mut group = Group {
        offset,
        leaves: Vec::new(),
    };
    let mut group_bytes = 0;
    while let Some(e) = walker.next_leaf()? {
        // A larger claim is damage, and must not size a buffer.
        if e.bytes > u64::from(crate::pack::MAX_BLOB_BYTES) {
            return Err(Error::corrupt(format!(
                "{}: chunk {} of {} bytes in its chunk list, more than a chunk can hold",
                entry.path_lossy(),
                e.id,
                e.bytes
            )));
        }
        group_bytes += e.bytes;
        offset = offset
            .checked_add(e.bytes)
            .ok_or_else(|| Error::corrupt("chunk list sizes overflow"))?;
        group.leaves.push(e);
        if group_bytes >= group_max {
            let next = Group {
                offset,
                leaves: Vec::new(),
            };
            f(std::mem::replace(&mut group, next))?;
            group_bytes = 0;
        }
    }
    if !group.leaves.is_empty() {
        f(group)?;
    }
    if offset != entry.size {
        return Err(Error::corrupt(format!(
            "{}: chunk list covers {offset} bytes, the manifest says {}",
            entry.path_lossy(),
            entry.size
        )));
    }
    Ok(offset)
}

/// Checks the size the manifest gives `entry` against its chunk list (`walker`, made for it)
/// before anything is allocated or written for it: a hostile manifest cannot make a restore
/// allocate what it claims. Of a chunk-list tree only the root has been read; the walk checks
/// every node below against it, and the index's length of each chunk against the list.
fn check_size(blobs: &BlobReader, entry: &Entry, walker: &LeafWalker) -> Result<()> {
    let listed = match &entry.content {
        Content::Empty => Some(0),
        Content::Chunk(id) => Some(u64::from(blobs.locate(id)?.raw_len)),
        Content::Tree(_) => walker.root_total(),
    };
    if listed == Some(entry.size) {
        return Ok(());
    }
    Err(Error::corrupt(format!(
        "{}: the manifest gives its size as {} bytes, its chunk list holds {}; not restored",
        entry.path_lossy(),
        entry.size,
        listed.map_or_else(|| "more than 2^64".to_string(), |n| n.to_string())
    )))
}

/// Walks a file's chunk list in batches of consecutive groups (up to the batch size of
/// [`read_shape`]), calling `f` per batch in order.
fn for_each_batch(
    blobs: &BlobReader,
    entry: &Entry,
    f: &mut dyn FnMut(Vec<Group>) -> Result<()>,
) -> Result<u64> {
    let (batch_max, _, _) = read_shape(blobs);
    let mut batch: Vec<Group> = Vec::new();
    let mut batch_bytes = 0;
    let fetch = |id: &ChunkId| blobs.read(id);
    let walker = LeafWalker::new(&entry.content, entry.size, &fetch)?;
    check_size(blobs, entry, &walker)?;
    let size = for_each_group(blobs, entry, walker, &mut |g| {
        batch_bytes += g.bytes();
        batch.push(g);
        if batch_bytes >= batch_max {
            batch_bytes = 0;
            f(std::mem::take(&mut batch))?;
        }
        Ok(())
    })?;
    if !batch.is_empty() {
        f(batch)?;
    }
    Ok(size)
}

thread_local! {
    static SPAN: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    static GROUP: std::cell::RefCell<crate::direct::AlignedBuf> = std::cell::RefCell::new(Default::default());
    static FRAME: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Calls `f` with the verified bytes of a group, assembled in a buffer reused per thread.
fn with_group<T>(
    blobs: &BlobReader,
    group: &Group,
    f: impl FnOnce(&[u8]) -> Result<T>,
) -> Result<T> {
    with_group_padded(blobs, group, 1, f)
}

/// [`with_group`] with the bytes at an aligned address and zero-padded to a multiple of
/// `pad` (a power of two, at most [`crate::direct::ALIGN`]), for a direct write.
fn with_group_padded<T>(
    blobs: &BlobReader,
    group: &Group,
    pad: usize,
    f: impl FnOnce(&[u8]) -> Result<T>,
) -> Result<T> {
    let total = group.bytes() as usize;
    let padded = total.next_multiple_of(pad);
    GROUP.with(|out| {
        let mut out = out.borrow_mut();
        out.reserve(padded);
        let out = out.bytes_mut();
        fill_group(blobs, group, &mut out[..total])?;
        out[total..padded].fill(0);
        f(&out[..padded])
    })
}

/// Fills `out` (exactly the group's size) with the verified bytes of a group. The group's frames
/// are read in pack order, whatever their order in the file (a backup compresses in parallel, so
/// a file's frames need not follow each other in the pack): frames back to back (on object
/// storage, also a little apart) are read with one read. Each frame is decompressed once
/// (straight into `out` when it holds exactly a run of the group's chunks) and every chunk is
/// checked against its id.
fn fill_group(blobs: &BlobReader, group: &Group, out: &mut [u8]) -> Result<()> {
    let locs: Vec<BlobLoc> = group
        .leaves
        .iter()
        .map(|e| blobs.locate(&e.id))
        .collect::<Result<_>>()?;
    // Where each chunk goes in `out`.
    let mut starts = Vec::with_capacity(locs.len());
    let mut total = 0usize;
    for (loc, leaf) in locs.iter().zip(&group.leaves) {
        if loc.raw_len as u64 != leaf.bytes {
            return Err(Error::corrupt(format!(
                "chunk {}: {} bytes in the index where the chunk list says {}",
                leaf.id, loc.raw_len, leaf.bytes
            )));
        }
        starts.push(total);
        total += loc.raw_len as usize;
    }
    if total != out.len() {
        return Err(Error::corrupt(
            "chunk sizes do not add up to the group's size",
        ));
    }
    // The chunks in the order their bytes lie in the packs.
    let mut order: Vec<usize> = (0..locs.len()).collect();
    order.sort_unstable_by_key(|&i| {
        let l = &locs[i];
        (l.pack, l.frame_offset, l.offset_in_frame, i)
    });
    let key = blobs.keys().map(|k| k.id_key());
    let keys = blobs.keys();
    let (_, group_max, gap) = read_shape(blobs);
    // Spans of frames of one pack, each after the last and at most `gap` apart: one read each.
    let mut spans: Vec<(usize, usize, u64, u64)> = Vec::new();
    let mut i = 0;
    while i < order.len() {
        let first = locs[order[i]];
        let start = first.frame_offset as u64;
        let mut end = start + first.frame_stored_len as u64;
        let mut j = i + 1;
        while j < order.len() {
            let l = locs[order[j]];
            let at = l.frame_offset as u64;
            let frame_end = at + l.frame_stored_len as u64;
            if l.frame_key() == locs[order[j - 1]].frame_key() {
                j += 1;
            } else if l.pack == first.pack
                && at >= end
                && at - end <= gap
                && frame_end - start <= group_max * 2
            {
                end = frame_end;
                j += 1;
            } else {
                break;
            }
        }
        spans.push((i, j, start, end));
        i = j;
    }
    // A full group in one or two stretches of packs is part of a large file stored in order:
    // a short piece of it at a pack's edge is read exactly, not through a cached block whose
    // other bytes were the previous group's. (A file rewritten in places, such as a database,
    // has many short pieces whose neighbours the next groups want: those go through blocks.)
    let sequential = total as u64 >= group_max && spans.len() <= 2;
    for (i, j, start, end) in spans {
        let first = locs[order[i]];
        let pack = blobs.pack_name(first.pack)?;
        SPAN.with(|span| -> Result<()> {
            let mut span = span.borrow_mut();
            span.resize((end - start) as usize, 0);
            blobs.read_span_into(&pack, start, &mut span, sequential)?;
            let mut k = i;
            while k < j {
                let loc = locs[order[k]];
                let mut m = k + 1;
                while m < j && locs[order[m]].frame_key() == loc.frame_key() {
                    m += 1;
                }
                let members = &order[k..m];
                let rel = (loc.frame_offset as u64 - start) as usize;
                // Chunks of one frame whose index entries disagree on its length: a damaged index.
                let stored = span
                    .get(rel..rel + loc.frame_stored_len as usize)
                    .filter(|_| {
                        members
                            .iter()
                            .all(|&c| locs[c].frame_stored_len == loc.frame_stored_len)
                    })
                    .ok_or_else(|| {
                        Error::corrupt(format!(
                            "chunk {}: its frame's entries in the index disagree",
                            group.leaves[members[0]].id
                        ))
                    })?;
                // Is the frame exactly a run of the group's chunks, in order? (The usual case:
                // consecutive chunks of a file compressed together.)
                let mut expect = 0u32;
                let whole = members.iter().enumerate().all(|(n, &c)| {
                    let ok = locs[c].offset_in_frame == expect && c == members[0] + n;
                    expect = expect.saturating_add(locs[c].raw_len);
                    ok
                }) && expect == loc.frame_raw_len;
                if whole {
                    // Decompress straight into place, then check each chunk there.
                    let at = starts[members[0]];
                    let dst = &mut out[at..at + loc.frame_raw_len as usize];
                    decode_frame(keys, stored, &loc, &pack, dst)
                        .map_err(|e| with_chunk(e, &group.leaves[members[0]].id))?;
                    for &c in members {
                        let s = starts[c] - at;
                        let blob = &dst[s..s + locs[c].raw_len as usize];
                        check_hash(blob, &locs[c], &group.leaves[c].id, key, &pack)?;
                    }
                } else {
                    FRAME.with(|frame| -> Result<()> {
                        let mut frame = frame.borrow_mut();
                        frame.resize(loc.frame_raw_len as usize, 0);
                        decode_frame(keys, stored, &loc, &pack, &mut frame)
                            .map_err(|e| with_chunk(e, &group.leaves[members[0]].id))?;
                        for &c in members {
                            let l = &locs[c];
                            let blob = frame
                                .get(l.offset_in_frame as usize..)
                                .and_then(|f| f.get(..l.raw_len as usize))
                                .ok_or_else(|| {
                                    Error::corrupt(format!(
                                        "chunk {}: outside its frame in {pack}",
                                        group.leaves[c].id
                                    ))
                                })?;
                            check_hash(blob, l, &group.leaves[c].id, key, &pack)?;
                            out[starts[c]..starts[c] + blob.len()].copy_from_slice(blob);
                        }
                        Ok(())
                    })?;
                }
                k = m;
            }
            Ok(())
        })?;
    }
    Ok(())
}

/// Streams a file's verified bytes to `out` in order.
pub fn write_content(
    blobs: &BlobReader,
    entry: &Entry,
    out: &mut dyn FnMut(&[u8]) -> Result<()>,
) -> Result<u64> {
    for_each_batch(blobs, entry, &mut |batch| {
        let datas: Vec<Vec<u8>> = batch
            .par_iter()
            .map(|g| with_group(blobs, g, |d| Ok(d.to_vec())))
            .collect::<Result<_>>()?;
        for d in datas {
            out(&d)?;
        }
        Ok(())
    })
}

/// Writes a file's verified bytes into `file` at their offsets, groups in parallel: a sliding
/// window of twice a batch's groups is handed to the pool while the chunk list is walked, so
/// there is no pause at the end of a batch waiting for its slowest read. When the window is
/// full, the walking thread writes a group itself (it never blocks on the pool, which may be
/// the pool it runs on).
fn write_content_at(
    blobs: &BlobReader,
    entry: &Entry,
    walker: LeafWalker,
    file: &std::fs::File,
    direct: Option<&std::fs::File>,
    path: &Path,
) -> Result<u64> {
    use crate::direct::ALIGN;
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::FileExt;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let (batch_max, group_max, _) = read_shape(blobs);
    let window = (2 * batch_max / group_max).max(2) as usize;
    let write_group = |g: &Group| -> Result<()> {
        // A group at a block boundary is assembled at an aligned address and padded to whole
        // blocks, so that its pieces can go straight to the device.
        let at_block = direct.is_some() && g.offset.is_multiple_of(ALIGN as u64);
        let pad = if at_block { ALIGN } else { 1 };
        with_group_padded(blobs, g, pad, |data| {
            for (start, end) in pieces(g, &data[..g.bytes() as usize]) {
                let at = g.offset + start as u64;
                let len = end - start;
                // A piece at a block boundary that fills whole blocks (or ends the file: the
                // padding is cut off at the end) goes straight to the device, without a copy
                // into the page cache: the groups of a database cut at its pages, most of a
                // restore's bytes. Its blocks are allocated first (see `allocate`).
                let whole_blocks = at_block
                    && start.is_multiple_of(ALIGN)
                    && (len.is_multiple_of(ALIGN) || at + len as u64 == entry.size);
                if let (Some(direct), true) = (direct, whole_blocks) {
                    let blocks = &data[start..start + len.next_multiple_of(ALIGN)];
                    allocate(file, at, blocks.len() as u64, path)?;
                    match direct.write_all_at(blocks, at) {
                        // A filesystem that took O_DIRECT at open but not this write: the page
                        // cache then (the padding is cut off all the same).
                        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                            file.write_all_at(blocks, at)
                        }
                        written => written,
                    }
                    .ctx("write", path)?;
                    continue;
                }
                file.write_all_at(&data[start..end], at)
                    .ctx("write", path)?;
                // Start writing this piece to disk now, so the device works while the rest is
                // read and the final fsync has little left to wait for. (Only a hint: the fsync
                // before the rename is what makes the file durable.)
                // SAFETY: sync_file_range only starts writeback of a range of this open file.
                unsafe {
                    libc::sync_file_range(
                        file.as_raw_fd(),
                        at as libc::off64_t,
                        len as libc::off64_t,
                        libc::SYNC_FILE_RANGE_WRITE,
                    );
                }
            }
            Ok(())
        })
    };
    let in_flight = AtomicUsize::new(0);
    let failed: Mutex<Option<Error>> = Mutex::new(None);
    let first_error = |e: Error| {
        failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert(e);
    };
    let walked = rayon::in_place_scope(|scope| {
        for_each_group(blobs, entry, walker, &mut |g| {
            if failed.lock().unwrap_or_else(|p| p.into_inner()).is_some() {
                return Err(Error::invalid("a read failed"));
            }
            if in_flight.load(Ordering::Acquire) >= window {
                return write_group(&g);
            }
            in_flight.fetch_add(1, Ordering::AcqRel);
            let (write_group, in_flight, first_error) = (&write_group, &in_flight, &first_error);
            scope.spawn(move |_| {
                if let Err(e) = write_group(&g) {
                    first_error(e);
                }
                in_flight.fetch_sub(1, Ordering::AcqRel);
            });
            Ok(())
        })
    });
    // A task's error is the cause; the walk's "a read failed" only followed it.
    if let Some(e) = failed.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    walked
}

/// The parts of a group's bytes (`data`) to write: all of them, less the whole blocks that lie
/// in runs of all-zero chunks, which stay holes in the new file, so a sparse file restores
/// sparse. Holes are whole blocks of the file, so the pieces around them still start at block
/// boundaries where the group does. A chunk is read only up to its first non-zero byte, which
/// in most data is among the first few.
fn pieces(g: &Group, data: &[u8]) -> Vec<(usize, usize)> {
    let block = crate::direct::ALIGN as u64;
    let mut out = Vec::with_capacity(1);
    // Where the next piece starts, and where the run of zero chunks being passed started.
    let mut from = 0usize;
    let mut zeros: Option<usize> = None;
    let hole = |out: &mut Vec<(usize, usize)>, from: &mut usize, start: usize, end: usize| {
        let first = (g.offset + start as u64).next_multiple_of(block);
        let last = (g.offset + end as u64) / block * block;
        if last > first {
            let (first, last) = ((first - g.offset) as usize, (last - g.offset) as usize);
            if first > *from {
                out.push((*from, first));
            }
            *from = last;
        }
    };
    let mut at = 0usize;
    for leaf in &g.leaves {
        let end = at + leaf.bytes as usize;
        let zero = data.get(at..end).is_some_and(all_zero);
        match (zero, zeros) {
            (true, None) => zeros = Some(at),
            (false, Some(start)) => {
                hole(&mut out, &mut from, start, at);
                zeros = None;
            }
            _ => {}
        }
        at = end;
    }
    if let Some(start) = zeros {
        hole(&mut out, &mut from, start, at);
    }
    if from < data.len() {
        out.push((from, data.len()));
    }
    out
}

/// Whether every byte of `data` is zero; stops at the first 64 bytes that are not.
fn all_zero(data: &[u8]) -> bool {
    let blocks = data.chunks_exact(64);
    let rest = blocks.remainder();
    blocks
        .into_iter()
        .all(|b| b.iter().fold(0u8, |acc, &x| acc | x) == 0)
        && rest.iter().all(|&x| x == 0)
}

/// The directories below a target that a restore has found or made real directories (not
/// symlinks), and where it records what it changes there (`None` in a staging directory, which
/// holds nothing of the user's).
struct Dirs<'c> {
    checked: Mutex<HashSet<PathBuf>>,
    changes: Option<&'c Changes>,
}

impl<'c> Dirs<'c> {
    fn new(changes: Option<&'c Changes>) -> Self {
        Dirs {
            checked: Mutex::new(HashSet::new()),
            changes,
        }
    }

    fn record(&self, change: Change) {
        if let Some(c) = self.changes {
            c.record(change);
        }
    }
}

/// Makes `dir` a real directory: creates it if missing, refuses a symlink or a non-directory in
/// its place, and remembers it as checked.
fn ensure_dir(dir: &Path, dirs: &Dirs) -> Result<()> {
    match fs::symlink_metadata(dir) {
        Ok(m) if m.file_type().is_symlink() => {
            return Err(Error::invalid(format!(
                "refusing to restore through symlink {}",
                dir.display()
            )));
        }
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(Error::invalid(format!(
                "{} exists and is not a directory",
                dir.display()
            )));
        }
        Err(_) => {
            fs::create_dir(dir).ctx("create directory", dir)?;
            dirs.record(Change::CreatedDir(dir.to_path_buf()));
        }
    }
    dirs.checked
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(dir.to_path_buf());
    Ok(())
}

/// Makes sure every existing component of `rel`'s parent below `target` is a real directory
/// (not a symlink that could lead outside), creating missing ones.
fn prepare_parent(target: &Path, rel: &[u8], dirs: &Dirs) -> Result<PathBuf> {
    let comps: Vec<&[u8]> = rel.split(|&b| b == b'/').collect();
    let mut dir = target.to_path_buf();
    for c in &comps[..comps.len() - 1] {
        dir.push(OsStr::from_bytes(c));
        if dirs
            .checked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&dir)
        {
            continue;
        }
        ensure_dir(&dir, dirs)?;
    }
    Ok(dir.join(OsStr::from_bytes(comps[comps.len() - 1])))
}

/// A file being made beside its destination: removed when dropped before it is renamed into
/// place, whether the restore of it failed or a panic unwinds through.
struct Temporary {
    path: PathBuf,
    placed: bool,
}

impl Temporary {
    fn new(path: PathBuf) -> Self {
        Temporary {
            path,
            placed: false,
        }
    }

    /// Renames it to `dest`; records the change.
    fn place(mut self, dest: &Path, dirs: &Dirs) -> Result<()> {
        let existed = fs::symlink_metadata(dest).is_ok();
        fs::rename(&self.path, dest).ctx("rename into place", dest)?;
        self.placed = true;
        dirs.record(match existed {
            true => Change::Replaced(dest.to_path_buf()),
            false => Change::Created(dest.to_path_buf()),
        });
        Ok(())
    }
}

impl Drop for Temporary {
    fn drop(&mut self) {
        if !self.placed {
            let _ = fs::remove_file(&self.path);
        }
    }
}

fn restore_file(
    blobs: &BlobReader,
    entry: &Entry,
    dest: &Path,
    how: Writes,
    dirs: &Dirs,
) -> Result<u64> {
    if fs::symlink_metadata(dest).is_ok_and(|m| m.is_dir()) {
        return Err(Error::invalid(format!(
            "{} is a directory; not replacing it with a file",
            dest.display()
        )));
    }
    let fetch = |id: &ChunkId| blobs.read(id);
    let walker = LeafWalker::new(&entry.content, entry.size, &fetch)?;
    check_size(blobs, entry, &walker)?;
    let path = temp_name(dest);
    let f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .ctx("create", &path)?;
    let tmp = Temporary::new(path);
    let direct = match how.direct(entry) {
        true => crate::direct::open_for_direct_writes(&tmp.path)?,
        false => None,
    };
    // The whole length first: what is not written (runs of zeros) stays a hole.
    f.set_len(entry.size).ctx("set length", &tmp.path)?;
    let written = write_content_at(blobs, entry, walker, &f, direct.as_ref(), &tmp.path)?;
    if direct.is_some() {
        // A padded last block written directly is cut off.
        f.set_len(entry.size).ctx("set length", &tmp.path)?;
    }
    // Owner first: chown clears set-id bits, which the mode then restores.
    restore_owner(&tmp.path, entry)?;
    f.set_permissions(fs::Permissions::from_mode(entry.mode & 0o7777))
        .ctx("set permissions", &tmp.path)?;
    f.sync_all().ctx("fsync", &tmp.path)?;
    drop(f);
    set_mtime(&tmp.path, entry.mtime_ns, false)?;
    if entry.page_size > 0 {
        remove_stale_sqlite_siblings(dest, dirs)?;
    }
    tmp.place(dest, dirs)?;
    Ok(written)
}

/// Allocates `len` bytes at `offset` of a file about to be written there directly: the writes
/// then fill allocated blocks, which ext4 lets threads do side by side (writes that allocate
/// take the inode's lock in turn). Only what is written is allocated, so the holes of a sparse
/// file stay holes. A filesystem without `fallocate` is written as it is.
fn allocate(f: &fs::File, offset: u64, len: u64, path: &Path) -> Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: fallocate on an open file descriptor.
    let r = unsafe { libc::fallocate(f.as_raw_fd(), 0, offset as libc::off_t, len as libc::off_t) };
    if r == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::ENOSPC) | Some(libc::EDQUOT) | Some(libc::EFBIG) => {
            Err(Error::io_path("allocate", path, err))
        }
        _ => Ok(()),
    }
}

/// A database's -wal, -shm or -journal file left beside the destination belongs to the file
/// being replaced; SQLite would replay it over the restored image, so it goes first.
fn remove_stale_sqlite_siblings(dest: &Path, dirs: &Dirs) -> Result<()> {
    for sibling in crate::source::sqlite::siblings(dest) {
        match fs::remove_file(&sibling) {
            Ok(()) => dirs.record(Change::Removed(sibling)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io_path("remove stale", &sibling, e)),
        }
    }
    Ok(())
}

/// Restores owner and group when running as root (ownership cannot be given away otherwise).
/// Does not follow symlinks.
fn restore_owner(path: &Path, entry: &Entry) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(());
    }
    std::os::unix::fs::lchown(path, Some(entry.uid), Some(entry.gid)).ctx("set owner", path)
}

fn restore_symlink(entry: &Entry, dest: &Path, dirs: &Dirs) -> Result<()> {
    let target = entry
        .target
        .as_ref()
        .ok_or_else(|| Error::corrupt(format!("{}: symlink without target", entry.path_lossy())))?;
    let path = temp_name(dest);
    std::os::unix::fs::symlink(OsStr::from_bytes(target), &path).ctx("create symlink", &path)?;
    let tmp = Temporary::new(path);
    restore_owner(&tmp.path, entry)?;
    set_mtime(&tmp.path, entry.mtime_ns, false).ok();
    tmp.place(dest, dirs)
}

/// Temporary files are named `.NAME.strata-tmp.PID.N` beside their destination (see
/// [`temp_name`]).
const TEMP_MARK: &str = ".strata-tmp.";

/// The process that made the file or directory `name`, when the name is exactly one strata
/// gives its own with `mark`: `.NAME<mark>PID.N`, a leading dot, a name, the mark, then a
/// process id and a counter in decimal. A user's file whose name merely holds the mark
/// (`report.strata-tmp.1.txt`) is not strata's.
fn maker(name: &OsStr, mark: &str) -> Option<u32> {
    let rest = name.to_str()?.strip_prefix('.')?;
    let (base, tail) = rest.rsplit_once(mark)?;
    let (pid, n) = tail.split_once('.')?;
    let decimal = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if base.is_empty() || !decimal(pid) || !decimal(n) {
        return None;
    }
    pid.parse().ok()
}

/// Whether `name` is a temporary file or staging directory of this process, or of one that no
/// longer exists: strata's own, never the user's.
fn left_by_strata(name: &OsStr) -> bool {
    [TEMP_MARK, STAGE_MARK]
        .into_iter()
        .filter_map(|mark| maker(name, mark))
        .any(|pid| pid == std::process::id() || !crate::sys::pid_alive(pid))
}

/// Removes temporary files in `dir` whose process no longer exists.
fn remove_stale_temp_files(dir: &Path) {
    remove_left_by_dead_processes(dir, TEMP_MARK, |p| fs::remove_file(p));
}

/// Removes the entries of `dir` named `.NAME<mark>PID.N` whose process no longer exists.
fn remove_left_by_dead_processes(
    dir: &Path,
    mark: &str,
    remove: impl Fn(&Path) -> std::io::Result<()>,
) {
    let Ok(listing) = fs::read_dir(dir) else {
        return;
    };
    for entry in listing.flatten() {
        let pid = maker(&entry.file_name(), mark);
        if pid.is_some_and(|p| !crate::sys::pid_alive(p)) {
            let _ = remove(&entry.path());
        }
    }
}

/// A restore of at least this many bytes reads the index ahead (see [`Repo::prefetch_index`]),
/// and each pack it touches (see [`crate::storage::Backend::will_need`]).
const PREFETCH_FROM: u64 = 64 << 20;

/// Memory a restore may spend on the index in memory (see [`IndexReader::load_blobs`]).
const LOADED_INDEX_MAX: u64 = 32 << 20;

/// Whether to read the whole blob table into memory for a restore of `bytes`: it fits in
/// [`LOADED_INDEX_MAX`], and the restore is expected to look up at least a quarter as many
/// blobs as the table has. Reading the table costs about a fifth of a B-tree lookup per blob
/// (45-74 ms for the 314,000 blobs of W1 after five hourly backups). The expectation counts one
/// chunk per average chunk size of the repository's chunker; database files cut at their pages
/// have smaller chunks, so it errs low.
fn loading_pays(repo: &Repo, index: &IndexReader, bytes: u64) -> Result<bool> {
    let blobs = index.blob_count()?;
    if blobs.saturating_mul(crate::index::LOADED_BLOB_BYTES) > LOADED_INDEX_MAX {
        return Ok(false);
    }
    let expected = bytes / u64::from(repo.config.chunker.avg.max(1));
    Ok(expected.saturating_mul(4) >= blobs)
}

/// Restores the selected entries of `manifest` below `opts.target`.
///
/// A selected directory that already exists at its destination is restored into a staging
/// directory beside it and swapped in whole (`renameat2(RENAME_EXCHANGE)`, else two renames), so
/// an application never sees it half-restored; if any of its files fails, the existing
/// directory is left untouched. Files of the old directory that the snapshot does not have are
/// carried over (hard links, so they keep their inodes; fifos and sockets too) unless
/// `opts.delete`. Everything else is restored file by file, each renamed into place complete.
pub fn restore(repo: &Repo, manifest: &Manifest, opts: &RestoreOptions) -> Result<RestoreReport> {
    let changes = Changes::new();
    let report = restore_undoable(repo, manifest, opts, &changes);
    changes.keep();
    report
}

/// [`restore`], recording in `changes` what it changes in the target, so that the caller can
/// undo exactly that if the restore fails ([`Changes::undo`]) or keep it ([`Changes::keep`]).
///
/// Whatever happens, nothing of the restore's own is left in the target once `changes` is kept
/// or undone: no temporary files, no staging directories. A panic inside (a damaged index can
/// make redb panic) becomes an error.
pub fn restore_undoable(
    repo: &Repo,
    manifest: &Manifest,
    opts: &RestoreOptions,
    changes: &Changes,
) -> Result<RestoreReport> {
    catch_unwind(AssertUnwindSafe(|| {
        restore_recording(repo, manifest, opts, changes)
    }))
    .unwrap_or_else(|p| Err(panicked(p)))
}

/// A panic caught at the edge of a restore's work, as an error.
fn panicked(payload: Box<dyn std::any::Any + Send>) -> Error {
    let what = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".into());
    Error::corrupt(format!(
        "the restore stopped on an internal error ({what}); a damaged index can cause this: run \
         `strata verify`, and `strata repair index` if it finds the index damaged"
    ))
}

fn restore_recording(
    repo: &Repo,
    manifest: &Manifest,
    opts: &RestoreOptions,
    changes: &Changes,
) -> Result<RestoreReport> {
    let entries = select(manifest, &opts.paths)?;
    check_entries(&entries)?;
    // Sizes are only a hint here (each is checked against its chunk list before it is used).
    let bytes = entries
        .iter()
        .fold(0u64, |sum, e| sum.saturating_add(e.size));
    let large = bytes >= PREFETCH_FROM;
    if large {
        repo.prefetch_index();
    }
    fs::create_dir_all(&opts.target).ctx("create", &opts.target)?;
    let target = fs::canonicalize(&opts.target).ctx("resolve", &opts.target)?;
    let txn = repo.index.read()?;
    let index = IndexReader::new(&txn)?;
    let load = large && loading_pays(repo, &index, bytes)?;
    let mut blobs = BlobReader::new(repo, &index)?;
    blobs.set_prefetch(large);
    std::thread::scope(|s| {
        if load {
            // Read while the restore starts: its first reads wait on the disk anyway, and its
            // lookups meanwhile go through the B-tree (with the same answers).
            s.spawn(|| {
                // A damaged part of the index fails only the files whose chunks it holds, as
                // it does when they are looked up one by one.
                match catch_unwind(AssertUnwindSafe(|| index.load_blobs())) {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => tracing::warn!(
                        "reading the index into memory: {e}; looking chunks up one by one"
                    ),
                    Err(p) => tracing::warn!(
                        "reading the index into memory: {}; looking chunks up one by one",
                        panicked(p)
                    ),
                }
            });
        }
        restore_selected(&blobs, &target, &entries, opts, changes)
    })
}

/// Restores the files and symlinks of `manifest` at exactly `paths` below `target`, each
/// renamed into place over whatever is there; missing parent directories are created, and no
/// directory is staged or has its metadata set. Returns the report and the paths the manifest
/// holds no file or symlink at.
pub fn restore_files(
    repo: &Repo,
    manifest: &Manifest,
    paths: &[Vec<u8>],
    target: &Path,
) -> Result<(RestoreReport, Vec<Vec<u8>>)> {
    let wanted: HashSet<&[u8]> = paths.iter().map(|p| p.as_slice()).collect();
    let entries: Vec<&Entry> = manifest
        .entries
        .iter()
        .filter(|e| e.kind != EntryKind::Dir && wanted.contains(e.path.as_slice()))
        .collect();
    check_entries(&entries)?;
    let found: HashSet<&[u8]> = entries.iter().map(|e| e.path.as_slice()).collect();
    let missing = paths
        .iter()
        .filter(|p| !found.contains(p.as_slice()))
        .cloned()
        .collect();
    let target = fs::canonicalize(target).ctx("resolve", target)?;
    let txn = repo.index.read()?;
    let index = IndexReader::new(&txn)?;
    let blobs = BlobReader::new(repo, &index)?;
    let how = Writes {
        cache_databases: false,
    };
    let report = catch_unwind(AssertUnwindSafe(|| {
        restore_entries(&blobs, &target, &entries, how, None)
    }))
    .unwrap_or_else(|p| Err(panicked(p)))?;
    Ok((report, missing))
}

/// Restores `entries` into `target` (see [`restore`]).
fn restore_selected(
    blobs: &BlobReader,
    target: &Path,
    entries: &[&Entry],
    opts: &RestoreOptions,
    changes: &Changes,
) -> Result<RestoreReport> {
    let stages = plan_stages(target, entries, opts, changes)?;
    let (staged, direct): (Vec<&Entry>, Vec<&Entry>) = entries
        .iter()
        .partition(|e| stages.iter().any(|st| st.holds(&e.path)));
    let how = Writes {
        cache_databases: opts.cache_databases,
    };
    let mut report = restore_entries(blobs, target, &direct, how, Some(changes))?;
    for stage in &stages {
        let rebased: Vec<Entry> = staged
            .iter()
            .filter(|e| stage.holds(&e.path))
            .map(|e| Entry {
                path: stage.rebase(&e.path),
                ..(*e).clone()
            })
            .collect();
        match stage.run(blobs, &rebased, opts.delete, how, changes) {
            Ok(r) => report.merge(r),
            Err(e) => report.errors.push(format!(
                "{}: {e}; the existing directory was left as it was",
                stage.dest.display()
            )),
        }
    }
    Ok(report)
}

impl RestoreReport {
    fn merge(&mut self, other: RestoreReport) {
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

/// A selected directory that exists at its destination and is restored beside it, then swapped
/// in. Its staging directory is removed when it is dropped, unless the swap handed it over to
/// the restore's [`Changes`] (it then holds the replaced tree) or it holds the only copy of the
/// replaced tree after a failed swap.
struct Stage {
    /// Its path in the snapshot.
    root: Vec<u8>,
    /// Where it goes (exists, a real directory).
    dest: PathBuf,
    /// The staging directory beside `dest`; the staged tree is `dir/NAME`.
    dir: PathBuf,
    /// `dest`'s file name.
    name: Vec<u8>,
    /// The staging directory is someone else's to remove, or must stay.
    kept: std::cell::Cell<bool>,
}

impl Drop for Stage {
    fn drop(&mut self) {
        if !self.kept.get() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// Staging directories are named `.NAME.strata-restore.PID.N` beside the destination.
const STAGE_MARK: &str = ".strata-restore.";

impl Stage {
    fn holds(&self, path: &[u8]) -> bool {
        path == self.root.as_slice()
            || (path.len() > self.root.len()
                && path.starts_with(&self.root)
                && path[self.root.len()] == b'/')
    }

    /// The path of an entry below `root`, relative to the staging directory.
    fn rebase(&self, path: &[u8]) -> Vec<u8> {
        let mut out = self.name.clone();
        out.extend_from_slice(&path[self.root.len()..]);
        out
    }

    fn staged(&self) -> PathBuf {
        self.dir.join(OsStr::from_bytes(&self.name))
    }

    fn run(
        &self,
        blobs: &BlobReader,
        entries: &[Entry],
        delete: bool,
        how: Writes,
        changes: &Changes,
    ) -> Result<RestoreReport> {
        let refs: Vec<&Entry> = entries.iter().collect();
        let mut report = restore_entries(blobs, &self.dir, &refs, how, None)?;
        if !report.errors.is_empty() {
            return Err(Error::invalid(format!(
                "{} file(s) could not be restored: {}",
                report.errors.len(),
                report.errors.join("; ")
            )));
        }
        let staged = self.staged();
        if !delete {
            // Logs of the replaced databases must not come back beside the restored ones.
            let skip: HashSet<PathBuf> = report
                .databases
                .iter()
                .flat_map(|db| crate::source::sqlite::siblings(db))
                .collect();
            keep_extras(&self.dest, &staged, &skip, &mut report)?;
        }
        let aside = self.dir.join(".old");
        let old = exchange(&staged, &self.dest, &aside).inspect_err(|_| {
            // A swap that could not put the old directory back leaves it here.
            if fs::symlink_metadata(&aside).is_ok() {
                self.kept.set(true);
            }
        })?;
        self.kept.set(true);
        changes.record(Change::Swapped {
            dest: self.dest.clone(),
            old,
            stage: self.dir.clone(),
        });
        let parent = self.dest.parent().unwrap_or(Path::new("/"));
        if let Err(e) = sync_dir(parent) {
            report.errors.push(e.to_string());
        }
        for db in &mut report.databases {
            if let Ok(rest) = db.strip_prefix(&staged) {
                *db = self.dest.join(rest);
            }
        }
        report.swapped.push(self.dest.clone());
        Ok(report)
    }
}

/// The selected directories that already exist at their destinations.
fn plan_stages(
    target: &Path,
    entries: &[&Entry],
    opts: &RestoreOptions,
    changes: &Changes,
) -> Result<Vec<Stage>> {
    let roots: Vec<Vec<u8>> = if opts.paths.is_empty() {
        let mut r: Vec<Vec<u8>> = entries
            .iter()
            .map(|e| {
                e.path
                    .split(|&b| b == b'/')
                    .next()
                    .unwrap_or_default()
                    .to_vec()
            })
            .collect();
        r.dedup();
        r
    } else {
        opts.paths
            .iter()
            .map(|p| p.trim_matches('/').as_bytes().to_vec())
            .collect()
    };
    let dirs = Dirs::new(Some(changes));
    let mut stages: Vec<Stage> = Vec::new();
    for (n, root) in roots.into_iter().enumerate() {
        let is_dir = entries
            .iter()
            .any(|e| e.path == root && e.kind == EntryKind::Dir);
        if !is_dir || stages.iter().any(|st| st.holds(&root)) {
            continue;
        }
        let dest = prepare_parent(target, &root, &dirs)?;
        let exists = fs::symlink_metadata(&dest).is_ok_and(|m| m.is_dir());
        if !exists {
            continue;
        }
        let name = root
            .rsplit(|&b| b == b'/')
            .next()
            .unwrap_or_default()
            .to_vec();
        if let Some(parent) = dest.parent() {
            remove_stale_stages(parent);
        }
        let mut dir_name = std::ffi::OsString::from(".");
        dir_name.push(OsStr::from_bytes(&name));
        dir_name.push(format!("{STAGE_MARK}{}.{n}", std::process::id()));
        let dir = dest.with_file_name(dir_name);
        fs::create_dir(&dir).ctx("create staging directory", &dir)?;
        stages.push(Stage {
            root,
            dest,
            dir,
            name,
            kept: std::cell::Cell::new(false),
        });
    }
    Ok(stages)
}

/// Removes staging directories that a killed restore left in `dir` (their process is gone).
/// Each holds either a partly restored copy or, after the swap, the replaced directory.
fn remove_stale_stages(dir: &Path) {
    remove_left_by_dead_processes(dir, STAGE_MARK, |p| fs::remove_dir_all(p));
}

/// Carries what exists below `old` but not below `new` over into `new`: files, fifos, sockets
/// and devices as hard links, so they stay the same inodes (files are copied where links are
/// impossible), symlinks and directories recreated. Where both have a path, `new` (the
/// snapshot) wins. Temporary files and staging directories strata left are not carried over.
fn keep_extras(
    old: &Path,
    new: &Path,
    skip: &HashSet<PathBuf>,
    report: &mut RestoreReport,
) -> Result<()> {
    for item in fs::read_dir(old).ctx("list", old)? {
        let item = item.ctx("list", old)?;
        let name = item.file_name();
        if left_by_strata(&name) {
            continue;
        }
        let (from, to) = (item.path(), new.join(&name));
        let meta = fs::symlink_metadata(&from).ctx("stat", &from)?;
        match fs::symlink_metadata(&to) {
            Ok(m) => {
                if meta.is_dir() && m.is_dir() {
                    keep_extras(&from, &to, skip, report)?;
                }
                continue;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io_path("stat", &to, e)),
        }
        if skip.contains(&to) {
            continue;
        }
        let ft = meta.file_type();
        if ft.is_dir() {
            fs::create_dir(&to).ctx("create directory", &to)?;
            keep_extras(&from, &to, skip, report)?;
            // SAFETY: geteuid has no preconditions.
            if unsafe { libc::geteuid() } == 0 {
                use std::os::unix::fs::MetadataExt;
                std::os::unix::fs::lchown(&to, Some(meta.uid()), Some(meta.gid()))
                    .ctx("set owner", &to)?;
            }
            fs::set_permissions(&to, meta.permissions()).ctx("set permissions", &to)?;
            set_mtime(&to, crate::sys::mtime_ns(&meta), true)?;
            continue;
        } else if ft.is_symlink() {
            let target = fs::read_link(&from).ctx("read symlink", &from)?;
            std::os::unix::fs::symlink(&target, &to).ctx("create symlink", &to)?;
        } else if fs::hard_link(&from, &to).is_ok() {
            // The same file (fifo, socket...), with its other links.
        } else if ft.is_file() {
            fs::copy(&from, &to).ctx("copy", &from)?;
            set_mtime(&to, crate::sys::mtime_ns(&meta), true)?;
            fs::File::open(&to)
                .and_then(|f| f.sync_all())
                .ctx("fsync", &to)?;
        } else {
            report.notes.push(format!(
                "{}: a special file that could not be linked into the restored directory; not \
                 carried over",
                from.display()
            ));
            continue;
        }
        report.kept += 1;
    }
    sync_dir(new)
}

/// How restored files are written.
#[derive(Clone, Copy)]
struct Writes {
    /// Databases through the page cache (see [`RestoreOptions::cache_databases`]).
    cache_databases: bool,
}

impl Writes {
    /// Whether `entry` is written with `O_DIRECT` where its groups allow (see
    /// [`write_content_at`]): large files, unless a reader is about to want them cached.
    fn direct(self, entry: &Entry) -> bool {
        entry.size >= crate::direct::MIN_DIRECT_BYTES
            && !(self.cache_databases && entry.page_size > 0)
    }
}

/// Restores `entries` below `target`, each file renamed into place complete; records what it
/// changes there in `changes`. A file whose restore panics fails alone, as with an error.
fn restore_entries(
    blobs: &BlobReader,
    target: &Path,
    entries: &[&Entry],
    how: Writes,
    changes: Option<&Changes>,
) -> Result<RestoreReport> {
    let checked = Dirs::new(changes);
    let mut report = RestoreReport::default();

    // Directories first, so files have somewhere to go. Those that exist already get their
    // metadata set at the end; what it was is recorded.
    let mut dirs = Vec::new();
    for e in entries.iter().filter(|e| e.kind == EntryKind::Dir) {
        let dest = prepare_parent(target, &e.path, &checked)?;
        let before = fs::symlink_metadata(&dest).ok().filter(|m| m.is_dir());
        ensure_dir(&dest, &checked)?;
        dirs.push((dest, *e, before));
    }
    report.dirs = dirs.len() as u64;

    let files: Vec<&&Entry> = entries
        .iter()
        .filter(|e| e.kind == EntryKind::File)
        .collect();
    // On object storage, enough threads to keep many ranged reads in flight; on a local disk,
    // four per core, as threads wait on pack reads and on direct writes (W1's restore on 2
    // cores: 1.94 s median with 8 threads, 2.15 s with 4, no faster with 16; see
    // docs/PERFORMANCE.md).
    let threads = blobs
        .backend()
        .parallelism()
        .unwrap_or(4 * rayon::current_num_threads());
    let results: Vec<(String, Result<(u64, PathBuf)>)> = crate::storage::with_pool(threads, || {
        files
            .par_iter()
            .map(|e| {
                let r = catch_unwind(AssertUnwindSafe(|| {
                    prepare_parent(target, &e.path, &checked).and_then(|dest| {
                        restore_file(blobs, e, &dest, how, &checked).map(|n| (n, dest))
                    })
                }))
                .unwrap_or_else(|p| Err(panicked(p)));
                (e.path_lossy(), r)
            })
            .collect()
    });
    let mut touched_dirs = HashSet::new();
    for ((path, r), e) in results.into_iter().zip(&files) {
        match r {
            Ok((n, dest)) => {
                report.files += 1;
                report.bytes += n;
                if e.page_size > 0 {
                    report.databases.push(dest);
                }
            }
            Err(e) => report.errors.push(format!("{path}: {e}")),
        }
        if let Some(parent) = Path::new(&path).parent() {
            touched_dirs.insert(target.join(parent));
        }
    }
    // Symlinks last, so none can redirect a file written above.
    for e in entries.iter().filter(|e| e.kind == EntryKind::Symlink) {
        let r = prepare_parent(target, &e.path, &checked)
            .and_then(|dest| restore_symlink(e, &dest, &checked));
        match r {
            Ok(()) => report.symlinks += 1,
            Err(err) => report.errors.push(format!("{}: {err}", e.path_lossy())),
        }
    }
    // Make the renames durable, then restore directory metadata, deepest first. Temporary files
    // that an earlier, killed restore left in these directories go too.
    for d in touched_dirs.iter().chain(dirs.iter().map(|(d, _, _)| d)) {
        if d.is_dir() {
            remove_stale_temp_files(d);
            sync_dir(d)?;
        }
    }
    for (dest, e, before) in dirs.iter().rev() {
        if let Some(m) = before {
            use std::os::unix::fs::MetadataExt;
            checked.record(Change::DirMeta {
                path: dest.clone(),
                uid: m.uid(),
                gid: m.gid(),
                mode: m.mode(),
                mtime_ns: crate::sys::mtime_ns(m),
            });
        }
        restore_owner(dest, e)?;
        fs::set_permissions(dest, fs::Permissions::from_mode(e.mode & 0o7777))
            .ctx("set permissions", dest)?;
        set_mtime(dest, e.mtime_ns, true)?;
    }
    Ok(report)
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

/// Writes the selected files' bytes to `out`, one after another.
pub fn restore_to_writer(
    repo: &Repo,
    manifest: &Manifest,
    paths: &[String],
    out: &mut dyn Write,
) -> Result<u64> {
    let entries = select(manifest, paths)?;
    let txn = repo.index.read()?;
    let index = IndexReader::new(&txn)?;
    let blobs = BlobReader::new(repo, &index)?;
    let mut total = 0;
    for e in entries.iter().filter(|e| e.kind == EntryKind::File) {
        total += write_content(&blobs, e, &mut |data| {
            out.write_all(data)
                .map_err(|e| Error::io("write to stdout", e))
        })?;
    }
    out.flush().map_err(|e| Error::io("write to stdout", e))?;
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_names_strata_gives_are_its_own() {
        let pid = |n: &str| maker(OsStr::new(n), TEMP_MARK);
        assert_eq!(pid(".a.txt.strata-tmp.4121.0"), Some(4121));
        assert_eq!(pid(".a.strata-tmp.1.txt.strata-tmp.77.3"), Some(77));
        for user in [
            "report.strata-tmp.1.txt",
            ".report.strata-tmp.1.txt",
            "a.strata-tmp.4121.0",
            ".strata-tmp.4121.0",
            ".a.strata-tmp.4121",
            ".a.strata-tmp..0",
            ".a.strata-tmp.-1.0",
            ".a.strata-tmp.41x.0",
            ".a.strata-tmp.4121.0.bak",
        ] {
            assert_eq!(pid(user), None, "{user}");
        }
        let stage = |n: &str| maker(OsStr::new(n), STAGE_MARK);
        assert_eq!(stage(".app.strata-restore.12.0"), Some(12));
        assert_eq!(stage("app.strata-restore.12.0"), None);
        assert!(left_by_strata(OsStr::new(&format!(
            ".x.strata-tmp.{}.9",
            std::process::id()
        ))));
        assert!(left_by_strata(OsStr::new(".x.strata-restore.4194999.0")));
        assert!(!left_by_strata(OsStr::new("x.strata-restore.4194999.0")));
    }

    fn group(offset: u64, sizes: &[u64]) -> Group {
        Group {
            offset,
            leaves: sizes
                .iter()
                .map(|&bytes| NodeEntry {
                    id: ChunkId([0; 32]),
                    bytes,
                })
                .collect(),
        }
    }

    #[test]
    fn runs_of_zero_chunks_become_holes_of_whole_blocks() {
        const B: usize = crate::direct::ALIGN;
        // Data, zeros, data: the zero chunk's whole blocks are left out.
        let g = group(0, &[100, 3 * B as u64, 50]);
        let mut data = vec![0u8; 100 + 3 * B + 50];
        data[..100].fill(1);
        data[100 + 3 * B..].fill(2);
        assert_eq!(pieces(&g, &data), vec![(0, B), (3 * B, data.len())]);
        // Nothing but zeros at a block boundary: nothing to write.
        let g = group(4 * B as u64, &[B as u64, 2 * B as u64]);
        assert_eq!(pieces(&g, &vec![0u8; 3 * B]), vec![]);
        // Zeros shorter than a block: written as they are.
        let g = group(10, &[10, 100, 10]);
        let mut data = vec![1u8; 120];
        data[10..110].fill(0);
        assert_eq!(pieces(&g, &data), vec![(0, 120)]);
        // No zeros: one piece, the whole group.
        let g = group(7, &[B as u64, 9]);
        assert_eq!(pieces(&g, &vec![3u8; B + 9]), vec![(0, B + 9)]);
        // A zero run at the end of a group that does not start at a block boundary.
        // (Only its whole blocks become a hole; the rest of the last one is written.)
        let g = group(B as u64 - 10, &[10, 2 * B as u64 - 100]);
        let mut data = vec![0u8; 2 * B - 90];
        data[..10].fill(5);
        assert_eq!(pieces(&g, &data), vec![(0, 10), (B + 10, 2 * B - 90)]);
    }

    #[test]
    fn all_zero_looks_at_every_byte() {
        assert!(all_zero(&[]));
        assert!(all_zero(&[0; 1000]));
        for at in [0, 63, 64, 999] {
            let mut d = vec![0u8; 1000];
            d[at] = 1;
            assert!(!all_zero(&d), "{at}");
        }
    }
}

//! Writing what a restore reads: directories first, then files, each made beside its
//! destination (holes where the snapshot has runs of zeros, large files straight to the device),
//! given its owner, mode and time, fsynced and renamed into place; symlinks last. Every
//! directory on the way is checked to be a real directory, and every change to the target is
//! recorded (see [`crate::restore::changes`]).

use crate::blobs::BlobReader;
use crate::error::{Error, IoContext, Result};
use crate::id::ChunkId;
use crate::manifest::{Content, Entry, EntryKind};
use crate::restore::SqliteCheck;
use crate::restore::changes::{Change, Changes};
use crate::restore::groups::{Group, check_size, for_each_group, read_shape, with_group_padded};
use crate::restore::live::{self, LivePlan};
use crate::restore::report::{RestoreReport, RestoredDatabase};
use crate::restore::temporaries::remove_stale_temp_files;
use crate::storage::{sync_dir, temp_name};
use crate::sys::set_mtime;
use crate::tree::LeafWalker;
use rayon::prelude::*;
use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::{self, OpenOptions};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// How restored files are written.
#[derive(Clone, Copy)]
pub(super) struct Writes<'a> {
    /// The check each database gets once written, before it is put in place (see
    /// `RestoreOptions::check`).
    pub(super) check: Option<SqliteCheck>,
    /// The files other processes hold open, and what to do about them.
    pub(super) live: &'a LivePlan,
    /// Told the bytes of each group of chunks once it is written.
    pub(super) progress: Option<&'a (dyn Fn(u64) + Send + Sync)>,
}

impl Writes<'_> {
    /// Whether `entry` is written with `O_DIRECT` where its groups allow (see
    /// [`write_content_at`]): large files, unless a reader is about to want them cached (a
    /// database about to be checked, or copied into an open one).
    fn direct(self, entry: &Entry) -> bool {
        let checked = self.check.and_then(|c| c.of(entry)).is_some();
        let read_next = checked || self.live.databases().next().is_some();
        entry.size >= crate::storage::direct::MIN_DIRECT_BYTES
            && !(read_next && entry.page_size > 0)
    }

    /// The check of the database image at `path` (which becomes `dest`), when one is asked for.
    fn check(self, entry: &Entry, path: &Path, dest: &Path) -> Option<Result<(), String>> {
        let full = self.check?.of(entry)?;
        let verdict = crate::source::sqlite::check_image(path, full);
        Some(verdict.unwrap_or_else(|e| {
            let shown = (path.display().to_string(), dest.display().to_string());
            Err(e.to_string().replace(&shown.0, &shown.1))
        }))
    }
}

/// A file restored: its bytes, and what became of it when it is a database.
struct Restored {
    bytes: u64,
    database: Option<RestoredDatabase>,
    note: Option<String>,
}

/// Restores `entries` below `target`, each file renamed into place complete; records what it
/// changes there in `changes`. A file whose restore panics fails alone, as with an error.
pub(super) fn restore_entries(
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
    let results: Vec<(String, Result<Restored>)> = crate::storage::with_pool(threads, || {
        files
            .par_iter()
            .map(|e| {
                let r = catch_unwind(AssertUnwindSafe(|| {
                    prepare_parent(target, &e.path, &checked)
                        .and_then(|dest| restore_file(blobs, e, &dest, how, &checked))
                }))
                .unwrap_or_else(|p| Err(panicked(p)));
                (e.path_lossy(), r)
            })
            .collect()
    });
    let mut touched_dirs = HashSet::new();
    for (path, r) in results {
        match r {
            Ok(done) => {
                report.files += 1;
                report.bytes += done.bytes;
                report.databases.extend(done.database);
                report.notes.extend(done.note);
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

/// A panic caught at the edge of a restore's work, as an error.
pub(super) fn panicked(payload: Box<dyn std::any::Any + Send>) -> Error {
    let what = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".into());
    // A bug of strata is also told apart by the process's panic hook; this says what stopped
    // the file (the index database's `unreachable!` on a damaged page, most often).
    Error::corrupt(format!(
        "the restore stopped on a failure ({}); a damaged index can cause this: run \
         `strata verify`, and `strata repair index` if it finds the index damaged",
        what.trim_start_matches("internal error: ")
    ))
}

/// The directories below a target that a restore has found or made real directories (not
/// symlinks), and where it records what it changes there (`None` in a staging directory, which
/// holds nothing of the user's).
pub(super) struct Dirs<'c> {
    checked: Mutex<HashSet<PathBuf>>,
    changes: Option<&'c Changes>,
}

impl<'c> Dirs<'c> {
    pub(super) fn new(changes: Option<&'c Changes>) -> Self {
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
pub(super) fn prepare_parent(target: &Path, rel: &[u8], dirs: &Dirs) -> Result<PathBuf> {
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

fn restore_file(
    blobs: &BlobReader,
    entry: &Entry,
    dest: &Path,
    how: Writes,
    dirs: &Dirs,
) -> Result<Restored> {
    if fs::symlink_metadata(dest).is_ok_and(|m| m.is_dir()) {
        return Err(Error::invalid(format!(
            "{} is a directory; not replacing it with a file",
            dest.display()
        )));
    }
    let fetch = |id: &ChunkId| blobs.read(id);
    // The chunk list or page map, checked against the size before anything is allocated.
    let body = match &entry.content {
        Content::Pages(map) => Body::Pages(super::paged::load(blobs, entry, map)?),
        content => {
            let walker = LeafWalker::new(content, entry.size, &fetch)?;
            check_size(blobs, entry, &walker)?;
            Body::Chunks(walker)
        }
    };
    let path = temp_name(dest);
    let f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .ctx("create", &path)?;
    let tmp = Temporary::new(path);
    let direct = match how.direct(entry) {
        true => crate::storage::direct::open_for_direct_writes(&tmp.path)?,
        false => None,
    };
    // The whole length first: what is not written (runs of zeros) stays a hole.
    f.set_len(entry.size).ctx("set length", &tmp.path)?;
    let written = match body {
        Body::Chunks(walker) => write_content_at(
            blobs,
            entry,
            walker,
            &f,
            direct.as_ref(),
            &tmp.path,
            how.progress,
        )?,
        Body::Pages(map) => {
            write_pages_at(blobs, &map, &f, direct.as_ref(), &tmp.path, how.progress)?
        }
    };
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
    let check = how.check(entry, &tmp.path, dest);
    let mut note = None;
    if let Some(holders) = how.live.database(dest) {
        if let Some(Err(problems)) = &check {
            return Err(failed_check(dest, problems));
        }
        match live::write(&tmp.path, dest) {
            Ok(()) => {
                dirs.record(Change::Rewritten(dest.to_path_buf()));
                let database = RestoredDatabase {
                    path: dest.to_path_buf(),
                    live: Some(holders.to_vec()),
                    check,
                };
                return Ok(Restored {
                    bytes: written,
                    database: Some(database),
                    note,
                });
            }
            Err(e) if !how.live.force => return Err(e),
            Err(e) => note = Some(forced_note(dest, &e)),
        }
    }
    if entry.page_size > 0 {
        remove_stale_sqlite_siblings(dest, dirs)?;
    }
    tmp.place(dest, dirs)?;
    let database = (entry.page_size > 0).then(|| RestoredDatabase {
        path: dest.to_path_buf(),
        live: None,
        check,
    });
    Ok(Restored {
        bytes: written,
        database,
        note,
    })
}

/// What a file is read back from.
enum Body<'a> {
    Chunks(LeafWalker<'a>),
    Pages(crate::pagemap::PageMap),
}

/// Writes whole blocks at `at` straight to the device through `direct` (allocated first: see
/// [`allocate`]); a file system that took `O_DIRECT` at open but not this write gets them
/// through the page cache (any padding past the file's end is cut off all the same).
fn write_direct(
    file: &fs::File,
    direct: &fs::File,
    blocks: &[u8],
    at: u64,
    path: &Path,
) -> Result<()> {
    use std::os::unix::fs::FileExt;
    allocate(file, at, blocks.len() as u64, path)?;
    match direct.write_all_at(blocks, at) {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => file.write_all_at(blocks, at),
        written => written,
    }
    .ctx("write", path)
}

/// Writes `data` at `at` through the page cache (one such write at a time: `one`) and starts
/// writing it to disk, so the device works while the rest is read and the final fsync has
/// little left to wait for (only a hint: the fsync before the rename makes the file durable).
fn write_buffered(
    file: &fs::File,
    one: &Mutex<()>,
    data: &[u8],
    at: u64,
    path: &Path,
) -> Result<()> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::FileExt;
    let _one = one.lock().unwrap_or_else(|p| p.into_inner());
    file.write_all_at(data, at).ctx("write", path)?;
    // SAFETY: sync_file_range only starts writeback of a range of this open file.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            at as libc::off64_t,
            data.len() as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
    Ok(())
}

/// The smallest piece of a paged file written with `O_DIRECT`.
const DIRECT_PIECE: usize = 256 << 10;

/// Writes a paged file's pages into `file` where its map places them, window by window (see
/// [`super::paged::write_windows`]): a window goes straight to the device when `direct` is
/// open, as a chunk list's groups do; all-zero windows stay holes.
fn write_pages_at(
    blobs: &BlobReader,
    map: &crate::pagemap::PageMap,
    file: &fs::File,
    direct: Option<&fs::File>,
    path: &Path,
    progress: Option<&(dyn Fn(u64) + Send + Sync)>,
) -> Result<u64> {
    use crate::storage::direct::ALIGN;
    let buffered = Mutex::new(());
    let write = |at: u64, blocks: &[u8], len: usize| -> Result<()> {
        // Small pieces (the end of a file) go through the page cache.
        let whole_blocks = len >= DIRECT_PIECE && at.is_multiple_of(ALIGN as u64);
        match direct {
            Some(direct) if whole_blocks => write_direct(file, direct, blocks, at, path),
            _ => write_buffered(file, &buffered, &blocks[..len], at, path),
        }
    };
    super::paged::write_windows(blobs, map, &write, progress)
}

/// The error of an open database whose restored image failed its check: it is not written.
pub(super) fn failed_check(dest: &Path, problems: &str) -> Error {
    Error::corrupt(format!(
        "{}: the restored image does not pass its check ({problems}); not written into the \
         open database",
        dest.display()
    ))
}

/// What to tell of an open database that SQLite could not write into, replaced all the same.
pub(super) fn forced_note(dest: &Path, e: &Error) -> String {
    format!(
        "{}: writing into the open database failed ({e}); replaced all the same (--force)",
        dest.display()
    )
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
    progress: Option<&(dyn Fn(u64) + Send + Sync)>,
) -> Result<u64> {
    use crate::storage::direct::ALIGN;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let (batch_max, group_max, _) = read_shape(blobs);
    let window = (2 * batch_max / group_max).max(2) as usize;
    let buffered = Mutex::new(());
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
                match direct {
                    Some(direct) if whole_blocks => {
                        let blocks = &data[start..start + len.next_multiple_of(ALIGN)];
                        write_direct(file, direct, blocks, at, path)?;
                    }
                    _ => write_buffered(file, &buffered, &data[start..end], at, path)?,
                }
            }
            if let Some(p) = progress {
                p(g.bytes());
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
    let block = crate::storage::direct::ALIGN as u64;
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
pub(super) fn remove_stale_sqlite_siblings(dest: &Path, dirs: &Dirs) -> Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunker::ChunkerParams;
    use crate::index::IndexReader;
    use crate::manifest::Content;
    use crate::repo::{Config, Repo};
    use std::os::unix::fs::MetadataExt;

    fn group(offset: u64, sizes: &[u64]) -> Group {
        Group {
            offset,
            leaves: sizes
                .iter()
                .map(|&bytes| crate::tree::NodeEntry {
                    id: ChunkId([0; 32]),
                    bytes,
                })
                .collect(),
        }
    }

    #[test]
    fn runs_of_zero_chunks_become_holes_of_whole_blocks() {
        const B: usize = crate::storage::direct::ALIGN;
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

    fn entry(path: &str, kind: EntryKind) -> Entry {
        Entry {
            path: path.as_bytes().to_vec(),
            kind,
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime_ns: 1_000_000_000,
            size: 0,
            content: Content::Empty,
            target: (kind == EntryKind::Symlink).then(|| b"pointed-at".to_vec()),
            page_size: 0,
            through_sqlite: false,
        }
    }

    /// Restores `entries` (empty files, directories, symlinks: no chunk is read) below
    /// `target`, recording into `changes`.
    fn restore(target: &Path, entries: &[Entry], changes: &Changes) -> Result<RestoreReport> {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repo::init(
            &dir.path().join("repo"),
            Config::new(ChunkerParams::default(), 1)?,
        )?;
        let txn = repo.index.read()?;
        let index = IndexReader::new(&txn)?;
        let blobs = BlobReader::new(&repo, &index)?;
        let refs: Vec<&Entry> = entries.iter().collect();
        let how = Writes {
            check: None,
            live: &LivePlan::default(),
            progress: None,
        };
        restore_entries(&blobs, target, &refs, how, Some(changes))
    }

    /// The paths `changes` says were replaced (the others it recorded are undone here).
    fn replaced(changes: Changes) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let problems = changes.undo(&mut |replaced: &[PathBuf], _: &[PathBuf]| {
            out.extend_from_slice(replaced);
            Ok(vec![])
        });
        assert!(problems.is_empty(), "{problems:?}");
        out.sort();
        out
    }

    #[test]
    fn a_directory_in_the_place_of_a_file_is_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path();
        fs::create_dir(t.join("here")).unwrap();
        fs::write(t.join("here/inside"), b"i").unwrap();
        let changes = Changes::new();
        let report = restore(t, &[entry("here", EntryKind::File)], &changes).unwrap();
        assert_eq!(report.files, 0);
        assert_eq!(report.errors.len(), 1);
        assert!(report.errors[0].contains("is a directory; not replacing it with a file"));
        assert_eq!(fs::read(t.join("here/inside")).unwrap(), b"i");
        assert!(changes.is_empty());
        // Nothing of the attempt is left beside it.
        assert_eq!(fs::read_dir(t).unwrap().count(), 1);
    }

    #[test]
    fn a_file_or_symlink_in_the_place_of_a_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        let t = dir.path();
        fs::write(t.join("file"), b"f").unwrap();
        std::os::unix::fs::symlink(elsewhere.path(), t.join("link")).unwrap();
        let e = restore(t, &[entry("file", EntryKind::Dir)], &Changes::new()).unwrap_err();
        assert!(
            e.to_string().contains("exists and is not a directory"),
            "{e}"
        );
        assert_eq!(fs::read(t.join("file")).unwrap(), b"f");
        let e = restore(t, &[entry("link", EntryKind::Dir)], &Changes::new()).unwrap_err();
        assert!(
            e.to_string()
                .contains("refusing to restore through symlink"),
            "{e}"
        );
        // A file below a symlinked directory fails alone, and nothing goes through the link.
        let report = restore(t, &[entry("link/f", EntryKind::File)], &Changes::new()).unwrap();
        assert_eq!(report.errors.len(), 1);
        assert!(report.errors[0].contains("refusing to restore through symlink"));
        assert_eq!(fs::read_dir(elsewhere.path()).unwrap().count(), 0);
    }

    #[test]
    fn files_and_symlinks_replace_whatever_is_there_without_following_it() {
        let dir = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        let t = dir.path();
        let outside = elsewhere.path().join("outside");
        fs::write(&outside, b"not mine").unwrap();
        std::os::unix::fs::symlink(&outside, t.join("was_link")).unwrap();
        fs::write(t.join("was_file"), b"f").unwrap();
        let changes = Changes::new();
        let entries = [
            entry("was_link", EntryKind::File),
            entry("was_file", EntryKind::Symlink),
            entry("new", EntryKind::File),
            entry("made/new_link", EntryKind::Symlink),
        ];
        let report = restore(t, &entries, &changes).unwrap();
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        assert_eq!((report.files, report.symlinks), (2, 2));
        let m = fs::symlink_metadata(t.join("was_link")).unwrap();
        assert!(m.is_file() && m.len() == 0 && m.mode() & 0o7777 == 0o644);
        assert_eq!(fs::read(&outside).unwrap(), b"not mine");
        assert_eq!(
            fs::read_link(t.join("was_file")).unwrap(),
            Path::new("pointed-at")
        );
        // Only what was there counts as replaced; what was made (the file, the directory and
        // the symlink in it) is undone.
        assert_eq!(
            replaced(changes),
            vec![t.join("was_file"), t.join("was_link")]
        );
        assert!(!t.join("new").exists() && !t.join("made").exists());
        // No temporary is left.
        let names: Vec<_> = fs::read_dir(t)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }
}

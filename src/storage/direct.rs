//! Sequential writing of large files with `O_DIRECT`.
//!
//! Pack files and restored files are written once and then fsynced. Through the page cache that
//! costs a kernel copy of every byte plus page allocation and later writeback, which was a tenth
//! of a first backup's CPU time. [`DirectWriter`] instead fills aligned buffers in place and hands
//! whole blocks to a background thread that writes them straight to the device while the caller
//! fills the next buffer. The unaligned tail is written last, padded, and the file is then cut to
//! its exact length. Durability is unchanged: callers still fsync before they rename.
//!
//! Filesystems without `O_DIRECT` (tmpfs, some FUSE mounts) are detected when the file is
//! opened, and callers fall back to ordinary writes.

use crate::error::{Error, IoContext, Result};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

/// Alignment of buffers, file offsets and lengths (the largest common logical block size).
pub const ALIGN: usize = 4096;
/// Files smaller than this are not worth a writer thread.
pub const MIN_DIRECT_BYTES: u64 = 1 << 20;
/// Size of each write request handed to the device.
const WRITE_PIECE: usize = 1 << 20;

#[derive(Clone, Copy)]
#[repr(C, align(4096))]
struct Block([u8; ALIGN]);

/// A zeroed, 4096-aligned byte buffer.
#[derive(Default)]
pub struct AlignedBuf {
    blocks: Vec<Block>,
}

impl AlignedBuf {
    pub fn new(len: usize) -> AlignedBuf {
        AlignedBuf {
            blocks: vec![Block([0; ALIGN]); len.div_ceil(ALIGN).max(1)],
        }
    }

    /// Grows the buffer to at least `len` bytes (new bytes zeroed).
    pub fn reserve(&mut self, len: usize) {
        let want = len.div_ceil(ALIGN);
        if want > self.blocks.len() {
            self.blocks.resize(want, Block([0; ALIGN]));
        }
    }

    pub fn capacity(&self) -> usize {
        self.blocks.len() * ALIGN
    }

    pub fn bytes(&self) -> &[u8] {
        // SAFETY: Block is plain bytes with no padding (size == align == ALIGN).
        unsafe { std::slice::from_raw_parts(self.blocks.as_ptr().cast(), self.capacity()) }
    }

    pub fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above; the borrow of self makes the slice unique.
        unsafe { std::slice::from_raw_parts_mut(self.blocks.as_mut_ptr().cast(), self.capacity()) }
    }
}

/// Buffers of finished writers, for the next one: a backup writes pack after pack, and a fresh
/// buffer costs a page fault and a page clearing per 4 KiB (a few percent of a first backup).
static SPARE: std::sync::Mutex<Vec<AlignedBuf>> = std::sync::Mutex::new(Vec::new());
/// Buffers kept in [`SPARE`]: those of one writer (kept memory counts against peak RSS).
const SPARE_MAX: usize = 2;

/// A buffer of at least `len` bytes, reused if one is spare (its bytes are not cleared).
fn spare_buf(len: usize) -> AlignedBuf {
    let mut spare = SPARE.lock().unwrap_or_else(|p| p.into_inner());
    match spare.iter().position(|b| b.capacity() >= len) {
        Some(i) => spare.swap_remove(i),
        None => AlignedBuf::new(len),
    }
}

fn give_back(buf: AlignedBuf) {
    let mut spare = SPARE.lock().unwrap_or_else(|p| p.into_inner());
    if spare.len() < SPARE_MAX && !buf.blocks.is_empty() {
        spare.push(buf);
    }
}

struct Job {
    buf: AlignedBuf,
    len: usize,
    offset: u64,
}

/// Opens the existing file `path` a second time, for writes with `O_DIRECT` at aligned offsets
/// from aligned buffers. `Ok(None)` when the filesystem does not support `O_DIRECT`.
pub fn open_for_direct_writes(path: &Path) -> Result<Option<File>> {
    match OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
    {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(None),
        Err(e) => Err(Error::io_path("open", path, e)),
    }
}

/// Writes a file front to back with `O_DIRECT` (see the module documentation).
pub struct DirectWriter {
    file: Option<Arc<File>>,
    path: PathBuf,
    cur: AlignedBuf,
    fill: usize,
    /// File offset of `cur[0]`; always a multiple of [`ALIGN`].
    pos: u64,
    jobs: Option<SyncSender<Job>>,
    free: Receiver<AlignedBuf>,
    thread: Option<JoinHandle<Result<()>>>,
    /// Why the writer thread stopped, once it has (given again to every later call).
    failure: Option<Error>,
}

impl DirectWriter {
    /// Creates `path` (which must not exist) for direct writing with buffers of `buf_bytes`.
    /// Returns `Ok(None)` when the filesystem does not support `O_DIRECT`.
    pub fn create(path: &Path, buf_bytes: usize) -> Result<Option<DirectWriter>> {
        let file = match OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)
        {
            Ok(f) => f,
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                let _ = std::fs::remove_file(path);
                return Ok(None);
            }
            Err(e) => return Err(Error::io_path("create", path, e)),
        };
        let file = Arc::new(file);
        let buf_bytes = buf_bytes.max(2 * ALIGN);
        let (jobs_tx, jobs_rx) = sync_channel::<Job>(1);
        let (free_tx, free_rx) = sync_channel::<AlignedBuf>(2);
        free_tx.send(spare_buf(buf_bytes)).expect("receiver alive");
        let thread = {
            let file = file.clone();
            let owned = path.to_path_buf();
            std::thread::Builder::new()
                .name("strata-direct-write".into())
                .spawn(move || write_jobs(&file, &owned, jobs_rx, free_tx))
                .ctx("start writer thread", path)?
        };
        Ok(Some(DirectWriter {
            file: Some(file),
            path: path.to_path_buf(),
            cur: spare_buf(buf_bytes),
            fill: 0,
            pos: 0,
            jobs: Some(jobs_tx),
            free: free_rx,
            thread: Some(thread),
            failure: None,
        }))
    }

    /// The next `len` bytes of the file, to be filled completely by the caller before the next
    /// call.
    pub fn reserve(&mut self, len: usize) -> Result<&mut [u8]> {
        if self.fill + len > self.cur.capacity() {
            self.flush_blocks(len)?;
        }
        let start = self.fill;
        self.fill += len;
        Ok(&mut self.cur.bytes_mut()[start..start + len])
    }

    /// Appends `data`.
    pub fn write(&mut self, mut data: &[u8]) -> Result<()> {
        while !data.is_empty() {
            let room = self.cur.capacity() - self.fill;
            let n = if room == 0 {
                data.len().min(self.cur.capacity() - ALIGN)
            } else {
                data.len().min(room)
            };
            self.reserve(n)?.copy_from_slice(&data[..n]);
            data = &data[n..];
        }
        Ok(())
    }

    /// Hands the whole blocks of the current buffer to the writer and continues in a free buffer
    /// with room for `want` more bytes, carrying the partial last block over.
    fn flush_blocks(&mut self, want: usize) -> Result<()> {
        let whole = self.fill / ALIGN * ALIGN;
        let tail = self.fill - whole;
        let mut next = self.take_free()?;
        if next.capacity() < tail + want {
            next = AlignedBuf::new(tail + want);
        }
        next.bytes_mut()[..tail].copy_from_slice(&self.cur.bytes()[whole..self.fill]);
        let full = std::mem::replace(&mut self.cur, next);
        self.send(Job {
            buf: full,
            len: whole,
            offset: self.pos,
        })?;
        self.pos += whole as u64;
        self.fill = tail;
        Ok(())
    }

    fn take_free(&mut self) -> Result<AlignedBuf> {
        match self.free.recv() {
            Ok(b) => Ok(b),
            Err(_) => Err(self.writer_error()),
        }
    }

    fn send(&mut self, job: Job) -> Result<()> {
        let sent = match &self.jobs {
            Some(tx) => tx.send(job).is_ok(),
            None => false,
        };
        if sent {
            Ok(())
        } else {
            Err(self.writer_error())
        }
    }

    /// The writer thread's error, after it stopped early.
    fn writer_error(&mut self) -> Error {
        self.jobs = None;
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(Err(e))) => {
                self.failure = Some(e.again());
                e
            }
            // Asked again after the first failure: the same reason, of the same kind (a full
            // disk stays an I/O error).
            _ => match &self.failure {
                Some(f) => f.again(),
                None => Error::invalid(format!("writing {}: writer stopped", self.path.display())),
            },
        }
    }

    /// Writes the rest, padded to a whole block, waits for every write, and cuts the file to
    /// its length. Returns the file for the caller to fsync.
    pub fn finish(mut self) -> Result<File> {
        let len = self.pos + self.fill as u64;
        let padded = self.fill.div_ceil(ALIGN) * ALIGN;
        self.cur.bytes_mut()[self.fill..padded].fill(0);
        let last = std::mem::take(&mut self.cur);
        if padded > 0 {
            self.send(Job {
                buf: last,
                len: padded,
                offset: self.pos,
            })?;
        } else {
            give_back(last);
        }
        self.jobs = None;
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(r)) => r?,
            _ => return Err(Error::invalid("direct writer thread panicked")),
        }
        self.free.try_iter().for_each(give_back);
        let file = self.file.take().expect("present until finish");
        let file =
            Arc::try_unwrap(file).map_err(|_| Error::invalid("direct writer file still shared"))?;
        file.set_len(len).ctx("set length", &self.path)?;
        Ok(file)
    }
}

impl Drop for DirectWriter {
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn write_jobs(
    file: &File,
    path: &Path,
    jobs: Receiver<Job>,
    free: SyncSender<AlignedBuf>,
) -> Result<()> {
    let mut direct = true;
    for job in jobs {
        let data = &job.buf.bytes()[..job.len];
        let mut done = 0;
        while done < data.len() {
            let n = (data.len() - done).min(WRITE_PIECE);
            let at = job.offset + done as u64;
            match file.write_all_at(&data[done..done + n], at) {
                Ok(()) => done += n,
                // A filesystem that accepted O_DIRECT at open but not these writes: go on
                // through the page cache.
                Err(e) if direct && e.raw_os_error() == Some(libc::EINVAL) => {
                    direct = false;
                    clear_direct(file).ctx("write", path)?;
                }
                Err(e) => return Err(Error::io_path("write", path, e)),
            }
        }
        // The writer may already be gone on an error path; then nobody needs the buffer.
        let _ = free.send(job.buf);
    }
    Ok(())
}

fn clear_direct(file: &File) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    // SAFETY: fcntl on an open descriptor with integer arguments.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_DIRECT) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + i / 4099) as u8).collect()
    }

    #[test]
    fn writes_exact_bytes_across_buffers() {
        let dir = tempfile::tempdir().unwrap();
        for len in [0usize, 1, 4095, 4096, 4097, 3 * 65536 + 123, 1 << 20] {
            let path = dir.path().join(format!("f{len}"));
            let data = pattern(len);
            match DirectWriter::create(&path, 65536).unwrap() {
                Some(mut w) => {
                    // Uneven pieces, some through reserve.
                    let mut at = 0;
                    let mut step = 1;
                    while at < len {
                        let n = step.min(len - at);
                        if step % 2 == 0 {
                            w.reserve(n).unwrap().copy_from_slice(&data[at..at + n]);
                        } else {
                            w.write(&data[at..at + n]).unwrap();
                        }
                        at += n;
                        step = step * 3 + 1;
                    }
                    w.finish().unwrap().sync_all().unwrap();
                }
                None => std::fs::write(&path, &data).unwrap(), // no O_DIRECT here
            }
            assert_eq!(std::fs::read(&path).unwrap(), data, "length {len}");
        }
    }

    /// Writers reuse the buffers of finished ones, whose old bytes must never reach a file.
    #[test]
    fn reused_buffers_carry_nothing_over() {
        let dir = tempfile::tempdir().unwrap();
        for (n, (len, byte)) in [(300_000, 0xAAu8), (70_001, 0x11), (5000, 0x22), (0, 0)]
            .into_iter()
            .enumerate()
        {
            let path = dir.path().join(format!("f{n}"));
            let Some(mut w) = DirectWriter::create(&path, 65536).unwrap() else {
                return; // no O_DIRECT here
            };
            w.write(&vec![byte; len]).unwrap();
            w.finish().unwrap();
            assert_eq!(std::fs::read(&path).unwrap(), vec![byte; len], "file {n}");
        }
    }

    #[test]
    fn reserve_larger_than_buffer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big");
        let data = pattern(200_000);
        if let Some(mut w) = DirectWriter::create(&path, 8192).unwrap() {
            w.write(&data[..10]).unwrap();
            w.reserve(150_000)
                .unwrap()
                .copy_from_slice(&data[10..150_010]);
            w.write(&data[150_010..]).unwrap();
            w.finish().unwrap();
            assert_eq!(std::fs::read(&path).unwrap(), data);
        }
    }

    #[test]
    fn existing_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x");
        std::fs::write(&path, b"keep").unwrap();
        assert!(DirectWriter::create(&path, 8192).is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"keep");
    }
}

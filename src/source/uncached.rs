//! Reading a large file once, start to end, without pulling it through the page cache.
//!
//! What the page cache already holds (an application's working set, a recent read) is copied
//! from there, as any read would. What it does not hold goes straight from the device into the
//! reader's buffer with `O_DIRECT`: no page is allocated, filled and copied for it, and the
//! application's cached pages are not pushed out by a backup's single pass. On this machine a
//! cold read of an 8.8 GB database took 3.4-4.1 s so against 6.5-11.9 s through the page cache
//! (`cat`), most of that in the kernel (docs/PERFORMANCE.md).
//!
//! Which pages the cache holds is asked with `cachestat` (how many of a range's pages it holds:
//! all or none is the answer for a warm or a cold pass) and, for a range partly cached, with
//! `mincore` over a mapping of the range that is never touched (a buffered read that misses, even one with `RWF_NOWAIT`, starts reading the range
//! into the cache). The kernel writes a file's dirty cached pages in a range before it reads the
//! range directly, so a direct read sees what a buffered one would; a page that enters or leaves
//! the cache between the question and the read only changes which way it is read. A file system
//! without `O_DIRECT` (tmpfs, some FUSE mounts), or an unaligned request, is read through the
//! page cache as before.

use crate::storage::direct::ALIGN;
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

/// Reads of one open file, each from the page cache where it holds the bytes, else directly
/// from the device.
pub(crate) struct UncachedReader<'f> {
    file: &'f File,
    /// The same file opened with `O_DIRECT`, when its file system allows it.
    direct: Option<File>,
    /// Cleared when a direct read or `mincore` is refused: everything goes through the cache.
    usable: AtomicBool,
}

impl<'f> UncachedReader<'f> {
    /// A reader of `file`, open at `path`. The direct descriptor is used only if `path` still
    /// names the same file.
    pub(crate) fn new(file: &'f File, path: &Path) -> UncachedReader<'f> {
        let direct = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)
            .ok()
            .filter(|d| match (d.metadata(), file.metadata()) {
                (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
                _ => false,
            });
        UncachedReader {
            file,
            direct,
            usable: AtomicBool::new(true),
        }
    }

    /// Reads `len` bytes at `at` into `buf` (fewer only where the file ends); returns the bytes
    /// read. `buf` should start at a 4096-aligned address and hold `len` rounded up to 4096, and
    /// `at` be a multiple of 4096: otherwise the read goes through the page cache.
    pub(crate) fn read_at(&self, buf: &mut [u8], len: usize, at: u64) -> std::io::Result<usize> {
        let aligned = (buf.as_ptr() as usize).is_multiple_of(ALIGN)
            && at.is_multiple_of(ALIGN as u64)
            && buf.len() >= len.next_multiple_of(ALIGN);
        let (direct, Some(resident)) = (match &self.direct {
            Some(d) if aligned && len > 0 && self.usable.load(Ordering::Relaxed) => {
                (d, self.resident(at, len))
            }
            _ => return super::read_full_at(self.file, &mut buf[..len], at),
        }) else {
            self.usable.store(false, Ordering::Relaxed);
            return super::read_full_at(self.file, &mut buf[..len], at);
        };
        let mut n = 0;
        while n < len {
            // A run of pages that are all cached, or all not.
            let first = n / ALIGN;
            let cached = resident.get(first).is_some_and(|r| r & 1 == 1);
            let run = resident[first..]
                .iter()
                .take_while(|r| (*r & 1 == 1) == cached)
                .count()
                .max(1);
            let end = ((first + run) * ALIGN).min(len);
            let pos = at + n as u64;
            let got = match cached {
                true => super::read_full_at(self.file, &mut buf[n..end], pos)?,
                false => {
                    let whole = (end - n).next_multiple_of(ALIGN);
                    match read_direct(direct, &mut buf[n..n + whole], pos) {
                        Ok(k) => k.min(end - n),
                        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                            self.usable.store(false, Ordering::Relaxed);
                            return Ok(n + super::read_full_at(self.file, &mut buf[n..len], pos)?);
                        }
                        Err(e) => return Err(e),
                    }
                }
            };
            n += got;
            if n < end {
                // The file ends here.
                break;
            }
        }
        Ok(n)
    }

    /// Per 4096-byte page of `len` bytes at `at`, whether the page cache holds it (bit 0), or
    /// `None` if the kernel will not say.
    fn resident(&self, at: u64, len: usize) -> Option<Vec<u8>> {
        let pages = len.div_ceil(ALIGN);
        // All of the range cached, or none of it (a warm or a cold pass): asked without a
        // mapping, whose setting up and tearing down costs more than the question.
        match cached_pages(self.file, at, (pages * ALIGN) as u64) {
            Some(n) if n as usize >= pages => return Some(vec![1u8; pages]),
            Some(0) => return Some(vec![0u8; pages]),
            _ => {}
        }
        let mut out = vec![0u8; pages];
        let offset = libc::off_t::try_from(at).ok()?;
        // SAFETY: a fresh read-only shared mapping of the open file, never dereferenced (a
        // mapping past the file's end would fault only when touched), and unmapped below.
        unsafe {
            let map = libc::mmap(
                std::ptr::null_mut(),
                pages * ALIGN,
                libc::PROT_READ,
                libc::MAP_SHARED,
                self.file.as_raw_fd(),
                offset,
            );
            if map == libc::MAP_FAILED {
                return None;
            }
            let ok = libc::mincore(map, pages * ALIGN, out.as_mut_ptr()) == 0;
            libc::munmap(map, pages * ALIGN);
            ok.then_some(out)
        }
    }
}

/// How many pages of `len` bytes at `at` of `file` the page cache holds, by `cachestat(2)`
/// (Linux 6.5); `None` where the kernel does not have it.
fn cached_pages(file: &File, at: u64, len: u64) -> Option<u64> {
    #[repr(C)]
    struct Range {
        off: u64,
        len: u64,
    }
    #[repr(C)]
    #[derive(Default)]
    struct Stat {
        nr_cache: u64,
        nr_dirty: u64,
        nr_writeback: u64,
        nr_evicted: u64,
        nr_recently_evicted: u64,
    }
    const SYS_CACHESTAT: libc::c_long = 451;
    static MISSING: AtomicBool = AtomicBool::new(false);
    if MISSING.load(Ordering::Relaxed) {
        return None;
    }
    let range = Range { off: at, len };
    let mut stat = Stat::default();
    // SAFETY: cachestat reads `range` and writes `stat`, both live for the call, about an open
    // descriptor.
    let r = unsafe {
        libc::syscall(
            SYS_CACHESTAT,
            file.as_raw_fd(),
            &range as *const Range,
            &mut stat as *mut Stat,
            0u32,
        )
    };
    if r != 0 {
        MISSING.store(true, Ordering::Relaxed);
        return None;
    }
    Some(stat.nr_cache)
}

/// Reads `buf.len()` bytes (a multiple of 4096) at `at` with `O_DIRECT`, until they are read
/// or the file ends.
fn read_direct(direct: &File, buf: &mut [u8], at: u64) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match direct.read_at(&mut buf[n..], at + n as u64) {
            Ok(0) => break,
            Ok(k) if k.is_multiple_of(ALIGN) => n += k,
            // A short read that is not whole blocks ends at the end of the file.
            Ok(k) => return Ok(n + k),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::direct::AlignedBuf;

    const STEP: usize = 256 << 10;

    fn evict(file: &File) {
        file.sync_all().unwrap();
        // SAFETY: only advice about this descriptor's cached pages.
        unsafe {
            libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED);
        }
    }

    /// Every read gives the file's bytes, whether cached, evicted or partly either, at the end
    /// of the file, and through a buffer or offset that cannot go direct.
    #[test]
    fn reads_give_the_files_bytes_cached_or_not() {
        // The checkout, not /tmp: a tmpfs there would not take O_DIRECT.
        let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        let path = dir.path().join("f");
        let len = 3 * STEP + 5 * ALIGN + 123;
        let data: Vec<u8> = (0..len).map(|i| (i * 7 + i / 4099) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let file = File::open(&path).unwrap();
        let reader = UncachedReader::new(&file, &path);
        // Where the file system takes O_DIRECT (this machine's does), the direct path is the
        // one under test.
        let direct_ok = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(&path)
            .is_ok();
        assert_eq!(reader.direct.is_some(), direct_ok);
        let mut buf = AlignedBuf::new(len + ALIGN);
        for round in 0..3 {
            match round {
                0 => evict(&file),
                // Half of it cached again, in two places.
                1 => {
                    let mut scratch = vec![0u8; STEP];
                    file.read_at(&mut scratch, ALIGN as u64).unwrap();
                    file.read_at(&mut scratch[..ALIGN], 2 * STEP as u64)
                        .unwrap();
                }
                _ => {}
            }
            for (at, want) in [
                (0, len),
                (ALIGN, STEP + 3),
                (2 * STEP, len),
                (len / ALIGN * ALIGN, ALIGN),
            ] {
                let got = reader.read_at(buf.bytes_mut(), want, at as u64).unwrap();
                let end = (at + want).min(len);
                assert_eq!(got, end - at, "round {round} at {at}");
                assert_eq!(&buf.bytes()[..got], &data[at..end], "round {round} at {at}");
            }
            // An unaligned buffer or offset is read through the page cache.
            let got = reader.read_at(&mut buf.bytes_mut()[1..], 1000, 77).unwrap();
            assert_eq!(&buf.bytes()[1..1 + got], &data[77..1077]);
            evict(&file);
        }
        assert!(
            reader.usable.load(Ordering::Relaxed),
            "direct reads were refused"
        );
        // Past the end: nothing.
        let past = (len.next_multiple_of(ALIGN) + ALIGN) as u64;
        assert_eq!(reader.read_at(buf.bytes_mut(), 10, past).unwrap(), 0);
    }
}

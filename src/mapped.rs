//! Read-only file mappings that survive the file shrinking underneath them.
//!
//! Hashing a file that mostly did not change is bound by copying it out of the page cache; a
//! mapping lets the hasher read the cached pages in place. The danger of a mapping is a file
//! truncated by another process while it is read: touching a page past the new end raises
//! SIGBUS, which would kill the backup. [`Mapping::read`] arms a SIGBUS handler for the calling
//! thread's current mapping: a fault inside it maps a zero page over the missing one and records
//! that the read was torn, and the caller gets `None` and reads that part again with `pread`.
//! A SIGBUS anywhere else gets the previous disposition back, so real faults still end the process.
//!
//! Bytes read through a mapping can change while they are read (another process writing the
//! file), so callers only use them to decide, and hash again whatever they store.

use std::cell::Cell;
use std::fs::File;
use std::sync::Once;

thread_local! {
    /// The mapping this thread is reading, as [start, end) addresses; (0, 0) when none.
    static ARMED: Cell<(usize, usize)> = const { Cell::new((0, 0)) };
    /// Set by the handler when a page of the armed mapping was missing.
    static TORN: Cell<bool> = const { Cell::new(false) };
}

static INSTALL: Once = Once::new();
static mut PREVIOUS: std::mem::MaybeUninit<libc::sigaction> = std::mem::MaybeUninit::uninit();

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if n > 0 { n as usize } else { 4096 }
}

extern "C" fn on_sigbus(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers.
    let addr = unsafe { (*info).si_addr() } as usize;
    // Const-initialised thread locals without destructors are plain TLS reads here.
    let (start, end) = ARMED.with(|a| a.get());
    if addr >= start && addr < end {
        let page = addr & !(page_size() - 1);
        // SAFETY: replaces one page of our own read-only mapping with zeros (a raw syscall).
        let r = unsafe {
            libc::syscall(
                libc::SYS_mmap,
                page,
                page_size(),
                libc::PROT_READ,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                -1i64,
                0i64,
            )
        };
        if r as usize == page {
            TORN.with(|t| t.set(true));
            return;
        }
    }
    // Not ours: put the previous disposition back; the faulting access repeats and gets it.
    // SAFETY: PREVIOUS was filled by sigaction before this handler was installed.
    unsafe {
        libc::sigaction(
            libc::SIGBUS,
            (&raw const PREVIOUS).cast::<libc::sigaction>(),
            std::ptr::null_mut(),
        );
    }
}

fn install() {
    INSTALL.call_once(|| {
        // SAFETY: installs a handler with SA_SIGINFO; PREVIOUS receives the old one first and is
        // written only here, once.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_sigbus as *const () as usize;
            action.sa_flags = libc::SA_SIGINFO | libc::SA_NODEFER;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(
                libc::SIGBUS,
                &action,
                (&raw mut PREVIOUS).cast::<libc::sigaction>(),
            );
        }
    });
}

/// A read-only mapping of part of a file.
pub struct Mapping {
    map: memmap2::Mmap,
}

impl Mapping {
    /// Maps `len` bytes of `file` at `offset` (a multiple of the page size), pages prefaulted
    /// from the page cache. `len` must not reach past the end of the file as it is now.
    pub fn new(file: &File, offset: u64, len: usize) -> std::io::Result<Mapping> {
        if len == 0 || !offset.is_multiple_of(page_size() as u64) {
            return Err(std::io::Error::from(std::io::ErrorKind::InvalidInput));
        }
        install();
        // SAFETY: the mapping is only read through `read`, which survives the file shrinking
        // (see the module documentation); changing bytes are the caller's documented concern.
        let map = unsafe {
            memmap2::MmapOptions::new()
                .offset(offset)
                .len(len)
                .populate()
                .map(file)?
        };
        Ok(Mapping { map })
    }

    /// Calls `f` with the mapped bytes; `None` if the file shrank while they were read (some
    /// then read as zeros, and `f`'s result is thrown away).
    pub fn read<T>(&self, f: impl FnOnce(&[u8]) -> T) -> Option<T> {
        let bytes: &[u8] = &self.map;
        let start = bytes.as_ptr() as usize;
        ARMED.with(|a| a.set((start, start + bytes.len())));
        TORN.with(|t| t.set(false));
        let out = f(bytes);
        ARMED.with(|a| a.set((0, 0)));
        if TORN.with(|t| t.get()) {
            None
        } else {
            Some(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn reads_the_file_and_survives_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..64 * 1024u32).map(|i| (i % 253) as u8 + 1).collect();
        std::fs::File::create(&path)
            .unwrap()
            .write_all(&data)
            .unwrap();
        let file = File::open(&path).unwrap();
        let m = Mapping::new(&file, 0, data.len()).unwrap();
        assert_eq!(m.read(|b| b.to_vec()).unwrap(), data);

        // Another writer cuts the file: reading the mapping must not kill us.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(10_000)
            .unwrap();
        let sum = m.read(|b| b.iter().map(|&x| x as u64).sum::<u64>());
        assert_eq!(sum, None, "a torn read is reported");
        // The bytes that are still in the file read as before.
        let m2 = Mapping::new(&file, 0, 8192).unwrap();
        assert_eq!(m2.read(|b| b.to_vec()).unwrap(), &data[..8192]);
        assert!(Mapping::new(&file, 100, 10).is_err(), "unaligned offset");
    }
}

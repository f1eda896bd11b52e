//! Where repository files live. All repository file I/O (packs, manifests, config) goes through
//! [`Backend`], so other stores and fault-injecting test backends can be added without touching
//! the pipeline. The redb index is a local file managed by redb itself.

use crate::error::{IoContext, Result};
use direct::{DirectWriter, MIN_DIRECT_BYTES};
use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub mod direct;

/// Fault injection for tests: a backend that fails after N operations, and an index file that
/// loses what was not synced.
#[cfg(any(test, feature = "testing"))]
mod faults;
#[cfg(any(test, feature = "testing"))]
pub use faults::{Fault, FaultyBackend, PowerLossFile};

/// The size packs are filled to before a new one starts (the repository config can set another).
pub const DEFAULT_PACK_TARGET: u64 = 16 << 20;

/// A flat namespace of immutable objects named by '/'-separated relative paths.
pub trait Backend: Send + Sync {
    /// Writes `name` atomically and durably: after `put` returns, the object is either absent
    /// (if the process dies before) or complete, and survives a power loss.
    fn put(&self, name: &str, data: &[u8]) -> Result<()>;
    /// [`Backend::put`] of bytes the caller gives up: a backend that sends them on keeps them
    /// without a copy.
    fn put_owned(&self, name: &str, data: Vec<u8>) -> Result<()> {
        self.put(name, &data)
    }
    fn get(&self, name: &str) -> Result<Vec<u8>>;
    fn get_range(&self, name: &str, offset: u64, len: usize) -> Result<Vec<u8>> {
        let mut buf = vec![0; len];
        self.read_into(name, offset, &mut buf)?;
        Ok(buf)
    }
    /// Reads exactly `buf.len()` bytes at `offset`.
    fn read_into(&self, name: &str, offset: u64, buf: &mut [u8]) -> Result<()>;
    /// Like [`Backend::read_into`], for a piece of a long sequential read (a large file being
    /// restored), whose neighbours have been or will be read on their own: a backend that
    /// serves small reads from cached blocks reads exactly this range instead.
    fn read_into_sequential(&self, name: &str, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.read_into(name, offset, buf)
    }
    fn size(&self, name: &str) -> Result<u64>;
    /// A hint that most of object `name` is about to be read: a local disk starts reading it
    /// into the page cache. Nothing by default.
    fn will_need(&self, name: &str) {
        let _ = name;
    }
    /// Object names under `prefix` (a directory-like path such as `packs`), recursively.
    fn list(&self, prefix: &str) -> Result<Vec<String>>;
    fn delete(&self, name: &str) -> Result<()>;
    fn exists(&self, name: &str) -> Result<bool>;

    /// Starts an object whose name is known only when it is complete (a pack is named by its
    /// hash). Its bytes may be stored as they come; it becomes visible, with the same guarantees
    /// as [`Backend::put`], only at [`ObjectWriter::commit`]. `prefix` is where it will be named.
    /// Removes objects under `prefix` that were being written when a writer died (called only
    /// under the repository lock, when no other writer can be running). Returns how many.
    fn remove_unfinished(&self, prefix: &str) -> Result<u64> {
        let _ = prefix;
        Ok(0)
    }

    fn create(&self, prefix: &str) -> Result<Box<dyn ObjectWriter + '_>> {
        let _ = prefix;
        Ok(Box::new(BufferedObject {
            backend: self,
            // A pack of the default target size and its last frame without growing (untouched
            // capacity costs no memory).
            data: Vec::with_capacity((DEFAULT_PACK_TARGET + (1 << 20)) as usize),
        }))
    }

    /// How many reads or uploads to keep in flight when there are many to make: `None` for a
    /// local disk (one per core), a few dozen for object storage, where each waits on a round
    /// trip.
    fn parallelism(&self) -> Option<usize> {
        None
    }

    /// The local cache of chunk-list nodes of a remote repository ([`crate::nodecache`]).
    fn node_cache(&self) -> Option<&crate::nodecache::NodeCache> {
        None
    }
}

/// Runs `f` on a thread pool as wide as `backend` wants for its reads (see
/// [`Backend::parallelism`]) but at most `max` threads, or on the global pool.
pub fn with_io_pool<T: Send>(backend: &dyn Backend, max: usize, f: impl FnOnce() -> T + Send) -> T {
    match backend.parallelism() {
        Some(n) => with_pool(n.min(max), f),
        None => f(),
    }
}

/// Runs `f` on a pool of `threads` threads, or on the current pool if that is as wide.
pub fn with_pool<T: Send>(threads: usize, f: impl FnOnce() -> T + Send) -> T {
    if threads <= rayon::current_num_threads() {
        return f();
    }
    match rayon::ThreadPoolBuilder::new().num_threads(threads).build() {
        Ok(pool) => pool.install(f),
        Err(_) => f(),
    }
}

/// An object being written; see [`Backend::create`]. Dropped without a commit, it leaves nothing
/// visible.
pub trait ObjectWriter: Send {
    fn write(&mut self, data: &[u8]) -> Result<()>;
    /// Makes the object durable under `name`.
    fn commit(self: Box<Self>, name: &str) -> Result<()>;
}

/// Collects the object in memory and stores it with one `put`.
struct BufferedObject<'b, B: Backend + ?Sized> {
    backend: &'b B,
    data: Vec<u8>,
}

impl<B: Backend + ?Sized> ObjectWriter for BufferedObject<'_, B> {
    fn write(&mut self, data: &[u8]) -> Result<()> {
        self.data.extend_from_slice(data);
        Ok(())
    }

    fn commit(self: Box<Self>, name: &str) -> Result<()> {
        self.backend.put_owned(name, self.data)
    }
}

/// A local object streamed to a temporary file (with `O_DIRECT` where the filesystem has it),
/// then fsynced and renamed into place.
struct LocalObject {
    root: PathBuf,
    tmp: PathBuf,
    out: LocalOut,
}

enum LocalOut {
    Direct(DirectWriter),
    Plain(std::io::BufWriter<File>),
    Done,
}

impl ObjectWriter for LocalObject {
    fn write(&mut self, data: &[u8]) -> Result<()> {
        match &mut self.out {
            LocalOut::Direct(w) => w.write(data),
            LocalOut::Plain(w) => w.write_all(data).ctx("write", &self.tmp),
            LocalOut::Done => Err(crate::Error::invalid("object already committed")),
        }
    }

    fn commit(mut self: Box<Self>, name: &str) -> Result<()> {
        let out = std::mem::replace(&mut self.out, LocalOut::Done);
        let result = self.finish_into(out, name);
        if result.is_err() {
            let _ = fs::remove_file(&self.tmp);
        }
        result
    }
}

impl LocalObject {
    fn finish_into(&self, out: LocalOut, name: &str) -> Result<()> {
        let file = match out {
            LocalOut::Direct(w) => w.finish()?,
            LocalOut::Plain(w) => w
                .into_inner()
                .map_err(|e| crate::Error::io_path("write", &self.tmp, e.into_error()))?,
            LocalOut::Done => return Err(crate::Error::invalid("object already committed")),
        };
        file.sync_all().ctx("fsync", &self.tmp)?;
        drop(file);
        let path = self.root.join(name);
        let dir = path.parent().expect("object names have a parent");
        let created_dir = ensure_object_dir(dir)?;
        fs::rename(&self.tmp, &path).ctx("rename into place", &path)?;
        sync_dir(dir)?;
        if created_dir && let Some(parent) = dir.parent() {
            sync_dir(parent)?;
        }
        Ok(())
    }
}

impl Drop for LocalObject {
    fn drop(&mut self) {
        if !matches!(self.out, LocalOut::Done) {
            self.out = LocalOut::Done; // stops the writer thread first
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// Creates an object directory if missing; true if it was created.
fn ensure_object_dir(dir: &Path) -> Result<bool> {
    if dir.exists() {
        return Ok(false);
    }
    fs::create_dir_all(dir).ctx("create directory", dir)?;
    Ok(true)
}

/// A repository in a local directory.
pub struct LocalBackend {
    root: PathBuf,
    /// Open read handles, so restoring many small chunks does not reopen pack files.
    handles: Mutex<HashMap<String, Arc<File>>>,
}

const MAX_OPEN_HANDLES: usize = 256;
/// Buffer size for objects written with `O_DIRECT` (packs).
const DIRECT_BUFFER: usize = 4 << 20;

impl LocalBackend {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        LocalBackend {
            root: root.into(),
            handles: Mutex::new(HashMap::new()),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    fn handle(&self, name: &str, path: &Path) -> Result<Arc<File>> {
        let mut handles = self.handles.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = handles.get(name) {
            return Ok(f.clone());
        }
        let f = Arc::new(File::open(path).ctx("open", path)?);
        if handles.len() >= MAX_OPEN_HANDLES {
            handles.clear();
        }
        handles.insert(name.to_string(), f.clone());
        Ok(f)
    }
}

/// Asks the kernel to start reading the whole of `file` into the page cache (only a hint).
pub fn read_ahead(file: &File) {
    use std::os::fd::AsRawFd;
    // SAFETY: posix_fadvise on an open file descriptor only affects caching.
    unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_WILLNEED) };
}

/// fsyncs a directory so a rename or create inside it is durable.
pub use crate::sys::sync_dir;

/// A temporary name beside `path` that no other writer uses.
pub fn temp_name(path: &Path) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.strata-tmp.{}.{n}", std::process::id()))
}

/// True for names made by [`temp_name`].
pub fn is_temp_name(name: &std::ffi::OsStr) -> bool {
    let name = name.to_string_lossy();
    name.starts_with('.') && name.contains(".strata-tmp.")
}

impl Backend for LocalBackend {
    fn put(&self, name: &str, data: &[u8]) -> Result<()> {
        let path = self.path(name);
        let dir = path.parent().expect("object names have a parent");
        let created_dir = ensure_object_dir(dir)?;
        let tmp = temp_name(&path);
        let result = (|| {
            let direct = if data.len() as u64 >= MIN_DIRECT_BYTES {
                DirectWriter::create(&tmp, DIRECT_BUFFER)?
            } else {
                None
            };
            let f = match direct {
                Some(mut w) => {
                    w.write(data)?;
                    w.finish()?
                }
                None => {
                    let mut f = OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .open(&tmp)
                        .ctx("create", &tmp)?;
                    f.write_all(data).ctx("write", &tmp)?;
                    f
                }
            };
            f.sync_all().ctx("fsync", &tmp)?;
            fs::rename(&tmp, &path).ctx("rename into place", &path)?;
            sync_dir(dir)?;
            if created_dir && let Some(parent) = dir.parent() {
                sync_dir(parent)?;
            }
            Ok(())
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    fn get(&self, name: &str) -> Result<Vec<u8>> {
        let path = self.path(name);
        fs::read(&path).ctx("read", &path)
    }

    fn read_into(&self, name: &str, offset: u64, buf: &mut [u8]) -> Result<()> {
        let path = self.path(name);
        let f = self.handle(name, &path)?;
        f.read_exact_at(buf, offset).ctx("read", &path)
    }

    fn size(&self, name: &str) -> Result<u64> {
        let path = self.path(name);
        Ok(fs::metadata(&path).ctx("stat", &path)?.len())
    }

    fn will_need(&self, name: &str) {
        if let Ok(f) = self.handle(name, &self.path(name)) {
            read_ahead(&f);
        }
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let mut out = Vec::new();
        let base = self.path(prefix);
        if !base.exists() {
            return Ok(out);
        }
        let mut stack = vec![base];
        while let Some(dir) = stack.pop() {
            for entry in fs::read_dir(&dir).ctx("list", &dir)? {
                let entry = entry.ctx("list", &dir)?;
                let path = entry.path();
                if entry.file_type().ctx("stat", &path)?.is_dir() {
                    stack.push(path);
                } else if is_temp_name(&entry.file_name()) {
                    // An object still being written, or left by a killed process.
                } else if let Ok(rel) = path.strip_prefix(&self.root) {
                    out.push(rel.to_string_lossy().into_owned());
                }
            }
        }
        out.sort();
        Ok(out)
    }

    fn delete(&self, name: &str) -> Result<()> {
        let path = self.path(name);
        self.handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
        fs::remove_file(&path).ctx("delete", &path)?;
        if let Some(dir) = path.parent() {
            sync_dir(dir)?;
        }
        Ok(())
    }

    fn exists(&self, name: &str) -> Result<bool> {
        Ok(self.path(name).exists())
    }

    fn remove_unfinished(&self, prefix: &str) -> Result<u64> {
        // Objects are written directly under their prefix (see `create` and `put`), so only
        // that directory is looked at, whatever the number of objects below it.
        let mut removed = 0;
        let base = self.path(prefix);
        let Ok(listing) = fs::read_dir(&base) else {
            return Ok(0);
        };
        for entry in listing {
            let entry = entry.ctx("list", &base)?;
            if is_temp_name(&entry.file_name()) {
                let path = entry.path();
                fs::remove_file(&path).ctx("remove", &path)?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    fn create(&self, prefix: &str) -> Result<Box<dyn ObjectWriter + '_>> {
        let dir = self.path(prefix);
        ensure_object_dir(&dir)?;
        let tmp = temp_name(&dir.join("object"));
        let out = match DirectWriter::create(&tmp, DIRECT_BUFFER)? {
            Some(w) => LocalOut::Direct(w),
            None => LocalOut::Plain(std::io::BufWriter::with_capacity(
                1 << 20,
                OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&tmp)
                    .ctx("create", &tmp)?,
            )),
        };
        Ok(Box::new(LocalObject {
            root: self.root.clone(),
            tmp,
            out,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streamed_object_appears_only_at_commit_and_unfinished_ones_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let b = LocalBackend::new(dir.path());
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let mut w = b.create("packs").unwrap();
        w.write(&data[..12345]).unwrap();
        w.write(&data[12345..]).unwrap();
        assert!(b.list("packs").unwrap().is_empty(), "visible before commit");
        w.commit("packs/ab/x.pack").unwrap();
        assert_eq!(
            b.list("packs").unwrap(),
            vec!["packs/ab/x.pack".to_string()]
        );
        assert_eq!(b.get("packs/ab/x.pack").unwrap(), data);

        // One abandoned by drop leaves nothing; one left by a killed process is removed later.
        let mut w = b.create("packs").unwrap();
        w.write(b"partial").unwrap();
        drop(w);
        let stale = temp_name(&dir.path().join("packs/object"));
        fs::write(&stale, b"left by a killed writer").unwrap();
        assert_eq!(b.list("packs").unwrap().len(), 1);
        assert_eq!(b.remove_unfinished("packs").unwrap(), 1);
        assert!(!stale.exists());
        assert_eq!(b.list("packs").unwrap().len(), 1);
    }
}

//! Fault injection, compiled only for tests (the `testing` feature): a [`FaultyBackend`] that
//! passes operations on until its budget is spent and then fails them, and a [`PowerLossFile`]
//! for the index that keeps writes in memory until they are synced, so a crash loses them.

use super::{Backend, ObjectWriter};
use crate::error::{IoContext, Result};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// What a [`FaultyBackend`] does once its budget of operations is spent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Every later write, commit and delete fails with an I/O error (a failing disk); reads
    /// still work.
    WriteError,
    /// Every later operation, reads included, fails: the process is as good as dead, and what
    /// it has not made durable is lost.
    Crash,
}

/// A test backend that passes operations to another backend until `budget` of them have
/// happened, then injects a [`Fault`]. Counted operations: `put`, `delete`, `create` and
/// `commit` of a streamed object, every started MiB written to one, and (with [`Fault::Crash`])
/// reads.
pub struct FaultyBackend {
    inner: Box<dyn Backend>,
    budget: Arc<std::sync::atomic::AtomicI64>,
    fault: Fault,
    /// Operations that failed because of the fault.
    pub injected: std::sync::atomic::AtomicU64,
}

impl FaultyBackend {
    pub fn new(inner: Box<dyn Backend>, budget: u64, fault: Fault) -> Self {
        FaultyBackend {
            inner,
            budget: Arc::new(std::sync::atomic::AtomicI64::new(budget as i64)),
            fault,
            injected: Default::default(),
        }
    }

    /// Spends one operation; an error once the budget is gone.
    fn spend(&self, what: &str, name: &str) -> Result<()> {
        use std::sync::atomic::Ordering;
        if self.budget.fetch_sub(1, Ordering::SeqCst) <= 0 {
            self.injected.fetch_add(1, Ordering::SeqCst);
            return Err(crate::error::Error::io(
                format!("{what} {name}"),
                std::io::Error::other("injected fault"),
            ));
        }
        Ok(())
    }

    /// The repository's index file (`index.redb`) under the same budget and fault: each
    /// `fsync` and length change of the index spends one operation, and writes stay in memory
    /// until an `fsync` makes them durable. Once the budget is spent, a [`Fault::Crash`] loses
    /// every write not yet made durable, or (`keep_some`) a seeded part of them, as a power
    /// loss can; [`Fault::WriteError`] fails every later write and `fsync`.
    pub fn index_file(&self, path: &Path, keep_some: Option<u64>) -> Result<PowerLossFile> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .ctx("open", path)?;
        let len = file.metadata().ctx("stat", path)?.len();
        Ok(PowerLossFile {
            file,
            budget: self.budget.clone(),
            fault: self.fault,
            keep_some,
            state: Mutex::new(Unsynced {
                ops: Vec::new(),
                len,
                dead: false,
            }),
        })
    }

    fn spend_read(&self, name: &str) -> Result<()> {
        match self.fault {
            Fault::Crash => self.spend("read", name),
            Fault::WriteError => Ok(()),
        }
    }
}

impl Backend for FaultyBackend {
    fn put(&self, name: &str, data: &[u8]) -> Result<()> {
        self.spend("write", name)?;
        self.inner.put(name, data)
    }
    fn get(&self, name: &str) -> Result<Vec<u8>> {
        self.spend_read(name)?;
        self.inner.get(name)
    }
    fn read_into(&self, name: &str, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.spend_read(name)?;
        self.inner.read_into(name, offset, buf)
    }
    fn size(&self, name: &str) -> Result<u64> {
        self.spend_read(name)?;
        self.inner.size(name)
    }
    fn will_need(&self, name: &str) {
        self.inner.will_need(name)
    }
    fn list(&self, prefix: &str) -> Result<Vec<String>> {
        self.spend_read(prefix)?;
        self.inner.list(prefix)
    }
    fn delete(&self, name: &str) -> Result<()> {
        self.spend("delete", name)?;
        self.inner.delete(name)
    }
    fn exists(&self, name: &str) -> Result<bool> {
        self.spend_read(name)?;
        self.inner.exists(name)
    }
    fn remove_unfinished(&self, prefix: &str) -> Result<u64> {
        self.spend("clean up", prefix)?;
        self.inner.remove_unfinished(prefix)
    }
    fn create(&self, prefix: &str) -> Result<Box<dyn ObjectWriter + '_>> {
        self.spend("create", prefix)?;
        Ok(Box::new(FaultyObject {
            backend: self,
            inner: self.inner.create(prefix)?,
            written: 0,
        }))
    }
}

struct FaultyObject<'b> {
    backend: &'b FaultyBackend,
    inner: Box<dyn ObjectWriter + 'b>,
    written: u64,
}

impl ObjectWriter for FaultyObject<'_> {
    fn write(&mut self, data: &[u8]) -> Result<()> {
        let before = self.written;
        self.written += data.len() as u64;
        if before >> 20 != self.written >> 20 || before == 0 {
            self.backend.spend("write", "object")?;
        }
        self.inner.write(data)
    }
    fn commit(self: Box<Self>, name: &str) -> Result<()> {
        self.backend.spend("commit", name)?;
        self.inner.commit(name)
    }
}

/// A file for redb whose writes are durable only after `sync_data`; see
/// [`FaultyBackend::index_file`].
#[derive(Debug)]
pub struct PowerLossFile {
    file: File,
    budget: Arc<std::sync::atomic::AtomicI64>,
    fault: Fault,
    keep_some: Option<u64>,
    state: Mutex<Unsynced>,
}

#[derive(Debug)]
enum PendingOp {
    Write(u64, Vec<u8>),
    SetLen(u64),
}

#[derive(Debug)]
struct Unsynced {
    /// Writes and length changes since the last `sync_data`, in order.
    ops: Vec<PendingOp>,
    /// The length as the database sees it.
    len: u64,
    /// The fault happened: nothing more reaches the file.
    dead: bool,
}

impl PowerLossFile {
    fn injected() -> std::io::Error {
        std::io::Error::other("injected fault")
    }

    /// Spends one operation; on the fault, a crash loses (part of) what was not made durable.
    fn spend(&self, state: &mut Unsynced) -> std::io::Result<()> {
        use std::sync::atomic::Ordering;
        if state.dead || self.budget.fetch_sub(1, Ordering::SeqCst) <= 0 {
            if !state.dead && self.fault == Fault::Crash {
                let ops = std::mem::take(&mut state.ops);
                if let Some(seed) = self.keep_some {
                    // What the disk happened to write before the power went: a seeded part.
                    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
                    let kept: Vec<PendingOp> = ops
                        .into_iter()
                        .filter(|_| {
                            x ^= x << 13;
                            x ^= x >> 7;
                            x ^= x << 17;
                            x & 1 == 1
                        })
                        .collect();
                    let _ = self.apply(&kept);
                }
            }
            state.dead = self.fault == Fault::Crash;
            return Err(Self::injected());
        }
        Ok(())
    }

    fn apply(&self, ops: &[PendingOp]) -> std::io::Result<()> {
        for op in ops {
            match op {
                PendingOp::Write(at, data) => self.file.write_all_at(data, *at)?,
                PendingOp::SetLen(len) => self.file.set_len(*len)?,
            }
        }
        Ok(())
    }
}

impl redb::StorageBackend for PowerLossFile {
    fn len(&self) -> std::io::Result<u64> {
        Ok(self.state.lock().unwrap_or_else(|p| p.into_inner()).len)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.dead && self.fault == Fault::Crash {
            return Err(Self::injected());
        }
        let end = offset + out.len() as u64;
        if end > state.len {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "read past the end",
            ));
        }
        // The durable bytes, then what is not yet durable on top, in order.
        out.fill(0);
        let on_disk = self.file.metadata()?.len();
        if offset < on_disk {
            let n = (on_disk.min(end) - offset) as usize;
            self.file.read_exact_at(&mut out[..n], offset)?;
        }
        for op in &state.ops {
            match op {
                PendingOp::Write(at, data) => {
                    let (from, to) = ((*at).max(offset), (at + data.len() as u64).min(end));
                    if from < to {
                        out[(from - offset) as usize..(to - offset) as usize]
                            .copy_from_slice(&data[(from - at) as usize..(to - at) as usize]);
                    }
                }
                PendingOp::SetLen(len) if *len < end => {
                    out[(len.max(&offset) - offset) as usize..].fill(0);
                }
                PendingOp::SetLen(_) => {}
            }
        }
        Ok(())
    }

    fn set_len(&self, len: u64) -> std::io::Result<()> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        self.spend(&mut state)?;
        state.ops.push(PendingOp::SetLen(len));
        state.len = len;
        Ok(())
    }

    fn sync_data(&self) -> std::io::Result<()> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        self.spend(&mut state)?;
        let ops = std::mem::take(&mut state.ops);
        self.apply(&ops)?;
        self.file.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.dead
            || (self.fault == Fault::WriteError
                && self.budget.load(std::sync::atomic::Ordering::SeqCst) <= 0)
        {
            return Err(Self::injected());
        }
        state.ops.push(PendingOp::Write(offset, data.to_vec()));
        state.len = state.len.max(offset + data.len() as u64);
        Ok(())
    }

    fn close(&self) -> std::io::Result<()> {
        // A clean close makes nothing durable that `sync_data` did not.
        Ok(())
    }

    fn try_lock_range(
        &self,
        _: std::ops::Bound<u64>,
        _: std::ops::Bound<u64>,
    ) -> std::result::Result<bool, redb::BackendError> {
        // One process, one handle: the repository lock already excludes other writers.
        Ok(true)
    }

    fn try_lock_shared_range(
        &self,
        _: std::ops::Bound<u64>,
        _: std::ops::Bound<u64>,
    ) -> std::result::Result<bool, redb::BackendError> {
        Ok(true)
    }

    fn lock_range(
        &self,
        _: std::ops::Bound<u64>,
        _: std::ops::Bound<u64>,
    ) -> std::result::Result<(), redb::BackendError> {
        Ok(())
    }

    fn lock_shared_range(
        &self,
        _: std::ops::Bound<u64>,
        _: std::ops::Bound<u64>,
    ) -> std::result::Result<(), redb::BackendError> {
        Ok(())
    }

    fn unlock_range(
        &self,
        _: std::ops::Bound<u64>,
        _: std::ops::Bound<u64>,
    ) -> std::result::Result<(), redb::BackendError> {
        Ok(())
    }

    fn query_lock_range(
        &self,
        _: std::ops::Bound<u64>,
        _: std::ops::Bound<u64>,
    ) -> std::result::Result<bool, redb::BackendError> {
        Ok(false)
    }
}

//! Collects new blobs into packs and writes full packs on a background thread.
//!
//! Memory stays bounded: one pack fills while at most one is being written (the hand-over is a
//! rendezvous channel). A pack is only ever referenced by the index after `finish` has returned,
//! which is after every pack was written and fsynced.

use crate::compress::Compression;
use crate::error::{Error, Result};
use crate::id::ChunkId;
use crate::index::pack_object_name;
use crate::pack::{BlobKind, Member, PackEntry, PackWriter};
use crate::storage::Backend;
use std::sync::Mutex;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

/// A pack that is durably stored.
#[derive(Debug)]
pub struct WrittenPack {
    pub no: u32,
    pub id: ChunkId,
    pub size: u64,
    pub entries: Vec<PackEntry>,
}

struct Filling {
    no: u32,
    writer: PackWriter,
}

pub struct Packer {
    target: usize,
    next_no: Mutex<u32>,
    filling: Mutex<Option<Filling>>,
    tx: Mutex<Option<SyncSender<(u32, PackWriter)>>>,
}

/// The background half: writes packs handed over by [`Packer`].
pub struct PackWriterThread {
    rx: Receiver<(u32, PackWriter)>,
}

impl PackWriterThread {
    /// Runs until the packer is finished. Every `batch` written packs are handed to `on_batch`
    /// (which records them in the index while the backup goes on); returns the packs written
    /// since the last batch, or the first error.
    pub fn run(
        self,
        backend: &dyn Backend,
        batch: usize,
        on_batch: &mut dyn FnMut(Vec<WrittenPack>) -> Result<()>,
    ) -> Result<Vec<WrittenPack>> {
        let mut done = Vec::new();
        let mut first_error = None;
        for (no, writer) in self.rx {
            if first_error.is_some() {
                continue; // keep draining so senders never block forever
            }
            let (id, bytes, entries) = writer.finish();
            match backend.put(&pack_object_name(&id), &bytes) {
                Ok(()) => done.push(WrittenPack {
                    no,
                    id,
                    size: bytes.len() as u64,
                    entries,
                }),
                Err(e) => first_error = Some(e),
            }
            if first_error.is_none()
                && done.len() >= batch
                && let Err(e) = on_batch(std::mem::take(&mut done))
            {
                first_error = Some(e);
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(done),
        }
    }
}

impl Packer {
    pub fn new(first_no: u32, target: u64) -> (Packer, PackWriterThread) {
        let (tx, rx) = sync_channel(0);
        (
            Packer {
                target: target as usize,
                next_no: Mutex::new(first_no),
                filling: Mutex::new(None),
                tx: Mutex::new(Some(tx)),
            },
            PackWriterThread { rx },
        )
    }

    fn send(&self, no: u32, writer: PackWriter) -> Result<()> {
        let tx = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        match tx.as_ref() {
            Some(tx) => tx
                .send((no, writer))
                .map_err(|_| Error::invalid("pack writer stopped")),
            None => Err(Error::invalid("packer already finished")),
        }
    }

    /// Adds a frame holding `members` (see [`PackWriter::add_frame`]).
    pub fn add_frame(
        &self,
        kind: BlobKind,
        compression: Compression,
        stored: &[u8],
        raw_len: u32,
        members: &[Member],
    ) -> Result<()> {
        let mut slot = self.filling.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            let mut next = self.next_no.lock().unwrap_or_else(|p| p.into_inner());
            *slot = Some(Filling {
                no: *next,
                // Room for the target, one more blob of the largest size and the trailer.
                writer: PackWriter::with_capacity(self.target + (self.target >> 4) + (2 << 20)),
            });
            *next += 1;
        }
        let filling = slot.as_mut().expect("set above");
        filling
            .writer
            .add_frame(kind, compression, stored, raw_len, members);
        if filling.writer.len() >= self.target {
            let full = slot.take().expect("present");
            // Sending under the lock gives back-pressure: nobody fills a new pack until the
            // writer has taken this one.
            self.send(full.no, full.writer)?;
        }
        Ok(())
    }

    /// Hands over the last partial pack and closes the channel.
    pub fn finish(&self) -> Result<()> {
        let last = self
            .filling
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let result = match last {
            Some(f) if !f.writer.is_empty() => self.send(f.no, f.writer),
            _ => Ok(()),
        };
        self.tx.lock().unwrap_or_else(|p| p.into_inner()).take();
        result
    }

    /// Closes the channel without sending (on error paths), so the writer thread ends.
    pub fn abandon(&self) {
        self.tx.lock().unwrap_or_else(|p| p.into_inner()).take();
    }

    pub fn next_pack_no(&self) -> u32 {
        *self.next_no.lock().unwrap_or_else(|p| p.into_inner())
    }
}

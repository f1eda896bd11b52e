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
use crate::storage::{Backend, ObjectWriter};
use std::sync::Mutex;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

/// Packs completed at once on a backend that wants parallel requests: each holds a full pack
/// in memory until it is stored.
const MAX_UPLOADS: usize = 4;

/// A pack that is durably stored.
#[derive(Debug)]
pub struct WrittenPack {
    pub no: u32,
    pub id: ChunkId,
    pub size: u64,
    pub entries: Vec<PackEntry>,
}

/// A pack being filled, its bytes stored as they come.
type Stream<'b> = PackWriter<Box<dyn ObjectWriter + 'b>>;

struct Filling<'b> {
    no: u32,
    writer: Stream<'b>,
}

pub struct Packer<'b> {
    backend: &'b dyn Backend,
    mac_key: Option<[u8; 32]>,
    target: usize,
    next_no: Mutex<u32>,
    filling: Mutex<Option<Filling<'b>>>,
    tx: Mutex<Option<SyncSender<(u32, Stream<'b>)>>>,
}

/// The background half: completes packs handed over by [`Packer`].
pub struct PackWriterThread<'b> {
    rx: Receiver<(u32, Stream<'b>)>,
    uploads: usize,
}

impl PackWriterThread<'_> {
    /// Runs until the packer is finished. Every `batch` written packs are handed to `on_batch`
    /// on a thread of its own (it records them in the index while packs go on being written);
    /// returns the packs written since the last batch, or the first error.
    ///
    /// Up to `uploads` packs are completed at once, each on a thread of its own: on object
    /// storage an upload mostly waits for the network. A pack is handed on only once stored.
    pub fn run(
        self,
        batch: usize,
        on_batch: &mut (dyn FnMut(Vec<WrittenPack>) -> Result<()> + Send),
    ) -> Result<Vec<WrittenPack>> {
        let uploads = self.uploads.max(1);
        let (batches, indexer_rx) = sync_channel::<Vec<WrittenPack>>(1);
        std::thread::scope(|s| {
            let indexer = s.spawn(move || -> Result<()> {
                for packs in indexer_rx {
                    on_batch(packs)?;
                }
                Ok(())
            });
            let mut done = Vec::new();
            let mut first_error = None;
            let mut in_flight = std::collections::VecDeque::new();
            let collect = |written: Result<WrittenPack>,
                           done: &mut Vec<WrittenPack>,
                           first_error: &mut Option<Error>| {
                match written {
                    Ok(w) if first_error.is_none() => done.push(w),
                    Ok(_) => {}
                    Err(e) => {
                        first_error.get_or_insert(e);
                    }
                }
                if first_error.is_none()
                    && done.len() >= batch
                    && batches.send(std::mem::take(done)).is_err()
                {
                    // The indexer stopped; its error is returned below.
                    *first_error = Some(Error::invalid("indexing stopped"));
                }
            };
            for (no, writer) in self.rx {
                if first_error.is_some() {
                    continue; // keep draining so senders never block forever
                }
                if uploads == 1 {
                    collect(complete(no, writer), &mut done, &mut first_error);
                    continue;
                }
                in_flight.push_back(s.spawn(move || complete(no, writer)));
                while in_flight.len() >= uploads
                    && let Some(h) = in_flight.pop_front()
                {
                    collect(joined(h), &mut done, &mut first_error);
                }
            }
            for h in in_flight {
                collect(joined(h), &mut done, &mut first_error);
            }
            drop(batches);
            let indexed = indexer
                .join()
                .unwrap_or_else(|_| Err(Error::invalid("indexing thread panicked")));
            match (indexed, first_error) {
                (Err(e), _) | (Ok(()), Some(e)) => Err(e),
                (Ok(()), None) => Ok(done),
            }
        })
    }
}

/// Writes a full pack's trailer and stores it under its name.
fn complete(no: u32, writer: Stream<'_>) -> Result<WrittenPack> {
    let (id, object, size, entries) = writer.finish()?;
    object.commit(&pack_object_name(&id))?;
    Ok(WrittenPack {
        no,
        id,
        size,
        entries,
    })
}

fn joined(h: std::thread::ScopedJoinHandle<'_, Result<WrittenPack>>) -> Result<WrittenPack> {
    h.join()
        .unwrap_or_else(|_| Err(Error::invalid("pack upload thread panicked")))
}

impl<'b> Packer<'b> {
    pub fn new(
        backend: &'b dyn Backend,
        first_no: u32,
        target: u64,
        mac_key: Option<&[u8; 32]>,
    ) -> (Packer<'b>, PackWriterThread<'b>) {
        let (tx, rx) = sync_channel(0);
        (
            Packer {
                backend,
                mac_key: mac_key.copied(),
                target: target as usize,
                next_no: Mutex::new(first_no),
                filling: Mutex::new(None),
                tx: Mutex::new(Some(tx)),
            },
            PackWriterThread {
                rx,
                uploads: backend.parallelism().map_or(1, |n| n.min(MAX_UPLOADS)),
            },
        )
    }

    fn send(&self, no: u32, writer: Stream<'b>) -> Result<()> {
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
                writer: PackWriter::to_sink(self.backend.create("packs")?)?
                    .with_mac_key(self.mac_key.as_ref()),
            });
            *next += 1;
        }
        let filling = slot.as_mut().expect("set above");
        filling
            .writer
            .add_frame(kind, compression, stored, raw_len, members)?;
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

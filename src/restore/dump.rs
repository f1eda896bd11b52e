//! Entries of a snapshot written to a stream instead of a directory: one file's bytes, or a tar
//! archive of a tree (`strata dump`). Every chunk is checked against its id as it is read, as
//! for a restore.

use super::groups::write_content;
use crate::blobs::BlobReader;
use crate::error::{Error, Result};
use crate::index::IndexReader;
use crate::manifest::{Entry, EntryKind, Manifest};
use crate::repo::Repo;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::sync::mpsc::{Receiver, sync_channel};

/// The entries at or below `path` in `manifest` (the whole snapshot when `path` is empty), in
/// manifest order, as a restore of `--path path` selects them; an error when there are none.
pub fn entries_at<'m>(manifest: &'m Manifest, path: &str) -> Result<Vec<&'m Entry>> {
    let path = path.trim_matches('/');
    let paths: Vec<String> = match path {
        "" => vec![],
        p => vec![p.to_string()],
    };
    let found = super::select(manifest, &paths)?;
    if found.is_empty() {
        return Err(Error::not_found("the snapshot holds nothing"));
    }
    Ok(found)
}

/// Writes the bytes of the file entry `entry` to `out`; returns their number.
pub fn dump_file(repo: &Repo, entry: &Entry, out: &mut dyn Write) -> Result<u64> {
    if entry.kind != EntryKind::File {
        return Err(Error::invalid(format!(
            "{} is not a file (dump writes a directory as a tar archive: --archive tar)",
            entry.path_lossy()
        )));
    }
    let txn = repo.index.read()?;
    let index = IndexReader::new(&txn)?;
    let blobs = BlobReader::new(repo, &index)?;
    let n = write_content(&blobs, entry, &mut |data| {
        out.write_all(data).map_err(|e| Error::io("write", e))
    })?;
    out.flush().map_err(|e| Error::io("write", e))?;
    Ok(n)
}

/// Writes `entries` (files, directories and symbolic links, with their modes, owners and
/// times to the nanosecond in PAX records) to `out` as one tar archive (with GNU records for
/// long names); returns
/// the bytes of file content written.
pub fn dump_tar(repo: &Repo, entries: &[&Entry], out: &mut dyn Write) -> Result<u64> {
    let txn = repo.index.read()?;
    let index = IndexReader::new(&txn)?;
    let blobs = BlobReader::new(repo, &index)?;
    let mut tar = tar::Builder::new(out);
    let mut total = 0;
    for e in entries {
        let path = std::ffi::OsStr::from_bytes(&e.path);
        let mut header = tar::Header::new_gnu();
        header.set_mode(e.mode & 0o7777);
        header.set_uid(e.uid as u64);
        header.set_gid(e.gid as u64);
        let (secs, nanos) = (
            e.mtime_ns.div_euclid(1_000_000_000),
            e.mtime_ns.rem_euclid(1_000_000_000),
        );
        header.set_mtime(secs.max(0) as u64);
        // The time to the nanosecond, in a PAX record (the header holds whole seconds).
        if secs >= 0 {
            let mtime = format!("{secs}.{nanos:09}");
            tar.append_pax_extensions([("mtime", mtime.as_bytes())])
                .map_err(|err| Error::io(format!("archive {}", e.path_lossy()), err))?;
        }
        let written = match e.kind {
            EntryKind::Dir => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_size(0);
                tar.append_data(&mut header, path, std::io::empty())
            }
            EntryKind::Symlink => {
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_size(0);
                let target = e.target.as_deref().unwrap_or_default();
                tar.append_link(&mut header, path, std::ffi::OsStr::from_bytes(target))
            }
            EntryKind::File => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(e.size);
                let (written, read) = std::thread::scope(|s| {
                    let (tx, rx) = sync_channel::<Vec<u8>>(4);
                    let blobs = &blobs;
                    let reader = s.spawn(move || {
                        write_content(blobs, e, &mut |data| {
                            tx.send(data.to_vec())
                                .map_err(|_| Error::invalid("the archive stopped taking data"))
                        })
                    });
                    let mut pull = Pull::new(rx);
                    let written = tar.append_data(&mut header, path, &mut pull);
                    // Whatever the archive did, let the reader finish, then take its result.
                    drop(pull);
                    let read = reader
                        .join()
                        .unwrap_or_else(|_| Err(Error::invalid("reading the file panicked")));
                    (written, read)
                });
                let n = read?;
                if n != e.size {
                    return Err(Error::corrupt(format!(
                        "{}: {n} bytes read, {} recorded",
                        e.path_lossy(),
                        e.size
                    )));
                }
                total += n;
                written
            }
        };
        written.map_err(|err| Error::io(format!("archive {}", e.path_lossy()), err))?;
    }
    tar.into_inner()
        .and_then(|out| out.flush())
        .map_err(|e| Error::io("write", e))?;
    Ok(total)
}

/// The bytes another thread sends, as a reader.
struct Pull {
    rx: Receiver<Vec<u8>>,
    buf: Vec<u8>,
    at: usize,
}

impl Pull {
    fn new(rx: Receiver<Vec<u8>>) -> Pull {
        Pull {
            rx,
            buf: Vec::new(),
            at: 0,
        }
    }
}

impl Read for Pull {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.buf.len() {
            match self.rx.recv() {
                Ok(next) => {
                    self.buf = next;
                    self.at = 0;
                }
                // The sender is done (or failed: its result says which).
                Err(_) => return Ok(0),
            }
        }
        let n = out.len().min(self.buf.len() - self.at);
        out[..n].copy_from_slice(&self.buf[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

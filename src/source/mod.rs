//! Where a backup's bytes come from, and how they are read consistently: the walk of the source
//! paths ([`walk`]), stable capture of files and stores that change while they are read
//! ([`capture`]), SQLite databases, recognised and read as consistent images ([`sqlite`]), and
//! the write-ahead logs of WAL databases, parsed directly ([`wal`]), and
//! named streams: a command's output, standard input, PostgreSQL and Redis dumps ([`streams`]),
//! and PostgreSQL base backups, with the WAL positions they record ([`pgbase`], [`lsn`]).
//! Large files are read past the page cache where it does not hold them ([`uncached`]).

pub mod capture;
pub mod lsn;
pub mod pgbase;
pub mod sqlite;
pub mod streams;
pub(crate) mod uncached;
pub mod wal;
pub mod walk;

use std::fs::File;
use std::os::unix::fs::FileExt;

/// Reads until `buf` is full or the file ends; returns the bytes read.
pub(crate) fn read_full_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read_at(&mut buf[n..], offset + n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

//! What the snapshot records: its manifest, with every entry in path order, the sources and the
//! counts.

use super::BackupOptions;
use super::cache::Stored;
use super::collect::Listing;
use super::ingest::{ReadStream, Written};
use super::pgbase::ReadBase;
use super::sources::Walk;
use crate::manifest::{Content, Entry, EntryKind, Manifest, SnapshotStats, Source, SourceKind};
use crate::source::streams::StreamSource;
use crate::source::walk::WalkItem;
use crate::sys::mtime_ns;
use std::os::unix::fs::MetadataExt;
use std::time::Instant;

/// The manifest of the snapshot: the walked entries (files with the content `listing` gives
/// them, unreadable ones left out), the stores' entries, the streams and the base backups. `started` and
/// `start_ns` are when the backup began.
pub(super) fn manifest(
    opts: &BackupOptions,
    walk: &Walk,
    listing: Listing,
    (streamed, bases): (Vec<ReadStream>, Vec<ReadBase>),
    written: &Written,
    started: Instant,
    start_ns: i64,
) -> Manifest {
    let mut listed: Vec<(&WalkItem, Option<Stored>)> =
        walk.items.iter().zip(listing.contents).collect();
    listed.extend(
        listing
            .store_items
            .iter()
            .map(|(item, c)| (item, c.clone())),
    );
    listed.sort_by(|a, b| a.0.rel.cmp(&b.0.rel));
    let mut stats = SnapshotStats::default();
    let mut entries = entries(listed, &mut stats);
    let mut bytes_read = listing.bytes_read;
    let mut stream_details = Vec::with_capacity(streamed.len());
    for (st, (content, size, details)) in opts.streams.iter().zip(streamed) {
        stream_details.push(details);
        stats.files += 1;
        stats.bytes += size;
        bytes_read += size;
        entries.push(stream_entry(st, content, size, start_ns));
    }
    let mut base_details = Vec::with_capacity(bases.len());
    for base in bases {
        for e in &base.entries {
            match e.kind {
                EntryKind::File => stats.files += 1,
                EntryKind::Dir => stats.dirs += 1,
                EntryKind::Symlink => stats.symlinks += 1,
            }
        }
        stats.bytes += base.bytes;
        bytes_read += base.bytes;
        entries.extend(base.entries);
        base_details.push(base.details);
    }
    stats.bytes_read = bytes_read;
    stats.new_chunks = written.chunks;
    stats.new_raw_bytes = written.raw_bytes;
    stats.new_stored_bytes = written.stored_bytes;
    stats.duration_ms = started.elapsed().as_millis() as u64;
    Manifest {
        time_ns: start_ns,
        hostname: crate::sys::hostname(),
        name: opts.name.clone(),
        kind: opts.kind.clone(),
        tags: opts.tags.clone(),
        sources: sources(walk, opts, stream_details, base_details),
        entries,
        stats,
        errors: listing.errors,
        captures: listing.captures,
    }
}

/// The entries of the walked items, counted in `stats`.
fn entries(listed: Vec<(&WalkItem, Option<Stored>)>, stats: &mut SnapshotStats) -> Vec<Entry> {
    let mut entries = Vec::with_capacity(listed.len());
    for (item, content) in listed {
        let stored = match item.kind {
            EntryKind::File => match content {
                Some(c) => c,
                None => continue, // unreadable or vanished: listed in errors or warnings
            },
            _ => Stored {
                content: Content::Empty,
                size: 0,
                page_size: 0,
                through_sqlite: false,
            },
        };
        let size = stored.size;
        match item.kind {
            EntryKind::File => {
                stats.files += 1;
                stats.bytes += size;
            }
            EntryKind::Dir => stats.dirs += 1,
            EntryKind::Symlink => stats.symlinks += 1,
        }
        entries.push(Entry {
            path: item.rel.clone(),
            kind: item.kind,
            mode: item.meta.mode(),
            uid: item.meta.uid(),
            gid: item.meta.gid(),
            mtime_ns: mtime_ns(&item.meta),
            size,
            content: stored.content,
            target: item.target.clone(),
            page_size: stored.page_size,
            through_sqlite: stored.through_sqlite,
        });
    }
    entries
}

/// The entry of a stream: a file of the backup's user, as of the start of the backup.
fn stream_entry(st: &StreamSource, content: Content, size: u64, start_ns: i64) -> Entry {
    Entry {
        path: st.name.as_bytes().to_vec(),
        kind: EntryKind::File,
        mode: libc::S_IFREG | 0o600,
        // SAFETY: geteuid and getegid have no preconditions.
        uid: unsafe { libc::geteuid() },
        gid: unsafe { libc::getegid() },
        mtime_ns: start_ns,
        size,
        content,
        target: None,
        page_size: 0,
        through_sqlite: false,
    }
}

/// The sources: each walked path (a database named as such, or a path), then each stream with
/// the details its first bytes gave, then each base backup with what it said of itself.
fn sources(
    walk: &Walk,
    opts: &BackupOptions,
    stream_details: Vec<Vec<(String, String)>>,
    base_details: Vec<Vec<(String, String)>>,
) -> Vec<Source> {
    walk.names
        .iter()
        .map(|(name, path)| Source {
            name: name.clone(),
            path: path.display().to_string(),
            kind: if walk.databases.contains(path) {
                SourceKind::Sqlite
            } else {
                SourceKind::Path
            },
            details: vec![],
        })
        .chain(
            opts.streams
                .iter()
                .zip(stream_details)
                .map(|(st, details)| {
                    let (kind, path) = st.describe();
                    Source {
                        name: st.name.clone(),
                        path,
                        kind,
                        details,
                    }
                }),
        )
        .chain(
            opts.pg_bases
                .iter()
                .zip(base_details)
                .map(|(b, details)| Source {
                    name: b.name.clone(),
                    path: crate::source::streams::redact_conninfo(&b.conn),
                    kind: SourceKind::PgBase,
                    details,
                }),
        )
        .collect()
}

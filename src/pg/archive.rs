//! The WAL archive: PostgreSQL's `archive_command` and `restore_command` contract on top of
//! ordinary snapshots.
//!
//! Each archived file (a WAL segment, a timeline `.history` file, a `.backup` label or a
//! `.partial` segment) is one snapshot of kind [`WAL_KIND`], named after the file, holding one
//! stream entry of that name. It is committed like any snapshot (packs fsynced, then the index,
//! then the manifest file), so a kill at any moment leaves either no such snapshot or a whole
//! one, and gc, verify, copy and repair treat it as they treat every other. Its chunks are cut,
//! deduplicated and compressed as any stream's: the zeros that fill the rest of a segment after
//! `pg_switch_wal()` or `archive_timeout` repeat one chunk, stored once per repository.
//!
//! The contract, from PostgreSQL's documentation ("Setting Up WAL Archiving"):
//! - archiving succeeds only once the file is durably stored;
//! - archiving a name again with the same bytes succeeds (PostgreSQL retries after a crash
//!   between our success and its own record of it), with different bytes fails and changes
//!   nothing;
//! - restoring a name the archive does not have fails (PostgreSQL asks for files that may not
//!   exist, such as the next timeline's history file), and a restore never leaves a partial
//!   file where PostgreSQL will read it.

use crate::backup::{BackupOptions, backup};
use crate::error::{Error, IoContext, Result};
use crate::id::SnapshotId;
use crate::index::META_PG_WAL_COMPLETE;
use crate::manifest::{Entry, EntryKind, Manifest};
use crate::repo::Repo;
use crate::source::streams::{StreamFrom, StreamSource};
use std::io::{Read, Write};
use std::path::Path;

/// The kind of the snapshots that hold archived WAL files.
pub use crate::snapshots::PG_WAL as WAL_KIND;

/// What [`archive`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Archived {
    /// The file is now in the archive, as this snapshot.
    Stored(SnapshotId),
    /// The archive already held these same bytes under this name, as this snapshot.
    AlreadyHad(SnapshotId),
    /// The repository was held by another process: the file is in the spool (see
    /// [`super::spool`]), stored as a snapshot by the next archiver that gets the lock.
    Spooled,
    /// The spool already held these same bytes under this name.
    AlreadySpooled,
}

/// Checks that `name` is a file name PostgreSQL archives: a segment (24 hex digits), a
/// timeline history file (`TTTTTTTT.history`), a backup label (`SEGMENT.OOOOOOOO.backup`) or a
/// partial segment (`SEGMENT.partial`).
pub fn check_name(name: &str) -> Result<()> {
    let hex = |s: &str, n: usize| {
        s.len() == n && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'A'..=b'F'))
    };
    let ok = match name.split('.').collect::<Vec<_>>().as_slice() {
        [seg] => hex(seg, 24),
        [tli, "history"] => hex(tli, 8),
        [seg, "partial"] => hex(seg, 24),
        [seg, offset, "backup"] => hex(seg, 24) && hex(offset, 8),
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "{name:?} is not a WAL file name (expected 24 hex digits such as \
             000000010000000000000001, or TTTTTTTT.history, SEGMENT.partial, \
             SEGMENT.OOOOOOOO.backup); pass PostgreSQL's %f"
        )))
    }
}

/// The archived copy of `name`, if the archive holds one: its snapshot and manifest.
///
/// The index's table of archived files ([`crate::index::PG_WAL`]) names it in one lookup when
/// the table is complete; otherwise (an index rebuilt by `repair`) every manifest is read, and
/// the newest `pg-wal` snapshot of that name is the one.
pub fn find(repo: &Repo, name: &str) -> Result<Option<(SnapshotId, Manifest)>> {
    let txn = repo.index.read()?;
    if crate::index::meta(&txn, META_PG_WAL_COMPLETE)? == Some(1) {
        let Some(id) = crate::index::pg_wal(&txn, name)? else {
            return Ok(None);
        };
        // A deleted snapshot leaves its row: the name is not archived any more.
        let Some(bytes) = crate::index::snapshot_manifest(&txn, &id)? else {
            return Ok(None);
        };
        let m = Manifest::decode(&bytes, Some(&id), repo.keys())?;
        if m.kind == WAL_KIND && m.name.as_deref() == Some(name) {
            return Ok(Some((id, m)));
        }
        return Err(Error::corrupt(format!(
            "the index's table of archived WAL files names snapshot {} for {name}, which is \
             not its archived copy; run `strata repair index`",
            id.short()
        )));
    }
    Ok(scan(repo, &txn)?.remove(name))
}

/// The newest WAL segment in the archive (the highest timeline, then the highest segment: the
/// order of their names), its snapshot and manifest (whose time is when it was archived).
///
/// With the index's table of archived files complete, the names are read from it, newest first,
/// and only the first that is still archived is decoded: this is cheap enough to ask every few
/// seconds of an archive of many thousand files. Otherwise every manifest is read.
pub fn newest_segment(repo: &Repo) -> Result<Option<(String, SnapshotId, Manifest)>> {
    let is_segment = |n: &str| n.len() == 24 && check_name(n).is_ok();
    let txn = repo.index.read()?;
    if crate::index::meta(&txn, META_PG_WAL_COMPLETE)? == Some(1) {
        let mut found = None;
        crate::index::pg_wal_newest_first(&txn, |name, id| {
            if !is_segment(name) {
                return Ok(true);
            }
            // A deleted snapshot leaves its row: the next older name may still be there.
            let Some(bytes) = crate::index::snapshot_manifest(&txn, &id)? else {
                return Ok(true);
            };
            let m = Manifest::decode(&bytes, Some(&id), repo.keys())?;
            if m.kind != WAL_KIND || m.name.as_deref() != Some(name) {
                return Err(Error::corrupt(format!(
                    "the index's table of archived WAL files names snapshot {} for {name}, \
                     which is not its archived copy; run `strata repair index`",
                    id.short()
                )));
            }
            found = Some((name.to_string(), id, m));
            Ok(false)
        })?;
        return Ok(found);
    }
    Ok(scan(repo, &txn)?
        .into_iter()
        .filter(|(n, _)| is_segment(n))
        .max_by(|a, b| a.0.cmp(&b.0))
        .map(|(n, (id, m))| (n, id, m)))
}

/// Every archived file's newest snapshot, by name, from all the manifests.
fn scan(
    repo: &Repo,
    txn: &redb::ReadTransaction,
) -> Result<std::collections::HashMap<String, (SnapshotId, Manifest)>> {
    let mut found: std::collections::HashMap<String, (SnapshotId, Manifest)> =
        std::collections::HashMap::new();
    for (id, bytes) in crate::index::snapshot_manifests(txn)? {
        let m = Manifest::decode(&bytes, Some(&id), repo.keys())?;
        let Some(name) = m.name.clone().filter(|_| m.kind == WAL_KIND) else {
            continue;
        };
        if found.get(&name).is_none_or(|(_, f)| m.time_ns > f.time_ns) {
            found.insert(name, (id, m));
        }
    }
    Ok(found)
}

/// Under the writer's lock: fills the index's table of archived files from the manifests and
/// marks it complete, so that later lookups take one read (an index rebuilt by `repair` has
/// none). The scan and the mark commit together: nothing can add a snapshot in between.
fn complete_catalogue(repo: &Repo) -> Result<()> {
    let found = {
        let txn = repo.index.read()?;
        if crate::index::meta(&txn, META_PG_WAL_COMPLETE)? == Some(1) {
            return Ok(());
        }
        scan(repo, &txn)?
    };
    repo.ensure_current()?;
    let txn = repo.index.write()?;
    {
        let mut table = txn.open_table(crate::index::PG_WAL)?;
        for (name, (id, _)) in &found {
            table.insert(name.as_str(), id.as_bytes())?;
        }
        txn.open_table(crate::index::META)?
            .insert(META_PG_WAL_COMPLETE, 1)?;
    }
    txn.commit()?;
    Ok(())
}

/// The one file entry of an archived WAL file's snapshot.
fn entry_of<'m>(id: &SnapshotId, m: &'m Manifest) -> Result<&'m Entry> {
    match m.entries.as_slice() {
        [e] if e.kind == EntryKind::File => Ok(e),
        _ => Err(Error::corrupt(format!(
            "snapshot {} of kind {WAL_KIND} holds {} entries, not one file",
            id.short(),
            m.entries.len()
        ))),
    }
}

/// The bytes of the small archived (or spooled) file `name` (a timeline history file), or
/// `None` when the archive does not hold it. Refuses a file over `max` bytes: the size comes from a manifest,
/// which is not trusted to be what it claims.
pub fn read_small(repo: &Repo, name: &str, max: u64) -> Result<Option<Vec<u8>>> {
    let Some((id, m)) = find(repo, name)? else {
        // Not stored yet, perhaps spooled.
        return match super::spool::get(repo, name)? {
            Some(b) if b.len() as u64 > max => Err(Error::corrupt(format!(
                "spooled {name} is {} bytes, more than such a file ever is ({max})",
                b.len()
            ))),
            found => Ok(found),
        };
    };
    let entry = entry_of(&id, &m)?;
    if entry.size > max {
        return Err(Error::corrupt(format!(
            "archived {name} (snapshot {}) is {} bytes, more than such a file ever is ({max})",
            id.short(),
            entry.size
        )));
    }
    let mut out = Vec::with_capacity(entry.size as usize);
    crate::restore::dump::dump_file(repo, entry, &mut out)?;
    Ok(Some(out))
}

/// Stores the file at `path` in the archive as `name` (`archive_command`'s `%p` and `%f`).
/// `repo` must be open for writing: its lock keeps another archiver from storing the same name
/// between the check and the commit.
pub fn archive(repo: &Repo, path: &Path, name: &str) -> Result<Archived> {
    check_name(name)?;
    let size = std::fs::metadata(path).ctx("read", path)?.len();
    complete_catalogue(repo)?;
    drain_spool(repo)?;
    let file = std::fs::File::open(path).ctx("open", path)?;
    if let Some(had) = archived_copy(repo, name, std::io::BufReader::new(file), size, path)? {
        return Ok(had);
    }
    #[cfg(feature = "testing")]
    pause_for_tests();
    let id = store(repo, name, StreamFrom::File(path.to_path_buf()))?;
    Ok(Archived::Stored(id))
}

/// Commits the WAL file `name` from `from` as its snapshot.
fn store(repo: &Repo, name: &str, from: StreamFrom) -> Result<SnapshotId> {
    let mut opts = BackupOptions::new(vec![]);
    opts.kind = WAL_KIND.into();
    opts.name = Some(name.to_string());
    opts.streams = vec![StreamSource {
        name: name.to_string(),
        from,
    }];
    Ok(backup(repo, &opts)?.id)
}

/// The message for a name already archived (or spooled) with other bytes.
fn conflict(name: &str, held: &str, path: &Path, size: u64) -> Error {
    Error::invalid(format!(
        "{name} is already archived ({held}) with different contents than {} ({size} bytes): \
         nothing was changed. Two servers may be archiving into one repository, or this \
         server's WAL diverged from the archive's; give each server its own repository",
        path.display()
    ))
}

/// Stores every spooled file as its snapshot, oldest first, each removed from the spool once
/// committed; returns the names stored. A spooled name the archive already holds with the same
/// bytes only leaves the spool; with other bytes it stays there and is reported.
pub fn drain_spool(repo: &Repo) -> Result<Vec<String>> {
    let mut stored = Vec::new();
    for name in super::spool::names(repo)? {
        let Some(bytes) = super::spool::get(repo, &name)? else {
            continue;
        };
        if let Some((id, m)) = find(repo, &name)? {
            let entry = entry_of(&id, &m)?;
            let size = bytes.len() as u64;
            if !same_content(repo, entry, &bytes[..], size, Path::new(&name))? {
                return Err(Error::invalid(format!(
                    "spooled {name} differs from its archived copy (snapshot {}): both kept; \
                     two servers may be archiving into one repository",
                    id.short()
                )));
            }
        } else {
            let what = format!("{name}, spooled while the repository was held");
            store(repo, &name, StreamFrom::Bytes(bytes, what))?;
            stored.push(name.clone());
        }
        super::spool::remove(repo, &name)?;
    }
    Ok(stored)
}

/// Spools the file at `path` as `name` (see [`super::spool`]): for when the repository is held
/// by another process for longer than the archiver can wait. `repo` may be open for reading
/// only. Refuses, changing nothing, a name the archive or the spool holds with other bytes.
pub fn spool(repo: &Repo, path: &Path, name: &str) -> Result<Archived> {
    check_name(name)?;
    let bytes = std::fs::read(path).ctx("read", path)?;
    let size = bytes.len() as u64;
    if let Some(had) = archived_copy(repo, name, &bytes[..], size, path)? {
        return Ok(had);
    }
    if let Some(held) = super::spool::get(repo, name)? {
        return match held == bytes {
            true => Ok(Archived::AlreadySpooled),
            false => Err(conflict(name, "in the spool", path, size)),
        };
    }
    super::spool::put(repo, name, &bytes)?;
    Ok(Archived::Spooled)
}

/// What the archive holds under `name` against the `size` bytes of `input` (read from
/// `path`): `None` when it holds nothing, `AlreadyHad` when the same bytes, a conflict error
/// (nothing changed) when others.
fn archived_copy(
    repo: &Repo,
    name: &str,
    input: impl Read,
    size: u64,
    path: &Path,
) -> Result<Option<Archived>> {
    let Some((id, m)) = find(repo, name)? else {
        return Ok(None);
    };
    let entry = entry_of(&id, &m)?;
    match same_content(repo, entry, input, size, path)? {
        true => Ok(Some(Archived::AlreadyHad(id))),
        false => Err(conflict(
            name,
            &format!("snapshot {}, {} bytes", id.short(), entry.size),
            path,
            size,
        )),
    }
}

/// Whether the archived `entry` holds exactly the `size` bytes of `input` (read from `path`).
fn same_content(
    repo: &Repo,
    entry: &Entry,
    input: impl Read,
    size: u64,
    path: &Path,
) -> Result<bool> {
    if entry.size != size {
        return Ok(false);
    }
    let mut cmp = Compare {
        file: input,
        buf: Vec::new(),
        same: true,
    };
    match crate::restore::dump::dump_file(repo, entry, &mut cmp) {
        Ok(_) => {}
        // A difference stops the comparison early.
        Err(_) if !cmp.same => return Ok(false),
        Err(e) => return Err(e),
    }
    // Nothing may follow the archived bytes.
    let mut rest = [0u8; 1];
    let more = cmp.file.read(&mut rest).ctx("read", path)?;
    Ok(cmp.same && more == 0)
}

/// A writer that compares what is written to it with a file's bytes, and refuses (an error)
/// at the first difference.
struct Compare<R> {
    file: R,
    buf: Vec<u8>,
    same: bool,
}

impl<R: Read> Write for Compare<R> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.resize(data.len(), 0);
        self.file
            .read_exact(&mut self.buf)
            .inspect_err(|_| self.same = false)?;
        if self.buf != data {
            self.same = false;
            return Err(std::io::Error::other("contents differ"));
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Writes the archived file `name` to `dest` (`restore_command`'s `%f` and `%p`): into a new
/// file beside it, fsynced, renamed into place, and the directory fsynced, so `dest` is either
/// absent or whole. Fails with a not-found error (and writes nothing) when the archive does not
/// hold `name`.
pub fn restore(repo: &Repo, name: &str, dest: &Path) -> Result<u64> {
    check_name(name)?;
    let held = match find(repo, name)? {
        Some(found) => Held::Archived(Box::new(found)),
        None => match super::spool::get(repo, name)? {
            Some(bytes) => Held::Spooled(bytes),
            None => {
                return Err(Error::not_found(format!(
                    "{name} is not in the WAL archive"
                )));
            }
        },
    };
    let dir = match dest.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let file_name = dest
        .file_name()
        .ok_or_else(|| Error::invalid(format!("{}: not a file path", dest.display())))?;
    let tmp = dir.join(format!(
        ".{}.strata-{}.tmp",
        file_name.to_string_lossy(),
        std::process::id()
    ));
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .ctx("create", &tmp)?;
        let n = match &held {
            Held::Archived(found) => {
                let (id, m) = &**found;
                let entry = entry_of(id, m)?;
                let n = crate::restore::dump::dump_file(repo, entry, &mut f)?;
                if n != entry.size {
                    return Err(Error::corrupt(format!(
                        "snapshot {}: {name} gave {n} bytes, its entry says {}",
                        id.short(),
                        entry.size
                    )));
                }
                n
            }
            Held::Spooled(bytes) => {
                f.write_all(bytes).ctx("write", &tmp)?;
                bytes.len() as u64
            }
        };
        f.sync_all().ctx("fsync", &tmp)?;
        std::fs::rename(&tmp, dest).ctx("rename into place", dest)?;
        Ok(n)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    let n = written?;
    crate::sys::sync_dir(dir)?;
    Ok(n)
}

/// Where a WAL file to restore is.
enum Held {
    Archived(Box<(SnapshotId, Manifest)>),
    Spooled(Vec<u8>),
}

/// Tests kill an archiver mid-way: `STRATA_TEST_ARCHIVE_PAUSE_MS` holds it (lock taken,
/// nothing written yet) for that long.
#[cfg(feature = "testing")]
fn pause_for_tests() {
    if let Some(ms) = std::env::var("STRATA_TEST_ARCHIVE_PAUSE_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_postgresql_archives_are_accepted_and_others_refused() {
        for ok in [
            "000000010000000000000001",
            "00000002.history",
            "000000010000000000000003.partial",
            "000000010000000000000002.00000028.backup",
        ] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "00000001000000000000001",
            "000000010000000000000001x",
            "00000001000000000000000a",
            "../000000010000000000000001",
            "0000000.history",
            "000000010000000000000001.history",
            "000000010000000000000002.backup",
            "RECOVERYXLOG",
        ] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }
}

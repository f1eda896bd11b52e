//! PostgreSQL base backups: `pg_basebackup`'s tar stream read entry by entry, each file cut at
//! PostgreSQL's pages and stored as a file of the snapshot under the source's name (see
//! [`crate::source::pgbase`]).

use super::cdc::{ReadContext, store_whole};
use super::writer::Shared;
use crate::chunker::CutMode;
use crate::error::{Error, Result};
use crate::manifest::{Content, Entry, EntryKind};
use crate::source::pgbase::{BaseFacts, PAGE, PgBaseSource, kept};
use std::io::Read;
use std::path::PathBuf;

/// A base backup read to its end: its entries (paths under the source's name, sorted), the
/// bytes of its files, and its source details.
pub(super) struct ReadBase {
    pub(super) entries: Vec<Entry>,
    pub(super) bytes: u64,
    pub(super) details: Vec<(String, String)>,
}

/// The largest file kept in memory to learn what the backup is (`backup_manifest` of a large
/// cluster runs to megabytes).
const KEEP_LIMIT: u64 = 256 << 20;

/// Runs `pg_basebackup` for `src` and stores what it streams.
pub(super) fn read_pg_base(shared: &Shared, src: &PgBaseSource) -> Result<ReadBase> {
    let described = crate::source::streams::redact_conninfo(&src.conn);
    let fail =
        |what: String| Error::invalid(format!("pg-base source {} ({described}): {what}", src.name));
    let mut child = src
        .command()
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| {
            fail(format!(
                "cannot run pg_basebackup (install PostgreSQL's client): {e}"
            ))
        })?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut stderr = child.stderr.take().expect("stderr is piped");
    // Its messages are read beside the stream, so that it never blocks on a full pipe.
    let messages = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let read = read_tar(shared, src, stdout);
    if read.is_err() {
        let _ = child.kill();
    }
    let status = child.wait();
    let text = messages.join().unwrap_or_default();
    let failure = || {
        let last: Vec<&str> = text.lines().rev().take(3).collect();
        last.into_iter().rev().collect::<Vec<_>>().join(" / ")
    };
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => return Err(fail(format!("pg_basebackup failed ({s}): {}", failure()))),
        Err(e) => return Err(fail(format!("waiting for pg_basebackup: {e}"))),
    }
    let (mut entries, bytes, mut facts) = read.map_err(|e| fail(e.to_string()))?;
    facts.note_stderr(&text);
    let info = facts
        .info(super::now_ns())
        .map_err(|e| fail(e.to_string()))?;
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    entries.dedup_by(|later, earlier| later.path == earlier.path);
    Ok(ReadBase {
        entries,
        bytes,
        details: info.details(),
    })
}

/// Reads the tar stream: one entry per file, directory and link, under the source's name.
fn read_tar(
    shared: &Shared,
    src: &PgBaseSource,
    stream: impl Read,
) -> Result<(Vec<Entry>, u64, BaseFacts)> {
    let mut archive = tar::Archive::new(stream);
    let mut facts = BaseFacts::default();
    let mut bytes = 0u64;
    // The directory itself, as PostgreSQL wants a data directory: its owner's only.
    let mut entries = vec![dir_entry(
        src.name.as_bytes().to_vec(),
        0o700,
        super::now_ns(),
    )];
    let broken =
        |e: std::io::Error| Error::invalid(format!("reading pg_basebackup's tar stream: {e}"));
    for item in archive.entries().map_err(broken)? {
        let mut item = item.map_err(broken)?;
        let header = item.header().clone();
        let raw = item.path_bytes().into_owned();
        let Some(rel) = clean_path(&raw) else {
            return Err(Error::invalid(format!(
                "pg_basebackup's tar stream holds the path {:?}, outside the data directory",
                String::from_utf8_lossy(&raw)
            )));
        };
        let mut path = src.name.as_bytes().to_vec();
        path.push(b'/');
        path.extend_from_slice(rel.as_bytes());
        let mode = header.mode().map_err(broken)? & 0o7777;
        let mtime_ns = (header.mtime().map_err(broken)? as i64).saturating_mul(1_000_000_000);
        let (uid, gid) = (
            header.uid().map_err(broken)? as u32,
            header.gid().map_err(broken)? as u32,
        );
        let entry = match header.entry_type() {
            tar::EntryType::Directory => Entry {
                uid,
                gid,
                ..dir_entry(path, mode, mtime_ns)
            },
            tar::EntryType::Symlink => {
                let target = item
                    .link_name_bytes()
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                Entry {
                    path,
                    kind: EntryKind::Symlink,
                    mode: libc::S_IFLNK | 0o777,
                    uid,
                    gid,
                    mtime_ns,
                    size: 0,
                    content: Content::Empty,
                    target: Some(target),
                    page_size: 0,
                    through_sqlite: false,
                }
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let size = header.size().map_err(broken)?;
                let keep = kept(&rel) && size <= KEEP_LIMIT;
                let mut held = Vec::new();
                let content = {
                    let mut tee = Tee {
                        inner: &mut item,
                        copy: keep.then_some(&mut held),
                    };
                    store(shared, &mut tee, size, &rel)?
                };
                facts.note(&rel, size, keep.then_some(held));
                bytes += size;
                Entry {
                    path,
                    kind: EntryKind::File,
                    mode: libc::S_IFREG | mode,
                    uid,
                    gid,
                    mtime_ns,
                    size,
                    content,
                    target: None,
                    page_size: 0,
                    through_sqlite: false,
                }
            }
            other => {
                return Err(Error::invalid(format!(
                    "pg_basebackup's tar stream holds {rel:?} of a kind strata does not store \
                     ({other:?})"
                )));
            }
        };
        entries.push(entry);
    }
    Ok((entries, bytes, facts))
}

/// Stores one file of the stream, cut at pages.
fn store(shared: &Shared, input: &mut dyn Read, size: u64, rel: &str) -> Result<Content> {
    // A small file needs no large window.
    let window = (size as usize).clamp(PAGE as usize, crate::chunker::WINDOW);
    let (content, read) = store_whole(shared, input, CutMode::Fixed(PAGE), window)
        .ctx("read from pg_basebackup", &PathBuf::from(rel))?;
    if read != size {
        return Err(Error::invalid(format!(
            "{rel}: the tar stream gave {read} bytes of {size}"
        )));
    }
    Ok(content)
}

/// A directory entry of the backup's user.
fn dir_entry(path: Vec<u8>, mode: u32, mtime_ns: i64) -> Entry {
    Entry {
        path,
        kind: EntryKind::Dir,
        mode: libc::S_IFDIR | mode,
        // SAFETY: geteuid and getegid have no preconditions.
        uid: unsafe { libc::geteuid() },
        gid: unsafe { libc::getegid() },
        mtime_ns,
        size: 0,
        content: Content::Empty,
        target: None,
        page_size: 0,
        through_sqlite: false,
    }
}

/// A tar path made relative and plain: no leading `./` or `/`, no trailing `/`, no `.` or `..`
/// components, valid UTF-8 (PostgreSQL names its files in ASCII). `None` for anything else.
fn clean_path(raw: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(raw).ok()?;
    let parts: Vec<&str> = text
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    if parts.is_empty() || parts.contains(&"..") {
        return None;
    }
    Some(parts.join("/"))
}

/// Passes reads through, keeping a copy when asked.
struct Tee<'a, R> {
    inner: R,
    copy: Option<&'a mut Vec<u8>>,
}

impl<R: Read> Read for Tee<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(c) = self.copy.as_mut() {
            c.extend_from_slice(&buf[..n]);
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::clean_path;

    #[test]
    fn tar_paths_stay_inside() {
        assert_eq!(
            clean_path(b"./pg_wal/archive_status/").as_deref(),
            Some("pg_wal/archive_status")
        );
        assert_eq!(clean_path(b"base/1/1259").as_deref(), Some("base/1/1259"));
        for bad in [&b"../etc/passwd"[..], b"a/../../b", b"./", b"", b"\xff"] {
            assert_eq!(clean_path(bad), None, "{bad:?}");
        }
    }
}

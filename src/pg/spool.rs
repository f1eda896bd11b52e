//! The archive's spool: WAL files handed over while another strata process (a base backup, a
//! gc) holds the repository for longer than PostgreSQL can wait.
//!
//! `archive_command` runs once per WAL file, one at a time: if it waited for a backup of a large
//! database to finish, the archiver would fall that many segments behind, and the server's
//! `pg_wal` would grow meanwhile. So when the lock's holder is a long one, `pg archive-wal`
//! writes the file to `spool/pg-wal/NAME` in the repository instead (through the repository's
//! storage: written beside, fsynced, renamed, the directory fsynced; sealed with the
//! repository's key when it is encrypted), and succeeds: the file is durably in the
//! repository. The next `pg archive-wal` that gets the lock stores every spooled file as its
//! `pg-wal` snapshot, oldest first, and removes it from the spool only once that snapshot is
//! committed. Until then `pg restore-wal` reads it from the spool.
//!
//! A spooled file is framed (magic `STRASPOL`, version 1, length, BLAKE3) around its name, a
//! zero byte and its zstd-compressed bytes (sealed as [`Object::Spool`] in an encrypted
//! repository): a file renamed to another name, damaged or cut short is refused.

use crate::codec::frame;
use crate::crypto::Object;
use crate::error::{Error, Result};
use crate::repo::Repo;
use std::io::Read;

const PREFIX: &str = "spool/pg-wal/";
const MAGIC: &[u8; 8] = b"STRASPOL";
const VERSION: u32 = 1;
/// The largest WAL file PostgreSQL writes (a segment of the largest size).
const MAX_FILE: u64 = 1 << 30;

/// Spools `bytes` as the WAL file `name` (checked by the caller).
pub fn put(repo: &Repo, name: &str, bytes: &[u8]) -> Result<()> {
    let compressed = zstd::bulk::compress(bytes, 1).map_err(|e| Error::io("compress", e))?;
    let mut plain = Vec::with_capacity(name.len() + 1 + compressed.len());
    plain.extend_from_slice(name.as_bytes());
    plain.push(0);
    plain.extend_from_slice(&compressed);
    let payload = match repo.keys() {
        Some(k) => k.seal(Object::Spool, &plain)?,
        None => plain,
    };
    repo.backend.put(
        &format!("{PREFIX}{name}"),
        &frame::wrap(MAGIC, VERSION, &payload),
    )
}

/// The spooled WAL file `name`'s bytes, if the spool holds it.
pub fn get(repo: &Repo, name: &str) -> Result<Option<Vec<u8>>> {
    let object = format!("{PREFIX}{name}");
    if !repo.backend.exists(&object)? {
        return Ok(None);
    }
    let framed = match repo.backend.get(&object) {
        Ok(f) => f,
        // Taken into the archive (and removed) since it was seen.
        Err(e) if e.kind() == crate::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    decode(repo, name, &framed).map(Some)
}

/// The names of the spooled files, sorted (oldest segment first).
pub fn names(repo: &Repo) -> Result<Vec<String>> {
    let mut names: Vec<String> = repo
        .backend
        .list(PREFIX)?
        .into_iter()
        .filter_map(|n| n.rsplit('/').next().map(str::to_string))
        // Anything else there (a temporary file of a write cut short) is not a spooled file.
        .filter(|n| super::archive::check_name(n).is_ok())
        .collect();
    names.sort();
    Ok(names)
}

/// Removes `name` from the spool (once the archive holds it).
pub fn remove(repo: &Repo, name: &str) -> Result<()> {
    repo.backend.delete(&format!("{PREFIX}{name}"))
}

fn decode(repo: &Repo, name: &str, framed: &[u8]) -> Result<Vec<u8>> {
    let what = format!("spooled WAL file {name}");
    let (_, payload) = frame::unwrap(MAGIC, VERSION, framed, &what)?;
    let opened;
    let plain = match repo.keys() {
        Some(k) => {
            opened = k.open(Object::Spool, payload, &what)?;
            &opened[..]
        }
        None => payload,
    };
    let at = plain
        .iter()
        .position(|&b| b == 0)
        .ok_or_else(|| Error::corrupt(format!("{what}: no name")))?;
    if &plain[..at] != name.as_bytes() {
        return Err(Error::corrupt(format!(
            "{what}: holds {:?}, not this file",
            String::from_utf8_lossy(&plain[..at])
        )));
    }
    let mut out = Vec::new();
    zstd::stream::read::Decoder::new(&plain[at + 1..])
        .map_err(|e| Error::corrupt(format!("{what}: {e}")))?
        .take(MAX_FILE + 1)
        .read_to_end(&mut out)
        .map_err(|e| Error::corrupt(format!("{what}: cannot decompress: {e}")))?;
    if out.len() as u64 > MAX_FILE {
        return Err(Error::corrupt(format!("{what}: larger than any WAL file")));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spooled_files_come_back_and_damage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let config = crate::layout::Config::new(Default::default(), 1).unwrap();
        let repo = crate::repo::Repo::init(&dir.path().join("repo"), config).unwrap();
        let name = "000000010000000000000003";
        let bytes: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        put(&repo, name, &bytes).unwrap();
        assert_eq!(get(&repo, name).unwrap().unwrap(), bytes);
        assert_eq!(names(&repo).unwrap(), vec![name.to_string()]);
        assert!(get(&repo, "000000010000000000000004").unwrap().is_none());
        // Renamed: refused.
        let path = dir.path().join("repo").join(PREFIX).join(name);
        let other = dir
            .path()
            .join("repo")
            .join(PREFIX)
            .join("000000010000000000000004");
        std::fs::copy(&path, &other).unwrap();
        let e = get(&repo, "000000010000000000000004")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not this file"), "{e}");
        // Damaged: refused.
        let mut framed = std::fs::read(&path).unwrap();
        let mid = framed.len() / 2;
        framed[mid] ^= 1;
        std::fs::write(&path, &framed).unwrap();
        assert!(get(&repo, name).is_err());
        remove(&repo, name).unwrap();
        remove(&repo, "000000010000000000000004").unwrap();
        assert!(names(&repo).unwrap().is_empty());
    }
}

//! Chunk digests: which chunks of a large file changed since its last backup, without BLAKE3
//! (or, for a file cut by content, FastCDC) over the ones that did not.
//!
//! After a file of at least 4 MiB is stored, the 128-bit XXH3 digests (seeded at random per
//! file) of its chunks (pages of a page-aligned file) are kept beside the index in
//! `page-sums/<BLAKE3 of the file key, hex>`, together with the root id of the content they
//! describe. The next backup of the file, if its cached stamp still names that content, digests
//! what it reads: a page whose digest is the one recorded for its place keeps the previous
//! version's blob id, and a content-defined chunk the cutter provably cuts again (see
//! `backup::cdc::CdcSkip`) is taken as is. Only the rest is cut, hashed with BLAKE3 and, if new,
//! stored. XXH3 runs at memory speed where BLAKE3 of 4 KiB pages does about 2 GiB/s per core
//! here, and an hourly backup of a large database is mostly that hashing.
//!
//! The records are a local cache, like the file cache: a missing, damaged or outdated record
//! only means every chunk is hashed. An encrypted repository seals each record (the digests are
//! of plaintext); an unencrypted one ends it with a checksum. Layout: docs/FORMAT.md.

use crate::error::Result;
use crate::id::ChunkId;
use crate::manifest::Content;
use crate::repo::Repo;
use std::path::PathBuf;

/// The digests of the chunks of one stored version of a file, in file order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PageSums {
    /// What the file was stored as: the record is used only while the file's stamp names it.
    pub content: Content,
    /// The page size, or 0 for a file cut by content.
    pub page_size: u32,
    pub seed: u64,
    pub sums: Vec<u128>,
}

const MAGIC: &[u8; 8] = b"STRAPSUM";
const VERSION: u32 = 1;
/// magic, version, page size, content kind, 3 zero, root id, seed, count.
const HEAD: usize = 8 + 4 + 4 + 1 + 3 + 32 + 8 + 8;
const DIR: &str = "page-sums";

/// Files at least this large keep a record; smaller ones are cheap to hash, and a record each
/// would only fill the directory.
pub const MIN_FILE_SIZE: u64 = 4 << 20;

/// A file cut at pages keeps a record from this size on: it is stored as a page map (see
/// [`crate::pagemap`]), whose changed pages are found by their digests.
pub const MIN_PAGED_SIZE: u64 = 64 << 10;

impl PageSums {
    /// The digest of one page.
    pub fn digest(seed: u64, page: &[u8]) -> u128 {
        twox_hash::XxHash3_128::oneshot_with_seed(seed, page)
    }

    /// `magic "STRAPSUM", version u32 (1), page size u32, content kind u8 (1 one chunk, 2 tree, 3 page map),
    /// 3 zero bytes, root id [32], seed u64, count u64, count x u128`, little-endian. `None` for
    /// empty content (no pages).
    pub fn encode(&self) -> Option<Vec<u8>> {
        let (kind, id) = match &self.content {
            Content::Empty => return None,
            Content::Chunk(id) => (1u8, id),
            Content::Tree(id) => (2u8, id),
            Content::Pages(id) => (3u8, id),
        };
        let mut out = Vec::with_capacity(HEAD + 16 * self.sums.len() + 8);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&self.page_size.to_le_bytes());
        out.extend_from_slice(&[kind, 0, 0, 0]);
        out.extend_from_slice(id.as_bytes());
        out.extend_from_slice(&self.seed.to_le_bytes());
        out.extend_from_slice(&(self.sums.len() as u64).to_le_bytes());
        for s in &self.sums {
            out.extend_from_slice(&s.to_le_bytes());
        }
        Some(out)
    }

    /// `None` for anything that is not a well-formed record of this version.
    pub fn decode(b: &[u8]) -> Option<PageSums> {
        let head = b.get(..HEAD)?;
        if &head[..8] != MAGIC
            || u32::from_le_bytes(head[8..12].try_into().ok()?) != VERSION
            || head[17..20] != [0, 0, 0]
        {
            return None;
        }
        let page_size = u32::from_le_bytes(head[12..16].try_into().ok()?);
        let id = ChunkId(head[20..52].try_into().ok()?);
        let content = match head[16] {
            1 => Content::Chunk(id),
            2 => Content::Tree(id),
            3 => Content::Pages(id),
            _ => return None,
        };
        let seed = u64::from_le_bytes(head[52..60].try_into().ok()?);
        let count = u64::from_le_bytes(head[60..68].try_into().ok()?);
        let body = &b[HEAD..];
        if body.len() as u64 != count.checked_mul(16)? {
            return None;
        }
        let sums = body
            .chunks_exact(16)
            .map(|c| u128::from_le_bytes(c.try_into().expect("16 bytes")))
            .collect();
        Some(PageSums {
            content,
            page_size,
            seed,
            sums,
        })
    }

    /// The record as kept on disk: sealed in an encrypted repository, else followed by its
    /// XXH3-64 checksum.
    pub fn to_file_bytes(&self, keys: Option<&crate::crypto::Keys>) -> Result<Option<Vec<u8>>> {
        let Some(mut plain) = self.encode() else {
            return Ok(None);
        };
        Ok(Some(match keys {
            Some(k) => k.seal(crate::crypto::Object::PageSums, &plain)?,
            None => {
                let sum = twox_hash::XxHash3_64::oneshot(&plain);
                plain.extend_from_slice(&sum.to_le_bytes());
                plain
            }
        }))
    }

    /// What [`PageSums::to_file_bytes`] made, or `None` if it does not open or check out.
    pub fn from_file_bytes(bytes: &[u8], keys: Option<&crate::crypto::Keys>) -> Option<PageSums> {
        match keys {
            Some(k) => {
                let plain = k
                    .open(crate::crypto::Object::PageSums, bytes, "page sums")
                    .ok()?;
                PageSums::decode(&plain)
            }
            None => {
                let (plain, sum) = bytes.split_at_checked(bytes.len().checked_sub(8)?)?;
                let sum = u64::from_le_bytes(sum.try_into().ok()?);
                (twox_hash::XxHash3_64::oneshot(plain) == sum)
                    .then(|| PageSums::decode(plain))
                    .flatten()
            }
        }
    }
}

/// The name of the record of the file with cache key `file_key` (see [`Repo::file_key`]).
fn record_name(file_key: &[u8]) -> String {
    blake3::hash(file_key).to_hex().to_string()
}

/// Where the record of the file with cache key `file_key` is kept.
fn record_path(repo: &Repo, file_key: &[u8]) -> PathBuf {
    repo.root.join(DIR).join(record_name(file_key))
}

/// The record kept for `file_key`, if there is a readable one.
pub fn load(repo: &Repo, file_key: &[u8]) -> Option<PageSums> {
    let bytes = std::fs::read(record_path(repo, file_key)).ok()?;
    PageSums::from_file_bytes(&bytes, repo.keys())
}

/// Replaces the record of each file key (its bytes from [`PageSums::to_file_bytes`]), or removes
/// it (`None`). Best effort, after the backup's commit: a record not written only means the next
/// backup hashes every page of that file.
pub fn store(repo: &Repo, records: &[(&[u8], Option<&[u8]>)]) {
    let dir = repo.root.join(DIR);
    if records.iter().any(|(_, b)| b.is_some()) && std::fs::create_dir_all(&dir).is_err() {
        return;
    }
    for (key, bytes) in records {
        let name = record_name(key);
        let path = dir.join(&name);
        match bytes {
            Some(bytes) => {
                // One writer at a time holds the repository lock: a fixed temporary name per
                // record, so a killed writer leaves at most one, which the next write replaces.
                let tmp = dir.join(format!(".{name}.strata-tmp"));
                let written =
                    std::fs::write(&tmp, bytes).and_then(|_| std::fs::rename(&tmp, &path));
                if let Err(e) = written {
                    let _ = std::fs::remove_file(&tmp);
                    tracing::debug!("page sums {}: {e}", path.display());
                }
            }
            None => {
                let _ = std::fs::remove_file(&path);
            }
        }
    }
}

/// Removes (with `remove`, else only counts) every record, and every temporary file a killed
/// writer left, that is not the record of one of `live_keys`, the file keys the file cache
/// still holds. Returns how many. Best effort, like [`store`]: a record left behind only takes
/// space.
pub fn sweep<'k>(repo: &Repo, live_keys: impl IntoIterator<Item = &'k [u8]>, remove: bool) -> u64 {
    let dir = repo.root.join(DIR);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return 0;
    };
    let live: std::collections::HashSet<String> = live_keys.into_iter().map(record_name).collect();
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        if live.contains(name.to_string_lossy().as_ref()) {
            continue;
        }
        if entry.file_type().is_ok_and(|t| t.is_file())
            && (!remove || std::fs::remove_file(entry.path()).is_ok())
        {
            removed += 1;
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> PageSums {
        PageSums {
            content: Content::Tree(ChunkId([7; 32])),
            page_size: 4096,
            seed: 0x1234_5678_9abc_def0,
            sums: (1..=100u128)
                .map(|i| i * 0x0101_0101_0101_0101_0101)
                .collect(),
        }
    }

    #[test]
    fn records_round_trip_and_refuse_damage() {
        let s = sample();
        let bytes = s.to_file_bytes(None).unwrap().unwrap();
        assert_eq!(PageSums::from_file_bytes(&bytes, None), Some(s.clone()));
        for at in [0, 9, 17, 30, 60, 100, bytes.len() - 1] {
            let mut bad = bytes.clone();
            bad[at] ^= 1;
            assert_eq!(PageSums::from_file_bytes(&bad, None), None, "flip at {at}");
        }
        assert_eq!(
            PageSums::from_file_bytes(&bytes[..bytes.len() - 16], None),
            None
        );
        assert_eq!(PageSums::from_file_bytes(&[], None), None);
    }

    #[test]
    fn sealed_records_open_only_with_their_key() {
        let s = sample();
        let keys = crate::crypto::Keys::from_master(&[3; 32]);
        let other = crate::crypto::Keys::from_master(&[4; 32]);
        let bytes = s.to_file_bytes(Some(&keys)).unwrap().unwrap();
        // No digest is readable without the key.
        let plain = s.encode().unwrap();
        assert!(!bytes.windows(16).any(|w| w == &plain[HEAD..HEAD + 16]));
        assert_eq!(PageSums::from_file_bytes(&bytes, Some(&keys)), Some(s));
        assert_eq!(PageSums::from_file_bytes(&bytes, Some(&other)), None);
        assert_eq!(PageSums::from_file_bytes(&bytes, None), None);
    }

    #[test]
    fn empty_content_has_no_record() {
        let s = PageSums {
            content: Content::Empty,
            ..sample()
        };
        assert_eq!(s.to_file_bytes(None).unwrap(), None);
    }
}

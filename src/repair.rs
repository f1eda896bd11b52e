//! Rebuilding the index from what the repository files say about themselves: pack trailers list
//! every blob, manifest files list every snapshot. The index is a cache; this makes that true.

use crate::error::{Error, IoContext, Result};
use crate::id::ChunkId;
use crate::index::{BLOBS, BlobLoc, Index, META, META_NEXT_PACK, PACKS, PackInfo, SNAPSHOTS};
use crate::manifest::Manifest;
use crate::pack::{FOOTER_LEN, HEADER_LEN, MAGIC, PackEntry, parse_footer, parse_trailer};
use crate::repo::{INDEX_NAME, Lock, load_config};
use crate::storage::{Backend, LocalBackend, sync_dir};
use rayon::prelude::*;
use redb::ReadableTable;
use std::path::Path;

#[derive(Debug, Default, serde::Serialize)]
pub struct RepairReport {
    pub packs: u64,
    pub blobs: u64,
    /// Blobs found in more than one pack (the first pack is kept).
    pub duplicate_blobs: u64,
    pub snapshots: u64,
    /// Files that could not be used, with the reason.
    pub damaged: Vec<String>,
    pub dry_run: bool,
}

/// A pack's trailer as found on disk.
struct FoundPack {
    id: ChunkId,
    size: u64,
    entries: Vec<PackEntry>,
}

fn read_pack(backend: &LocalBackend, name: &str, mac_key: Option<&[u8; 32]>) -> Result<FoundPack> {
    let file_name = name.rsplit('/').next().unwrap_or(name);
    let id: ChunkId = file_name
        .strip_suffix(".pack")
        .ok_or_else(|| Error::corrupt(format!("{name}: not a pack name")))?
        .parse()
        .map_err(|_| Error::corrupt(format!("{name}: not a pack name")))?;
    let size = backend.size(name)?;
    if size < (HEADER_LEN + FOOTER_LEN) as u64 {
        return Err(Error::corrupt(format!("{name}: too short to be a pack")));
    }
    if backend.get_range(name, 0, 8)? != MAGIC {
        return Err(Error::corrupt(format!("{name}: wrong magic bytes")));
    }
    let footer = backend.get_range(name, size - FOOTER_LEN as u64, FOOTER_LEN)?;
    let (trailer_offset, _) = parse_footer(&footer, size, name)?;
    let trailer_len = (size - FOOTER_LEN as u64 - trailer_offset) as usize;
    let trailer = backend.get_range(name, trailer_offset, trailer_len)?;
    let entries = parse_trailer(&trailer, &footer, trailer_offset, name, mac_key)?;
    Ok(FoundPack { id, size, entries })
}

/// Rebuilds `index.redb` from the packs and manifest files. With `dry_run`, only reports what it
/// found. Takes the repository lock; the old index is replaced atomically at the end.
pub fn rebuild_index(root: &Path, dry_run: bool) -> Result<RepairReport> {
    let backend = LocalBackend::new(root);
    let config = load_config(&backend, root)?;
    // An encrypted repository: its keys authenticate trailers and open manifests.
    let keys = if config.key_scheme == crate::crypto::SCHEME {
        let (master, _) = crate::repo::unlock_asking(&backend, &config)?;
        Some(crate::crypto::Keys::from_master(&master))
    } else {
        None
    };
    let mac_key = keys.as_ref().map(|k| k.mac_key());
    let _lock = Lock::acquire(root, "repair index")?;
    let mut report = RepairReport {
        dry_run,
        ..Default::default()
    };

    let names: Vec<String> = backend
        .list("packs")?
        .into_iter()
        .filter(|n| n.ends_with(".pack") && !n.contains(".strata-tmp."))
        .collect();
    let found: Vec<(String, Result<FoundPack>)> = names
        .into_par_iter()
        .map(|n| {
            let r = read_pack(&backend, &n, mac_key);
            (n, r)
        })
        .collect();
    let mut packs = Vec::new();
    for (name, r) in found {
        match r {
            Ok(p) => packs.push(p),
            Err(e) => report.damaged.push(format!("{name}: {e}")),
        }
    }

    let mut snapshots = Vec::new();
    for name in backend.list("snapshots")? {
        let Some(hex) = name
            .rsplit('/')
            .next()
            .and_then(|f| f.strip_suffix(".snap"))
        else {
            continue;
        };
        let Ok(id) = hex.parse::<ChunkId>() else {
            report.damaged.push(format!("{name}: not a snapshot name"));
            continue;
        };
        let bytes = backend.get(&name)?;
        match Manifest::decode(&bytes, Some(&id), keys.as_ref()) {
            Ok(_) => snapshots.push((id, bytes)),
            Err(e) => report.damaged.push(format!("{name}: {e}")),
        }
    }
    report.packs = packs.len() as u64;
    report.snapshots = snapshots.len() as u64;
    report.blobs = packs.iter().map(|p| p.entries.len() as u64).sum();
    if dry_run {
        return Ok(report);
    }

    let tmp = root.join(format!("{INDEX_NAME}.rebuild"));
    let _ = std::fs::remove_file(&tmp);
    {
        let index = Index::open_write(&tmp)?;
        for (chunk, group) in packs.chunks(8).enumerate() {
            let txn = index.write()?;
            {
                let mut blobs = txn.open_table(BLOBS)?;
                let mut pack_table = txn.open_table(PACKS)?;
                for (i, p) in group.iter().enumerate() {
                    let no = (chunk * 8 + i) as u32;
                    for e in &p.entries {
                        if blobs.get(e.id.as_bytes())?.is_some() {
                            report.duplicate_blobs += 1;
                            continue;
                        }
                        blobs.insert(e.id.as_bytes(), &BlobLoc::from_entry(no, e).encode())?;
                    }
                    let info = PackInfo {
                        id: p.id,
                        size: p.size,
                        blobs: p.entries.len() as u32,
                    };
                    pack_table.insert(no, &info.encode())?;
                }
            }
            txn.commit()?;
        }
        let txn = index.write()?;
        {
            let mut snaps = txn.open_table(SNAPSHOTS)?;
            for (id, bytes) in &snapshots {
                snaps.insert(id.as_bytes(), bytes.as_slice())?;
            }
            let mut meta = txn.open_table(META)?;
            meta.insert(META_NEXT_PACK, packs.len() as u64)?;
        }
        txn.commit()?;
    }
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .ctx("fsync", &tmp)?;
    let dest = root.join(INDEX_NAME);
    std::fs::rename(&tmp, &dest).ctx("rename into place", &dest)?;
    sync_dir(root)?;
    Ok(report)
}

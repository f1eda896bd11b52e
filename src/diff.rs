//! Differences between two snapshots, path by path.

use crate::manifest::{Entry, Manifest};
use std::collections::BTreeMap;

/// In JSON `added`, `removed`, `changed` or `metadata`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Change {
    Added,
    Removed,
    /// Content, size, kind or symlink target differs.
    Changed,
    /// Only mode or mtime differ.
    Metadata,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct DiffEntry {
    pub path: String,
    pub change: Change,
    pub old_size: Option<u64>,
    pub new_size: Option<u64>,
}

pub fn diff(old: &Manifest, new: &Manifest) -> Vec<DiffEntry> {
    let a: BTreeMap<&[u8], &Entry> = old.entries.iter().map(|e| (e.path.as_slice(), e)).collect();
    let b: BTreeMap<&[u8], &Entry> = new.entries.iter().map(|e| (e.path.as_slice(), e)).collect();
    let mut out = Vec::new();
    for (path, ea) in &a {
        match b.get(path) {
            None => out.push(DiffEntry {
                path: ea.path_lossy(),
                change: Change::Removed,
                old_size: Some(ea.size),
                new_size: None,
            }),
            Some(eb) => {
                let change = if ea.kind != eb.kind
                    || ea.size != eb.size
                    || ea.content != eb.content
                    || ea.target != eb.target
                {
                    Some(Change::Changed)
                } else if ea.mode != eb.mode || ea.mtime_ns != eb.mtime_ns {
                    Some(Change::Metadata)
                } else {
                    None
                };
                if let Some(change) = change {
                    out.push(DiffEntry {
                        path: ea.path_lossy(),
                        change,
                        old_size: Some(ea.size),
                        new_size: Some(eb.size),
                    });
                }
            }
        }
    }
    for (path, eb) in &b {
        if !a.contains_key(path) {
            out.push(DiffEntry {
                path: eb.path_lossy(),
                change: Change::Added,
                old_size: None,
                new_size: Some(eb.size),
            });
        }
    }
    out.sort_by(|x, y| x.path.cmp(&y.path));
    out
}

//! Walking the sources of a backup into a sorted list of entries.

use crate::error::{Error, Result};
use crate::manifest::EntryKind;
use std::fs::{self, Metadata};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

pub struct WalkItem {
    /// Path inside the snapshot: source name, then the path below the source.
    pub rel: Vec<u8>,
    pub abs: PathBuf,
    pub meta: Metadata,
    pub kind: EntryKind,
    pub target: Option<Vec<u8>>,
}

pub struct Walked {
    pub items: Vec<WalkItem>,
    /// (name inside the snapshot, absolute path) per source.
    pub sources: Vec<(String, PathBuf)>,
    /// Skipped on purpose (sockets, fifos, devices, the repository itself).
    pub warnings: Vec<String>,
    /// Could not be read: the snapshot will be partial.
    pub errors: Vec<String>,
}

pub fn walk_sources(sources: &[PathBuf], repo_root: &Path) -> Result<Walked> {
    let repo_canon = fs::canonicalize(repo_root).ok();
    let mut w = Walked {
        items: Vec::new(),
        sources: Vec::new(),
        warnings: Vec::new(),
        errors: Vec::new(),
    };
    let mut names = std::collections::HashSet::new();
    for src in sources {
        let abs = std::path::absolute(src).map_err(|e| Error::io_path("resolve", src, e))?;
        let meta = fs::symlink_metadata(&abs).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::NotFound(format!("{}: no such file or directory", src.display()))
            } else {
                Error::io_path("stat", src, e)
            }
        })?;
        let base = abs
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "root".to_string());
        let mut name = base.clone();
        let mut n = 2;
        while !names.insert(name.clone()) {
            name = format!("{base}-{n}");
            n += 1;
        }
        w.sources.push((name.clone(), abs.clone()));
        visit(&abs, name.into_bytes(), meta, repo_canon.as_deref(), &mut w);
    }
    w.items.sort_by(|a, b| a.rel.cmp(&b.rel));
    Ok(w)
}

fn visit(abs: &Path, rel: Vec<u8>, meta: Metadata, repo: Option<&Path>, w: &mut Walked) {
    let ft = meta.file_type();
    if ft.is_dir() {
        if repo.is_some_and(|r| fs::canonicalize(abs).ok().as_deref() == Some(r)) {
            w.warnings.push(format!(
                "{}: skipped (the repository itself)",
                abs.display()
            ));
            return;
        }
        let listing = match fs::read_dir(abs) {
            Ok(l) => l,
            Err(e) => {
                w.errors.push(format!("{}: {e}", abs.display()));
                return;
            }
        };
        w.items.push(WalkItem {
            rel: rel.clone(),
            abs: abs.to_path_buf(),
            meta,
            kind: EntryKind::Dir,
            target: None,
        });
        let mut children = Vec::new();
        for entry in listing {
            match entry {
                Ok(e) => children.push(e.path()),
                Err(e) => w.errors.push(format!("{}: {e}", abs.display())),
            }
        }
        children.sort();
        for child in children {
            let meta = match fs::symlink_metadata(&child) {
                Ok(m) => m,
                Err(e) => {
                    w.errors.push(format!("{}: {e}", child.display()));
                    continue;
                }
            };
            let mut child_rel = rel.clone();
            child_rel.push(b'/');
            child_rel.extend_from_slice(child.file_name().unwrap_or_default().as_bytes());
            visit(&child, child_rel, meta, repo, w);
        }
    } else if ft.is_file() {
        w.items.push(WalkItem {
            rel,
            abs: abs.to_path_buf(),
            meta,
            kind: EntryKind::File,
            target: None,
        });
    } else if ft.is_symlink() {
        match fs::read_link(abs) {
            Ok(t) => w.items.push(WalkItem {
                rel,
                abs: abs.to_path_buf(),
                meta,
                kind: EntryKind::Symlink,
                target: Some(t.as_os_str().as_bytes().to_vec()),
            }),
            Err(e) => w.errors.push(format!("{}: {e}", abs.display())),
        }
    } else {
        let what = if ft.is_socket() {
            "socket"
        } else if ft.is_fifo() {
            "fifo"
        } else {
            "device"
        };
        w.warnings
            .push(format!("{}: skipped ({what})", abs.display()));
    }
}

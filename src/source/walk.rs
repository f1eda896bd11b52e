//! Walking the sources of a backup into a sorted list of entries.

use crate::error::{Error, Result};
use crate::manifest::EntryKind;
use std::fs::{self, Metadata};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

pub struct WalkItem {
    /// Path inside the snapshot: source name, then the path below the source.
    pub rel: Vec<u8>,
    pub abs: PathBuf,
    pub meta: Metadata,
    pub kind: EntryKind,
    pub target: Option<Vec<u8>>,
}

impl WalkItem {
    pub fn rel_lossy(&self) -> String {
        String::from_utf8_lossy(&self.rel).into_owned()
    }
}

#[derive(Default)]
pub struct Walked {
    pub items: Vec<WalkItem>,
    /// (name inside the snapshot, absolute path) per source.
    pub sources: Vec<(String, PathBuf)>,
    /// Skipped on purpose (sockets, fifos, devices, the repository itself).
    pub warnings: Vec<String>,
    /// Could not be read: the snapshot will be partial.
    pub errors: Vec<String>,
}

/// Whether `pattern` matches `text`: `*` any run of characters but `/`, `**` any run including
/// `/`, `?` one character but `/`. Everything else matches itself.
pub fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    match pattern.first() {
        None => text.is_empty(),
        Some(b'*') if pattern.get(1) == Some(&b'*') => {
            let rest = &pattern[2..];
            (0..=text.len()).any(|i| glob_match(rest, &text[i..]))
        }
        Some(b'*') => {
            let rest = &pattern[1..];
            for i in 0..=text.len() {
                if glob_match(rest, &text[i..]) {
                    return true;
                }
                if text.get(i) == Some(&b'/') {
                    break;
                }
            }
            false
        }
        Some(b'?') => !text.is_empty() && text[0] != b'/' && glob_match(&pattern[1..], &text[1..]),
        Some(&c) => text.first() == Some(&c) && glob_match(&pattern[1..], &text[1..]),
    }
}

/// Exclusion patterns: one without `/` matches a file or directory name anywhere; one with `/`
/// matches the path below the source (`logs/*.jsonl`, `**/cache`).
pub struct Excludes(Vec<Vec<u8>>);

impl Excludes {
    pub fn new(patterns: &[String]) -> Self {
        Excludes(
            patterns
                .iter()
                .map(|p| p.trim_matches('/').as_bytes().to_vec())
                .collect(),
        )
    }

    fn excluded(&self, below_source: &[u8], name: &[u8]) -> bool {
        self.0.iter().any(|p| {
            if p.contains(&b'/') {
                glob_match(p, below_source)
            } else {
                glob_match(p, name)
            }
        })
    }
}

pub fn walk_sources(sources: &[PathBuf], repo_root: &Path) -> Result<Walked> {
    let named: Vec<(PathBuf, Option<String>)> = sources.iter().map(|p| (p.clone(), None)).collect();
    walk_sources_excluding(&named, repo_root, &Excludes::new(&[]), false)
}

/// Checks a name the user gave a source: one plain path component.
pub fn check_source_name(name: &str) -> Result<()> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." || name.contains('\0') {
        return Err(Error::invalid(format!(
            "source name {name:?}: use a plain file name such as db.sql"
        )));
    }
    Ok(())
}

/// Walks `sources`, each a path and the name it should have in the snapshot (by default its
/// file name, with `-2`, `-3`... added when two sources share one).
/// With `one_file_system`, a directory on another file system than its source (a mount point)
/// is recorded but not entered.
pub fn walk_sources_excluding(
    sources: &[(PathBuf, Option<String>)],
    repo_root: &Path,
    excludes: &Excludes,
    one_file_system: bool,
) -> Result<Walked> {
    let repo_canon = fs::canonicalize(repo_root).ok();
    let mut w = Walked::default();
    let mut names = std::collections::HashSet::new();
    for (_, given) in sources {
        if let Some(name) = given {
            check_source_name(name)?;
            if !names.insert(name.clone()) {
                return Err(Error::invalid(format!(
                    "two sources are named {name:?}; give each its own NAME"
                )));
            }
        }
    }
    for (src, given) in sources {
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
        let name = match given {
            Some(name) => name.clone(),
            None => {
                let mut name = base.clone();
                let mut n = 2;
                while !names.insert(name.clone()) {
                    name = format!("{base}-{n}");
                    n += 1;
                }
                name
            }
        };
        w.sources.push((name.clone(), abs.clone()));
        let prefix = name.len() + 1;
        let ctx = Ctx {
            repo: repo_canon.as_deref(),
            excludes,
            prefix,
            device: one_file_system.then(|| meta.dev()),
        };
        visit(&abs, name.into_bytes(), meta, &ctx, &mut w);
    }
    w.items.sort_by(|a, b| a.rel.cmp(&b.rel));
    Ok(w)
}

/// Walks the directory `abs` again, as it is now: it and everything below it, named from
/// `rel` (its path inside the snapshot). `prefix` is the length of the source name and its
/// slash at the start of `rel`, for matching exclusions.
pub fn walk_below(
    abs: &Path,
    rel: Vec<u8>,
    prefix: usize,
    repo_root: &Path,
    excludes: &Excludes,
) -> Result<Walked> {
    let mut w = Walked::default();
    let meta = fs::symlink_metadata(abs).map_err(|e| Error::io_path("stat", abs, e))?;
    let repo_canon = fs::canonicalize(repo_root).ok();
    let ctx = Ctx {
        repo: repo_canon.as_deref(),
        excludes,
        prefix,
        device: None,
    };
    visit(abs, rel, meta, &ctx, &mut w);
    w.items.sort_by(|a, b| a.rel.cmp(&b.rel));
    Ok(w)
}

struct Ctx<'a> {
    repo: Option<&'a Path>,
    excludes: &'a Excludes,
    /// Length of "source-name/" at the start of every path below the source.
    prefix: usize,
    /// The source's file system, when directories on others are not to be entered.
    device: Option<u64>,
}

fn visit(abs: &Path, rel: Vec<u8>, meta: Metadata, ctx: &Ctx, w: &mut Walked) {
    let repo = ctx.repo;
    let ft = meta.file_type();
    if ft.is_dir() {
        if repo.is_some_and(|r| fs::canonicalize(abs).ok().as_deref() == Some(r)) {
            w.warnings.push(format!(
                "{}: skipped (the repository itself)",
                abs.display()
            ));
            return;
        }
        if ctx.device.is_some_and(|d| d != meta.dev()) {
            w.warnings.push(format!(
                "{}: another file system, recorded empty (--one-file-system)",
                abs.display()
            ));
            w.items.push(WalkItem {
                rel,
                abs: abs.to_path_buf(),
                meta,
                kind: EntryKind::Dir,
                target: None,
            });
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
                // Gone since the directory was listed (a temporary file, a database's
                // journal): the snapshot is of the directory without it.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    w.errors.push(format!("{}: {e}", child.display()));
                    continue;
                }
            };
            let name = child.file_name().unwrap_or_default().as_bytes();
            let mut child_rel = rel.clone();
            child_rel.push(b'/');
            child_rel.extend_from_slice(name);
            if ctx.excludes.excluded(&child_rel[ctx.prefix..], name) {
                continue;
            }
            visit(&child, child_rel, meta, ctx, w);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match(b"*.tmp", b"a.tmp"));
        assert!(!glob_match(b"*.tmp", b"dir/a.tmp"));
        assert!(glob_match(b"**/*.tmp", b"dir/sub/a.tmp"));
        assert!(glob_match(b"logs/*.jsonl", b"logs/events.jsonl"));
        assert!(!glob_match(b"logs/*.jsonl", b"logs/old/events.jsonl"));
        assert!(glob_match(b"cach?", b"cache"));
        assert!(!glob_match(b"cache", b"cache2"));
        let ex = Excludes::new(&["*.tmp".into(), "vector_store/**/*.bin".into()]);
        assert!(ex.excluded(b"x/y.tmp", b"y.tmp"));
        assert!(ex.excluded(b"vector_store/u/data.bin", b"data.bin"));
        assert!(!ex.excluded(b"app.db", b"app.db"));
    }
}

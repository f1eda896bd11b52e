//! The first step: the source paths walked into entries, the databases named with `--sqlite`
//! checked, the streams' names checked against the paths', and the stores set aside.

use super::BackupOptions;
use crate::error::{Error, Result};
use crate::manifest::EntryKind;
use crate::repo::Repo;
use crate::source::capture::{Group, find_groups};
use crate::source::sqlite::{check_sqlite_source, looks_paged, without_sqlite_siblings};
use crate::source::walk::{Excludes, WalkItem, check_source_name, walk_sources_excluding};
use std::collections::HashSet;
use std::path::PathBuf;

/// The sources, walked.
pub(super) struct Walk {
    /// Each top-level name and the path it stands for.
    pub(super) names: Vec<(String, PathBuf)>,
    /// The entries outside the stores, sorted by path.
    pub(super) items: Vec<WalkItem>,
    /// The stores, each captured as a whole, after everything else.
    pub(super) groups: Vec<Group>,
    /// The stores' entries as the walk found them.
    pub(super) grouped: Vec<WalkItem>,
    /// Files read only as consistent images: the databases named with `--sqlite`, and the
    /// stores' databases.
    pub(super) databases: HashSet<PathBuf>,
    pub(super) excludes: Excludes,
}

/// What to tell besides the snapshot: warnings (nothing is missing from it) and errors (paths
/// that could not be read, so the snapshot is partial).
pub(super) struct Problems {
    pub(super) warnings: Vec<String>,
    pub(super) errors: Vec<String>,
}

/// Walks the source paths and the databases named with `--sqlite`; checks that no stream has a
/// name already taken; leaves out the -wal, -shm and -journal files of databases (unless they are
/// copied raw) and sets the stores apart.
pub(super) fn walk(repo: &Repo, opts: &BackupOptions) -> Result<(Walk, Problems)> {
    let mut databases = HashSet::new();
    let mut named: Vec<(PathBuf, Option<String>)> =
        opts.sources.iter().map(|p| (p.clone(), None)).collect();
    for db in &opts.databases {
        let abs = check_sqlite_source(&db.path)?;
        databases.insert(abs.clone());
        let name = db.name.clone().or_else(|| {
            db.path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
        });
        named.push((abs, name));
    }
    let excludes = Excludes::new(&opts.excludes);
    let walked = walk_sources_excluding(&named, &repo.root, &excludes, opts.one_file_system)?;
    let named_sources: Vec<&str> = opts
        .streams
        .iter()
        .map(|s| s.name.as_str())
        .chain(opts.pg_bases.iter().map(|b| b.name.as_str()))
        .collect();
    for (i, name) in named_sources.iter().enumerate() {
        let clash =
            walked.sources.iter().any(|(n, _)| n == name) || named_sources[..i].contains(name);
        check_source_name(name)?;
        if clash {
            return Err(Error::invalid(format!(
                "two sources are named {name:?}; give each its own NAME"
            )));
        }
    }
    let problems = Problems {
        warnings: walked.warnings,
        errors: walked.errors,
    };
    let items = if opts.raw_sqlite {
        walked.items
    } else {
        without_sqlite_siblings(walked.items)
    };
    // Stores are captured as a whole, after everything else; their databases only ever as
    // consistent images.
    let groups = find_groups(&items, &opts.capture.groups)?;
    let (grouped, items): (Vec<WalkItem>, Vec<WalkItem>) = items
        .into_iter()
        .partition(|i| groups.iter().any(|g| g.holds(&i.abs)));
    for item in &grouped {
        if item.kind == EntryKind::File && looks_paged(&item.abs) {
            databases.insert(item.abs.clone());
        }
    }
    let walk = Walk {
        names: walked.sources,
        items,
        groups,
        grouped,
        databases,
        excludes,
    };
    Ok((walk, problems))
}

//! Which paths the API may touch: restore targets must lie below a `restore_roots` entry, the
//! sources of a snapshot asked for through the API below a `backup_roots` entry. The operator
//! chooses these directories; a token holder cannot make the daemon (often root) read or write
//! anywhere else.
//!
//! A path is absolute, holds no `..`, and is judged after resolving the symbolic links of its
//! nearest existing ancestor, so a link inside a root cannot lead out of it. It is checked when
//! the request is accepted and again just before the operation runs; the operation is given the
//! resolved path.

use std::ffi::OsString;
use std::fs;
use std::io::ErrorKind;
use std::path::{Component, Path, PathBuf};

/// What to do when the path itself is an existing symbolic link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Link {
    /// Refuse it (a restore target: the restore would write where it points).
    Refuse,
    /// Judge the link itself, not where it points (a backup source: stored as a link).
    Keep,
    /// Follow it; the path must exist (a SQLite database, which SQLite opens through links).
    Follow,
}

/// Why a path was refused: 400 for a malformed one, 403 for one outside the roots.
#[derive(Debug)]
pub struct Refusal {
    pub status: u16,
    pub message: String,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

fn bad(message: String) -> Refusal {
    Refusal {
        status: 400,
        message,
    }
}

fn forbidden(message: String) -> Refusal {
    Refusal {
        status: 403,
        message,
    }
}

/// `path` with its symlinks resolved as [`Link`] says, if it lies inside one of `roots`
/// (named `setting` in messages).
pub fn resolve(
    path: &Path,
    roots: &[PathBuf],
    setting: &str,
    link: Link,
) -> Result<PathBuf, Refusal> {
    let shown = path.display();
    if !path.is_absolute() {
        return Err(bad(format!("{shown} is not an absolute path")));
    }
    if path.components().any(|c| c == Component::ParentDir) {
        return Err(bad(format!("{shown} contains `..`")));
    }
    // The nearest existing ancestor, and the names below it that do not exist (yet).
    let mut existing = path.to_path_buf();
    let mut missing: Vec<OsString> = Vec::new();
    let meta = loop {
        match fs::symlink_metadata(&existing) {
            Ok(m) => break m,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                match (existing.file_name(), existing.parent()) {
                    (Some(name), Some(parent)) => {
                        missing.push(name.to_owned());
                        existing = parent.to_path_buf();
                    }
                    _ => return Err(forbidden(format!("{shown}: no existing ancestor"))),
                }
            }
            Err(e) => return Err(forbidden(format!("{}: {e}", existing.display()))),
        }
    };
    let canonical = |p: &Path| {
        fs::canonicalize(p).map_err(|e| forbidden(format!("resolving {}: {e}", p.display())))
    };
    let resolved = if !missing.is_empty() {
        if link == Link::Follow {
            return Err(forbidden(format!("{shown}: no such file")));
        }
        let mut r = canonical(&existing)?;
        r.extend(missing.iter().rev());
        r
    } else if meta.file_type().is_symlink() {
        match link {
            Link::Refuse => {
                return Err(forbidden(format!(
                    "{shown} is a symbolic link; give a real directory"
                )));
            }
            Link::Follow => canonical(path)?,
            Link::Keep => match (path.parent(), path.file_name()) {
                (Some(parent), Some(name)) => canonical(parent)?.join(name),
                _ => canonical(path)?,
            },
        }
    } else {
        canonical(path)?
    };
    let inside = roots
        .iter()
        .filter_map(|r| fs::canonicalize(r).ok())
        .any(|r| resolved.starts_with(&r));
    if inside {
        return Ok(resolved);
    }
    let list: Vec<String> = roots.iter().map(|r| r.display().to_string()).collect();
    let via = if resolved.as_path() == path {
        String::new()
    } else {
        format!(" (it resolves to {})", resolved.display())
    };
    Err(forbidden(format!(
        "{shown}{via} is not inside {setting} ({})",
        list.join(", ")
    )))
}

/// Checks the sources of an ad-hoc snapshot against `backup_roots`; returns them resolved.
pub fn backup_sources(
    roots: &[PathBuf],
    paths: &[PathBuf],
    sqlite: &[String],
) -> Result<(Vec<PathBuf>, Vec<String>), Refusal> {
    if roots.is_empty() {
        return Err(Refusal {
            status: 403,
            message: "snapshots of paths given in a request are off: only configured jobs run \
                      through the API; set backup_roots in strata.toml (STRATA_BACKUP_ROOTS) to \
                      the directories such snapshots may read"
                .into(),
        });
    }
    let mut out_paths = Vec::new();
    for p in paths {
        out_paths.push(resolve(p, roots, "backup_roots", Link::Keep)?);
    }
    let mut out_sqlite = Vec::new();
    for s in sqlite {
        // `strata backup --sqlite` reads DB=NAME; a path with `=` in it would be ambiguous.
        if s.contains('=') {
            return Err(Refusal {
                status: 400,
                message: format!(
                    "sqlite {s:?}: give the database's path alone (without `=`); it is stored \
                     under its file name"
                ),
            });
        }
        let db = resolve(Path::new(s), roots, "backup_roots", Link::Follow)?;
        let text = db
            .to_str()
            .filter(|t| !t.contains('='))
            .ok_or_else(|| Refusal {
                status: 400,
                message: format!(
                    "sqlite {s:?} resolves to {}, a path strata cannot pass on",
                    db.display()
                ),
            })?;
        out_sqlite.push(text.to_string());
    }
    Ok((out_paths, out_sqlite))
}

/// Checks a restore target against `restore_roots`; returns it resolved.
pub fn restore_target(roots: &[PathBuf], target: &Path) -> Result<PathBuf, Refusal> {
    if roots.is_empty() {
        return Err(Refusal {
            status: 403,
            message: "restores through the API are off; set restore_roots in strata.toml \
                      (STRATA_RESTORE_ROOTS) to the directories restores may write into, or \
                      restore with `strata restore` on the command line"
                .into(),
        });
    }
    let resolved = resolve(target, roots, "restore_roots", Link::Refuse)?;
    if resolved.exists() && !resolved.is_dir() {
        return Err(Refusal {
            status: 400,
            message: format!("{} exists and is not a directory", target.display()),
        });
    }
    Ok(resolved)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn paths_must_stay_inside_a_root() {
        let dir = tempfile::tempdir().unwrap();
        let base = fs::canonicalize(dir.path()).unwrap();
        let root = base.join("root");
        let outside = base.join("outside");
        fs::create_dir_all(root.join("sub")).unwrap();
        fs::create_dir_all(&outside).unwrap();
        fs::write(outside.join("secret"), b"x").unwrap();
        symlink(&outside, root.join("escape")).unwrap();
        symlink(root.join("sub"), root.join("inner")).unwrap();
        symlink(outside.join("secret"), root.join("secret-link")).unwrap();
        let roots = [root.clone()];
        let check = |p: PathBuf, link| resolve(&p, &roots, "restore_roots", link);

        // Inside: the root itself, an existing directory, a path that does not exist yet, and
        // one through a link that stays inside.
        assert_eq!(check(root.clone(), Link::Refuse).unwrap(), root);
        assert_eq!(
            check(root.join("sub"), Link::Refuse).unwrap(),
            root.join("sub")
        );
        assert_eq!(
            check(root.join("new/deeper"), Link::Refuse).unwrap(),
            root.join("new/deeper")
        );
        assert_eq!(
            check(root.join("inner/x"), Link::Refuse).unwrap(),
            root.join("sub/x")
        );

        // Outside, directly or through a link in an ancestor.
        for p in [
            outside.clone(),
            root.join("escape/new"),
            root.join("escape"),
            base.clone(),
        ] {
            let e = check(p.clone(), Link::Refuse).unwrap_err();
            assert_eq!(e.status, 403, "{p:?}: {}", e.message);
        }
        assert!(
            check(root.join("escape/x"), Link::Refuse)
                .unwrap_err()
                .message
                .contains("resolves to")
        );
        // The target itself a link: refused for a restore even when it points inside.
        let e = check(root.join("inner"), Link::Refuse).unwrap_err();
        assert!(e.message.contains("symbolic link"), "{}", e.message);
        // A backup source that is a link is stored as a link: judged where it is.
        assert_eq!(
            check(root.join("secret-link"), Link::Keep).unwrap(),
            root.join("secret-link")
        );
        // A database is opened through links: judged where it points.
        assert_eq!(
            check(root.join("secret-link"), Link::Follow)
                .unwrap_err()
                .status,
            403
        );
        assert_eq!(
            check(root.join("missing.db"), Link::Follow)
                .unwrap_err()
                .status,
            403
        );

        // Malformed.
        for p in ["relative/dir", "/a/../b"] {
            assert_eq!(
                check(PathBuf::from(p), Link::Refuse).unwrap_err().status,
                400
            );
        }
        assert_eq!(
            check(root.join("sub/../../outside"), Link::Refuse)
                .unwrap_err()
                .status,
            400
        );
        // A prefix of a name is not a parent: /x/root-other is not inside /x/root.
        fs::create_dir_all(base.join("root-other")).unwrap();
        assert_eq!(
            check(base.join("root-other"), Link::Refuse)
                .unwrap_err()
                .status,
            403
        );
        // No roots: nothing is inside.
        assert_eq!(
            resolve(&root, &[], "restore_roots", Link::Refuse)
                .unwrap_err()
                .status,
            403
        );
    }
}

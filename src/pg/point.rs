//! Named restore points: `pg_create_restore_point` on the server, through `psql`, and their
//! record in the repository (a snapshot of kind [`PG_POINT`] named after the point, its WAL
//! position in a tag `lsn=...`), by which `pg restore --name` picks the base backup before it.

use super::lsn::Lsn;
use crate::error::{Error, Result};
use crate::repo::Repo;
pub use crate::snapshots::PG_POINT;
use std::io::Write;
use std::process::{Command, Stdio};

/// The longest restore point name PostgreSQL keeps (`MAXFNAMELEN` less its terminator).
const NAME_MAX: usize = 63;

/// Checks that `name` can name a restore point: 1 to 63 bytes, no control characters.
pub fn check_restore_point_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > NAME_MAX || name.chars().any(char::is_control) {
        return Err(Error::invalid(format!(
            "{name:?}: a restore point's name is 1 to {NAME_MAX} bytes, without control \
             characters"
        )));
    }
    Ok(())
}

/// Creates restore point `name` on the server `db` reaches (psql's environment when `None`);
/// returns its LSN as PostgreSQL prints it (`0/3000090`).
pub fn create_restore_point(db: Option<&str>, name: &str) -> Result<String> {
    check_restore_point_name(name)?;
    let mut cmd = Command::new("psql");
    cmd.args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-v"])
        .arg(format!("name={name}"));
    if let Some(db) = db {
        cmd.arg("-d").arg(db);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::io("run psql (install PostgreSQL's client)", e))?;
    // The name goes in as a psql variable, quoted by psql (`:'name'`), never spliced into SQL.
    let sent = child
        .stdin
        .take()
        .expect("piped")
        .write_all(b"SELECT pg_create_restore_point(:'name');\n");
    let out = child
        .wait_with_output()
        .map_err(|e| Error::io("run psql", e))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        return Err(Error::invalid(format!(
            "psql could not create restore point {name:?}: {}",
            stderr.trim()
        )));
    }
    sent.map_err(|e| Error::io("write to psql", e))?;
    let lsn = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let is_lsn = lsn.split_once('/').is_some_and(|(a, b)| {
        [a, b]
            .iter()
            .all(|h| !h.is_empty() && h.chars().all(|c| c.is_ascii_hexdigit()))
    });
    if !is_lsn {
        return Err(Error::invalid(format!(
            "psql answered {lsn:?} for restore point {name:?}, not an LSN"
        )));
    }
    Ok(lsn)
}

/// The tag that holds a restore point's position.
const LSN_TAG: &str = "lsn=";

/// Records restore point `name` at `lsn` in `repo` (open for writing); returns its snapshot.
pub fn record_restore_point(repo: &Repo, name: &str, lsn: Lsn) -> Result<crate::id::SnapshotId> {
    let mut opts = crate::backup::BackupOptions::new(vec![]);
    opts.kind = PG_POINT.into();
    opts.name = Some(name.to_string());
    opts.tags = vec![format!("{LSN_TAG}{lsn}")];
    opts.streams = vec![crate::source::streams::StreamSource {
        name: "restore-point".into(),
        from: crate::source::streams::StreamFrom::Bytes(
            format!("{name}\n{lsn}\n").into_bytes(),
            "pg_create_restore_point".into(),
        ),
    }];
    Ok(crate::backup::backup(repo, &opts)?.id)
}

/// Where restore point `name` is, as its newest record in `repo` says (`None` when strata did
/// not record it).
pub fn find_restore_point(repo: &Repo, name: &str) -> Result<Option<Lsn>> {
    let found = crate::snapshots::list_without_wal(repo)?
        .into_iter()
        .rev()
        .find(|s| s.manifest.kind == PG_POINT && s.manifest.name.as_deref() == Some(name));
    match found {
        Some(s) => recorded_lsn(&s.id, &s.manifest).map(Some),
        None => Ok(None),
    }
}

/// The position a restore point record (snapshot `id`, of kind [`PG_POINT`]) holds in its tag.
pub fn recorded_lsn(
    id: &crate::id::SnapshotId,
    manifest: &crate::manifest::Manifest,
) -> Result<Lsn> {
    let lsn = manifest
        .tags
        .iter()
        .find_map(|t| t.strip_prefix(LSN_TAG))
        .ok_or_else(|| {
            Error::corrupt(format!(
                "restore point record {} has no {LSN_TAG} tag",
                id.short()
            ))
        })?;
    Lsn::parse(lsn)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restore_point_names_are_checked() {
        assert!(check_restore_point_name("before-migration-42").is_ok());
        assert!(check_restore_point_name(&"x".repeat(63)).is_ok());
        for bad in ["", "a\nb", &"x".repeat(64)] {
            assert!(check_restore_point_name(bad).is_err(), "{bad:?}");
        }
    }
}

//! The snapshot list and how users name snapshots: id prefix, name, `latest`, or a time.

use crate::error::{Error, Result};
use crate::id::SnapshotId;
use crate::manifest::Manifest;
use crate::repo::Repo;

/// A snapshot with its decoded manifest.
pub struct Snapshot {
    pub id: SnapshotId,
    pub manifest: Manifest,
    /// Size of the framed manifest in bytes.
    pub manifest_bytes: usize,
}

/// The kind of the snapshots restore takes of what it replaces.
pub const RESTORE_POINT: &str = "restore-point";

/// The kind of the snapshots that hold PostgreSQL's archived WAL files, one file each (see
/// `pg::archive`). They are not states of an application: `latest`, a time and a
/// plain `strata list` pass over them.
pub const PG_WAL: &str = "pg-wal";

/// The kind of the snapshots that record a PostgreSQL restore point made with `strata pg
/// restore-point`: named after it, its WAL position in a tag `lsn=...` (see `pg::point`).
pub const PG_POINT: &str = "pg-point";

/// Whether a snapshot of `kind` is a state of the data (not a restore point or a WAL file).
fn is_state(kind: &str) -> bool {
    kind != RESTORE_POINT && kind != PG_WAL && kind != PG_POINT
}

/// All snapshots, oldest first.
pub fn list(repo: &Repo) -> Result<Vec<Snapshot>> {
    let txn = repo.index.read()?;
    decode(repo, &txn, &Default::default())
}

/// All snapshots but archived WAL files, oldest first. Those the index's table of archived
/// files names are not even decoded: a busy server archives a file a minute, each a snapshot.
pub fn list_without_wal(repo: &Repo) -> Result<Vec<Snapshot>> {
    let txn = repo.index.read()?;
    let wal = crate::index::pg_wal_ids(&txn)?.unwrap_or_default();
    let mut out = decode(repo, &txn, &wal)?;
    out.retain(|s| s.manifest.kind != PG_WAL);
    Ok(out)
}

/// The snapshots of the index but those in `skip`, decoded, oldest first.
fn decode(
    repo: &Repo,
    txn: &redb::ReadTransaction,
    skip: &std::collections::HashSet<SnapshotId>,
) -> Result<Vec<Snapshot>> {
    let mut out = Vec::new();
    for (id, bytes) in crate::index::snapshot_manifests(txn)? {
        if skip.contains(&id) {
            continue;
        }
        let manifest = Manifest::decode(&bytes, Some(&id), repo.keys())?;
        out.push(Snapshot {
            id,
            manifest,
            manifest_bytes: bytes.len(),
        });
    }
    out.sort_by_key(|s| (s.manifest.time_ns, s.id));
    Ok(out)
}

/// Parses a user's time: RFC 3339, or "YYYY-MM-DD HH:MM[:SS]" / "YYYY-MM-DD" in local time. A
/// time given to the second stands for the end of that second, a date for the end of that day.
pub fn parse_time(s: &str) -> Result<i64> {
    use chrono::{NaiveDate, NaiveDateTime, TimeZone};
    let s = s.trim();
    let local = |n: NaiveDateTime| {
        chrono::Local
            .from_local_datetime(&n)
            .earliest()
            .and_then(|t| t.timestamp_nanos_opt())
    };
    // A time written to the second covers that whole second (a snapshot taken at 14:03:27.4
    // is one "at 14:03:27"); a day, the whole day.
    const REST_OF_SECOND: i64 = 999_999_999;
    let whole_second = |ns: i64| ns.saturating_add(REST_OF_SECOND);
    let parsed = chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .and_then(|t| t.timestamp_nanos_opt())
        .map(|ns| {
            if s.contains('.') {
                ns
            } else {
                whole_second(ns)
            }
        })
        .or_else(|| {
            ["%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S"]
                .iter()
                .find_map(|f| NaiveDateTime::parse_from_str(s, f).ok())
                .and_then(local)
                .map(whole_second)
        })
        .or_else(|| {
            ["%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M"]
                .iter()
                .find_map(|f| NaiveDateTime::parse_from_str(s, f).ok())
                .and_then(local)
        })
        .or_else(|| {
            NaiveDate::parse_from_str(s, "%Y-%m-%d")
                .ok()
                .and_then(|d| d.and_hms_opt(23, 59, 59))
                .and_then(local)
                .map(whole_second)
        });
    parsed.ok_or_else(|| {
        Error::invalid(format!(
            "cannot read time {s:?}: use RFC 3339 (2026-11-20T14:00:00Z) or \"2026-11-20 14:00\""
        ))
    })
}

/// Finds the snapshot a user means by `spec`: `latest`, an id prefix (4+ hex digits) or a name
/// (the newest snapshot with that name).
pub fn resolve<'a>(snaps: &'a [Snapshot], spec: &str) -> Result<&'a Snapshot> {
    if snaps.is_empty() {
        return Err(Error::not_found("the repository has no snapshots yet"));
    }
    if spec == "latest" {
        // Restore points are safety copies taken by restore, not new states of the data; WAL
        // files are pieces of one.
        return Ok(snaps
            .iter()
            .rev()
            .find(|s| is_state(&s.manifest.kind))
            .unwrap_or_else(|| snaps.last().expect("non-empty")));
    }
    let is_hex = spec.len() >= 4 && spec.chars().all(|c| c.is_ascii_hexdigit());
    if is_hex {
        let lower = spec.to_ascii_lowercase();
        let hits: Vec<&Snapshot> = snaps
            .iter()
            .filter(|s| s.id.to_hex().starts_with(&lower))
            .collect();
        match hits.len() {
            1 => return Ok(hits[0]),
            n if n > 1 => {
                return Err(Error::invalid(format!(
                    "snapshot id prefix {spec} is ambiguous ({n} snapshots); give more digits"
                )));
            }
            _ => {}
        }
    }
    let short_hex =
        !spec.is_empty() && spec.len() < 4 && spec.chars().all(|c| c.is_ascii_hexdigit());
    snaps
        .iter()
        .rev()
        .find(|s| s.manifest.name.as_deref() == Some(spec))
        .ok_or_else(|| match short_hex {
            true => Error::invalid(format!(
                "{spec:?} is too short for an id prefix: give 4 or more hex digits (or a name, \
                 or `latest`)"
            )),
            false => Error::not_found(format!(
                "no snapshot matches {spec:?} (an id prefix, a name, or `latest`); see `strata list`"
            ))
        })
}

/// The newest snapshot taken at or before `time_ns`.
pub fn at_time(snaps: &[Snapshot], time_ns: i64) -> Result<&Snapshot> {
    snaps
        .iter()
        .rev()
        .find(|s| s.manifest.time_ns <= time_ns && is_state(&s.manifest.kind))
        .ok_or_else(|| Error::not_found("no snapshot was taken at or before that time"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times() {
        assert!(parse_time("2026-11-20T14:00:00Z").is_ok());
        assert!(parse_time("2026-11-20 14:00").is_ok());
        assert!(parse_time("2026-11-20").is_ok());
        assert!(parse_time("yesterday-ish").is_err());
        let a = parse_time("2026-11-20T14:00:00Z").unwrap();
        let b = parse_time("2026-11-20T15:00:00+01:00").unwrap();
        assert_eq!(a, b);
        // To the second: the whole second; with a fraction: that instant.
        let exact = parse_time("2026-11-20T14:00:00.000Z").unwrap();
        assert_eq!(a - exact, 999_999_999);
        assert_eq!(
            parse_time("2026-11-20T14:00:00.25Z").unwrap() - exact,
            250_000_000
        );
        let minute = parse_time("2026-11-20 14:00").unwrap();
        let second = parse_time("2026-11-20 14:00:00").unwrap();
        assert_eq!(second - minute, 999_999_999);
        let day_end = parse_time("2026-11-20").unwrap();
        assert_eq!(day_end - parse_time("2026-11-20 23:59:59").unwrap(), 0);
    }
}

//! Physical base backups (`backup --pg-base`): the data directory as `pg_basebackup` streams it
//! (tar format, to standard output), stored as the files of one directory of the snapshot, each
//! cut at PostgreSQL's 8 KiB pages, so that the next base backup stores only the pages that
//! changed.
//!
//! `pg_basebackup` runs with `--wal-method=fetch`: the WAL from the backup's start to its end
//! comes inside the backup (in `pg_wal/`), so the server does not wait for its archiver before
//! the backup ends (with `--wal-method=none` it would wait for `archive_command`, which, when it
//! is `strata pg archive-wal` into the same repository, waits for this backup's lock). The
//! WAL archive holds the same pages (archived files are cut at the WAL's 8 KiB pages too), so
//! they are stored once.
//!
//! What the backup says of itself is recorded in its source's details ([`BaseInfo`]): start
//! and stop positions, timeline, WAL segment size, server version, start and stop times.

use super::lsn::{Lsn, parse_segment_name, segment_name};
use crate::error::{Error, Result};
use crate::manifest::{Manifest, SourceKind};
use std::process::Command;

/// PostgreSQL's page (`BLCKSZ`) and WAL page (`XLOG_BLCKSZ`) size: relation files, SLRU files
/// and WAL segments are all made of such pages.
pub const PAGE: u32 = 8192;

/// A server to take a base backup of, and the name of its directory in the snapshot.
#[derive(Clone, Debug)]
pub struct PgBaseSource {
    pub name: String,
    /// A libpq connection string or `postgresql://` URL (a user with the REPLICATION
    /// attribute; no database needed).
    pub conn: String,
}

/// Arguments of `pg_basebackup`: tar format to standard output, the WAL it needs inside
/// (`fetch`), an immediate checkpoint (the snapshot's other sources wait for it), never a
/// password prompt.
pub const PG_BASEBACKUP_OPTIONS: [&str; 6] = [
    "--pgdata=-",
    "--format=tar",
    "--wal-method=fetch",
    "--checkpoint=fast",
    "--no-password",
    "--verbose",
];

impl PgBaseSource {
    /// The `pg_basebackup` command that streams this server's base backup.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new("pg_basebackup");
        cmd.args(PG_BASEBACKUP_OPTIONS)
            .arg(format!("--label=strata {}", self.name))
            .arg(format!("--dbname={}", self.conn));
        cmd
    }
}

/// What a base backup records about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BaseInfo {
    /// Where replay must begin (`START WAL LOCATION` of `backup_label`).
    pub start_lsn: Lsn,
    /// Where the backup ends: replay must reach it before the copy is consistent.
    pub stop_lsn: Lsn,
    pub timeline: u32,
    /// The WAL segment size of the cluster, in bytes.
    pub seg_size: u64,
    /// The cluster's major version (`PG_VERSION`).
    pub server_version: String,
    /// When the backup began, as `backup_label` says (`START TIME`).
    pub start_time: String,
    /// When `pg_basebackup` had sent everything, in nanoseconds since the epoch: no recovery
    /// target before it can be reached from this backup.
    pub stop_time_ns: i64,
}

const START_LSN: &str = "start lsn";
const STOP_LSN: &str = "stop lsn";
const TIMELINE: &str = "timeline";
const SEG_SIZE: &str = "wal segment size";
const SERVER_VERSION: &str = "server version";
const START_TIME: &str = "start time";
const STOP_TIME: &str = "stop time";
const START_WAL: &str = "start wal file";

impl BaseInfo {
    /// The first WAL segment a recovery from this backup needs.
    pub fn start_segment(&self) -> String {
        segment_name(
            self.timeline,
            self.start_lsn.segment(self.seg_size),
            self.seg_size,
        )
    }

    /// The source details that record it.
    pub fn details(&self) -> Vec<(String, String)> {
        let stop = chrono::DateTime::from_timestamp_nanos(self.stop_time_ns);
        vec![
            (START_LSN.into(), self.start_lsn.to_string()),
            (STOP_LSN.into(), self.stop_lsn.to_string()),
            (TIMELINE.into(), self.timeline.to_string()),
            (START_WAL.into(), self.start_segment()),
            (SEG_SIZE.into(), self.seg_size.to_string()),
            (SERVER_VERSION.into(), self.server_version.clone()),
            (START_TIME.into(), self.start_time.clone()),
            (
                STOP_TIME.into(),
                stop.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
            ),
        ]
    }

    /// Reads what [`details`](Self::details) recorded (untrusted: every value is checked).
    pub fn from_details(details: &[(String, String)]) -> Result<BaseInfo> {
        let get = |key: &str| {
            details
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
                .ok_or_else(|| Error::corrupt(format!("base backup without its {key:?}")))
        };
        let number = |key: &str| {
            get(key)?
                .parse::<u64>()
                .map_err(|_| Error::corrupt(format!("base backup: {key:?} is not a number")))
        };
        let seg_size = number(SEG_SIZE)?;
        if !seg_size.is_power_of_two() || !(1 << 20..=1 << 30).contains(&seg_size) {
            return Err(Error::corrupt(format!(
                "base backup: WAL segment size {seg_size} is not a power of two from 1 MiB to \
                 1 GiB"
            )));
        }
        let timeline = u32::try_from(number(TIMELINE)?)
            .map_err(|_| Error::corrupt("base backup: timeline out of range"))?;
        let stop_time_ns = chrono::DateTime::parse_from_rfc3339(get(STOP_TIME)?)
            .ok()
            .and_then(|t| t.timestamp_nanos_opt())
            .ok_or_else(|| Error::corrupt("base backup: unreadable stop time"))?;
        Ok(BaseInfo {
            start_lsn: Lsn::parse(get(START_LSN)?)?,
            stop_lsn: Lsn::parse(get(STOP_LSN)?)?,
            timeline,
            seg_size,
            server_version: get(SERVER_VERSION)?.to_string(),
            start_time: get(START_TIME)?.to_string(),
            stop_time_ns,
        })
    }
}

/// The files of a base backup's stream that say what it is, gathered as it is read.
#[derive(Default, Debug)]
pub struct BaseFacts {
    pub backup_label: Option<String>,
    pub backup_manifest: Option<Vec<u8>>,
    pub pg_version: Option<String>,
    /// The size of a WAL segment found in `pg_wal/`.
    pub seg_size: Option<u64>,
    /// The end position `pg_basebackup --verbose` printed (`write-ahead log end point`).
    pub printed_stop: Option<Lsn>,
}

/// Whether the file at `path` (relative to the data directory) is one [`BaseFacts`] keeps,
/// and so must be held in memory as it is stored.
pub fn kept(path: &str) -> bool {
    matches!(path, "backup_label" | "backup_manifest" | "PG_VERSION")
}

impl BaseFacts {
    /// Takes note of a file of the stream; `bytes` is its content when [`kept`] said so.
    pub fn note(&mut self, path: &str, size: u64, bytes: Option<Vec<u8>>) {
        match (path, bytes) {
            ("backup_label", Some(b)) => {
                self.backup_label = Some(String::from_utf8_lossy(&b).into_owned())
            }
            ("backup_manifest", Some(b)) => self.backup_manifest = Some(b),
            ("PG_VERSION", Some(b)) => {
                self.pg_version = Some(String::from_utf8_lossy(&b).trim().to_string())
            }
            _ => {
                let file = path.strip_prefix("pg_wal/").unwrap_or("");
                if parse_segment_name(file, 16 << 20).is_some() && size.is_power_of_two() {
                    self.seg_size = Some(size);
                }
            }
        }
    }

    /// Reads `pg_basebackup --verbose`'s standard error for the end position.
    pub fn note_stderr(&mut self, text: &str) {
        const END: &str = "write-ahead log end point: ";
        self.printed_stop = text
            .lines()
            .find_map(|l| l.split_once(END))
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .and_then(|l| Lsn::parse(l).ok());
    }

    /// What the backup is, from what was gathered; `stop_time_ns` is when the stream ended.
    pub fn info(&self, stop_time_ns: i64) -> Result<BaseInfo> {
        let label = self.backup_label.as_deref().ok_or_else(|| {
            Error::invalid("the base backup has no backup_label: not a pg_basebackup stream?")
        })?;
        let field = |key: &str| {
            label
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .map(str::trim)
                .ok_or_else(|| Error::invalid(format!("backup_label has no {key:?} line")))
        };
        // "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)"
        let start_line = field("START WAL LOCATION:")?;
        let start_lsn = Lsn::parse(start_line.split_whitespace().next().unwrap_or(""))?;
        let start_file = start_line
            .split_once("(file ")
            .and_then(|(_, f)| f.strip_suffix(')'))
            .unwrap_or("")
            .to_string();
        let timeline: u32 = field("START TIMELINE:")?
            .parse()
            .map_err(|_| Error::invalid("backup_label: unreadable START TIMELINE"))?;
        let stop_lsn = match self.backup_manifest.as_deref().map(manifest_end) {
            Some(Some(l)) => l,
            _ => self.printed_stop.ok_or_else(|| {
                Error::invalid(
                    "neither backup_manifest nor pg_basebackup said where the backup ends",
                )
            })?,
        };
        let seg_size = match self.seg_size {
            Some(s) => s,
            None => seg_size_from(start_lsn, timeline, &start_file).ok_or_else(|| {
                Error::invalid(format!(
                    "cannot tell the WAL segment size: {start_file:?} does not name the \
                     segment of {start_lsn}"
                ))
            })?,
        };
        if stop_lsn < start_lsn {
            return Err(Error::invalid(format!(
                "the base backup ends ({stop_lsn}) before it starts ({start_lsn})"
            )));
        }
        Ok(BaseInfo {
            start_lsn,
            stop_lsn,
            timeline,
            seg_size,
            server_version: self.pg_version.clone().unwrap_or_default(),
            start_time: field("START TIME:")?.to_string(),
            stop_time_ns,
        })
    }
}

/// The end of the last WAL range a `backup_manifest` names.
fn manifest_end(bytes: &[u8]) -> Option<Lsn> {
    let v: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    let ranges = v.get("WAL-Ranges")?.as_array()?;
    ranges
        .iter()
        .filter_map(|r| Lsn::parse(r.get("End-LSN")?.as_str()?).ok())
        .max()
}

/// The segment size with which `start` falls in the file `name` (the smallest that fits).
fn seg_size_from(start: Lsn, timeline: u32, name: &str) -> Option<u64> {
    (20..=30)
        .map(|b| 1u64 << b)
        .find(|&s| segment_name(timeline, start.segment(s), s) == name)
}

/// A base backup found in a snapshot.
#[derive(Clone, Debug)]
pub struct FoundBase {
    pub snapshot: crate::id::SnapshotId,
    /// Its directory in the snapshot.
    pub name: String,
    pub info: BaseInfo,
}

/// The base backups `manifest` (snapshot `id`) holds.
pub fn bases_in(id: &crate::id::SnapshotId, manifest: &Manifest) -> Result<Vec<FoundBase>> {
    manifest
        .sources
        .iter()
        .filter(|s| s.kind == SourceKind::PgBase)
        .map(|s| {
            Ok(FoundBase {
                snapshot: *id,
                name: s.name.clone(),
                info: BaseInfo::from_details(&s.details).map_err(|e| {
                    Error::corrupt(format!("snapshot {}, {}: {e}", id.short(), s.name))
                })?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LABEL: &str = "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n\
        CHECKPOINT LOCATION: 0/2000060\nBACKUP METHOD: streamed\nBACKUP FROM: primary\n\
        START TIME: 2026-12-08 02:05:36 UTC\nLABEL: pg_basebackup base backup\n\
        START TIMELINE: 1\n";

    #[test]
    fn a_backup_reads_what_it_is_from_its_stream() {
        let mut facts = BaseFacts::default();
        facts.note("backup_label", 225, Some(LABEL.as_bytes().to_vec()));
        facts.note("PG_VERSION", 3, Some(b"15\n".to_vec()));
        facts.note(
            "backup_manifest",
            100,
            Some(
                br#"{"WAL-Ranges": [{ "Timeline": 1, "Start-LSN": "0/2000028", "End-LSN": "0/2000100" }]}"#
                    .to_vec(),
            ),
        );
        facts.note("pg_wal/000000010000000000000002", 16 << 20, None);
        let info = facts.info(1_000).unwrap();
        assert_eq!(info.start_lsn, Lsn(0x200_0028));
        assert_eq!(info.stop_lsn, Lsn(0x200_0100));
        assert_eq!((info.timeline, info.seg_size), (1, 16 << 20));
        assert_eq!(info.server_version, "15");
        assert_eq!(info.start_segment(), "000000010000000000000002");
        // Recorded and read back.
        assert_eq!(BaseInfo::from_details(&info.details()).unwrap(), info);
    }

    #[test]
    fn without_a_manifest_the_printed_end_and_the_label_suffice() {
        let mut facts = BaseFacts::default();
        facts.note("backup_label", 225, Some(LABEL.as_bytes().to_vec()));
        facts.note_stderr(
            "pg_basebackup: write-ahead log start point: 0/2000028 on timeline 1\n\
             pg_basebackup: write-ahead log end point: 0/2000100\n",
        );
        let info = facts.info(0).unwrap();
        assert_eq!(info.stop_lsn, Lsn(0x200_0100));
        assert_eq!(
            info.seg_size,
            16 << 20,
            "the size with which the label's file holds its start"
        );
        // No label at all: a clear error.
        assert!(BaseFacts::default().info(0).is_err());
    }

    #[test]
    fn damaged_details_are_refused() {
        let mut facts = BaseFacts::default();
        facts.note("backup_label", 225, Some(LABEL.as_bytes().to_vec()));
        facts.note_stderr("write-ahead log end point: 0/2000100");
        let good = facts.info(0).unwrap().details();
        for (key, bad) in [
            (SEG_SIZE, "12345"),
            (TIMELINE, "x"),
            (START_LSN, "0/"),
            (STOP_TIME, "yesterday"),
        ] {
            let mut d = good.clone();
            d.iter_mut().find(|(k, _)| k == key).unwrap().1 = bad.into();
            assert!(BaseInfo::from_details(&d).is_err(), "{key} = {bad}");
        }
    }
}

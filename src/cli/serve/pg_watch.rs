//! What the daemon watches of PostgreSQL: the archive's newest WAL segment and when it came,
//! each base backup's age, and, with `[postgres_archive] db`, the server's own view of its
//! archiver (`pg_stat_archiver`) and its WAL position. Looked at every `check_every` by a
//! thread of its own (a slow server must not hold up the scheduler), for `/api/postgres`,
//! `/metrics` and `/health`.
//!
//! `/health` is degraded only with `[postgres_archive]` configured, when
//! - archiving stalled: the server wrote WAL (its position moved) and for longer than
//!   `stall_after` since then no newer segment reached the archive. A server that wrote a few
//!   records and went idle does not switch segments by itself: `archive_timeout` (below
//!   `stall_after`) makes it. Without `db` the daemon cannot see the server's position and
//!   takes the server to be always writing: the newest segment older than `stall_after` is
//!   then enough;
//! - the archiver is failing: `failed_count` rose, and no segment was archived after the last
//!   failure;
//! - the server cannot be asked (with `db`).
//!
//! The repository is read cheaply: the newest segment from the index's table of archived
//! names (one manifest decoded), base backups from the manifests of snapshots not seen before
//! (each decoded once; archived WAL files are skipped by that same table).

use super::Daemon;
use super::config::PgArchive;
use super::metrics::{Metrics, NameLabel};
use anyhow::{Context, Result, anyhow, bail};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use strata::id::SnapshotId;
use strata::pg::base::{FoundBase, bases_in};
use strata::pg::lsn::Lsn;

/// How often the repository is looked at without `[postgres_archive]`.
const DEFAULT_CHECK_EVERY_S: i64 = 30;
/// The longest a query of the server may take.
const PSQL_TIMEOUT: Duration = Duration::from_secs(20);

/// The watcher's state, behind one lock.
pub struct PgWatch {
    cfg: Option<PgArchive>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The base backups each snapshot holds (most hold none), so a manifest is decoded once.
    seen: HashMap<SnapshotId, Vec<FoundBase>>,
    newest: Option<Segment>,
    bases: Vec<Base>,
    server: Option<ServerStats>,
    repo_error: Option<String>,
    server_error: Option<String>,
    /// The server's position when the archive's newest segment was first seen.
    baseline: Option<Lsn>,
    /// When the server was first seen to have written WAL the archive has not had a newer
    /// segment since (ns since the epoch).
    unarchived_since_ns: Option<i64>,
    /// `failed_count` rose and nothing was archived after the last failure.
    failing: bool,
    /// What the last check found wrong.
    reasons: Vec<String>,
    checked_ns: Option<i64>,
}

/// The archive's newest segment.
#[derive(Clone, Serialize)]
pub struct Segment {
    name: String,
    snapshot: String,
    /// When it was archived.
    time: String,
    age_s: i64,
    #[serde(skip)]
    time_ns: i64,
}

/// The newest base backup of one name.
#[derive(Clone, Serialize)]
pub struct Base {
    name: String,
    snapshot: String,
    stop_time: String,
    stop_lsn: String,
    timeline: u32,
    age_s: i64,
    #[serde(skip)]
    stop_ns: i64,
}

/// What the server says of its archiver (`pg_stat_archiver`) and where its WAL is.
#[derive(Clone, Serialize)]
pub struct ServerStats {
    archived_count: u64,
    failed_count: u64,
    last_archived_wal: Option<String>,
    last_archived_time: Option<String>,
    last_failed_wal: Option<String>,
    last_failed_time: Option<String>,
    wal_lsn: String,
    #[serde(skip)]
    last_archived_ms: Option<i64>,
    #[serde(skip)]
    last_failed_ms: Option<i64>,
    #[serde(skip)]
    lsn: Lsn,
}

/// `GET /api/postgres`.
#[derive(Serialize)]
pub struct Report {
    /// When the archive and server were last looked at (absent before the first look).
    checked: Option<String>,
    /// Whether `[postgres_archive]` is configured (health checks on).
    monitored: bool,
    stall_after_s: Option<i64>,
    newest_segment: Option<Segment>,
    base_backups: Vec<Base>,
    /// Absent without `db`, or when the server could not be asked.
    server: Option<ServerStats>,
    error: Option<String>,
    reasons: Vec<String>,
}

fn rfc3339_ns(ns: i64) -> String {
    chrono::DateTime::from_timestamp_nanos(ns).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn now_ns() -> i64 {
    chrono::Utc::now().timestamp_nanos_opt().unwrap_or(i64::MAX)
}

fn age_s(now_ns: i64, then_ns: i64) -> i64 {
    (now_ns.saturating_sub(then_ns) / 1_000_000_000).max(0)
}

impl PgWatch {
    pub fn new(cfg: Option<PgArchive>) -> PgWatch {
        PgWatch {
            cfg,
            state: Mutex::new(State::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Looks at the repository and the server every `check_every` until the daemon stops.
    pub fn start(daemon: std::sync::Arc<Daemon>) -> Result<()> {
        let every = daemon
            .cfg
            .pg_archive
            .as_ref()
            .map_or(DEFAULT_CHECK_EVERY_S, |p| p.check_every_s);
        let every = Duration::from_secs(every.max(1) as u64);
        std::thread::Builder::new()
            .name("pg-watch".into())
            .spawn(move || {
                while !daemon.stopping.load(Ordering::SeqCst) {
                    daemon.pg_watch.check(&daemon);
                    let until = Instant::now() + every;
                    while Instant::now() < until && !daemon.stopping.load(Ordering::SeqCst) {
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            })
            .context("starting the PostgreSQL watcher")?;
        Ok(())
    }

    /// One look at the repository and (with `db`) the server.
    pub fn check(&self, daemon: &Daemon) {
        let repo = self.read_repository(daemon);
        let server = self
            .cfg
            .as_ref()
            .and_then(|c| c.db.as_deref())
            .map(query_server);
        let now = now_ns();
        let mut st = self.lock();
        match repo {
            Ok((newest, bases)) => {
                if newest.as_ref().map(|s| &s.name) != st.newest.as_ref().map(|s| &s.name) {
                    // A newer segment came: what the server wrote so far counts as archived.
                    st.baseline = None;
                    st.unarchived_since_ns = None;
                }
                st.newest = newest;
                st.bases = bases;
                st.repo_error = None;
            }
            Err(e) => st.repo_error = Some(format!("{e:#}")),
        }
        match server {
            Some(Ok(s)) => {
                let rose = st
                    .server
                    .as_ref()
                    .is_some_and(|p| s.failed_count > p.failed_count);
                let archived_after_failure = match (s.last_archived_ms, s.last_failed_ms) {
                    (Some(a), Some(f)) => a > f,
                    (_, None) => true,
                    (None, Some(_)) => false,
                };
                st.failing = (st.failing || rose) && !archived_after_failure;
                match st.baseline {
                    None => st.baseline = Some(s.lsn),
                    Some(b) if b != s.lsn && st.unarchived_since_ns.is_none() => {
                        st.unarchived_since_ns = Some(now)
                    }
                    Some(_) => {}
                }
                st.server = Some(s);
                st.server_error = None;
            }
            Some(Err(e)) => {
                st.server = None;
                st.server_error = Some(format!("{e:#}"));
            }
            None => {}
        }
        let started = daemon.started.timestamp_nanos_opt().unwrap_or(0);
        st.reasons = self.reasons(&st, now, started);
        st.checked_ns = Some(now);
    }

    /// The archive's newest segment, and the newest base backup of each name.
    fn read_repository(&self, daemon: &Daemon) -> Result<(Option<Segment>, Vec<Base>)> {
        let repo = daemon.open_read()?;
        let newest = strata::pg::archive::newest_segment(&repo)?.map(|(name, id, m)| Segment {
            name,
            snapshot: id.to_hex(),
            time: rfc3339_ns(m.time_ns),
            age_s: 0,
            time_ns: m.time_ns,
        });
        let txn = repo.index.read()?;
        let ids = strata::index::snapshot_ids(&txn)?;
        let wal = strata::index::pg_wal_ids(&txn)?.unwrap_or_default();
        let mut st = self.lock();
        st.seen.retain(|id, _| ids.contains(id));
        for id in ids {
            if st.seen.contains_key(&id) {
                continue;
            }
            let found = if wal.contains(&id) {
                Vec::new()
            } else {
                match strata::index::snapshot_manifest(&txn, &id)? {
                    Some(bytes) => {
                        let m = strata::manifest::Manifest::decode(&bytes, Some(&id), repo.keys())?;
                        bases_in(&id, &m)?
                    }
                    None => Vec::new(),
                }
            };
            st.seen.insert(id, found);
        }
        let mut by_name: BTreeMap<&str, &FoundBase> = BTreeMap::new();
        for b in st.seen.values().flatten() {
            let newer = by_name
                .get(b.name.as_str())
                .is_none_or(|o| b.info.stop_time_ns > o.info.stop_time_ns);
            if newer {
                by_name.insert(&b.name, b);
            }
        }
        let bases = by_name
            .into_values()
            .map(|b| Base {
                name: b.name.clone(),
                snapshot: b.snapshot.to_hex(),
                stop_time: rfc3339_ns(b.info.stop_time_ns),
                stop_lsn: b.info.stop_lsn.to_string(),
                timeline: b.info.timeline,
                age_s: 0,
                stop_ns: b.info.stop_time_ns,
            })
            .collect();
        Ok((newest, bases))
    }

    /// Why `/health` should say degraded, after a check at `now`.
    fn reasons(&self, st: &State, now: i64, started_ns: i64) -> Vec<String> {
        let Some(cfg) = &self.cfg else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let limit = cfg.stall_after_s;
        let newest = match &st.newest {
            Some(s) => format!("the newest, {}, came {} ago", s.name, ago(now, s.time_ns)),
            None => "the archive holds none".to_string(),
        };
        if let Some(e) = &st.repo_error {
            out.push(format!(
                "PostgreSQL archive: cannot read the repository: {e}"
            ));
        }
        if cfg.db.is_some() {
            if let Some(e) = &st.server_error {
                out.push(format!("PostgreSQL archive: cannot ask the server: {e}"));
            }
            if let (Some(since), Some(s)) = (st.unarchived_since_ns, &st.server)
                && age_s(now, since) > limit
            {
                out.push(format!(
                    "PostgreSQL archive: stalled: the server has written WAL since {} ago (now \
                     at {}) and no newer segment was archived ({newest}; threshold {})",
                    ago(now, since),
                    s.wal_lsn,
                    super::human_seconds(limit)
                ));
            }
        } else {
            let last = st.newest.as_ref().map_or(started_ns, |s| s.time_ns);
            if age_s(now, last) > limit {
                out.push(format!(
                    "PostgreSQL archive: no segment for longer than {} ({newest})",
                    super::human_seconds(limit)
                ));
            }
        }
        if st.failing
            && let Some(s) = &st.server
        {
            out.push(format!(
                "PostgreSQL archive: the server's archiver is failing: {} failures, the last \
                 for {} at {}; see the server's log",
                s.failed_count,
                s.last_failed_wal.as_deref().unwrap_or("?"),
                s.last_failed_time.as_deref().unwrap_or("?")
            ));
        }
        out
    }

    /// Reasons for `/health` to say degraded (as of the last check).
    pub fn health(&self) -> Vec<String> {
        self.lock().reasons.clone()
    }

    /// What `/api/postgres` answers, ages as of now.
    pub fn report(&self) -> Report {
        let now = now_ns();
        let st = self.lock();
        Report {
            checked: st.checked_ns.map(rfc3339_ns),
            monitored: self.cfg.is_some(),
            stall_after_s: self.cfg.as_ref().map(|c| c.stall_after_s),
            newest_segment: st.newest.clone().map(|mut s| {
                s.age_s = age_s(now, s.time_ns);
                s
            }),
            base_backups: st
                .bases
                .iter()
                .cloned()
                .map(|mut b| {
                    b.age_s = age_s(now, b.stop_ns);
                    b
                })
                .collect(),
            server: st.server.clone(),
            error: st.repo_error.clone().or_else(|| st.server_error.clone()),
            reasons: st.reasons.clone(),
        }
    }

    /// Sets the PostgreSQL series of `/metrics`, ages as of now. Nothing is set until the
    /// repository holds something of PostgreSQL's.
    pub fn update_metrics(&self, m: &Metrics) {
        let now = now_ns();
        let st = self.lock();
        if let Some(s) = &st.newest {
            m.pg_newest_age
                .get_or_create(&Vec::new())
                .set(now.saturating_sub(s.time_ns) as f64 / 1e9);
        }
        for b in &st.bases {
            m.pg_base_age
                .get_or_create(&NameLabel {
                    name: b.name.clone(),
                })
                .set(now.saturating_sub(b.stop_ns) as f64 / 1e9);
        }
        if let Some(s) = &st.server {
            // The server's counters, as counters: they only move forward here (a reset of the
            // server's statistics starts them again from where they were).
            for (family, value) in [
                (&m.pg_archived, s.archived_count),
                (&m.pg_failed, s.failed_count),
            ] {
                let c = family.get_or_create(&Vec::new());
                let had = c.get();
                if value > had {
                    c.inc_by(value - had);
                }
            }
        }
        if self.cfg.is_some() {
            m.pg_archive_ok
                .get_or_create(&Vec::new())
                .set(i64::from(st.reasons.is_empty()));
        }
    }
}

/// `ns` before `now`, for people.
fn ago(now: i64, ns: i64) -> String {
    super::human_seconds(age_s(now, ns))
}

/// The query: one line of `|`-separated fields (`psql -A -t`). Times as milliseconds since the
/// epoch, so they need no parsing of PostgreSQL's date styles.
const STATS_SQL: &str = "SELECT archived_count, failed_count, \
     coalesce(last_archived_wal, ''), \
     coalesce(floor(extract(epoch FROM last_archived_time) * 1000)::bigint::text, ''), \
     coalesce(last_failed_wal, ''), \
     coalesce(floor(extract(epoch FROM last_failed_time) * 1000)::bigint::text, ''), \
     coalesce((CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() \
       ELSE pg_current_wal_lsn() END)::text, '') \
     FROM pg_stat_archiver";

/// Asks the server `db` reaches for its archiver's statistics and its WAL position.
fn query_server(db: &str) -> Result<ServerStats> {
    let mut child = Command::new("psql")
        .args([
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            db,
            "-c",
        ])
        .arg(STATS_SQL)
        // Never a prompt, and never a query that hangs the watcher.
        .env("PGCONNECT_TIMEOUT", "10")
        .env("PGOPTIONS", "-c statement_timeout=10s")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running psql (install PostgreSQL's client)")?;
    let until = Instant::now() + PSQL_TIMEOUT;
    while child.try_wait()?.is_none() {
        if Instant::now() >= until {
            let _ = child.kill();
            let _ = child.wait();
            bail!("psql gave no answer in {} s", PSQL_TIMEOUT.as_secs());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        bail!("psql: {}", err.trim());
    }
    parse_stats(&String::from_utf8_lossy(&out.stdout))
}

/// Reads [`STATS_SQL`]'s answer (untrusted: each field is checked).
fn parse_stats(text: &str) -> Result<ServerStats> {
    let line = text.trim();
    let f: Vec<&str> = line.split('|').collect();
    let [archived, failed, a_wal, a_ms, f_wal, f_ms, lsn] = f.as_slice() else {
        bail!("psql answered {line:?}, not the archiver's 7 fields");
    };
    let count = |s: &str, what: &str| {
        s.parse::<u64>()
            .map_err(|_| anyhow!("psql answered {s:?} for {what}, not a count"))
    };
    let ms = |s: &str| -> Result<Option<i64>> {
        if s.is_empty() {
            return Ok(None);
        }
        s.parse::<i64>()
            .map(Some)
            .map_err(|_| anyhow!("psql answered {s:?} for a time, not milliseconds"))
    };
    let wal = |s: &str| -> Result<Option<String>> {
        if s.is_empty() {
            return Ok(None);
        }
        strata::pg::archive::check_name(s)?;
        Ok(Some(s.to_string()))
    };
    let time = |v: Option<i64>| {
        v.and_then(chrono::DateTime::from_timestamp_millis)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
    };
    let lsn = Lsn::parse(lsn).map_err(|e| anyhow!("the server's WAL position: {e}"))?;
    let (last_archived_ms, last_failed_ms) = (ms(a_ms)?, ms(f_ms)?);
    Ok(ServerStats {
        archived_count: count(archived, "archived_count")?,
        failed_count: count(failed, "failed_count")?,
        last_archived_wal: wal(a_wal)?,
        last_archived_time: time(last_archived_ms),
        last_failed_wal: wal(f_wal)?,
        last_failed_time: time(last_failed_ms),
        wal_lsn: lsn.to_string(),
        last_archived_ms,
        last_failed_ms,
        lsn,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_archivers_answer_and_refuses_anything_else() {
        let s = parse_stats(
            "12|3|00000001000000000000000C|1765000000123|00000001000000000000000D|1765000001000|0/D000060\n",
        )
        .unwrap();
        assert_eq!((s.archived_count, s.failed_count), (12, 3));
        assert_eq!(
            s.last_failed_wal.as_deref(),
            Some("00000001000000000000000D")
        );
        assert_eq!(s.last_archived_ms, Some(1_765_000_000_123));
        assert_eq!(s.lsn, Lsn(0xD00_0060));
        let fresh = parse_stats("0|0|||||0/1000000").unwrap();
        assert!(fresh.last_archived_wal.is_none() && fresh.last_failed_ms.is_none());
        for bad in [
            "",
            "1|2|3",
            "x|0|||||0/1",
            "0|0|../etc/passwd||||0/1",
            "0|0||soon|||0/1",
            "0|0|||||nowhere",
            "0|0|||||0/1|extra",
        ] {
            assert!(parse_stats(bad).is_err(), "{bad:?}");
        }
    }

    fn watch(db: Option<&str>) -> PgWatch {
        PgWatch::new(Some(PgArchive {
            db: db.map(str::to_string),
            stall_after_s: 600,
            check_every_s: 1,
        }))
    }

    #[test]
    fn a_stall_needs_written_wal_older_than_the_limit() {
        let w = watch(Some("db"));
        let now = 10_000 * 1_000_000_000i64;
        let mut st = State {
            newest: Some(Segment {
                name: "000000010000000000000003".into(),
                snapshot: String::new(),
                time: String::new(),
                age_s: 0,
                time_ns: now - 3600 * 1_000_000_000,
            }),
            server: Some(parse_stats("3|0|||||0/3000000").unwrap()),
            ..State::default()
        };
        // An old segment alone is an idle server.
        assert!(w.reasons(&st, now, 0).is_empty());
        st.unarchived_since_ns = Some(now - 60 * 1_000_000_000);
        assert!(w.reasons(&st, now, 0).is_empty());
        st.unarchived_since_ns = Some(now - 601 * 1_000_000_000);
        let r = w.reasons(&st, now, 0);
        assert!(r.len() == 1 && r[0].contains("stalled"), "{r:?}");
        // Without db, age alone decides; without the section, nothing does.
        st.unarchived_since_ns = None;
        assert!(watch(None).reasons(&st, now, 0)[0].contains("no segment"));
        assert!(PgWatch::new(None).reasons(&st, now, 0).is_empty());
    }
}

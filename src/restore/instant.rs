//! A followed database as it was at an instant: the newest snapshot of it whose image ends at a
//! place of the log that its journal knows (see `crate::follow::attached`), committed at or
//! before the instant, with the journal's transactions committed after that place and up to the
//! instant put over it. The journal says when each transaction was committed (as the follower
//! saw it, within a few milliseconds), so an instant names one committed state.

use crate::error::{Error, IoContext, Result};
use crate::follow::attached::attached;
use crate::follow::follower::Status;
use crate::follow::journal::{self, Chain, Reach};
use crate::repo::Repo;
use crate::snapshots::Snapshot;
use crate::source::wal::LogPos;
use std::path::{Path, PathBuf};

/// A time for messages: local, to the millisecond.
pub fn format_ns(ns: i64) -> String {
    chrono::DateTime::from_timestamp_nanos(ns)
        .with_timezone(&chrono::Local)
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, false)
}

/// A restore of a followed database to an instant.
pub struct Plan<'s> {
    pub snapshot: &'s Snapshot,
    /// The database's path in the snapshot.
    pub entry: String,
    /// When the snapshot's image was committed.
    pub base_ns: i64,
    pub chain: Chain,
    pub journal: PathBuf,
}

/// The source file a snapshot's entry came from (absolute), if it came from a path here.
pub fn original_path(snap: &Snapshot, entry: &str) -> Option<PathBuf> {
    let entry = entry.trim_matches('/');
    let (first, rest) = entry.split_once('/').unwrap_or((entry, ""));
    let source = snap.manifest.sources.iter().find(|s| s.name == first)?;
    let base = Path::new(&source.path);
    if !base.is_absolute() {
        return None;
    }
    Some(match rest {
        "" => base.to_path_buf(),
        r => base.join(r),
    })
}

/// The journal of a followed database (`entry`, its path in the snapshots) and the snapshots
/// that are starting points in it, with how far the journal goes from each; `None` when it has
/// no journal here.
struct Starts<'s> {
    dir: PathBuf,
    starts: Vec<(&'s Snapshot, LogPos, Reach)>,
}

fn starts<'s>(repo: &Repo, snaps: &'s [Snapshot], entry: &str) -> Result<Option<Starts<'s>>> {
    let holds = |s: &Snapshot| {
        s.manifest
            .entries
            .iter()
            .any(|e| e.path == entry.as_bytes() && e.page_size > 0)
    };
    let Some(newest) = snaps.iter().rev().find(|s| holds(s)) else {
        return Ok(None);
    };
    let Some(abs) = original_path(newest, entry) else {
        return Ok(None);
    };
    let dir = crate::follow::journal_dir(repo, &abs);
    let mut starts = starts_in(&dir, snaps)?;
    if starts.is_empty() {
        return Ok(None);
    }
    starts.retain(|(s, _, _)| holds(s));
    Ok(Some(Starts { dir, starts }))
}

/// The snapshots noted in the journal in `dir` that are among `snaps`, where their images end
/// and how far the journal goes from there.
fn starts_in<'s>(dir: &Path, snaps: &'s [Snapshot]) -> Result<Vec<(&'s Snapshot, LogPos, Reach)>> {
    let notes = attached(dir);
    if notes.is_empty() {
        return Ok(Vec::new());
    }
    let places: Vec<LogPos> = notes.iter().map(|n| n.1).collect();
    let reach = journal::reach(dir, &places)?;
    Ok(notes
        .iter()
        .filter_map(|(id, pos)| {
            let snap = snaps.iter().find(|s| s.id.to_string() == *id)?;
            Some((snap, *pos, *reach.get(pos)?))
        })
        .collect())
}

/// When the follower last read the log to its end, while it had a place in it.
fn caught_up_ns(status: Option<&Status>) -> Option<i64> {
    status
        .filter(|s| s.following)
        .map(|s| s.caught_up_ms.saturating_mul(1_000_000))
}

/// Whether the follower is writing its journal now: it says it runs, and read the log within
/// the last 10 s (one killed says it runs, but stops reading).
fn follower_running(status: Option<&Status>) -> bool {
    status.is_some_and(|s| {
        s.running && chrono::Utc::now().timestamp_millis() - s.caught_up_ms < 10_000
    })
}

/// A span of time a followed database can be restored to any instant of.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Span {
    pub from_ns: i64,
    pub to_ns: i64,
    /// Its end is now: a follower is still writing the journal (`to_ns` is when it last read
    /// the log, which it does at least every second).
    pub following: bool,
}

/// The spans of time `entry` (a database's path in the snapshots) can be restored to, oldest
/// first, as `restore --at` sees them; empty when it has no journal here.
pub fn spans(repo: &Repo, snaps: &[Snapshot], entry: &str) -> Result<Vec<Span>> {
    let entry = entry.trim_matches('/');
    match starts(repo, snaps, entry)? {
        Some(s) => Ok(merge(&s.dir, &s.starts)),
        None => Ok(Vec::new()),
    }
}

/// The spans of time the database whose journal is in `dir` can be restored to, from the
/// snapshots of `snaps` noted there.
pub fn spans_in(dir: &Path, snaps: &[Snapshot]) -> Result<Vec<Span>> {
    Ok(merge(dir, &starts_in(dir, snaps)?))
}

/// Each starting point's span, merged where they meet, oldest first.
fn merge(dir: &Path, starts: &[(&Snapshot, LogPos, Reach)]) -> Vec<Span> {
    let status = crate::follow::status(dir);
    let live = caught_up_ns(status.as_ref());
    let running = follower_running(status.as_ref());
    let mut spans: Vec<Span> = starts
        .iter()
        .map(|(_, _, r)| match (r.last, live) {
            (true, Some(now)) if now >= r.to_ns => Span {
                from_ns: r.from_ns,
                to_ns: now,
                following: running,
            },
            _ => Span {
                from_ns: r.from_ns,
                to_ns: r.to_ns,
                following: false,
            },
        })
        .collect();
    spans.sort_by_key(|s| s.from_ns);
    let mut out: Vec<Span> = Vec::new();
    for s in spans {
        match out.last_mut() {
            Some(l) if s.from_ns <= l.to_ns => {
                if s.to_ns >= l.to_ns {
                    l.to_ns = s.to_ns;
                    l.following = s.following;
                }
            }
            _ => out.push(s),
        }
    }
    out
}

/// How to restore `entry` (a database's path in the snapshots) as it was at `at_ns`; `None`
/// when it has no journal here, or no snapshot of it is a starting point at or before then.
/// An instant past what the journal covers is an error that says how far it goes.
pub fn plan<'s>(
    repo: &Repo,
    snaps: &'s [Snapshot],
    entry: &str,
    at_ns: i64,
) -> Result<Option<Plan<'s>>> {
    let entry = entry.trim_matches('/').to_string();
    let Some(Starts { dir, starts }) = starts(repo, snaps, &entry)? else {
        return Ok(None);
    };
    // The newest snapshot whose image was committed at or before the instant.
    let Some((snapshot, pos, base_ns)) = starts
        .iter()
        .filter(|(_, _, r)| r.from_ns <= at_ns)
        .max_by_key(|(_, _, r)| r.from_ns)
        .map(|(s, p, r)| (*s, *p, r.from_ns))
    else {
        return Ok(None);
    };
    let Some(chain) = journal::changes_until(&dir, &pos, at_ns)? else {
        return Ok(None);
    };
    // Past the chain's last transaction, the journal knows the instant only if the chain is
    // the one its follower is still writing, and that follower had read the log then.
    if !chain.more
        && (chain.broken
            || caught_up_ns(crate::follow::status(&dir).as_ref()).is_none_or(|c| c < at_ns))
    {
        let last = chain.last_ns.unwrap_or(base_ns);
        return Err(Error::not_found(format!(
            "{entry}: its journal covers only up to {} (the follower was not reading the \
             log after that); restore an earlier instant, or a snapshot",
            format_ns(last)
        )));
    }
    Ok(Some(Plan {
        snapshot,
        entry,
        base_ns,
        chain,
        journal: dir,
    }))
}

/// Writes the database of `plan` to `out` (a new file): the snapshot's image, the journal's
/// pages over it, cut to the database's size; fsynced. Returns its size.
pub fn write(repo: &Repo, plan: &Plan, out: &Path) -> Result<u64> {
    let mut file = std::fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .read(true)
        .open(out)
        .ctx("create", out)?;
    super::restore_to_writer(
        repo,
        &plan.snapshot.manifest,
        std::slice::from_ref(&plan.entry),
        &mut file,
    )?;
    let changes = &plan.chain.changes;
    let page_size = plan
        .snapshot
        .manifest
        .entries
        .iter()
        .find(|e| e.path == plan.entry.as_bytes())
        .map(|e| e.page_size)
        .ok_or_else(|| Error::not_found(format!("{} is not in the snapshot", plan.entry)))?;
    let page = page_size as u64;
    if changes.entries > 0 {
        let readers = changes.readers(page_size)?.ok_or_else(|| {
            Error::invalid(format!(
                "{}: the journal's page size is not the snapshot's",
                plan.journal.display()
            ))
        })?;
        use std::os::unix::fs::FileExt;
        let wanted = changes.pages.iter().map(|(pgno, at)| (*pgno, *at));
        changes.images(&readers, wanted, |pgno, src| {
            file.write_all_at(src, (pgno as u64 - 1) * page)
                .ctx("write", out)
        })?;
        file.set_len(changes.db_pages as u64 * page)
            .ctx("write", out)?;
    }
    file.sync_all().ctx("fsync", out)?;
    Ok(file.metadata().ctx("stat", out)?.len())
}

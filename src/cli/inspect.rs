//! `strata list`, `show`, `stats` and `diff`.

use super::output::{bytes, print_json};
use anyhow::Result;
use clap::Args;
use std::process::ExitCode;
use strata::manifest::{Content, EntryKind};
use strata::repo::Repo;
use strata::snapshots::{self, Snapshot};

#[derive(Args)]
#[command(after_help = "Examples:\n  strata stats\n  strata stats --json")]
pub struct JsonArg {
    /// Machine-readable output
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
#[command(
    after_help = "Examples:\n  strata list\n  strata list --kind hourly --latest 5\n  \
                        strata list --tag release --json"
)]
pub struct ListArgs {
    /// Only snapshots with this tag (repeatable: with every tag given)
    #[arg(long = "tag", value_name = "TAG")]
    tags: Vec<String>,
    /// Only snapshots of this kind (manual, hourly, daily, weekly, monthly, restore-point;
    /// pg-wal, PostgreSQL's archived WAL files, are listed only when asked for by kind)
    #[arg(long, value_name = "KIND")]
    kind: Option<String>,
    /// Only snapshots with this name
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// Only the N newest of those (of each group, with --group-by)
    #[arg(long, value_name = "N")]
    latest: Option<usize>,
    /// List the snapshots in groups: by kind, name, host or source (the top-level names they
    /// hold)
    #[arg(long, value_name = "KEY")]
    group_by: Option<GroupBy>,
    /// Machine-readable output
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
#[command(after_help = "Examples:\n  strata show latest\n  strata show 1a2b3c4d --json")]
pub struct ShowArgs {
    /// Snapshot: id prefix, name or `latest`
    snap: String,
    /// Print the result as JSON on standard output (for scripts)
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
#[command(
    after_help = "Examples:\n  strata diff 1a2b3c4d latest\n  strata diff nightly latest --json"
)]
pub struct DiffArgs {
    /// Older snapshot
    a: String,
    /// Newer snapshot
    b: String,
    /// Print the result as JSON on standard output (for scripts)
    #[arg(long)]
    json: bool,
}

#[derive(serde::Serialize)]
struct SourceJson {
    name: String,
    kind: &'static str,
    path: String,
    details: std::collections::BTreeMap<String, String>,
}

#[derive(serde::Serialize)]
pub(super) struct SnapJson {
    id: String,
    time: String,
    hostname: String,
    name: Option<String>,
    kind: String,
    tags: Vec<String>,
    sources: Vec<SourceJson>,
    partial: bool,
    /// Something kept changing while it was read and was recorded anyway.
    possibly_inconsistent: bool,
    /// Stores, and files that changed while they were read.
    captures: Vec<strata::manifest::Capture>,
    stats: strata::manifest::SnapshotStats,
}

pub(super) fn snap_json(s: &Snapshot) -> SnapJson {
    let m = &s.manifest;
    SnapJson {
        id: s.id.to_hex(),
        time: m.time().to_rfc3339(),
        hostname: m.hostname.clone(),
        name: m.name.clone(),
        kind: m.kind.clone(),
        tags: m.tags.clone(),
        sources: m
            .sources
            .iter()
            .map(|src| SourceJson {
                name: src.name.clone(),
                kind: src.kind.as_str(),
                path: src.path.clone(),
                details: src.details.iter().cloned().collect(),
            })
            .collect(),
        partial: !m.errors.is_empty(),
        possibly_inconsistent: m.inconsistent().next().is_some(),
        captures: m.captures.clone(),
        stats: m.stats.clone(),
    }
}

/// What `list --group-by` groups snapshots by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum GroupBy {
    Kind,
    Name,
    Host,
    Source,
}

impl GroupBy {
    fn key(self, s: &Snapshot) -> String {
        let m = &s.manifest;
        match self {
            GroupBy::Kind => m.kind.clone(),
            GroupBy::Name => m.name.clone().unwrap_or_else(|| "(no name)".into()),
            GroupBy::Host => m.hostname.clone(),
            GroupBy::Source => {
                let names: Vec<&str> = m.sources.iter().map(|s| s.name.as_str()).collect();
                names.join(",")
            }
        }
    }
}

/// Snapshots in groups, as `list --group-by --json` gives them.
#[derive(serde::Serialize)]
struct GroupJson {
    group: String,
    snapshots: Vec<SnapJson>,
}

pub fn list(repo: &Repo, args: ListArgs) -> Result<ExitCode> {
    let all = match args.kind.as_deref() {
        Some(snapshots::PG_WAL) => snapshots::list(repo)?,
        _ => snapshots::list_without_wal(repo)?,
    };
    let snaps: Vec<&Snapshot> = all
        .iter()
        .filter(|s| {
            let m = &s.manifest;
            args.tags.iter().all(|t| m.tags.contains(t))
                && match &args.kind {
                    Some(k) => m.kind == *k,
                    None => m.kind != snapshots::PG_WAL,
                }
                && args
                    .name
                    .as_ref()
                    .is_none_or(|n| m.name.as_ref() == Some(n))
        })
        .collect();
    // Groups in the order of their newest snapshot, oldest group first, as snapshots are.
    let groups: Vec<(String, Vec<&Snapshot>)> = match args.group_by {
        None => vec![(String::new(), snaps)],
        Some(by) => {
            let mut groups: Vec<(String, Vec<&Snapshot>)> = Vec::new();
            for s in snaps {
                let key = by.key(s);
                match groups.iter_mut().find(|(k, _)| *k == key) {
                    Some((_, v)) => v.push(s),
                    None => groups.push((key, vec![s])),
                }
            }
            groups.sort_by_key(|(_, v)| v.last().map(|s| s.manifest.time_ns));
            groups
        }
    };
    let groups: Vec<(String, Vec<&Snapshot>)> = groups
        .into_iter()
        .map(|(k, mut v)| {
            if let Some(n) = args.latest {
                v = v.split_off(v.len().saturating_sub(n));
            }
            (k, v)
        })
        .collect();
    if args.json {
        match args.group_by {
            None => print_json(
                &groups
                    .iter()
                    .flat_map(|(_, v)| v.iter().map(|s| snap_json(s)))
                    .collect::<Vec<_>>(),
            )?,
            Some(_) => print_json(
                &groups
                    .iter()
                    .map(|(k, v)| GroupJson {
                        group: k.clone(),
                        snapshots: v.iter().map(|s| snap_json(s)).collect(),
                    })
                    .collect::<Vec<_>>(),
            )?,
        }
        return Ok(ExitCode::SUCCESS);
    }
    let snaps: Vec<&Snapshot> = groups.iter().flat_map(|(_, v)| v.iter().copied()).collect();
    if all.is_empty() {
        println!("no snapshots yet");
        return Ok(ExitCode::SUCCESS);
    }
    if snaps.is_empty() {
        println!("no snapshot matches ({} in all)", all.len());
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<8}  {:<19}  {:<13}  {:<16}  {:>7}  {:>10}  {:>10}  tags",
        "id", "time", "kind", "name", "files", "size", "added"
    );
    let mut group = None;
    for s in &snaps {
        if let Some(by) = args.group_by {
            let key = by.key(s);
            if group.as_ref() != Some(&key) {
                println!("-- {} {key} --", format!("{by:?}").to_lowercase());
                group = Some(key);
            }
        }
        let m = &s.manifest;
        println!(
            "{:<8}  {:<19}  {:<13}  {:<16}  {:>7}  {:>10}  {:>10}  {}{}{}",
            s.id.short(),
            m.time().format("%Y-%m-%d %H:%M:%S"),
            m.kind,
            m.name.as_deref().unwrap_or("-"),
            m.stats.files,
            bytes(m.stats.bytes),
            bytes(m.stats.new_stored_bytes),
            m.tags.join(","),
            if m.errors.is_empty() {
                ""
            } else {
                " (partial)"
            },
            if m.inconsistent().next().is_some() {
                " (possibly inconsistent)"
            } else {
                ""
            }
        );
    }
    let spans = restorable_all(repo, &all);
    if !spans.is_empty() {
        println!();
        println!("followed databases, restorable to any instant (restore --at):");
        print_spans(&spans);
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(serde::Serialize)]
struct EntryJson {
    path: String,
    kind: EntryKind,
    size: u64,
    mode: String,
    mtime: String,
    content: ContentJson,
    target: Option<String>,
    page_size: u32,
    /// A database image read through SQLite (one committed state), not copied as plain bytes.
    through_sqlite: bool,
}

/// How an entry's bytes are found: `empty`, one `chunk`, or a `tree` of chunks, with the chunk's
/// or the tree root's id.
#[derive(serde::Serialize)]
struct ContentJson {
    kind: &'static str,
    id: Option<String>,
}

/// A span of time a followed database can be restored to any instant of (`restore --at`).
#[derive(serde::Serialize)]
pub(super) struct TimeSpan {
    from: String,
    to: String,
    /// The span goes on: a follower is still copying the database's transactions.
    following: bool,
}

impl From<strata::restore::instant::Span> for TimeSpan {
    fn from(s: strata::restore::instant::Span) -> TimeSpan {
        TimeSpan {
            from: rfc3339_ns(s.from_ns),
            to: rfc3339_ns(s.to_ns),
            following: s.following,
        }
    }
}

/// A followed database's span, by its path in the snapshots.
#[derive(serde::Serialize)]
pub(super) struct SpanJson {
    path: String,
    #[serde(flatten)]
    span: TimeSpan,
}

/// The spans of time each followed database of `paths` (paths in the snapshots) can be
/// restored to, by path. A journal that cannot be read is left out, with a warning.
pub(super) fn restorable<'p>(
    repo: &Repo,
    snaps: &[Snapshot],
    paths: impl IntoIterator<Item = &'p [u8]>,
) -> Vec<SpanJson> {
    let mut seen: Vec<&[u8]> = Vec::new();
    let mut out = Vec::new();
    for p in paths {
        if seen.contains(&p) {
            continue;
        }
        seen.push(p);
        let path = String::from_utf8_lossy(p).into_owned();
        match strata::restore::instant::spans(repo, snaps, &path) {
            Ok(spans) => out.extend(spans.into_iter().map(|s| SpanJson {
                path: path.clone(),
                span: s.into(),
            })),
            Err(e) => tracing::warn!("the journal of {path}: {e}"),
        }
    }
    out
}

/// The followed databases' spans for the databases in `snaps`.
pub(super) fn restorable_all(repo: &Repo, snaps: &[Snapshot]) -> Vec<SpanJson> {
    let dbs = snaps.iter().flat_map(|s| {
        s.manifest
            .entries
            .iter()
            .filter(|e| e.page_size > 0)
            .map(|e| e.path.as_slice())
    });
    restorable(repo, snaps, dbs)
}

fn rfc3339_ns(ns: i64) -> String {
    chrono::DateTime::from_timestamp_nanos(ns)
        .with_timezone(&chrono::Local)
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, false)
}

fn print_spans(spans: &[SpanJson]) {
    for s in spans {
        println!(
            "  {}  {} .. {}{}",
            s.path,
            short_time(Some(&s.span.from)),
            short_time(Some(&s.span.to)),
            if s.span.following { " (following)" } else { "" }
        );
    }
}

/// `show --json`: the snapshot and its entries.
#[derive(serde::Serialize)]
pub(super) struct ShowJson<'a> {
    #[serde(flatten)]
    snap: SnapJson,
    errors: &'a [String],
    entries: Vec<EntryJson>,
    /// For each followed database in the snapshot, the spans of time it can be restored to.
    restorable: Vec<SpanJson>,
}

/// `show --json` of `s` (one of `snaps`).
pub(super) fn show_json<'s>(repo: &Repo, snaps: &[Snapshot], s: &'s Snapshot) -> ShowJson<'s> {
    let m = &s.manifest;
    let entries: Vec<EntryJson> = m
        .entries
        .iter()
        .map(|e| EntryJson {
            path: e.path_lossy(),
            kind: e.kind,
            size: e.size,
            mode: format!("{:04o}", e.mode & 0o7777),
            mtime: chrono::DateTime::from_timestamp_nanos(e.mtime_ns)
                .with_timezone(&chrono::Local)
                .to_rfc3339(),
            content: match &e.content {
                Content::Empty => ContentJson {
                    kind: "empty",
                    id: None,
                },
                Content::Chunk(id) => ContentJson {
                    kind: "chunk",
                    id: Some(id.to_hex()),
                },
                Content::Tree(id) => ContentJson {
                    kind: "tree",
                    id: Some(id.to_hex()),
                },
                Content::Pages(id) => ContentJson {
                    kind: "pages",
                    id: Some(id.to_hex()),
                },
            },
            target: e
                .target
                .as_ref()
                .map(|t| String::from_utf8_lossy(t).into_owned()),
            page_size: e.page_size,
            through_sqlite: e.through_sqlite,
        })
        .collect();
    let dbs = m
        .entries
        .iter()
        .filter(|e| e.page_size > 0)
        .map(|e| e.path.as_slice());
    ShowJson {
        snap: snap_json(s),
        errors: &m.errors,
        entries,
        restorable: restorable(repo, snaps, dbs),
    }
}

pub fn show(repo: &Repo, args: ShowArgs) -> Result<ExitCode> {
    let snaps = snapshots::list(repo)?;
    let s = snapshots::resolve(&snaps, &args.snap)?;
    let m = &s.manifest;
    let shown = show_json(repo, &snaps, s);
    if args.json {
        print_json(&shown)?;
        return Ok(ExitCode::SUCCESS);
    }
    println!("snapshot {}", s.id);
    println!("time      {}", m.time().format("%Y-%m-%d %H:%M:%S"));
    println!("host      {}", m.hostname);
    println!("kind      {}", m.kind);
    if let Some(n) = &m.name {
        println!("name      {n}");
    }
    if !m.tags.is_empty() {
        println!("tags      {}", m.tags.join(", "));
    }
    for src in &m.sources {
        println!(
            "source    {} <- {} {}",
            src.name,
            src.kind.as_str(),
            src.path
        );
        for (k, v) in &src.details {
            println!("            {k}: {v}");
        }
    }
    let st = &m.stats;
    println!(
        "contents  {} files, {} dirs, {} symlinks, {}",
        st.files,
        st.dirs,
        st.symlinks,
        bytes(st.bytes)
    );
    println!(
        "added     {} new chunks, {} raw, {} stored; read {} in {:.2} s",
        st.new_chunks,
        bytes(st.new_raw_bytes),
        bytes(st.new_stored_bytes),
        bytes(st.bytes_read),
        st.duration_ms as f64 / 1000.0
    );
    for c in &m.captures {
        let how = match (c.consistent, c.attempts) {
            (false, n) => format!(
                "POSSIBLY INCONSISTENT: kept changing over {n} reads ({})",
                c.note
            ),
            (true, 1) => "captured at one instant".to_string(),
            (true, n) => format!("captured at one instant after {n} reads"),
        };
        println!("capture   {} ({}): {how}", c.path, c.kind);
    }
    for e in &m.errors {
        println!("not saved {e}");
    }
    if !shown.restorable.is_empty() {
        println!("restorable to any instant (restore --at):");
        print_spans(&shown.restorable);
    }
    println!();
    for e in &shown.entries {
        let kind = match e.kind {
            EntryKind::File => "file",
            EntryKind::Dir => "dir ",
            EntryKind::Symlink => "link",
        };
        let extra = match (&e.target, e.page_size) {
            (Some(t), _) => format!(" -> {t}"),
            (None, p) if p > 0 => format!("  (sqlite, {p}-byte pages)"),
            _ => String::new(),
        };
        println!(
            "{kind} {:>5} {:>10}  {}{extra}",
            e.mode,
            bytes(e.size),
            e.path
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// An RFC 3339 time as `list` shows times (local, to the second); "-" for none.
fn short_time(rfc3339: Option<&str>) -> String {
    match rfc3339.map(chrono::DateTime::parse_from_rfc3339) {
        Some(Ok(t)) => t
            .with_timezone(&chrono::Local)
            .format("%Y-%m-%d %H:%M:%S")
            .to_string(),
        Some(Err(_)) => rfc3339.unwrap_or("-").to_string(),
        None => "-".to_string(),
    }
}

pub fn stats(repo: &Repo, args: JsonArg) -> Result<ExitCode> {
    let snaps = snapshots::list(repo)?;
    let s = strata::stats::stats(repo, &snaps)?;
    if args.json {
        print_json(&s)?;
        return Ok(ExitCode::SUCCESS);
    }
    println!("repository        {}", repo.root.display());
    println!("snapshots         {}", s.snapshots);
    println!(
        "oldest / newest   {} / {}",
        short_time(s.oldest.as_deref()),
        short_time(s.newest.as_deref())
    );
    println!("logical bytes     {}", bytes(s.logical_bytes));
    println!(
        "unique bytes      {} in {} chunks",
        bytes(s.unique_bytes),
        s.chunks
    );
    println!(
        "chunk lists       {} in {} nodes",
        bytes(s.metadata_bytes),
        s.nodes
    );
    println!(
        "stored bytes      {} ({} packs: {}, index: {}, manifests: {})",
        bytes(s.stored_bytes),
        s.packs,
        bytes(s.pack_bytes),
        bytes(s.index_bytes),
        bytes(s.manifest_bytes)
    );
    println!("dedup ratio       {:.2}x", s.dedup_ratio);
    println!("compression ratio {:.2}x", s.compression_ratio);
    println!("overall           {:.2}x", s.total_ratio);
    Ok(ExitCode::SUCCESS)
}

pub fn diff(repo: &Repo, args: DiffArgs) -> Result<ExitCode> {
    let snaps = snapshots::list(repo)?;
    let a = snapshots::resolve(&snaps, &args.a)?;
    let b = snapshots::resolve(&snaps, &args.b)?;
    let d = strata::diff::diff(&a.manifest, &b.manifest);
    if args.json {
        print_json(&d)?;
        return Ok(ExitCode::SUCCESS);
    }
    use strata::diff::Change;
    for e in &d {
        let (sym, size) = match e.change {
            Change::Added => ("+", bytes(e.new_size.unwrap_or(0))),
            Change::Removed => ("-", bytes(e.old_size.unwrap_or(0))),
            Change::Changed => (
                "M",
                format!(
                    "{} -> {}",
                    bytes(e.old_size.unwrap_or(0)),
                    bytes(e.new_size.unwrap_or(0))
                ),
            ),
            Change::Metadata => ("U", bytes(e.new_size.unwrap_or(0))),
        };
        println!("{sym} {}  ({size})", e.path);
    }
    let count = |c: Change| d.iter().filter(|e| e.change == c).count();
    println!(
        "{} added, {} removed, {} changed, {} metadata only",
        count(Change::Added),
        count(Change::Removed),
        count(Change::Changed),
        count(Change::Metadata)
    );
    Ok(ExitCode::SUCCESS)
}

//! `strata ls`, `find` and `dump`: looking inside snapshots without restoring them.

use super::output::{bytes, print_json};
use anyhow::{Result, bail};
use clap::Args;
use std::io::IsTerminal;
use std::process::ExitCode;
use strata::manifest::{Entry, EntryKind};
use strata::repo::Repo;
use strata::restore::dump;
use strata::snapshots::{self, Snapshot};

#[derive(Args)]
#[command(
    after_help = "Examples:\n  strata ls latest\n  strata ls -l latest app/data\n  \
                        strata ls -r --json 1a2b3c4d app"
)]
pub struct LsArgs {
    /// The snapshot: an id prefix (4+ hex digits), a name, or `latest`
    snap: String,
    /// A directory or file inside it, as `show` prints paths (default: its top level)
    path: Option<String>,
    /// Everything below PATH, not only what it holds directly
    #[arg(short, long)]
    recursive: bool,
    /// Long form: type and mode, owner, size, modification time
    #[arg(short, long)]
    long: bool,
    /// Print the entries as a JSON array
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
#[command(
    after_help = "Examples:\n  strata find '*.db'\n  strata find 'app/memory*.json' \
                        --newest 5\n  strata find -i readme --snapshot latest --json"
)]
pub struct FindArgs {
    /// A glob (`*`, `?`, `[abc]`): matched against each entry's name, or against its whole path
    /// when it holds a `/`
    pattern: String,
    /// Look only in this snapshot (repeatable; an id prefix, a name, or `latest`)
    #[arg(long = "snapshot", value_name = "SNAP")]
    snapshots: Vec<String>,
    /// Look only in the N newest snapshots (of those given)
    #[arg(long, value_name = "N")]
    newest: Option<usize>,
    /// Match letters of either case
    #[arg(short = 'i', long)]
    ignore_case: bool,
    /// Print the matches, per snapshot, as JSON
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
#[command(after_help = "Examples:\n  strata dump latest app/config.json\n  \
                        strata dump latest app/data > data.tar\n  \
                        strata dump 1a2b3c4d app --archive tar | tar -x -C /tmp/old")]
pub struct DumpArgs {
    /// The snapshot: an id prefix (4+ hex digits), a name, or `latest`
    snap: String,
    /// The file or directory inside it, as `show` prints paths
    path: String,
    /// Write a tar archive (a directory always is); `tar` is the one format
    #[arg(long, value_name = "FORMAT")]
    archive: Option<Archive>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Archive {
    Tar,
}

/// An entry as `ls --json` and `find --json` give it.
#[derive(serde::Serialize)]
struct EntryJson {
    path: String,
    name: String,
    /// `file`, `dir` or `symlink`.
    kind: &'static str,
    size: u64,
    /// Permission bits, in octal.
    mode: String,
    uid: u32,
    gid: u32,
    /// RFC 3339.
    mtime: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    target: Option<String>,
}

fn kind_name(k: EntryKind) -> &'static str {
    match k {
        EntryKind::File => "file",
        EntryKind::Dir => "dir",
        EntryKind::Symlink => "symlink",
    }
}

fn name_of(e: &Entry) -> &[u8] {
    e.path.rsplit(|b| *b == b'/').next().unwrap_or(&e.path)
}

fn mtime(e: &Entry) -> chrono::DateTime<chrono::Local> {
    chrono::DateTime::from_timestamp_nanos(e.mtime_ns).with_timezone(&chrono::Local)
}

fn entry_json(e: &Entry) -> EntryJson {
    EntryJson {
        path: e.path_lossy(),
        name: String::from_utf8_lossy(name_of(e)).into_owned(),
        kind: kind_name(e.kind),
        size: e.size,
        mode: format!("{:04o}", e.mode & 0o7777),
        uid: e.uid,
        gid: e.gid,
        mtime: mtime(e).to_rfc3339(),
        target: e
            .target
            .as_ref()
            .map(|t| String::from_utf8_lossy(t).into_owned()),
    }
}

/// `drwxr-xr-x`, as `ls -l` shows a mode.
fn mode_string(e: &Entry) -> String {
    let mut s = String::with_capacity(10);
    s.push(match e.kind {
        EntryKind::File => '-',
        EntryKind::Dir => 'd',
        EntryKind::Symlink => 'l',
    });
    let m = e.mode;
    for (shift, special, lower, upper) in [(6, 0o4000, 's', 'S'), (3, 0o2000, 's', 'S')] {
        s.push(if m >> shift & 4 != 0 { 'r' } else { '-' });
        s.push(if m >> shift & 2 != 0 { 'w' } else { '-' });
        s.push(match (m >> shift & 1 != 0, m & special != 0) {
            (true, true) => lower,
            (false, true) => upper,
            (true, false) => 'x',
            (false, false) => '-',
        });
    }
    s.push(if m & 4 != 0 { 'r' } else { '-' });
    s.push(if m & 2 != 0 { 'w' } else { '-' });
    s.push(match (m & 1 != 0, m & 0o1000 != 0) {
        (true, true) => 't',
        (false, true) => 'T',
        (true, false) => 'x',
        (false, false) => '-',
    });
    s
}

/// One line of `ls` (or `find`) output for a person.
fn entry_line(e: &Entry, long: bool) -> String {
    let mut path = e.path_lossy();
    if e.kind == EntryKind::Dir {
        path.push('/');
    }
    if let (EntryKind::Symlink, Some(t)) = (e.kind, &e.target) {
        path.push_str(" -> ");
        path.push_str(&String::from_utf8_lossy(t));
    }
    match long {
        false => path,
        true => format!(
            "{}  {:>5} {:>5}  {:>12}  {}  {path}",
            mode_string(e),
            e.uid,
            e.gid,
            e.size,
            mtime(e).format("%Y-%m-%d %H:%M:%S"),
        ),
    }
}

pub fn ls(repo: &Repo, args: LsArgs) -> Result<ExitCode> {
    let snaps = snapshots::list(repo)?;
    let s = snapshots::resolve(&snaps, &args.snap)?;
    let path = args.path.as_deref().unwrap_or("").trim_matches('/');
    let below = dump::entries_at(&s.manifest, path)?;
    let depth = |e: &Entry| e.path.iter().filter(|b| **b == b'/').count();
    // A file lists itself; a directory what it holds (everything below it with -r).
    let base = match path {
        "" => None,
        p => Some(p.bytes().filter(|b| *b == b'/').count()),
    };
    let shown: Vec<&Entry> = below
        .into_iter()
        .filter(|e| match base {
            None => args.recursive || depth(e) == 0,
            Some(_) if e.path == path.as_bytes() => e.kind != EntryKind::Dir,
            Some(d) => args.recursive || depth(e) == d + 1,
        })
        .collect();
    if args.json {
        print_json(&shown.iter().map(|e| entry_json(e)).collect::<Vec<_>>())?;
        return Ok(ExitCode::SUCCESS);
    }
    for e in shown {
        println!("{}", entry_line(e, args.long));
    }
    Ok(ExitCode::SUCCESS)
}

/// The snapshots `find` looks in, newest first.
fn find_in<'a>(snaps: &'a [Snapshot], args: &FindArgs) -> Result<Vec<&'a Snapshot>> {
    let mut chosen: Vec<&Snapshot> = match args.snapshots.is_empty() {
        true => snaps.iter().collect(),
        false => {
            let mut v = Vec::new();
            for spec in &args.snapshots {
                let s = snapshots::resolve(snaps, spec)?;
                if !v.iter().any(|c: &&Snapshot| c.id == s.id) {
                    v.push(s);
                }
            }
            v
        }
    };
    chosen.sort_by_key(|s| std::cmp::Reverse(s.manifest.time_ns));
    if let Some(n) = args.newest {
        chosen.truncate(n);
    }
    Ok(chosen)
}

/// The matches in one snapshot, as `find --json` gives them.
#[derive(serde::Serialize)]
struct FoundJson {
    snapshot: String,
    /// RFC 3339.
    time: String,
    kind: String,
    name: Option<String>,
    matches: Vec<EntryJson>,
}

pub fn find(repo: &Repo, args: FindArgs) -> Result<ExitCode> {
    let pattern = match glob::Pattern::new(&args.pattern) {
        Ok(p) => p,
        Err(e) => super::usage!("cannot read pattern {:?}: {e}", args.pattern),
    };
    let options = glob::MatchOptions {
        case_sensitive: !args.ignore_case,
        require_literal_separator: true,
        require_literal_leading_dot: false,
    };
    let whole_path = args.pattern.contains('/');
    let snaps = snapshots::list(repo)?;
    let chosen = find_in(&snaps, &args)?;
    let mut found = Vec::new();
    for s in &chosen {
        let matches: Vec<&Entry> = s
            .manifest
            .entries
            .iter()
            .filter(|e| {
                let subject = match whole_path {
                    true => &e.path[..],
                    false => name_of(e),
                };
                pattern.matches_with(&String::from_utf8_lossy(subject), options)
            })
            .collect();
        if !matches.is_empty() {
            found.push((*s, matches));
        }
    }
    if args.json {
        let out: Vec<FoundJson> = found
            .iter()
            .map(|(s, matches)| FoundJson {
                snapshot: s.id.to_hex(),
                time: s.manifest.time().to_rfc3339(),
                kind: s.manifest.kind.clone(),
                name: s.manifest.name.clone(),
                matches: matches.iter().map(|e| entry_json(e)).collect(),
            })
            .collect();
        print_json(&out)?;
        return Ok(ExitCode::SUCCESS);
    }
    if found.is_empty() {
        eprintln!(
            "no path matches {:?} in {} snapshot(s)",
            args.pattern,
            chosen.len()
        );
        return Ok(ExitCode::SUCCESS);
    }
    for (s, matches) in &found {
        println!(
            "snapshot {}  {}  {}{}",
            s.id.short(),
            s.manifest.time().format("%Y-%m-%d %H:%M:%S"),
            s.manifest.kind,
            s.manifest
                .name
                .as_deref()
                .map(|n| format!("  {n}"))
                .unwrap_or_default()
        );
        for e in matches {
            let size = match e.kind {
                EntryKind::File => bytes(e.size),
                _ => String::new(),
            };
            println!(
                "  {:>10}  {}  {}",
                size,
                mtime(e).format("%Y-%m-%d %H:%M:%S"),
                entry_line(e, false)
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn dump(repo: &Repo, args: DumpArgs) -> Result<ExitCode> {
    let snaps = snapshots::list(repo)?;
    let s = snapshots::resolve(&snaps, &args.snap)?;
    let path = args.path.trim_matches('/');
    let entries = dump::entries_at(&s.manifest, path)?;
    let single = match entries.as_slice() {
        [e] if e.kind == EntryKind::File && args.archive.is_none() => Some(*e),
        _ => None,
    };
    let mut out = std::io::stdout().lock();
    if single.is_none() && out.is_terminal() {
        bail!(
            "{path:?} is written as a tar archive: send it to a file or a pipe \
             (`strata dump {} {path} > out.tar`)",
            args.snap
        );
    }
    match single {
        Some(e) => dump::dump_file(repo, e, &mut out)?,
        None => dump::dump_tar(repo, &entries, &mut out)?,
    };
    Ok(ExitCode::SUCCESS)
}

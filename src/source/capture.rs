//! Stable capture of files that change while they are read.
//!
//! A file that changed while it was read (its size, mtime, ctime or inode differ before and
//! after) is read again, with backoff, a bounded number of times. A *store* (a directory whose
//! files must agree with each other, such as a ChromaDB directory) is captured as one group:
//!
//! 1. wait until no file of the store (its SQLite databases aside) has changed for a settle
//!    time, and list the store;
//! 2. read every file that is not already known at the stamp the listing shows;
//! 3. read its SQLite databases last, each as one consistent image through SQLite;
//! 4. list the store again: if the same paths are there and no file but the databases has a new
//!    stamp, every file held the captured bytes from the first listing until the databases' read
//!    transactions began, so the capture is one instant of the store. Otherwise go back to 1,
//!    reading again only what changed.
//!
//! Why the databases go last: in a store that pairs a SQLite log with files derived from it (a
//! ChromaDB segment's HNSW files are built from the `embeddings_queue` table, and the
//! `max_seq_id` table says how far each segment got), the log must be at least as new as the
//! derived files. The application trims the log only below what the derived files already hold,
//! and on open it replays the log past that point. A database read before the derived files
//! could miss records those files already hold; a database read after them, while they were
//! still unchanged (step 4 checks it), holds every record they do and replays the rest.

use crate::error::{Error, IoContext, Result};
use crate::manifest::EntryKind;
use crate::source::walk::WalkItem;
use std::collections::{HashMap, HashSet};
use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The name of a ChromaDB store's SQLite database, which marks the directory as a store.
pub const CHROMA_DB: &str = "chroma.sqlite3";

/// Limits of stable capture, and what to do beyond them.
#[derive(Clone, Debug)]
pub struct CaptureOptions {
    /// How many times a file or store that changed while it was read is read again.
    pub retries: u32,
    /// How long the files of a store must have been quiet before it is read.
    pub settle: Duration,
    /// The most time one store may take to capture, waits included.
    pub timeout: Duration,
    /// Record what could not be captured stably (marked as possibly inconsistent) instead of
    /// failing the snapshot.
    pub allow_unstable: bool,
    /// Directories to capture as stores besides those recognised (ChromaDB directories).
    pub groups: Vec<PathBuf>,
}

impl Default for CaptureOptions {
    fn default() -> Self {
        CaptureOptions {
            retries: 10,
            settle: Duration::from_millis(100),
            timeout: Duration::from_secs(120),
            allow_unstable: false,
            groups: vec![],
        }
    }
}

/// The wait before attempt `attempt + 1`: 10 ms, doubling, at most 2 s.
pub fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(10u64 << attempt.min(8)).min(Duration::from_secs(2))
}

/// What a file's metadata says about its content: equal stamps mean unchanged bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seen {
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    pub ino: u64,
    pub dev: u64,
}

impl Seen {
    pub fn of(m: &Metadata) -> Seen {
        Seen {
            size: m.len(),
            mtime_ns: crate::sys::mtime_ns(m),
            ctime_ns: crate::sys::ctime_ns(m),
            ino: m.ino(),
            dev: m.dev(),
        }
    }
}

/// What kind of store a group is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupKind {
    /// A ChromaDB directory, recognised by its `chroma.sqlite3`.
    Chroma,
    /// A directory named with `--group`.
    Configured,
}

impl GroupKind {
    pub fn as_str(self) -> &'static str {
        match self {
            GroupKind::Chroma => "chromadb",
            GroupKind::Configured => "group",
        }
    }
}

/// A directory whose files are captured together.
#[derive(Clone, Debug)]
pub struct Group {
    pub root: PathBuf,
    /// Its path inside the snapshot.
    pub rel: Vec<u8>,
    pub kind: GroupKind,
}

impl Group {
    /// Whether `abs` is the group's directory or below it.
    pub fn holds(&self, abs: &Path) -> bool {
        abs.starts_with(&self.root)
    }
}

/// The stores among walked items: ChromaDB directories, and the directories in `configured`
/// (which must be directories among the items). A store inside another is part of the outer one.
pub fn find_groups(items: &[WalkItem], configured: &[PathBuf]) -> Result<Vec<Group>> {
    let files: HashSet<&Path> = items
        .iter()
        .filter(|i| i.kind == EntryKind::File)
        .map(|i| i.abs.as_path())
        .collect();
    let dirs: HashMap<&Path, &WalkItem> = items
        .iter()
        .filter(|i| i.kind == EntryKind::Dir)
        .map(|i| (i.abs.as_path(), i))
        .collect();
    let mut groups: Vec<Group> = Vec::new();
    for dir in configured {
        let abs = std::path::absolute(dir).ctx("resolve", dir)?;
        let item = dirs.get(abs.as_path()).ok_or_else(|| {
            Error::invalid(format!(
                "--group {}: not a directory among the paths being backed up",
                dir.display()
            ))
        })?;
        groups.push(Group {
            root: abs,
            rel: item.rel.clone(),
            kind: GroupKind::Configured,
        });
    }
    for (abs, item) in &dirs {
        if files.contains(abs.join(CHROMA_DB).as_path()) && !groups.iter().any(|g| g.root == *abs) {
            groups.push(Group {
                root: abs.to_path_buf(),
                rel: item.rel.clone(),
                kind: GroupKind::Chroma,
            });
        }
    }
    groups.sort_by(|a, b| a.root.cmp(&b.root));
    let mut outer: Vec<Group> = Vec::new();
    for g in groups {
        if !outer.iter().any(|o| g.root.starts_with(&o.root)) {
            outer.push(g);
        }
    }
    Ok(outer)
}

/// One read of a file during a group capture.
pub struct FileRead<T> {
    /// The file's stamp when the read began.
    pub seen: Seen,
    /// Whether the file was unchanged from the beginning to the end of the read (or was read as
    /// one consistent image).
    pub stable: bool,
    pub data: T,
}

/// How the capture of a store went.
pub struct GroupCapture<T> {
    /// The store's items as last listed, each file with what its read gave.
    pub items: Vec<(WalkItem, Option<T>)>,
    /// Attempts made (1 when nothing changed).
    pub attempts: u32,
    /// Whether the capture is one instant of the store.
    pub stable: bool,
    /// What changed during the last attempt, when it was not stable.
    pub changed: Vec<String>,
    /// Unreadable paths met by the last listing.
    pub errors: Vec<String>,
}

/// The ways a group capture reaches the file system (so it can be tested without one).
pub trait GroupIo<T> {
    /// Lists the store: its directory, everything below it, and unreadable paths.
    fn list(&mut self) -> Result<(Vec<WalkItem>, Vec<String>)>;
    /// Whether `item` is a SQLite database of the store (read last, as a consistent image).
    fn is_database(&mut self, item: &WalkItem) -> bool;
    /// Reads a file; `None` if it vanished.
    fn read(&mut self, item: &WalkItem) -> Result<Option<FileRead<T>>>;
    /// Waits (a test's clock can move instead).
    fn sleep(&mut self, d: Duration) {
        std::thread::sleep(d);
    }
    /// The time now, for the settle check: nanoseconds since the Unix epoch, as ctimes are.
    fn now_ns(&mut self) -> i64 {
        chrono::Utc::now().timestamp_nanos_opt().unwrap_or(i64::MAX)
    }
}

/// Whether `item` is the -wal, -shm or -journal file of a database among `dbs`.
fn is_sibling(item: &WalkItem, dbs: &HashSet<PathBuf>) -> bool {
    let name = item.abs.as_os_str().as_encoded_bytes();
    crate::source::sqlite::SIBLING_SUFFIXES.iter().any(|s| {
        name.strip_suffix(s.as_bytes()).is_some_and(|base| {
            // SAFETY: `base` is a prefix of an OsStr's bytes ending before an ASCII suffix.
            let base = unsafe { std::ffi::OsStr::from_encoded_bytes_unchecked(base) };
            dbs.contains(Path::new(base))
        })
    })
}

/// What a listing says, for comparing two listings: paths with kinds, file stamps (databases'
/// aside) and link targets.
fn fingerprint(items: &[WalkItem], dbs: &HashSet<PathBuf>) -> Vec<(Vec<u8>, String)> {
    items
        .iter()
        .map(|i| {
            let what = match i.kind {
                EntryKind::Dir => "dir".to_string(),
                EntryKind::Symlink => format!("link {:?}", i.target),
                EntryKind::File if dbs.contains(&i.abs) => "database".to_string(),
                EntryKind::File => format!("{:?}", Seen::of(&i.meta)),
            };
            (i.rel.clone(), what)
        })
        .collect()
}

/// Captures a store so that every file in it is as it was at one instant (see the module
/// documentation). `known` holds files whose content is already known at a stamp (from the
/// file cache).
pub fn capture_group<T>(
    opts: &CaptureOptions,
    io: &mut impl GroupIo<T>,
    mut known: HashMap<PathBuf, (Seen, T)>,
) -> Result<GroupCapture<T>> {
    let started = Instant::now();
    let deadline = started + opts.timeout;
    let mut attempt = 0;
    // The latest read of every file, stable or not: what an unstable capture records.
    let mut latest: HashMap<PathBuf, T> = HashMap::new();
    loop {
        attempt += 1;
        let (mut listing, mut errors, mut dbs) = list_without_siblings(io)?;
        // Settle: nothing but the databases changed for `opts.settle`.
        loop {
            let newest = listing
                .iter()
                .filter(|i| i.kind == EntryKind::File && !dbs.contains(&i.abs))
                .map(|i| Seen::of(&i.meta).ctime_ns)
                .max()
                .unwrap_or(i64::MIN);
            let quiet = io.now_ns().saturating_sub(newest);
            let settle = opts.settle.as_nanos() as i64;
            if quiet >= settle || Instant::now() >= deadline {
                break;
            }
            io.sleep(Duration::from_nanos((settle - quiet) as u64));
            (listing, errors, dbs) = list_without_siblings(io)?;
        }
        let mut changed = Vec::new();
        for item in listing
            .iter()
            .filter(|i| i.kind == EntryKind::File && !dbs.contains(&i.abs))
        {
            let seen = Seen::of(&item.meta);
            if known.get(&item.abs).is_some_and(|(s, _)| *s == seen) {
                continue;
            }
            match io.read(item)? {
                Some(read) if read.stable && read.seen == seen => {
                    latest.remove(&item.abs);
                    known.insert(item.abs.clone(), (seen, read.data));
                }
                Some(read) => {
                    known.remove(&item.abs);
                    latest.insert(item.abs.clone(), read.data);
                    changed.push(format!("{} changed while it was read", item.abs.display()));
                }
                None => changed.push(format!("{} vanished", item.abs.display())),
            }
        }
        let last_try = attempt > opts.retries || Instant::now() >= deadline;
        if !changed.is_empty() && !last_try {
            io.sleep(backoff(attempt));
            continue;
        }
        // The databases, last, each as one consistent image.
        let mut images: HashMap<PathBuf, T> = HashMap::new();
        for item in listing.iter().filter(|i| dbs.contains(&i.abs)) {
            match io.read(item)? {
                Some(read) if read.stable => {
                    images.insert(item.abs.clone(), read.data);
                }
                Some(_) => {
                    return Err(Error::invalid(format!(
                        "{}: not read as one consistent image",
                        item.abs.display()
                    )));
                }
                None => changed.push(format!("{} vanished", item.abs.display())),
            }
        }
        let (after, after_errors, _) = list_without_siblings(io)?;
        if changed.is_empty() {
            let before = fingerprint(&listing, &dbs);
            let now = fingerprint(&after, &dbs);
            if before == now {
                return Ok(finish(
                    after,
                    known,
                    latest,
                    images,
                    attempt,
                    true,
                    vec![],
                    errors,
                ));
            }
            changed.extend(describe_changes(&before, &now));
        }
        if last_try {
            return Ok(finish(
                after,
                known,
                latest,
                images,
                attempt,
                false,
                changed,
                after_errors,
            ));
        }
        io.sleep(backoff(attempt));
    }
}

fn list_without_siblings<T>(
    io: &mut impl GroupIo<T>,
) -> Result<(Vec<WalkItem>, Vec<String>, HashSet<PathBuf>)> {
    let (items, errors) = io.list()?;
    let dbs: HashSet<PathBuf> = items
        .iter()
        .filter(|i| i.kind == EntryKind::File && io.is_database(i))
        .map(|i| i.abs.clone())
        .collect();
    let items = items.into_iter().filter(|i| !is_sibling(i, &dbs)).collect();
    Ok((items, errors, dbs))
}

fn describe_changes(before: &[(Vec<u8>, String)], now: &[(Vec<u8>, String)]) -> Vec<String> {
    let old: HashMap<&[u8], &str> = before
        .iter()
        .map(|(p, w)| (p.as_slice(), w.as_str()))
        .collect();
    let new: HashMap<&[u8], &str> = now
        .iter()
        .map(|(p, w)| (p.as_slice(), w.as_str()))
        .collect();
    let mut out = Vec::new();
    for (path, what) in now {
        match old.get(path.as_slice()) {
            None => out.push(format!("{} appeared", String::from_utf8_lossy(path))),
            Some(w) if w != what => out.push(format!(
                "{} changed after it was read",
                String::from_utf8_lossy(path)
            )),
            _ => {}
        }
    }
    for (path, _) in before {
        if !new.contains_key(path.as_slice()) {
            out.push(format!("{} vanished", String::from_utf8_lossy(path)));
        }
    }
    out
}

#[allow(clippy::too_many_arguments)]
fn finish<T>(
    listing: Vec<WalkItem>,
    mut known: HashMap<PathBuf, (Seen, T)>,
    mut latest: HashMap<PathBuf, T>,
    mut images: HashMap<PathBuf, T>,
    attempts: u32,
    stable: bool,
    changed: Vec<String>,
    errors: Vec<String>,
) -> GroupCapture<T> {
    let items = listing
        .into_iter()
        .filter_map(|item| {
            if item.kind != EntryKind::File {
                return Some((item, None));
            }
            let data = images
                .remove(&item.abs)
                .or_else(|| known.remove(&item.abs).map(|(_, d)| d))
                .or_else(|| latest.remove(&item.abs));
            // A file never read (it appeared after the last read): not in the snapshot.
            data.map(|d| (item, Some(d)))
        })
        .collect();
    GroupCapture {
        items,
        attempts,
        stable,
        changed,
        errors,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::walk::{Excludes, walk_below};
    use std::fs;

    /// A store on disk whose reads can change files behind the capture's back.
    struct Scripted<'a> {
        root: PathBuf,
        reads: Vec<String>,
        /// Called after each read with the file's name and how many times it was read.
        meddle: &'a mut dyn FnMut(&Path, usize),
    }

    impl<'a> Scripted<'a> {
        fn new(root: &Path, meddle: &'a mut dyn FnMut(&Path, usize)) -> Scripted<'a> {
            Scripted {
                root: root.into(),
                reads: vec![],
                meddle,
            }
        }
    }

    impl GroupIo<Vec<u8>> for Scripted<'_> {
        fn list(&mut self) -> Result<(Vec<WalkItem>, Vec<String>)> {
            let w = walk_below(
                &self.root,
                b"s".to_vec(),
                2,
                Path::new("/nonexistent"),
                &Excludes::new(&[]),
            )?;
            Ok((w.items, w.errors))
        }

        fn is_database(&mut self, item: &WalkItem) -> bool {
            item.abs.extension().is_some_and(|e| e == "db")
        }

        fn read(&mut self, item: &WalkItem) -> Result<Option<FileRead<Vec<u8>>>> {
            let Ok(before) = fs::metadata(&item.abs) else {
                return Ok(None);
            };
            let data = fs::read(&item.abs).unwrap();
            let name = item.abs.file_name().unwrap().to_string_lossy().into_owned();
            self.reads.push(name.clone());
            let n = self.reads.iter().filter(|r| **r == name).count();
            (self.meddle)(&item.abs, n);
            let after = fs::metadata(&item.abs).unwrap();
            Ok(Some(FileRead {
                seen: Seen::of(&before),
                stable: Seen::of(&before) == Seen::of(&after),
                data,
            }))
        }
    }

    fn quick() -> CaptureOptions {
        CaptureOptions {
            retries: 3,
            settle: Duration::from_millis(20),
            ..CaptureOptions::default()
        }
    }

    fn store() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("a.bin"), b"a1").unwrap();
        fs::write(dir.path().join("b.bin"), b"b1").unwrap();
        fs::write(dir.path().join("log.db"), b"log").unwrap();
        std::thread::sleep(Duration::from_millis(30));
        dir
    }

    fn contents(c: &GroupCapture<Vec<u8>>) -> Vec<(String, Vec<u8>)> {
        c.items
            .iter()
            .filter_map(|(i, d)| d.clone().map(|d| (i.rel_lossy(), d)))
            .collect()
    }

    #[test]
    fn a_quiet_store_takes_one_attempt_and_reads_databases_last() {
        let dir = store();
        let mut meddle = |_: &Path, _: usize| {};
        let mut io = Scripted::new(dir.path(), &mut meddle);
        let c = capture_group(&quick(), &mut io, HashMap::new()).unwrap();
        assert!(c.stable);
        assert_eq!(c.attempts, 1);
        assert_eq!(io.reads, ["a.bin", "b.bin", "log.db"]);
        assert_eq!(
            contents(&c),
            [
                ("s/a.bin".into(), b"a1".to_vec()),
                ("s/b.bin".into(), b"b1".to_vec()),
                ("s/log.db".into(), b"log".to_vec())
            ]
        );
    }

    #[test]
    fn a_file_changed_during_its_read_is_read_again_and_nothing_else_is() {
        let dir = store();
        let mut meddle = |p: &Path, n: usize| {
            if p.ends_with("b.bin") && n == 1 {
                fs::write(p, b"b2").unwrap();
            }
        };
        let mut io = Scripted::new(dir.path(), &mut meddle);
        let c = capture_group(&quick(), &mut io, HashMap::new()).unwrap();
        assert!(c.stable);
        assert_eq!(c.attempts, 2);
        // a.bin was known at its stamp; the database is read only once the rest held still.
        assert_eq!(io.reads, ["a.bin", "b.bin", "b.bin", "log.db"]);
        assert_eq!(contents(&c)[1], ("s/b.bin".into(), b"b2".to_vec()));
    }

    #[test]
    fn a_change_after_the_read_or_a_new_file_starts_over() {
        let dir = store();
        let root = dir.path().to_path_buf();
        let mut meddle = |p: &Path, n: usize| {
            // While the database is read the first time, a new file appears and a.bin changes.
            if p.ends_with("log.db") && n == 1 {
                fs::write(root.join("c.bin"), b"c1").unwrap();
                fs::write(root.join("a.bin"), b"a2").unwrap();
            }
        };
        let mut io = Scripted::new(dir.path(), &mut meddle);
        let c = capture_group(&quick(), &mut io, HashMap::new()).unwrap();
        assert!(c.stable);
        assert_eq!(c.attempts, 2);
        assert_eq!(
            io.reads,
            ["a.bin", "b.bin", "log.db", "a.bin", "c.bin", "log.db"]
        );
        let got = contents(&c);
        assert_eq!(got[0], ("s/a.bin".into(), b"a2".to_vec()));
        assert_eq!(got[2], ("s/c.bin".into(), b"c1".to_vec()));
    }

    #[test]
    fn a_store_that_never_holds_still_is_reported_unstable_with_what_changed() {
        let dir = store();
        let mut meddle = |p: &Path, n: usize| {
            if p.ends_with("a.bin") {
                fs::write(p, format!("a{}", n + 1)).unwrap();
            }
        };
        let opts = CaptureOptions {
            settle: Duration::ZERO,
            ..quick()
        };
        let mut io = Scripted::new(dir.path(), &mut meddle);
        let c = capture_group(&opts, &mut io, HashMap::new()).unwrap();
        assert!(!c.stable);
        assert_eq!(c.attempts, opts.retries + 1);
        assert!(
            c.changed.iter().any(|m| m.contains("a.bin")),
            "{:?}",
            c.changed
        );
        // Every file still has bytes to record, the database included.
        assert_eq!(contents(&c).len(), 3);
    }

    #[test]
    fn files_known_from_the_cache_are_not_read() {
        let dir = store();
        let a = dir.path().join("a.bin");
        let known = HashMap::from([(
            a.clone(),
            (Seen::of(&fs::metadata(&a).unwrap()), b"cached".to_vec()),
        )]);
        let mut meddle = |_: &Path, _: usize| {};
        let mut io = Scripted::new(dir.path(), &mut meddle);
        let c = capture_group(&quick(), &mut io, known).unwrap();
        assert_eq!(io.reads, ["b.bin", "log.db"]);
        assert_eq!(contents(&c)[0], ("s/a.bin".into(), b"cached".to_vec()));
    }

    #[test]
    fn the_settle_time_waits_for_a_quiet_store() {
        let dir = store();
        fs::write(dir.path().join("a.bin"), b"fresh").unwrap();
        let written = Instant::now();
        let mut meddle = |_: &Path, _: usize| {};
        let opts = CaptureOptions {
            settle: Duration::from_millis(300),
            ..quick()
        };
        let mut io = Scripted::new(dir.path(), &mut meddle);
        capture_group(&opts, &mut io, HashMap::new()).unwrap();
        assert!(written.elapsed() >= Duration::from_millis(250));
    }

    #[test]
    fn backoff_doubles_up_to_a_cap() {
        assert_eq!(backoff(0), Duration::from_millis(10));
        assert_eq!(backoff(1), Duration::from_millis(20));
        assert_eq!(backoff(3), Duration::from_millis(80));
        assert_eq!(backoff(8), Duration::from_secs(2));
        assert_eq!(backoff(30), Duration::from_secs(2));
    }
}

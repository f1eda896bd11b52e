//! Restoring over files that another process has open.
//!
//! A restore replaces a file by renaming a new one over it. A process that holds the old file
//! open goes on with the old inode: its writes land in a file that is gone. For a SQLite
//! database that is worse than lost writes: the application's connection finds its database
//! moved ("attempt to write a readonly database") or its log removed ("disk I/O error").
//!
//! So before a restore changes anything, [`survey`] looks for the files it would replace (or,
//! with `--delete`, remove) that another process has open: every `/proc/PID/fd/N` is compared
//! with them by device and inode, and `/proc/locks` names processes that hold a lock on a
//! database or its `-shm` file (when their descriptors cannot be read). A process that only
//! reads a file is not in the way: it goes on reading the file it opened, whole, as a restore
//! promises (its `/proc/PID/fdinfo/N` says it opened the file read-only). A database that is open
//! keeps its inode: its restored image is written into it through SQLite's online backup API
//! ([`write`]), as one transaction of the live database, so that every connection sees either
//! the old content or the new one and the application's writer goes on. Its `-wal` and `-shm`
//! stay the application's, and no log from the snapshot is put beside it. Any other open file
//! (or a database SQLite cannot write into as it is) stops the restore before it changes
//! anything, naming the processes, unless the restore is forced: it is then replaced as any
//! file.
//!
//! A database in a directory that is swapped whole (see [`crate::restore::staging`]) stays the
//! same inode too: the staged tree gets hard links to it and its logs, made and swapped in while
//! [`hold_writes`] keeps the application from starting a transaction, and the image is written
//! into it after the swap.

use crate::error::{Error, Result};
use crate::manifest::{Entry, EntryKind};
use crate::source::capture::backoff;
use crate::source::sqlite::{SIBLING_SUFFIXES, open_image, open_live};
use rusqlite::Connection;
use rusqlite::backup::{Backup, StepResult};
use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fmt;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A process that holds a file open.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Holder {
    pub pid: u32,
    /// Its command name (`/proc/PID/comm`).
    pub command: String,
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pid {} ({})", self.pid, self.command)
    }
}

/// A file a restore would replace or remove that other processes hold open, and why it cannot
/// be written in place.
#[derive(Clone, Debug)]
pub struct OpenFile {
    pub path: PathBuf,
    pub holders: Vec<Holder>,
    pub why: String,
}

/// What a restore does about the files other processes hold open (see the module
/// documentation).
#[derive(Debug, Default)]
pub struct LivePlan {
    /// Open databases, by destination, with their holders: written through SQLite.
    databases: HashMap<PathBuf, Vec<Holder>>,
    /// Open files replaced (or removed) all the same, as the restore was forced.
    pub forced: Vec<OpenFile>,
    /// A database that SQLite cannot write into is replaced instead.
    pub force: bool,
}

impl LivePlan {
    /// The holders of `dest` when it is an open database the restore writes into.
    pub fn database(&self, dest: &Path) -> Option<&[Holder]> {
        self.databases.get(dest).map(|h| h.as_slice())
    }

    /// The open databases, by destination.
    pub fn databases(&self) -> impl Iterator<Item = (&Path, &[Holder])> {
        self.databases
            .iter()
            .map(|(p, h)| (p.as_path(), h.as_slice()))
    }

    /// Whether `dest` is the `-wal`, `-shm` or `-journal` file of an open database: the
    /// application's, never the snapshot's.
    pub fn is_log_of_open_database(&self, dest: &Path) -> bool {
        let name = dest.as_os_str().as_bytes();
        SIBLING_SUFFIXES.iter().any(|suffix| {
            name.strip_suffix(suffix.as_bytes()).is_some_and(|db| {
                self.databases
                    .contains_key(Path::new(OsStr::from_bytes(db)))
            })
        })
    }

    /// What a person should know about the open files that were replaced anyway.
    pub fn notes(&self) -> Vec<String> {
        self.forced
            .iter()
            .map(|f| {
                format!(
                    "{} was open for writing in {} ({}); replaced all the same (--force): what they write \
                     to it now goes to the file that was there",
                    f.path.display(),
                    holders(&f.holders),
                    f.why
                )
            })
            .collect()
    }
}

/// The files other processes hold open among those a restore of `entries` into `target` would
/// replace, and `removed` (files below directories swapped whole that the snapshot does not
/// have, left out with `--delete`): open databases are written in place, other open files stop
/// the restore with an error naming the processes, unless `force`.
pub fn survey(
    target: &Path,
    entries: &[&Entry],
    removed: &[PathBuf],
    force: bool,
) -> Result<LivePlan> {
    struct Candidate<'e> {
        dest: PathBuf,
        file: (u64, u64),
        shm: Option<(u64, u64)>,
        entry: Option<&'e Entry>,
    }
    let stat = |p: &Path| {
        fs::symlink_metadata(p)
            .ok()
            .filter(|m| m.is_file())
            .map(|m| (m.dev(), m.ino()))
    };
    let replaced = entries
        .iter()
        .filter(|e| e.kind == EntryKind::File)
        .map(|e| (target.join(OsStr::from_bytes(&e.path)), Some(*e)));
    let removed = removed.iter().map(|p| (p.clone(), None));
    let mut candidates = Vec::new();
    for (dest, entry) in replaced.chain(removed) {
        let Some(file) = stat(&dest) else { continue };
        let database = entry.is_some_and(|e| e.page_size > 0);
        let shm = database
            .then(|| stat(&crate::source::sqlite::sibling(&dest, "-shm")))
            .flatten();
        candidates.push(Candidate {
            dest,
            file,
            shm,
            entry,
        });
    }
    let mut plan = LivePlan {
        force,
        ..LivePlan::default()
    };
    if candidates.is_empty() {
        return Ok(plan);
    }
    let wanted: HashSet<(u64, u64)> = candidates
        .iter()
        .flat_map(|c| std::iter::once(c.file).chain(c.shm))
        .collect();
    let held = holders_of(&wanted);
    let mut refused = Vec::new();
    for c in &candidates {
        let mut holders: Vec<&Held> = Vec::new();
        for key in std::iter::once(c.file).chain(c.shm) {
            for h in held.get(&key).into_iter().flatten() {
                match holders.iter_mut().find(|x| x.holder.pid == h.holder.pid) {
                    Some(x) if h.writes => *x = h,
                    Some(_) => {}
                    None => holders.push(h),
                }
            }
        }
        if holders.is_empty() {
            continue;
        }
        holders.sort_by_key(|h| h.holder.pid);
        let why = match c.entry {
            None => Err("it is not in the snapshot, and --delete would remove it".to_string()),
            Some(e) => writable_in_place(&c.dest, e),
        };
        match why {
            Ok(()) => {
                let all = holders.iter().map(|h| h.holder.clone()).collect();
                plan.databases.insert(c.dest.clone(), all);
            }
            Err(why) => {
                // Processes that only read it keep the file they opened.
                let writers: Vec<Holder> = holders
                    .iter()
                    .filter(|h| h.writes)
                    .map(|h| h.holder.clone())
                    .collect();
                if !writers.is_empty() {
                    refused.push(OpenFile {
                        path: c.dest.clone(),
                        holders: writers,
                        why,
                    });
                }
            }
        }
    }
    // The logs of an open database are its application's: not replaced, so not in the way.
    refused.retain(|f| !plan.is_log_of_open_database(&f.path));
    if !refused.is_empty() && !force {
        return Err(Error::invalid(refusal(&refused)));
    }
    plan.forced = refused;
    Ok(plan)
}

/// The error of a restore that would pull `files` from under the processes holding them.
fn refusal(files: &[OpenFile]) -> String {
    let each: Vec<String> = files
        .iter()
        .map(|f| {
            format!(
                "{} is open for writing in {} ({})",
                f.path.display(),
                holders(&f.holders),
                f.why
            )
        })
        .collect();
    format!(
        "refusing to restore: {}; replacing {} would leave {} writing to a file that is gone. \
         Stop the application first, or stop and start it around the restore with --before CMD \
         and --after CMD, or give --force to replace {} all the same",
        each.join("; "),
        if files.len() == 1 { "it" } else { "them" },
        if files.iter().map(|f| f.holders.len()).sum::<usize>() == 1 {
            "that process"
        } else {
            "those processes"
        },
        if files.len() == 1 { "it" } else { "them" },
    )
}

fn holders(h: &[Holder]) -> String {
    let all: Vec<String> = h.iter().map(|h| h.to_string()).collect();
    all.join(", ")
}

/// Whether the restored image of `entry` can be written into the open file at `dest` through
/// SQLite, and if not, why. The file must be a SQLite database (or empty) and the snapshot's
/// copy one too; a database in WAL mode takes only an image of its own page size.
fn writable_in_place(dest: &Path, entry: &Entry) -> std::result::Result<(), String> {
    let mut header = [0u8; 100];
    let n = fs::File::open(dest)
        .and_then(|f| crate::source::read_full_at(&f, &mut header, 0))
        .map_err(|e| format!("reading it: {e}"))?;
    let live_pages = crate::chunker::sqlite_page_size(&header[..n]);
    if entry.page_size == 0 && live_pages.is_none() {
        return Err("not a SQLite database".into());
    }
    if n == 0 {
        return Ok(());
    }
    let Some(live_pages) = live_pages else {
        return Err("not a SQLite database, while the snapshot's copy is one".into());
    };
    let wal = header[18] == 2 || header[19] == 2;
    if wal && entry.page_size != 0 && entry.page_size != live_pages {
        return Err(format!(
            "a database in WAL mode with pages of {live_pages} bytes, which SQLite cannot fill \
             with the snapshot's pages of {} bytes while it is in use",
            entry.page_size
        ));
    }
    Ok(())
}

/// A process holding a file, and whether it may write to it.
struct Held {
    holder: Holder,
    /// It opened the file for writing, or holds a lock on it.
    writes: bool,
}

/// Other processes that hold any of `files` (device, inode) open, by file: through their
/// descriptors, and through their POSIX locks. Processes whose descriptors cannot be read are
/// passed over; this one is left out.
fn holders_of(files: &HashSet<(u64, u64)>) -> HashMap<(u64, u64), Vec<Held>> {
    let me = std::process::id();
    let mut out: HashMap<(u64, u64), Vec<Held>> = HashMap::new();
    let mut add = |key: (u64, u64), pid: u32, writes: bool| {
        let list = out.entry(key).or_default();
        match list.iter_mut().find(|h| h.holder.pid == pid) {
            Some(h) => h.writes |= writes,
            None => list.push(Held {
                holder: Holder {
                    pid,
                    command: command_of(pid),
                },
                writes,
            }),
        }
    };
    let Ok(procs) = fs::read_dir("/proc") else {
        return out;
    };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(fds) = fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            // Only descriptors of files with a path (not sockets, pipes...) are looked at.
            let is_path = fs::read_link(fd.path()).is_ok_and(|l| l.is_absolute());
            let key = is_path
                .then(|| fs::metadata(fd.path()).ok())
                .flatten()
                .map(|m| (m.dev(), m.ino()));
            let Some(key) = key.filter(|k| files.contains(k)) else {
                continue;
            };
            let fdinfo = p.path().join("fdinfo").join(fd.file_name());
            // A descriptor closed since (or its number taken again for another file) holds
            // nothing.
            if let Some(writes) = opened_for_writing(&fdinfo, key.1) {
                add(key, pid, writes);
            }
        }
    }
    if let Ok(locks) = fs::read_to_string("/proc/locks") {
        for (key, pid) in lock_holders(&locks) {
            if pid != me && files.contains(&key) {
                add(key, pid, true);
            }
        }
    }
    out
}

/// Whether the descriptor that `/proc/PID/fdinfo/N` describes, of the file with inode
/// `inode`, was opened for writing: its `flags:` line (octal) has the access mode `O_WRONLY` or
/// `O_RDWR`. `None` when the descriptor is gone, or now names another file (its `ino:` line,
/// where the kernel gives one, differs); when its flags cannot be read, it is taken as writing.
fn opened_for_writing(fdinfo: &Path, inode: u64) -> Option<bool> {
    let text = fs::read_to_string(fdinfo).ok()?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
    };
    if field("ino:").is_some_and(|ino| ino.parse::<u64>().ok() != Some(inode)) {
        return None;
    }
    let flags = field("flags:").and_then(|f| u32::from_str_radix(&f, 8).ok());
    Some(flags.is_none_or(|f| f & libc::O_ACCMODE as u32 != libc::O_RDONLY as u32))
}

/// The (device, inode) and process of each lock in the text of `/proc/locks`, whose lines read
/// `1: POSIX  ADVISORY  READ 4121 fd:01:2883591 128 128` (device numbers in hex; a waiting
/// lock has `->` after the number; an open file description lock has no process, `-1`).
fn lock_holders(text: &str) -> Vec<((u64, u64), u32)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().filter(|f| *f != "->").collect();
        let (Some(pid), Some(file)) = (fields.get(4), fields.get(5)) else {
            continue;
        };
        let Ok(pid) = pid.parse::<u32>() else {
            continue;
        };
        let parts: Vec<&str> = file.split(':').collect();
        let [major, minor, inode] = parts[..] else {
            continue;
        };
        let (Ok(major), Ok(minor), Ok(inode)) = (
            u32::from_str_radix(major, 16),
            u32::from_str_radix(minor, 16),
            inode.parse::<u64>(),
        ) else {
            continue;
        };
        out.push(((libc::makedev(major, minor), inode), pid));
    }
    out
}

/// `/proc/PID/comm`, or `?` when the process is gone or hidden.
fn command_of(pid: u32) -> String {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim_end().to_string())
        .unwrap_or_else(|_| "?".into())
}

/// Pages copied per step of a backup into an open database (the copy is one transaction of it
/// all the same: the application waits for the whole of it).
const PAGES_PER_STEP: i32 = 4096;

/// How long a write into an open database waits for its application's locks, in all.
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);

/// Writes the database image at `image` into the open database at `dest` through SQLite's
/// online backup API: one write transaction of `dest`, so every connection sees the old content
/// or the new, and the application's connections stay valid. A lock the application holds is
/// waited for (SQLite's busy handler, then steps tried again) up to [`WRITE_TIMEOUT`]. When it
/// fails, `dest` is as it was.
pub fn write(image: &Path, dest: &Path) -> Result<()> {
    let sql = |e: rusqlite::Error| {
        Error::invalid(format!(
            "{}: writing the restored image into the open database: SQLite: {e}",
            dest.display()
        ))
    };
    let source = open_image(image)?;
    let mut live = open_live(dest)?;
    {
        let backup = Backup::new(&source, &mut live).map_err(sql)?;
        let started = Instant::now();
        let mut waits = 0;
        loop {
            match backup.step(PAGES_PER_STEP).map_err(sql)? {
                StepResult::Done => break,
                StepResult::More => {}
                _ => {
                    if started.elapsed() >= WRITE_TIMEOUT {
                        return Err(Error::invalid(format!(
                            "{}: its application kept the database locked for {} s; nothing \
                             was written into it",
                            dest.display(),
                            WRITE_TIMEOUT.as_secs()
                        )));
                    }
                    std::thread::sleep(backoff(waits));
                    waits += 1;
                }
            }
        }
    }
    // In WAL mode the new pages are in the log: copy what no reader needs back into the file
    // now, without waiting for anyone (a failure changes nothing).
    let _ = live.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
    Ok(())
}

/// A write transaction held open on a live database: while it lasts, its application cannot
/// start one, so its logs are neither created, replayed nor removed. Dropping it ends the
/// transaction, having written nothing.
pub struct WriteLock {
    _conn: Connection,
}

/// Waits for and takes the write lock of the open database at `dest` (see [`WriteLock`]).
pub fn hold_writes(dest: &Path) -> Result<WriteLock> {
    let conn = open_live(dest)?;
    conn.execute_batch("BEGIN IMMEDIATE").map_err(|e| {
        Error::invalid(format!(
            "{}: waiting for its application's write to end: SQLite: {e}",
            dest.display()
        ))
    })?;
    Ok(WriteLock { _conn: conn })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Content;
    use std::process::{Child, Command, Stdio};

    fn entry(path: &str, page_size: u32) -> Entry {
        Entry {
            path: path.as_bytes().to_vec(),
            kind: EntryKind::File,
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime_ns: 0,
            size: 0,
            content: Content::Empty,
            target: None,
            page_size,
            through_sqlite: page_size > 0,
        }
    }

    /// A process that holds `path` open (as its standard input) until it is killed. It has the
    /// file open once `spawn` returns: the descriptor is set up before the program starts.
    struct Holding(Child);

    impl Holding {
        /// Open for appending, as a writer holds a log.
        fn new(path: &Path) -> Self {
            Holding::with(fs::OpenOptions::new().append(true).open(path).unwrap())
        }

        /// Open for reading only.
        fn reading(path: &Path) -> Self {
            Holding::with(fs::File::open(path).unwrap())
        }

        fn with(file: fs::File) -> Self {
            let child = Command::new("sleep")
                .arg("600")
                .stdin(file)
                .stdout(Stdio::null())
                .spawn()
                .unwrap();
            Holding(child)
        }

        fn pid(&self) -> u32 {
            self.0.id()
        }
    }

    impl Drop for Holding {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn database(path: &Path, wal: bool, page_size: u32, rows: i64) -> Connection {
        let c = Connection::open(path).unwrap();
        c.pragma_update(None, "page_size", page_size).unwrap();
        if wal {
            c.pragma_update(None, "journal_mode", "WAL").unwrap();
        }
        c.execute_batch("CREATE TABLE t(n INTEGER PRIMARY KEY, v TEXT)")
            .unwrap();
        for n in 1..=rows {
            c.execute("INSERT INTO t VALUES (?1, ?2)", (n, format!("row {n}")))
                .unwrap();
        }
        c
    }

    fn rows(c: &Connection) -> Vec<(i64, String)> {
        let mut s = c.prepare("SELECT n, v FROM t ORDER BY n").unwrap();
        s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    }

    #[test]
    fn open_files_are_found_with_their_holders() {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path();
        for name in ["held.log", "free.log", "mine.log", "read.log"] {
            fs::write(t.join(name), b"some bytes").unwrap();
        }
        let holding = Holding::new(&t.join("held.log"));
        // A process that only reads is not in the way.
        let _reading = Holding::reading(&t.join("read.log"));
        // This process's own descriptors do not count.
        let _mine = fs::File::open(t.join("mine.log")).unwrap();
        let entries = [
            entry("held.log", 0),
            entry("free.log", 0),
            entry("mine.log", 0),
            entry("read.log", 0),
            entry("missing.log", 0),
        ];
        let refs: Vec<&Entry> = entries.iter().collect();
        let e = survey(t, &refs, &[], false).unwrap_err().to_string();
        let holder = format!("pid {} (sleep)", holding.pid());
        assert!(
            e.contains("held.log is open for writing in") && e.contains(&holder),
            "{e}"
        );
        assert!(
            e.contains("not a SQLite database") && e.contains("--force"),
            "{e}"
        );
        for other in ["free.log", "mine.log", "read.log"] {
            assert!(!e.contains(other), "{e}");
        }
        // Forced: nothing to write in place, the open file noted.
        let plan = survey(t, &refs, &[], true).unwrap();
        assert_eq!(plan.databases().count(), 0);
        assert_eq!(plan.forced.len(), 1);
        assert_eq!(plan.forced[0].path, t.join("held.log"));
        assert_eq!(
            plan.forced[0].holders,
            vec![Holder {
                pid: holding.pid(),
                command: "sleep".into()
            }]
        );
        assert!(plan.notes()[0].contains(&holder));
        // A file --delete would remove is in the way as well.
        let e = survey(t, &[], &[t.join("held.log")], false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--delete would remove it"), "{e}");
        drop(holding);
        assert!(survey(t, &refs, &[t.join("held.log")], false).is_ok());
    }

    #[test]
    fn an_open_database_is_written_in_place_unless_sqlite_cannot() {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path();
        drop(database(&t.join("app.db"), true, 4096, 3));
        drop(database(&t.join("big.db"), true, 4096, 3));
        let _app = Holding::new(&t.join("app.db"));
        let _big = Holding::new(&t.join("big.db"));
        let entries = [entry("app.db", 4096), entry("big.db", 8192)];
        let refs: Vec<&Entry> = entries.iter().collect();
        let e = survey(t, &refs, &[], false).unwrap_err().to_string();
        assert!(
            e.contains("big.db is open for writing in") && e.contains("WAL mode"),
            "{e}"
        );
        assert!(!e.contains("app.db"), "{e}");
        let plan = survey(t, &refs[..1], &[], false).unwrap();
        assert!(plan.database(&t.join("app.db")).is_some());
        assert!(plan.is_log_of_open_database(&t.join("app.db-wal")));
        assert!(!plan.is_log_of_open_database(&t.join("big.db-wal")));
        assert!(!plan.is_log_of_open_database(&t.join("app.db")));
    }

    #[test]
    fn writing_in_place_keeps_the_file_and_its_connections() {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path();
        let live_path = t.join("live.db");
        let live = database(&live_path, true, 4096, 5);
        let inode = fs::metadata(&live_path).unwrap().ino();
        let image = t.join("image.db");
        drop(database(&image, false, 4096, 2));
        write(&image, &live_path).unwrap();
        // The application's connection reads the restored rows, and writes on.
        assert_eq!(rows(&live), vec![(1, "row 1".into()), (2, "row 2".into())]);
        live.execute("INSERT INTO t VALUES (3, 'after')", [])
            .unwrap();
        assert_eq!(fs::metadata(&live_path).unwrap().ino(), inode);
        let fresh = Connection::open(&live_path).unwrap();
        assert_eq!(rows(&fresh).len(), 3);
        // Not a database: nothing is written.
        let junk = t.join("junk");
        fs::write(&junk, vec![7u8; 8192]).unwrap();
        assert!(write(&junk, &live_path).is_err());
        assert_eq!(rows(&fresh).len(), 3);
    }

    #[test]
    fn a_held_write_lock_keeps_writers_out_until_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.db");
        let app = database(&path, true, 4096, 1);
        let lock = hold_writes(&path).unwrap();
        app.busy_timeout(Duration::ZERO).unwrap();
        let busy = app
            .execute("INSERT INTO t VALUES (2, 'x')", [])
            .unwrap_err();
        assert_eq!(
            busy.sqlite_error_code(),
            Some(rusqlite::ErrorCode::DatabaseBusy)
        );
        drop(lock);
        app.execute("INSERT INTO t VALUES (2, 'x')", []).unwrap();
        assert_eq!(rows(&app).len(), 2);
    }

    #[test]
    fn descriptors_tell_how_they_were_opened() {
        use std::os::fd::AsRawFd;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        fs::write(&path, b"x").unwrap();
        let inode = fs::metadata(&path).unwrap().ino();
        let fdinfo = |f: &fs::File| PathBuf::from(format!("/proc/self/fdinfo/{}", f.as_raw_fd()));
        let reading = fs::File::open(&path).unwrap();
        let writing = fs::OpenOptions::new().append(true).open(&path).unwrap();
        assert_eq!(opened_for_writing(&fdinfo(&reading), inode), Some(false));
        assert_eq!(opened_for_writing(&fdinfo(&writing), inode), Some(true));
        // A descriptor that now names another file holds nothing of this one (where the
        // kernel says which file a descriptor names).
        let text = fs::read_to_string(fdinfo(&reading)).unwrap();
        if text.lines().any(|l| l.starts_with("ino:")) {
            assert_eq!(opened_for_writing(&fdinfo(&reading), inode + 1), None);
        }
        assert_eq!(
            opened_for_writing(&dir.path().join("no-such-fd"), inode),
            None
        );
    }

    #[test]
    fn lock_lines_are_read() {
        let text = "1: POSIX  ADVISORY  READ 4121 fd:01:2883591 128 128\n\
                    1: -> POSIX  ADVISORY  WRITE 4200 fd:01:2883591 0 EOF\n\
                    2: OFDLCK ADVISORY  READ -1 00:2a:77 0 EOF\n\
                    3: FLOCK  ADVISORY  WRITE 99 08:11:5 0 EOF\n\
                    garbage\n";
        let dev = libc::makedev(0xfd, 0x01);
        assert_eq!(
            lock_holders(text),
            vec![
                ((dev, 2883591), 4121),
                ((dev, 2883591), 4200),
                ((libc::makedev(8, 0x11), 5), 99)
            ]
        );
    }
}

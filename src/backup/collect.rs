//! The reads' results gathered for the manifest and the commit: each file's content, the stamps
//! to keep, the captures and problems to record; or the failure that stops the backup (a
//! database named as such that could not be read as one, something that kept changing).

use super::cache::Stored;
use super::file::ReadFile;
use super::ingest::Got;
use super::sources::{Problems, Walk};
use crate::commit::KeptStamp;
use crate::error::{Error, Result};
use crate::manifest::Capture;
use crate::repo::Repo;
use crate::source::capture::{CaptureOptions, Group, GroupCapture};
use crate::source::walk::WalkItem;
use std::os::unix::ffi::OsStrExt;

/// What to do about something that kept changing while it was read.
const UNSTABLE_HINT: &str = "pause the writer around the backup (--before/--after hooks), allow \
    more reads (--capture-retries), or record it anyway, marked as possibly inconsistent \
    (--allow-unstable)";

/// The reads' results, gathered.
pub(super) struct Collected {
    pub(super) listing: Listing,
    /// The file stamps (with page digest records) to keep in the file cache.
    pub(super) stamps: Vec<KeptStamp>,
    /// What to tell the user.
    pub(super) warnings: Vec<String>,
}

/// What the manifest will list.
pub(super) struct Listing {
    /// Per walked item outside the stores, its content (`None` for a file left out).
    pub(super) contents: Vec<Option<Stored>>,
    /// The stores' items as last listed, each file with its content.
    pub(super) store_items: Vec<(WalkItem, Option<Stored>)>,
    /// The stores, and the files read more than once.
    pub(super) captures: Vec<Capture>,
    /// Paths left out of the snapshot, and why.
    pub(super) errors: Vec<String>,
    /// Bytes of the files read.
    pub(super) bytes_read: u64,
}

/// Gathers the files read outside the stores (`contents` holds what the file cache gave for the
/// others), then the stores' captures.
pub(super) fn collect(
    repo: &Repo,
    opts: &CaptureOptions,
    walk: &Walk,
    contents: Vec<Option<Stored>>,
    files: Vec<(usize, Result<ReadFile>)>,
    stores: Vec<Result<GroupCapture<Got>>>,
    problems: Problems,
) -> Result<Collected> {
    let mut c = Collector {
        repo,
        opts,
        out: Collected {
            listing: Listing {
                contents,
                store_items: Vec::new(),
                captures: Vec::new(),
                errors: problems.errors,
                bytes_read: 0,
            },
            stamps: Vec::new(),
            warnings: problems.warnings,
        },
        notes: Vec::new(),
    };
    for (i, result) in files {
        c.file(walk, i, result)?;
    }
    for (group, store) in walk.groups.iter().zip(stores) {
        c.store(group, store)?;
    }
    let mut out = c.out;
    out.warnings.extend(c.notes);
    Ok(out)
}

struct Collector<'a> {
    repo: &'a Repo,
    opts: &'a CaptureOptions,
    out: Collected,
    /// What the reads noted, told after the other warnings.
    notes: Vec<String>,
}

impl Collector<'_> {
    /// Takes the read of `walk.items[i]`.
    fn file(&mut self, walk: &Walk, i: usize, result: Result<ReadFile>) -> Result<()> {
        let item = &walk.items[i];
        match result {
            Err(e) if walk.databases.contains(&item.abs) => {
                return Err(Error::invalid(format!(
                    "sqlite source {}: {e}",
                    item.abs.display()
                )));
            }
            Ok(rf) => {
                if !rf.stable && !self.opts.allow_unstable {
                    return Err(Error::invalid(format!(
                        "{} kept changing while it was read ({} reads); nothing was recorded: \
                         {UNSTABLE_HINT}",
                        item.abs.display(),
                        rf.attempts
                    )));
                }
                if rf.attempts > 1 || !rf.stable {
                    self.out.listing.captures.push(Capture {
                        path: item.rel_lossy(),
                        kind: "file".into(),
                        attempts: rf.attempts,
                        consistent: rf.stable,
                        note: if rf.stable {
                            String::new()
                        } else {
                            "changed while it was read".into()
                        },
                    });
                }
                self.out.listing.contents[i] = Some(self.accept(&item.abs, rf));
            }
            // Removed between the walk and the read: left out, with a warning.
            Err(e) if e.kind() == crate::ErrorKind::NotFound => {
                self.out.warnings.push(format!(
                    "{}: vanished during the backup; not in the snapshot",
                    item.abs.display()
                ));
            }
            Err(e) if e.kind() == crate::ErrorKind::Io => {
                self.out
                    .listing
                    .errors
                    .push(format!("{}: {e}", item.abs.display()));
            }
            Err(e) => return Err(e),
        }
        Ok(())
    }

    /// Takes the capture of the store `group`.
    fn store(&mut self, group: &Group, store: Result<GroupCapture<Got>>) -> Result<()> {
        let what = format!("{} store {}", group.kind.as_str(), group.root.display());
        let store = store.map_err(|e| Error::invalid(format!("{what}: {e}")))?;
        let changed = summarize(&store.changed);
        if !store.stable && !self.opts.allow_unstable {
            return Err(Error::invalid(format!(
                "{what} kept changing while it was read ({} attempts; {changed}); nothing was \
                 recorded: {UNSTABLE_HINT}",
                store.attempts
            )));
        }
        self.out.listing.errors.extend(store.errors);
        self.out.listing.captures.push(Capture {
            path: String::from_utf8_lossy(&group.rel).into_owned(),
            kind: group.kind.as_str().into(),
            attempts: store.attempts,
            consistent: store.stable,
            note: changed,
        });
        for (item, got) in store.items {
            let content = match got {
                None => None,
                Some(Got::Cached(stored)) => Some(stored),
                Some(Got::Read(rf)) => Some(self.accept(&item.abs, *rf)),
            };
            self.out.listing.store_items.push((item, content));
        }
        Ok(())
    }

    /// Keeps what the read of the file at `abs` gave besides its content (notes, bytes read,
    /// the stamp); returns the content.
    fn accept(&mut self, abs: &std::path::Path, rf: ReadFile) -> Stored {
        self.notes.extend(rf.notes);
        self.out.listing.bytes_read += rf.read;
        if let Some(stamp) = rf.stamp {
            let key = self.repo.file_key(abs.as_os_str().as_bytes());
            self.out.stamps.push((key, stamp, rf.sums));
        }
        Stored {
            content: rf.content,
            size: rf.size,
            page_size: rf.page_size,
            through_sqlite: rf.through_sqlite,
        }
    }
}

/// The first few of a list of changes, for a message.
fn summarize(changed: &[String]) -> String {
    const SHOWN: usize = 3;
    let mut s = changed[..changed.len().min(SHOWN)].join("; ");
    if changed.len() > SHOWN {
        s.push_str(&format!("; and {} more", changed.len() - SHOWN));
    }
    s
}

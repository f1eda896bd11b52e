//! A repository opened: its backend, config, keys, index and lock (for a writer) or reader
//! registration (for a reader), with the checks a writer makes before and after it commits. The
//! files themselves and their rules are in [`crate::layout`].

use crate::chunker::Chunker;
use crate::error::{Error, ErrorKind, IoContext, Result};
use crate::id::ChunkId;
use crate::index::Index;
use crate::storage::{Backend, LocalBackend};
// Where they were first defined; new code takes them from `sys`.
pub use crate::sys::{getrandom, hostname, pid_alive, secure_random};
use std::fs;
use std::path::{Path, PathBuf};

pub use crate::layout::*;

/// Whether the local index of a remote repository lists the same packs and snapshots as the
/// store (another machine may have written, or this one was interrupted).
#[cfg(feature = "s3")]
fn cache_current(backend: &dyn Backend, index_path: &Path) -> Result<bool> {
    let index = match Index::open_read(index_path) {
        Ok(i) => i,
        Err(_) => return Ok(false),
    };
    let txn = index.read()?;
    let reader = crate::index::IndexReader::new(&txn)?;
    // Both sides sorted: the index's names, and the store's objects of that kind.
    let same = |mut indexed: Vec<String>, dir: &str, ext: &str| -> Result<bool> {
        indexed.sort();
        let mut listed: Vec<String> = backend
            .list(dir)?
            .into_iter()
            .filter(|n| n.ends_with(ext))
            .collect();
        listed.sort();
        Ok(indexed == listed)
    };
    let packs = reader.packs()?;
    let snaps = crate::index::snapshot_ids(&txn)?;
    Ok(same(
        packs.iter().map(|(_, p)| p.object_name()).collect(),
        "packs",
        ".pack",
    )? && same(
        snaps.iter().map(crate::manifest::object_name).collect(),
        "snapshots",
        ".snap",
    )?)
}

/// Lays out a new repository. The config is written last: a directory without it is not (yet)
/// a repository, and an encrypted one never exists without its first key file.
fn create(root: &Path, config: &Config, key: Option<&crate::crypto::KeyFile>) -> Result<()> {
    #[cfg(not(feature = "s3"))]
    remote(root)?;
    #[cfg(feature = "s3")]
    if let Some(loc) = remote(root)? {
        let backend = crate::s3::S3Backend::new(&loc)?;
        if backend.exists(CONFIG_NAME)? {
            return Err(Error::invalid(format!(
                "{loc} is already a strata repository"
            )));
        }
        if !backend.list("")?.is_empty() {
            return Err(Error::invalid(format!(
                "{loc} holds objects already; choose an empty prefix"
            )));
        }
        let lease = backend.lease("init")?;
        if let Some(key) = key {
            backend.put(&key.object_name(), &key.encode()?)?;
        }
        backend.put(CONFIG_COPY_NAME, &config.encode()?)?;
        backend.put(CONFIG_NAME, &config.encode()?)?;
        drop(lease);
        let state = cache_dir_for(&config.id);
        fs::create_dir_all(&state).ctx("create", &state)?;
        mark_wal_catalogue_complete(&Index::open_write(&state.join(INDEX_NAME))?)?;
        return Ok(());
    }
    if root.join(CONFIG_NAME).exists() {
        return Err(Error::invalid(format!(
            "{} is already a strata repository",
            root.display()
        )));
    }
    if root.exists() {
        let mut entries = fs::read_dir(root).ctx("read", root)?;
        if entries.next().is_some() {
            return Err(Error::invalid(format!(
                "{} exists and is not empty; choose an empty or new directory",
                root.display()
            )));
        }
    }
    fs::create_dir_all(root).ctx("create repository directory", root)?;
    for dir in ["packs", "snapshots"] {
        fs::create_dir_all(root.join(dir)).ctx("create", root.join(dir))?;
    }
    let backend = LocalBackend::new(root);
    let lock = Lock::acquire(root, "init")?;
    mark_wal_catalogue_complete(&Index::open_write(&root.join(INDEX_NAME))?)?;
    if let Some(key) = key {
        backend.put(&key.object_name(), &key.encode()?)?;
    }
    backend.put(CONFIG_COPY_NAME, &config.encode()?)?;
    backend.put(CONFIG_NAME, &config.encode()?)?;
    drop(lock);
    Ok(())
}

/// A new repository's index has no snapshots, so its table of archived WAL files names them
/// all (see `pg::archive`).
fn mark_wal_catalogue_complete(index: &Index) -> Result<()> {
    let txn = index.write()?;
    txn.open_table(crate::index::PG_WAL)?;
    txn.open_table(crate::index::META)?
        .insert(crate::index::META_PG_WAL_COMPLETE, 1)?;
    txn.commit()?;
    Ok(())
}

/// The key of a new encrypted repository.
pub struct Encryption<'a> {
    /// Wraps the master key in the first key file.
    pub passphrase: &'a str,
    /// Another repository's master key (the two then name and cut chunks alike, so snapshots
    /// can be copied between them); a random one if `None`.
    pub master: Option<[u8; 32]>,
    /// The argon2 memory of the key file, in KiB (see [`crate::crypto::KeyFile::create`]).
    pub kdf_memory_kib: u32,
}

impl<'a> Encryption<'a> {
    /// A random master key behind `passphrase`, at the default cost.
    pub fn new(passphrase: &'a str) -> Self {
        Encryption {
            passphrase,
            master: None,
            kdf_memory_kib: crate::crypto::KDF_MEMORY_KIB,
        }
    }
}

/// How to open a repository: the one way, whatever the caller. A reader by default.
///
/// ```no_run
/// # fn main() -> strata::Result<()> {
/// use strata::repo::{Key, OpenOptions};
/// let repo = OpenOptions::new("backup")
///     .write(true)
///     .key(Key::Passphrase("correct horse"))
///     .open(std::path::Path::new("/var/backups/strata"))?;
/// # Ok(()) }
/// ```
pub struct OpenOptions<'a> {
    command: &'a str,
    write: bool,
    key: Key<'a>,
    backend: Option<Box<dyn Backend>>,
    index_file: Option<crate::index::IndexFile>,
}

impl<'a> OpenOptions<'a> {
    /// Options for `command` (named in the lock or reader file, for whoever finds it).
    pub fn new(command: &'a str) -> Self {
        OpenOptions {
            command,
            write: false,
            key: Key::None,
            backend: None,
            index_file: None,
        }
    }

    /// A writer takes the repository's lock; a reader registers under `readers/`.
    pub fn write(mut self, write: bool) -> Self {
        self.write = write;
        self
    }

    /// Where the key of an encrypted repository comes from.
    pub fn key(mut self, key: Key<'a>) -> Self {
        self.key = key;
        self
    }

    /// Reads and writes the repository's objects through `backend` (a fault-injecting test
    /// backend, for instance) instead of its directory; the lock and index stay in the directory.
    pub fn backend(mut self, backend: Box<dyn Backend>) -> Self {
        self.backend = Some(backend);
        self
    }

    /// Opens the index through `file` (in tests, a file under the same injected faults as the
    /// backend's objects). Only with [`OpenOptions::backend`].
    pub fn index_file(mut self, file: crate::index::IndexFile) -> Self {
        self.index_file = Some(file);
        self
    }

    /// Opens the repository at `root` (a directory, or an `s3://` URL).
    pub fn open(self, root: &Path) -> Result<Repo> {
        match self.backend {
            Some(backend) => Repo::open_inner(
                root,
                backend,
                self.write,
                self.command,
                &self.key,
                self.index_file,
            ),
            None if self.index_file.is_some() => Err(Error::invalid(
                "an index file is given only with the backend it shares faults with",
            )),
            None => Repo::open_unlocked(root, self.write, self.command, &self.key),
        }
    }
}

/// An open repository.
pub struct Repo {
    pub root: PathBuf,
    /// Where the repository's objects live (a local directory unless opened with
    /// [`OpenOptions::backend`]).
    pub backend: Box<dyn Backend>,
    pub config: Config,
    pub index: Index,
    chunker: Chunker,
    /// The keys of an encrypted repository.
    keys: Option<crate::crypto::Keys>,
    /// The key file that opened it.
    key_id: Option<String>,
    _lock: Option<Lock>,
    /// This reader's file under `readers/` (see [`crate::readers`]), removed on drop.
    reader: Option<String>,
    /// A writer's lease on a repository on object storage.
    #[cfg(feature = "s3")]
    _lease: Option<crate::s3::Lease>,
}

/// An index at most this large is read ahead whole before a large restore.
const PREFETCH_INDEX_MAX: u64 = 1 << 30;

impl Repo {
    /// Asks the kernel to read the index file ahead, in the background, before many lookups
    /// in random order (a large restore). On a cold cache each lookup would otherwise wait on
    /// random 4 KiB reads of the device. Only a hint; an index over 1 GiB is left alone.
    pub fn prefetch_index(&self) {
        let Ok(file) = fs::File::open(self.root.join(INDEX_NAME)) else {
            return;
        };
        if file.metadata().is_ok_and(|m| m.len() <= PREFETCH_INDEX_MAX) {
            crate::storage::read_ahead(&file);
        }
    }

    /// Creates a new repository at `root` (which must be absent or an empty directory).
    pub fn init(root: &Path, config: Config) -> Result<Repo> {
        create(root, &config, None)?;
        Repo::open_unlocked(root, true, "init", &Key::None)
    }

    /// Creates a new encrypted repository: its master key (random unless given) wrapped by the
    /// passphrase in the first key file.
    pub fn init_encrypted(root: &Path, mut config: Config, enc: &Encryption) -> Result<Repo> {
        let master = match enc.master {
            Some(m) => m,
            None => {
                let mut m = [0u8; 32];
                secure_random(&mut m)?;
                m
            }
        };
        config.key_scheme = crate::crypto::SCHEME.into();
        config.id_hash = crate::crypto::ID_HASH.into();
        let key = crate::crypto::KeyFile::create(
            &master,
            enc.passphrase,
            &config.id,
            enc.kdf_memory_kib,
        )?;
        create(root, &config, Some(&key))?;
        Repo::open_unlocked(root, true, "init", &Key::Master(&(master, key.id)))
    }

    /// Opens an existing repository with the defaults of [`OpenOptions`]: no passphrase (an
    /// encrypted repository then fails to open, saying so), objects on the repository's own
    /// storage.
    pub fn open(root: &Path, write: bool, command: &str) -> Result<Repo> {
        OpenOptions::new(command).write(write).open(root)
    }

    fn open_unlocked(root: &Path, write: bool, command: &str, key: &Key) -> Result<Repo> {
        #[cfg(feature = "s3")]
        if let Some(loc) = remote(root)? {
            return Repo::open_remote(&loc, write, command, key);
        }
        #[cfg(not(feature = "s3"))]
        remote(root)?;
        Repo::open_inner(
            root,
            Box::new(LocalBackend::new(root)),
            write,
            command,
            key,
            None,
        )
    }

    /// A repository on object storage: its lease for a writer, and its local index, rebuilt
    /// from the store's pack trailers and manifests when it is missing or behind.
    #[cfg(feature = "s3")]
    fn open_remote(
        loc: &crate::s3::S3Location,
        write: bool,
        command: &str,
        key: &Key,
    ) -> Result<Repo> {
        let backend = crate::s3::S3Backend::new(loc)?;
        let config = load_config(&backend, Path::new(&loc.to_string()))?;
        let unlocked = unlock_with(&backend, &config, key)?;
        let state = cache_dir_for(&config.id);
        fs::create_dir_all(&state).ctx("create", &state)?;
        let lease = if write {
            Some(backend.lease(command)?)
        } else {
            None
        };
        let index_path = state.join(INDEX_NAME);
        let rebuild = !index_path.exists() || !cache_current(&backend, &index_path)?;
        if rebuild {
            // The rebuild unlocks with the same key.
            let master = unlocked.as_ref().map(|(m, _)| *m);
            crate::repair::rebuild_index_keyed(&state, &backend, master)?;
        }
        let fresh_nodes = backend.attach_node_cache(&state.join(NODES_NAME))?;
        let key = match &unlocked {
            Some(u) => Key::Master(u),
            None => Key::None,
        };
        let mut repo = Repo::open_inner(&state, Box::new(backend), write, command, &key, None)?;
        repo._lease = lease;
        if rebuild || fresh_nodes {
            fill_node_cache(&repo)?;
        }
        Ok(repo)
    }

    fn open_inner(
        root: &Path,
        backend: Box<dyn Backend>,
        write: bool,
        command: &str,
        key: &Key,
        index_file: Option<crate::index::IndexFile>,
    ) -> Result<Repo> {
        let config = load_config(backend.as_ref(), root)?;
        // The passphrase is checked before anything else is read or written.
        let (keys, key_id) = match unlock_with(backend.as_ref(), &config, key)? {
            Some((master, key_id)) => (
                Some(crate::crypto::Keys::from_master(&master)),
                Some(key_id),
            ),
            None => (None, None),
        };
        let mut lock = if write {
            Some(Lock::acquire(root, command)?)
        } else {
            None
        };
        // A reader announces itself before it opens the index, so a gc that cannot see it
        // committed before this open (see `readers`).
        let reader = if write {
            None
        } else {
            crate::readers::register(backend.as_ref(), command)
        };
        let opened = (|| {
            let index_path = root.join(INDEX_NAME);
            if index_file.is_none() && !index_path.exists() {
                // Never an empty index in its place: gc would take every pack for garbage.
                return Err(Error::corrupt(format!(
                    "index {} is missing; run `strata repair index`",
                    index_path.display()
                )));
            }
            let index = if let Some(file) = index_file {
                Index::open_write_with(file, &index_path)?
            } else if write {
                Index::open_write(&index_path)?
            } else {
                match Index::open_read(&index_path) {
                    Ok(index) => index,
                    Err(e) if e.needs_recovery() => {
                        // A writer was killed: recover the index (which needs write access, so
                        // the lock) and carry on with that handle.
                        lock = Some(Lock::acquire(root, command)?);
                        Index::open_write(&index_path)?
                    }
                    Err(e) => return Err(e),
                }
            };
            let chunker = match &keys {
                Some(k) => Chunker::with_gear(config.chunker, k.gear())?,
                None => Chunker::new(config.chunker, 0)?,
            };
            Ok((index, chunker))
        })();
        let (index, chunker) = match opened {
            Ok(v) => v,
            Err(e) => {
                if let Some(name) = &reader {
                    crate::readers::unregister(backend.as_ref(), name);
                }
                return Err(e);
            }
        };
        let repo = Repo {
            root: root.to_path_buf(),
            backend,
            config,
            index,
            chunker,
            keys,
            key_id,
            _lock: lock,
            reader,
            #[cfg(feature = "s3")]
            _lease: None,
        };
        if write {
            repo.mend_config()?;
            repo.finish_interrupted()?;
            crate::refs::upgrade(&repo.index, repo.backend.as_ref(), repo.keys())?;
        }
        Ok(repo)
    }

    pub fn chunker(&self) -> &Chunker {
        &self.chunker
    }

    /// Before and after a writer commits: fails if its lock was taken away or the index file
    /// replaced under it, so that it never reports success for a commit nobody will see, and
    /// never acts (deletes packs, writes a manifest file) on an index that is not the
    /// repository's any more.
    pub fn ensure_current(&self) -> Result<()> {
        if let Some(lock) = &self._lock {
            lock.ensure_held()?;
        }
        self.index.ensure_current()
    }

    /// The key for blob ids (`None` while the repository is unencrypted).
    pub fn id_key(&self) -> Option<&[u8; 32]> {
        self.keys.as_ref().map(|k| k.id_key())
    }

    /// The id of the key file that opened this encrypted repository.
    pub fn key_id(&self) -> Option<&str> {
        self.key_id.as_deref()
    }

    /// The MAC key of pack trailers (`None` while the repository is unencrypted).
    pub fn mac_key(&self) -> Option<&[u8; 32]> {
        self.keys.as_ref().map(|k| k.mac_key())
    }

    /// The keys of an encrypted repository.
    pub fn keys(&self) -> Option<&crate::crypto::Keys> {
        self.keys.as_ref()
    }

    /// Seals a frame's stored bytes in an encrypted repository (unchanged otherwise).
    pub fn seal_frame<'a>(&self, stored: &'a [u8]) -> Result<std::borrow::Cow<'a, [u8]>> {
        Ok(match &self.keys {
            Some(k) => k.seal(crate::crypto::Object::Frame, stored)?.into(),
            None => stored.into(),
        })
    }

    /// The key of a source path in the file cache: the path itself, or in an encrypted
    /// repository its MAC, so the index does not hold file names.
    pub fn file_key(&self, path: &[u8]) -> Vec<u8> {
        match &self.keys {
            Some(k) => k.mac(path).to_vec(),
            None => path.to_vec(),
        }
    }

    /// Under the lock: makes `config` and its copy both whole again, from whichever is (a
    /// repository made before the copy existed gets it here).
    fn mend_config(&self) -> Result<()> {
        let read = |name| match self.backend.get(name) {
            Ok(bytes) if Config::decode(&bytes).is_ok_and(|c| c == self.config) => Ok(Some(bytes)),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        };
        let (main, copy) = (read(CONFIG_NAME)?, read(CONFIG_COPY_NAME)?);
        let good = match (&main, &copy) {
            (Some(b), _) | (None, Some(b)) => b.clone(),
            (None, None) => self.config.encode()?,
        };
        if main.is_none() {
            self.backend.put(CONFIG_NAME, &good)?;
        }
        if copy.is_none() {
            self.backend.put(CONFIG_COPY_NAME, &good)?;
        }
        Ok(())
    }

    /// Under the lock: removes temporary files a killed writer left, and writes manifest files
    /// for snapshots the index committed but whose file write was interrupted.
    fn finish_interrupted(&self) -> Result<()> {
        // Unfinished objects: packs being filled, manifest files, and the settings files at the top.
        for dir in ["packs", "snapshots", ""] {
            self.backend.remove_unfinished(dir)?;
        }
        // Snapshots whose manifest file is missing. Only a killed backup or forget leaves one,
        // and manifest files never outnumber indexed snapshots, so equal counts mean none is
        // missing and the (per-snapshot) check is skipped.
        let txn = self.index.read()?;
        let ids = crate::index::snapshot_ids(&txn)?;
        let files: std::collections::HashSet<String> =
            self.backend.list("snapshots")?.into_iter().collect();
        if files.len() >= ids.len() {
            return Ok(());
        }
        for id in ids {
            let name = crate::manifest::object_name(&id);
            if !files.contains(&name)
                && let Some(bytes) = crate::index::snapshot_manifest(&txn, &id)?
            {
                self.backend.put(&name, &bytes)?;
            }
        }
        Ok(())
    }
}

/// A reader of the repository's blobs as the index `index` places them.
impl<'a> crate::blobs::BlobReader<'a, crate::index::IndexReader> {
    pub fn new(repo: &'a Repo, index: &'a crate::index::IndexReader) -> Result<Self> {
        Ok(crate::blobs::BlobReader::over(
            repo.backend.as_ref(),
            repo.keys(),
            index,
        ))
    }
}

// The node cache of a repository on object storage, filled from its packs.

/// Reads frames closer than this to each other with one request.
const SPAN_GAP: u64 = 64 << 10;
/// The longest read.
const SPAN_MAX: u64 = 8 << 20;

/// Node frames of one pack read with one request: pack number, start, end, and the nodes.
type Span = (u32, u64, u64, Vec<(ChunkId, crate::index::BlobLoc)>);

/// Fetches every node `repo`'s index has and its cache lacks, with parallel ranged reads of
/// neighbouring frames. Returns how many nodes it added. A frame that cannot be read or does not
/// check out is left out: a later read of that node reports the damage where it matters.
pub(crate) fn fill_node_cache(repo: &Repo) -> Result<u64> {
    use rayon::prelude::*;
    let Some(cache) = repo.backend.node_cache() else {
        return Ok(0);
    };
    let have = cache.ids()?;
    let txn = repo.index.read()?;
    let index = crate::index::IndexReader::new(&txn)?;
    let mut by_pack: std::collections::BTreeMap<u32, Vec<(ChunkId, crate::index::BlobLoc)>> =
        std::collections::BTreeMap::new();
    index.for_each_blob(|id, loc| {
        if loc.kind == crate::pack::BlobKind::Node && !have.contains(&id) {
            by_pack.entry(loc.pack).or_default().push((id, loc));
        }
        Ok(())
    })?;
    // Spans: runs of node frames of one pack, read with one request each.
    let mut spans: Vec<Span> = Vec::new();
    for (pack, mut nodes) in by_pack {
        nodes.sort_by_key(|(_, loc)| (loc.frame_offset, loc.offset_in_frame));
        for (id, loc) in nodes {
            let start = loc.frame_offset as u64;
            let end = start + loc.frame_stored_len as u64;
            match spans.last_mut() {
                Some((p, s, e, members))
                    if *p == pack && start <= *e + SPAN_GAP && end - *s <= SPAN_MAX =>
                {
                    *e = (*e).max(end);
                    members.push((id, loc));
                }
                _ => spans.push((pack, start, end, vec![(id, loc)])),
            }
        }
    }
    let reader = crate::blobs::BlobReader::new(repo, &index)?;
    let keys = repo.keys();
    let id_key = keys.map(|k| k.id_key());
    let added = std::sync::atomic::AtomicU64::new(0);
    crate::storage::with_io_pool(repo.backend.as_ref(), usize::MAX, || {
        spans.par_iter().for_each(|(pack, start, end, members)| {
            let Ok(name) = reader.pack_name(*pack) else {
                return;
            };
            let Ok(bytes) = reader.read_span(&name, *start, (end - start) as usize) else {
                return;
            };
            let mut frame = Vec::new();
            for (id, loc) in members {
                let at = (loc.frame_offset as u64 - start) as usize;
                let Some(stored) = bytes.get(at..at + loc.frame_stored_len as usize) else {
                    continue;
                };
                frame.resize(loc.frame_raw_len as usize, 0);
                if crate::blobs::decode_frame(keys, stored, loc, &name, &mut frame).is_err() {
                    continue;
                }
                if let Ok(blob) = crate::blobs::blob_in_frame(&frame, loc, &name)
                    && ChunkId::hash(id_key, blob) == *id
                {
                    cache.insert(*id, blob);
                    added.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        })
    });
    cache.flush()?;
    Ok(added.into_inner())
}

impl Drop for Repo {
    fn drop(&mut self) {
        if let Some(name) = self.reader.take() {
            crate::readers::unregister(self.backend.as_ref(), &name);
        }
    }
}

//! A repository on disk: layout, config, lock, and opening with a version check.
//!
//! ```text
//! REPO/config                 framed JSON (magic STRACONF), written once by `init`
//! REPO/packs/ab/<id>.pack     pack files, named by the BLAKE3 of their bytes
//! REPO/snapshots/<id>.snap    one framed manifest per snapshot
//! REPO/index.redb             the index (a rebuildable cache)
//! REPO/page-sums/<hex>        chunk digests of large source files ([`crate::pagesums`])
//! REPO/lock                   present while a writer works
//! ```

use crate::chunker::{Chunker, ChunkerParams};
use crate::codec::frame;
use crate::error::{Error, ErrorKind, IoContext, Result};
use crate::id::ChunkId;
use crate::index::Index;
use crate::storage::{Backend, LocalBackend};
// Where they were first defined; new code takes them from `sys`.
pub use crate::sys::{getrandom, hostname, pid_alive, secure_random};
use serde::{Deserialize, Serialize};
use std::fs;
use std::path::{Path, PathBuf};

pub const CONFIG_MAGIC: &[u8; 8] = b"STRACONF";
pub const CONFIG_VERSION: u32 = 1;
pub const CONFIG_NAME: &str = "config";
/// A second copy of `config`, byte for byte: one damaged file does not make the repository
/// unusable (see [`load_config`]).
pub const CONFIG_COPY_NAME: &str = "config.copy";
pub const INDEX_NAME: &str = "index.redb";
/// The node cache of a remote repository, beside its index cache ([`crate::nodecache`]).
pub const NODES_NAME: &str = "nodes.redb";
pub const LOCK_NAME: &str = "lock";

/// Settings fixed when the repository is created.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    /// Random repository id (hex).
    pub id: String,
    pub created: String,
    pub chunker: ChunkerParams,
    /// Cut SQLite database files at page boundaries.
    pub sqlite_pages: bool,
    pub zstd_level: i32,
    /// Packs are closed once they reach this many bytes.
    pub pack_target: u64,
    /// "none" for unencrypted repositories; encryption schemes add their own names.
    pub key_scheme: String,
    /// How blob ids are computed: "blake3" (plain) or, with a key scheme, "blake3-keyed".
    pub id_hash: String,
}

impl Config {
    pub fn new(chunker: ChunkerParams, zstd_level: i32) -> Result<Self> {
        chunker.validate()?;
        if !(-7..=22).contains(&zstd_level) || zstd_level == 0 {
            return Err(Error::invalid(format!(
                "zstd level {zstd_level} is out of range (-7..=22, not 0)"
            )));
        }
        let mut seed = [0u8; 16];
        getrandom(&mut seed);
        Ok(Config {
            id: ChunkId(*blake3::hash(&seed).as_bytes()).to_hex()[..32].to_string(),
            created: chrono::Local::now().to_rfc3339(),
            chunker,
            sqlite_pages: true,
            zstd_level,
            pack_target: DEFAULT_PACK_TARGET,
            key_scheme: "none".into(),
            id_hash: "blake3".into(),
        })
    }

    fn encode(&self) -> Result<Vec<u8>> {
        let json = serde_json::to_vec_pretty(self)
            .map_err(|e| Error::invalid(format!("encoding config: {e}")))?;
        Ok(frame::wrap(CONFIG_MAGIC, CONFIG_VERSION, &json))
    }

    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let (_, json) = frame::unwrap(CONFIG_MAGIC, CONFIG_VERSION, bytes, "repository config")?;
        let config: Config = serde_json::from_slice(json)
            .map_err(|e| Error::corrupt(format!("repository config: {e}")))?;
        config.chunker.validate()?;
        let plain = config.key_scheme == "none" && config.id_hash == "blake3";
        let encrypted =
            config.key_scheme == crate::crypto::SCHEME && config.id_hash == crate::crypto::ID_HASH;
        if !plain && !encrypted {
            return Err(Error::VersionUnsupported(format!(
                "repository uses key scheme {:?} / id hash {:?}, which this strata cannot read",
                config.key_scheme, config.id_hash
            )));
        }
        if config.pack_target == 0 || config.pack_target > crate::pack::MAX_PACK_BYTES / 2 {
            return Err(Error::corrupt(
                "repository config: pack_target out of range",
            ));
        }
        Ok(config)
    }
}

pub use crate::storage::DEFAULT_PACK_TARGET;

/// Decodes config bytes, for the fuzzer: whatever decodes encodes and decodes to the same.
#[doc(hidden)]
pub fn fuzz_config(bytes: &[u8]) {
    if let Ok(c) = Config::decode(bytes) {
        let again = Config::decode(&c.encode().expect("encodes")).expect("decodes again");
        assert_eq!(again, c);
    }
}

/// Reads and checks the repository config of the repository at `root`.
pub fn load_config(backend: &dyn Backend, root: &Path) -> Result<Config> {
    if !backend.exists(CONFIG_NAME)? {
        return Err(Error::NotFound(format!(
            "{} is not a strata repository (no config); create one with `strata init --repo {}`",
            root.display(),
            root.display()
        )));
    }
    match backend.get(CONFIG_NAME).and_then(|b| Config::decode(&b)) {
        Ok(config) => Ok(config),
        // Damaged (its checksum or contents): the copy, if it is whole, stands in, and the next
        // writer puts the file right (`Repo::mend_config`).
        Err(e) if matches!(e.kind(), ErrorKind::Corrupt | ErrorKind::Io) => {
            match backend.get(CONFIG_COPY_NAME).map(|b| Config::decode(&b)) {
                Ok(Ok(copy)) => Ok(copy),
                _ => Err(e),
            }
        }
        Err(e) => Err(e),
    }
}

/// Each key file of an encrypted repository, read and decoded, or why it could not be.
fn read_key_files(backend: &dyn Backend) -> Result<Vec<Result<crate::crypto::KeyFile>>> {
    Ok(backend
        .list(crate::crypto::KEYS_DIR)?
        .into_iter()
        .filter(|n| n.ends_with(".key"))
        .map(|name| {
            backend
                .get(&name)
                .and_then(|b| crate::crypto::KeyFile::decode(&b, &name))
        })
        .collect())
}

/// The key files of an encrypted repository (an error if one is damaged).
pub fn key_files(backend: &dyn Backend) -> Result<Vec<crate::crypto::KeyFile>> {
    read_key_files(backend)?.into_iter().collect()
}

/// [`unlock`] with the passphrase from [`crate::crypto::passphrase`] (environment, file or
/// prompt).
pub fn unlock_asking(backend: &dyn Backend, config: &Config) -> Result<([u8; 32], String)> {
    let pass = crate::crypto::passphrase("strata repository passphrase: ")?;
    unlock(backend, config, &pass)
}

/// The master key from whichever key file `passphrase` opens, and that key file's id.
pub fn unlock(
    backend: &dyn Backend,
    config: &Config,
    passphrase: &str,
) -> Result<([u8; 32], String)> {
    let keys = read_key_files(backend)?;
    if keys.is_empty() {
        return Err(Error::corrupt(
            "this encrypted repository has no key files (keys/ is empty or missing)",
        ));
    }
    // A damaged key file must not keep the others from opening the repository.
    let mut damaged = Vec::new();
    for key in &keys {
        let opened = key.as_ref().map_err(|e| e.to_string()).and_then(|k| {
            k.unwrap_master(passphrase, &config.id)
                .map(|m| m.map(|m| (m, k.id.clone())))
                .map_err(|e| e.to_string())
        });
        match opened {
            Ok(Some(found)) => return Ok(found),
            Ok(None) => {}
            Err(e) => damaged.push(e),
        }
    }
    if damaged.len() == keys.len() {
        return Err(Error::corrupt(format!(
            "no key file of this repository can be read: {}",
            damaged.join("; ")
        )));
    }
    Err(Error::invalid(format!(
        "wrong passphrase: no key file of this repository opens with it{}",
        if damaged.is_empty() {
            String::new()
        } else {
            format!(" ({} damaged key file(s) skipped)", damaged.len())
        }
    )))
}

/// The repository location when none is given: `$XDG_DATA_HOME/strata/repo`, else
/// `~/.local/share/strata/repo`.
pub fn default_location() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(x).join("strata/repo");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/".into());
    PathBuf::from(home).join(".local/share/strata/repo")
}

/// Where the local state (index, lock) of a repository on object storage lives:
/// `$XDG_CACHE_HOME/strata/<repository id>`, else `~/.cache/strata/<repository id>`. It is a
/// cache: rebuilt from the repository's objects whenever it is missing or behind.
pub fn cache_dir_for(id: &str) -> PathBuf {
    let base = match std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        Some(x) => PathBuf::from(x),
        None => {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/".into())).join(".cache")
        }
    };
    base.join("strata").join(id)
}

/// The S3 location a repository argument names, if it is an `s3://` URL. Without the `s3`
/// feature, such a URL is an error.
pub fn remote(root: &Path) -> Result<Option<crate::s3::S3Location>> {
    let loc = crate::s3::S3Location::parse(&root.to_string_lossy())?;
    #[cfg(not(feature = "s3"))]
    if let Some(loc) = loc {
        return Err(Error::invalid(format!(
            "{loc}: this strata was built without S3 support (the `s3` feature)"
        )));
    }
    Ok(loc)
}

/// The storage of the repository at `root`: its directory, or its bucket.
pub fn backend_for(root: &Path) -> Result<Box<dyn Backend>> {
    #[cfg(feature = "s3")]
    if let Some(loc) = remote(root)? {
        return Ok(Box::new(crate::s3::S3Backend::new(&loc)?));
    }
    #[cfg(not(feature = "s3"))]
    remote(root)?;
    Ok(Box::new(LocalBackend::new(root)))
}

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

/// Held while a writer works on the repository; removes the lock file on drop.
pub struct Lock {
    path: PathBuf,
    /// What this process wrote into the lock file.
    body: Vec<u8>,
}

/// What the lock file says about its holder (JSON).
#[derive(Serialize, Deserialize, Debug)]
pub struct LockInfo {
    pub pid: u32,
    pub host: String,
    pub time: String,
    pub command: String,
}

/// Parses a lock file's bytes.
pub fn parse_lock(bytes: &[u8]) -> std::result::Result<LockInfo, serde_json::Error> {
    serde_json::from_slice::<LockInfo>(bytes)
}

impl Lock {
    pub fn acquire(root: &Path, command: &str) -> Result<Lock> {
        let path = root.join(LOCK_NAME);
        let info = LockInfo {
            pid: std::process::id(),
            host: hostname(),
            time: chrono::Local::now().to_rfc3339(),
            command: command.to_string(),
        };
        let body = serde_json::to_vec(&info).unwrap_or_default();
        // The lock appears with its contents (written beside it, then hard-linked into place,
        // which fails if it exists): no other process ever sees it empty, so none can take a
        // live writer's lock for a dead one's.
        let tmp = crate::storage::temp_name(&path);
        {
            use std::io::Write;
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&tmp)
                .ctx("create", &tmp)?;
            let written = f.write_all(&body).and_then(|()| f.sync_all());
            if let Err(e) = written {
                let _ = fs::remove_file(&tmp);
                return Err(Error::io_path("write lock", &tmp, e));
            }
        }
        let taken = Lock::link_into_place(&tmp, &path, &body, &info);
        let _ = fs::remove_file(&tmp);
        taken
    }

    fn link_into_place(tmp: &Path, path: &Path, body: &[u8], info: &LockInfo) -> Result<Lock> {
        for _ in 0..3 {
            match fs::hard_link(tmp, path) {
                Ok(()) => {
                    if let Some(dir) = path.parent() {
                        crate::storage::sync_dir(dir)?;
                    }
                    return Ok(Lock {
                        path: path.to_path_buf(),
                        body: body.to_vec(),
                    });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let held = fs::read(path).unwrap_or_default();
                    match parse_lock(&held) {
                        Ok(h) if h.host == info.host && !pid_alive(h.pid) => {
                            // The holder died: its lock is stale.
                            let _ = fs::remove_file(path);
                            continue;
                        }
                        Ok(h) => {
                            return Err(Error::Locked(format!(
                                "repository locked by pid {} on {} ({}) since {}; if that \
                                 process is gone, run `strata unlock`",
                                h.pid, h.host, h.command, h.time
                            )));
                        }
                        Err(_) if held.is_empty() => {
                            // Only a strata from before locks were linked into place leaves an
                            // empty lock (between create and write, or dying there).
                            std::thread::sleep(std::time::Duration::from_millis(50));
                            if fs::read(path).map(|b| b.is_empty()).unwrap_or(false) {
                                let _ = fs::remove_file(path);
                            }
                            continue;
                        }
                        Err(_) => {
                            return Err(Error::Locked(format!(
                                "repository lock file {} is unreadable; if no strata process \
                                 is running, run `strata unlock`",
                                path.display()
                            )));
                        }
                    }
                }
                // A file system without hard links: created, then written.
                Err(e) if matches!(e.raw_os_error(), Some(libc::EPERM | libc::EOPNOTSUPP)) => {
                    use std::io::Write;
                    let mut f = fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .open(path)
                        .ctx("create lock", path)?;
                    f.write_all(body).ctx("write lock", path)?;
                    f.sync_all().ctx("fsync lock", path)?;
                    return Ok(Lock {
                        path: path.to_path_buf(),
                        body: body.to_vec(),
                    });
                }
                Err(e) => return Err(Error::io_path("create lock", path, e)),
            }
        }
        Err(Error::Locked(format!(
            "could not take the repository lock {}",
            path.display()
        )))
    }
}

impl Lock {
    /// Fails if the lock file is no longer the one this process wrote (`strata unlock --force`
    /// removed it, and perhaps another writer took it since).
    pub fn ensure_held(&self) -> Result<()> {
        match fs::read(&self.path) {
            Ok(b) if b == self.body => Ok(()),
            _ => Err(Error::Locked(format!(
                "the repository lock {} was removed while this command ran (`strata unlock \
                 --force`?); it stopped before committing more: run it again",
                self.path.display()
            ))),
        }
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        // Only our own lock: after a forced unlock, the file may be another writer's.
        if fs::read(&self.path).is_ok_and(|b| b == self.body) {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Removes the lock file (`strata unlock`). A lock whose holder is alive on this machine is
/// refused unless `force`: removing it would let a second writer in beside the first.
pub fn force_unlock(root: &Path, force: bool) -> Result<bool> {
    #[cfg(feature = "s3")]
    if let Some(loc) = remote(root)? {
        return crate::s3::S3Backend::new(&loc)?.break_lease(force);
    }
    #[cfg(not(feature = "s3"))]
    remote(root)?;
    let path = root.join(LOCK_NAME);
    if !force
        && let Ok(held) = fs::read(&path)
        && let Ok(h) = parse_lock(&held)
        && h.host == hostname()
        && pid_alive(h.pid)
    {
        return Err(Error::Locked(format!(
            "the lock is held by pid {} ({}) since {}, which is still running on this machine; \
             wait for it or stop it (`strata unlock --force` removes the lock anyway, and then \
             that process fails at its next commit)",
            h.pid, h.command, h.time
        )));
    }
    match fs::remove_file(&path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::io_path("remove lock", &path, e)),
    }
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
        drop(Index::open_write(&state.join(INDEX_NAME))?);
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
    drop(Index::open_write(&root.join(INDEX_NAME))?);
    if let Some(key) = key {
        backend.put(&key.object_name(), &key.encode()?)?;
    }
    backend.put(CONFIG_COPY_NAME, &config.encode()?)?;
    backend.put(CONFIG_NAME, &config.encode()?)?;
    drop(lock);
    Ok(())
}

/// An open repository.
pub struct Repo {
    pub root: PathBuf,
    /// Where the repository's objects live (a local directory unless opened with
    /// [`Repo::open_with_backend`]).
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
        Repo::open_unlocked(root, true, "init", None)
    }

    /// Creates a new encrypted repository: a random master key, wrapped by `passphrase` in the
    /// first key file.
    pub fn init_encrypted(root: &Path, config: Config, passphrase: &str) -> Result<Repo> {
        let mut master = [0u8; 32];
        secure_random(&mut master)?;
        Repo::init_encrypted_with_master(root, config, passphrase, master)
    }

    /// Creates a new encrypted repository around an existing master key (another repository's:
    /// the two then name and cut chunks alike, so snapshots can be copied between them).
    pub fn init_encrypted_with_master(
        root: &Path,
        mut config: Config,
        passphrase: &str,
        master: [u8; 32],
    ) -> Result<Repo> {
        config.key_scheme = crate::crypto::SCHEME.into();
        config.id_hash = crate::crypto::ID_HASH.into();
        let key = crate::crypto::KeyFile::create(&master, passphrase, &config.id)?;
        create(root, &config, Some(&key))?;
        Repo::open_unlocked(root, true, "init", Some((master, key.id)))
    }

    /// Opens an existing repository. Writers take the lock. An encrypted repository asks for
    /// its passphrase ([`crate::crypto::passphrase`]).
    pub fn open(root: &Path, write: bool, command: &str) -> Result<Repo> {
        Repo::open_unlocked(root, write, command, None)
    }

    /// Opens an encrypted repository with `passphrase`.
    pub fn open_with_passphrase(
        root: &Path,
        write: bool,
        command: &str,
        passphrase: &str,
    ) -> Result<Repo> {
        let backend = LocalBackend::new(root);
        let config = load_config(&backend, root)?;
        let unlocked = unlock(&backend, &config, passphrase)?;
        Repo::open_unlocked(root, write, command, Some(unlocked))
    }

    /// Opens an encrypted repository with a master key [`unlock`] returned earlier (a
    /// long-running process unlocks once).
    pub fn open_with_master(
        root: &Path,
        write: bool,
        command: &str,
        unlocked: ([u8; 32], String),
    ) -> Result<Repo> {
        Repo::open_unlocked(root, write, command, Some(unlocked))
    }

    /// Opens the repository at `root` (its lock and index) with its objects read and written
    /// through `backend`: a fault-injecting test backend, for instance.
    pub fn open_with_backend(
        root: &Path,
        backend: Box<dyn Backend>,
        write: bool,
        command: &str,
    ) -> Result<Repo> {
        Repo::open_inner(root, backend, write, command, None, None)
    }

    /// Opens the repository for writing through a [`crate::storage::FaultyBackend`], with its
    /// index file under the same faults (see [`crate::storage::FaultyBackend::index_file`]).
    pub fn open_faulty(
        root: &Path,
        backend: crate::storage::FaultyBackend,
        keep_some: Option<u64>,
        command: &str,
    ) -> Result<Repo> {
        let index = backend.index_file(&root.join(INDEX_NAME), keep_some)?;
        Repo::open_inner(root, Box::new(backend), true, command, None, Some(index))
    }

    fn open_unlocked(
        root: &Path,
        write: bool,
        command: &str,
        unlocked: Option<([u8; 32], String)>,
    ) -> Result<Repo> {
        #[cfg(feature = "s3")]
        if let Some(loc) = remote(root)? {
            return Repo::open_remote(&loc, write, command, unlocked);
        }
        #[cfg(not(feature = "s3"))]
        remote(root)?;
        Repo::open_inner(
            root,
            Box::new(LocalBackend::new(root)),
            write,
            command,
            unlocked,
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
        unlocked: Option<([u8; 32], String)>,
    ) -> Result<Repo> {
        let backend = crate::s3::S3Backend::new(loc)?;
        let config = load_config(&backend, Path::new(&loc.to_string()))?;
        let unlocked = match unlocked {
            Some(u) => Some(u),
            None if config.key_scheme == crate::crypto::SCHEME => {
                Some(unlock_asking(&backend, &config)?)
            }
            None => None,
        };
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
        let mut repo = Repo::open_inner(&state, Box::new(backend), write, command, unlocked, None)?;
        repo._lease = lease;
        if rebuild || fresh_nodes {
            crate::nodecache::fill(&repo)?;
        }
        Ok(repo)
    }

    fn open_inner(
        root: &Path,
        backend: Box<dyn Backend>,
        write: bool,
        command: &str,
        unlocked: Option<([u8; 32], String)>,
        index_file: Option<crate::storage::PowerLossFile>,
    ) -> Result<Repo> {
        let config = load_config(backend.as_ref(), root)?;
        // The passphrase is checked before anything else is read or written.
        let (keys, key_id) = if config.key_scheme == crate::crypto::SCHEME {
            let (master, key_id) = match unlocked {
                Some(u) => u,
                None => unlock_asking(backend.as_ref(), &config)?,
            };
            (
                Some(crate::crypto::Keys::from_master(&master)),
                Some(key_id),
            )
        } else {
            (None, None)
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
            crate::refs::upgrade(&repo)?;
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

impl Drop for Repo {
    fn drop(&mut self) {
        if let Some(name) = self.reader.take() {
            crate::readers::unregister(self.backend.as_ref(), &name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_round_trip_and_newer_version() {
        let c = Config::new(ChunkerParams::default(), 3).unwrap();
        assert_eq!(Config::decode(&c.encode().unwrap()).unwrap(), c);
        let json = serde_json::to_vec(&c).unwrap();
        let newer = frame::wrap(CONFIG_MAGIC, CONFIG_VERSION + 1, &json);
        assert_eq!(
            Config::decode(&newer).unwrap_err().kind(),
            crate::ErrorKind::VersionUnsupported
        );
        assert!(Config::new(ChunkerParams::default(), 0).is_err());
    }

    #[test]
    fn lock_excludes_and_stale_lock_is_taken() {
        let dir = tempfile::tempdir().unwrap();
        let l = Lock::acquire(dir.path(), "test").unwrap();
        let err = Lock::acquire(dir.path(), "second").err().unwrap();
        assert_eq!(err.kind(), crate::ErrorKind::Locked);
        assert!(err.to_string().contains(&std::process::id().to_string()));
        drop(l);
        // A lock left by a process that no longer exists is stale.
        let stale = LockInfo {
            pid: 999_999_999,
            host: hostname(),
            time: "then".into(),
            command: "backup".into(),
        };
        fs::write(
            dir.path().join(LOCK_NAME),
            serde_json::to_vec(&stale).unwrap(),
        )
        .unwrap();
        assert!(Lock::acquire(dir.path(), "test").is_ok());
    }
}

//! The repository's files and their rules, below everything that opens one: the layout and
//! its names, the config (and its copy), the key files, where a repository is, and the writer's
//! lock.
//!
//! ```text
//! REPO/config                 framed JSON (magic STRACONF), written once by `init`
//! REPO/config.copy            the same bytes again
//! REPO/packs/ab/<id>.pack     pack files, named by the BLAKE3 of their bytes
//! REPO/snapshots/<id>.snap    one framed manifest per snapshot
//! REPO/index.redb             the index (a rebuildable cache)
//! REPO/page-sums/<hex>        chunk digests of large source files
//! REPO/readers/<...>.json     readers working without the lock
//! REPO/lock                   present while a writer works
//! ```

use crate::chunker::ChunkerParams;
use crate::codec::frame;
use crate::error::{Error, ErrorKind, IoContext, Result};
use crate::id::ChunkId;
use crate::storage::{Backend, LocalBackend};
use crate::sys::{getrandom, hostname, pid_alive};
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

    pub(crate) fn encode(&self) -> Result<Vec<u8>> {
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

/// Where the key of an encrypted repository comes from. Only the caller knows whether a
/// passphrase may be asked for (a terminal, a file, a variable): the library never looks.
#[derive(Default)]
pub enum Key<'a> {
    /// None: an encrypted repository fails to open, saying how to give its passphrase.
    #[default]
    None,
    /// This passphrase.
    Passphrase(&'a str),
    /// A passphrase asked for only if the repository turns out to be encrypted.
    Ask(&'a dyn Fn() -> Result<String>),
    /// A master key and key-file id [`unlock`] returned earlier (a long-running process
    /// unlocks once).
    Master(&'a ([u8; 32], String)),
}

/// The master key of an encrypted repository from `key`; `None` for a plain one.
pub fn unlock_with(
    backend: &dyn Backend,
    config: &Config,
    key: &Key,
) -> Result<Option<([u8; 32], String)>> {
    if config.key_scheme != crate::crypto::SCHEME {
        return Ok(None);
    }
    let unlocked = match key {
        Key::None => return Err(Error::invalid(crate::crypto::NO_PASSPHRASE)),
        Key::Passphrase(pass) => unlock(backend, config, pass)?,
        Key::Ask(ask) => unlock(backend, config, &ask()?)?,
        Key::Master(m) => (*m).clone(),
    };
    Ok(Some(unlocked))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunker::ChunkerParams;

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

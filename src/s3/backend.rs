//! The S3 backend and its lease (the `s3` feature).

use super::S3Location;
use crate::error::{Error, Result};
use crate::storage::Backend;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjPath;
use object_store::{BackoffConfig, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A repository's objects in an S3 bucket.
pub struct S3Backend {
    store: Arc<AmazonS3>,
    location: S3Location,
    runtime: tokio::runtime::Runtime,
    /// A writer's lease on the repository: every upload and delete checks it first.
    lease: std::sync::Mutex<Option<Arc<LeaseState>>>,
    /// The local cache of chunk-list nodes, once the repository's cache directory is known.
    nodes: std::sync::OnceLock<crate::nodecache::NodeCache>,
    /// Recently read blocks of packs.
    blocks: std::sync::Mutex<Blocks>,
    stats: Stats,
}

/// Requests made for repository objects (the lease's own are not counted), and bytes moved.
#[derive(Default)]
struct Stats {
    get: AtomicU64,
    put: AtomicU64,
    list: AtomicU64,
    head: AtomicU64,
    delete: AtomicU64,
    down: AtomicU64,
    up: AtomicU64,
}

impl Stats {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

impl Drop for S3Backend {
    fn drop(&mut self) {
        // What this process asked of the store, on stderr, when the program wants it.
        if super::options().report_requests {
            let s = &self.stats;
            let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
            eprintln!(
                "s3 requests: {} GET, {} PUT, {} LIST, {} HEAD, {} DELETE; {} bytes down, {} bytes up",
                n(&s.get),
                n(&s.put),
                n(&s.list),
                n(&s.head),
                n(&s.delete),
                n(&s.down),
                n(&s.up)
            );
        }
    }
}

/// Small reads of a pack (a restore of many small files, chunks a few kilobytes apart) are
/// served from aligned blocks of this size, each downloaded once: one request instead of
/// dozens. Packs never change under their name, so a block stays true.
const BLOCK: u64 = 4 << 20;
/// Pack reads up to this size go through the blocks: small files and chunk-list nodes among
/// other data. A larger read, or a piece of a large file's sequential read (which a block
/// would download for a part of it at a pack's edge), is a ranged GET of its own.
const SMALL_READ: u64 = BLOCK / 2;
/// Blocks kept: at most this many times [`BLOCK`] bytes of memory.
const BLOCKS_KEPT: usize = 24;

/// A block being downloaded (by the first thread that wanted it) or downloaded.
type BlockSlot = Arc<std::sync::OnceLock<std::result::Result<bytes::Bytes, String>>>;

/// The block cache, oldest first.
#[derive(Default)]
struct Blocks {
    slots: std::collections::HashMap<(String, u64), BlockSlot>,
    order: std::collections::VecDeque<(String, u64)>,
}

/// Reads and uploads kept in flight at once.
const PARALLEL_REQUESTS: usize = 16;

/// Transient failures (5xx, throttling, timeouts, resets) are retried this often, with
/// exponential backoff from 100 ms to 10 s, within 3 minutes per request.
fn retry() -> RetryConfig {
    RetryConfig {
        max_retries: 8,
        retry_timeout: Duration::from_secs(180),
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            base: 2.0,
        },
    }
}

/// Runs a read (GET, HEAD, LIST: idempotent) again when it failed before the store answered in
/// a way object_store does not retry: its HTTP client's "error sending request" without a
/// cause it recognises, as when a pooled connection is closed by the server as it is reused.
fn retry_unsent<T>(
    mut op: impl FnMut() -> std::result::Result<T, object_store::Error>,
) -> std::result::Result<T, object_store::Error> {
    let mut delay = Duration::from_millis(50);
    let mut tries = 1;
    loop {
        match op() {
            Err(e) if tries < 4 && unsent(&e) => {
                tracing::debug!("request not sent ({e}); trying again");
                std::thread::sleep(delay);
                delay *= 4;
                tries += 1;
            }
            other => return other,
        }
    }
}

/// True for an error of a request that never reached the store.
fn unsent(e: &object_store::Error) -> bool {
    matches!(e, object_store::Error::Generic { .. })
        && e.to_string().contains("error sending request")
}

impl S3Backend {
    /// Connects with the settings of `settings::for_bucket`: the standard AWS variables
    /// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT_URL`) and the
    /// S3 settings file. A self-hosted store is addressed path-style (`ENDPOINT/BUCKET/KEY`).
    pub fn new(location: &S3Location) -> Result<S3Backend> {
        // TLS (for https endpoints) through rustls with ring; a second call finds it installed.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let s = super::settings::for_bucket(&location.bucket)?;
        // The rest of the standard variables (AWS_CA_BUNDLE's kin, container credentials...);
        // the settings above override them.
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(&location.bucket)
            .with_retry(retry())
            .with_virtual_hosted_style_request(false);
        if let Some(e) = &s.endpoint {
            builder = builder
                .with_endpoint(e)
                .with_allow_http(e.starts_with("http://"));
        }
        // Over TLS, whose records are authenticated, the body needs no SHA-256 of its own in
        // the request signature (as AWS's own clients do); over plain http it keeps one.
        let tls = s
            .endpoint
            .as_ref()
            .is_none_or(|e| e.starts_with("https://"));
        builder = builder.with_unsigned_payload(tls);
        // An idle connection is dropped before a store is likely to have closed it (servers
        // close idle ones after 5 to 60 s): a request on a connection closed under it fails
        // without being retried. This matters after a pause, such as a daemon's idle hour.
        if std::env::var_os("AWS_POOL_IDLE_TIMEOUT").is_none() {
            builder = builder.with_config(
                object_store::aws::AmazonS3ConfigKey::Client(
                    object_store::ClientConfigKey::PoolIdleTimeout,
                ),
                "4s",
            );
        }
        let region = match (&s.region, &s.endpoint) {
            (Some(r), _) => r.as_str(),
            // Garage's default region; a self-hosted store with another names it.
            (None, Some(_)) => "garage",
            (None, None) => "us-east-1",
        };
        builder = builder.with_region(region);
        if let Some(k) = &s.access_key_id {
            builder = builder.with_access_key_id(k);
        }
        if let Some(k) = &s.secret_access_key {
            builder = builder.with_secret_access_key(k);
        }
        if let Some(t) = &s.session_token {
            builder = builder.with_token(t);
        }
        let store = builder.build().map_err(|e| {
            Error::invalid(format!(
                "{location}: {e} (set AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION and, \
                 for a self-hosted store, AWS_ENDPOINT_URL, or write them in the S3 settings file: \
                 docs/S3.md)"
            ))
        })?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| Error::io("starting the S3 client", e))?;
        Ok(S3Backend {
            store: Arc::new(store),
            location: location.clone(),
            runtime,
            lease: std::sync::Mutex::new(None),
            nodes: std::sync::OnceLock::new(),
            blocks: std::sync::Mutex::new(Blocks::default()),
            stats: Stats::default(),
        })
    }

    /// Block `no` of pack `name` (shorter at the end of the pack), downloaded once however many
    /// threads ask for it at the same time.
    fn block(&self, name: &str, no: u64) -> Result<bytes::Bytes> {
        let slot = {
            let mut blocks = self.blocks.lock().unwrap_or_else(|p| p.into_inner());
            let key = (name.to_string(), no);
            match blocks.slots.get(&key) {
                Some(s) => s.clone(),
                None => {
                    let s = BlockSlot::default();
                    blocks.slots.insert(key.clone(), s.clone());
                    blocks.order.push_back(key);
                    while blocks.order.len() > BLOCKS_KEPT {
                        if let Some(old) = blocks.order.pop_front() {
                            blocks.slots.remove(&old);
                        }
                    }
                    s
                }
            }
        };
        let got = slot.get_or_init(|| {
            // A range past the end of the object returns what there is.
            Stats::add(&self.stats.get, 1);
            let got = retry_unsent(|| {
                self.runtime.block_on(
                    self.store
                        .get_range(&self.key(name), no * BLOCK..(no + 1) * BLOCK),
                )
            })
            .map_err(|e| self.fail("download", name, e).to_string());
            if let Ok(b) = &got {
                Stats::add(&self.stats.down, b.len() as u64);
            }
            got
        });
        match got {
            Ok(b) => Ok(b.clone()),
            Err(msg) => {
                // Not kept: the next read tries again.
                let mut blocks = self.blocks.lock().unwrap_or_else(|p| p.into_inner());
                let key = (name.to_string(), no);
                if blocks
                    .slots
                    .get(&key)
                    .is_some_and(|s| Arc::ptr_eq(s, &slot))
                {
                    blocks.slots.remove(&key);
                    blocks.order.retain(|k| k != &key);
                }
                Err(Error::io(
                    msg.clone(),
                    std::io::Error::other("request failed"),
                ))
            }
        }
    }

    /// Reads `buf.len()` bytes at `offset` of pack `name` through the block cache.
    fn read_blocks(&self, name: &str, offset: u64, buf: &mut [u8]) -> Result<()> {
        let mut done = 0usize;
        while done < buf.len() {
            let at = offset + done as u64;
            let block = self.block(name, at / BLOCK)?;
            let start = (at % BLOCK) as usize;
            let take = (buf.len() - done).min(block.len().saturating_sub(start));
            if take == 0 {
                return Err(Error::corrupt(format!(
                    "{}/{name}: {} bytes at {offset} asked, the object ends before",
                    self.location,
                    buf.len()
                )));
            }
            buf[done..done + take].copy_from_slice(&block[start..start + take]);
            done += take;
        }
        Ok(())
    }

    /// Keeps chunk-list nodes in the cache file at `path`. Returns whether it is empty (new,
    /// or replaced).
    pub fn attach_node_cache(&self, path: &std::path::Path) -> Result<bool> {
        let cache = crate::nodecache::NodeCache::open(path)?;
        let empty = cache.is_empty();
        let _ = self.nodes.set(cache);
        Ok(empty)
    }

    /// Refuses a change when this process holds a lease that is lost or about to expire: a
    /// writer that was paused past its lease must not change a repository another writer may
    /// now hold.
    fn may_change(&self, name: &str) -> Result<()> {
        if name == LOCK_OBJECT {
            return Ok(());
        }
        let lease = self.lease.lock().unwrap_or_else(|p| p.into_inner()).clone();
        match lease {
            Some(l) => {
                self.confirm(&l)?;
                l.check()
            }
            None => Ok(()),
        }
    }

    /// Before the first change under a new lease: waits out the settling time, then reads the
    /// lease back. Another writer that took it at the same moment has written its own by then,
    /// and the later of the two holds it.
    fn confirm(&self, lease: &LeaseState) -> Result<()> {
        let mut settling = lease.settling.lock().unwrap_or_else(|p| p.into_inner());
        let Some(until) = *settling else {
            return Ok(());
        };
        std::thread::sleep(until.saturating_duration_since(std::time::Instant::now()));
        let lost = |why: String| {
            lease.lost.store(true, Ordering::SeqCst);
            Err(Error::Locked(why))
        };
        match read_lease(&self.runtime, &self.store, &self.key(LOCK_OBJECT))? {
            Some(now) if now.token == lease.token => {
                *settling = None;
                Ok(())
            }
            Some(other) => lost(format!(
                "{} was locked at the same moment by pid {} on {} ({}); try again",
                self.location, other.pid, other.host, other.command
            )),
            None => lost(format!(
                "{}: the lease vanished as it was taken; try again",
                self.location
            )),
        }
    }

    fn key(&self, name: &str) -> ObjPath {
        if self.location.prefix.is_empty() {
            ObjPath::from(name)
        } else {
            ObjPath::from(format!("{}/{name}", self.location.prefix))
        }
    }

    fn fail(&self, what: &str, name: &str, e: object_store::Error) -> Error {
        let kind = match e {
            object_store::Error::NotFound { .. } => std::io::ErrorKind::NotFound,
            object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. } => std::io::ErrorKind::PermissionDenied,
            _ => std::io::ErrorKind::Other,
        };
        Error::io(
            format!("{what} {}/{name}", self.location),
            std::io::Error::new(kind, e.to_string()),
        )
    }
}

impl Backend for S3Backend {
    fn put(&self, name: &str, data: &[u8]) -> Result<()> {
        self.put_owned(name, data.to_vec())
    }

    fn put_owned(&self, name: &str, data: Vec<u8>) -> Result<()> {
        self.may_change(name)?;
        let key = self.key(name);
        Stats::add(&self.stats.put, 1);
        Stats::add(&self.stats.up, data.len() as u64);
        let payload = PutPayload::from(data);
        self.runtime
            .block_on(self.store.put(&key, payload))
            .map_err(|e| self.fail("upload", name, e))?;
        Ok(())
    }

    fn get(&self, name: &str) -> Result<Vec<u8>> {
        let key = self.key(name);
        Stats::add(&self.stats.get, 1);
        retry_unsent(|| {
            self.runtime.block_on(async {
                let got = self.store.get(&key).await?;
                got.bytes().await
            })
        })
        .map(|b| {
            Stats::add(&self.stats.down, b.len() as u64);
            b.to_vec()
        })
        .map_err(|e| self.fail("download", name, e))
    }

    fn read_into(&self, name: &str, offset: u64, buf: &mut [u8]) -> Result<()> {
        if name.starts_with("packs/") && buf.len() as u64 <= SMALL_READ {
            return self.read_blocks(name, offset, buf);
        }
        self.read_into_sequential(name, offset, buf)
    }

    fn read_into_sequential(&self, name: &str, offset: u64, buf: &mut [u8]) -> Result<()> {
        let key = self.key(name);
        let range = offset..offset + buf.len() as u64;
        Stats::add(&self.stats.get, 1);
        Stats::add(&self.stats.down, buf.len() as u64);
        // The body is copied into `buf` as it arrives: no second buffer of the whole range.
        let got = retry_unsent(|| {
            self.runtime.block_on(async {
                use futures::StreamExt;
                let options = object_store::GetOptions::new().with_range(Some(range.clone()));
                let mut body = self.store.get_opts(&key, options).await?.into_stream();
                let mut at = 0usize;
                while let Some(piece) = body.next().await {
                    let piece = piece?;
                    let Some(dst) = buf.get_mut(at..at + piece.len()) else {
                        return Ok(None);
                    };
                    dst.copy_from_slice(&piece);
                    at += piece.len();
                }
                Ok(Some(at))
            })
        })
        .map_err(|e| self.fail("download", name, e))?;
        if got != Some(buf.len()) {
            return Err(Error::corrupt(format!(
                "{}/{name}: {} bytes at {offset} asked, {} returned",
                self.location,
                buf.len(),
                got.map_or("more".to_string(), |n| n.to_string())
            )));
        }
        Ok(())
    }

    fn size(&self, name: &str) -> Result<u64> {
        let key = self.key(name);
        Stats::add(&self.stats.head, 1);
        retry_unsent(|| self.runtime.block_on(self.store.head(&key)))
            .map(|m| m.size)
            .map_err(|e| self.fail("look up", name, e))
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>> {
        use futures::TryStreamExt;
        let key = self.key(prefix);
        Stats::add(&self.stats.list, 1);
        let strip = if self.location.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.location.prefix)
        };
        let metas: Vec<object_store::ObjectMeta> = retry_unsent(|| {
            self.runtime
                .block_on(self.store.list(Some(&key)).try_collect())
        })
        .map_err(|e| self.fail("list", prefix, e))?;
        let mut out: Vec<String> = metas
            .into_iter()
            .filter_map(|m| m.location.as_ref().strip_prefix(&strip).map(str::to_string))
            .collect();
        out.sort();
        Ok(out)
    }

    fn delete(&self, name: &str) -> Result<()> {
        self.may_change(name)?;
        let key = self.key(name);
        Stats::add(&self.stats.delete, 1);
        match self.runtime.block_on(self.store.delete(&key)) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.fail("delete", name, e)),
        }
    }

    fn parallelism(&self) -> Option<usize> {
        Some(PARALLEL_REQUESTS)
    }

    fn node_cache(&self) -> Option<&crate::nodecache::NodeCache> {
        self.nodes.get()
    }

    fn exists(&self, name: &str) -> Result<bool> {
        let key = self.key(name);
        Stats::add(&self.stats.head, 1);
        match retry_unsent(|| self.runtime.block_on(self.store.head(&key))) {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.fail("look up", name, e)),
        }
    }
}

/// The lease object: who writes to the repository, until when.
pub const LOCK_OBJECT: &str = "lock";
/// A lease lasts this long unless renewed (see [`super::S3Options::lease`]).
fn lease_ttl() -> Duration {
    super::options()
        .lease
        .clamp(Duration::from_secs(3), Duration::from_secs(3600))
}
/// Between writing the lease and reading it back (before the first change the writer makes): a
/// writer that read "free" at the same moment has written its own by then, and the later of the
/// two wins.
const LEASE_SETTLE: Duration = Duration::from_millis(1500);

#[derive(serde::Serialize, serde::Deserialize, Debug)]
pub struct LeaseInfo {
    pub host: String,
    pub pid: u32,
    pub command: String,
    pub token: String,
    /// Unix milliseconds.
    pub expires_ms: i64,
    pub time: String,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// What the refresher and the backend share about a held lease.
pub struct LeaseState {
    token: String,
    expires_ms: std::sync::atomic::AtomicI64,
    lost: std::sync::atomic::AtomicBool,
    /// Until the lease has been read back after settling: when that may be done. The process
    /// works meanwhile (walks, reads, compresses), but changes nothing in the store.
    settling: std::sync::Mutex<Option<std::time::Instant>>,
}

impl LeaseState {
    fn check(&self) -> Result<()> {
        use std::sync::atomic::Ordering;
        let left = self.expires_ms.load(Ordering::SeqCst) - now_ms();
        if self.lost.load(Ordering::SeqCst) || left < (lease_ttl() / 3).as_millis() as i64 {
            return Err(Error::Locked(
                "this process's lease on the repository was lost or has expired (it was paused, \
                 or the store was unreachable); nothing more is written; run the command again"
                    .into(),
            ));
        }
        Ok(())
    }
}

/// A writer's lease on an S3 repository, refreshed in the background and given back on drop.
pub struct Lease {
    state: Arc<LeaseState>,
    stop: Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
    store: Arc<AmazonS3>,
    key: ObjPath,
}

fn read_lease(
    rt: &tokio::runtime::Runtime,
    store: &AmazonS3,
    key: &ObjPath,
) -> Result<Option<LeaseInfo>> {
    match retry_unsent(|| rt.block_on(async { store.get(key).await?.bytes().await })) {
        Ok(b) => Ok(serde_json::from_slice(&b).ok()),
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(Error::io(
            "read the repository lease",
            std::io::Error::other(e.to_string()),
        )),
    }
}

fn write_lease(
    rt: &tokio::runtime::Runtime,
    store: &AmazonS3,
    key: &ObjPath,
    info: &LeaseInfo,
) -> Result<()> {
    let body = serde_json::to_vec(info).map_err(|e| Error::invalid(e.to_string()))?;
    rt.block_on(store.put(key, PutPayload::from(body)))
        .map(|_| ())
        .map_err(|e| {
            Error::io(
                "write the repository lease",
                std::io::Error::other(e.to_string()),
            )
        })
}

impl S3Backend {
    /// Takes the repository's lease for `command` and attaches it to this backend: every later
    /// upload or delete checks that it is still held.
    pub fn lease(&self, command: &str) -> Result<Lease> {
        let key = self.key(LOCK_OBJECT);
        if let Some(held) = read_lease(&self.runtime, &self.store, &key)?
            && held.expires_ms > now_ms()
        {
            return Err(Error::Locked(format!(
                "{} is locked by pid {} on {} ({}) since {}, its lease runs {} s more; if that \
                 process is gone, wait for the lease to run out or run `strata unlock`",
                self.location,
                held.pid,
                held.host,
                held.command,
                held.time,
                (held.expires_ms - now_ms()) / 1000
            )));
        }
        let mut token = [0u8; 16];
        crate::sys::secure_random(&mut token)?;
        let token: String = token.iter().map(|b| format!("{b:02x}")).collect();
        let info = LeaseInfo {
            host: crate::sys::hostname(),
            pid: std::process::id(),
            command: command.to_string(),
            token: token.clone(),
            expires_ms: now_ms() + lease_ttl().as_millis() as i64,
            time: chrono::Local::now().to_rfc3339(),
        };
        write_lease(&self.runtime, &self.store, &key, &info)?;
        let state = Arc::new(LeaseState {
            token,
            expires_ms: std::sync::atomic::AtomicI64::new(info.expires_ms),
            lost: std::sync::atomic::AtomicBool::new(false),
            settling: std::sync::Mutex::new(Some(std::time::Instant::now() + LEASE_SETTLE)),
        });
        let stop = Arc::new((std::sync::Mutex::new(false), std::sync::Condvar::new()));
        let thread = {
            let (state, stop, store, key) =
                (state.clone(), stop.clone(), self.store.clone(), key.clone());
            let mut info = info;
            std::thread::Builder::new()
                .name("lease".into())
                .spawn(move || refresh(state, stop, store, key, &mut info))
                .map_err(|e| Error::io("starting the lease refresher", e))?
        };
        *self.lease.lock().unwrap_or_else(|p| p.into_inner()) = Some(state.clone());
        Ok(Lease {
            state,
            stop,
            thread: Some(thread),
            store: self.store.clone(),
            key,
        })
    }

    /// Removes the lease object whoever holds it (`strata unlock`); true if there was one.
    /// Deletes the lease (`strata unlock`). A live one (its holder runs on this host, or, on
    /// another host, it has not expired) is refused unless `force`.
    pub fn break_lease(&self, force: bool) -> Result<bool> {
        let key = self.key(LOCK_OBJECT);
        let lease = read_lease(&self.runtime, &self.store, &key)?;
        if let Some(l) = &lease
            && !force
            && l.expires_ms > now_ms()
            && (l.host != crate::sys::hostname() || crate::sys::pid_alive(l.pid))
        {
            return Err(Error::Locked(format!(
                "the lease is held by pid {} on {} ({}) since {} and is still being renewed; wait \
                 for it (`strata unlock --force` removes it anyway, and then that writer fails \
                 at its next commit)",
                l.pid, l.host, l.command, l.time
            )));
        }
        let held = lease.is_some();
        if held {
            self.runtime
                .block_on(self.store.delete(&key))
                .map_err(|e| self.fail("delete", LOCK_OBJECT, e))?;
        }
        Ok(held)
    }
}

fn refresh(
    state: Arc<LeaseState>,
    stop: Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>,
    store: Arc<AmazonS3>,
    key: ObjPath,
    info: &mut LeaseInfo,
) {
    use std::sync::atomic::Ordering;
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        state.lost.store(true, Ordering::SeqCst);
        return;
    };
    loop {
        {
            let (lock, cv) = &*stop;
            let guard = lock.lock().unwrap_or_else(|p| p.into_inner());
            let (guard, _) = cv
                .wait_timeout_while(guard, lease_ttl() / 4, |stopped| !*stopped)
                .unwrap_or_else(|p| p.into_inner());
            if *guard {
                return;
            }
        }
        // Still ours? Then push the expiry on. A lease someone else holds now is lost for good.
        match read_lease(&rt, &store, &key) {
            Ok(Some(held)) if held.token == state.token => {
                info.expires_ms = now_ms() + lease_ttl().as_millis() as i64;
                if write_lease(&rt, &store, &key, info).is_ok() {
                    state.expires_ms.store(info.expires_ms, Ordering::SeqCst);
                }
            }
            Ok(_) => {
                state.lost.store(true, Ordering::SeqCst);
                return;
            }
            Err(_) => {} // unreachable for now; the expiry check refuses changes in time
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        {
            let (lock, cv) = &*self.stop;
            *lock.lock().unwrap_or_else(|p| p.into_inner()) = true;
            cv.notify_all();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            && let Ok(Some(held)) = read_lease(&rt, &self.store, &self.key)
            && held.token == self.state.token
        {
            let _ = rt.block_on(self.store.delete(&self.key));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generic(msg: &str) -> object_store::Error {
        object_store::Error::Generic {
            store: "S3",
            source: Box::new(std::io::Error::other(msg.to_string())),
        }
    }

    #[test]
    fn a_request_that_was_not_sent_is_tried_again_and_others_are_not() {
        let mut calls = 0;
        let got = retry_unsent(|| {
            calls += 1;
            match calls {
                1 | 2 => Err(generic("HTTP error: error sending request")),
                _ => Ok(7),
            }
        });
        assert_eq!((got.unwrap(), calls), (7, 3));

        // Not forever.
        let mut calls = 0;
        let got: std::result::Result<(), _> = retry_unsent(|| {
            calls += 1;
            Err(generic("HTTP error: error sending request"))
        });
        assert!(got.is_err());
        assert_eq!(calls, 4);

        // An answer from the store is final here (object_store retries what it should).
        let mut calls = 0;
        let got: std::result::Result<(), _> = retry_unsent(|| {
            calls += 1;
            Err(object_store::Error::NotFound {
                path: "x".into(),
                source: Box::new(std::io::Error::other("404")),
            })
        });
        assert!(got.is_err());
        assert_eq!(calls, 1);
    }
}

//! Readers that work without the repository lock (restore into a new directory, verify, list,
//! the daemon's reads) announce themselves with a small file under `readers/`, so that a gc
//! running beside them keeps the pack files they may still read.
//!
//! A reader writes its file before it opens the index, and removes it when it is done. gc
//! commits its index transaction first and lists the readers after: a reader it does not see
//! opened the index after that commit, and so never learns of the packs gc deletes. While a
//! live reader is listed, gc deletes no pack file; the packs it dropped from the index stay as
//! unknown pack files, which the next gc without readers removes.
//!
//! A reader is live while its process runs (same host), or for [`REMOTE_READER_TTL_S`] after it
//! started (another host, whose processes cannot be checked). A file whose process is gone is
//! stale, and gc removes it.

use crate::error::Result;
use crate::storage::Backend;
use serde::{Deserialize, Serialize};

pub const PREFIX: &str = "readers";

/// How long a reader on another host counts as live.
pub const REMOTE_READER_TTL_S: i64 = 24 * 3600;

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct ReaderInfo {
    pub pid: u32,
    pub host: String,
    /// Seconds since the epoch.
    pub started: i64,
    pub command: String,
}

/// Registers this process as a reader, returning the name of its file (for [`unregister`]). A
/// repository this process cannot write to (a read-only mount, another user's directory) gets
/// no file: `None`, and the read goes on without the protection (no gc can run there as this
/// user either).
pub fn register(backend: &dyn Backend, command: &str) -> Option<String> {
    let mut nonce = [0u8; 8];
    crate::sys::getrandom(&mut nonce);
    let host = crate::sys::hostname();
    let name = format!(
        "{PREFIX}/{host}-{}-{:016x}.json",
        std::process::id(),
        u64::from_le_bytes(nonce)
    );
    let info = ReaderInfo {
        pid: std::process::id(),
        host,
        started: chrono::Utc::now().timestamp(),
        command: command.to_string(),
    };
    let body = serde_json::to_vec(&info).ok()?;
    backend.put(&name, &body).ok()?;
    Some(name)
}

/// Removes a reader's file: it reads no more.
pub fn unregister(backend: &dyn Backend, name: &str) {
    let _ = backend.delete(name);
}

/// Whether the reader a file describes may still be reading, as seen from this host at `now`.
pub fn is_live(info: &ReaderInfo, host: &str, now: i64) -> bool {
    if info.host == host {
        crate::sys::pid_alive(info.pid)
    } else {
        now.saturating_sub(info.started) < REMOTE_READER_TTL_S
    }
}

/// The live readers of the repository. Files of readers that are gone (and unreadable ones,
/// which only a killed `put` can leave half written) are removed on the way.
pub fn live(backend: &dyn Backend) -> Result<Vec<ReaderInfo>> {
    let host = crate::sys::hostname();
    let now = chrono::Utc::now().timestamp();
    let mut out = Vec::new();
    for name in backend.list(PREFIX)? {
        let info = match backend.get(&name) {
            Ok(bytes) => serde_json::from_slice::<ReaderInfo>(&bytes).ok(),
            // Removed since the listing: that reader has finished.
            Err(e) if e.kind() == crate::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        match info {
            Some(info) if is_live(&info, &host, now) => out.push(info),
            _ => {
                let _ = backend.delete(&name);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::LocalBackend;

    #[test]
    fn a_reader_is_listed_while_it_lives_and_stale_files_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let backend = LocalBackend::new(dir.path());
        assert!(live(&backend).unwrap().is_empty());
        let reader = register(&backend, "verify").expect("registered");
        let listed = live(&backend).unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].pid, std::process::id());
        assert_eq!(listed[0].command, "verify");
        unregister(&backend, &reader);
        assert!(live(&backend).unwrap().is_empty());

        // A reader of this host whose process is gone, and a half-written file: both stale.
        let gone = ReaderInfo {
            pid: u32::MAX - 7,
            host: crate::sys::hostname(),
            started: chrono::Utc::now().timestamp(),
            command: "restore".into(),
        };
        backend
            .put("readers/gone.json", &serde_json::to_vec(&gone).unwrap())
            .unwrap();
        backend.put("readers/torn.json", b"{\"pid\":").unwrap();
        assert!(live(&backend).unwrap().is_empty());
        assert!(backend.list(PREFIX).unwrap().is_empty());
    }

    #[test]
    fn another_hosts_reader_counts_until_its_time_is_up() {
        let now = 1_000_000;
        let mut info = ReaderInfo {
            pid: 1,
            host: "elsewhere".into(),
            started: now - 60,
            command: "verify".into(),
        };
        assert!(is_live(&info, "here", now));
        info.started = now - REMOTE_READER_TTL_S - 1;
        assert!(!is_live(&info, "here", now));
    }
}

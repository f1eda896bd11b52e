//! Named streams: the output of a command, standard input, a PostgreSQL dump or a Redis RDB
//! file, each stored as one file of the snapshot.

use crate::error::{Error, Result};
use crate::manifest::SourceKind;

/// A named stream stored as one file of the snapshot.
#[derive(Clone, Debug)]
pub struct StreamSource {
    /// Its name (a top-level name in the snapshot).
    pub name: String,
    pub from: StreamFrom,
}

#[derive(Clone, Debug)]
pub enum StreamFrom {
    /// Standard output of `sh -c COMMAND`; the snapshot fails if the command fails.
    Command(String),
    Stdin,
    /// A plain-format `pg_dump` of the database this connection string (keyword/value or URI)
    /// names.
    Postgres(String),
    /// The RDB file a Redis server sends to a replica, fetched with `redis-cli --rdb`, from a
    /// `redis://` URL or a Unix socket (`unix:///path` or `/path`).
    Redis(String),
    /// A file read whole as one stream, without the file cache (PostgreSQL's WAL files, each
    /// read once and stored under its own name).
    File(std::path::PathBuf),
    /// Bytes the caller already holds (a PostgreSQL restore point's record), with what made
    /// them.
    Bytes(Vec<u8>, String),
}

/// Options given to `pg_dump`. Plain format without compression: a table that did not change
/// dumps to the same text, so it deduplicates; compressed or custom-format dumps scramble it.
pub const PG_DUMP_OPTIONS: [&str; 2] = ["--format=plain", "--no-password"];

impl StreamSource {
    /// How the manifest records where it came from.
    pub(crate) fn describe(&self) -> (SourceKind, String) {
        match &self.from {
            StreamFrom::Command(c) => (SourceKind::Command, format!("command: {c}")),
            StreamFrom::Stdin => (SourceKind::Stdin, "standard input".into()),
            StreamFrom::Postgres(c) => (SourceKind::Postgres, redact_conninfo(c)),
            StreamFrom::Redis(u) => (SourceKind::Redis, redact_conninfo(u)),
            StreamFrom::File(p) => (SourceKind::Path, p.display().to_string()),
            StreamFrom::Bytes(_, what) => (SourceKind::Command, what.clone()),
        }
    }

    /// Hands the stream to `consume`, with the words that name reading it in an error ("read
    /// standard input for", "read the output of the command for"): standard input, or the
    /// output of the program that produces the stream, which must then succeed. Returns what
    /// `consume` returned and what the stream's first bytes say about its source.
    pub(crate) fn read_with<T>(
        &self,
        consume: impl FnOnce(&mut dyn std::io::Read, &str) -> Result<T>,
    ) -> Result<(T, Vec<(String, String)>)> {
        let (kind, described) = self.describe();
        let kind = kind.as_str();
        if let StreamFrom::Bytes(bytes, _) = &self.from {
            let size = consume(&mut &bytes[..], "store")?;
            return Ok((size, vec![]));
        }
        if let StreamFrom::File(path) = &self.from {
            let file = std::fs::File::open(path).map_err(|e| Error::io_path("open", path, e))?;
            let size = consume(&mut std::io::BufReader::new(file), "read")?;
            return Ok((size, vec![]));
        }
        let (size, head) = match self.command() {
            None => {
                let mut input = Head {
                    inner: std::io::stdin().lock(),
                    head: Vec::new(),
                };
                let size = consume(&mut input, "read standard input for")?;
                (size, input.head)
            }
            Some(mut command) => {
                let program = command.get_program().to_string_lossy().into_owned();
                let mut child = command
                    .stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::piped())
                    .spawn()
                    .map_err(|e| {
                        Error::invalid(format!(
                            "{kind} source {} ({described}): cannot run {program}: {e}",
                            self.name
                        ))
                    })?;
                let mut out = Head {
                    inner: child.stdout.take().expect("stdout is piped"),
                    head: Vec::new(),
                };
                let read = consume(&mut out, "read the output of the command for");
                if read.is_err() {
                    let _ = child.kill();
                }
                let status = child.wait().map_err(|e| {
                    Error::invalid(format!(
                        "{kind} source {} ({described}): waiting for {program}: {e}",
                        self.name
                    ))
                })?;
                let size = read?;
                if !status.success() {
                    return Err(Error::invalid(format!(
                        "{kind} source {} ({described}): {program} failed ({status})",
                        self.name
                    )));
                }
                (size, out.head)
            }
        };
        Ok((size, self.details(&head)))
    }

    /// The program that produces the stream.
    fn command(&self) -> Option<std::process::Command> {
        let mut cmd;
        match &self.from {
            StreamFrom::Stdin | StreamFrom::File(_) | StreamFrom::Bytes(..) => return None,
            StreamFrom::Command(c) => {
                cmd = std::process::Command::new("sh");
                cmd.arg("-c").arg(c);
            }
            StreamFrom::Postgres(conn) => {
                cmd = std::process::Command::new("pg_dump");
                cmd.args(PG_DUMP_OPTIONS).arg(format!("--dbname={conn}"));
            }
            StreamFrom::Redis(url) => {
                cmd = std::process::Command::new("redis-cli");
                match url.strip_prefix("unix://") {
                    Some(path) => cmd.arg("-s").arg(path),
                    None if url.starts_with('/') => cmd.arg("-s").arg(url),
                    None => cmd.arg("-u").arg(url),
                };
                cmd.args(["--rdb", "-"]);
            }
        }
        Some(cmd)
    }

    /// What the first bytes of the stream say about its source.
    fn details(&self, head: &[u8]) -> Vec<(String, String)> {
        match &self.from {
            StreamFrom::Postgres(_) => {
                let mut d = vec![("dump options".to_string(), PG_DUMP_OPTIONS.join(" "))];
                let text = String::from_utf8_lossy(head);
                for (prefix, key) in [
                    ("-- Dumped from database version ", "server version"),
                    ("-- Dumped by pg_dump version ", "pg_dump version"),
                ] {
                    if let Some(v) = text.lines().find_map(|l| l.strip_prefix(prefix)) {
                        d.push((key.to_string(), v.trim().to_string()));
                    }
                }
                d
            }
            StreamFrom::Redis(_) => rdb_details(head),
            _ => vec![],
        }
    }
}

/// Removes the password from a connection string or URL before it is recorded.
pub fn redact_conninfo(conn: &str) -> String {
    if let Some((scheme, rest)) = conn.split_once("://") {
        let (auth, host) = match rest.split_once('@') {
            Some((a, h)) if !a.contains('/') => (Some(a), h),
            _ => (None, rest),
        };
        return match auth.and_then(|a| a.split_once(':')) {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
            None => conn.to_string(),
        };
    }
    conn.split_whitespace()
        .map(|kv| match kv.split_once('=') {
            Some(("password", _)) => "password=***".to_string(),
            _ => kv.to_string(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The RDB format version and the `redis-ver` auxiliary field from the start of an RDB file.
fn rdb_details(head: &[u8]) -> Vec<(String, String)> {
    let mut d = Vec::new();
    if head.len() >= 9 && &head[..5] == b"REDIS" {
        d.push((
            "rdb version".to_string(),
            String::from_utf8_lossy(&head[5..9])
                .trim_start_matches('0')
                .to_string(),
        ));
    }
    const KEY: &[u8] = b"\x09redis-ver";
    if let Some(at) = head.windows(KEY.len()).position(|w| w == KEY) {
        let rest = &head[at + KEY.len()..];
        // A string of fewer than 64 bytes: its length in one byte, then the bytes.
        if let Some((&len, value)) = rest.split_first()
            && len < 64
            && value.len() >= len as usize
        {
            d.push((
                "server version".to_string(),
                String::from_utf8_lossy(&value[..len as usize]).into_owned(),
            ));
        }
    }
    d
}

/// Keeps a copy of the first bytes that pass through a reader.
struct Head<R> {
    inner: R,
    head: Vec<u8>,
}

const HEAD_BYTES: usize = 4096;

impl<R: std::io::Read> std::io::Read for Head<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        let room = HEAD_BYTES.saturating_sub(self.head.len()).min(n);
        self.head.extend_from_slice(&buf[..room]);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_not_recorded() {
        assert_eq!(
            redact_conninfo("host=/tmp password=hunter2 dbname=app"),
            "host=/tmp password=*** dbname=app"
        );
        assert_eq!(
            redact_conninfo("postgresql://me:hunter2@db.local:5432/app"),
            "postgresql://me:***@db.local:5432/app"
        );
        assert_eq!(
            redact_conninfo("redis://:hunter2@127.0.0.1:6379/0"),
            "redis://:***@127.0.0.1:6379/0"
        );
        assert_eq!(
            redact_conninfo("postgresql://db.local/app"),
            "postgresql://db.local/app"
        );
    }

    #[test]
    fn rdb_header_details() {
        let mut head = b"REDIS0010\xfa\x09redis-ver\x067.0.15\xfa\x0aredis-bits".to_vec();
        let d = rdb_details(&head);
        assert_eq!(
            d,
            vec![
                ("rdb version".to_string(), "10".to_string()),
                ("server version".to_string(), "7.0.15".to_string())
            ]
        );
        // Cut short or not an RDB file: nothing made up.
        head.truncate(14);
        assert_eq!(rdb_details(&head).len(), 1);
        assert!(rdb_details(b"-- PostgreSQL database dump").is_empty());
    }
}

//! What each endpoint of `strata serve` answers, one function per endpoint. Which requests reach
//! them, and the checks every request passes first, are `http`'s: a handler checks only what is
//! particular to its endpoint (a restore target against `restore_roots`, the sources of a
//! snapshot against `backup_roots`).

use super::roots;
use super::wire::Response;
use super::{AdHoc, Daemon, RestoreRequest, Task};
use anyhow::Result;
use serde::Serialize;
use strata::snapshots;

const PAGE: &str = include_str!("page.html");
pub const OPENAPI: &str = include_str!("../../../docs/openapi.json");

/// A request that passed every check in `http::route`, on its way to an endpoint that needs a
/// token.
pub struct Call<'a> {
    pub d: &'a Daemon,
    /// The name of the token the caller presented.
    pub who: &'a str,
    pub body: &'a [u8],
    /// The `{id}` segment of the path (empty for an endpoint without one).
    pub id: &'a str,
    /// The query string, after `?` (empty when there is none).
    pub query: &'a str,
}

/// The value of `key` in a query string, percent-decoded (`+` for a space); `None` if absent,
/// not UTF-8, or with a `%` not followed by two hex digits.
pub fn query_value(query: &str, key: &str) -> Option<String> {
    let raw = query
        .split('&')
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))?;
    let raw = raw.replace('+', " ");
    // A malformed escape is refused rather than kept as text.
    let bytes = raw.as_bytes();
    let escapes_ok = bytes.iter().enumerate().all(|(i, b)| {
        *b != b'%'
            || bytes
                .get(i + 1..i + 3)
                .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit))
    });
    if !escapes_ok {
        return None;
    }
    percent_encoding::percent_decode_str(&raw)
        .decode_utf8()
        .ok()
        .map(|s| s.into_owned())
}

/// The most a download through the API holds in memory; larger files: `strata dump`.
const DOWNLOAD_MAX: u64 = 256 << 20;

/// `GET /api/snapshots/{id}/file?path=P`: one file's bytes, each chunk checked against its id.
pub fn download(c: &Call) -> Result<Response> {
    let Some(path) = query_value(c.query, "path") else {
        return Ok(Response::error(
            400,
            "give the file as ?path=PATH (percent-encoded)",
        ));
    };
    let repo = c.d.open_read()?;
    let snaps = snapshots::list(&repo)?;
    let snap = match snapshots::resolve(&snaps, c.id) {
        Ok(s) => s,
        Err(e) => return Ok(Response::error(404, e.to_string())),
    };
    let want = path.trim_matches('/').as_bytes();
    let Some(entry) = snap.manifest.entries.iter().find(|e| e.path == want) else {
        return Ok(Response::error(
            404,
            format!("{path:?} is not in the snapshot"),
        ));
    };
    if entry.kind != strata::manifest::EntryKind::File {
        return Ok(Response::error(400, format!("{path:?} is not a file")));
    }
    if entry.size > DOWNLOAD_MAX {
        return Ok(Response::error(
            413,
            format!(
                "{path:?} is {} bytes; the page downloads files up to {} MiB \
                 (`strata dump {} {path} > FILE` has no limit)",
                entry.size,
                DOWNLOAD_MAX >> 20,
                snap.id.short()
            ),
        ));
    }
    let mut body = Vec::with_capacity(entry.size as usize);
    strata::restore::dump::dump_file(&repo, entry, &mut body)?;
    Ok(Response {
        status: 200,
        content_type: "application/octet-stream",
        body,
    })
}

/// `GET /favicon.ico`: none, and no error for it.
pub fn favicon() -> Response {
    Response {
        status: 204,
        content_type: "image/x-icon",
        body: Vec::new(),
    }
}

impl Call<'_> {
    /// Queues `task` for the caller: 202 with the operation's address, or 503.
    fn submit(&self, what: String, task: Task) -> Response {
        match self.d.submit(task, self.who) {
            Ok(id) => {
                tracing::info!(who = self.who, what = what.as_str(), op = id, "accepted");
                accepted(id)
            }
            Err(e) => Response::error(503, format!("{e:#}")),
        }
    }
}

#[derive(Serialize)]
struct Accepted {
    operation: u64,
    href: String,
}

fn accepted(id: u64) -> Response {
    Response::json(
        202,
        &Accepted {
            operation: id,
            href: format!("/api/operations/{id}"),
        },
    )
}

/// A JSON body, or the value's default for an empty one.
fn parse<T: serde::de::DeserializeOwned + Default>(body: &[u8]) -> Result<T, Response> {
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| Response::error(400, format!("request body: {e}")))
}

/// The answer for a path refused by `roots`.
fn refused(r: roots::Refusal) -> Response {
    Response::error(r.status, r.message)
}

/// `GET /`: the page (no data in it).
pub fn page() -> Response {
    Response {
        status: 200,
        body: PAGE.as_bytes().to_vec(),
        content_type: "text/html; charset=utf-8",
    }
}

/// `GET /api/openapi.json`: the API description.
pub fn openapi() -> Response {
    Response {
        status: 200,
        body: OPENAPI.as_bytes().to_vec(),
        content_type: "application/json",
    }
}

/// `GET /health`: `ok` or `degraded` for anyone; the reasons only for an authenticated caller.
pub fn health(d: &Daemon, authenticated: bool) -> Response {
    #[derive(Serialize)]
    struct Health {
        status: &'static str,
        /// Only for an authenticated caller.
        #[serde(skip_serializing_if = "Option::is_none")]
        reasons: Option<Vec<String>>,
    }
    let reasons = d.health();
    let (status, word) = if reasons.is_empty() {
        (200, "ok")
    } else {
        (503, "degraded")
    };
    Response::json(
        status,
        &Health {
            status: word,
            reasons: authenticated.then_some(reasons),
        },
    )
}

/// `GET /metrics`.
pub fn metrics(c: &Call) -> Result<Response> {
    if let Some(f) = c.d.followers.get() {
        f.update_metrics(&c.d.metrics);
    }
    c.d.pg_watch.update_metrics(&c.d.metrics);
    Ok(Response {
        status: 200,
        body: c.d.metrics.render().into_bytes(),
        content_type: "application/openmetrics-text; version=1.0.0; charset=utf-8",
    })
}

/// `GET /api/snapshots`: newest first, without archived WAL files (as `strata list`).
pub fn list_snapshots(c: &Call) -> Result<Response> {
    let repo = c.d.open_read()?;
    let snaps = snapshots::list_without_wal(&repo)?;
    let out: Vec<_> = snaps
        .iter()
        .rev()
        .map(super::super::inspect::snap_json)
        .collect();
    Ok(Response::json(200, &out))
}

/// `GET /api/snapshots/{id}`.
pub fn show_snapshot(c: &Call) -> Result<Response> {
    let repo = c.d.open_read()?;
    let snaps = snapshots::list(&repo)?;
    Ok(match snapshots::resolve(&snaps, c.id) {
        Ok(s) => Response::json(200, &super::super::inspect::show_json(&repo, &snaps, s)),
        Err(e) => Response::error(404, e.to_string()),
    })
}

/// `POST /api/snapshots`: a run of a configured job, or a snapshot of sources the request names
/// (below `backup_roots`).
pub fn take_snapshot(c: &Call) -> Result<Response> {
    #[derive(serde::Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    struct Req {
        job: Option<String>,
        #[serde(default)]
        paths: Vec<std::path::PathBuf>,
        #[serde(default)]
        sqlite: Vec<String>,
        name: Option<String>,
        #[serde(default)]
        tags: Vec<String>,
        kind: Option<String>,
    }
    let a: Req = match parse(c.body) {
        Ok(r) => r,
        Err(e) => return Ok(e),
    };
    if let Some(job) = a.job {
        if c.d.job_config(&job).is_none() {
            return Ok(Response::error(404, format!("no job named {job:?}")));
        }
        return Ok(c.submit(format!("snapshot of job {job}"), Task::Job(job)));
    }
    if a.paths.is_empty() && a.sqlite.is_empty() {
        return Ok(Response::error(
            400,
            "give a job, or paths / sqlite for a snapshot of your own",
        ));
    }
    if let Err(r) = roots::backup_sources(&c.d.cfg.backup_roots, &a.paths, &a.sqlite) {
        return Ok(refused(r));
    }
    if let Some(k) = &a.kind
        && !["manual", "hourly", "daily", "weekly", "monthly"].contains(&k.as_str())
    {
        return Ok(Response::error(400, format!("unknown kind {k:?}")));
    }
    Ok(c.submit(
        format!("snapshot of {:?}", a.paths),
        Task::Snapshot(AdHoc {
            paths: a.paths,
            sqlite: a.sqlite,
            name: a.name,
            tags: a.tags,
            kind: a.kind,
        }),
    ))
}

/// `DELETE /api/snapshots/{id}`.
pub fn delete_snapshot(c: &Call) -> Result<Response> {
    // Resolved now, so a mistyped id fails at once and the operation names one snapshot.
    let repo = c.d.open_read()?;
    let snaps = snapshots::list(&repo)?;
    Ok(match snapshots::resolve(&snaps, c.id) {
        Ok(s) => {
            let hex = s.id.to_hex();
            c.submit(format!("delete {hex}"), Task::Delete(hex))
        }
        Err(e) => Response::error(404, e.to_string()),
    })
}

/// `GET /api/stats`.
pub fn stats(c: &Call) -> Result<Response> {
    let repo = c.d.open_read()?;
    let snaps = snapshots::list(&repo)?;
    Ok(Response::json(200, &strata::stats::stats(&repo, &snaps)?))
}

/// `POST /api/restore`: into a target below `restore_roots`.
pub fn restore(c: &Call) -> Result<Response> {
    let r: RestoreRequest = match serde_json::from_slice(c.body) {
        Ok(r) => r,
        Err(e) => return Ok(Response::error(400, format!("request body: {e}"))),
    };
    if r.snapshot.is_some() == r.at.is_some() {
        return Ok(Response::error(400, "give either snapshot or at"));
    }
    if let Err(r) = roots::restore_target(&c.d.cfg.restore_roots, &r.target) {
        return Ok(refused(r));
    }
    // What can be told now is told now, not by an operation that fails later: the snapshot
    // (or the time), and the paths asked for.
    let repo = c.d.open_read()?;
    let snaps = snapshots::list(&repo)?;
    let snap = match (&r.snapshot, &r.at) {
        (Some(spec), _) => snapshots::resolve(&snaps, spec),
        (_, Some(at)) => match snapshots::parse_time(at) {
            Ok(t) => snapshots::at_time(&snaps, t),
            Err(e) => return Ok(Response::error(400, e.to_string())),
        },
        (None, None) => unreachable!("checked above"),
    };
    let snap = match snap {
        Ok(s) => s,
        Err(e) if e.kind() == strata::error::ErrorKind::NotFound => {
            return Ok(Response::error(404, e.to_string()));
        }
        Err(e) => return Ok(Response::error(400, e.to_string())),
    };
    if let Err(e) = strata::restore::select(&snap.manifest, &r.paths) {
        return Ok(Response::error(400, e.to_string()));
    }
    Ok(c.submit(
        format!("restore to {}", r.target.display()),
        Task::Restore(r),
    ))
}

/// `POST /api/verify`.
pub fn verify(c: &Call) -> Result<Response> {
    #[derive(serde::Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    struct Req {
        #[serde(default)]
        read_data: bool,
    }
    let r: Req = match parse(c.body) {
        Ok(r) => r,
        Err(e) => return Ok(e),
    };
    Ok(c.submit(
        "verify".into(),
        Task::Verify {
            read_data: r.read_data,
        },
    ))
}

/// `GET /api/jobs`.
pub fn jobs(c: &Call) -> Result<Response> {
    Ok(Response::json(200, &c.d.job_statuses()))
}

/// `GET /api/followers`: each followed database, its follower, how far behind it is and the
/// spans of time it can be restored to.
pub fn followers(c: &Call) -> Result<Response> {
    let mut list = c.d.followers.get().map(|f| f.list()).unwrap_or_default();
    if !list.is_empty() {
        let repo = c.d.open_read()?;
        let snaps = snapshots::list_without_wal(&repo)?;
        for f in &mut list {
            f.restorable = strata::restore::instant::spans_in(&f.journal, &snaps)?
                .into_iter()
                .map(Into::into)
                .collect();
        }
    }
    Ok(Response::json(200, &list))
}

/// `GET /api/postgres`: the WAL archive's newest segment, the newest base backup of each name,
/// the server's archiver (with `[postgres_archive] db`) and what is wrong, as of the last check.
pub fn postgres(c: &Call) -> Result<Response> {
    Ok(Response::json(200, &c.d.pg_watch.report()))
}

/// `GET /api/operations`: newest first.
pub fn operations(c: &Call) -> Result<Response> {
    Ok(Response::json(200, &c.d.operations()))
}

/// `GET /api/operations/{id}`.
pub fn operation(c: &Call) -> Result<Response> {
    Ok(match c.id.parse::<u64>() {
        Ok(n) => match c.d.operation(n) {
            Some(op) => Response::json(200, &op),
            None => Response::error(404, format!("no operation {n}")),
        },
        Err(_) => Response::error(404, format!("no operation {:?}", c.id)),
    })
}

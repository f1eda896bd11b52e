//! The HTTP side of `strata serve`: routing, authentication, limits and the JSON answers.
//!
//! Bearer tokens are known only by their BLAKE3 hashes; a presented token is hashed and compared
//! with `blake3::Hash`'s constant-time equality. Requests whose `Host` header names neither the
//! listening address, localhost nor a configured host are refused (DNS rebinding), as are
//! bodies over the configured limit.

use super::{AdHoc, Daemon, RestoreRequest, Task};
use anyhow::{Context, Result};
use serde::Serialize;
use std::io::Read;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use strata::snapshots;
use tiny_http::{Header, Method, Request, Response};

const PAGE: &str = include_str!("page.html");
pub const OPENAPI: &str = include_str!("../../../docs/openapi.json");
const WORKERS: usize = 4;

pub struct Server {
    inner: Arc<tiny_http::Server>,
    threads: Vec<std::thread::JoinHandle<()>>,
    addr: SocketAddr,
}

impl Server {
    pub fn start(daemon: Arc<Daemon>) -> Result<Server> {
        let listen = daemon.cfg.listen;
        let inner = Arc::new(
            tiny_http::Server::http(listen)
                .map_err(|e| anyhow::anyhow!("listening on {listen}: {e}"))?,
        );
        let addr = inner
            .server_addr()
            .to_ip()
            .context("the server has no IP address")?;
        let mut threads = Vec::new();
        for i in 0..WORKERS {
            let server = inner.clone();
            let d = daemon.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("http-{i}"))
                    .spawn(move || {
                        while !d.stopping() {
                            match server.recv_timeout(Duration::from_millis(250)) {
                                Ok(Some(req)) => handle(&d, addr, req),
                                Ok(None) => {}
                                Err(_) => break,
                            }
                        }
                    })
                    .context("starting an HTTP thread")?,
            );
        }
        Ok(Server {
            inner,
            threads,
            addr,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn stop(self) {
        self.inner.unblock();
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// An answer: status and JSON (or other) body.
struct Reply {
    status: u16,
    body: Vec<u8>,
    content_type: &'static str,
}

fn json<T: Serialize>(status: u16, v: &T) -> Reply {
    Reply {
        status,
        body: serde_json::to_vec_pretty(v).unwrap_or_default(),
        content_type: "application/json",
    }
}

fn error(status: u16, msg: impl Into<String>) -> Reply {
    #[derive(Serialize)]
    struct E {
        error: String,
    }
    json(status, &E { error: msg.into() })
}

fn header<'a>(req: &'a Request, name: &'static str) -> Option<&'a str> {
    req.headers()
        .iter()
        .find(|h| h.field.equiv(name))
        .map(|h| h.value.as_str())
}

/// Whether `host` (a Host header) names this server.
fn host_allowed(host: &str, addr: SocketAddr, extra: &[String]) -> bool {
    let h = host.trim().to_ascii_lowercase();
    let name = match h.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => h.rsplit_once(':').map_or(h.as_str(), |(n, _)| n),
    };
    let port_ok = h
        .rsplit_once(':')
        .filter(|(_, p)| !p.contains(']'))
        .is_none_or(|(_, p)| p == addr.port().to_string());
    let ip = addr.ip().to_string();
    port_ok
        && (name == ip
            || (addr.ip().is_loopback() && matches!(name, "localhost" | "127.0.0.1" | "::1"))
            || extra.iter().any(|e| e.eq_ignore_ascii_case(name)))
}

fn handle(d: &Daemon, addr: SocketAddr, mut req: Request) {
    let started = std::time::Instant::now();
    let method = req.method().clone();
    let url = req.url().to_string();
    let remote = req.remote_addr().map(|a| a.to_string()).unwrap_or_default();
    let reply = route(d, addr, &mut req);
    let reply = match reply {
        Ok(r) => r,
        Err(e) => error(500, format!("{e:#}")),
    };
    tracing::debug!(
        method = %method,
        url = url.as_str(),
        remote = remote.as_str(),
        status = reply.status,
        ms = started.elapsed().as_secs_f64() * 1000.0,
        "request"
    );
    let mut response = Response::from_data(reply.body).with_status_code(reply.status);
    for (k, v) in [
        ("Content-Type", reply.content_type),
        ("Cache-Control", "no-store"),
        ("X-Content-Type-Options", "nosniff"),
        ("X-Frame-Options", "DENY"),
        (
            "Content-Security-Policy",
            "default-src 'self'; style-src 'self' 'unsafe-inline'; script-src 'self' \
             'unsafe-inline'",
        ),
    ] {
        if let Ok(h) = Header::from_bytes(k.as_bytes(), v.as_bytes()) {
            response.add_header(h);
        }
    }
    let _ = req.respond(response);
}

/// Who the request is from: a token's name, or `None` if it must be refused.
fn authenticate(d: &Daemon, req: &Request) -> Option<String> {
    if d.cfg.tokens.is_empty() {
        // Only possible on a loopback address (checked when the configuration is read).
        return Some("local".into());
    }
    let presented = header(req, "Authorization")?
        .strip_prefix("Bearer ")?
        .trim();
    let hash = blake3::hash(presented.as_bytes());
    // blake3::Hash compares in constant time; every token is compared.
    let mut who = None;
    for t in &d.cfg.tokens {
        if t.hash == hash {
            who = Some(t.name.clone());
        }
    }
    who
}

fn read_body(d: &Daemon, req: &mut Request) -> Result<Vec<u8>, Reply> {
    let limit = d.cfg.max_body;
    if req.body_length().is_some_and(|n| n > limit) {
        return Err(error(413, format!("request body over {limit} bytes")));
    }
    let mut body = Vec::new();
    req.as_reader()
        .take(limit as u64 + 1)
        .read_to_end(&mut body)
        .map_err(|e| error(400, format!("reading the request body: {e}")))?;
    if body.len() > limit {
        return Err(error(413, format!("request body over {limit} bytes")));
    }
    Ok(body)
}

fn parse<T: serde::de::DeserializeOwned + Default>(body: &[u8]) -> Result<T, Reply> {
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| error(400, format!("request body: {e}")))
}

#[derive(Serialize)]
struct Accepted {
    operation: u64,
    href: String,
}

fn accepted(id: u64) -> Reply {
    json(
        202,
        &Accepted {
            operation: id,
            href: format!("/api/operations/{id}"),
        },
    )
}

fn route(d: &Daemon, addr: SocketAddr, req: &mut Request) -> Result<Reply> {
    match header(req, "Host") {
        Some(h) if host_allowed(h, addr, &d.cfg.allowed_hosts) => {}
        Some(h) => return Ok(error(421, format!("unexpected Host header {h:?}"))),
        None => return Ok(error(400, "a Host header is required")),
    }
    let method = req.method().clone();
    let full = req.url().to_string();
    let path = full.split(['?', '#']).next().unwrap_or("").to_string();
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    // Public: the page (no data in it) and the API description.
    match (&method, parts.as_slice()) {
        (Method::Get, [""]) | (Method::Get, ["index.html"]) => {
            return Ok(Reply {
                status: 200,
                body: PAGE.as_bytes().to_vec(),
                content_type: "text/html; charset=utf-8",
            });
        }
        (Method::Get, ["api", "openapi.json"]) => {
            return Ok(Reply {
                status: 200,
                body: OPENAPI.as_bytes().to_vec(),
                content_type: "application/json",
            });
        }
        _ => {}
    }
    let who = authenticate(d, req);
    if let (Method::Get, ["health"]) = (&method, parts.as_slice()) {
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
        return Ok(json(
            status,
            &Health {
                status: word,
                reasons: who.is_some().then_some(reasons),
            },
        ));
    }
    let Some(who) = who else {
        tracing::warn!(
            method = %method,
            path = path.as_str(),
            remote = %req.remote_addr().map(|a| a.to_string()).unwrap_or_default(),
            "refused: missing or unknown bearer token"
        );
        return Ok(error(
            401,
            "a valid `Authorization: Bearer TOKEN` is required",
        ));
    };
    let body = match method {
        Method::Post | Method::Put | Method::Delete | Method::Patch => match read_body(d, req) {
            Ok(b) => b,
            Err(r) => return Ok(r),
        },
        _ => Vec::new(),
    };
    let mutate = |what: String, task: Task| -> Reply {
        match d.submit(task, &who) {
            Ok(id) => {
                tracing::info!(
                    who = who.as_str(),
                    what = what.as_str(),
                    op = id,
                    "accepted"
                );
                accepted(id)
            }
            Err(e) => error(503, format!("{e:#}")),
        }
    };
    Ok(match (&method, parts.as_slice()) {
        (Method::Get, ["metrics"]) => Reply {
            status: 200,
            body: d.metrics.render().into_bytes(),
            content_type: "application/openmetrics-text; version=1.0.0; charset=utf-8",
        },
        (Method::Get, ["api", "snapshots"]) => {
            let repo = d.open_read()?;
            let snaps = snapshots::list(&repo)?;
            let out: Vec<_> = snaps
                .iter()
                .rev()
                .map(super::super::inspect::snap_json)
                .collect();
            json(200, &out)
        }
        (Method::Get, ["api", "snapshots", id]) => {
            let repo = d.open_read()?;
            let snaps = snapshots::list(&repo)?;
            match snapshots::resolve(&snaps, id) {
                Ok(s) => json(200, &super::super::inspect::show_json(s)),
                Err(e) => error(404, e.to_string()),
            }
        }
        (Method::Post, ["api", "snapshots"]) => {
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
            let r: Req = match parse(&body) {
                Ok(r) => r,
                Err(e) => return Ok(e),
            };
            match r.job {
                Some(job) => {
                    if d.job_config(&job).is_none() {
                        return Ok(error(404, format!("no job named {job:?}")));
                    }
                    mutate(format!("snapshot of job {job}"), Task::Job(job))
                }
                None => {
                    let a = r;
                    if a.paths.is_empty() && a.sqlite.is_empty() {
                        return Ok(error(
                            400,
                            "give a job, or paths / sqlite for a snapshot of your own",
                        ));
                    }
                    if let Some(k) = &a.kind
                        && !["manual", "hourly", "daily", "weekly", "monthly"].contains(&k.as_str())
                    {
                        return Ok(error(400, format!("unknown kind {k:?}")));
                    }
                    mutate(
                        format!("snapshot of {:?}", a.paths),
                        Task::Snapshot(AdHoc {
                            paths: a.paths,
                            sqlite: a.sqlite,
                            name: a.name,
                            tags: a.tags,
                            kind: a.kind,
                        }),
                    )
                }
            }
        }
        (Method::Delete, ["api", "snapshots", id]) => {
            // Resolved now, so a mistyped id fails at once and the operation names one snapshot.
            let repo = d.open_read()?;
            let snaps = snapshots::list(&repo)?;
            match snapshots::resolve(&snaps, id) {
                Ok(s) => {
                    let hex = s.id.to_hex();
                    mutate(format!("delete {hex}"), Task::Delete(hex))
                }
                Err(e) => error(404, e.to_string()),
            }
        }
        (Method::Get, ["api", "stats"]) => {
            let repo = d.open_read()?;
            let snaps = snapshots::list(&repo)?;
            json(200, &strata::stats::stats(&repo, &snaps)?)
        }
        (Method::Post, ["api", "restore"]) => {
            let r: RestoreRequest = match serde_json::from_slice(&body) {
                Ok(r) => r,
                Err(e) => return Ok(error(400, format!("request body: {e}"))),
            };
            if r.snapshot.is_some() == r.at.is_some() {
                return Ok(error(400, "give either snapshot or at"));
            }
            if !r.target.is_absolute() {
                return Ok(error(400, "target must be an absolute path"));
            }
            mutate(
                format!("restore to {}", r.target.display()),
                Task::Restore(r),
            )
        }
        (Method::Post, ["api", "verify"]) => {
            #[derive(serde::Deserialize, Default)]
            #[serde(deny_unknown_fields)]
            struct Req {
                #[serde(default)]
                read_data: bool,
            }
            let r: Req = match parse(&body) {
                Ok(r) => r,
                Err(e) => return Ok(e),
            };
            mutate(
                "verify".into(),
                Task::Verify {
                    read_data: r.read_data,
                },
            )
        }
        (Method::Get, ["api", "jobs"]) => json(200, &d.job_statuses()),
        (Method::Get, ["api", "operations"]) => json(200, &d.operations()),
        (Method::Get, ["api", "operations", id]) => match id.parse::<u64>() {
            Ok(n) => match d.operation(n) {
                Some(op) => json(200, &op),
                None => error(404, format!("no operation {n}")),
            },
            Err(_) => error(404, format!("no operation {id:?}")),
        },
        _ => {
            let known = ROUTES.iter().any(|(_, p)| matches_path(p, &parts));
            if known {
                error(405, format!("{method} is not allowed on {path}"))
            } else {
                error(404, format!("no such endpoint: {path}"))
            }
        }
    })
}

/// Every route, as the OpenAPI description names it (checked by a test).
pub const ROUTES: &[(&str, &str)] = &[
    ("get", "/"),
    ("get", "/health"),
    ("get", "/metrics"),
    ("get", "/api/openapi.json"),
    ("get", "/api/snapshots"),
    ("post", "/api/snapshots"),
    ("get", "/api/snapshots/{id}"),
    ("delete", "/api/snapshots/{id}"),
    ("get", "/api/stats"),
    ("post", "/api/restore"),
    ("post", "/api/verify"),
    ("get", "/api/jobs"),
    ("get", "/api/operations"),
    ("get", "/api/operations/{id}"),
];

fn matches_path(pattern: &str, parts: &[&str]) -> bool {
    let p: Vec<&str> = pattern.trim_matches('/').split('/').collect();
    p.len() == parts.len()
        && p.iter()
            .zip(parts)
            .all(|(a, b)| a.starts_with('{') || a == b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_header_must_name_this_server() {
        let addr: SocketAddr = "127.0.0.1:7433".parse().unwrap();
        for ok in [
            "127.0.0.1:7433",
            "localhost:7433",
            "localhost",
            "[::1]:7433",
        ] {
            assert!(host_allowed(ok, addr, &[]), "{ok}");
        }
        for bad in [
            "evil.example:7433",
            "127.0.0.1:80",
            "attacker.localhost.evil",
        ] {
            assert!(!host_allowed(bad, addr, &[]), "{bad}");
        }
        assert!(host_allowed(
            "backup.lan:7433",
            addr,
            &["backup.lan".into()]
        ));
        let public: SocketAddr = "10.0.0.5:7433".parse().unwrap();
        assert!(!host_allowed("localhost:7433", public, &[]));
        assert!(host_allowed("10.0.0.5:7433", public, &[]));
    }

    #[test]
    fn the_openapi_description_names_every_route() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).unwrap();
        let paths = doc["paths"].as_object().unwrap();
        for (method, path) in ROUTES {
            assert!(
                paths.get(*path).and_then(|p| p.get(*method)).is_some(),
                "{method} {path} is not in docs/openapi.json"
            );
        }
        let described: usize = paths
            .values()
            .map(|p| {
                p.as_object()
                    .unwrap()
                    .keys()
                    .filter(|k| ["get", "put", "post", "delete", "patch"].contains(&k.as_str()))
                    .count()
            })
            .sum();
        assert_eq!(
            described,
            ROUTES.len(),
            "docs/openapi.json has extra routes"
        );
    }
}

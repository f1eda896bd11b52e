//! The HTTP side of `strata serve`: routing, authentication, request checks and the JSON
//! answers. Reading requests within limits is `wire`'s.
//!
//! Bearer tokens are known only by their BLAKE3 hashes; a presented token is hashed and compared
//! with `blake3::Hash`'s constant-time equality; a daemon always has at least one (see
//! `token_file`). Requests whose `Host` header names neither the listening address, localhost
//! nor a configured host are refused (DNS rebinding), as are requests a browser sends for
//! another site (an `Origin` of another host, `Sec-Fetch-Site: cross-site`) and bodies that are
//! not declared JSON (a cross-site form or `text/plain` POST needs no preflight).

use super::roots;
use super::wire::{self, Request, Response};
use super::{AdHoc, Daemon, RestoreRequest, Task};
use anyhow::{Context, Result};
use serde::Serialize;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use strata::snapshots;

const PAGE: &str = include_str!("page.html");
pub const OPENAPI: &str = include_str!("../../../docs/openapi.json");

/// Sent with every answer.
const SECURITY_HEADERS: &[(&str, &str)] = &[
    ("Cache-Control", "no-store"),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    (
        "Content-Security-Policy",
        "default-src 'self'; style-src 'self' 'unsafe-inline'; script-src 'self' 'unsafe-inline'",
    ),
];

pub struct Server {
    inner: wire::Server,
    addr: SocketAddr,
}

impl Server {
    pub fn start(daemon: Arc<Daemon>) -> Result<Server> {
        let listen = daemon.cfg.listen;
        let listener =
            TcpListener::bind(listen).with_context(|| format!("listening on {listen}"))?;
        let addr = listener
            .local_addr()
            .context("the listening socket has no address")?;
        let limits = wire::Limits {
            body_bytes: daemon.cfg.max_body,
            ..wire::Limits::default()
        };
        let inner = wire::Server::start(listener, limits, SECURITY_HEADERS, move |req| {
            handle(&daemon, addr, req)
        })
        .context("starting the HTTP server")?;
        Ok(Server { inner, addr })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn stop(self) {
        self.inner.stop();
    }
}

type Reply = Response;

fn json<T: Serialize>(status: u16, v: &T) -> Reply {
    Response::json(status, v)
}

fn error(status: u16, msg: impl Into<String>) -> Reply {
    Response::error(status, msg)
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

/// Whether `origin` (an Origin header: `scheme://host[:port]`) is this server. Without a port,
/// the scheme's default port must be the listening one, unless the host is an `allowed_hosts`
/// entry (a proxy in front of the daemon).
fn origin_allowed(origin: &str, addr: SocketAddr, extra: &[String]) -> bool {
    let o = origin.trim().to_ascii_lowercase();
    let (default_port, host) = if let Some(h) = o.strip_prefix("http://") {
        (80, h)
    } else if let Some(h) = o.strip_prefix("https://") {
        (443, h)
    } else {
        // Includes "null": a sandboxed frame, a file, a redirect across sites.
        return false;
    };
    if host.is_empty() || host.contains(['/', '@', '?', '#', ' ', '\\']) {
        return false;
    }
    let has_port = host.rsplit_once(':').is_some_and(|(_, p)| !p.contains(']'));
    if has_port {
        return host_allowed(host, addr, extra);
    }
    let name = host.trim_start_matches('[').trim_end_matches(']');
    extra.iter().any(|e| e.eq_ignore_ascii_case(name))
        || (default_port == addr.port() && host_allowed(host, addr, extra))
}

/// A refusal for a request a browser made on behalf of another site.
fn cross_site(req: &Request, addr: SocketAddr, extra: &[String]) -> Option<Reply> {
    if req
        .header("Sec-Fetch-Site")
        .is_some_and(|s| s.trim().eq_ignore_ascii_case("cross-site"))
    {
        return Some(error(
            403,
            "refused: a browser sent this request for another site (Sec-Fetch-Site: cross-site)",
        ));
    }
    match req.header("Origin") {
        Some(o) if !origin_allowed(o, addr, extra) => Some(error(
            403,
            format!(
                "refused: Origin {o:?} is not this server (a page of another site); a proxy's \
                 host name goes in allowed_hosts"
            ),
        )),
        _ => None,
    }
}

/// Whether a Content-Type names JSON (`application/json`, parameters allowed).
fn is_json(content_type: &str) -> bool {
    content_type
        .split(';')
        .next()
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
}

/// A refusal for a body not declared JSON: any POST, and PUT, PATCH or DELETE with a body.
fn not_json(req: &Request) -> Option<Reply> {
    let needs = match req.method.as_str() {
        "POST" => true,
        "PUT" | "PATCH" | "DELETE" => !req.body.is_empty(),
        _ => false,
    };
    match req.header("Content-Type") {
        _ if !needs => None,
        Some(t) if is_json(t) => None,
        Some(t) => Some(error(
            415,
            format!(
                "Content-Type {t:?} is not accepted: send JSON as `Content-Type: application/json`"
            ),
        )),
        None => Some(error(
            415,
            format!(
                "{} needs `Content-Type: application/json` (and a JSON body, `{{}}` for none)",
                req.method
            ),
        )),
    }
}

fn handle(d: &Daemon, addr: SocketAddr, req: &Request) -> Response {
    let started = std::time::Instant::now();
    let reply = match route(d, addr, req) {
        Ok(r) => r,
        Err(e) => error(500, format!("{e:#}")),
    };
    tracing::debug!(
        method = req.method.as_str(),
        url = req.target.as_str(),
        remote = %req.remote,
        status = reply.status,
        ms = started.elapsed().as_secs_f64() * 1000.0,
        "request"
    );
    reply
}

/// Who the request is from: a token's name, or `None` if it must be refused.
fn authenticate(d: &Daemon, req: &Request) -> Option<String> {
    let presented = req.header("Authorization")?.strip_prefix("Bearer ")?.trim();
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

fn parse<T: serde::de::DeserializeOwned + Default>(body: &[u8]) -> Result<T, Reply> {
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| error(400, format!("request body: {e}")))
}

/// The answer for a path refused by `roots`.
/// The answer for a path refused by `roots`.
fn refused(r: roots::Refusal) -> Reply {
    error(r.status, r.message)
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

fn route(d: &Daemon, addr: SocketAddr, req: &Request) -> Result<Reply> {
    match req.header("Host") {
        Some(h) if host_allowed(h, addr, &d.cfg.allowed_hosts) => {}
        Some(h) => return Ok(error(421, format!("unexpected Host header {h:?}"))),
        None => return Ok(error(400, "a Host header is required")),
    }
    if let Some(refusal) = cross_site(req, addr, &d.cfg.allowed_hosts) {
        tracing::warn!(
            method = req.method.as_str(),
            remote = %req.remote,
            origin = req.header("Origin").unwrap_or(""),
            "refused: a request for another site"
        );
        return Ok(refusal);
    }
    let method = req.method.as_str();
    let path = req.target.split(['?', '#']).next().unwrap_or("");
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    // Public: the page (no data in it) and the API description.
    match (method, parts.as_slice()) {
        ("GET", [""]) | ("GET", ["index.html"]) => {
            return Ok(Reply {
                status: 200,
                body: PAGE.as_bytes().to_vec(),
                content_type: "text/html; charset=utf-8",
            });
        }
        ("GET", ["api", "openapi.json"]) => {
            return Ok(Reply {
                status: 200,
                body: OPENAPI.as_bytes().to_vec(),
                content_type: "application/json",
            });
        }
        _ => {}
    }
    let who = authenticate(d, req);
    if let ("GET", ["health"]) = (method, parts.as_slice()) {
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
            method,
            path,
            remote = %req.remote,
            "refused: missing or unknown bearer token"
        );
        return Ok(error(
            401,
            "a valid `Authorization: Bearer TOKEN` is required",
        ));
    };
    if let Some(refusal) = not_json(req) {
        return Ok(refusal);
    }
    let body = req.body.as_slice();
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
    Ok(match (method, parts.as_slice()) {
        ("GET", ["metrics"]) => Reply {
            status: 200,
            body: d.metrics.render().into_bytes(),
            content_type: "application/openmetrics-text; version=1.0.0; charset=utf-8",
        },
        ("GET", ["api", "snapshots"]) => {
            let repo = d.open_read()?;
            let snaps = snapshots::list(&repo)?;
            let out: Vec<_> = snaps
                .iter()
                .rev()
                .map(super::super::inspect::snap_json)
                .collect();
            json(200, &out)
        }
        ("GET", ["api", "snapshots", id]) => {
            let repo = d.open_read()?;
            let snaps = snapshots::list(&repo)?;
            match snapshots::resolve(&snaps, id) {
                Ok(s) => json(200, &super::super::inspect::show_json(s)),
                Err(e) => error(404, e.to_string()),
            }
        }
        ("POST", ["api", "snapshots"]) => {
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
            let r: Req = match parse(body) {
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
                    if let Err(r) = roots::backup_sources(&d.cfg.backup_roots, &a.paths, &a.sqlite)
                    {
                        return Ok(refused(r));
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
        ("DELETE", ["api", "snapshots", id]) => {
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
        ("GET", ["api", "stats"]) => {
            let repo = d.open_read()?;
            let snaps = snapshots::list(&repo)?;
            json(200, &strata::stats::stats(&repo, &snaps)?)
        }
        ("POST", ["api", "restore"]) => {
            let r: RestoreRequest = match serde_json::from_slice(body) {
                Ok(r) => r,
                Err(e) => return Ok(error(400, format!("request body: {e}"))),
            };
            if r.snapshot.is_some() == r.at.is_some() {
                return Ok(error(400, "give either snapshot or at"));
            }
            if let Err(r) = roots::restore_target(&d.cfg.restore_roots, &r.target) {
                return Ok(refused(r));
            }
            mutate(
                format!("restore to {}", r.target.display()),
                Task::Restore(r),
            )
        }
        ("POST", ["api", "verify"]) => {
            #[derive(serde::Deserialize, Default)]
            #[serde(deny_unknown_fields)]
            struct Req {
                #[serde(default)]
                read_data: bool,
            }
            let r: Req = match parse(body) {
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
        ("GET", ["api", "jobs"]) => json(200, &d.job_statuses()),
        ("GET", ["api", "operations"]) => json(200, &d.operations()),
        ("GET", ["api", "operations", id]) => match id.parse::<u64>() {
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
    fn origin_must_be_this_server() {
        let addr: SocketAddr = "127.0.0.1:7433".parse().unwrap();
        for ok in [
            "http://127.0.0.1:7433",
            "http://localhost:7433",
            "HTTP://LOCALHOST:7433",
            "http://[::1]:7433",
        ] {
            assert!(origin_allowed(ok, addr, &[]), "{ok}");
        }
        for bad in [
            "null",
            "http://evil.example",
            "http://evil.example:7433",
            "http://localhost",
            "http://localhost:8080",
            "file://",
            "http://localhost:7433/path",
            "http://user@localhost:7433",
            "127.0.0.1:7433",
        ] {
            assert!(!origin_allowed(bad, addr, &[]), "{bad}");
        }
        // A proxy in front: its name is allowed, on its own port.
        let proxied = ["backup.lan".to_string()];
        assert!(origin_allowed("https://backup.lan", addr, &proxied));
        assert!(!origin_allowed("https://backup.lan.evil", addr, &proxied));
        let on80: SocketAddr = "127.0.0.1:80".parse().unwrap();
        assert!(origin_allowed("http://localhost", on80, &[]));
    }

    #[test]
    fn bodies_must_be_declared_json() {
        let req = |method: &str, ct: Option<&str>, body: &[u8]| Request {
            method: method.into(),
            target: "/api/verify".into(),
            headers: ct
                .map(|c| vec![("content-type".to_string(), c.to_string())])
                .unwrap_or_default(),
            body: body.to_vec(),
            remote: "127.0.0.1:1".parse().unwrap(),
        };
        for (method, ct, body, refused) in [
            ("POST", Some("application/json"), &b"{}"[..], false),
            (
                "POST",
                Some("Application/JSON; charset=utf-8"),
                b"{}",
                false,
            ),
            ("POST", Some("text/plain"), b"{}", true),
            (
                "POST",
                Some("application/x-www-form-urlencoded"),
                b"a=b",
                true,
            ),
            ("POST", Some("multipart/form-data; boundary=x"), b"", true),
            ("POST", Some("application/jsonp"), b"{}", true),
            ("POST", None, b"", true),
            ("POST", None, b"{}", true),
            ("DELETE", None, b"", false),
            ("DELETE", Some("text/plain"), b"x", true),
            ("PUT", None, b"x", true),
            ("GET", Some("text/plain"), b"", false),
        ] {
            let r = not_json(&req(method, ct, body));
            assert_eq!(
                r.as_ref().map(|r| r.status),
                refused.then_some(415),
                "{method} {ct:?} {body:?}"
            );
        }
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

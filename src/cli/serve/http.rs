//! The HTTP side of `strata serve`: the table of routes, the checks every request passes, and
//! the dispatch to `handlers`. Reading requests within limits is `wire`'s.
//!
//! Bearer tokens are known only by their BLAKE3 hashes; a presented token is hashed and compared
//! with `blake3::Hash`'s constant-time equality; a daemon always has at least one (see
//! `token_file`). Requests whose `Host` header names neither the listening address, localhost
//! nor a configured host are refused (DNS rebinding), as are requests a browser sends for
//! another site (an `Origin` of another host, `Sec-Fetch-Site: cross-site`) and bodies that are
//! not declared JSON (a cross-site form or `text/plain` POST needs no preflight).
//!
//! All of these checks are made in one place, [`route`], from what a route's [`Handler`] kind
//! says it needs; a new endpoint is a line in [`ROUTES`] and a function in `handlers`.

use super::Daemon;
use super::handlers::{self, Call};
use super::wire::{self, Request, Response};
use anyhow::{Context, Result};
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

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
fn cross_site(req: &Request, addr: SocketAddr, extra: &[String]) -> Option<Response> {
    if req
        .header("Sec-Fetch-Site")
        .is_some_and(|s| s.trim().eq_ignore_ascii_case("cross-site"))
    {
        return Some(Response::error(
            403,
            "refused: a browser sent this request for another site (Sec-Fetch-Site: cross-site)",
        ));
    }
    match req.header("Origin") {
        Some(o) if !origin_allowed(o, addr, extra) => Some(Response::error(
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
fn not_json(req: &Request) -> Option<Response> {
    let needs = match req.method.as_str() {
        "POST" => true,
        "PUT" | "PATCH" | "DELETE" => !req.body.is_empty(),
        _ => false,
    };
    match req.header("Content-Type") {
        _ if !needs => None,
        Some(t) if is_json(t) => None,
        Some(t) => Some(Response::error(
            415,
            format!(
                "Content-Type {t:?} is not accepted: send JSON as `Content-Type: application/json`"
            ),
        )),
        None => Some(Response::error(
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
        Err(e) => Response::error(500, format!("{e:#}")),
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

/// What a route needs before its handler runs, and the handler. Every request has first passed
/// the Host and cross-site checks.
#[derive(Clone, Copy)]
enum Handler {
    /// Answers anyone: the answer holds no data.
    Public(fn() -> Response),
    /// Answers anyone, saying more to a caller who presented a valid token.
    Open(fn(&Daemon, bool) -> Response),
    /// Needs a valid token, and a body (if any) declared JSON.
    Token(fn(&Call) -> Result<Response>),
}

struct Route {
    method: &'static str,
    path: &'static str,
    handler: Handler,
    /// Described in docs/openapi.json; another method on its path is answered 405, not 404.
    documented: bool,
}

const fn to(method: &'static str, path: &'static str, handler: Handler) -> Route {
    Route {
        method,
        path,
        handler,
        documented: true,
    }
}

/// Every route (those documented are checked against docs/openapi.json by a test).
const ROUTES: &[Route] = &[
    to("GET", "/", Handler::Public(handlers::page)),
    Route {
        documented: false,
        ..to("GET", "/index.html", Handler::Public(handlers::page))
    },
    to(
        "GET",
        "/api/openapi.json",
        Handler::Public(handlers::openapi),
    ),
    to("GET", "/health", Handler::Open(handlers::health)),
    to("GET", "/metrics", Handler::Token(handlers::metrics)),
    to(
        "GET",
        "/api/snapshots",
        Handler::Token(handlers::list_snapshots),
    ),
    to(
        "POST",
        "/api/snapshots",
        Handler::Token(handlers::take_snapshot),
    ),
    to(
        "GET",
        "/api/snapshots/{id}",
        Handler::Token(handlers::show_snapshot),
    ),
    to(
        "DELETE",
        "/api/snapshots/{id}",
        Handler::Token(handlers::delete_snapshot),
    ),
    to(
        "GET",
        "/api/snapshots/{id}/file",
        Handler::Token(handlers::download),
    ),
    Route {
        documented: false,
        ..to("GET", "/favicon.ico", Handler::Public(handlers::favicon))
    },
    to("GET", "/api/stats", Handler::Token(handlers::stats)),
    to("POST", "/api/restore", Handler::Token(handlers::restore)),
    to("POST", "/api/verify", Handler::Token(handlers::verify)),
    to("GET", "/api/jobs", Handler::Token(handlers::jobs)),
    to("GET", "/api/followers", Handler::Token(handlers::followers)),
    to("GET", "/api/postgres", Handler::Token(handlers::postgres)),
    to(
        "GET",
        "/api/operations",
        Handler::Token(handlers::operations),
    ),
    to(
        "GET",
        "/api/operations/{id}",
        Handler::Token(handlers::operation),
    ),
];

/// Whether the path's segments `parts` match `pattern`, where `{...}` matches any one segment.
fn matches_path(pattern: &str, parts: &[&str]) -> bool {
    let mut segments = pattern.trim_matches('/').split('/');
    parts.iter().all(|b| {
        segments
            .next()
            .is_some_and(|a| a.starts_with('{') || a == *b)
    }) && segments.next().is_none()
}

/// The segment of `parts` in the place of `pattern`'s `{...}`, or "" if it has none.
fn path_id<'a>(pattern: &str, parts: &[&'a str]) -> &'a str {
    pattern
        .trim_matches('/')
        .split('/')
        .zip(parts)
        .find(|(a, _)| a.starts_with('{'))
        .map_or("", |(_, b)| b)
}

/// A refusal for a request not meant for this server: a Host header naming another, or a
/// browser's request on behalf of another site.
fn foreign(d: &Daemon, addr: SocketAddr, req: &Request) -> Option<Response> {
    match req.header("Host") {
        Some(h) if host_allowed(h, addr, &d.cfg.allowed_hosts) => {}
        Some(h) => {
            return Some(Response::error(
                421,
                format!("unexpected Host header {h:?}"),
            ));
        }
        None => return Some(Response::error(400, "a Host header is required")),
    }
    let refusal = cross_site(req, addr, &d.cfg.allowed_hosts)?;
    tracing::warn!(
        method = req.method.as_str(),
        remote = %req.remote,
        origin = req.header("Origin").unwrap_or(""),
        "refused: a request for another site"
    );
    Some(refusal)
}

/// The one gate: every request passes these checks, in this order, before its route's handler
/// runs; what a route's [`Handler`] kind says is all that decides which of them apply.
fn route(d: &Daemon, addr: SocketAddr, req: &Request) -> Result<Response> {
    if let Some(refusal) = foreign(d, addr, req) {
        return Ok(refusal);
    }
    let method = req.method.as_str();
    let path = req.target.split(['?', '#']).next().unwrap_or("");
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let found = ROUTES
        .iter()
        .find(|r| r.method == method && matches_path(r.path, &parts));
    if let Some(Handler::Public(answer)) = found.map(|r| r.handler) {
        return Ok(answer());
    }
    let who = authenticate(d, req);
    if let Some(Handler::Open(answer)) = found.map(|r| r.handler) {
        return Ok(answer(d, who.is_some()));
    }
    let Some(who) = who else {
        tracing::warn!(
            method,
            path,
            remote = %req.remote,
            "refused: missing or unknown bearer token"
        );
        return Ok(Response::error(
            401,
            "a valid `Authorization: Bearer TOKEN` is required",
        ));
    };
    if let Some(refusal) = not_json(req) {
        return Ok(refusal);
    }
    let Some(Route {
        handler: Handler::Token(answer),
        path: pattern,
        ..
    }) = found
    else {
        return Ok(no_route(method, path, &parts));
    };
    answer(&Call {
        d,
        who: &who,
        body: req.body.as_slice(),
        id: path_id(pattern, &parts),
        query: req.target.split_once('?').map_or("", |(_, q)| q),
    })
}

/// 405 for another method on a documented path, else 404.
fn no_route(method: &str, path: &str, parts: &[&str]) -> Response {
    let known = ROUTES
        .iter()
        .any(|r| r.documented && matches_path(r.path, parts));
    if known {
        Response::error(405, format!("{method} is not allowed on {path}"))
    } else {
        Response::error(404, format!("no such endpoint: {path}"))
    }
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
    fn paths_match_their_routes_and_give_their_id() {
        let parts =
            |p: &'static str| -> Vec<&'static str> { p.trim_matches('/').split('/').collect() };
        assert!(matches_path("/", &parts("/")));
        assert!(matches_path("/", &parts("")));
        assert!(matches_path("/api/snapshots", &parts("/api/snapshots/")));
        assert!(matches_path(
            "/api/snapshots/{id}",
            &parts("/api/snapshots/3fa2")
        ));
        assert!(!matches_path(
            "/api/snapshots/{id}",
            &parts("/api/snapshots")
        ));
        assert!(!matches_path(
            "/api/snapshots",
            &parts("/api/snapshots/3fa2")
        ));
        assert!(!matches_path("/api/stats", &parts("/api/jobs")));
        assert_eq!(
            path_id("/api/operations/{id}", &parts("/api/operations/7")),
            "7"
        );
        assert_eq!(path_id("/api/jobs", &parts("/api/jobs")), "");
        for (i, r) in ROUTES.iter().enumerate() {
            assert!(
                !ROUTES[..i]
                    .iter()
                    .any(|q| q.method == r.method && q.path == r.path),
                "{} {} is listed twice",
                r.method,
                r.path
            );
        }
    }

    #[test]
    fn the_openapi_description_names_every_route() {
        let doc: serde_json::Value = serde_json::from_str(handlers::OPENAPI).unwrap();
        let paths = doc["paths"].as_object().unwrap();
        let documented: Vec<&Route> = ROUTES.iter().filter(|r| r.documented).collect();
        for r in &documented {
            let (method, path) = (r.method.to_ascii_lowercase(), r.path);
            assert!(
                paths.get(path).and_then(|p| p.get(&method)).is_some(),
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
            documented.len(),
            "docs/openapi.json has extra routes"
        );
    }
}

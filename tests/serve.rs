//! `strata serve` over real HTTP: authentication (a token always, from a private file when none
//! is configured), scheduled jobs with retention, metrics, health, the API's operations checked
//! against docs/openapi.json, requests browsers send for other sites, restore and snapshot paths
//! confined to their roots, header limits and slow clients, shutdown during a snapshot, the web
//! page in a headless Chromium, a bounded load test, and a real PostgreSQL server's base backups
//! and WAL archive watched (`/api/postgres`, metrics, health, the page).

mod common;

use common::{Env, write};
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A running `strata serve`, its address and everything it logged.
struct Daemon {
    child: Child,
    addr: SocketAddr,
    log: Arc<Mutex<String>>,
    started: Instant,
}

impl Daemon {
    fn start(env: &Env, config: &Path) -> Daemon {
        let started = Instant::now();
        let mut child = env
            .cmd()
            .args(["serve", "--config"])
            .arg(config)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start strata serve");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(a) = line.strip_prefix("strata serve: listening on http://") {
                    let _ = tx.send(a.trim().to_string());
                }
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(a) => a.parse().expect("address"),
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "strata serve did not start: {}",
                    log.lock().unwrap().as_str()
                );
            }
        };
        Daemon {
            child,
            addr,
            log,
            started,
        }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    fn get(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        let (status, body) = request(self.addr, "GET", path, token, None, None);
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }

    fn send(&self, method: &str, path: &str, token: &str, body: &str) -> (u16, Value) {
        let (status, body) = request(self.addr, method, path, Some(token), None, Some(body));
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }

    /// Polls an accepted operation until it ends; returns it.
    fn wait_op(&self, accepted: &Value, token: &str) -> Value {
        let href = accepted["href"].as_str().expect("href");
        let until = Instant::now() + Duration::from_secs(120);
        loop {
            let (status, op) = self.get(href, Some(token));
            assert_eq!(status, 200, "{op}");
            if ["succeeded", "failed", "cancelled"].contains(&op["status"].as_str().unwrap()) {
                return op;
            }
            assert!(Instant::now() < until, "operation never ended: {op}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until `check` holds for the job list, or fails with the log.
    fn wait_jobs(&self, token: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        let until = Instant::now() + Duration::from_secs(120);
        loop {
            let (_, jobs) = self.get("/api/jobs", Some(token));
            if check(&jobs) {
                return jobs;
            }
            assert!(
                Instant::now() < until,
                "timed out waiting for {what}: {jobs}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn terminate(&mut self) -> std::process::ExitStatus {
        // SAFETY: signalling our own child.
        unsafe { libc_kill(self.child.id() as i32, 15) };
        let until = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(Instant::now() < until, "serve ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

/// One HTTP/1.1 request on its own connection, with a JSON body; returns status and body.
fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    host: Option<&str>,
    body: Option<&str>,
) -> (u16, Vec<u8>) {
    let host = host.map(str::to_string).unwrap_or_else(|| addr.to_string());
    let mut head = vec![
        ("Host", host.as_str()),
        ("Content-Type", "application/json"),
    ];
    let auth = token.map(|t| format!("Bearer {t}"));
    if let Some(a) = &auth {
        head.push(("Authorization", a));
    }
    request_with(addr, method, path, &head, body.unwrap_or(""))
}

/// One request with exactly these headers (and Connection, Content-Length); status and body.
fn request_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, Vec<u8>) {
    let mut req = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s.write_all(req.as_bytes()).expect("send");
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    response(&raw)
}

/// Status and body of a response as read from the connection.
fn response(raw: &[u8]) -> (u16, Vec<u8>) {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| {
            panic!(
                "not a complete response: {:?}",
                String::from_utf8_lossy(raw)
            )
        });
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status code");
    let mut body = raw[split + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    (status, body)
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = b.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let len =
            usize::from_str_radix(std::str::from_utf8(&b[..eol]).unwrap().trim(), 16).unwrap_or(0);
        if len == 0 {
            return out;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + len]);
        b = &b[eol + 2 + len + 2..];
    }
}

/// A fresh token and its [[token]] entry, from `strata serve --new-token`.
fn new_token(env: &Env) -> (String, String) {
    let out = env.ok(&["serve", "--new-token", "ops"]);
    let lines: Vec<&str> = out.lines().collect();
    let token = lines[1].trim().to_string();
    let entry = lines[3..].join("\n");
    assert!(entry.starts_with("[[token]]"), "{out}");
    (token, entry)
}

/// The API token file a daemon without a [[token]] names at start, and the token in it.
fn token_file(d: &Daemon) -> (std::path::PathBuf, String) {
    let log = d.log();
    let path = log
        .lines()
        .find_map(|l| l.strip_prefix("strata serve: API token in "))
        .and_then(|l| l.split(" (open ").next())
        .unwrap_or_else(|| panic!("no token file named in the log:\n{log}"));
    let token = std::fs::read_to_string(path).expect("read the token file");
    (path.into(), token.trim().to_string())
}

/// `restore_roots` and `backup_roots` of a test: its whole scratch directory.
fn roots(env: &Env) -> String {
    let dir = env.dir.path().display().to_string();
    format!("restore_roots = [{dir:?}]\nbackup_roots = [{dir:?}]\n")
}

/// Writes a daemon config. Unless `body` sets its own `disk_min_free`, the disk check is off:
/// a build machine's disk may well be nearly full, and only one test is about that check.
fn config(env: &Env, body: &str) -> std::path::PathBuf {
    let path = env.path("strata.toml");
    let disk = if body.contains("disk_min_free") {
        ""
    } else {
        "disk_min_free = \"0%\"\n"
    };
    let text = format!(
        "repo = {:?}\nlisten = \"127.0.0.1:0\"\n{disk}{body}\n",
        env.repo.display().to_string()
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no metric {name} in:\n{text}"))
}

fn metrics(d: &Daemon, token: &str) -> String {
    let (status, body) = request(d.addr, "GET", "/metrics", Some(token), None, None);
    assert_eq!(status, 200);
    String::from_utf8(body).unwrap()
}

/// Checks `value` against a JSON schema of docs/openapi.json: types, required properties, enums,
/// array items and `$ref`s (the parts of JSON Schema the description uses).
fn conforms(doc: &Value, schema: &Value, value: &Value, at: &str) {
    if let Some(r) = schema.get("$ref").and_then(|r| r.as_str()) {
        let name = r.rsplit('/').next().unwrap();
        return conforms(doc, &doc["components"]["schemas"][name], value, at);
    }
    if let Some(t) = schema.get("type") {
        let types: Vec<&str> = match t {
            Value::String(s) => vec![s.as_str()],
            Value::Array(a) => a.iter().filter_map(|v| v.as_str()).collect(),
            _ => vec![],
        };
        let ok = types.iter().any(|t| match *t {
            "string" => value.is_string(),
            "integer" => value.is_u64() || value.is_i64(),
            "number" => value.is_number(),
            "boolean" => value.is_boolean(),
            "array" => value.is_array(),
            "object" => value.is_object(),
            "null" => value.is_null(),
            _ => false,
        });
        assert!(ok, "{at}: {value} is not {types:?}");
    }
    if let Some(e) = schema.get("enum").and_then(|e| e.as_array()) {
        assert!(e.contains(value), "{at}: {value} not in {e:?}");
    }
    // A `["object", "null"]` that is null has no properties to require.
    if let Some(req) = schema
        .get("required")
        .and_then(|r| r.as_array())
        .filter(|_| !value.is_null())
    {
        for k in req {
            let k = k.as_str().unwrap();
            assert!(
                value.get(k).is_some(),
                "{at}: required {k:?} missing in {value}"
            );
        }
    }
    if let (Some(props), Some(obj)) = (
        schema.get("properties").and_then(|p| p.as_object()),
        value.as_object(),
    ) {
        for (k, s) in props {
            if let Some(v) = obj.get(k) {
                conforms(doc, s, v, &format!("{at}.{k}"));
            }
        }
    }
    if let (Some(items), Some(arr)) = (schema.get("items"), value.as_array()) {
        for (i, v) in arr.iter().enumerate() {
            conforms(doc, items, v, &format!("{at}[{i}]"));
        }
    }
}

/// Checks a response against what docs/openapi.json says `method path` answers with `status`.
fn check_response(doc: &Value, method: &str, path: &str, status: u16, body: &Value) {
    let op = &doc["paths"][path][method];
    assert!(op.is_object(), "{method} {path} is not described");
    let mut resp = &op["responses"][status.to_string()];
    assert!(
        resp.is_object(),
        "{method} {path} answered {status}, which is not described: {body}"
    );
    if let Some(r) = resp.get("$ref").and_then(|r| r.as_str()) {
        resp = &doc["components"]["responses"][r.rsplit('/').next().unwrap()];
    }
    if let Some(schema) = resp
        .get("content")
        .and_then(|c| c.get("application/json"))
        .and_then(|c| c.get("schema"))
    {
        conforms(doc, schema, body, &format!("{method} {path} {status}"));
    }
}

fn openapi() -> Value {
    serde_json::from_str(include_str!("../docs/openapi.json")).unwrap()
}

#[test]
fn api_requires_tokens_runs_jobs_rotates_and_matches_its_description() {
    let env = Env::new();
    env.init();
    let data = env.path("data");
    write(&data.join("notes.txt"), b"first version\n");
    write(&data.join("memory.jsonl"), &common::text(200_000, 1));
    let (token, entry) = new_token(&env);
    let cfg = config(
        &env,
        &format!(
            "gc_min_garbage = \"1\"\n{}{entry}\n[[job]]\nname = \"app\"\npaths = [{:?}]\n\
             schedule = \"every 1s\"\nkind = \"hourly\"\nretention = \"keep-last=2\"\non_start = true\n",
            roots(&env),
            data.display().to_string()
        ),
    );
    assert!(
        env.ok(&["config", "check", cfg.to_str().unwrap()])
            .contains("1 job(s)")
    );
    let d = Daemon::start(&env, &cfg);
    let doc = openapi();

    // Authentication: required, and the token must be right.
    for path in ["/api/snapshots", "/api/stats", "/api/jobs", "/metrics"] {
        assert_eq!(d.get(path, None).0, 401, "{path} without a token");
        assert_eq!(
            d.get(path, Some("wrong")).0,
            401,
            "{path} with a wrong token"
        );
    }
    let (status, body) = d.get("/api/snapshots", None);
    check_response(&doc, "get", "/api/snapshots", status, &body);
    assert!(d.log().contains("refused: missing or unknown bearer token"));
    // The page and the description are public; health says only ok/degraded without a token.
    let (status, page) = request(d.addr, "GET", "/", None, None, None);
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&page).contains("<title>strata</title>"));
    let (status, served) = request(d.addr, "GET", "/api/openapi.json", None, None, None);
    assert_eq!(status, 200);
    assert_eq!(serde_json::from_slice::<Value>(&served).unwrap(), doc);
    let (_, health) = d.get("/health", None);
    assert!(health.get("reasons").is_none(), "{health}");
    // A foreign Host header (DNS rebinding) and an oversized body are refused.
    let (status, _) = request(
        d.addr,
        "GET",
        "/api/stats",
        Some(&token),
        Some("evil.example"),
        None,
    );
    assert_eq!(status, 421);
    let big = format!("{{\"paths\": [\"{}\"]}}", "x".repeat(100_000));
    assert_eq!(d.send("POST", "/api/snapshots", &token, &big).0, 413);
    assert_eq!(d.send("POST", "/api/snapshots", &token, "{nonsense").0, 400);
    assert_eq!(d.get("/api/nothing-here", Some(&token)).0, 404);
    assert_eq!(d.send("PUT", "/api/stats", &token, "").0, 405);

    // The scheduled job fires every second; retention keeps two of its snapshots.
    d.wait_jobs(&token, "four runs", |_| {
        let m = metrics(&d, &token);
        metric(&m, "strata_snapshots_total{job=\"app\"}") >= 4.0
    });
    // A large file that is then replaced: once rotation drops every snapshot of the first
    // version, its pack holds only garbage, and gc (gc_min_garbage = 1 byte) reclaims it.
    write(&data.join("big.bin"), &common::noise(400_000, 11));
    d.wait_jobs(&token, "a run after the first change", |_| {
        let m = metrics(&d, &token);
        metric(&m, "strata_snapshots_total{job=\"app\"}") >= 6.0
    });
    write(&data.join("big.bin"), &common::noise(400_000, 12));
    let jobs = d.wait_jobs(&token, "gc after the first version is forgotten", |_| {
        let m = metrics(&d, &token);
        metric(&m, "strata_gc_runs_total") >= 1.0
    });
    check_response(&doc, "get", "/api/jobs", 200, &jobs);
    assert_eq!(jobs[0]["last_status"], "succeeded", "{jobs}");
    let (status, snaps) = d.get("/api/snapshots", Some(&token));
    check_response(&doc, "get", "/api/snapshots", status, &snaps);
    let of_job = snaps
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["tags"].as_array().unwrap().contains(&"job=app".into()))
        .count();
    assert!(
        of_job <= 3,
        "retention keeps 2 (3 while a run is between backup and forget): {snaps}"
    );
    let m = metrics(&d, &token);
    assert!(metric(&m, "strata_snapshots_forgotten_total") >= 3.0, "{m}");
    // The forgotten snapshots' own data became garbage, and gc reclaimed it.
    assert!(metric(&m, "strata_gc_reclaimed_bytes_total") > 0.0, "{m}");
    assert_eq!(
        metric(&m, "strata_snapshots_failed_total{job=\"app\"}"),
        0.0
    );
    assert!(metric(&m, "strata_bytes_read_total{job=\"app\"}") >= 200_000.0);
    assert!(metric(&m, "strata_last_success_timestamp_seconds{job=\"app\"}") > 1.7e9);
    assert!(metric(&m, "strata_repository_bytes") > 0.0);
    assert!(m.contains("strata_snapshot_duration_seconds_bucket{le=\"0.05\",job=\"app\"}"));
    let (status, health) = d.get("/health", Some(&token));
    check_response(&doc, "get", "/health", status, &health);
    assert_eq!(
        (status, health["status"].as_str()),
        (200, Some("ok")),
        "{health}"
    );

    // A snapshot of the caller's own sources, then show, stats, restore, verify and delete.
    let extra = env.path("extra");
    write(&extra.join("a.bin"), &common::noise(300_000, 7));
    let body = format!(
        "{{\"paths\": [{:?}], \"name\": \"by-api\", \"tags\": [\"t1\"]}}",
        extra.display().to_string()
    );
    let (status, accepted) = d.send("POST", "/api/snapshots", &token, &body);
    check_response(&doc, "post", "/api/snapshots", status, &accepted);
    assert_eq!(status, 202);
    let op = d.wait_op(&accepted, &token);
    check_response(&doc, "get", "/api/operations/{id}", 200, &op);
    assert_eq!(op["status"], "succeeded", "{op}");
    assert_eq!(op["requested_by"], "ops");
    let id = op["result"]["id"].as_str().unwrap().to_string();
    let (status, shown) = d.get("/api/snapshots/by-api", Some(&token));
    check_response(&doc, "get", "/api/snapshots/{id}", status, &shown);
    assert_eq!(shown["id"], id.as_str());
    assert_eq!(d.get("/api/snapshots/no-such-name", Some(&token)).0, 404);
    let (status, stats) = d.get("/api/stats", Some(&token));
    check_response(&doc, "get", "/api/stats", status, &stats);
    assert!(stats["snapshots"].as_u64().unwrap() >= 3);

    let target = env.path("restored");
    let body = format!(
        "{{\"snapshot\": \"by-api\", \"target\": {:?}}}",
        target.display().to_string()
    );
    let (status, accepted) = d.send("POST", "/api/restore", &token, &body);
    check_response(&doc, "post", "/api/restore", status, &accepted);
    let op = d.wait_op(&accepted, &token);
    assert_eq!(op["status"], "succeeded", "{op}");
    assert_eq!(
        std::fs::read(target.join("extra/a.bin")).unwrap(),
        common::noise(300_000, 7)
    );
    assert_eq!(
        d.send(
            "POST",
            "/api/restore",
            &token,
            "{\"snapshot\": \"latest\", \"target\": \"rel\"}"
        )
        .0,
        400
    );

    let (status, accepted) = d.send("POST", "/api/verify", &token, "{\"read_data\": true}");
    check_response(&doc, "post", "/api/verify", status, &accepted);
    let op = d.wait_op(&accepted, &token);
    assert_eq!(op["status"], "succeeded", "{op}");
    // It said how far it had got, in bytes of the packs it reads.
    let packs: u64 = common::packs(&env.repo)
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    assert_eq!(op["progress"]["total"], packs, "{op}");
    assert!(op["progress"]["done"].as_u64().unwrap() <= packs, "{op}");
    assert_eq!(
        op["result"]["problems"].as_array().map(Vec::len),
        Some(0),
        "{op}"
    );

    let (status, accepted) = d.send(
        "DELETE",
        &format!("/api/snapshots/{}", &id[..12]),
        &token,
        "",
    );
    check_response(&doc, "delete", "/api/snapshots/{id}", status, &accepted);
    let op = d.wait_op(&accepted, &token);
    assert_eq!(op["status"], "succeeded", "{op}");
    assert_eq!(d.get("/api/snapshots/by-api", Some(&token)).0, 404);
    let (status, ops) = d.get("/api/operations", Some(&token));
    check_response(&doc, "get", "/api/operations", status, &ops);
    // Every mutating call is logged with who asked.
    let log = d.log();
    assert!(
        log.contains("who=\"ops\"") && log.contains("delete"),
        "{log}"
    );
}

#[test]
fn a_failing_job_shows_in_health_and_metrics() {
    let env = Env::new();
    env.init();
    let (token, entry) = new_token(&env);
    let missing = env.path("not-there");
    let cfg = config(
        &env,
        &format!(
            "{entry}\n[[job]]\nname = \"broken\"\npaths = [{:?}]\nschedule = \"every 1h\"\n\
             kind = \"hourly\"\non_start = true\n",
            missing.display().to_string()
        ),
    );
    let d = Daemon::start(&env, &cfg);
    let jobs = d.wait_jobs(&token, "the failed run", |j| {
        j[0]["last_status"] == "failed"
    });
    assert!(
        jobs[0]["last_error"]
            .as_str()
            .unwrap()
            .contains("not-there"),
        "{jobs}"
    );
    let (status, health) = d.get("/health", Some(&token));
    assert_eq!(status, 503, "{health}");
    assert_eq!(health["status"], "degraded");
    let reasons = health["reasons"].to_string();
    assert!(
        reasons.contains("job broken: the last run failed"),
        "{reasons}"
    );
    check_response(&openapi(), "get", "/health", status, &health);
    assert_eq!(d.get("/health", None).0, 503);
    let m = metrics(&d, &token);
    assert_eq!(
        metric(&m, "strata_snapshots_failed_total{job=\"broken\"}"),
        1.0
    );
}

#[test]
fn a_missed_run_runs_at_start() {
    let env = Env::new();
    env.init();
    let data = env.path("data");
    write(&data.join("f"), b"x");
    // The job's last snapshot is older than its interval: the run that fell due while nothing
    // was running happens at start, not a whole interval later.
    env.backup_args(&[
        "--tag",
        "job=app",
        "--kind",
        "hourly",
        data.to_str().unwrap(),
    ]);
    std::thread::sleep(Duration::from_millis(2500));
    let (token, entry) = new_token(&env);
    let cfg = config(
        &env,
        &format!(
            "{entry}\n[[job]]\nname = \"app\"\npaths = [{:?}]\nschedule = \"every 2s\"\n\
             kind = \"hourly\"\n",
            data.display().to_string()
        ),
    );
    let d = Daemon::start(&env, &cfg);
    let (_, ops) = d.get("/api/operations", Some(&token));
    let first = &ops
        .as_array()
        .unwrap()
        .last()
        .expect("an operation at start")["requested_by"];
    assert_eq!(first, "schedule", "{ops}");
    assert!(
        d.log().contains("a scheduled run was missed"),
        "{}",
        d.log()
    );
    assert!(d.started.elapsed() < Duration::from_secs(30));
}

#[test]
fn sigterm_during_a_snapshot_leaves_a_repository_that_verifies() {
    let env = Env::new();
    env.init();
    let (_, entry) = new_token(&env);
    // A source that takes two seconds: SIGTERM arrives in the middle of the snapshot, which
    // finishes within the grace period.
    let cfg = config(
        &env,
        &format!(
            "{entry}\n[[job]]\nname = \"slow\"\ncommands = [\"sleep 2; head -c 3000000 /dev/urandom=slow.bin\"]\n\
             schedule = \"every 1h\"\nkind = \"hourly\"\non_start = true\n"
        ),
    );
    let mut d = Daemon::start(&env, &cfg);
    std::thread::sleep(Duration::from_millis(700));
    assert!(d.terminate().success(), "{}", d.log());
    assert!(
        d.log().contains("waiting for the running one"),
        "{}",
        d.log()
    );
    env.ok(&["verify", "--read-data"]);
    let snaps = env.json(&["list"]);
    assert_eq!(
        snaps.as_array().unwrap().len(),
        1,
        "the running snapshot finished: {snaps}\n{}",
        d.log()
    );

    // With a grace period shorter than the snapshot, it is abandoned: nothing half-committed,
    // and the next backup works.
    let cfg = config(
        &env,
        &format!(
            "shutdown_grace = \"1s\"\n{entry}\n[[job]]\nname = \"slow\"\ncommands = [\"sleep 5; head -c 3000000 /dev/urandom=slow.bin\"]\n\
             schedule = \"every 1h\"\nkind = \"hourly\"\non_start = true\n"
        ),
    );
    let mut d = Daemon::start(&env, &cfg);
    std::thread::sleep(Duration::from_millis(700));
    assert!(d.terminate().success(), "{}", d.log());
    assert!(d.log().contains("grace period over"), "{}", d.log());
    env.ok(&["verify", "--read-data"]);
    assert_eq!(env.json(&["list"]).as_array().unwrap().len(), 1);
    let data = env.path("after");
    write(&data.join("f"), b"after the abandoned snapshot");
    env.backup(&[&data]);
    env.ok(&["verify"]);
}

#[test]
fn refuses_bad_configuration_with_line_numbers() {
    let env = Env::new();
    env.init();
    // Line 7: repo, listen and disk_min_free come first.
    let cfg = config(
        &env,
        "[[job]]\nname = \"x\"\npaths = [\"/tmp\"]\nschedule = \"daily 25:00\"\n",
    );
    let out = env.run(&["config", "check", cfg.to_str().unwrap()]);
    assert_eq!(common::code(&out), 1);
    let err = common::stderr(&out);
    assert!(
        err.contains("strata.toml:7:") && err.contains("schedule"),
        "{err}"
    );
    // Off loopback without a token: refused before anything listens.
    let cfg = config(&env, "");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("127.0.0.1:0", "0.0.0.0:0");
    std::fs::write(&cfg, text).unwrap();
    let out = env.run(&["serve", "--config", cfg.to_str().unwrap()]);
    assert_eq!(common::code(&out), 1);
    assert!(common::stderr(&out).contains("not a loopback address"));
}

/// Many concurrent list and stats calls while snapshots run: every answer is right, and the
/// latencies are printed (`cargo test --test serve load -- --nocapture`).
#[test]
fn load_on_loopback_while_snapshots_run() {
    let env = Env::new();
    env.init();
    let data = env.path("data");
    for i in 0..20 {
        write(&data.join(format!("f{i}")), &common::text(50_000, i));
    }
    let (token, entry) = new_token(&env);
    let cfg = config(
        &env,
        &format!(
            "{entry}\n[[job]]\nname = \"busy\"\npaths = [{:?}]\nschedule = \"every 1s\"\n\
             kind = \"hourly\"\nretention = \"keep-last=5\"\non_start = true\n",
            data.display().to_string()
        ),
    );
    let d = Daemon::start(&env, &cfg);
    d.wait_jobs(&token, "a first snapshot", |j| {
        j[0]["last_status"] == "succeeded"
    });
    const CLIENTS: usize = 8;
    let addr = d.addr;
    let writer_data = data.clone();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Keep the data changing so the snapshots do real work.
    let churn = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                write(&writer_data.join("churn"), &common::text(400_000, i));
                i += 1;
                std::thread::sleep(Duration::from_millis(300));
            }
        })
    };
    let runs = |d: &Daemon| metric(&metrics(d, &token), "strata_snapshots_total{job=\"busy\"}");
    let before = runs(&d);
    let mut threads = Vec::new();
    for c in 0..CLIENTS {
        let token = token.clone();
        let stop = stop.clone();
        threads.push(std::thread::spawn(move || {
            let mut times = Vec::new();
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let path = if (c + i) % 2 == 0 {
                    "/api/snapshots"
                } else {
                    "/api/stats"
                };
                i += 1;
                let t = Instant::now();
                let (status, body) = request(addr, "GET", path, Some(&token), None, None);
                times.push(t.elapsed());
                assert_eq!(status, 200, "{path}: {}", String::from_utf8_lossy(&body));
                let v: Value = serde_json::from_slice(&body).unwrap();
                assert!(v.is_array() || v["snapshots"].is_u64(), "{v}");
            }
            times
        }));
    }
    // The load lasts while three more snapshots run (bounded: at most a minute).
    let until = Instant::now() + Duration::from_secs(60);
    while runs(&d) < before + 3.0 && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut all: Vec<Duration> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    churn.join().unwrap();
    all.sort();
    let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)];
    let m = metrics(&d, &token);
    let during = metric(&m, "strata_snapshots_total{job=\"busy\"}") - before;
    println!(
        "load: {} requests from {CLIENTS} clients while {during} snapshots ran: p50 {:?}, \
         p95 {:?}, p99 {:?}, max {:?}",
        all.len(),
        pct(0.5),
        pct(0.95),
        pct(0.99),
        all[all.len() - 1]
    );
    assert!(
        during >= 3.0,
        "snapshots did not run under load: {}",
        d.log()
    );
    assert_eq!(
        metric(&m, "strata_snapshots_failed_total{job=\"busy\"}"),
        0.0,
        "{}",
        d.log()
    );
}

fn chromium() -> String {
    for c in ["chromium", "chromium-browser", "google-chrome"] {
        if std::process::Command::new(c)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
        {
            return c.to_string();
        }
    }
    panic!(
        "the web page test needs Chromium (`apt-get install chromium`; tools/test.sh installs it)"
    );
}

/// Dark pixels in a PNG screenshot: how much text and lines it shows.
fn ink(png_path: &Path) -> usize {
    let decoder = png::Decoder::new(BufReader::new(std::fs::File::open(png_path).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    let channels = info.color_type.samples();
    buf[..info.buffer_size()]
        .chunks(channels)
        .filter(|px| px.iter().take(3).map(|&c| c as u32).sum::<u32>() < 3 * 96)
        .count()
}

#[test]
fn the_web_page_lists_snapshots_in_a_real_browser() {
    let browser = chromium();
    let env = Env::new();
    env.init();
    let data = env.path("data");
    write(&data.join("f"), b"page");
    for name in ["alpha-snap", "beta-snap", "gamma-snap"] {
        env.backup_args(&["--name", name, data.to_str().unwrap()]);
    }
    // An archived WAL file is a snapshot too, but not a state of the data: not listed.
    let wal = env.path("000000010000000000000001");
    write(&wal, &common::noise(16 << 10, 3));
    env.ok(&[
        "pg",
        "archive-wal",
        wal.to_str().unwrap(),
        "000000010000000000000001",
    ]);
    let (token, entry) = new_token(&env);
    let cfg = config(
        &env,
        &format!(
            "{entry}\n[[job]]\nname = \"pagejob\"\npaths = [{:?}]\nschedule = \"daily 03:00\"\nkind = \"daily\"\n",
            data.display().to_string()
        ),
    );
    let d = Daemon::start(&env, &cfg);
    let profile = env.path("chromium-profile");
    let run = |url: &str, extra: &[String]| chromium_run(&browser, &profile, url, extra);
    let url = format!("http://{}/#token={token}", d.addr);
    let dom = run(&url, &["--dump-dom".into()]);
    assert!(
        dom.contains("data-loaded=\"yes\""),
        "the page did not load its data:\n{dom}"
    );
    assert_eq!(dom.matches("class=\"snapshot\"").count(), 3, "{dom}");
    for name in [
        "alpha-snap",
        "beta-snap",
        "gamma-snap",
        "pagejob",
        "daily 03:00",
    ] {
        assert!(dom.contains(name), "{name} is not on the page:\n{dom}");
    }
    // Screenshots: with the token the list renders (more ink) than without it.
    let with = env.path("with.png");
    let without = env.path("without.png");
    run(&url, &[format!("--screenshot={}", with.display())]);
    run(
        &format!("http://{}/#token=wrong", d.addr),
        &[format!("--screenshot={}", without.display())],
    );
    let (a, b) = (ink(&with), ink(&without));
    assert!(
        a > b + 2000,
        "the snapshot list does not show in the screenshot: {a} dark pixels against {b}"
    );
}

#[test]
fn health_reports_a_nearly_full_disk() {
    let env = Env::new();
    env.init();
    let (token, entry) = new_token(&env);
    // No file system has 100% free, so this threshold always trips.
    let cfg = config(&env, &format!("disk_min_free = \"100%\"\n{entry}\n"));
    let d = Daemon::start(&env, &cfg);
    let (status, health) = d.get("/health", Some(&token));
    assert_eq!(status, 503, "{health}");
    assert!(
        health["reasons"]
            .to_string()
            .contains("repository disk almost full"),
        "{health}"
    );
}

#[test]
fn serves_an_encrypted_repository() {
    let env = Env::new();
    env.set_var("STRATA_PASSWORD", "serve passphrase");
    env.set_var("STRATA_KDF_MEMORY_KIB", "8192");
    env.ok(&["init", "--encrypt"]);
    let data = env.path("data");
    write(&data.join("secret.txt"), b"only for the key holder");
    let (token, entry) = new_token(&env);
    let cfg = config(
        &env,
        &format!(
            "{entry}\n[[job]]\nname = \"enc\"\npaths = [{:?}]\nschedule = \"every 1h\"\n\
             kind = \"hourly\"\non_start = true\n",
            data.display().to_string()
        ),
    );
    let d = Daemon::start(&env, &cfg);
    d.wait_jobs(&token, "the encrypted snapshot", |j| {
        j[0]["last_status"] == "succeeded"
    });
    let (status, snaps) = d.get("/api/snapshots", Some(&token));
    assert_eq!(status, 200);
    assert_eq!(snaps.as_array().unwrap().len(), 1, "{snaps}");
    // A wrong passphrase stops the daemon before it listens.
    env.set_var("STRATA_PASSWORD", "not it");
    let out = env.run(&["serve", "--config", cfg.to_str().unwrap()]);
    assert_eq!(common::code(&out), 1);
    assert!(
        common::stderr(&out).contains("wrong passphrase"),
        "{}",
        common::stderr(&out)
    );
    // The configuration's password file (the environment has none now, nor a wrong one).
    let file = env.path("passphrase");
    std::fs::write(&file, "serve passphrase\n").unwrap();
    let with_file = config(
        &env,
        &format!(
            "password_file = {:?}\n{entry}\n[[job]]\nname = \"enc\"\npaths = [{:?}]\n\
             schedule = \"every 1h\"\nkind = \"hourly\"\non_start = true\n",
            file.display().to_string(),
            data.display().to_string()
        ),
    );
    env.set_var("STRATA_PASSWORD", "");
    drop(d);
    let d = Daemon::start(&env, &with_file);
    d.wait_jobs(&token, "a snapshot with the password file", |j| {
        j[0]["last_status"] == "succeeded"
    });
    let (_, snaps) = d.get("/api/snapshots", Some(&token));
    assert_eq!(snaps.as_array().unwrap().len(), 2, "{snaps}");
}

#[test]
fn runs_from_environment_variables_alone_with_json_logs() {
    let env = Env::new();
    env.init();
    let data = env.path("data");
    write(&data.join("state.json"), b"{\"turns\": 1}");
    // No configuration file: the job, its schedule, retention and the listener come from the
    // environment (as in a container).
    env.set_var("STRATA_LISTEN", "127.0.0.1:0");
    env.set_var("STRATA_BACKUP_PATHS", data.to_str().unwrap());
    env.set_var("STRATA_BACKUP_INTERVAL", "1s");
    env.set_var("STRATA_BACKUP_KIND", "hourly");
    env.set_var("STRATA_MAX_SNAPSHOTS", "2");
    env.set_var("STRATA_ON_START", "true");
    env.set_var("STRATA_LOG_FORMAT", "json");
    let cfg = env.path("absent.toml");
    let mut child_env_only = env.cmd();
    child_env_only.args(["config", "check"]).arg(&cfg);
    assert!(!child_env_only.output().unwrap().status.success());
    let empty = env.path("empty.toml");
    std::fs::write(&empty, "").unwrap();
    let state = env.path("state");
    env.set_var("XDG_STATE_HOME", state.to_str().unwrap());
    let d = Daemon::start(&env, &empty);
    // No [[token]]: the daemon made one, in a file only its user can read.
    let (path, token) = token_file(&d);
    assert_eq!(path, state.join("strata/api-token"));
    assert_eq!(d.get("/api/operations", None).0, 401);
    let jobs = d.wait_jobs(&token, "three runs of the default job", |_| {
        let (_, ops) = d.get("/api/operations", Some(&token));
        ops.as_array()
            .is_some_and(|o| o.iter().filter(|op| op["status"] == "succeeded").count() >= 3)
    });
    assert_eq!(jobs[0]["name"], "default", "{jobs}");
    assert_eq!(jobs[0]["schedule"], "every 1s");
    let (_, snaps) = d.get("/api/snapshots", Some(&token));
    assert!(
        snaps.as_array().unwrap().len() <= 3,
        "max 2 (3 between backup and forget): {snaps}"
    );
    // Every log line is a JSON object.
    let log = d.log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| !l.starts_with("strata serve: "))
        .collect();
    assert!(lines.len() >= 3, "{log}");
    for l in lines {
        let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
        assert!(v["message"].is_string() && v["level"].is_string(), "{l}");
    }
}

#[test]
fn a_job_waits_for_a_lock_another_process_holds() {
    let env = Env::new();
    env.init();
    let data = env.path("data");
    write(&data.join("f"), b"waited");
    // Another strata (here: a stand-in process) holds the repository lock.
    let mut holder = std::process::Command::new("sleep")
        .arg("60")
        .spawn()
        .unwrap();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    std::fs::write(
        env.repo.join("lock"),
        format!(
            "{{\"pid\": {}, \"host\": {:?}, \"time\": \"now\", \"command\": \"backup\"}}",
            holder.id(),
            host.trim()
        ),
    )
    .unwrap();
    let (token, entry) = new_token(&env);
    let cfg = config(
        &env,
        &format!(
            "{entry}\n[[job]]\nname = \"app\"\npaths = [{:?}]\nschedule = \"every 1h\"\n\
             kind = \"hourly\"\non_start = true\n",
            data.display().to_string()
        ),
    );
    let d = Daemon::start(&env, &cfg);
    let until = Instant::now() + Duration::from_secs(60);
    while !d.log().contains("waiting for the repository lock") {
        assert!(Instant::now() < until, "{}", d.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let (_, jobs) = d.get("/api/jobs", Some(&token));
    assert_eq!(jobs[0]["running"], true, "{jobs}");
    assert!(jobs[0]["last_status"].is_null(), "{jobs}");
    // The holder goes away: its lock is stale, and the job goes on.
    holder.kill().unwrap();
    holder.wait().unwrap();
    let jobs = d.wait_jobs(&token, "the run after the lock", |j| {
        !j[0]["last_status"].is_null()
    });
    assert_eq!(jobs[0]["last_status"], "succeeded", "{jobs}\n{}", d.log());
}

fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

fn chmod(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn without_a_token_entry_a_private_token_file_is_required() {
    let env = Env::new();
    env.init();
    let state = env.path("state");
    env.set_var("XDG_STATE_HOME", state.to_str().unwrap());
    let cfg = config(&env, "");
    let d = Daemon::start(&env, &cfg);
    let (path, token) = token_file(&d);
    assert_eq!(path, state.join("strata/api-token"));
    assert!(token.len() >= 32, "{token}");
    assert!(!d.log().contains(&token), "the token itself is not logged");
    assert!(d.log().contains(&format!(
        "http://{}/#token=$(cat {})",
        d.addr,
        path.display()
    )));
    assert_eq!(mode(&path), 0o600);
    assert_eq!(mode(path.parent().unwrap()), 0o700);

    // Nothing but the public paths without it: no "local" trust.
    for p in [
        "/api/snapshots",
        "/api/stats",
        "/api/jobs",
        "/api/operations",
        "/metrics",
    ] {
        assert_eq!(d.get(p, None).0, 401, "{p}");
        assert_eq!(d.get(p, Some("wrong")).0, 401, "{p}");
        assert_eq!(d.get(p, Some(&token)).0, 200, "{p}");
    }
    let evil = r#"{"paths": ["/"], "name": "evil"}"#;
    let (status, _) = request(d.addr, "POST", "/api/snapshots", None, None, Some(evil));
    assert_eq!(status, 401);
    let restore = r#"{"snapshot": "evil", "target": "/root/private", "delete": true}"#;
    let (status, _) = request(d.addr, "POST", "/api/restore", None, None, Some(restore));
    assert_eq!(status, 401);
    assert_eq!(d.get("/health", None).0, 200);
    let (_, ops) = d.get("/api/operations", Some(&token));
    assert_eq!(ops, serde_json::json!([]), "nothing was queued");
    drop(d);

    // The same token after a restart.
    let d = Daemon::start(&env, &cfg);
    assert_eq!(token_file(&d), (path.clone(), token.clone()));
    assert_eq!(d.get("/api/stats", Some(&token)).0, 200);
    drop(d);

    // A token file others can read, or one someone else owns, is refused.
    chmod(&path, 0o640);
    let out = env.run(&["serve", "--config", cfg.to_str().unwrap()]);
    assert_eq!(common::code(&out), 1);
    let err = common::stderr(&out);
    assert!(
        err.contains("mode 0640") && err.contains("chmod 600"),
        "{err}"
    );
    chmod(&path, 0o600);
    if std::os::unix::fs::chown(&path, Some(1), None).is_ok() {
        let out = env.run(&["serve", "--config", cfg.to_str().unwrap()]);
        assert_eq!(common::code(&out), 1);
        let err = common::stderr(&out);
        assert!(err.contains("owned by uid 1"), "{err}");
    }
    // A symbolic link in its place is refused too.
    std::fs::remove_file(&path).unwrap();
    let elsewhere = env.path("planted-token");
    std::fs::write(&elsewhere, "0123456789abcdef0123456789abcdef\n").unwrap();
    chmod(&elsewhere, 0o600);
    std::os::unix::fs::symlink(&elsewhere, &path).unwrap();
    let out = env.run(&["serve", "--config", cfg.to_str().unwrap()]);
    assert_eq!(common::code(&out), 1);
    assert!(
        common::stderr(&out).contains("symbolic link"),
        "{}",
        common::stderr(&out)
    );

    // token_file names another place; with a [[token]], no file is made at all.
    let chosen = env.path("chosen/token");
    let cfg = config(
        &env,
        &format!("token_file = {:?}\n", chosen.display().to_string()),
    );
    let d = Daemon::start(&env, &cfg);
    assert_eq!(token_file(&d).0, chosen);
    drop(d);
    let (_, entry) = new_token(&env);
    let other = env.path("other-state");
    env.set_var("XDG_STATE_HOME", other.to_str().unwrap());
    let d = Daemon::start(&env, &config(&env, &entry));
    assert!(!d.log().contains("API token in"), "{}", d.log());
    assert!(!other.exists());
}

#[test]
fn browsers_cannot_send_requests_for_another_site() {
    let env = Env::new();
    env.init();
    let (token, entry) = new_token(&env);
    let d = Daemon::start(&env, &config(&env, &entry));
    let doc = openapi();
    let host = d.addr.to_string();
    let auth = format!("Bearer {token}");
    let verify = |extra: &[(&str, &str)], body: &str| {
        let mut headers = vec![("Host", host.as_str()), ("Authorization", auth.as_str())];
        headers.extend_from_slice(extra);
        let (status, body) = request_with(d.addr, "POST", "/api/verify", &headers, body);
        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        check_response(&doc, "post", "/api/verify", status, &body);
        (status, body)
    };
    // Bodies a cross-site form or a fetch without preflight can send: refused.
    for ct in [
        "text/plain",
        "text/plain;charset=UTF-8",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
    ] {
        let (status, body) = verify(&[("Content-Type", ct)], "{}");
        assert_eq!(status, 415, "{ct}: {body}");
        assert!(
            body["error"].as_str().unwrap().contains("application/json"),
            "{body}"
        );
    }
    assert_eq!(verify(&[], "{}").0, 415, "no Content-Type");
    assert_eq!(verify(&[], "").0, 415, "no Content-Type, no body");
    // Pages of other origins, and what the browser marks cross-site: refused.
    let json = ("Content-Type", "application/json");
    for origin in [
        "http://evil.example",
        "null",
        "http://localhost:1",
        "http://127.0.0.1",
    ] {
        assert_eq!(verify(&[json, ("Origin", origin)], "{}").0, 403, "{origin}");
    }
    assert_eq!(
        verify(&[json, ("Sec-Fetch-Site", "cross-site")], "{}").0,
        403
    );
    let (status, _) = request_with(
        d.addr,
        "GET",
        "/api/snapshots",
        &[
            ("Host", &host),
            ("Authorization", &auth),
            ("Origin", "http://evil.example"),
        ],
        "",
    );
    assert_eq!(status, 403);
    let (_, ops) = d.get("/api/operations", Some(&token));
    assert_eq!(
        ops,
        serde_json::json!([]),
        "the refused requests queued nothing"
    );
    // The page's own requests, and JSON with parameters, are accepted.
    let own = format!("http://{host}");
    let (status, body) = verify(
        &[
            ("Content-Type", "application/json; charset=utf-8"),
            ("Origin", &own),
            ("Sec-Fetch-Site", "same-origin"),
        ],
        "{}",
    );
    assert_eq!(status, 202, "{body}");
    // A DELETE without a body needs no Content-Type; one with a body must be JSON.
    let (status, _) = request_with(
        d.addr,
        "DELETE",
        "/api/snapshots/latest",
        &[
            ("Host", &host),
            ("Authorization", &auth),
            ("Content-Type", "text/plain"),
        ],
        "x",
    );
    assert_eq!(status, 415);
    let (status, _) = request_with(
        d.addr,
        "DELETE",
        "/api/snapshots/latest",
        &[("Host", &host), ("Authorization", &auth)],
        "",
    );
    assert_eq!(status, 404, "no snapshots: checked, not refused");
}

#[test]
fn restores_through_the_api_only_write_below_restore_roots() {
    let env = Env::new();
    env.init();
    let data = env.path("data");
    write(&data.join("f.txt"), b"restored content");
    env.backup_args(&["--name", "snap", data.to_str().unwrap()]);
    let (token, entry) = new_token(&env);
    let doc = openapi();
    let outside = env.path("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let restore = |d: &Daemon, target: &Path| {
        let body = serde_json::json!({"snapshot": "snap", "target": target, "delete": true});
        let (status, answer) = d.send("POST", "/api/restore", &token, &body.to_string());
        check_response(&doc, "post", "/api/restore", status, &answer);
        (status, answer)
    };

    // None configured: restores through the API are off.
    let d = Daemon::start(&env, &config(&env, &entry));
    let (status, answer) = restore(&d, &outside);
    assert_eq!(status, 403, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("restore_roots"),
        "{answer}"
    );
    drop(d);

    let root = env.path("restore-root");
    std::fs::create_dir_all(root.join("later")).unwrap();
    std::os::unix::fs::symlink(&outside, root.join("escape")).unwrap();
    let cfg = config(
        &env,
        &format!(
            "restore_roots = [{:?}]\n{entry}\n[[job]]\nname = \"slow\"\n\
             commands = [\"sleep 3; echo x=slow.txt\"]\nkind = \"hourly\"\n",
            root.display().to_string()
        ),
    );
    let d = Daemon::start(&env, &cfg);
    // Outside, through a link that leads outside, the link itself, and `..`.
    for target in [
        outside.join("x"),
        root.join("escape/x"),
        root.join("escape"),
    ] {
        let (status, answer) = restore(&d, &target);
        assert_eq!(status, 403, "{target:?}: {answer}");
    }
    let (status, _) = restore(&d, &root.join("../outside"));
    assert_eq!(status, 400);
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);

    // A request that cannot succeed is answered at once, not by an operation failing later.
    let ask = |body: serde_json::Value| {
        let (status, answer) = d.send("POST", "/api/restore", &token, &body.to_string());
        check_response(&doc, "post", "/api/restore", status, &answer);
        (status, answer)
    };
    let t = root.join("never");
    for (body, want, says) in [
        (
            serde_json::json!({"snapshot": "nosuchname", "target": t}),
            404,
            "no snapshot",
        ),
        (
            serde_json::json!({"snapshot": "abc", "target": t}),
            400,
            "4 or more hex digits",
        ),
        (
            serde_json::json!({"at": "last tuesday", "target": t}),
            400,
            "cannot read time",
        ),
        (
            serde_json::json!({"at": "2000-01-01", "target": t}),
            404,
            "no snapshot was taken",
        ),
        (
            serde_json::json!({"snapshot": "snap", "target": t, "paths": ["data/nope"]}),
            400,
            "not in the snapshot",
        ),
    ] {
        let (status, answer) = ask(body.clone());
        assert_eq!(status, want, "{body}: {answer}");
        assert!(
            answer["error"].as_str().unwrap().contains(says),
            "{body}: {answer}"
        );
    }
    assert!(!t.exists());

    // Inside: a new directory is made private; an existing one keeps its mode.
    let fresh = root.join("fresh/dir");
    let (status, accepted) = restore(&d, &fresh);
    assert_eq!(status, 202, "{accepted}");
    let op = d.wait_op(&accepted, &token);
    assert_eq!(op["status"], "succeeded", "{op}");
    assert_eq!(
        std::fs::read(fresh.join("data/f.txt")).unwrap(),
        b"restored content"
    );
    assert_eq!(mode(&fresh), 0o700);
    let existing = root.join("existing");
    std::fs::create_dir(&existing).unwrap();
    chmod(&existing, 0o700);
    write(&existing.join("old.txt"), b"old");
    let (_, accepted) = restore(&d, &existing);
    let op = d.wait_op(&accepted, &token);
    assert_eq!(op["status"], "succeeded", "{op}");
    assert_eq!(mode(&existing), 0o700);
    assert!(existing.join("data/f.txt").exists() && existing.join("old.txt").exists());

    // Checked again when the restore runs: a directory swapped for a link meanwhile is refused.
    let (_, slow) = d.send("POST", "/api/snapshots", &token, "{\"job\": \"slow\"}");
    let (status, accepted) = restore(&d, &root.join("later/t"));
    assert_eq!(status, 202, "{accepted}");
    std::fs::rename(root.join("later"), root.join("later-was")).unwrap();
    std::os::unix::fs::symlink(&outside, root.join("later")).unwrap();
    assert_eq!(d.wait_op(&slow, &token)["status"], "succeeded");
    let op = d.wait_op(&accepted, &token);
    assert_eq!(op["status"], "failed", "{op}");
    assert!(
        op["error"]
            .as_str()
            .unwrap()
            .contains("not inside restore_roots"),
        "{op}"
    );
    assert_eq!(
        std::fs::read_dir(&outside).unwrap().count(),
        0,
        "nothing written outside"
    );
}

#[test]
fn api_snapshots_of_given_paths_only_read_below_backup_roots() {
    let env = Env::new();
    env.init();
    let (token, entry) = new_token(&env);
    let doc = openapi();
    let root = env.path("backup-root");
    let outside = env.path("outside");
    write(&root.join("mine/f.txt"), b"may be read");
    write(&outside.join("secret.txt"), b"root only");
    write(&outside.join("app.db"), b"not really a database");
    std::os::unix::fs::symlink(&outside, root.join("escape")).unwrap();
    std::os::unix::fs::symlink(outside.join("app.db"), root.join("app.db")).unwrap();
    let job = format!(
        "{entry}\n[[job]]\nname = \"app\"\npaths = [{:?}]\nkind = \"hourly\"\n",
        outside.display().to_string()
    );
    let snapshot = |d: &Daemon, body: Value| {
        let (status, answer) = d.send("POST", "/api/snapshots", &token, &body.to_string());
        check_response(&doc, "post", "/api/snapshots", status, &answer);
        (status, answer)
    };

    // None configured: only jobs.
    let d = Daemon::start(&env, &config(&env, &job));
    let (status, answer) = snapshot(&d, serde_json::json!({"paths": [root.join("mine")]}));
    assert_eq!(status, 403, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("backup_roots"),
        "{answer}"
    );
    let (status, accepted) = snapshot(&d, serde_json::json!({"job": "app"}));
    assert_eq!(status, 202);
    assert_eq!(d.wait_op(&accepted, &token)["status"], "succeeded");
    drop(d);

    let cfg = config(
        &env,
        &format!("backup_roots = [{:?}]\n{job}", root.display().to_string()),
    );
    let d = Daemon::start(&env, &cfg);
    for body in [
        serde_json::json!({"paths": [outside.join("secret.txt")]}),
        serde_json::json!({"paths": [root.join("mine"), root.join("escape/secret.txt")]}),
        serde_json::json!({"paths": ["/"]}),
        serde_json::json!({"sqlite": [outside.join("app.db")]}),
        serde_json::json!({"sqlite": [root.join("app.db")]}),
    ] {
        let (status, answer) = snapshot(&d, body.clone());
        assert_eq!(status, 403, "{body}: {answer}");
    }
    let (status, _) = snapshot(&d, serde_json::json!({"paths": ["mine"]}));
    assert_eq!(status, 400, "relative");
    let (status, accepted) = snapshot(
        &d,
        serde_json::json!({"paths": [root.join("mine")], "name": "--delete"}),
    );
    assert_eq!(status, 202);
    let op = d.wait_op(&accepted, &token);
    assert_eq!(op["status"], "succeeded", "{op}");
    let (_, snaps) = d.get("/api/snapshots", Some(&token));
    let names: Vec<&Value> = snaps
        .as_array()
        .unwrap()
        .iter()
        .map(|s| &s["name"])
        .collect();
    assert!(names.contains(&&Value::from("--delete")), "{snaps}");
}

/// VmRSS of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

#[test]
fn oversized_headers_are_refused_without_growing_the_daemon() {
    let env = Env::new();
    env.init();
    let (token, entry) = new_token(&env);
    let d = Daemon::start(&env, &config(&env, &entry));
    assert_eq!(d.get("/api/stats", Some(&token)).0, 200);
    let before = rss_kib(d.child.id());
    // Four clients at once, each sending one header line of a megabyte.
    let addr = d.addr;
    let clients: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(addr).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                let head = format!("GET /api/stats HTTP/1.1\r\nHost: {addr}\r\nX-Fill: ");
                let _ = s.write_all(head.as_bytes());
                let fill = vec![b'a'; 64 << 10];
                for _ in 0..16 {
                    if s.write_all(&fill).is_err() {
                        break;
                    }
                }
                let _ = s.write_all(b"\r\n\r\n");
                let mut raw = Vec::new();
                let _ = s.read_to_end(&mut raw);
                response(&raw).0
            })
        })
        .collect();
    for c in clients {
        assert_eq!(c.join().unwrap(), 431);
    }
    // More fields than allowed, each small.
    let mut many: Vec<(String, String)> =
        (0..100).map(|i| (format!("X-{i}"), "v".into())).collect();
    many.push(("Host".into(), addr.to_string()));
    let headers: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(request_with(addr, "GET", "/api/stats", &headers, "").0, 431);
    // A body announced as chunked is refused rather than read without a bound.
    let (status, _) = request_with(
        addr,
        "POST",
        "/api/verify",
        &[
            ("Host", &addr.to_string()),
            ("Transfer-Encoding", "chunked"),
        ],
        "",
    );
    assert_eq!(status, 501);
    let after = rss_kib(d.child.id());
    assert!(
        after < before + (20 << 10),
        "the daemon grew from {before} KiB to {after} KiB"
    );
    assert_eq!(d.get("/api/stats", Some(&token)).0, 200);
}

#[test]
fn a_stalled_request_is_closed_while_others_are_answered() {
    let env = Env::new();
    env.init();
    let (token, entry) = new_token(&env);
    let d = Daemon::start(&env, &config(&env, &entry));
    let addr = d.addr;
    // Half a header, then nothing.
    let stalled: Vec<(TcpStream, Instant)> = (0..5)
        .map(|_| {
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(format!("GET /api/stats HTTP/1.1\r\nHost: {addr}\r\nAutho").as_bytes())
                .unwrap();
            (s, Instant::now())
        })
        .collect();
    // A header trickling in a byte at a time, never finished.
    let mut trickle = TcpStream::connect(addr).unwrap();
    let trickle_start = Instant::now();
    trickle
        .write_all(format!("GET /api/stats HTTP/1.1\r\nHost: {addr}\r\nX-Slow: ").as_bytes())
        .unwrap();
    let mut writer = trickle.try_clone().unwrap();
    std::thread::spawn(move || {
        for _ in 0..120 {
            std::thread::sleep(Duration::from_millis(250));
            if writer.write_all(b"a").is_err() {
                break;
            }
        }
    });
    // Everyone else is answered meanwhile.
    for _ in 0..20 {
        assert_eq!(d.get("/api/stats", Some(&token)).0, 200);
    }
    let closes = |mut s: TcpStream, since: Instant, what: &str| {
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut raw = Vec::new();
        let read = s.read_to_end(&mut raw);
        let took = since.elapsed();
        assert!(read.is_ok(), "{what}: still open after {took:?}");
        assert!(
            took < Duration::from_secs(15),
            "{what}: closed after {took:?}"
        );
        assert_eq!(response(&raw).0, 408, "{what}");
    };
    for (s, since) in stalled {
        closes(s, since, "half a header");
    }
    closes(trickle, trickle_start, "a trickling header");
    assert_eq!(d.get("/api/stats", Some(&token)).0, 200);
}

#[test]
fn the_api_downloads_one_file_and_the_favicon_needs_no_token() {
    let env = Env::new();
    env.init();
    let data = env.path("data");
    let big = common::noise(3 << 20, 5);
    write(&data.join("dir/a file.bin"), &big);
    write(&data.join("ünï.txt"), b"accents");
    let id = env.backup(&[&data]);
    let (token, entry) = new_token(&env);
    let d = Daemon::start(&env, &config(&env, &entry));
    let get = |path: &str, token: Option<&str>| request(d.addr, "GET", path, token, None, None);
    let (status, body) = get(
        &format!(
            "/api/snapshots/{}/file?path=data/dir/a%20file.bin",
            &id[..8]
        ),
        Some(&token),
    );
    assert_eq!(status, 200);
    assert!(body == big, "{} bytes", body.len());
    let (status, body) = get(
        "/api/snapshots/latest/file?path=data%2F%C3%BCn%C3%AF.txt",
        Some(&token),
    );
    assert_eq!((status, body.as_slice()), (200, &b"accents"[..]));
    for (path, want) in [
        ("/api/snapshots/latest/file?path=data/missing", 404),
        ("/api/snapshots/latest/file?path=data/dir", 400),
        ("/api/snapshots/latest/file", 400),
        ("/api/snapshots/latest/file?path=%zz", 400),
        ("/api/snapshots/nosuch/file?path=data/x", 404),
    ] {
        let (status, body) = get(path, Some(&token));
        assert_eq!(status, want, "{path}: {}", String::from_utf8_lossy(&body));
    }
    // Without a token: refused, with an error the page can show.
    let (status, body) = get("/api/snapshots/latest/file?path=data/ünï.txt", None);
    assert_eq!(status, 401);
    assert!(String::from_utf8_lossy(&body).contains("error"));
    // The browser's own request for an icon is no error at all.
    assert_eq!(get("/favicon.ico", None).0, 204);
}

/// What headless Chromium gives for `url` with the arguments `extra` (`--dump-dom` for the DOM
/// once the page's scripts have run, `--screenshot=PATH`), in the profile directory `profile`.
fn chromium_run(browser: &str, profile: &Path, url: &str, extra: &[String]) -> String {
    let out = std::process::Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            "--virtual-time-budget=10000",
            "--window-size=1200,900",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(url)
        .output()
        .expect("run chromium");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The DOM Chromium renders for `url` once the page's scripts have run.
fn rendered_dom(browser: &str, profile: &Path, url: &str) -> String {
    chromium_run(browser, profile, url, &["--dump-dom".into()])
}

#[test]
fn the_web_page_opens_a_snapshot_into_its_files_in_a_real_browser() {
    let browser = chromium();
    let env = Env::new();
    env.init();
    let data = env.path("data");
    write(&data.join("top.txt"), b"top");
    write(&data.join("sub/inner.json"), b"{}");
    write(&data.join("sub/deeper/x.bin"), &common::noise(20_000, 1));
    env.backup(&[&data]);
    write(&data.join("sub/new.txt"), b"later");
    let id = env.backup(&[&data]);
    let (token, entry) = new_token(&env);
    let d = Daemon::start(&env, &config(&env, &entry));
    let profile = env.path("chromium-profile");

    // A link straight to a directory of a snapshot.
    let url = format!(
        "http://{}/#token={token}&browse={}&dir=data/sub",
        d.addr,
        &id[..8]
    );
    let dom = rendered_dom(&browser, &profile, &url);
    assert!(dom.contains("data-loaded=\"yes\""), "{dom}");
    for path in ["data/sub/inner.json", "data/sub/new.txt", "data/sub/deeper"] {
        assert!(
            dom.contains(&format!("data-path=\"{path}\"")),
            "{path} not listed:\n{dom}"
        );
    }
    assert_eq!(dom.matches("class=\"entry\"").count(), 3, "{dom}");
    assert!(
        !dom.contains("data-path=\"data/top.txt\""),
        "another directory's file"
    );
    assert!(dom.contains(&format!("Snapshot {}", &id[..8])), "{dom}");
    assert!(dom.contains(">Download<"), "{dom}");
    assert!(dom.contains("Restore selected"), "{dom}");
    assert!(dom.contains(">deeper/<"), "a directory to open:\n{dom}");
    // Charts: a bar per snapshot; health; the sign-in form is out of the way.
    assert_eq!(
        dom.matches("class=\"bar\"").count(),
        4,
        "two bar charts of two snapshots:\n{dom}"
    );
    assert!(
        dom.contains("id=\"health\" role=\"status\" class=\"ok\">healthy<"),
        "{dom}"
    );
    assert!(dom.contains("<form id=\"login\" hidden"), "{dom}");
    for button in [">Browse<", ">Delete<", ">Verify all data<"] {
        assert!(dom.contains(button), "{button}:\n{dom}");
    }

    // Without a token: a sign-in form that says how to get one, and no raw error text.
    let fresh = env.path("chromium-fresh");
    let dom = rendered_dom(&browser, &fresh, &format!("http://{}/", d.addr));
    assert!(dom.contains("<form id=\"login\">"), "{dom}");
    assert!(dom.contains("sign in with an API token"), "{dom}");
    assert!(dom.contains("strata serve --new-token NAME"), "{dom}");
    assert!(
        !dom.contains("Authorization: Bearer"),
        "raw error text:\n{dom}"
    );
}

/// `follow = true`: the daemon runs a follower for the job's database, says how it does in
/// `/api/followers`, `/metrics` and `/health`, starts it again when it dies, and stops it on
/// shutdown; the job's snapshots go on from its journal.
#[test]
fn a_job_with_follow_keeps_a_follower_running() {
    let env = Env::new();
    env.init();
    let (token, entry) = new_token(&env);
    let db = env.path("app.db");
    let c = rusqlite::Connection::open(&db).unwrap();
    c.execute_batch(
        "PRAGMA journal_mode=WAL; CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);
         INSERT INTO t(v) VALUES ('first');",
    )
    .unwrap();
    let cfg = config(
        &env,
        &format!(
            "{entry}\n[[job]]\nname = \"app\"\nsqlite = [{:?}]\nfollow = true\n\
             schedule = \"every 1h\"\nkind = \"hourly\"\n",
            db.display().to_string()
        ),
    );
    let mut d = Daemon::start(&env, &cfg);
    let followers = |d: &Daemon| d.get("/api/followers", Some(&token));
    let wait = |d: &Daemon, what: &str, ok: &dyn Fn(&Value) -> bool| -> Value {
        let until = Instant::now() + Duration::from_secs(60);
        loop {
            let (status, list) = followers(d);
            assert_eq!(status, 200, "{list}");
            if ok(&list[0]) {
                return list;
            }
            assert!(
                Instant::now() < until,
                "waited for {what}: {list}\n{}",
                d.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    wait(&d, "the follower", &|f| {
        f["running"] == true && f["status"]["pid"].is_u64()
    });
    for n in 0..20 {
        c.execute("INSERT INTO t(v) VALUES (?1)", [format!("row {n}")])
            .unwrap();
    }
    let list = wait(&d, "the transactions copied", &|f| {
        f["status"]["transactions"].as_u64() >= Some(20)
    });
    let (status, _) = followers(&d);
    check_response(&openapi(), "get", "/api/followers", status, &list);
    let m = metrics(&d, &token);
    assert!(metric(&m, "strata_follow_running") == 1.0, "{m}");
    assert!(metric(&m, "strata_follow_transactions") >= 20.0, "{m}");
    let (status, health) = d.get("/health", Some(&token));
    assert_eq!(status, 200, "{health}");

    // A snapshot of the job, then a follower killed: the daemon starts another.
    let (_, op) = d.send("POST", "/api/snapshots", &token, "{\"job\": \"app\"}");
    assert_eq!(d.wait_op(&op, &token)["status"], "succeeded");
    // From the snapshot on, the database can be restored to any instant up to now.
    let list = wait(&d, "a span to restore to", &|f| {
        f["restorable"].as_array().is_some_and(|s| s.len() == 1)
            && f["restorable"][0]["following"] == true
    });
    let (status, _) = followers(&d);
    check_response(&openapi(), "get", "/api/followers", status, &list);
    // The web page shows the followed database and its span.
    let profile = env.path("chromium-profile");
    let dom = rendered_dom(
        &chromium(),
        &profile,
        &format!("http://{}/#token={token}", d.addr),
    );
    assert!(dom.contains("data-loaded=\"yes\""), "{dom}");
    let row = dom
        .split("<tr class=\"followed\">")
        .nth(1)
        .unwrap_or_else(|| panic!("no followed database on the page:\n{dom}"));
    let row = &row[..row.find("</tr>").unwrap()];
    assert!(
        row.contains(&db.display().to_string())
            && row.contains(">following<")
            && row.contains("– now"),
        "{row}"
    );
    let pid = list[0]["status"]["pid"].as_u64().unwrap() as i32;
    // SAFETY: signalling the daemon's child.
    unsafe { libc_kill(pid, 9) };
    wait(&d, "a new follower", &|f| {
        f["restarts"].as_u64() >= Some(1)
            && f["running"] == true
            && f["status"]["pid"].as_u64().is_some_and(|p| p as i32 != pid)
    });
    let second = followers(&d).1[0]["status"]["pid"].as_u64().unwrap() as i32;
    assert!(d.terminate().success());
    // SAFETY: probing (signal 0) whether the follower is gone.
    let alive = unsafe { libc_kill(second, 0) } == 0;
    assert!(!alive, "the follower outlived the daemon");
}

/// Polls `/api/postgres` until `check` holds; returns the answer.
fn wait_postgres(d: &Daemon, token: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let until = Instant::now() + Duration::from_secs(120);
    loop {
        let (status, p) = d.get("/api/postgres", Some(token));
        assert_eq!(status, 200, "{p}");
        if check(&p) {
            return p;
        }
        assert!(
            Instant::now() < until,
            "timed out waiting for {what}: {p}\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_postgres_job_takes_base_backups_and_the_archive_is_watched() {
    use common::pg::{ArchivingServer, bin_path, skip_server_tests};
    if skip_server_tests() {
        return;
    }
    let browser = chromium();
    let env = Env::new();
    env.init();
    // Archiving fails while this file exists (as an archive_command that cannot reach its
    // repository would).
    let broken = env.path("archiving-broken");
    let pg = ArchivingServer::start_with(
        &env,
        &[&format!(
            "archive_command=test ! -e '{}' && '{}' pg archive-wal %p %f",
            broken.display(),
            bin_path()
        )],
    );
    // The daemon writes the repository the server archives into: as the server's user.
    env.as_server_user.set(true);
    let conn = pg.pg.conn("postgres");
    let (token, entry) = new_token(&env);
    let cfg = config(
        &env,
        &format!(
            "{entry}\n[postgres_archive]\ndb = {conn:?}\nstall_after = \"1h\"\n\
             check_every = \"1s\"\n\n[[job]]\nname = \"pg\"\npg_base = [{:?}]\n\
             kind = \"hourly\"\n",
            format!("{conn}=main")
        ),
    );
    let d = Daemon::start(&env, &cfg);
    let doc = openapi();

    // The job's base backup: a snapshot with a pg-base source named after the job's setting.
    let (status, accepted) = d.send("POST", "/api/snapshots", &token, r#"{"job":"pg"}"#);
    assert_eq!(status, 202, "{accepted}");
    let op = d.wait_op(&accepted, &token);
    assert_eq!(op["status"], "succeeded", "{op}\n{}", d.log());
    let id = op["result"]["id"]
        .as_str()
        .expect("snapshot id")
        .to_string();
    let show = env.json(&["show", &id]);
    assert!(
        show["sources"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["kind"] == "pg-base" && s["name"] == "main"),
        "{show}"
    );

    // The archive's newest segment once the server archived everything, and the base backup.
    pg.psql("CREATE TABLE early AS SELECT generate_series(1, 1000) AS n");
    let last = pg.psql("SELECT pg_walfile_name(pg_current_wal_lsn())");
    pg.archive_all();
    let p = wait_postgres(&d, &token, "the newest segment", |p| {
        p["newest_segment"]["name"].as_str() == Some(last.as_str())
            && p["server"]["last_archived_wal"].as_str() == Some(last.as_str())
    });
    check_response(&doc, "get", "/api/postgres", 200, &p);
    assert_eq!(p["monitored"], true, "{p}");
    let bases = p["base_backups"].as_array().unwrap();
    assert_eq!(bases.len(), 1, "{p}");
    assert_eq!(bases[0]["name"], "main");
    assert_eq!(bases[0]["snapshot"].as_str(), Some(id.as_str()));
    assert!(p["newest_segment"]["age_s"].as_i64().unwrap() < 120, "{p}");
    assert!(p["reasons"].as_array().unwrap().is_empty(), "{p}");
    let (status, health) = d.get("/health", Some(&token));
    assert_eq!(status, 200, "{health}");
    let text = metrics(&d, &token);
    assert!(metric(&text, "strata_pg_archive_newest_age_seconds") < 120.0);
    assert!(metric(&text, "strata_pg_base_backup_age_seconds{name=\"main\"}") < 600.0);
    assert!(metric(&text, "strata_pg_archive_archived_total") >= 1.0);
    assert_eq!(metric(&text, "strata_pg_archive_failed_total"), 0.0);
    assert_eq!(metric(&text, "strata_pg_archive_ok"), 1.0);

    // The page shows it.
    let profile = env.path("chromium-profile");
    let dom = rendered_dom(
        &browser,
        &profile,
        &format!("http://{}/#token={token}", d.addr),
    );
    assert!(dom.contains("data-loaded=\"yes\""), "{dom}");
    let section = dom
        .split("id=\"postgres\"")
        .nth(1)
        .unwrap_or_else(|| panic!("no PostgreSQL section:\n{dom}"));
    let section = section.split("</section>").next().unwrap();
    assert!(!section.starts_with(" hidden"), "{section}");
    for want in ["PostgreSQL", last.as_str(), "class=\"pg-base\"", &id[..8]] {
        assert!(
            section.contains(want),
            "{want} is not in the section:\n{section}"
        );
    }

    // Archiving fails: /health is degraded and names the segment that failed.
    std::fs::write(&broken, b"").unwrap();
    pg.psql("CREATE TABLE filler AS SELECT generate_series(1, 10000) AS n");
    let failing = pg.psql("SELECT pg_walfile_name(pg_current_wal_lsn())");
    pg.psql("SELECT pg_switch_wal()");
    let until = Instant::now() + Duration::from_secs(120);
    let reasons = loop {
        let (status, h) = d.get("/health", Some(&token));
        if status == 503 {
            break h["reasons"].clone();
        }
        assert!(Instant::now() < until, "never degraded: {h}\n{}", d.log());
        std::thread::sleep(Duration::from_millis(200));
    };
    check_response(
        &doc,
        "get",
        "/health",
        503,
        &serde_json::json!({"status": "degraded", "reasons": reasons}),
    );
    let reason = reasons
        .as_array()
        .unwrap()
        .iter()
        .find_map(|r| r.as_str().filter(|r| r.contains("failing")));
    let reason = reason.unwrap_or_else(|| panic!("no archiver failure among {reasons}"));
    assert!(
        reason.contains(&failing),
        "{reason} does not name {failing}"
    );
    let p = wait_postgres(&d, &token, "the failure", |p| {
        p["server"]["failed_count"].as_u64() > Some(0)
    });
    check_response(&doc, "get", "/api/postgres", 200, &p);
    assert!(metric(&metrics(&d, &token), "strata_pg_archive_failed_total") >= 1.0);
    assert_eq!(metric(&metrics(&d, &token), "strata_pg_archive_ok"), 0.0);

    // It recovers: the segment is archived, and /health is ok again.
    std::fs::remove_file(&broken).unwrap();
    pg.psql("SELECT pg_reload_conf()");
    let p = wait_postgres(&d, &token, "the segment archived after the failure", |p| {
        p["newest_segment"]["name"].as_str() >= Some(failing.as_str())
            && p["reasons"].as_array().is_some_and(|r| r.is_empty())
    });
    assert_eq!(
        p["server"]["last_archived_wal"].as_str(),
        Some(failing.as_str()),
        "{p}"
    );
    let (status, health) = d.get("/health", Some(&token));
    assert_eq!(status, 200, "{health}");
}

//! HTTP/1.1 on the wire for `strata serve`: one request per connection, read within limits.
//!
//! Every connection has its own thread, up to [`Limits::connections`] at once (more are answered
//! 503 at once); at most [`Limits::handlers`] requests are answered at a time. The request line
//! and headers may take [`Limits::header_bytes`] bytes and [`Limits::headers`] fields (else 431)
//! and must arrive within [`Limits::header_time`] (else 408): a client cannot make the daemon
//! hold more than a few kilobytes, or a thread for long, before it has sent a whole request.
//! Bodies are `Content-Length` only (`Transfer-Encoding` is answered 501), at most
//! [`Limits::body_bytes`] (413), read within [`Limits::body_time`]. Every answer closes the
//! connection.

use serde::Serialize;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// The request line and all headers, with their line ends.
    pub header_bytes: usize,
    /// Header fields.
    pub headers: usize,
    /// From the connection's start until its headers are complete.
    pub header_time: Duration,
    pub body_bytes: usize,
    /// From the end of the headers until the body is complete.
    pub body_time: Duration,
    /// Connections open at once.
    pub connections: usize,
    /// Requests answered at once.
    pub handlers: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            header_bytes: 16 << 10,
            headers: 64,
            header_time: Duration::from_secs(10),
            body_bytes: 64 << 10,
            body_time: Duration::from_secs(30),
            connections: 64,
            handlers: 4,
        }
    }
}

/// How long one read waits before the deadlines and the stop flag are looked at again.
const POLL: Duration = Duration::from_millis(250);
/// How long writing an answer may take.
const WRITE_TIME: Duration = Duration::from_secs(10);
/// After an answer sent before the whole request was read, what is still coming is read and
/// dropped for this long (or this much), so closing does not reset the connection before the
/// client has read the answer.
const LINGER_TIME: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 16 << 20;

/// A request as read from the connection.
pub struct Request {
    pub method: String,
    /// As sent: path and query.
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub remote: SocketAddr,
}

impl Request {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

impl Response {
    pub fn json<T: Serialize>(status: u16, v: &T) -> Response {
        Response {
            status,
            body: serde_json::to_vec_pretty(v).unwrap_or_default(),
            content_type: "application/json",
        }
    }

    /// `{"error": msg}`.
    pub fn error(status: u16, msg: impl Into<String>) -> Response {
        #[derive(Serialize)]
        struct E {
            error: String,
        }
        Response::json(status, &E { error: msg.into() })
    }
}

type Handler = dyn Fn(&Request) -> Response + Send + Sync;

/// What every connection thread shares.
struct Shared {
    limits: Limits,
    /// Headers sent with every answer.
    always: &'static [(&'static str, &'static str)],
    handler: Box<Handler>,
    stop: AtomicBool,
    open: AtomicUsize,
    /// Requests being answered now, at most `limits.handlers`.
    busy: (Mutex<usize>, Condvar),
}

pub struct Server {
    shared: Arc<Shared>,
    accept: std::thread::JoinHandle<()>,
}

impl Server {
    /// Answers connections to `listener` with `handler` until [`Server::stop`].
    pub fn start(
        listener: TcpListener,
        limits: Limits,
        always: &'static [(&'static str, &'static str)],
        handler: impl Fn(&Request) -> Response + Send + Sync + 'static,
    ) -> std::io::Result<Server> {
        listener.set_nonblocking(true)?;
        let shared = Arc::new(Shared {
            limits,
            always,
            handler: Box::new(handler),
            stop: AtomicBool::new(false),
            open: AtomicUsize::new(0),
            busy: (Mutex::new(0), Condvar::new()),
        });
        let s = shared.clone();
        let accept = std::thread::Builder::new()
            .name("http-accept".into())
            .spawn(move || accept_loop(&listener, &s))?;
        Ok(Server { shared, accept })
    }

    /// Stops accepting, lets the requests being answered finish (up to ten seconds), and
    /// closes the connections still waiting for their requests.
    pub fn stop(self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        let _ = self.accept.join();
        let until = Instant::now() + Duration::from_secs(10);
        while self.shared.open.load(Ordering::SeqCst) > 0 && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Counts an open connection for as long as it lives.
struct Open(Arc<Shared>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    while !shared.stop.load(Ordering::SeqCst) {
        let mut pfd = libc::pollfd {
            fd: listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: pfd is one valid pollfd for the duration of the call.
        let ready = unsafe { libc::poll(&mut pfd, 1, POLL.as_millis() as libc::c_int) };
        if ready <= 0 {
            continue;
        }
        let (stream, remote) = match listener.accept() {
            Ok(c) => c,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {
                continue;
            }
            Err(e) => {
                // Out of file descriptors, most likely: give the open connections time to end.
                tracing::warn!(error = %e, "accepting a connection");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        if shared.open.load(Ordering::SeqCst) >= shared.limits.connections {
            tracing::warn!(remote = %remote, "refused: too many connections");
            let mut stream = stream;
            let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
            let busy = Response::error(503, "too many connections; try again shortly");
            let _ = write_response(&mut stream, &busy, shared.always);
            continue;
        }
        shared.open.fetch_add(1, Ordering::SeqCst);
        let open = Open(shared.clone());
        let spawned = std::thread::Builder::new()
            .name("http-conn".into())
            .spawn(move || connection(stream, remote, &open.0));
        if let Err(e) = spawned {
            // The closure (and with it the count) was dropped.
            tracing::warn!(error = %e, "starting a connection thread");
        }
    }
}

/// Why no request came out of a connection.
enum Refusal {
    /// Answer this, then close.
    Answer(Response),
    /// Close without an answer: the peer went away or the server is stopping.
    Close,
}

fn connection(mut stream: TcpStream, remote: SocketAddr, shared: &Shared) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_nodelay(true);
    let _ = stream.set_write_timeout(Some(WRITE_TIME));
    let (response, whole) = match read_request(&mut stream, remote, shared) {
        Ok(req) => {
            let _turn = Turn::take(shared);
            ((shared.handler)(&req), true)
        }
        Err(Refusal::Answer(r)) => {
            tracing::debug!(remote = %remote, status = r.status, "request refused");
            (r, false)
        }
        Err(Refusal::Close) => return,
    };
    if write_response(&mut stream, &response, shared.always).is_err() {
        return;
    }
    let _ = stream.shutdown(Shutdown::Write);
    if !whole {
        linger(&mut stream);
    }
}

/// One of the `limits.handlers` turns to answer a request, held while answering.
struct Turn<'a>(&'a Shared);

impl<'a> Turn<'a> {
    fn take(shared: &'a Shared) -> Turn<'a> {
        let (lock, cv) = &shared.busy;
        let mut busy = lock.lock().unwrap_or_else(|e| e.into_inner());
        while *busy >= shared.limits.handlers.max(1) {
            busy = cv.wait(busy).unwrap_or_else(|e| e.into_inner());
        }
        *busy += 1;
        Turn(shared)
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        let (lock, cv) = &self.0.busy;
        let mut busy = lock.lock().unwrap_or_else(|e| e.into_inner());
        *busy = busy.saturating_sub(1);
        cv.notify_one();
    }
}

/// Reads what is still coming and drops it, within bounds.
fn linger(stream: &mut TcpStream) {
    let until = Instant::now() + LINGER_TIME;
    let mut drained = 0;
    let mut chunk = [0u8; 8192];
    let _ = stream.set_read_timeout(Some(POLL));
    while Instant::now() < until && drained < LINGER_BYTES {
        match stream.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => drained += n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// Reads into `buf` once: some bytes, or a refusal when `deadline` passes (answered with
/// `late`), the server stops, or the peer goes away.
fn read_some(
    stream: &mut TcpStream,
    buf: &mut [u8],
    deadline: Instant,
    stop: &AtomicBool,
    late: &str,
) -> Result<usize, Refusal> {
    loop {
        if stop.load(Ordering::SeqCst) {
            return Err(Refusal::Close);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Refusal::Answer(Response::error(408, late)));
        }
        let _ = stream.set_read_timeout(Some(left.min(POLL)));
        match stream.read(buf) {
            Ok(0) => return Err(Refusal::Close),
            Ok(n) => return Ok(n),
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) => {}
            Err(_) => return Err(Refusal::Close),
        }
    }
}

fn read_request(
    stream: &mut TcpStream,
    remote: SocketAddr,
    shared: &Shared,
) -> Result<Request, Refusal> {
    let limits = &shared.limits;
    let deadline = Instant::now() + limits.header_time;
    let late = format!(
        "the request headers did not arrive within {} s",
        limits.header_time.as_secs()
    );
    let mut buf = Vec::with_capacity(2048);
    let mut chunk = [0u8; 4096];
    let (head, used) = loop {
        match parse_head(&buf, limits) {
            Parsed::Complete(head, used) => break (head, used),
            Parsed::Refused(status, msg) => {
                return Err(Refusal::Answer(Response::error(status, msg)));
            }
            Parsed::Partial => {}
        }
        // parse_head refuses a partial head of header_bytes, so there is room for one more.
        let room = (limits.header_bytes - buf.len()).min(chunk.len());
        let n = read_some(stream, &mut chunk[..room], deadline, &shared.stop, &late)?;
        buf.extend_from_slice(&chunk[..n]);
    };
    let refuse = |status, msg: String| Err(Refusal::Answer(Response::error(status, msg)));
    let header = |name: &'static str| fields(&head.headers, name);
    if header("Transfer-Encoding").next().is_some() {
        return refuse(
            501,
            "Transfer-Encoding is not supported; send the body with a Content-Length".into(),
        );
    }
    let mut length: Option<u64> = None;
    for (_, v) in header("Content-Length") {
        match v.trim().parse::<u64>() {
            Ok(n) if length.is_none_or(|l| l == n) => length = Some(n),
            _ => return refuse(400, format!("bad Content-Length {v:?}")),
        }
    }
    let length = length.unwrap_or(0);
    if length > limits.body_bytes as u64 {
        return refuse(
            413,
            format!("request body over {} bytes", limits.body_bytes),
        );
    }
    let length = length as usize;
    let mut body = buf[used..].to_vec();
    body.truncate(length);
    if body.len() < length
        && header("Expect")
            .next()
            .is_some_and(|(_, v)| v.trim().eq_ignore_ascii_case("100-continue"))
    {
        let _ = stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n");
    }
    let deadline = Instant::now() + limits.body_time;
    let late = format!(
        "the request body did not arrive within {} s",
        limits.body_time.as_secs()
    );
    while body.len() < length {
        let room = (length - body.len()).min(chunk.len());
        let n = read_some(stream, &mut chunk[..room], deadline, &shared.stop, &late)?;
        body.extend_from_slice(&chunk[..n]);
    }
    Ok(Request {
        method: head.method,
        target: head.target,
        headers: head.headers,
        body,
        remote,
    })
}

/// The header fields named `name` (case-insensitive).
fn fields<'a>(
    headers: &'a [(String, String)],
    name: &'a str,
) -> impl Iterator<Item = &'a (String, String)> {
    headers
        .iter()
        .filter(move |(k, _)| k.eq_ignore_ascii_case(name))
}

/// A request line and its headers.
#[derive(Debug)]
struct Head {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
}

#[derive(Debug)]
enum Parsed {
    /// More bytes are needed.
    Partial,
    /// The head, and how many bytes of the buffer it took.
    Complete(Head, usize),
    /// Answer with this status and message, then close.
    Refused(u16, String),
}

/// What the bytes read so far from a connection hold.
fn parse_head(buf: &[u8], limits: &Limits) -> Parsed {
    let mut fields = vec![httparse::EMPTY_HEADER; limits.headers];
    let mut req = httparse::Request::new(&mut fields);
    let too_large = || {
        Parsed::Refused(
            431,
            format!(
                "request headers over {} bytes or {} fields",
                limits.header_bytes, limits.headers
            ),
        )
    };
    match req.parse(buf) {
        Ok(httparse::Status::Complete(used)) if used > limits.header_bytes => too_large(),
        Ok(httparse::Status::Complete(used)) => {
            let head = Head {
                method: req.method.unwrap_or_default().to_string(),
                target: req.path.unwrap_or_default().to_string(),
                headers: req
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_string(),
                            String::from_utf8_lossy(h.value).into_owned(),
                        )
                    })
                    .collect(),
            };
            Parsed::Complete(head, used)
        }
        Ok(httparse::Status::Partial) if buf.len() >= limits.header_bytes => too_large(),
        Ok(httparse::Status::Partial) => Parsed::Partial,
        Err(httparse::Error::TooManyHeaders) => too_large(),
        Err(e) => Parsed::Refused(400, format!("malformed request: {e}")),
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        202 => "Accepted",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        421 => "Misdirected Request",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "",
    }
}

fn write_response(
    stream: &mut TcpStream,
    r: &Response,
    always: &[(&str, &str)],
) -> std::io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
        r.status,
        reason(r.status),
        r.content_type,
        r.body.len()
    );
    for (k, v) in always {
        head.push_str(k);
        head.push_str(": ");
        head.push_str(v);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(&r.body);
    stream.write_all(&out)?;
    stream.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            header_bytes: 1024,
            headers: 8,
            ..Limits::default()
        }
    }

    #[test]
    fn a_complete_head_is_parsed_and_its_length_given() {
        let raw = b"POST /api/verify?x=1 HTTP/1.1\r\nHost: 127.0.0.1:7433\r\nContent-Type: \
                    application/json\r\nContent-Length: 2\r\n\r\n{}";
        let Parsed::Complete(head, used) = parse_head(raw, &limits()) else {
            panic!("not complete");
        };
        assert_eq!(head.method, "POST");
        assert_eq!(head.target, "/api/verify?x=1");
        assert_eq!(head.headers.len(), 3);
        assert_eq!(head.headers[1].0, "Content-Type");
        assert_eq!(used, raw.len() - 2);
    }

    #[test]
    fn a_partial_head_waits_until_it_reaches_the_byte_limit() {
        let l = limits();
        assert!(matches!(
            parse_head(b"GET / HTTP/1.1\r\nHost: x\r\n", &l),
            Parsed::Partial
        ));
        assert!(matches!(parse_head(b"", &l), Parsed::Partial));
        let mut long = b"GET / HTTP/1.1\r\nX-Fill: ".to_vec();
        long.resize(l.header_bytes, b'a');
        assert!(matches!(parse_head(&long, &l), Parsed::Refused(431, _)));
        // Complete, but longer than the limit (the buffer never holds more, but the rule is
        // the same).
        long.extend_from_slice(b"\r\n\r\n");
        assert!(matches!(parse_head(&long, &l), Parsed::Refused(431, _)));
    }

    #[test]
    fn too_many_fields_are_refused_before_the_head_ends() {
        let l = limits();
        let mut raw = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..l.headers + 1 {
            raw.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        assert!(matches!(parse_head(&raw, &l), Parsed::Refused(431, _)));
        raw.extend_from_slice(b"\r\n");
        assert!(matches!(parse_head(&raw, &l), Parsed::Refused(431, _)));
        let mut ok = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..l.headers {
            ok.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        ok.extend_from_slice(b"\r\n");
        assert!(matches!(parse_head(&ok, &l), Parsed::Complete(..)));
    }

    #[test]
    fn malformed_requests_are_refused() {
        for raw in [
            &b"GET / HTTP/1.1\r\nBad Header\r\n\r\n"[..],
            b"GET / HTTP/9.9\r\n\r\n",
            b"\x00\x01\x02 / HTTP/1.1\r\n\r\n",
        ] {
            assert!(
                matches!(parse_head(raw, &limits()), Parsed::Refused(400, _)),
                "{raw:?}"
            );
        }
    }
}

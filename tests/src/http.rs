//! The suites' one HTTP/1 client: raw HTTP/1.1 over any byte stream (TCP, or TLS from
//! [`crate::tls::connect`]) that reads each response per its framing (Content-Length, chunked
//! with trailers, or up to the close) and keeps whatever came after it for the next one, so
//! keep-alive connections, pipelining and exact wire bytes can all be asserted. A
//! [`RawResponse`] is what came on the wire; an [`HttpResponse`] is a whole response with its
//! headers parsed, for assertions on status, headers and body.
//!
//! Every socket here has a read and write timeout of [`IO_TIMEOUT`]: nothing waits on a sleep
//! for readiness, and "the connection closed" means a read returned end of file (or a reset)
//! before that timeout.

use std::{
    io::{ErrorKind, Read, Write},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

/// How long any socket in these tests waits for a byte before the test gives up.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Where `needle` first occurs in `haystack` (raw HTTP bytes).
pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The value of header `name` (case-insensitive) in a raw response or request head.
pub fn header_value<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim().eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

/// A decoded chunked body.
#[derive(Debug)]
pub struct Dechunked {
    pub body: Vec<u8>,
    /// The trailer section as sent (header lines and the final empty line).
    pub trailers: String,
    /// Bytes of `data` the chunked body took.
    pub used: usize,
}

/// Decodes a whole chunked body from the front of `data`; `None` while it is incomplete (or
/// when it is malformed: the caller then reads until the connection ends).
pub fn dechunk(data: &[u8]) -> Option<Dechunked> {
    let mut pos = 0;
    let mut body = Vec::new();
    loop {
        let line_end = pos + find(&data[pos..], b"\r\n")?;
        let line = std::str::from_utf8(&data[pos..line_end]).ok()?;
        let size = usize::from_str_radix(line.split(';').next()?.trim(), 16).ok()?;
        pos = line_end + 2;
        if size == 0 {
            let end = if data[pos..].starts_with(b"\r\n") {
                pos + 2
            } else {
                pos + find(&data[pos..], b"\r\n\r\n")? + 4
            };
            let trailers = String::from_utf8_lossy(&data[pos..end]).into_owned();
            return Some(Dechunked { body, trailers, used: end });
        }
        if data.len() < pos + size + 2 || &data[pos + size..pos + size + 2] != b"\r\n" {
            return None;
        }
        body.extend_from_slice(&data[pos..pos + size]);
        pos += size + 2;
    }
}

/// `len` bytes of a pattern that a shifted or truncated copy would not match.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u64).wrapping_mul(31).wrapping_add(seed as u64) as u8 % 251).collect()
}

// ---------------------------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------------------------

/// How a response read ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// The whole response per its framing.
    Complete,
    /// The proxy closed (or reset) the connection first.
    Closed,
    /// Nothing more came within the read timeout.
    TimedOut,
}

#[derive(Debug)]
pub struct RawResponse {
    /// 0: the connection ended before a whole head.
    pub status: u16,
    pub head: String,
    /// The body, decoded when chunked (when the response was cut: whatever came of it).
    pub body: Vec<u8>,
    /// The body's bytes as they came on the wire (with the chunked framing).
    pub raw_body: Vec<u8>,
    /// The trailer section of a chunked body (empty otherwise).
    pub trailers: String,
    pub ended: Ended,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        header_value(&self.head, name)
    }
}

/// A whole response with its headers parsed: what most assertions need.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    /// Names in lower case, values trimmed, in the order received.
    pub headers: Vec<(String, String)>,
    /// The body (decoded when chunked), as text.
    pub body: String,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

impl TryFrom<RawResponse> for HttpResponse {
    type Error = anyhow::Error;

    /// Fails when the response did not come whole (no head, or the body cut short).
    fn try_from(raw: RawResponse) -> anyhow::Result<HttpResponse> {
        anyhow::ensure!(
            raw.status != 0,
            "the connection ended ({:?}) before a whole response head: {:?}",
            raw.ended,
            raw.head
        );
        anyhow::ensure!(
            raw.ended == Ended::Complete,
            "the response was cut ({:?}) after {} bytes of its body: {:?}",
            raw.ended,
            raw.raw_body.len(),
            raw.head
        );
        let headers = raw
            .head
            .lines()
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        Ok(HttpResponse {
            status: raw.status,
            headers,
            body: String::from_utf8_lossy(&raw.body).into_owned(),
        })
    }
}

/// The text of a request without a body: `headers` in order, `Content-Length: 0` for the
/// methods that expect a body, `Connection: close` when `close`.
pub fn request_text(method: &str, host: &str, path: &str, headers: &[(&str, &str)], close: bool) -> String {
    let mut text = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\n");
    for (name, value) in headers {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    if matches!(method, "POST" | "PUT" | "PATCH") {
        text.push_str("Content-Length: 0\r\n");
    }
    if close {
        text.push_str("Connection: close\r\n");
    }
    text.push_str("\r\n");
    text
}

/// One request on a new connection (`Connection: close`).
pub fn request(
    addr: SocketAddr,
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<HttpResponse> {
    let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
        .map_err(|e| anyhow::anyhow!("connect to {addr}: {e}"))?;
    Client::over_tcp(stream)?.request(method, host, path, headers, true)
}

/// `GET path` with `Host: test` on a new connection.
pub fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<HttpResponse> {
    request(addr, "GET", "test", path, &[])
}

/// An `Authorization` value for HTTP basic auth.
pub fn basic_credentials(user: &str, password: &str) -> String {
    format!("Basic {}", crate::fake_kube::objects::base64(format!("{user}:{password}").as_bytes()))
}

/// A client connection, keeping whatever it read past a response.
pub struct Client<S = TcpStream> {
    pub stream: S,
    pub buf: Vec<u8>,
    /// The error of the read that ended the connection, if one did (a TLS alert, a reset).
    pub error: Option<std::io::Error>,
}

impl Client<TcpStream> {
    /// Connects to `addr` (failing the test when it cannot).
    pub fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
            .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
        Client::over_tcp(stream).unwrap()
    }

    /// A client on a connected socket (bound where the test chose), with the read and write
    /// timeouts of [`IO_TIMEOUT`] and no Nagle delay.
    pub fn over_tcp(stream: TcpStream) -> std::io::Result<Client> {
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        stream.set_nodelay(true)?;
        Ok(Client::new(stream))
    }
}

impl<S: Read + Write> Client<S> {
    /// A client on a stream whose timeouts the caller set (a TLS stream, say).
    pub fn new(stream: S) -> Client<S> {
        Client { stream, buf: Vec::new(), error: None }
    }

    /// Sends a request made by [`request_text`] and reads its response whole.
    pub fn request(
        &mut self,
        method: &str,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
        close: bool,
    ) -> anyhow::Result<HttpResponse> {
        let text = request_text(method, host, path, headers, close);
        if let Err(e) = self.stream.write_all(text.as_bytes()).and_then(|()| self.stream.flush()) {
            // The server may have sent an alert and closed before the request went out (TLS 1.3
            // checks client certificates after the client's side of the handshake): the alert,
            // if there is one, says more than the broken pipe.
            let _alert = self.stream.read(&mut [0u8; 1])?;
            anyhow::bail!("{method} {host}{path}: cannot send: {e}");
        }
        let raw = self.read_response(method == "HEAD");
        if raw.ended != Ended::Complete
            && let Some(error) = self.error.take()
        {
            // The read's own error (say, the alert that ended a TLS connection) says why.
            return Err(anyhow::Error::new(error).context(format!("{method} {host}{path}")));
        }
        HttpResponse::try_from(raw).map_err(|e| e.context(format!("{method} {host}{path}")))
    }

    /// `GET host/path` on this keep-alive connection, failing the test when no whole
    /// response comes.
    pub fn get(&mut self, host: &str, path: &str) -> HttpResponse {
        self.request("GET", host, path, &[], false).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Writes `bytes` in one write.
    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("the request reaches the proxy");
    }

    /// Reads more into the buffer; how the connection ended if nothing came.
    pub fn fill(&mut self) -> Result<(), Ended> {
        let mut chunk = [0u8; 16 * 1024];
        match self.stream.read(&mut chunk) {
            Ok(0) => Err(Ended::Closed),
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(())
            }
            Err(e) => {
                let ended = match e.kind() {
                    ErrorKind::WouldBlock | ErrorKind::TimedOut => Ended::TimedOut,
                    _ => Ended::Closed,
                };
                self.error = Some(e);
                Err(ended)
            }
        }
    }

    /// Reads one response; `head_request` when it answers a HEAD (no body whatever the head
    /// says).
    pub fn read_response(&mut self, head_request: bool) -> RawResponse {
        let head_end = loop {
            if let Some(pos) = find(&self.buf, b"\r\n\r\n") {
                break pos + 4;
            }
            if let Err(ended) = self.fill() {
                let head = String::from_utf8_lossy(&self.buf).into_owned();
                return RawResponse {
                    status: 0,
                    head,
                    body: Vec::new(),
                    raw_body: Vec::new(),
                    trailers: String::new(),
                    ended,
                };
            }
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
        self.buf.drain(..head_end);
        let status: u16 = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let mut response = RawResponse {
            status,
            head,
            body: Vec::new(),
            raw_body: Vec::new(),
            trailers: String::new(),
            ended: Ended::Complete,
        };
        if head_request || matches!(status, 100..=199 | 204 | 304) {
            return response;
        }
        let chunked = response.header("transfer-encoding").is_some_and(|v| v.contains("chunked"));
        let length: Option<usize> = response.header("content-length").and_then(|v| v.parse().ok());
        if chunked {
            loop {
                if let Some(decoded) = dechunk(&self.buf) {
                    response.raw_body = self.buf.drain(..decoded.used).collect();
                    response.body = decoded.body;
                    response.trailers = decoded.trailers;
                    return response;
                }
                if let Err(ended) = self.fill() {
                    response.body = std::mem::take(&mut self.buf);
                    response.raw_body = response.body.clone();
                    response.ended = ended;
                    return response;
                }
            }
        } else if let Some(length) = length {
            while self.buf.len() < length {
                if let Err(ended) = self.fill() {
                    response.body = std::mem::take(&mut self.buf);
                    response.raw_body = response.body.clone();
                    response.ended = ended;
                    return response;
                }
            }
            response.body = self.buf.drain(..length).collect();
            response.raw_body = response.body.clone();
            response
        } else {
            // Delimited by the close.
            let ended = loop {
                if let Err(ended) = self.fill() {
                    break ended;
                }
            };
            response.body = std::mem::take(&mut self.buf);
            response.raw_body = response.body.clone();
            if ended == Ended::TimedOut {
                response.ended = ended;
            }
            response
        }
    }

    /// `GET path` (HTTP/1.1, `Host: t`) on this keep-alive connection, as it came on the wire.
    pub fn get_raw(&mut self, path: &str) -> RawResponse {
        self.send(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
        self.read_response(false)
    }

    /// Exactly `n` bytes after what was read so far.
    pub fn read_exact_bytes(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            if let Err(ended) = self.fill() {
                panic!("connection {ended:?} after {:?} of {n} bytes", String::from_utf8_lossy(&self.buf));
            }
        }
        self.buf.drain(..n).collect()
    }

    /// Asserts that the proxy closes the connection (end of file or a reset, before the read
    /// timeout) without sending anything more.
    pub fn assert_closed(&mut self, what: &str) {
        let ended = loop {
            if let Err(ended) = self.fill() {
                break ended;
            }
        };
        assert_eq!(ended, Ended::Closed, "{what}: the proxy closes the connection");
        assert!(
            self.buf.is_empty(),
            "{what}: nothing after the response but the close: {:?}",
            String::from_utf8_lossy(&self.buf)
        );
    }
}

/// A `200` whose body is `body`, read whole per its framing.
pub fn assert_ok(response: &RawResponse, body: &[u8], what: &str) {
    assert_eq!(response.status, 200, "{what}: {response:?}");
    assert_eq!(response.ended, Ended::Complete, "{what}: {response:?}");
    assert!(
        response.body == body,
        "{what}: body of {} bytes {:?} differs from the {} bytes {:?}",
        response.body.len(),
        preview(&response.body),
        body.len(),
        preview(body)
    );
}

/// `bytes` as text for a failure message, cut after the first 1000 bytes.
fn preview(bytes: &[u8]) -> String {
    const MAX: usize = 1000;
    let mut text = String::from_utf8_lossy(&bytes[..bytes.len().min(MAX)]).into_owned();
    if bytes.len() > MAX {
        text.push_str("...");
    }
    text
}

//! A raw HTTP/1.1 client over `std::net::TcpStream`, and parsers of what it reads: every
//! byte the tests send is exactly what they wrote.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};

use super::*;

/// A parsed HTTP response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// `HTTP/1.1`, say.
    pub version: String,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The first header of that name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// True when the response says the connection closes after it.
    pub fn says_close(&self) -> bool {
        self.header("connection")
            .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")))
    }
}

/// Position of the first `\r\n\r\n` in `buf`.
pub(super) fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n")
}

/// Parses a response head (without the final blank line) into a response without its body.
fn parse_head(head: &[u8]) -> Result<Response, String> {
    let text = std::str::from_utf8(head).map_err(|e| format!("head not UTF-8: {e}"))?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or("").to_string();
    if !version.starts_with("HTTP/1.") {
        return Err(format!("bad status line {status_line:?}"));
    }
    let status = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let mut headers = Vec::new();
    for line in lines {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| format!("bad header line {line:?}"))?;
        headers.push((name.trim().to_string(), value.trim().to_string()));
    }
    Ok(Response {
        version,
        status,
        headers,
        body: Vec::new(),
    })
}

/// How reading stopped without a complete response.
#[derive(Debug)]
pub enum ReadEnd {
    /// The peer closed (EOF) or reset the connection; holds the bytes read before.
    Closed(Vec<u8>),
    /// Nothing happened before the read timeout.
    TimedOut(Vec<u8>),
    /// The bytes did not form a response.
    Garbled(String),
}

/// One client connection, speaking raw HTTP/1.1 bytes.
pub struct Client {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        Client::from_stream(stream)
    }

    /// Wraps an already connected stream.
    pub fn from_stream(stream: TcpStream) -> Client {
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        stream.set_write_timeout(Some(DEADLINE)).unwrap();
        stream.set_nodelay(true).unwrap();
        Client {
            stream,
            buf: Vec::new(),
        }
    }

    /// Writes raw bytes; panics on failure.
    pub fn send(&mut self, bytes: &[u8]) {
        self.stream
            .write_all(bytes)
            .unwrap_or_else(|e| panic!("write: {e}"));
    }

    /// Writes `GET <target> HTTP/1.1` with a `Host` header and reads the answer.
    pub fn get(&mut self, target: &str) -> Response {
        self.send(get_request(target).as_bytes());
        self.response()
    }

    /// Reads one response; panics if there is none.
    pub fn response(&mut self) -> Response {
        self.try_response()
            .unwrap_or_else(|e| panic!("no response: {e:?}"))
    }

    /// Reads one response (the body by its `Content-Length`).
    pub fn try_response(&mut self) -> Result<Response, ReadEnd> {
        let end = loop {
            if let Some(end) = head_end(&self.buf) {
                break end;
            }
            self.fill()?;
        };
        let mut response = parse_head(&self.buf[..end]).map_err(ReadEnd::Garbled)?;
        let len: usize = response
            .header("content-length")
            .ok_or_else(|| ReadEnd::Garbled("response without Content-Length".into()))?
            .parse()
            .map_err(|e| ReadEnd::Garbled(format!("Content-Length: {e}")))?;
        let total = end + 4 + len;
        while self.buf.len() < total {
            self.fill()?;
        }
        response.body = self.buf[end + 4..total].to_vec();
        self.buf.drain(..total);
        Ok(response)
    }

    /// Reads more bytes into the buffer.
    fn fill(&mut self) -> Result<(), ReadEnd> {
        let mut chunk = [0u8; 16 * 1024];
        match self.stream.read(&mut chunk) {
            Ok(0) => Err(ReadEnd::Closed(std::mem::take(&mut self.buf))),
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(())
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                Err(ReadEnd::TimedOut(std::mem::take(&mut self.buf)))
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => Ok(()),
            // Reset or aborted: the server closed with unread input, which is a close.
            Err(_) => Err(ReadEnd::Closed(std::mem::take(&mut self.buf))),
        }
    }

    /// Reads until the server closes the connection and returns every byte received
    /// (unread buffered bytes included). Panics if it is still open after [`DEADLINE`].
    pub fn read_until_closed(&mut self) -> Vec<u8> {
        loop {
            match self.fill() {
                Ok(()) => {}
                Err(ReadEnd::Closed(bytes)) => return bytes,
                Err(ReadEnd::TimedOut(bytes)) => panic!(
                    "connection still open after {DEADLINE:?}; received {:?}",
                    String::from_utf8_lossy(&bytes)
                ),
                Err(ReadEnd::Garbled(e)) => unreachable!("{e}"),
            }
        }
    }

    /// Panics unless the server closes the connection without sending anything more.
    pub fn expect_closed(&mut self) {
        let rest = self.read_until_closed();
        assert!(
            rest.is_empty(),
            "expected the connection to close, got {:?}",
            String::from_utf8_lossy(&rest)
        );
    }
}

/// Reads until the server closes; what arrived before must be exactly one `failed` answer
/// with one of `statuses`, or nothing at all (the server just closed).
pub fn answered_or_closed(client: &mut Client, statuses: &[u16], what: &str) {
    let bytes = client.read_until_closed();
    if bytes.is_empty() {
        return;
    }
    let responses = parse_responses(&bytes);
    assert_eq!(
        responses.len(),
        1,
        "{what}: expected one answer, got {:?}",
        String::from_utf8_lossy(&bytes)
    );
    let r = &responses[0];
    assert!(statuses.contains(&r.status), "{what}: status {}", r.status);
    assert_eq!(r.text(), "failed", "{what}");
}

/// Sends `request` on a new connection: it must be answered exactly `status` `failed`, saying
/// so, and then the connection must close with nothing more.
pub fn answered_then_closed(server: &Server, request: &[u8], status: u16, what: &str) {
    let mut client = server.client();
    client.send(request);
    let r = client
        .try_response()
        .unwrap_or_else(|e| panic!("{what}: no answer: {e:?}"));
    assert_eq!((r.status, r.text().as_str()), (status, "failed"), "{what}");
    assert!(r.says_close(), "{what}: a closing answer says so: {r:?}");
    client.expect_closed();
}

/// Writes `data` on a thread, ignoring errors: the server may refuse and close long before
/// it is all sent, and the test must read the answer meanwhile.
pub fn write_in_background(client: &Client, data: Vec<u8>) -> std::thread::JoinHandle<()> {
    let mut stream = client.stream.try_clone().unwrap();
    std::thread::spawn(move || {
        let _ = stream.write_all(&data);
    })
}

/// A minimal `GET` request.
pub fn get_request(target: &str) -> String {
    format!("GET {target} HTTP/1.1\r\nHost: verve.test\r\n\r\n")
}

/// Parses every complete response in `bytes`.
pub fn parse_responses(mut bytes: &[u8]) -> Vec<Response> {
    let mut out = Vec::new();
    while let Some(end) = head_end(bytes) {
        let Ok(mut response) = parse_head(&bytes[..end]) else {
            break;
        };
        let len = response
            .header("content-length")
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(0);
        if bytes.len() < end + 4 + len {
            break;
        }
        response.body = bytes[end + 4..end + 4 + len].to_vec();
        out.push(response);
        bytes = &bytes[end + 4 + len..];
    }
    out
}

/// Percent-encodes everything but unreserved characters (for an `endpoint` value).
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

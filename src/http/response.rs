//! Responses, written straight into the connection's reusable output buffer: no allocation,
//! no formatting machinery, the `Date` header copied from the cache.

use super::date::DATE_LEN;

/// Every status verve answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    BadRequest,
    NotFound,
    MethodNotAllowed,
    PayloadTooLarge,
    HeaderFieldsTooLarge,
    InternalError,
    Unavailable,
}

impl Status {
    fn line(self) -> &'static [u8] {
        match self {
            Status::Ok => b"HTTP/1.1 200 OK\r\n",
            Status::BadRequest => b"HTTP/1.1 400 Bad Request\r\n",
            Status::NotFound => b"HTTP/1.1 404 Not Found\r\n",
            Status::MethodNotAllowed => b"HTTP/1.1 405 Method Not Allowed\r\nAllow: GET\r\n",
            Status::PayloadTooLarge => b"HTTP/1.1 413 Content Too Large\r\n",
            Status::HeaderFieldsTooLarge => b"HTTP/1.1 431 Request Header Fields Too Large\r\n",
            Status::InternalError => b"HTTP/1.1 500 Internal Server Error\r\n",
            Status::Unavailable => b"HTTP/1.1 503 Service Unavailable\r\n",
        }
    }

    pub fn code(self) -> u16 {
        match self {
            Status::Ok => 200,
            Status::BadRequest => 400,
            Status::NotFound => 404,
            Status::MethodNotAllowed => 405,
            Status::PayloadTooLarge => 413,
            Status::HeaderFieldsTooLarge => 431,
            Status::InternalError => 500,
            Status::Unavailable => 503,
        }
    }
}

/// What the response says about the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Persist {
    /// HTTP/1.1 default: nothing to say.
    Default,
    /// An HTTP/1.0 client asked for keep-alive.
    KeepAlive,
    /// The connection is closed after this response.
    Close,
}

pub const TEXT: &[u8] = b"text/plain";
pub const PROMETHEUS: &[u8] = b"text/plain; version=0.0.4; charset=utf-8";

/// The 200 `ok` answer up to the date: the hot path writes it in three copies.
const OK_HEAD: &[u8] =
    b"HTTP/1.1 200 OK\r\nServer: verve\r\nContent-Type: text/plain\r\nContent-Length: 2\r\nDate: ";

/// Appends the 200 `ok` answer.
#[inline]
pub fn ok(out: &mut Vec<u8>, date: &[u8; DATE_LEN], persist: Persist) {
    if persist != Persist::Default {
        return write(out, Status::Ok, TEXT, b"ok", date, persist);
    }
    out.extend_from_slice(OK_HEAD);
    out.extend_from_slice(date);
    out.extend_from_slice(b"\r\n\r\nok");
}

/// Appends any response.
pub fn write(
    out: &mut Vec<u8>,
    status: Status,
    content_type: &[u8],
    body: &[u8],
    date: &[u8; DATE_LEN],
    persist: Persist,
) {
    out.extend_from_slice(status.line());
    out.extend_from_slice(b"Server: verve\r\nContent-Type: ");
    out.extend_from_slice(content_type);
    out.extend_from_slice(b"\r\nContent-Length: ");
    out.extend_from_slice(itoa::Buffer::new().format(body.len()).as_bytes());
    out.extend_from_slice(b"\r\nDate: ");
    out.extend_from_slice(date);
    match persist {
        Persist::Default => {}
        Persist::KeepAlive => out.extend_from_slice(b"\r\nConnection: keep-alive"),
        Persist::Close => out.extend_from_slice(b"\r\nConnection: close"),
    }
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(body);
}

/// Appends the `failed` answer every error carries.
#[cold]
pub fn failed(out: &mut Vec<u8>, status: Status, date: &[u8; DATE_LEN], persist: Persist) {
    write(out, status, TEXT, b"failed", date, persist);
}

#[cfg(test)]
mod tests {
    use super::*;

    const DATE: &[u8; DATE_LEN] = b"Sun, 22 Nov 2026 01:19:18 GMT";

    #[test]
    fn ok_fast_path_equals_the_general_form() {
        let mut fast = Vec::new();
        ok(&mut fast, DATE, Persist::Default);
        let mut general = Vec::new();
        write(
            &mut general,
            Status::Ok,
            TEXT,
            b"ok",
            DATE,
            Persist::Default,
        );
        assert_eq!(fast, general);
        assert_eq!(
            String::from_utf8(fast).unwrap(),
            "HTTP/1.1 200 OK\r\nServer: verve\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\
             Date: Sun, 22 Nov 2026 01:19:18 GMT\r\n\r\nok"
        );
    }

    #[test]
    fn errors_say_failed_and_can_close() {
        let mut out = Vec::new();
        failed(&mut out, Status::MethodNotAllowed, DATE, Persist::Close);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 405 Method Not Allowed\r\nAllow: GET\r\n"));
        assert!(text.contains("Content-Length: 6\r\n"));
        assert!(text.ends_with("Connection: close\r\n\r\nfailed"));
    }
}

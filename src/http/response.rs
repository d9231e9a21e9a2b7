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
pub const JSON: &[u8] = b"application/json";
pub const HTML: &[u8] = b"text/html; charset=utf-8";

/// Extra headers of `/api/verve/windows`: a cache must not keep an old count.
pub const JSON_HEADERS: &[u8] = b"\r\nCache-Control: no-store";

/// Extra headers of the status page: never cached, and a browser runs nothing but the page's
/// own inline script and style, loads nothing from elsewhere, and shows it in no frame (the
/// page escapes what it shows from outside; this is the second line of defence).
pub const PAGE_HEADERS: &[u8] = b"\r\nCache-Control: no-store\
\r\nX-Content-Type-Options: nosniff\
\r\nReferrer-Policy: no-referrer\
\r\nContent-Security-Policy: default-src 'none'; script-src 'unsafe-inline'; \
style-src 'unsafe-inline'; img-src data:; connect-src 'self'; base-uri 'none'; \
form-action 'none'; frame-ancestors 'none'";

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
    write_with(out, status, content_type, b"", body, date, persist);
}

/// Appends any response with `extra` headers: each `\r\nName: value`, as in
/// [`PAGE_HEADERS`].
pub fn write_with(
    out: &mut Vec<u8>,
    status: Status,
    content_type: &[u8],
    extra: &[u8],
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
    out.extend_from_slice(extra);
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
    fn extra_headers_go_between_the_date_and_the_body() {
        let mut out = Vec::new();
        write_with(
            &mut out,
            Status::Ok,
            HTML,
            PAGE_HEADERS,
            b"<p>",
            DATE,
            Persist::Close,
        );
        let text = String::from_utf8(out).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert_eq!(body, "<p>");
        let lines: Vec<&str> = head.split("\r\n").collect();
        assert_eq!(lines[0], "HTTP/1.1 200 OK");
        assert!(lines.contains(&"Content-Type: text/html; charset=utf-8"));
        assert!(lines.contains(&"Cache-Control: no-store"));
        assert!(lines.contains(&"Connection: close"));
        assert!(lines
            .iter()
            .any(|l| l.starts_with("Content-Security-Policy: default-src 'none';")));
        assert!(lines
            .iter()
            .all(|l| l.contains(": ") || l.starts_with("HTTP/")));
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

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

/// An answer as routing decides it; [`encode`] writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply<'a> {
    /// 200, `text/plain`, `ok`: a counted id, a healthy `/healthz`.
    Ok,
    /// `status` with the `failed` body every error carries.
    Failed(Status),
    /// 200 with a page: its content type, `extra` headers (each `\r\nName: value`, as in
    /// [`PAGE_HEADERS`]) and body.
    Page {
        content_type: &'static [u8],
        extra: &'static [u8],
        body: &'a [u8],
    },
}

/// How an answer is framed, from its request: what it says about the connection, and
/// whether the request was `HEAD`, whose answer carries the headers of the `GET` answer,
/// `Content-Length` included, but never its body (RFC 9110, HEAD).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Framing {
    pub persist: Persist,
    pub head: bool,
}

impl Framing {
    /// An HTTP/1.1 answer to anything but `HEAD`, on a connection that stays open.
    pub const PLAIN: Framing = Framing {
        persist: Persist::Default,
        head: false,
    };
    /// The answer to a request that could not be read: the connection closes after it.
    pub const CLOSE: Framing = Framing {
        persist: Persist::Close,
        head: false,
    };
}

/// The 200 `ok` answer up to the date: the hot path writes it in three copies.
const OK_HEAD: &[u8] =
    b"HTTP/1.1 200 OK\r\nServer: verve\r\nContent-Type: text/plain\r\nContent-Length: 2\r\nDate: ";

/// Appends `reply`, framed as `framing` says, dated `date`.
#[inline]
pub fn encode(out: &mut Vec<u8>, reply: &Reply<'_>, framing: Framing, date: &[u8; DATE_LEN]) {
    match *reply {
        Reply::Ok if framing == Framing::PLAIN => {
            out.extend_from_slice(OK_HEAD);
            out.extend_from_slice(date);
            out.extend_from_slice(b"\r\n\r\nok");
        }
        Reply::Ok => write(out, &Message::text(Status::Ok, b"ok"), framing, date),
        Reply::Failed(status) => failed(out, status, framing, date),
        Reply::Page {
            content_type,
            extra,
            body,
        } => {
            let message = Message {
                status: Status::Ok,
                content_type,
                extra,
                body,
            };
            write(out, &message, framing, date);
        }
    }
}

/// The `failed` answer, off the hot path.
#[cold]
fn failed(out: &mut Vec<u8>, status: Status, framing: Framing, date: &[u8; DATE_LEN]) {
    write(out, &Message::text(status, b"failed"), framing, date);
}

/// Any answer, in full.
struct Message<'a> {
    status: Status,
    content_type: &'a [u8],
    extra: &'a [u8],
    body: &'a [u8],
}

impl<'a> Message<'a> {
    fn text(status: Status, body: &'a [u8]) -> Message<'a> {
        Message {
            status,
            content_type: TEXT,
            extra: b"",
            body,
        }
    }
}

/// Appends `message`: the status line, `Server`, `Content-Type`, `Content-Length`, `Date`,
/// the extra headers, `Connection` when there is something to say, then the body unless
/// the request was `HEAD`.
fn write(out: &mut Vec<u8>, message: &Message<'_>, framing: Framing, date: &[u8; DATE_LEN]) {
    out.extend_from_slice(message.status.line());
    out.extend_from_slice(b"Server: verve\r\nContent-Type: ");
    out.extend_from_slice(message.content_type);
    out.extend_from_slice(b"\r\nContent-Length: ");
    out.extend_from_slice(itoa::Buffer::new().format(message.body.len()).as_bytes());
    out.extend_from_slice(b"\r\nDate: ");
    out.extend_from_slice(date);
    out.extend_from_slice(message.extra);
    match framing.persist {
        Persist::Default => {}
        Persist::KeepAlive => out.extend_from_slice(b"\r\nConnection: keep-alive"),
        Persist::Close => out.extend_from_slice(b"\r\nConnection: close"),
    }
    out.extend_from_slice(b"\r\n\r\n");
    if !framing.head {
        out.extend_from_slice(message.body);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DATE: &[u8; DATE_LEN] = b"Sun, 22 Nov 2026 01:19:18 GMT";

    fn encoded(reply: Reply<'_>, framing: Framing) -> String {
        let mut out = Vec::new();
        encode(&mut out, &reply, framing, DATE);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn ok_fast_path_equals_the_general_form() {
        let mut general = Vec::new();
        write(
            &mut general,
            &Message::text(Status::Ok, b"ok"),
            Framing::PLAIN,
            DATE,
        );
        let fast = encoded(Reply::Ok, Framing::PLAIN);
        assert_eq!(fast.as_bytes(), general);
        assert_eq!(
            fast,
            "HTTP/1.1 200 OK\r\nServer: verve\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\
             Date: Sun, 22 Nov 2026 01:19:18 GMT\r\n\r\nok"
        );
        let keep_alive = Framing {
            persist: Persist::KeepAlive,
            head: false,
        };
        assert!(encoded(Reply::Ok, keep_alive).ends_with("\r\nConnection: keep-alive\r\n\r\nok"));
    }

    #[test]
    fn extra_headers_go_between_the_date_and_the_body() {
        let page = Reply::Page {
            content_type: HTML,
            extra: PAGE_HEADERS,
            body: b"<p>",
        };
        let text = encoded(page, Framing::CLOSE);
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
        let text = encoded(Reply::Failed(Status::MethodNotAllowed), Framing::CLOSE);
        assert!(text.starts_with("HTTP/1.1 405 Method Not Allowed\r\nAllow: GET\r\n"));
        assert!(text.contains("Content-Length: 6\r\n"));
        assert!(text.ends_with("Connection: close\r\n\r\nfailed"));
    }

    #[test]
    fn a_head_answer_is_the_get_answer_without_its_body() {
        let page = Reply::Page {
            content_type: JSON,
            extra: JSON_HEADERS,
            body: b"{\"windows\":[]}",
        };
        for reply in [Reply::Ok, Reply::Failed(Status::NotFound), page] {
            for persist in [Persist::Default, Persist::KeepAlive, Persist::Close] {
                let get = encoded(
                    reply,
                    Framing {
                        persist,
                        head: false,
                    },
                );
                let head = encoded(
                    reply,
                    Framing {
                        persist,
                        head: true,
                    },
                );
                let (get_head, body) = get.split_once("\r\n\r\n").unwrap();
                assert!(!body.is_empty());
                assert_eq!(head, format!("{get_head}\r\n\r\n"));
                assert!(head.contains(&format!("\r\nContent-Length: {}\r\n", body.len())));
            }
        }
    }
}

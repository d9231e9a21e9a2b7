//! One client connection: read, parse every complete request in the buffer, answer them all
//! in one write, repeat. Buffers are allocated once per connection and reused; the request
//! path allocates nothing, logs nothing and takes no lock but its shard's.
//!
//! Limits (README, *API*): a request head of at most [`MAX_HEAD`] bytes (431 past it), at
//! most [`MAX_HEADERS`] headers (431), a body of at most [`MAX_BODY`] bytes, read and
//! discarded (413 past it), no `Transfer-Encoding` (400: a body of unknown length cannot be
//! skipped safely), and `--idle-timeout` both for a client that sends nothing and for one
//! whose unfinished request (head or body) has been arriving for longer than that.
//! Every error answer closes the connection, so a confused client cannot desynchronise it.

use std::io::{Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering::Relaxed;

use may::net::TcpStream;

use super::response::{self, Framing, Persist, Reply, Status};
use super::{date, fair, Ctx};
use crate::query::{decode_endpoint, parse_accept};
use crate::shards::Recorded;

/// Longest request head (request line and headers), like nginx's default buffer.
pub const MAX_HEAD: usize = 8 * 1024;
/// Most request headers accepted.
pub const MAX_HEADERS: usize = 64;
/// Longest request body verve reads (and throws away): the API takes no body.
pub const MAX_BODY: u64 = 64 * 1024;
/// Read buffer: room for a full head plus the pipelined requests after it.
const READ_BUF: usize = 2 * MAX_HEAD;
/// Output buffer kept between batches; larger ones (a `/metrics` page) are shrunk back.
const WRITE_BUF: usize = 16 * 1024;

/// Per-connection state, reused for every request on it. Socket-free, so the parser and
/// router can be driven directly (the fuzz target in `fuzz/` does).
pub struct Conn {
    buf: Box<[u8]>,
    /// Unparsed bytes are `buf[start..end]`.
    start: usize,
    end: usize,
    /// Body bytes of the last request still to skip.
    discard: u64,
    out: Vec<u8>,
    /// Percent-decoded `endpoint`, reused.
    scratch: Vec<u8>,
    /// The last [`Conn::answer`] stopped after [`fair::HEAVY_TURN`] bytes of answers with
    /// requests left in the buffer: they are answered before anything more is read.
    deferred: bool,
}

/// Serves one connection until the client leaves, an error closes it, or shutdown.
pub fn serve(mut stream: TcpStream, ctx: &Ctx) {
    // Connections are counted by the accept loop (`super::Admission`); everything per batch
    // uses the shard of the thread running the batch (see `Shards::current`).
    //
    // Two setsockopt calls per connection, none per request. No read timeout: a silent
    // client is closed by the idle reaper (see `idle`), which costs no timer per read; the
    // write timeout only arms a timer when a write would block.
    let _ = stream.set_nodelay(true);
    let _ = stream.set_write_timeout(Some(ctx.idle_timeout));
    // Dropped before `stream` (declared after it): unregistered before the socket closes.
    let watch = ctx.idle.register(ctx.shards.current(), stream.as_raw_fd());
    let mut conn = Conn::new();
    let idle_ms = ctx.idle_timeout.as_millis() as u64;
    // When the unfinished request in the buffer began: a client that trickles a head byte
    // by byte is closed once it has taken longer than the idle timeout in total.
    let mut partial_since: Option<u64> = None;
    // The window of the last read's requests, kept for those answered after giving way.
    let mut window = 0;
    loop {
        let deferred = conn.deferred();
        if !deferred {
            let n = match stream.read(conn.input()) {
                Ok(0) | Err(_) => return, // closed, reset or idle too long: nothing to answer
                Ok(n) => n,
            };
            conn.received(n);
            watch.active();
        }
        // Read after the last yield and used before the next one (the write below).
        let shard = ctx.shards.current();
        // In flight until its answers are written: shutdown waits for it, or it sees that
        // shutdown has begun and closes.
        let in_flight = ctx.drain.begin(shard);
        let draining = in_flight.draining;
        // The instant of arrival: every request of this read belongs to this window, also
        // those answered after the connection gave way.
        let now = ctx.clock.now_ms();
        if !deferred {
            window = ctx.windows.index_of(now);
        }
        let mut keep_open = conn.answer(ctx, shard, window, draining);
        if !conn.unfinished() {
            partial_since = None;
        } else {
            // A request completed in this read (every one is answered) means the unfinished
            // rest began arriving in it too. Without this, a client pipelining steadily whose
            // reads never end on a request boundary was cut off after the idle timeout, and
            // the requests it had sent meanwhile were drained unanswered.
            if !conn.output().is_empty() {
                partial_since = Some(now);
            }
            let since = *partial_since.get_or_insert(now);
            keep_open &= now.saturating_sub(since) <= idle_ms;
        }
        let output_len = conn.output().len();
        let written = output_len == 0 || stream.write_all(conn.output()).is_ok();
        conn.sent();
        drop(in_flight);
        if !written {
            return;
        }
        if output_len > fair::HEAVY_TURN {
            fair::give_way();
        }
        if !keep_open {
            linger(&mut stream, &mut conn.buf);
            return;
        }
    }
}

/// How long a connection we close is drained of what the client still sends.
const LINGER: std::time::Duration = std::time::Duration::from_secs(1);
/// Most bytes read while draining.
const LINGER_BYTES: usize = 256 * 1024;

/// Closes our side, then reads and discards what the client is still sending, for at most
/// [`LINGER`] and [`LINGER_BYTES`], before the socket is dropped. Closing a socket with unread
/// data makes the kernel send a reset, which can destroy the answer (a 431, say) before the
/// client has read it; nginx's `lingering_close` exists for the same reason.
fn linger(stream: &mut TcpStream, buf: &mut [u8]) {
    if stream.shutdown(std::net::Shutdown::Write).is_err() {
        return;
    }
    let _ = stream.set_read_timeout(Some(LINGER));
    let started = std::time::Instant::now();
    let mut drained = 0;
    while drained < LINGER_BYTES && started.elapsed() < LINGER {
        match stream.read(buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => drained += n,
        }
    }
}

impl Default for Conn {
    fn default() -> Self {
        Self::new()
    }
}

impl Conn {
    pub fn new() -> Conn {
        Conn {
            buf: vec![0; READ_BUF].into_boxed_slice(),
            start: 0,
            end: 0,
            discard: 0,
            out: Vec::with_capacity(4096),
            scratch: Vec::new(),
            deferred: false,
        }
    }

    /// Where the next read goes: the free end of the buffer, after moving an unfinished
    /// request to the front. Never empty: an unfinished head is at most [`MAX_HEAD`] bytes
    /// (longer ones are refused), and the buffer is twice that.
    pub fn input(&mut self) -> &mut [u8] {
        self.compact();
        &mut self.buf[self.end..]
    }

    /// Records that `n` bytes were read into [`Conn::input`].
    pub fn received(&mut self, n: usize) {
        self.end += n;
    }

    /// True while part of a request (head or body) is still to come.
    pub fn unfinished(&self) -> bool {
        self.start != self.end || self.discard > 0
    }

    /// True when the last [`Conn::answer`] left requests in the buffer to answer after the
    /// connection has given way (see [`fair`]): call it again before reading more.
    pub fn deferred(&self) -> bool {
        self.deferred
    }

    /// The answers to the requests parsed so far; clear them with [`Conn::sent`].
    pub fn output(&self) -> &[u8] {
        &self.out
    }

    /// Forgets the answers once written.
    pub fn sent(&mut self) {
        self.out.clear();
        if self.out.capacity() > WRITE_BUF {
            self.out.shrink_to(WRITE_BUF);
        }
    }

    /// Moves an unfinished request to the front so the next read has room for the rest.
    fn compact(&mut self) {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
    }

    /// Answers every complete request in the buffer, all counted in `window`, recorded in
    /// `shard`, or as many as [`fair::HEAVY_TURN`] bytes of answers hold, leaving the rest
    /// [`Conn::deferred`]. False when the connection must close.
    ///
    /// Each request goes through three steps: `parse` reads its head, `route` decides
    /// its answer (recording the id of an accepted one), `respond` encodes the answer.
    pub fn answer(&mut self, ctx: &Ctx, shard: usize, window: u64, draining: bool) -> bool {
        let date = date::now();
        let batch = Batch {
            shard,
            window,
            draining,
        };
        self.deferred = false;
        loop {
            if !self.skip_body() || self.start == self.end {
                return true;
            }
            let request = match parse(&self.buf[self.start..self.end], draining) {
                Parsed::Request(request) => request,
                Parsed::Partial => return true,
                Parsed::Refused(status) => {
                    let refusal = Reply::Failed(status);
                    response::encode(&mut self.out, &refusal, Framing::CLOSE, &date);
                    return false;
                }
            };
            let answer = route(ctx, batch, &request, &mut self.scratch);
            respond(ctx, shard, &answer, request.framing, &mut self.out, &date);
            self.start += request.head_len;
            self.discard = request.body;
            if request.framing.persist == Persist::Close {
                return false;
            }
            if self.out.len() > fair::HEAVY_TURN && self.start != self.end {
                self.deferred = true;
                return true;
            }
        }
    }

    /// Skips what is in the buffer of the last request's body; false while more of it is
    /// still to come.
    fn skip_body(&mut self) -> bool {
        if self.discard > 0 {
            let skip = self.discard.min((self.end - self.start) as u64);
            self.start += skip as usize;
            self.discard -= skip;
        }
        self.discard == 0
    }
}

/// What the requests of one batch (one read) share.
#[derive(Debug, Clone, Copy)]
struct Batch {
    /// The worker shard their ids are recorded in.
    shard: usize,
    /// The window they count in: the one open when they arrived.
    window: u64,
    /// Shutdown had begun: `/healthz` is 503 and every answer closes the connection.
    draining: bool,
}

/// One request head, read.
struct Request<'b> {
    method: &'b str,
    target: &'b [u8],
    /// How its answer is framed.
    framing: Framing,
    /// Bytes of the head.
    head_len: usize,
    /// Bytes of body that follow, to skip.
    body: u64,
}

/// What the bytes at the front of the buffer are.
enum Parsed<'b> {
    Request(Request<'b>),
    /// The start of a request head; the rest is still to come.
    Partial,
    /// A request that cannot be read: answered `status`, then the connection closes.
    Refused(Status),
}

/// Step one: reads the request head at the start of `input`, within the limits.
#[inline]
fn parse(input: &[u8], draining: bool) -> Parsed<'_> {
    // Uninitialised header slots: zeroing 64 of them (2 KiB) per request costs more than
    // parsing a typical request head.
    let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let head_len = match req.parse_with_uninit_headers(input, &mut headers) {
        Ok(httparse::Status::Complete(len)) if len > MAX_HEAD => {
            return Parsed::Refused(Status::HeaderFieldsTooLarge)
        }
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if input.len() >= MAX_HEAD => {
            return Parsed::Refused(Status::HeaderFieldsTooLarge)
        }
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(httparse::Error::TooManyHeaders) => {
            return Parsed::Refused(Status::HeaderFieldsTooLarge)
        }
        Err(_) => return Parsed::Refused(Status::BadRequest),
    };
    let head = match Head::read(&req) {
        Ok(head) => head,
        Err(status) => return Parsed::Refused(status),
    };
    let persist = if draining || head.close {
        Persist::Close
    } else if req.version == Some(0) {
        Persist::KeepAlive
    } else {
        Persist::Default
    };
    let method = req.method.unwrap_or("");
    Parsed::Request(Request {
        method,
        target: req.path.unwrap_or("").as_bytes(),
        framing: Framing {
            persist,
            head: method == "HEAD",
        },
        head_len,
        body: head.body,
    })
}

/// What the headers say about the connection and the body.
struct Head {
    close: bool,
    body: u64,
}

impl Head {
    fn read(req: &httparse::Request<'_, '_>) -> Result<Head, Status> {
        // HTTP/1.0 closes unless the client asks for keep-alive; 1.1 the other way round.
        let mut close = req.version == Some(0);
        let mut body: Option<u64> = None;
        for h in req.headers.iter() {
            if h.name.eq_ignore_ascii_case("connection") {
                for token in h.value.split(|&b| b == b',') {
                    let token = token.trim_ascii();
                    if token.eq_ignore_ascii_case(b"close") {
                        close = true;
                    } else if token.eq_ignore_ascii_case(b"keep-alive") && req.version == Some(0) {
                        close = false;
                    }
                }
            } else if h.name.eq_ignore_ascii_case("content-length") {
                let n = parse_length(h.value).ok_or(Status::BadRequest)?;
                if body.is_some_and(|b| b != n) {
                    return Err(Status::BadRequest);
                }
                body = Some(n);
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                return Err(Status::BadRequest);
            }
        }
        let body = body.unwrap_or(0);
        if body > MAX_BODY {
            return Err(Status::PayloadTooLarge);
        }
        Ok(Head { close, body })
    }
}

/// A `Content-Length` value: digits only, at most 18 of them (no overflow possible).
fn parse_length(v: &[u8]) -> Option<u64> {
    let v = v.trim_ascii();
    if v.is_empty() || v.len() > 18 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(v.iter().fold(0, |n, &d| n * 10 + (d - b'0') as u64))
}

/// What a request is answered with.
enum Answer {
    /// A reply known whole.
    Reply(Reply<'static>),
    /// `/metrics`, rendered now from the counters.
    Metrics,
    /// `/api/verve/windows`, from this worker's cached copy.
    Windows,
    /// The status page (`/`), from this worker's cached copy.
    StatusPage,
}

/// Step two: dispatches one request by path and method. An accept request is validated and
/// its id recorded, and its outcome counted, here.
#[inline]
fn route(ctx: &Ctx, batch: Batch, request: &Request<'_>, scratch: &mut Vec<u8>) -> Answer {
    let target = origin_form(request.target);
    let (path, query) = match target.iter().position(|&b| b == b'?') {
        Some(q) => (&target[..q], &target[q + 1..]),
        None => (target, &target[target.len()..]),
    };
    let get = request.method == "GET";
    match path {
        b"/api/verve/accept" => {
            let status = if get {
                accept(ctx, batch, query, scratch)
            } else {
                Status::MethodNotAllowed
            };
            let counters = ctx.metrics.worker(batch.shard);
            let counter = match status {
                Status::Ok => &counters.ok,
                Status::Unavailable => &counters.unavailable,
                _ => &counters.bad_request,
            };
            counter.fetch_add(1, Relaxed);
            Answer::Reply(match status {
                Status::Ok => Reply::Ok,
                _ => Reply::Failed(status),
            })
        }
        b"/healthz" if get => Answer::Reply(health(ctx, batch.draining)),
        b"/metrics" if get => Answer::Metrics,
        b"/api/verve/windows" if get => Answer::Windows,
        b"/" if get => Answer::StatusPage,
        b"/healthz" | b"/metrics" | b"/api/verve/windows" | b"/" => {
            Answer::Reply(Reply::Failed(Status::MethodNotAllowed))
        }
        _ => Answer::Reply(Reply::Failed(Status::NotFound)),
    }
}

/// `/healthz`: 503 while shutting down; while new connections cannot be taken (at
/// --max-connections, or accepting is failing): a balancer should send the work elsewhere;
/// and once a thread has died (see `crate::health`): the process is about to exit.
fn health(ctx: &Ctx, draining: bool) -> Reply<'static> {
    if draining || !ctx.admission.can_accept() || !ctx.health.is_ok() {
        Reply::Failed(Status::Unavailable)
    } else {
        Reply::Ok
    }
}

/// Step three: encodes `answer` into `out`, framed as its request asks.
#[inline]
fn respond(
    ctx: &Ctx,
    shard: usize,
    answer: &Answer,
    framing: Framing,
    out: &mut Vec<u8>,
    date: &[u8; date::DATE_LEN],
) {
    match answer {
        Answer::Reply(reply) => response::encode(out, reply, framing, date),
        Answer::Metrics => {
            let page = ctx.metrics.render(ctx.admission.open() as u64);
            let reply = Reply::Page {
                content_type: response::PROMETHEUS,
                extra: b"",
                body: page.as_bytes(),
            };
            response::encode(out, &reply, framing, date);
        }
        // Both served from bodies rendered off the request path (see `crate::status`): a
        // copy out of this worker's own slot.
        Answer::Windows => ctx.status.pages.windows(shard, |body| {
            let reply = Reply::Page {
                content_type: response::JSON,
                extra: response::JSON_HEADERS,
                body,
            };
            response::encode(out, &reply, framing, date)
        }),
        Answer::StatusPage => ctx.status.pages.page(shard, |body| {
            let reply = Reply::Page {
                content_type: response::HTML,
                extra: response::PAGE_HEADERS,
                body,
            };
            response::encode(out, &reply, framing, date)
        }),
    }
}

/// The path and query of a request target: an absolute-form target
/// (`http://host/api/...`, which HTTP/1.1 servers must accept) loses its scheme and authority.
fn origin_form(target: &[u8]) -> &[u8] {
    let rest = match target {
        [b'h' | b'H', b't' | b'T', b't' | b'T', b'p' | b'P', rest @ ..] => rest,
        _ => return target,
    };
    let rest = rest
        .strip_prefix(b"s")
        .or_else(|| rest.strip_prefix(b"S"))
        .unwrap_or(rest);
    let Some(rest) = rest.strip_prefix(b"://") else {
        return target;
    };
    match rest.iter().position(|&b| b == b'/' || b == b'?') {
        Some(at) => &rest[at..],
        None => b"/",
    }
}

/// The accept API: validate, then record.
#[inline]
fn accept(ctx: &Ctx, batch: Batch, query: &[u8], scratch: &mut Vec<u8>) -> Status {
    let Ok(accept) = parse_accept(query) else {
        return Status::BadRequest;
    };
    let endpoint = match accept.endpoint {
        None => None,
        Some(raw) => match decode_endpoint(raw, scratch) {
            Ok(url) => Some(url),
            Err(_) => return Status::BadRequest,
        },
    };
    match ctx
        .shards
        .record(batch.shard, batch.window, accept.id, endpoint)
    {
        Ok(Recorded::Counted) => Status::Ok,
        Ok(Recorded::EndpointTableFull | Recorded::Closed | Recorded::OverBudget) => {
            Status::Unavailable
        }
        Err(_) => Status::BadRequest,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absolute_form_targets_are_reduced_to_path_and_query() {
        assert_eq!(
            origin_form(b"/api/verve/accept?id=1"),
            b"/api/verve/accept?id=1"
        );
        assert_eq!(
            origin_form(b"http://h:80/api/verve/accept?id=1"),
            b"/api/verve/accept?id=1"
        );
        assert_eq!(origin_form(b"HTTPS://h/healthz"), b"/healthz");
        assert_eq!(origin_form(b"http://h?x"), b"?x");
        assert_eq!(origin_form(b"http://h"), b"/");
        assert_eq!(origin_form(b"httpx://h/a"), b"httpx://h/a");
        assert_eq!(origin_form(b"*"), b"*");
    }

    #[test]
    fn content_length_is_digits_only() {
        assert_eq!(parse_length(b"0"), Some(0));
        assert_eq!(parse_length(b" 12 "), Some(12));
        for bad in [
            &b""[..],
            b"-1",
            b"+1",
            b"1e3",
            b"0x10",
            b"1 2",
            b"99999999999999999999",
        ] {
            assert_eq!(parse_length(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }
}

//! Shared helpers of the integration tests: start the real `verve` binary on `127.0.0.1:0`
//! with its own temp dir and log file, a raw HTTP/1.1 client over `std::net::TcpStream`, a
//! watcher of the count log, and a tiny threaded HTTP receiver that stands in for callback
//! endpoints.
//!
//! Every wait in here is a poll with a generous deadline ([`DEADLINE`]): it only fails when
//! the awaited event never happens, never because something was slow.

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

pub mod kafka_broker;
pub mod kafka_log;
pub mod redis_servers;
pub mod sasl_gate;

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long any awaited event (a log line, an answer, an exit) may take before the test
/// fails. Generous: the machine has two cores and runs other tests at the same time.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// Pause between two looks at a polled condition.
const POLL: Duration = Duration::from_millis(10);

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_verve");

// ---------------------------------------------------------------------------------------
// Time and windows
// ---------------------------------------------------------------------------------------

/// Seconds since the Unix epoch, with fractions.
pub fn now_secs_f64() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock before 1970")
        .as_secs_f64()
}

/// Start (whole seconds since the epoch) of the `interval`-second window holding `now`.
pub fn window_now(interval: u64) -> u64 {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock before 1970")
        .as_secs();
    secs - secs % interval
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = (if y >= 0 { y } else { y - 399 }) / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The inverse of [`days_from_civil`].
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = (if z >= 0 { z } else { z - 146_096 }) / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// `2026-11-21T23:50:00Z` for a whole number of seconds since the epoch.
pub fn rfc3339_secs(secs: u64) -> String {
    let secs = secs as i64;
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let s = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

/// Milliseconds since the epoch of `YYYY-MM-DDTHH:MM:SS[.mmm]Z`; `None` for anything else.
pub fn parse_rfc3339_ms(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = s.get(r)?;
        if part.bytes().all(|c| c.is_ascii_digit()) {
            part.parse().ok()
        } else {
            None
        }
    };
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' {
        return None;
    }
    if b[16] != b':' || *b.last()? != b'Z' {
        return None;
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let ms = match b.len() {
        20 => 0,
        24 if b[19] == b'.' => num(20..23)?,
        _ => return None,
    };
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let days = days_from_civil(y, mo, d);
    Some(((days * 86_400 + h * 3600 + mi * 60 + sec) * 1000 + ms) as u64)
}

/// Whole seconds since the epoch of `YYYY-MM-DDTHH:MM:SSZ`.
pub fn parse_rfc3339_secs(s: &str) -> Option<u64> {
    if s.len() != 20 {
        return None;
    }
    parse_rfc3339_ms(s).map(|ms| ms / 1000)
}

/// Polls `f` until it returns `Some`, or panics with `what` after [`DEADLINE`].
pub fn wait_until<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "gave up after {DEADLINE:?} waiting for {what}"
        );
        std::thread::sleep(POLL);
    }
}

// ---------------------------------------------------------------------------------------
// The server under test
// ---------------------------------------------------------------------------------------

/// A fresh, empty directory under the system temp dir, unique to this call.
pub fn temp_dir(tag: &str) -> PathBuf {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let dir = std::env::temp_dir().join(format!(
        "verve-test-{tag}-{}-{}-{nanos}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("creating the test's temp dir");
    dir
}

/// A `Command` for the binary that inherits no `VERVE_*` setting from the test's own
/// environment and runs in `dir`.
pub fn command(dir: &std::path::Path) -> Command {
    let mut cmd = Command::new(BIN);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("VERVE_") {
            cmd.env_remove(key);
        }
    }
    cmd.current_dir(dir);
    cmd
}

/// One parsed count line of the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CountLine {
    pub line: String,
    /// `window_start`, whole seconds since the epoch.
    pub window_start: u64,
    pub unique_count: u64,
}

/// Parses a count line (`... window_start=<ts> unique_count=<n>`), or `None`.
pub fn parse_count_line(line: &str) -> Option<CountLine> {
    if !line.contains("unique_count=") {
        return None;
    }
    let token = |name: &str| {
        line.split(' ')
            .find_map(|t| t.strip_prefix(name))
            .map(str::to_string)
    };
    let window_start = parse_rfc3339_secs(&token("window_start=")?)?;
    let unique_count = token("unique_count=")?.parse().ok()?;
    Some(CountLine {
        line: line.to_string(),
        window_start,
        unique_count,
    })
}

/// A running `verve`, killed (and its temp dir removed, unless the test failed) on drop.
pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    pub dir: PathBuf,
    pub log_path: PathBuf,
    pub interval: u64,
    /// Everything the process wrote to stderr so far (drained by a thread).
    stderr: Arc<Mutex<Vec<u8>>>,
    exit: Option<ExitStatus>,
}

impl Server {
    /// Starts `verve --listen 127.0.0.1:0 --interval <interval> --log-file <dir>/verve.log`
    /// plus `extra`, and waits for its `verve listening on` line.
    pub fn start(interval: u64, extra: &[&str]) -> Server {
        Server::start_in(temp_dir("srv"), interval, extra)
    }

    /// [`Server::start`] in a given directory: a restarted instance shares its predecessor's
    /// log file and state file.
    pub fn start_in(dir: PathBuf, interval: u64, extra: &[&str]) -> Server {
        Server::start_with(dir, interval, extra, |_| {})
    }

    /// [`Server::start_in`] with `VERVE_*` settings in the environment of the process.
    pub fn start_with_env(
        dir: PathBuf,
        interval: u64,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Server {
        Server::start_with(dir, interval, extra, |cmd| {
            cmd.envs(env.iter().copied());
        })
    }

    /// [`Server::start_in`] with the command adjusted by `customize` first (resource
    /// limits, the environment, say).
    pub fn start_with(
        dir: PathBuf,
        interval: u64,
        extra: &[&str],
        customize: impl FnOnce(&mut Command),
    ) -> Server {
        let log_path = dir.join("verve.log");
        let mut cmd = command(&dir);
        customize(&mut cmd);
        let mut child = cmd
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--interval")
            .arg(interval.to_string())
            .arg("--log-file")
            .arg(&log_path)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning verve");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        {
            let mut pipe = child.stderr.take().expect("stderr pipe");
            let sink = stderr.clone();
            std::thread::spawn(move || {
                let mut chunk = [0u8; 4096];
                while let Ok(n) = pipe.read(&mut chunk) {
                    if n == 0 {
                        break;
                    }
                    sink.lock().unwrap().extend_from_slice(&chunk[..n]);
                }
            });
        }
        // Read stdout on a thread: the first line carries the port; the rest is drained so
        // the process can never block on a full pipe.
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().expect("stdout pipe");
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let first = lines.next();
            let _ = tx.send(first);
            for _ in lines {}
        });
        let first = match rx.recv_timeout(DEADLINE) {
            Ok(Some(Ok(line))) => line,
            other => {
                let _ = child.kill();
                let _ = child.wait();
                let err = String::from_utf8_lossy(&stderr.lock().unwrap()).into_owned();
                panic!("verve did not print its listening line ({other:?}); stderr: {err}");
            }
        };
        let addr: SocketAddr = first
            .strip_prefix("verve listening on ")
            .and_then(|a| a.trim().parse().ok())
            .unwrap_or_else(|| panic!("unexpected first stdout line {first:?}"));
        assert_eq!(addr.ip(), Ipv4Addr::LOCALHOST, "listening on {addr}");
        assert_ne!(addr.port(), 0);
        Server {
            child,
            addr,
            dir,
            log_path,
            interval,
            stderr,
            exit: None,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// A new keep-alive connection to the server.
    pub fn client(&self) -> Client {
        Client::connect(self.addr)
    }

    /// One `GET` on a fresh connection.
    pub fn get(&self, target: &str) -> Response {
        self.client().get(target)
    }

    /// `GET /api/verve/accept?id=<id>` on a fresh connection; panics unless it is `200 ok`.
    pub fn accept_ok(&self, id: i64) {
        let r = self.get(&format!("/api/verve/accept?id={id}"));
        assert_eq!((r.status, r.text()), (200, "ok".to_string()), "id={id}");
    }

    /// Panics unless a brand-new client is answered normally and the process still runs.
    pub fn assert_serves(&mut self) {
        assert!(
            self.child.try_wait().expect("try_wait").is_none(),
            "verve exited; stderr: {}",
            self.stderr()
        );
        let r = self.get("/healthz");
        assert_eq!((r.status, r.text()), (200, "ok".to_string()));
        let r = self.get("/api/verve/accept?id=424242");
        assert_eq!((r.status, r.text()), (200, "ok".to_string()));
    }

    /// What verve wrote to stderr so far.
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    /// The whole log file (empty until it exists).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Complete lines of the log file (a line still being written is left out).
    pub fn log_lines(&self) -> Vec<String> {
        let text = self.log();
        let complete = match text.rfind('\n') {
            Some(end) => &text[..end],
            None => "",
        };
        complete
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect()
    }

    /// Every count line written so far, in file order.
    pub fn count_lines(&self) -> Vec<CountLine> {
        self.log_lines()
            .iter()
            .filter_map(|l| parse_count_line(l))
            .collect()
    }

    /// Waits until at least `n` count lines are in the log and returns them all.
    pub fn wait_for_count_lines(&self, n: usize) -> Vec<CountLine> {
        wait_until(
            &format!("{n} count lines in {}", self.log_path.display()),
            || {
                let lines = self.count_lines();
                (lines.len() >= n).then_some(lines)
            },
        )
    }

    /// Waits for the count line of the window starting at `window_start` (epoch seconds).
    pub fn wait_for_window(&self, window_start: u64) -> CountLine {
        wait_until(
            &format!("the count line of window {}", rfc3339_secs(window_start)),
            || {
                self.count_lines()
                    .into_iter()
                    .find(|c| c.window_start == window_start)
            },
        )
    }

    /// Waits for a log line that satisfies `pred` and returns it.
    pub fn wait_for_log(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        wait_until(what, || self.log_lines().into_iter().find(|l| pred(l)))
    }

    /// Runs `f` inside one window that nothing was sent in before: waits for a window that
    /// opens after this call (the count line of its predecessor marks that it has opened, so
    /// it is about 200 ms old), runs `f`, and checks by the clock that it started and ended in
    /// the same window. If it did not, it tries again in a window after the one `f` spilled
    /// into (up to 5 attempts); `f` gets the attempt number so it can use fresh ids. Returns
    /// the window start and `f`'s result.
    pub fn in_one_window<T>(&self, mut f: impl FnMut(u32) -> T) -> (u64, T) {
        const ATTEMPTS: u32 = 5;
        // The first window `f` may run in: later than any the caller has already sent to.
        let mut not_before = window_now(self.interval) + self.interval;
        for attempt in 0..ATTEMPTS {
            wait_until("a fresh window", || {
                let now = window_now(self.interval);
                let opened = now >= not_before
                    && self
                        .count_lines()
                        .iter()
                        .any(|c| c.window_start == now - self.interval);
                opened.then_some(())
            });
            let before = window_now(self.interval);
            let out = f(attempt);
            let after = window_now(self.interval);
            if before == after {
                return (before, out);
            }
            eprintln!(
                "attempt {attempt} straddled a window boundary ({} -> {}), trying again",
                rfc3339_secs(before),
                rfc3339_secs(after)
            );
            not_before = after + self.interval;
        }
        panic!("{ATTEMPTS} attempts in a row straddled a window boundary");
    }

    /// Sends a real signal to the process.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid, which we have not reaped yet.
        let rc = unsafe { libc::kill(self.pid(), sig) };
        assert_eq!(rc, 0, "kill({}, {sig})", self.pid());
    }

    /// Waits for the process to exit by itself and returns its status.
    pub fn wait_exit(&mut self) -> ExitStatus {
        if let Some(status) = self.exit {
            return status;
        }
        let status = wait_until("verve to exit", || self.child.try_wait().expect("try_wait"));
        self.exit = Some(status);
        status
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.exit.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "verve test dir kept: {}\n--- log ---\n{}--- stderr ---\n{}",
                self.dir.display(),
                self.log(),
                self.stderr()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Raw HTTP client
// ---------------------------------------------------------------------------------------

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
fn head_end(buf: &[u8]) -> Option<usize> {
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

// ---------------------------------------------------------------------------------------
// Callback receiver
// ---------------------------------------------------------------------------------------

/// One request the receiver got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub method: String,
    /// Path and query, as sent.
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }
}

/// How the receiver answers one request.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    /// Pause before answering.
    pub delay: Duration,
    /// A `Location` header.
    pub location: Option<String>,
}

impl Reply {
    pub fn status(status: u16) -> Reply {
        Reply {
            status,
            delay: Duration::ZERO,
            location: None,
        }
    }
}

type Handler = dyn Fn(&Received) -> Reply + Send + Sync;

/// A tiny threaded HTTP/1.1 server that records every request (keep-alive aware) and answers
/// as its handler says.
pub struct Receiver {
    pub addr: SocketAddr,
    requests: Arc<Mutex<Vec<Received>>>,
    stop: Arc<AtomicBool>,
}

impl Receiver {
    /// Listens on `127.0.0.1:0`.
    pub fn start(handler: impl Fn(&Received) -> Reply + Send + Sync + 'static) -> Receiver {
        Self::start_on(Ipv4Addr::LOCALHOST, handler)
    }

    /// Listens on `ip:0` (any loopback address).
    pub fn start_on(
        ip: Ipv4Addr,
        handler: impl Fn(&Received) -> Reply + Send + Sync + 'static,
    ) -> Receiver {
        let listener = TcpListener::bind((ip, 0)).expect("binding the receiver");
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let handler: Arc<Handler> = Arc::new(handler);
        {
            let (requests, stop) = (requests.clone(), stop.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let (requests, handler) = (requests.clone(), handler.clone());
                    std::thread::spawn(move || serve_receiver(stream, &requests, &*handler));
                }
            });
        }
        Receiver {
            addr,
            requests,
            stop,
        }
    }

    /// `http://<addr><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<Received> {
        self.requests.lock().unwrap().clone()
    }

    /// Waits until at least `n` requests arrived and returns them all.
    pub fn wait_for_requests(&self, n: usize) -> Vec<Received> {
        wait_until(&format!("{n} requests at the receiver"), || {
            let got = self.requests();
            (got.len() >= n).then_some(got)
        })
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
    }
}

/// Serves one receiver connection: request after request until the peer leaves.
fn serve_receiver(mut stream: TcpStream, requests: &Mutex<Vec<Received>>, handler: &Handler) {
    let _ = stream.set_read_timeout(Some(DEADLINE));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let end = loop {
            if let Some(end) = head_end(&buf) {
                break end;
            }
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let Ok(head) = std::str::from_utf8(&buf[..end]) else {
            return;
        };
        let mut lines = head.split("\r\n");
        let mut first = lines.next().unwrap_or("").split(' ');
        let method = first.next().unwrap_or("").to_string();
        let target = first.next().unwrap_or("").to_string();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
            .collect();
        let len: usize = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        while buf.len() < end + 4 + len {
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body = buf[end + 4..end + 4 + len].to_vec();
        buf.drain(..end + 4 + len);
        let received = Received {
            method,
            target,
            headers,
            body,
        };
        requests.lock().unwrap().push(received.clone());
        let reply = handler(&received);
        std::thread::sleep(reply.delay);
        let mut answer = format!(
            "HTTP/1.1 {} Test\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n",
            reply.status
        );
        if let Some(location) = &reply.location {
            answer.push_str(&format!("Location: {location}\r\n"));
        }
        answer.push_str("\r\nhi");
        if stream.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

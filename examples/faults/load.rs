//! The load of the fault run: `connections` keep-alive connections to nginx, each sending
//! batches of up to `depth` pipelined `GET /api/verve/accept?id=N` at its share of `rate`,
//! every id distinct (a counter shared by all connections, spread over 0..2^32 by an odd
//! multiplier: a bijection, so no id is ever sent twice). For every id it records, in
//! `ids-<connection>.tsv`: `id`, when it was sent, when it was answered (or given up on),
//! the outcome (`ok`, the status of any other answer, `none`) and nginx's `X-Upstream`
//! (the instance, or instances after a retry, `|`-separated; `-` if none).

use std::io::{BufWriter, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A connection waits this long for an answer before it gives up on the rest of its batch
/// and reconnects. nginx answers within a few seconds whatever the instances do (it tries
/// each for at most a second), so this only fires if nginx itself is stuck.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(15);
/// The longest a connection waits to fill a batch: keeps the rate smooth at low rates.
const BATCH_WAIT: Duration = Duration::from_millis(50);

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The `n`-th id of the run: distinct for every `n` below 2^32.
pub fn id_of(n: u64) -> u64 {
    n.wrapping_mul(0x9E37_79B1) & 0xFFFF_FFFF
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub addr: SocketAddr,
    /// Requests per second, all connections together.
    pub rate: u64,
    pub connections: usize,
    /// Requests per write at most (and so in flight on a connection at most).
    pub depth: usize,
}

/// The running load; [`Load::stop`] ends it and returns the number of ids sent.
pub struct Load {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    threads: Vec<JoinHandle<std::io::Result<()>>>,
}

impl Load {
    pub fn start(s: &Settings, dir: &Path) -> std::io::Result<Load> {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let per_conn = (s.rate as f64 / s.connections.max(1) as f64).max(1.0);
        let mut threads = Vec::new();
        for c in 0..s.connections.max(1) {
            let file = std::fs::File::create(dir.join(format!("ids-{c:03}.tsv")))?;
            let (stop, sent, s) = (stop.clone(), sent.clone(), s.clone());
            threads.push(std::thread::spawn(move || {
                Connection::new(s.addr, s.depth.max(1), BufWriter::new(file))
                    .run(per_conn, &stop, &sent)
            }));
        }
        Ok(Load {
            stop,
            sent,
            threads,
        })
    }

    /// Stops sending, waits for the answers still due, flushes the records.
    pub fn stop(self) -> Result<u64, String> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join()
                .map_err(|_| "a load thread panicked".to_string())?
                .map_err(|e| format!("writing the id records: {e}"))?;
        }
        Ok(self.sent.load(Ordering::Relaxed))
    }
}

/// One id in flight.
struct Pending {
    id: u64,
    sent_ms: u64,
}

/// What one answer said.
struct Answer {
    ok: bool,
    status: u16,
    upstream: String,
}

struct Connection<W: Write> {
    addr: SocketAddr,
    depth: usize,
    out: W,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
}

impl<W: Write> Connection<W> {
    fn new(addr: SocketAddr, depth: usize, out: W) -> Self {
        Connection {
            addr,
            depth,
            out,
            stream: None,
            buf: Vec::new(),
        }
    }

    fn run(mut self, rate: f64, stop: &AtomicBool, total: &AtomicU64) -> std::io::Result<()> {
        let start = Instant::now();
        // Requests due so far by the schedule, and sent.
        let mut scheduled = 0u64;
        let mut batch = Vec::with_capacity(self.depth);
        let mut request = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let due = (start.elapsed().as_secs_f64() * rate) as u64;
            // After a stall (a frozen instance held the batch), skip what was missed rather
            // than burst to catch up.
            if due > scheduled + 4 * self.depth as u64 {
                scheduled = due - self.depth as u64;
            }
            let n = (due - scheduled.min(due)).min(self.depth as u64) as usize;
            if n < self.depth {
                let wait = Duration::from_secs_f64(
                    ((self.depth - n) as f64 / rate).min(BATCH_WAIT.as_secs_f64()),
                );
                std::thread::sleep(wait);
                if n == 0 {
                    continue;
                }
            }
            scheduled += n as u64;
            if self.stream.is_none() {
                match TcpStream::connect(self.addr) {
                    Ok(s) => {
                        s.set_nodelay(true)?;
                        s.set_read_timeout(Some(ANSWER_TIMEOUT))?;
                        self.stream = Some(s);
                        self.buf.clear();
                    }
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(100));
                        continue;
                    }
                }
            }
            batch.clear();
            request.clear();
            let sent_ms = now_ms();
            for _ in 0..n {
                let id = id_of(total.fetch_add(1, Ordering::Relaxed));
                write!(
                    request,
                    "GET /api/verve/accept?id={id} HTTP/1.1\r\nHost: verve\r\n\r\n"
                )?;
                batch.push(Pending { id, sent_ms });
            }
            let stream = self.stream.as_mut().expect("connected above");
            if stream.write_all(&request).is_err() {
                self.give_up(&batch)?;
                continue;
            }
            for (k, p) in batch.iter().enumerate() {
                match self.read_answer() {
                    Some(a) => {
                        let outcome = if a.ok {
                            "ok".to_string()
                        } else {
                            a.status.to_string()
                        };
                        writeln!(
                            self.out,
                            "{}\t{}\t{}\t{outcome}\t{}",
                            p.id,
                            p.sent_ms,
                            now_ms(),
                            a.upstream
                        )?;
                    }
                    None => {
                        self.give_up(&batch[k..])?;
                        break;
                    }
                }
            }
        }
        self.out.flush()
    }

    /// The connection broke: the ids still in flight are recorded as not answered, and the
    /// next batch reconnects.
    fn give_up(&mut self, pending: &[Pending]) -> std::io::Result<()> {
        let end = now_ms();
        for p in pending {
            writeln!(self.out, "{}\t{}\t{end}\tnone\t-", p.id, p.sent_ms)?;
        }
        self.stream = None;
        Ok(())
    }

    /// Reads one answer off the connection; `None` if it broke, timed out or sent
    /// something that is not HTTP/1.1 with a `Content-Length`.
    fn read_answer(&mut self) -> Option<Answer> {
        loop {
            if let Some((answer, used)) = parse_answer(&self.buf) {
                self.buf.drain(..used);
                return Some(answer);
            }
            let mut chunk = [0u8; 16 * 1024];
            let n = self.stream.as_mut()?.read(&mut chunk).ok()?;
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
            if self.buf.len() > 1 << 20 {
                return None;
            }
        }
    }
}

/// One complete answer at the start of `buf`, and how many bytes it took.
fn parse_answer(buf: &[u8]) -> Option<(Answer, usize)> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut r = httparse::Response::new(&mut headers);
    let httparse::Status::Complete(head) = r.parse(buf).ok()? else {
        return None;
    };
    let mut length = None;
    let mut upstream = String::from("-");
    for h in r.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            length = std::str::from_utf8(h.value)
                .ok()?
                .trim()
                .parse::<usize>()
                .ok();
        } else if h.name.eq_ignore_ascii_case("x-upstream") {
            // `127.0.0.1:1` or, after a retry, `127.0.0.1:1, 127.0.0.1:2`.
            let v = String::from_utf8_lossy(h.value);
            upstream = v
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join("|");
            if upstream.is_empty() {
                upstream = "-".into();
            }
        }
    }
    // Without a length the answer cannot be delimited on a kept-alive connection.
    let length = length?;
    if buf.len() < head + length {
        return None;
    }
    let status = r.code?;
    let body = &buf[head..head + length];
    Some((
        Answer {
            ok: status == 200 && body == b"ok",
            status,
            upstream,
        },
        head + length,
    ))
}

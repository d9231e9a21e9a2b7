//! A latency probe for window boundaries: one keep-alive connection, one
//! `GET /api/verve/accept?id=N` every `--period-us` (default 1 000 µs, open loop), each
//! request's latency recorded with its timestamp.
//!
//! Latency is measured from the moment the request was *due* (start + i x period), not from
//! when it could be sent: if one answer takes 40 ms, the requests queued behind it show
//! 40, 39, 38 ... ms, as a client sending at a steady rate would see (no coordinated
//! omission). The time the server took once the request was written is recorded as well.
//!
//! ```sh
//! cargo run --release --example probe -- --addr 127.0.0.1:8080 --seconds 10 \
//!     --interval 60 --out probe.csv
//! ```
//!
//! Writes `--out` as CSV: `due_unix_ms,latency_us,service_us,status` (one row per request),
//! and prints `RESULT` lines: the whole run's percentiles, and for each window boundary
//! (multiple of `--interval` seconds since the epoch) inside the run, the worst latency in the
//! second after it (`[B, B+1 s)`, which holds the collector's seal at B + 200 ms) and the p99
//! of the rest of the run. Ids are distinct random-looking values in 0..2^32 (an odd
//! multiplier over a counter), so every probe request is a new id. Exits 1 on any answer but
//! 200 or any I/O error.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

struct Options {
    addr: SocketAddr,
    seconds: f64,
    period: Duration,
    interval: u64,
    out: String,
    seed: u32,
}

fn parse_args() -> Result<Options, String> {
    let mut addr = None;
    let mut o = Options {
        addr: "127.0.0.1:8080".parse().expect("literal"),
        seconds: 10.0,
        period: Duration::from_micros(1000),
        interval: 60,
        out: "probe.csv".into(),
        seed: 1,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let bad = || format!("bad value {value:?} for {flag}");
        match flag.as_str() {
            "--addr" => addr = Some(value.parse().map_err(|_| bad())?),
            "--seconds" => o.seconds = value.parse().map_err(|_| bad())?,
            "--period-us" => {
                o.period = Duration::from_micros(value.parse().map_err(|_| bad())?);
            }
            "--interval" => o.interval = value.parse().map_err(|_| bad())?,
            "--out" => o.out = value,
            "--seed" => o.seed = value.parse().map_err(|_| bad())?,
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    if let Some(a) = addr {
        o.addr = a;
    }
    if o.seconds <= 0.0 || o.period.is_zero() || o.interval == 0 {
        return Err("--seconds, --period-us and --interval must be positive".into());
    }
    Ok(o)
}

/// One sample.
struct Sample {
    due_unix_us: u64,
    latency_us: u64,
    service_us: u64,
    status: u16,
}

/// Reads one HTTP/1.1 response (status line, headers, `Content-Length` body); returns the
/// status.
fn read_response(r: &mut BufReader<TcpStream>, line: &mut String) -> std::io::Result<u16> {
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
    line.clear();
    if r.read_line(line)? == 0 {
        return Err(bad("connection closed"));
    }
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("bad status line"))?;
    let mut length = 0usize;
    loop {
        line.clear();
        if r.read_line(line)? == 0 {
            return Err(bad("connection closed in the headers"));
        }
        let h = line.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((name, value)) = h.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value
                    .trim()
                    .parse()
                    .map_err(|_| bad("bad Content-Length"))?;
            }
        }
    }
    let mut body = vec![0u8; length];
    std::io::Read::read_exact(r, &mut body)?;
    Ok(status)
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn run(o: &Options) -> Result<Vec<Sample>, String> {
    let stream = TcpStream::connect_timeout(&o.addr, Duration::from_secs(5))
        .map_err(|e| format!("connect {}: {e}", o.addr))?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let mut writer = stream.try_clone().map_err(|e| e.to_string())?;
    let mut reader = BufReader::new(stream);
    let total = (o.seconds / o.period.as_secs_f64()).ceil() as u64;
    let mut samples = Vec::with_capacity(total as usize);
    let mut line = String::new();
    let mut request = Vec::with_capacity(128);
    let start = Instant::now();
    let start_unix_us = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|e| e.to_string())?
        .as_micros() as u64;
    for i in 0..total {
        let due = start + o.period * i as u32;
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        // A bijection of the counter onto 0..2^32: distinct, spread over the whole range.
        let id = (i as u32)
            .wrapping_add(o.seed.wrapping_mul(0x4000_0000))
            .wrapping_mul(0x9e37_79b1);
        request.clear();
        write!(
            request,
            "GET /api/verve/accept?id={id} HTTP/1.1\r\nHost: {}\r\n\r\n",
            o.addr
        )
        .expect("write to a Vec");
        let sent = Instant::now();
        writer
            .write_all(&request)
            .map_err(|e| format!("request {i}: write: {e}"))?;
        let status =
            read_response(&mut reader, &mut line).map_err(|e| format!("request {i}: read: {e}"))?;
        let done = Instant::now();
        samples.push(Sample {
            due_unix_us: start_unix_us + (due - start).as_micros() as u64,
            latency_us: (done - due).as_micros() as u64,
            service_us: (done - sent).as_micros() as u64,
            status,
        });
    }
    Ok(samples)
}

fn main() -> ExitCode {
    let o = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("probe: {e}");
            eprintln!(
                "usage: probe [--addr HOST:PORT] [--seconds S] [--period-us US] [--interval SECS] [--out FILE.csv] [--seed N]"
            );
            return ExitCode::from(2);
        }
    };
    let result = run(&o);
    let samples = match result {
        Ok(s) => s,
        Err(e) => {
            eprintln!("probe: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut csv = String::from("due_unix_ms,latency_us,service_us,status\n");
    for s in &samples {
        csv.push_str(&format!(
            "{:.3},{},{},{}\n",
            s.due_unix_us as f64 / 1e3,
            s.latency_us,
            s.service_us,
            s.status
        ));
    }
    if let Err(e) = std::fs::write(&o.out, csv) {
        eprintln!("probe: cannot write {}: {e}", o.out);
        return ExitCode::FAILURE;
    }
    let mut all: Vec<u64> = samples.iter().map(|s| s.latency_us).collect();
    all.sort_unstable();
    let first = samples.first().map_or(0, |s| s.due_unix_us);
    let last = samples.last().map_or(0, |s| s.due_unix_us);
    let span = last.saturating_sub(first) as f64 / 1e6;
    println!(
        "RESULT scope=all requests={} seconds={span:.1} p50_us={} p90_us={} p99_us={} p999_us={} max_us={}",
        all.len(),
        percentile(&all, 50.0),
        percentile(&all, 90.0),
        percentile(&all, 99.0),
        percentile(&all, 99.9),
        all.last().copied().unwrap_or(0),
    );
    let interval_us = o.interval * 1_000_000;
    let mut b = first.div_ceil(interval_us) * interval_us;
    while b <= last {
        let in_second = |s: &&Sample| s.due_unix_us >= b && s.due_unix_us < b + 1_000_000;
        let near: Vec<&Sample> = samples.iter().filter(in_second).collect();
        let worst = near.iter().max_by_key(|s| s.latency_us);
        let mut rest: Vec<u64> = samples
            .iter()
            .filter(|s| !in_second(s))
            .map(|s| s.latency_us)
            .collect();
        rest.sort_unstable();
        println!(
            "RESULT scope=boundary boundary_unix_s={} requests={} max_us={} max_at_ms_after={} \
             max_service_us={} rest_p99_us={} rest_max_us={}",
            b / 1_000_000,
            near.len(),
            worst.map_or(0, |s| s.latency_us),
            worst.map_or(0, |s| (s.due_unix_us - b) / 1000),
            near.iter().map(|s| s.service_us).max().unwrap_or(0),
            percentile(&rest, 99.0),
            rest.last().copied().unwrap_or(0),
        );
        b += interval_us;
    }
    let bad = samples.iter().filter(|s| s.status != 200).count();
    if bad > 0 {
        eprintln!("probe: {bad} answers were not 200");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

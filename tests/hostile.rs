//! Hostile clients over raw sockets against the real binary (README, *API*: malformed HTTP never stops the service): garbage,
//! oversized and endless heads, floods of parameters and headers, lying `Content-Length`s,
//! pipelines, stalls, trickles and crowds of half-open connections. Every case ends with the
//! same check: the process is alive, never panicked, and a fresh client still gets `200 ok`.
//! More than 64 headers, `Transfer-Encoding`, the 8 KiB head boundary and idle keep-alive
//! connections are in `malformed.rs`, not repeated here.

mod common;

use std::io::Write;
use std::net::Shutdown;
use std::thread::JoinHandle;
use std::time::Duration;

use common::{
    answered_or_closed, answered_then_closed, get_request, parse_responses, wait_until,
    write_in_background, Client, Response, Server,
};

/// Windows do not matter to most cases: a long interval keeps the log quiet.
const INTERVAL: u64 = 60;

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// Panics unless the process still runs, has not printed a panic (may catches a panicking
/// coroutine and keeps going, so the exit status alone would hide one) and serves a fresh
/// client `GET /api/verve/accept?id=1` with `200 ok`.
fn assert_unharmed(server: &mut Server) {
    server.assert_serves();
    server.accept_ok(1);
    let stderr = server.stderr();
    assert!(!stderr.contains("panicked"), "verve panicked: {stderr}");
}

/// Panics unless `r` is `status` with body `body`.
fn assert_answer(r: &Response, status: u16, body: &str, what: &str) {
    assert_eq!((r.status, r.text().as_str()), (status, body), "{what}");
}

/// Reproducible "random" bytes (xorshift64*): a failure can be replayed from its seed.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
        })
        .collect()
}

/// A field (`VmRSS`, `VmHWM`) of `/proc/<pid>/status`, in KiB.
fn memory_kib(pid: i32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("reading /proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().strip_suffix("kB")?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status:\n{status}"))
}

/// One unlabelled sample of `/metrics`, scraped on a fresh connection.
fn metric(server: &Server, name: &str) -> f64 {
    let page = server.get("/metrics").text();
    page.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no sample {name} in:\n{page}"))
}

/// Raises this process's soft descriptor limit to at least `want` (or the hard limit). A
/// server started afterwards inherits it, so both ends can hold hundreds of connections on
/// machines whose default soft limit is 1024.
fn raise_fd_limit(want: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        if lim.rlim_cur < want as libc::rlim_t {
            lim.rlim_cur = (want as libc::rlim_t).min(lim.rlim_max);
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
        }
    }
}

/// `GET /api/verve/accept?<query>` with a `Host` header.
fn accept_request(query: &str) -> String {
    get_request(&format!("/api/verve/accept?{query}"))
}

// ---------------------------------------------------------------------------------------
// Garbage and oversized heads
// ---------------------------------------------------------------------------------------

#[test]
fn garbage_bytes_are_refused_or_closed() {
    // A short idle timeout ends the garbage that happens to look like an unfinished head.
    let mut server = Server::start(INTERVAL, &["--idle-timeout", "2"]);
    let lines: [&[u8]; 8] = [
        b"\0\0\0\0\0\0\0\0\r\n\r\n",
        b"junk junk junk junk\r\n\r\n",
        b"GET\0/api/verve/accept?id=1 HTTP/1.1\r\n\r\n",
        b"GET /api/verve/accept?id=1 HTTP/1.1\0\r\nHost: x\r\n\r\n",
        b"GET /api/verve/accept?id=1 HTTP/1.1\r\nHost: x\0y\r\n\r\n",
        b"\xff\xfe\xfd GET / HTTP/1.1\r\n\r\n",
        b"G E T / H T T P / 1 . 1\r\n\r\n",
        b"GET /api/verve/accept?id=1 HTTP/1.1\r\n: empty name\r\n\r\n",
    ];
    for line in lines {
        let what = format!("{:?}", String::from_utf8_lossy(line));
        answered_then_closed(&server, line, 400, &what);
        assert_unharmed(&mut server);
    }
    for (seed, len) in [(1, 1), (2, 17), (3, 512), (4, 4096), (5, 9000), (6, 40_000)] {
        let mut blob = noise(seed, len);
        // NULs whatever the generator produced; the first byte stays random so that not
        // every blob fails on its first byte.
        blob[len / 2] = 0;
        blob[len - 1] = 0;
        let mut client = server.client();
        let writer = write_in_background(&client, blob);
        answered_or_closed(&mut client, &[400, 431], &format!("noise seed {seed}"));
        writer.join().unwrap();
        assert_unharmed(&mut server);
    }
    // A good request, then garbage on the same connection: the good one is still answered.
    let mut client = server.client();
    let mut bytes = accept_request("id=5").into_bytes();
    bytes.extend(noise(7, 300));
    bytes.extend_from_slice(b"\r\n\r\n");
    client.send(&bytes);
    assert_answer(&client.response(), 200, "ok", "request before the garbage");
    answered_or_closed(&mut client, &[400, 431], "garbage after a request");
    assert_unharmed(&mut server);
}

#[test]
fn a_200_kb_request_head_is_refused() {
    let mut server = Server::start(INTERVAL, &[]);
    let kb200 = 200 * 1024;
    let big_header = format!(
        "GET /api/verve/accept?id=1 HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(kb200)
    );
    let big_target = format!(
        "GET /api/verve/accept?id=1&pad={} HTTP/1.1\r\nHost: x\r\n\r\n",
        "b".repeat(kb200)
    );
    // Under 64 headers but 200 KB in all: the size limit must apply to the sum.
    let many_long_headers = format!(
        "GET /api/verve/accept?id=1 HTTP/1.1\r\n{}\r\n",
        (0..50)
            .map(|i| format!("X-H{i}: {}\r\n", "c".repeat(4096)))
            .collect::<String>()
    );
    for (what, request) in [
        ("a 200 KB header", big_header),
        ("a 200 KB request line", big_target),
        ("50 headers of 4 KB", many_long_headers),
    ] {
        assert!(request.len() >= kb200, "{what}");
        let mut client = server.client();
        let writer = write_in_background(&client, request.into_bytes());
        answered_or_closed(&mut client, &[431], what);
        writer.join().unwrap();
        assert_unharmed(&mut server);
    }
}

/// Clients that never finish their head, sending as fast as they can: each is cut off (431
/// or closed) after a bounded number of bytes, and the server's memory barely moves.
#[test]
fn endless_heads_are_cut_off_with_bounded_memory() {
    /// Per client. Far above what socket buffers and the server's lingering close can
    /// absorb (tens of MB), far below what would hurt the machine.
    const CAP: usize = 128 << 20;
    /// Allowed growth of the server's resident memory, generous on purpose: buffering even
    /// one client's stream would exceed it.
    const MARGIN_KIB: u64 = 64 * 1024;
    let mut server = Server::start(INTERVAL, &[]);
    assert_unharmed(&mut server);
    let pid = server.pid();
    let (rss_before, peak_before) = (memory_kib(pid, "VmRSS"), memory_kib(pid, "VmHWM"));
    let starts: [&[u8]; 4] = [
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Endless: ",
        b"GET /api/verve/accept?id=1&pad=",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Endless: ",
        b"GET /api/verve/accept?id=1&pad=",
    ];
    let clients: Vec<(Client, JoinHandle<usize>)> = starts
        .iter()
        .map(|start| {
            let client = server.client();
            let mut stream = client.stream.try_clone().unwrap();
            let start = start.to_vec();
            let writer = std::thread::spawn(move || {
                let chunk = [b'z'; 64 * 1024];
                let mut sent = 0;
                if stream.write_all(&start).is_err() {
                    return sent;
                }
                while sent < CAP {
                    match stream.write(&chunk) {
                        Ok(n) => sent += n,
                        Err(_) => break,
                    }
                }
                sent
            });
            (client, writer)
        })
        .collect();
    for (i, (mut client, writer)) in clients.into_iter().enumerate() {
        answered_or_closed(&mut client, &[431], &format!("endless client {i}"));
        let sent = writer.join().unwrap();
        assert!(
            sent < CAP,
            "endless client {i}: the server took {sent} bytes without closing"
        );
    }
    let (rss_after, peak_after) = (memory_kib(pid, "VmRSS"), memory_kib(pid, "VmHWM"));
    assert!(
        rss_after.saturating_sub(rss_before) < MARGIN_KIB,
        "VmRSS grew from {rss_before} kB to {rss_after} kB"
    );
    assert!(
        peak_after.saturating_sub(peak_before) < MARGIN_KIB,
        "VmHWM grew from {peak_before} kB to {peak_after} kB"
    );
    assert_unharmed(&mut server);
}

// ---------------------------------------------------------------------------------------
// Floods of parameters and headers, bad escapes
// ---------------------------------------------------------------------------------------

#[test]
fn three_thousand_query_parameters() {
    let mut server = Server::start(2, &[]);
    // `a=1&` 3000 times is about 12 KB: over the head limit whatever the parameters are.
    let long = accept_request(&format!("{}id=7", "a=1&".repeat(3000)));
    assert!(long.len() > 8 * 1024);
    answered_then_closed(&server, long.as_bytes(), 431, "3000 `a=1&` parameters");
    assert_unharmed(&mut server);

    // Short ones fit: the id must be found among them, with the right value. The window's
    // count proves the value: sending each id again plainly must not add to it.
    let (window, ()) = server.in_one_window(|attempt| {
        let base = 1_000 * i64::from(attempt) + 100;
        let (a, b, c, d, e) = (base + 1, base + 2, base + 3, base + 4, base + 5);
        let cases = [
            (format!("{}id={a}", "&".repeat(3000)), 200),
            (format!("{}id={b}", "a&".repeat(3000)), 200),
            (format!("id={c}&{}", "a&".repeat(3000)), 200),
            (
                format!("{}id={d}&{}", "a&".repeat(1500), "b&".repeat(1500)),
                200,
            ),
            (format!("{}id={e}", "=&".repeat(3000)), 200),
            (format!("{}&id={a}", "a".repeat(3000)), 200),
            // The flood does not hide a bad or a repeated id.
            (format!("{}id=x{a}", "a&".repeat(3000)), 400),
            (format!("id={a}&{}id={b}", "a&".repeat(3000)), 400),
            ("a&".repeat(3000), 400),
        ];
        let mut client = server.client();
        for (query, status) in &cases {
            let request = accept_request(query);
            assert!(request.len() <= 8 * 1024, "{} bytes", request.len());
            let body = if *status == 200 { "ok" } else { "failed" };
            let what = format!("{}...{}", &query[..10], &query[query.len() - 10..]);
            client.send(request.as_bytes());
            assert_answer(&client.response(), *status, body, &what);
        }
        for id in [a, b, c, d, e] {
            server.accept_ok(id);
        }
    });
    // Nothing else was sent in this window: five distinct ids among the floods, and the
    // same ids again, sent plainly, add none.
    let line = server.wait_for_window(window);
    assert_eq!(line.unique_count, 5, "{:?}", line.line);
    assert_unharmed(&mut server);
}

#[test]
fn malformed_percent_encoding_gets_400() {
    let mut server = Server::start(INTERVAL, &[]);
    let endpoint = "http%3A%2F%2Fhooks.example%2Fv";
    let queries = [
        "id=%".to_string(),
        "id=%3".to_string(),
        "id=%zz".to_string(),
        "id=1%".to_string(),
        "id=1%2".to_string(),
        // Well-formed, but the id takes no escapes at all.
        "id=%31".to_string(),
        "id=-%31".to_string(),
        format!("id=1&endpoint={endpoint}%"),
        format!("id=1&endpoint={endpoint}%2"),
        format!("id=1&endpoint={endpoint}%G0"),
        format!("id=1&endpoint={endpoint}%%41"),
        "id=1&endpoint=http%3A%2F%2F%zzhooks.example%2F".to_string(),
        // Well-formed escapes of what a URL may not hold.
        format!("id=1&endpoint={endpoint}%00"),
        format!("id=1&endpoint={endpoint}%20x"),
        format!("id=1&endpoint={endpoint}%0D%0AX-Injected:%201"),
        format!("id=1&endpoint={endpoint}%FF%FE"),
        format!("id=1&endpoint={endpoint}{}", "%41".repeat(2100)),
    ];
    // A bad query is an ordinary answer: the connection stays usable.
    let mut client = server.client();
    for query in &queries {
        let r = client.get(&format!("/api/verve/accept?{query}"));
        let what = &query[..query.len().min(80)];
        assert_answer(&r, 400, "failed", what);
        assert!(!r.says_close(), "{what}: {r:?}");
    }
    assert_answer(&client.get("/api/verve/accept?id=1"), 200, "ok", "after");
    assert_eq!(
        metric(&server, "verve_requests_total{outcome=\"bad_request\"}"),
        queries.len() as f64
    );
    assert_unharmed(&mut server);
}

// ---------------------------------------------------------------------------------------
// Content-Length and bodies
// ---------------------------------------------------------------------------------------

#[test]
fn bad_content_lengths_get_400_and_huge_ones_413() {
    let mut server = Server::start(INTERVAL, &[]);
    for header in [
        "Content-Length: abc",
        "Content-Length: 12abc",
        "Content-Length: -1",
        "Content-Length: -0",
        "Content-Length: ",
        "Content-Length: 5, 5",
        "Content-Length: 5\r\nContent-Length: 6",
        "Content-Length: 0\r\nContent-Length: 5",
    ] {
        let request =
            format!("GET /api/verve/accept?id=1 HTTP/1.1\r\nHost: x\r\n{header}\r\n\r\n12345");
        answered_then_closed(&server, request.as_bytes(), 400, header);
        assert_unharmed(&mut server);
    }
    for len in ["1000000000000000", "65537"] {
        let request = format!(
            "GET /api/verve/accept?id=1 HTTP/1.1\r\nHost: x\r\nContent-Length: {len}\r\n\r\n"
        );
        answered_then_closed(&server, request.as_bytes(), 413, len);
        assert_unharmed(&mut server);
    }
    // The same value twice is no contradiction.
    let mut client = server.client();
    client.send(
        b"GET /api/verve/accept?id=1 HTTP/1.1\r\nHost: x\r\n\
          Content-Length: 2\r\nContent-Length: 2\r\n\r\nzz",
    );
    assert_answer(&client.response(), 200, "ok", "repeated equal lengths");
    assert_unharmed(&mut server);
}

#[test]
fn bodies_on_get_are_skipped_and_the_next_request_answered() {
    let mut server = Server::start(INTERVAL, &[]);
    let with_body = |id: u32, body: &[u8]| {
        let mut r = format!(
            "GET /api/verve/accept?id={id} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        r.extend_from_slice(body);
        r
    };
    // Bodies that would be answered (404, or a second request) if they were not skipped.
    let fake_request = b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
    let mut binary = noise(11, 1000);
    binary[0] = 0;
    let mut stream = Vec::new();
    stream.extend(with_body(1, &fake_request));
    stream.extend(with_body(2, b""));
    stream.extend(with_body(3, &binary));
    stream.extend(with_body(4, b"x"));
    stream.extend(with_body(5, &vec![b'G'; 64 * 1024]));
    stream.extend(with_body(6, &fake_request.repeat(100)));
    stream.extend_from_slice(
        b"GET /api/verve/accept?id=7 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    // All in one write, then again in odd-sized pieces so bodies end mid-read.
    for chunk_len in [stream.len(), 777] {
        let mut client = server.client();
        for chunk in stream.chunks(chunk_len) {
            client.send(chunk);
        }
        let bytes = client.read_until_closed();
        let responses = parse_responses(&bytes);
        assert_eq!(responses.len(), 7, "{}", String::from_utf8_lossy(&bytes));
        for (i, r) in responses.iter().enumerate() {
            assert_answer(
                r,
                200,
                "ok",
                &format!("request {} (writes of {chunk_len})", i + 1),
            );
        }
    }
    assert_unharmed(&mut server);
}

// ---------------------------------------------------------------------------------------
// Connection handling
// ---------------------------------------------------------------------------------------

#[test]
fn http10_and_connection_close_end_the_connection_after_the_answer() {
    let mut server = Server::start(INTERVAL, &[]);
    // Each sends one more request behind the closing one: it must not be answered.
    let behind = accept_request("id=99");
    for (what, first) in [
        ("HTTP/1.0", "GET /api/verve/accept?id=1 HTTP/1.0\r\n\r\n"),
        (
            "HTTP/1.0 with close",
            "GET /api/verve/accept?id=1 HTTP/1.0\r\nConnection: close\r\n\r\n",
        ),
        (
            "Connection: close",
            "GET /api/verve/accept?id=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        ),
        (
            "connection: CLOSE among tokens",
            "GET /api/verve/accept?id=1 HTTP/1.1\r\nHost: x\r\nconnection: te, CLOSE\r\n\r\n",
        ),
    ] {
        let mut client = server.client();
        client.send(format!("{first}{behind}").as_bytes());
        let bytes = client.read_until_closed();
        let responses = parse_responses(&bytes);
        assert_eq!(
            responses.len(),
            1,
            "{what}: {}",
            String::from_utf8_lossy(&bytes)
        );
        assert_answer(&responses[0], 200, "ok", what);
        assert!(responses[0].says_close(), "{what}: {:?}", responses[0]);
    }
    // HTTP/1.0 with keep-alive stays open until a request without it.
    let mut client = server.client();
    for _ in 0..3 {
        client.send(b"GET /api/verve/accept?id=1 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
        let r = client.response();
        assert_answer(&r, 200, "ok", "HTTP/1.0 keep-alive");
        assert!(!r.says_close(), "{r:?}");
    }
    client.send(b"GET /api/verve/accept?id=1 HTTP/1.0\r\n\r\n");
    assert_answer(&client.response(), 200, "ok", "HTTP/1.0 last");
    client.expect_closed();
    assert_unharmed(&mut server);
}

#[test]
fn twenty_pipelined_requests_are_answered_in_order_and_counted() {
    let mut server = Server::start(2, &[]);
    let (window, distinct) = server.in_one_window(|attempt| {
        let base = 1_000 * i64::from(attempt);
        let mut batch = String::new();
        let mut expected = Vec::new();
        let mut ids = std::collections::HashSet::new();
        for i in 0..20 {
            let (target, status, body) = match i {
                4 | 13 => (format!("/api/verve/accept?id=bad{i}"), 400, "failed"),
                7 => ("/nope".to_string(), 404, "failed"),
                10 => ("/healthz".to_string(), 200, "ok"),
                _ => {
                    // Repeats on purpose: the count must deduplicate them.
                    let id = base + i % 6;
                    ids.insert(id);
                    (format!("/api/verve/accept?id={id}"), 200, "ok")
                }
            };
            batch.push_str(&get_request(&target));
            expected.push((target, status, body));
        }
        let mut client = server.client();
        client.send(batch.as_bytes());
        for (target, status, body) in &expected {
            let r = client.response();
            assert_answer(&r, *status, body, target);
            assert!(!r.says_close(), "{target}: {r:?}");
        }
        ids.len() as u64
    });
    // Nothing else was sent in this window (see `in_one_window`).
    let line = server.wait_for_window(window);
    assert_eq!(line.unique_count, distinct, "{:?}", line.line);
    assert_unharmed(&mut server);
}

#[test]
fn a_request_in_one_byte_writes_is_answered() {
    let mut server = Server::start(INTERVAL, &[]);
    let mut client = server.client();
    let mut bytes = accept_request("id=1").into_bytes();
    bytes.extend_from_slice(
        b"GET /api/verve/accept?id=2 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
    );
    bytes.extend(accept_request("id=x").into_bytes());
    for &b in &bytes {
        client.send(&[b]);
        // A pause gives the server a chance to read each byte on its own.
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_answer(&client.response(), 200, "ok", "first");
    assert_answer(&client.response(), 200, "ok", "second, with a body");
    assert_answer(&client.response(), 400, "failed", "third, a bad id");
    assert_answer(&client.get("/healthz"), 200, "ok", "after");
    assert_unharmed(&mut server);
}

/// Hundreds of connections that hold a slot without finishing anything; the server must
/// keep them all (they are real connections, not refused ones) and still serve others.
#[test]
fn five_hundred_half_open_connections_do_not_stop_others() {
    const HELD: usize = 500;
    raise_fd_limit(4 * HELD as u64);
    let mut server = Server::start(INTERVAL, &[]);
    let mut held = Vec::with_capacity(HELD);
    for i in 0..HELD {
        let mut client = server.client();
        match i % 4 {
            0 => {}
            1 => client.send(b"GET /api/verve/accept?id=1 HTTP/1.1\r\nHo"),
            2 => client.send(b"GET /api/verve/acc"),
            _ => client.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc"),
        }
        held.push(client);
    }
    // Every one of them reached the server (plus the scraping connection itself).
    wait_until("the server to hold every connection", || {
        (metric(&server, "verve_open_connections") > HELD as f64).then_some(())
    });
    assert_unharmed(&mut server);
    let mut client = server.client();
    for id in 0..20 {
        assert_answer(
            &client.get(&format!("/api/verve/accept?id={id}")),
            200,
            "ok",
            "a normal keep-alive client",
        );
    }
    // Abandoning them frees their slots.
    for client in &held {
        let _ = client.stream.shutdown(Shutdown::Both);
    }
    drop(held);
    drop(client);
    wait_until("the abandoned connections to be closed", || {
        (metric(&server, "verve_open_connections") <= 1.0).then_some(())
    });
    assert_unharmed(&mut server);
}

#[test]
fn a_slowloris_crowd_does_not_stop_others() {
    const SLOW: usize = 200;
    raise_fd_limit(4 * SLOW as u64);
    let mut server = Server::start(INTERVAL, &[]);
    let mut slow: Vec<Client> = (0..SLOW)
        .map(|i| {
            let mut client = server.client();
            client.send(
                format!("GET /api/verve/accept?id={i} HTTP/1.1\r\nHost: x\r\nX-Slow: ").as_bytes(),
            );
            client
        })
        .collect();
    let mut normal = server.client();
    for round in 0..10 {
        for client in &mut slow {
            client.send(b"s");
        }
        assert_answer(
            &normal.get(&format!("/api/verve/accept?id={round}")),
            200,
            "ok",
            &format!("round {round}"),
        );
        assert_unharmed(&mut server);
        std::thread::sleep(Duration::from_millis(50));
    }
    // The slow ones were held, not dropped: finishing their heads gets them answered.
    for (i, client) in slow.iter_mut().enumerate() {
        client.send(b"\r\n\r\n");
        assert_answer(&client.response(), 200, "ok", &format!("slow client {i}"));
    }
    assert_unharmed(&mut server);
}

#[test]
fn clients_that_stall_mid_request_are_closed() {
    let mut server = Server::start(INTERVAL, &["--idle-timeout", "1"]);
    let mut half_head = server.client();
    half_head.send(b"GET /api/verve/accept?id=1 HTTP/1.1\r\nHost: x\r\nX-Half");
    let mut half_body = server.client();
    half_body
        .send(b"GET /api/verve/accept?id=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n123");
    // Others are served while those stall.
    assert_unharmed(&mut server);
    answered_or_closed(&mut half_head, &[400, 408], "stalled mid-head");
    // The head was complete, so its answer may come before the close.
    let bytes = half_body.read_until_closed();
    let responses = parse_responses(&bytes);
    assert!(
        responses.len() <= 1 && responses.iter().all(|r| r.status == 200),
        "stalled mid-body: {:?}",
        String::from_utf8_lossy(&bytes)
    );
    assert_unharmed(&mut server);
}

/// Writes `first` at once, then `rest` one byte every 200 ms (never silent for a whole
/// idle timeout), stopping at the first failed write or after a minute, whatever the server
/// does.
fn trickle(
    client: &Client,
    first: &[u8],
    rest: impl Fn(usize) -> u8 + Send + 'static,
) -> JoinHandle<()> {
    let mut stream = client.stream.try_clone().unwrap();
    let first = first.to_vec();
    std::thread::spawn(move || {
        if stream.write_all(&first).is_err() {
            return;
        }
        for i in 0..300 {
            if stream.write_all(&[rest(i)]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    })
}

/// Only the limit on how long one request may take to arrive ends these.
#[test]
fn clients_trickling_a_byte_every_200_ms_are_closed() {
    let mut server = Server::start(INTERVAL, &["--idle-timeout", "1"]);
    let mut head = server.client();
    let head_trickler = trickle(&head, b"", |i| {
        let start = b"GET /api/verve/accept?id=1 HTTP/1.1\r\nHost: x\r\nX-Slow: ";
        start.get(i).copied().unwrap_or(b's')
    });
    let mut body = server.client();
    let body_trickler = trickle(
        &body,
        b"GET /api/verve/accept?id=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n",
        |_| b'b',
    );
    assert_unharmed(&mut server);
    answered_or_closed(&mut head, &[400, 408], "trickled head");
    // The head was complete, so its answer may come before the close.
    let bytes = body.read_until_closed();
    let responses = parse_responses(&bytes);
    assert!(
        responses.len() <= 1 && responses.iter().all(|r| r.status == 200),
        "trickled body: {:?}",
        String::from_utf8_lossy(&bytes)
    );
    head_trickler.join().unwrap();
    body_trickler.join().unwrap();
    assert_unharmed(&mut server);
}

/// The other side of the limit above: a client whose every write ends in the middle of a
/// request, but completes one each time, is making progress and must not be cut off, however
/// long it goes on (it was, after the idle timeout, losing the requests in flight).
#[test]
fn a_steady_pipeline_split_mid_request_is_not_cut_off() {
    let mut server = Server::start(INTERVAL, &["--idle-timeout", "2"]);
    let mut client = server.client();
    let request = accept_request("id=3").into_bytes();
    let (front, back) = request.split_at(request.len() / 2);
    client.send(front);
    // Five seconds of it at least: well past the idle timeout.
    for i in 0..50 {
        client.send(&[back, front].concat());
        let r = client
            .try_response()
            .unwrap_or_else(|e| panic!("write {i}: no answer: {e:?}"));
        assert_answer(&r, 200, "ok", &format!("write {i}"));
        assert!(!r.says_close(), "write {i}: {r:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    client.send(back);
    assert_answer(&client.response(), 200, "ok", "the last one");
    assert_unharmed(&mut server);
}

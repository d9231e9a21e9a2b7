//! Malformed, oversized, slow and abandoned requests (README, *API*: malformed HTTP never stops the service): each is
//! answered 400/413/431 or closed, and the server goes on serving everyone else.

mod common;

use std::io::Write;
use std::time::Duration;

use common::{
    answered_or_closed, answered_then_closed, parse_responses, write_in_background, Server,
};

const INTERVAL: u64 = 60;

#[test]
fn garbage_is_refused_and_the_server_goes_on() {
    let mut server = Server::start(INTERVAL, &[]);
    let garbage: [&[u8]; 6] = [
        b"NOT HTTP AT ALL\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\x00\xff\r\n\r\n",
        &[0u8; 64],
        b"GET /api/verve/accept?id=1 HTTP/9.9\r\n\r\n",
        b"GET /api/verve/accept?id=1\r\n\r\n",
        b"GET /api/verve/accept?id=1 HTTP/1.1\r\nBad Header Name: x\r\n\r\n",
    ];
    for g in garbage {
        let mut client = server.client();
        client.send(g);
        answered_or_closed(
            &mut client,
            &[400],
            &format!("{:?}", String::from_utf8_lossy(g)),
        );
        server.assert_serves();
    }
    // Garbage after a good request on a keep-alive connection: the good one is answered.
    let mut client = server.client();
    client.send(b"GET /api/verve/accept?id=5 HTTP/1.1\r\nHost: x\r\n\r\n\x01\x02garbage\r\n\r\n");
    let r = client.response();
    assert_eq!((r.status, r.text()), (200, "ok".into()));
    answered_or_closed(&mut client, &[400], "garbage after a request");
    server.assert_serves();
}

/// A client that writes its whole oversized request before it reads still gets the 431: the
/// server drains what the client sends after the answer instead of resetting the connection
/// (a reset can destroy the unread answer).
#[test]
fn an_oversized_head_sent_in_full_before_reading_still_gets_its_431() {
    let mut server = Server::start(INTERVAL, &[]);
    let mut request = b"GET /api/verve/accept?id=1 HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
    request.extend(std::iter::repeat_n(b'a', 100 * 1024));
    request.extend_from_slice(b"\r\n\r\n");
    let mut client = server.client();
    client.send(&request);
    client.send(b"GET /api/verve/accept?id=2 HTTP/1.1\r\nHost: x\r\n\r\n");
    // Read only once the server has closed its side, as it does right after the 431: had it
    // closed the socket with our bytes unread instead of draining them, the kernel would
    // have sent a reset, which discards the unread answer.
    wait_for_peer_close(&client.stream);
    let response = client.response();
    assert_eq!(
        (response.status, response.text()),
        (431, "failed".to_string())
    );
    assert!(response.says_close());
    server.assert_serves();
}

/// Waits until the peer has closed its side of `stream` (or reset it): `poll` with
/// `POLLRDHUP`, which reads nothing.
fn wait_for_peer_close(stream: &std::net::TcpStream) {
    use std::os::fd::AsRawFd;
    let mut fd = libc::pollfd {
        fd: stream.as_raw_fd(),
        events: libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: `fd` is one valid pollfd for the duration of the call, and the descriptor is
    // owned by `stream`, which outlives it.
    let ready = unsafe { libc::poll(&mut fd, 1, 10_000) };
    assert_eq!(ready, 1, "the server did not close its side within 10 s");
}

/// A request whose head (request line to blank line) is exactly `len` bytes.
fn head_of(len: usize) -> Vec<u8> {
    let start = "GET /api/verve/accept?id=1 HTTP/1.1\r\nHost: x\r\nX-Pad: ";
    let end = "\r\n\r\n";
    let pad = len - start.len() - end.len();
    format!("{start}{}{end}", "p".repeat(pad)).into_bytes()
}

#[test]
fn request_heads_up_to_8_kib_are_served_and_longer_ones_refused() {
    let mut server = Server::start(INTERVAL, &[]);
    let mut client = server.client();
    for len in [8 * 1024 - 1, 8 * 1024] {
        let head = head_of(len);
        assert_eq!(head.len(), len);
        client.send(&head);
        let r = client.response();
        assert_eq!((r.status, r.text()), (200, "ok".into()), "{len}-byte head");
    }
    // Two of the largest heads pipelined in one write.
    client.send(&[head_of(8 * 1024), head_of(8 * 1024)].concat());
    for _ in 0..2 {
        assert_eq!(client.response().status, 200);
    }
    for len in [8 * 1024 + 1, 12 * 1024, 16 * 1024, 17 * 1024] {
        let mut client = server.client();
        let writer = write_in_background(&client, head_of(len));
        answered_or_closed(&mut client, &[431], &format!("{len}-byte head"));
        writer.join().unwrap();
        server.assert_serves();
    }
}

#[test]
fn more_than_64_headers_get_431() {
    let mut server = Server::start(INTERVAL, &[]);
    let request = |headers: usize| {
        let mut r = String::from("GET /api/verve/accept?id=1 HTTP/1.1\r\n");
        for i in 0..headers {
            r.push_str(&format!("X-H{i}: v\r\n"));
        }
        r.push_str("\r\n");
        r.into_bytes()
    };
    // 64 headers are fine.
    let mut client = server.client();
    client.send(&request(64));
    let r = client.response();
    assert_eq!((r.status, r.text()), (200, "ok".into()));
    for n in [65, 70, 200] {
        answered_then_closed(&server, &request(n), 431, &format!("{n} headers"));
        server.assert_serves();
    }
    // The same in the tiniest form the grammar allows.
    let tiny = format!("GET /healthz HTTP/1.1\r\n{}\r\n", "a:\r\n".repeat(200));
    answered_then_closed(&server, tiny.as_bytes(), 431, "200 empty headers");
    server.assert_serves();
}

#[test]
fn bad_content_length_and_transfer_encoding_get_400() {
    let mut server = Server::start(INTERVAL, &[]);
    for header in [
        "Content-Length: abc",
        "Content-Length: -1",
        "Content-Length: +5",
        "Content-Length: 1e3",
        "Content-Length: 0x10",
        "Content-Length: 5 5",
        "Content-Length: 5\r\nContent-Length: 6",
        "Transfer-Encoding: chunked",
        "Transfer-Encoding: gzip, chunked",
    ] {
        let request =
            format!("GET /api/verve/accept?id=1 HTTP/1.1\r\nHost: x\r\n{header}\r\n\r\n12345");
        answered_then_closed(&server, request.as_bytes(), 400, header);
        server.assert_serves();
    }
}

#[test]
fn a_huge_content_length_gets_413() {
    let mut server = Server::start(INTERVAL, &[]);
    for len in [64 * 1024 + 1, 100_000, 10_000_000_000u64] {
        let request = format!(
            "GET /api/verve/accept?id=1 HTTP/1.1\r\nHost: x\r\nContent-Length: {len}\r\n\r\n"
        );
        answered_then_closed(&server, request.as_bytes(), 413, &format!("length {len}"));
        server.assert_serves();
    }
}

#[test]
fn a_small_body_on_get_is_skipped_and_the_next_request_answered() {
    let mut server = Server::start(INTERVAL, &[]);
    let mut client = server.client();
    // The body looks like a request: it must be skipped, not answered (it would be a 404).
    let body = "GET /nope HTTP/1.1\r\n\r\n";
    let request = format!(
        "GET /api/verve/accept?id=1 HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}\
         GET /api/verve/accept?id=2 HTTP/1.1\r\nHost: x\r\n\r\n",
        body.len()
    );
    client.send(request.as_bytes());
    for _ in 0..2 {
        let r = client.response();
        assert_eq!((r.status, r.text()), (200, "ok".into()));
    }
    // The largest body allowed (64 KiB), split over several writes, then another request.
    let mut big =
        b"GET /api/verve/accept?id=3 HTTP/1.1\r\nHost: x\r\nContent-Length: 65536\r\n\r\n".to_vec();
    big.extend(std::iter::repeat_n(b'G', 65536));
    big.extend_from_slice(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    for chunk in big.chunks(10_000) {
        client.send(chunk);
    }
    let r = client.response();
    assert_eq!((r.status, r.text()), (200, "ok".into()));
    let r = client.response();
    assert_eq!((r.status, r.text()), (200, "ok".into()));
    server.assert_serves();
}

#[test]
fn idle_connections_are_closed_after_the_idle_timeout() {
    let mut server = Server::start(INTERVAL, &["--idle-timeout", "1"]);
    // Silent from the start.
    let mut silent = server.client();
    // Silent after one request.
    let mut after_one = server.client();
    let r = after_one.get("/healthz");
    assert_eq!(r.status, 200);
    // Silent in the middle of a request head.
    let mut mid_request = server.client();
    mid_request.send(b"GET /api/verve/acc");
    // Others are served meanwhile.
    server.assert_serves();
    silent.expect_closed();
    after_one.expect_closed();
    answered_or_closed(&mut mid_request, &[400, 408], "idle mid-request");
    // In the middle of a body.
    let mut mid_body = server.client();
    mid_body.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n12345");
    // Answering before the body is complete is allowed, not required.
    let bytes = mid_body.read_until_closed();
    let responses = parse_responses(&bytes);
    assert!(
        responses.len() <= 1 && responses.iter().all(|r| r.status == 200),
        "idle mid-body: {:?}",
        String::from_utf8_lossy(&bytes)
    );
    server.assert_serves();
}

#[test]
fn a_client_trickling_its_request_is_closed() {
    let mut server = Server::start(INTERVAL, &["--idle-timeout", "1"]);
    let mut client = server.client();
    let mut stream = client.stream.try_clone().unwrap();
    // One byte every 100 ms: never silent for a whole second, never finished. Bounded at
    // 600 bytes (a minute) so the test stops by itself.
    let trickler = std::thread::spawn(move || {
        let request = b"GET /api/verve/accept?id=1 HTTP/1.1\r\nHost: x\r\nX-Slow: ";
        for i in 0..600 {
            let byte = request.get(i).copied().unwrap_or(b's');
            if stream.write_all(&[byte]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    server.assert_serves();
    answered_or_closed(&mut client, &[400, 408], "trickled request");
    trickler.join().unwrap();
    server.assert_serves();
}

#[test]
fn many_idle_and_abandoned_connections_do_not_block_others() {
    let mut server = Server::start(INTERVAL, &[]);
    let mut held = Vec::new();
    for i in 0..300 {
        let mut client = server.client();
        match i % 3 {
            // Connected, silent.
            0 => {}
            // Half a request, then nothing.
            1 => client.send(b"GET /api/verve/accept?id=1 HTTP/1.1\r\nHo"),
            // One request answered, then idle on keep-alive.
            _ => assert_eq!(client.get("/healthz").status, 200),
        }
        held.push(client);
    }
    server.assert_serves();
    // Abandon a third of them abruptly.
    for client in held.iter().step_by(3) {
        let _ = client.stream.shutdown(std::net::Shutdown::Both);
    }
    server.assert_serves();
    // The rest still work (the half-requests complete now).
    for (i, client) in held.iter_mut().enumerate() {
        if i % 3 == 1 {
            client.send(b"st: x\r\n\r\n");
            let r = client.response();
            assert_eq!((r.status, r.text()), (200, "ok".into()), "connection {i}");
        }
    }
}

//! The HTTP front with well-formed requests (README, *API*): pipelining, keep-alive and
//! `Connection: close`, HTTP/1.0, routing statuses, `/healthz` and `/metrics`.

mod common;

use std::collections::HashMap;

use common::{get_request, Server};

/// Windows do not matter here: a long interval keeps the log quiet.
const INTERVAL: u64 = 60;

#[test]
fn pipelined_requests_are_all_answered_in_order() {
    let server = Server::start(INTERVAL, &[]);
    let mut client = server.client();
    let mut batch = String::new();
    let mut expected = Vec::new();
    for i in 0..20 {
        let (target, status, body) = match i {
            3 | 11 => (format!("/api/verve/accept?id=x{i}"), 400, "failed"),
            6 | 17 => ("/nope".to_string(), 404, "failed"),
            10 => ("/healthz".to_string(), 200, "ok"),
            _ => (format!("/api/verve/accept?id={i}"), 200, "ok"),
        };
        batch.push_str(&get_request(&target));
        expected.push((target, status, body));
    }
    // All twenty in one write.
    client.send(batch.as_bytes());
    for (target, status, body) in &expected {
        let r = client.response();
        assert_eq!((r.status, r.text().as_str()), (*status, *body), "{target}");
        assert!(!r.says_close(), "{target}: {r:?}");
    }
    // The same batch again, dribbled a few bytes per write: still all answered, in order.
    for chunk in batch.as_bytes().chunks(7) {
        client.send(chunk);
    }
    for (target, status, body) in &expected {
        let r = client.response();
        assert_eq!((r.status, r.text().as_str()), (*status, *body), "{target}");
    }
    // And the connection is still usable.
    let r = client.get("/api/verve/accept?id=1");
    assert_eq!((r.status, r.text()), (200, "ok".into()));
}

#[test]
fn a_thousand_pipelined_requests_larger_than_any_buffer_are_all_answered() {
    let server = Server::start(INTERVAL, &[]);
    let mut client = server.client();
    let batch: String = (0..1000)
        .map(|i| {
            if i % 10 == 9 {
                get_request(&format!("/api/verve/accept?id=bad{i}"))
            } else {
                get_request(&format!(
                    "/api/verve/accept?id={i}&pad={}",
                    "x".repeat(i % 50)
                ))
            }
        })
        .collect();
    assert!(batch.len() > 64 * 1024);
    client.send(batch.as_bytes());
    for i in 0..1000 {
        let r = client.response();
        let expected = if i % 10 == 9 { 400 } else { 200 };
        assert_eq!(r.status, expected, "response {i}");
    }
    let page = client.get("/metrics").text();
    assert_eq!(
        samples(&page)["verve_requests_total{outcome=\"ok\"}"],
        900.0
    );
    assert_eq!(
        samples(&page)["verve_requests_total{outcome=\"bad_request\"}"],
        100.0
    );
}

#[test]
fn http10_closes_unless_keep_alive_is_asked_for() {
    let server = Server::start(INTERVAL, &[]);

    let mut client = server.client();
    client.send(b"GET /api/verve/accept?id=1 HTTP/1.0\r\n\r\n");
    let r = client.response();
    assert_eq!((r.status, r.text()), (200, "ok".into()));
    client.expect_closed();

    let mut client = server.client();
    client.send(b"GET /api/verve/accept?id=2 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    let r = client.response();
    assert_eq!((r.status, r.text()), (200, "ok".into()));
    assert!(
        r.header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("keep-alive")),
        "{r:?}"
    );
    client.send(b"GET /healthz HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n");
    let r = client.response();
    assert_eq!((r.status, r.text()), (200, "ok".into()));
    client.send(b"GET /healthz HTTP/1.0\r\n\r\n");
    let r = client.response();
    assert_eq!((r.status, r.text()), (200, "ok".into()));
    client.expect_closed();
}

#[test]
fn connection_close_is_honoured() {
    let server = Server::start(INTERVAL, &[]);
    let mut client = server.client();
    let r = client.get("/api/verve/accept?id=1");
    assert_eq!((r.status, r.text()), (200, "ok".into()));
    // A request asking to close, and one more behind it that must not be answered.
    client.send(
        b"GET /api/verve/accept?id=2 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n\
          GET /api/verve/accept?id=3 HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    let r = client.response();
    assert_eq!((r.status, r.text()), (200, "ok".into()));
    assert!(
        r.says_close(),
        "response must carry Connection: close: {r:?}"
    );
    client.expect_closed();

    // Header names and values are case-insensitive.
    for header in [
        "connection: close",
        "CONNECTION: Close",
        "Connection: foo, close",
    ] {
        let mut client = server.client();
        client.send(format!("GET /healthz HTTP/1.1\r\nHost: x\r\n{header}\r\n\r\n").as_bytes());
        let r = client.response();
        assert_eq!((r.status, r.text()), (200, "ok".into()), "{header}");
        assert!(r.says_close(), "{header}: {r:?}");
        client.expect_closed();
    }

    // Also on an error answer.
    let mut client = server.client();
    client.send(b"GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let r = client.response();
    assert_eq!((r.status, r.text()), (404, "failed".into()));
    assert!(r.says_close(), "{r:?}");
    client.expect_closed();
}

#[test]
fn routing_answers_404_and_405_with_failed() {
    let server = Server::start(INTERVAL, &[]);
    let mut client = server.client();
    for target in [
        "/index.html",
        "/nope",
        "/api/verve",
        "/api/verve/accept/",
        "/api/verve/accept/x?id=1",
        "/api/verve/acceptx?id=1",
        "/API/VERVE/ACCEPT?id=1",
        "/healthz/x",
        "/metricsx",
    ] {
        let r = client.get(target);
        assert_eq!((r.status, r.text()), (404, "failed".into()), "{target}");
        assert!(!r.says_close(), "a 404 keeps the connection: {target}");
    }
    for method in ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"] {
        for target in [
            "/api/verve/accept?id=1",
            "/healthz",
            "/metrics",
            "/api/verve/windows",
            "/",
        ] {
            client.send(
                format!("{method} {target} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
                    .as_bytes(),
            );
            let r = client.response();
            assert_eq!(
                (r.status, r.text()),
                (405, "failed".into()),
                "{method} {target}"
            );
            let allow = r.header("allow").unwrap_or_default();
            assert!(allow.contains("GET"), "{method} {target}: Allow {allow:?}");
        }
    }
    // A POST with a body, then a GET behind it on the same connection.
    client.send(
        b"POST /api/verve/accept?id=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
          GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    assert_eq!(client.response().status, 405);
    let r = client.response();
    assert_eq!((r.status, r.text()), (200, "ok".into()));
}

#[test]
fn a_pipeline_of_heavy_pages_is_answered_in_full_across_turns() {
    // A connection stops answering after 128 KiB of answers, gives way to the others and
    // answers the requests left in its buffer before it reads more. 1000 requests (more than
    // a read buffer holds), nine in ten a status page of ~8 KB: many such turns, and every
    // request answered once, in order, the accept requests among them counted.
    let server = Server::start(INTERVAL, &[]);
    let mut client = server.client();
    let batch: String = (0..1000)
        .map(|i| {
            if i % 10 == 9 {
                get_request(&format!("/api/verve/accept?id={i}"))
            } else {
                get_request("/")
            }
        })
        .collect();
    client.send(batch.as_bytes());
    let mut page_bytes = 0;
    for i in 0..1000 {
        let r = client.response();
        assert_eq!(r.status, 200, "response {i}");
        if i % 10 == 9 {
            assert_eq!(r.text(), "ok", "response {i}");
        } else {
            assert!(r.text().contains("</html>"), "response {i}: {r:?}");
            page_bytes += r.text().len();
        }
    }
    assert!(
        page_bytes > 16 * 128 * 1024,
        "{page_bytes} bytes of pages: too few turns"
    );
    let page = client.get("/metrics").text();
    assert_eq!(
        samples(&page)["verve_requests_total{outcome=\"ok\"}"],
        100.0
    );
}

#[test]
fn window_unique_ids_gauge_follows_the_open_window() {
    // The gauge is merged about once a second: windows long enough to see it settle.
    let server = Server::start(5, &[]);
    let (_, unique) = server.in_one_window(|attempt| {
        let base = i64::from(attempt) * 100;
        let mut client = server.client();
        for id in [base + 1, base + 2, base + 2, base + 3, base + 1] {
            assert_eq!(
                client.get(&format!("/api/verve/accept?id={id}")).status,
                200
            );
        }
        common::wait_until("the gauge to count the window's 3 ids", || {
            let unique = samples(&client.get("/metrics").text())["verve_window_unique_ids"];
            (unique == 3.0).then_some(unique)
        })
    });
    assert_eq!(unique, 3.0);
}

#[test]
fn healthz_answers_ok() {
    let server = Server::start(INTERVAL, &[]);
    let mut client = server.client();
    for _ in 0..3 {
        let r = client.get("/healthz");
        assert_eq!((r.status, r.text()), (200, "ok".into()));
        assert_eq!(r.version, "HTTP/1.1");
        assert!(r
            .header("content-type")
            .is_some_and(|v| v.starts_with("text/plain")));
    }
}

/// Parses the samples of a Prometheus text page: `name{labels}` to value.
fn samples(page: &str) -> HashMap<String, f64> {
    page.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (key, value) = l.rsplit_once(' ').unwrap_or_else(|| panic!("{l:?}"));
            let value = value.parse().unwrap_or_else(|_| panic!("value of {l:?}"));
            (key.to_string(), value)
        })
        .collect()
}

#[test]
fn metrics_lists_the_documented_metrics_and_counts_outcomes() {
    let server = Server::start(INTERVAL, &[]);
    let mut client = server.client();
    for id in [1, 2, 3, 2, -5] {
        let r = client.get(&format!("/api/verve/accept?id={id}"));
        assert_eq!(r.status, 200);
    }
    for target in [
        "/api/verve/accept?id=+1",
        "/api/verve/accept",
        "/api/verve/accept?id=1&id=2",
    ] {
        assert_eq!(client.get(target).status, 400);
    }
    // Neither of these is an accept request.
    assert_eq!(client.get("/healthz").status, 200);
    assert_eq!(client.get("/nope").status, 404);

    let r = client.get("/metrics");
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .is_some_and(|v| v.starts_with("text/plain")),
        "{r:?}"
    );
    let page = r.text();
    let s = samples(&page);
    let get = |key: &str| -> f64 {
        *s.get(key)
            .unwrap_or_else(|| panic!("no sample {key} in:\n{page}"))
    };
    assert_eq!(get("verve_requests_total{outcome=\"ok\"}"), 5.0);
    assert_eq!(get("verve_requests_total{outcome=\"bad_request\"}"), 3.0);
    assert_eq!(get("verve_requests_total{outcome=\"unavailable\"}"), 0.0);
    assert_eq!(get("verve_requests_total{outcome=\"error\"}"), 0.0);
    for result in ["success", "http_error", "failed", "denied", "dropped"] {
        assert_eq!(
            get(&format!(
                "verve_endpoint_calls_total{{result=\"{result}\"}}"
            )),
            0.0
        );
    }
    let unique = get("verve_window_unique_ids");
    assert!((0.0..=4.0).contains(&unique), "{unique}");
    for name in [
        "verve_windows_reported_total",
        "verve_redis_errors_total",
        "verve_kafka_errors_total",
        "verve_backlog_windows",
    ] {
        assert!(get(name) >= 0.0);
    }
    for (family, kind) in [
        ("verve_requests_total", "counter"),
        ("verve_window_unique_ids", "gauge"),
        ("verve_windows_reported_total", "counter"),
        ("verve_endpoint_calls_total", "counter"),
        ("verve_redis_errors_total", "counter"),
        ("verve_kafka_errors_total", "counter"),
        ("verve_kafka_records_total", "counter"),
        ("verve_backlog_windows", "gauge"),
    ] {
        assert!(
            page.lines().any(|l| l == format!("# TYPE {family} {kind}")),
            "# TYPE {family} {kind} missing:\n{page}"
        );
    }
    // Scrapes are not accept requests either.
    let page = client.get("/metrics").text();
    assert_eq!(samples(&page)["verve_requests_total{outcome=\"ok\"}"], 5.0);
}

/// A HEAD answer has the headers of a GET answer but no body (RFC 9110, HEAD): the next
/// answer on the connection starts right after its blank line. Absolute-form targets
/// (`GET http://host/path`) are routed like origin-form ones.
#[test]
fn head_answers_carry_no_body_and_absolute_form_targets_are_served() {
    let server = Server::start(INTERVAL, &[]);
    let mut client = server.client();
    client.send(
        b"HEAD /api/verve/accept?id=1 HTTP/1.1\r\nHost: x\r\n\r\n\
          GET http://x/api/verve/accept?id=5 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    let text = String::from_utf8(client.read_until_closed()).unwrap();
    let (head, rest) = text
        .split_once("\r\n\r\n")
        .expect("a complete first answer");
    assert!(head.starts_with("HTTP/1.1 405 "), "{head}");
    assert!(head.contains("\r\nContent-Length: 6"), "{head}");
    assert!(rest.starts_with("HTTP/1.1 200 OK\r\n"), "{rest:?}");
    assert!(rest.ends_with("\r\n\r\nok"), "{rest:?}");
}

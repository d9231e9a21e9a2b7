//! Endpoint callbacks into a real HTTP receiver on loopback (docs/callbacks.md): the GET and POST
//! forms, one call per distinct endpoint and window, non-2xx answers and redirects, timeouts,
//! the allow-list, the refusal of the host's own network (loopback included, so every test
//! that calls a receiver allows 127.0.0.1 explicitly), the per-window endpoint limit, and
//! fairness: a host that never answers does not keep the others from being called.

mod common;

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{encode, rfc3339_secs, wait_until, Receiver, Reply, Server};

/// The receivers listen on 127.0.0.1, which is only called when an address entry allows it.
const ALLOW_LOOPBACK: [&str; 2] = ["--endpoint-allow", "127.0.0.1"];

/// `/api/verve/accept?id=<id>&endpoint=<url, percent-encoded>`.
fn accept_with(id: i64, endpoint: &str) -> String {
    format!("/api/verve/accept?id={id}&endpoint={}", encode(endpoint))
}

/// True when `line` is the endpoint line of `window_start` for `url` and has `token`.
fn endpoint_line(line: &str, window_start: u64, url: &str, token: &str) -> bool {
    let tokens: Vec<&str> = line.split(' ').collect();
    tokens.get(2) == Some(&"endpoint")
        && tokens.contains(&format!("window_start={}", rfc3339_secs(window_start)).as_str())
        && tokens.contains(&format!("endpoint={url}").as_str())
        && (token.is_empty() || tokens.contains(&token))
}

#[test]
fn get_callback_carries_the_count_once_per_distinct_endpoint() {
    let receiver = Receiver::start(|_| Reply::status(200));
    let server = Server::start(1, &ALLOW_LOOPBACK);
    let hook = receiver.url("/hook");
    let with_query = receiver.url("/q?a=1&b=x");
    // Other spellings of the same endpoint: upper-case scheme, a fragment.
    let hook_variants = [
        hook.clone(),
        hook.replace("http://", "HTTP://"),
        format!("{hook}#frag"),
    ];
    let (window, ()) = server.in_one_window(|attempt| {
        let base = i64::from(attempt) * 100;
        let mut a = server.client();
        let mut b = server.client();
        for i in 0..30 {
            let client = if i % 2 == 0 { &mut a } else { &mut b };
            let endpoint = &hook_variants[i % hook_variants.len()];
            let r = client.get(&accept_with(base + (i % 5) as i64, endpoint));
            assert_eq!((r.status, r.text()), (200, "ok".into()), "{endpoint}");
        }
        let r = a.get(&accept_with(base + 5, &with_query));
        assert_eq!((r.status, r.text()), (200, "ok".into()));
        let r = b.get(&format!("/api/verve/accept?id={}", base + 6));
        assert_eq!((r.status, r.text()), (200, "ok".into()));
    });
    let count = server.wait_for_window(window).unique_count;
    assert_eq!(count, 7);

    server.wait_for_log("the /hook call's log line", |l| {
        endpoint_line(l, window, &hook, "status=200") && l.contains(" INFO endpoint ")
    });
    server.wait_for_log("the /q call's log line", |l| {
        endpoint_line(l, window, &with_query, "status=200")
    });
    // Give a duplicate call every chance to show up: two more windows go by.
    server.wait_for_window(window + 2);
    let mut targets: Vec<String> = receiver
        .requests()
        .iter()
        .map(|r| {
            assert_eq!(r.method, "GET");
            r.target.clone()
        })
        .collect();
    targets.sort();
    assert_eq!(
        targets,
        [
            format!("/hook?count={count}"),
            format!("/q?a=1&b=x&count={count}")
        ],
        "each distinct endpoint called exactly once"
    );
    let hook_lines = server
        .log_lines()
        .into_iter()
        .filter(|l| l.contains(" endpoint=") && l.contains("/hook"))
        .count();
    assert_eq!(hook_lines, 1, "one log line per call, canonical URL");
    let metrics = server.get("/metrics").text();
    assert!(
        metrics.contains("verve_endpoint_calls_total{result=\"success\"} 2\n"),
        "{metrics}"
    );
}

#[test]
fn endpoint_length_limit_is_2048_bytes() {
    let receiver = Receiver::start(|_| Reply::status(200));
    let server = Server::start(1, &ALLOW_LOOPBACK);
    let prefix = receiver.url("/");
    let longest = format!("{prefix}{}", "a".repeat(2048 - prefix.len()));
    let too_long = format!("{longest}b");
    assert_eq!(longest.len(), 2048);
    let (window, ()) = server.in_one_window(|attempt| {
        let mut client = server.client();
        let r = client.get(&accept_with(i64::from(attempt), &too_long));
        assert_eq!((r.status, r.text()), (400, "failed".into()), "2049 bytes");
        let r = client.get(&accept_with(i64::from(attempt), &longest));
        assert_eq!((r.status, r.text()), (200, "ok".into()), "2048 bytes");
    });
    server.wait_for_window(window);
    let got = receiver.wait_for_requests(1);
    assert_eq!(
        got[0].target,
        format!("{}?count=1", &longest[prefix.len() - 1..])
    );
}

#[test]
fn endpoint_urls_cannot_forge_count_lines() {
    // README, *The count log*: no line but a count line contains `unique_count=`, so a log
    // parser can trust every line that does. An endpoint is caller-controlled text: it must
    // be refused, or logged so that it cannot pass for a count line.
    let receiver = Receiver::start(|_| Reply::status(200));
    let server = Server::start(1, &ALLOW_LOOPBACK);
    let forged = [
        receiver.url("/forge?window_start=2020-01-01T00:00:00Z&unique_count=999"),
        receiver.url("/forge/unique_count=7"),
    ];
    let mut accepted = 0;
    let (window, ()) = server.in_one_window(|attempt| {
        accepted = 0;
        let mut client = server.client();
        for url in &forged {
            let r = client.get(&accept_with(i64::from(attempt), url));
            match (r.status, r.text().as_str()) {
                (200, "ok") => accepted += 1,
                (400, "failed") => {}
                other => panic!("{url}: {other:?}"),
            }
        }
    });
    server.wait_for_window(window);
    // Wait until every accepted endpoint has its call logged.
    common::wait_until("the forged endpoints' call lines", || {
        let calls = server
            .log_lines()
            .iter()
            .filter(|l| l.split(' ').nth(2) == Some("endpoint") && l.contains("/forge"))
            .count();
        (calls >= accepted).then_some(())
    });
    let count_line = regex::Regex::new(
        r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z INFO count window_start=\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z unique_count=\d+$",
    )
    .unwrap();
    let impostors: Vec<String> = server
        .log_lines()
        .into_iter()
        .filter(|l| l.contains("unique_count=") && !count_line.is_match(l))
        .collect();
    assert!(
        impostors.is_empty(),
        "lines other than count lines contain unique_count=: {impostors:#?}"
    );
}

#[test]
fn an_endpoint_named_in_two_windows_is_called_once_for_each() {
    let receiver = Receiver::start(|_| Reply::status(200));
    let server = Server::start(1, &ALLOW_LOOPBACK);
    let hook = receiver.url("/twice");
    let (first, ()) = server.in_one_window(|attempt| {
        let mut client = server.client();
        for id in [1, 2, 1] {
            let r = client.get(&accept_with(id + 10 * i64::from(attempt), &hook));
            assert_eq!(r.status, 200);
        }
    });
    let (second, ()) = server.in_one_window(|attempt| {
        let r = server.get(&accept_with(100 + i64::from(attempt), &hook));
        assert_eq!(r.status, 200);
    });
    assert!(second > first);
    for (window, count) in [(first, 2), (second, 1)] {
        assert_eq!(server.wait_for_window(window).unique_count, count);
        server.wait_for_log("the call's log line", |l| {
            endpoint_line(l, window, &hook, "status=200")
        });
    }
    let targets: Vec<String> = receiver.requests().into_iter().map(|r| r.target).collect();
    assert_eq!(targets, ["/twice?count=2", "/twice?count=1"]);
}

#[test]
fn post_callback_sends_the_documented_json() {
    let receiver = Receiver::start(|_| Reply::status(204));
    let server = Server::start(
        1,
        &["--endpoint-method", "post", "--endpoint-allow", "127.0.0.1"],
    );
    let url = receiver.url("/post/hook");
    let (window, ()) = server.in_one_window(|attempt| {
        let mut client = server.client();
        for id in [1, 2, 2, -3] {
            let r = client.get(&accept_with(id - 10 * i64::from(attempt), &url));
            assert_eq!((r.status, r.text()), (200, "ok".into()));
        }
    });
    assert_eq!(server.wait_for_window(window).unique_count, 3);
    let got = receiver.wait_for_requests(1);
    server.wait_for_log("the POST's log line", |l| {
        endpoint_line(l, window, &url, "status=204")
    });
    assert_eq!(got.len(), 1, "{got:?}");
    let req = &got[0];
    assert_eq!(req.method, "POST");
    assert_eq!(req.target, "/post/hook", "no count parameter on a POST");
    let content_type = req.header("content-type").unwrap_or_default();
    assert_eq!(
        content_type.split(';').next().unwrap().trim(),
        "application/json"
    );
    assert_eq!(
        String::from_utf8_lossy(&req.body),
        format!(
            "{{\"unique_count\": 3, \"window_start\": \"{}\"}}",
            rfc3339_secs(window)
        )
    );
}

#[test]
fn error_statuses_are_logged_and_redirects_not_followed() {
    let receiver = Receiver::start(|req| match req.path() {
        "/missing" => Reply::status(404),
        "/moved" => Reply {
            location: Some(format!("http://{}/target", req.header("host").unwrap())),
            ..Reply::status(302)
        },
        _ => Reply::status(200),
    });
    // A port nobody listens on.
    let closed_port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // Sent in a non-canonical spelling; logged in the canonical one (url crate).
    let refused_raw = format!("HTTP://0x7f.0.0.1:{closed_port}/nobody#frag");
    let refused = format!("http://127.0.0.1:{closed_port}/nobody");
    let missing = receiver.url("/missing");
    let moved = receiver.url("/moved");
    let server = Server::start(1, &ALLOW_LOOPBACK);
    let (window, ()) = server.in_one_window(|attempt| {
        let mut client = server.client();
        let base = i64::from(attempt) * 10;
        for (id, url) in [
            (base, &missing),
            (base + 1, &moved),
            (base + 2, &refused_raw),
        ] {
            let r = client.get(&accept_with(id, url));
            assert_eq!((r.status, r.text()), (200, "ok".into()), "{url}");
        }
    });
    let line = server.wait_for_log("status=404", |l| {
        endpoint_line(l, window, &missing, "status=404")
    });
    assert!(
        line.contains(" WARN endpoint "),
        "non-2xx is a warning: {line}"
    );
    let line = server.wait_for_log("status=302", |l| {
        endpoint_line(l, window, &moved, "status=302")
    });
    assert!(
        line.contains(" WARN endpoint "),
        "non-2xx is a warning: {line}"
    );
    let line = server.wait_for_log("the refused call's error", |l| {
        endpoint_line(l, window, &refused, "") && l.contains(" error=")
    });
    let reason = line.split(" error=").nth(1).unwrap();
    assert!(
        !reason.is_empty() && !reason.contains(' '),
        "one-token reason: {line}"
    );
    assert!(line.contains(" WARN endpoint "), "{line}");
    // The 302 was logged, so the call is over: had it followed the redirect, the receiver
    // would already have seen the target.
    let paths: Vec<String> = receiver
        .requests()
        .iter()
        .map(|r| r.path().to_string())
        .collect();
    assert!(
        !paths.iter().any(|p| p == "/target"),
        "redirect was followed: {paths:?}"
    );
    let count = server.wait_for_window(window).unique_count;
    let mut targets: Vec<String> = receiver.requests().into_iter().map(|r| r.target).collect();
    targets.sort();
    assert_eq!(
        targets,
        [
            format!("/missing?count={count}"),
            format!("/moved?count={count}")
        ]
    );
    let metrics = server.get("/metrics").text();
    for (result, n) in [("success", 0), ("http_error", 2), ("failed", 1)] {
        let sample = format!("verve_endpoint_calls_total{{result=\"{result}\"}} {n}\n");
        assert!(metrics.contains(&sample), "{sample:?} in:\n{metrics}");
    }
}

#[test]
fn slow_endpoint_times_out_and_later_windows_are_still_reported() {
    let receiver = Receiver::start(|_| Reply {
        delay: Duration::from_secs(5),
        ..Reply::status(200)
    });
    let server = Server::start(
        1,
        &["--endpoint-timeout", "0.5", "--endpoint-allow", "127.0.0.1"],
    );
    let slow = receiver.url("/slow");
    let (window, ()) = server.in_one_window(|attempt| {
        let r = server.get(&accept_with(i64::from(attempt), &slow));
        assert_eq!((r.status, r.text()), (200, "ok".into()));
    });
    assert_eq!(server.wait_for_window(window).unique_count, 1);
    server.wait_for_log("error=timeout", |l| {
        endpoint_line(l, window, &slow, "error=timeout")
    });
    receiver.wait_for_requests(1);
    // Counting and reporting go on while (and after) the call hangs.
    server.accept_ok(77);
    let next = server.wait_for_window(window + 1);
    let after = server.wait_for_window(window + 2);
    assert!(next.line.contains("unique_count="));
    assert!(after.line.contains("unique_count="));
}

#[test]
fn allow_list_restricts_endpoint_hosts() {
    // The allowed host is another loopback address, where the receiver listens.
    let receiver = Receiver::start_on(Ipv4Addr::new(127, 0, 0, 2), |_| Reply::status(200));
    let server = Server::start(
        1,
        &["--endpoint-allow", "127.0.0.2,*.hooks.test,169.254.1.1"],
    );
    let allowed = receiver.url("/ok");
    let (window, ()) = server.in_one_window(|attempt| {
        let base = i64::from(attempt) * 10;
        let mut client = server.client();
        for (i, refused) in [
            format!("http://127.0.0.1:{}/ok", receiver.addr.port()),
            "http://hooks.test/apex-is-not-a-subdomain".to_string(),
            "http://169.254.169.254/latest/meta-data".to_string(),
            "http://[fe80::1]/".to_string(),
        ]
        .iter()
        .enumerate()
        {
            let r = client.get(&accept_with(base + i as i64, refused));
            assert_eq!((r.status, r.text()), (400, "failed".into()), "{refused}");
        }
        let r = client.get(&accept_with(base + 5, &allowed));
        assert_eq!((r.status, r.text()), (200, "ok".into()), "{allowed}");
    });
    server.wait_for_window(window);
    let got = receiver.wait_for_requests(1);
    assert!(got[0].target.starts_with("/ok?count="), "{got:?}");
    server.wait_for_log("the allowed call's log line", |l| {
        endpoint_line(l, window, &allowed, "status=200")
    });
}

#[test]
fn addresses_of_the_host_network_are_refused_without_an_address_entry() {
    // With a name entry only: a name never permits an internal address either.
    let server = Server::start(1, &["--endpoint-allow", "localhost,hooks.test"]);
    let mut client = server.client();
    for url in [
        "http://127.0.0.1:8080/hook",
        "http://2130706433/",
        "http://0x7f.1/",
        "http://0177.0.0.1/",
        "http://127.1/",
        "http://127.0.0.1./",
        "http://[::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://[::127.0.0.1]/",
        "http://localhost:8080/",
        "http://LOCALHOST./",
        "http://a.localhost/",
        "http://0.0.0.0/",
        "http://0/",
        "http://[::]/",
        "http://10.0.0.1/",
        "http://172.16.5.4/",
        "http://192.168.1.1/",
        "http://100.64.0.1/",
        "http://169.254.169.254/latest/meta-data",
        "http://169.254.0.1:8080/hook",
        "https://169.254.169.254/",
        "http://[fe80::1]/",
        "http://[fe80::1234:5678]:81/x",
        "http://[::ffff:169.254.169.254]/",
        "http://[fd00::1]/",
        "http://224.0.0.1/",
        "http://[ff02::1]/",
        "http://255.255.255.255/",
        "http://240.0.0.1/",
    ] {
        let r = client.get(&accept_with(1, url));
        assert_eq!((r.status, r.text()), (400, "failed".into()), "{url}");
    }
    // Malformed endpoints are refused too.
    for raw in [
        "ftp%3A%2F%2Fexample.com%2F",
        "example.com",
        "http%3A%2F%2Fexample.com%2F%zz",
        "http%3A%2F%2Fexa%0Ample.com%2F",
    ] {
        let r = client.get(&format!("/api/verve/accept?id=1&endpoint={raw}"));
        assert_eq!((r.status, r.text()), (400, "failed".into()), "{raw}");
    }
    let r = client.get(
        "/api/verve/accept?id=1&endpoint=http%3A%2F%2Fa.test%2F&endpoint=http%3A%2F%2Fb.test%2F",
    );
    assert_eq!((r.status, r.text()), (400, "failed".into()), "repeated");
}

#[test]
fn a_loopback_endpoint_without_an_allow_entry_is_refused_and_its_id_not_counted() {
    let receiver = Receiver::start(|_| Reply::status(200));
    let server = Server::start(1, &[]);
    let hook = receiver.url("/never");
    let mut tries = 0;
    let (window, ()) = server.in_one_window(|attempt| {
        tries += 1;
        let base = i64::from(attempt) * 10;
        let mut client = server.client();
        let r = client.get(&accept_with(base + 1, &hook));
        assert_eq!((r.status, r.text()), (400, "failed".into()), "{hook}");
        let r = client.get(&format!("/api/verve/accept?id={}", base + 2));
        assert_eq!((r.status, r.text()), (200, "ok".into()));
    });
    assert_eq!(
        server.wait_for_window(window).unique_count,
        1,
        "the refused request's id is not counted"
    );
    // Two more windows go by: the refused endpoint is never called nor logged.
    server.wait_for_window(window + 2);
    assert!(receiver.requests().is_empty(), "{:?}", receiver.requests());
    assert!(!server.log().contains("/never"), "{}", server.log());
    let metrics = server.get("/metrics").text();
    assert!(
        metrics.contains(&format!(
            "verve_requests_total{{outcome=\"bad_request\"}} {tries}\n"
        )),
        "{metrics}"
    );
}

#[test]
fn endpoint_table_full_answers_503_but_still_counts_the_id() {
    let receiver = Receiver::start(|_| Reply::status(200));
    let server = Server::start(
        1,
        &["--max-endpoints", "2", "--endpoint-allow", "127.0.0.1"],
    );
    let (a, b, c) = (receiver.url("/a"), receiver.url("/b"), receiver.url("/c"));
    let (window, ()) = server.in_one_window(|attempt| {
        let base = i64::from(attempt) * 10;
        let mut client = server.client();
        for (id, url, status) in [
            (base + 1, &a, 200),
            (base + 2, &b, 200),
            (base + 3, &c, 503),
            (base + 4, &a, 200),
            (base + 5, &c, 503),
        ] {
            let r = client.get(&accept_with(id, url));
            let body = if status == 200 { "ok" } else { "failed" };
            assert_eq!((r.status, r.text()), (status, body.into()), "{url}");
        }
    });
    let count = server.wait_for_window(window).unique_count;
    assert_eq!(count, 5, "ids answered 503 for a full table still count");
    for url in [&a, &b] {
        server.wait_for_log("the call's log line", |l| {
            endpoint_line(l, window, url, "status=200")
        });
    }
    server.wait_for_window(window + 1);
    let mut targets: Vec<String> = receiver.requests().into_iter().map(|r| r.target).collect();
    targets.sort();
    assert_eq!(
        targets,
        [format!("/a?count={count}"), format!("/b?count={count}")]
    );
    assert!(
        !server.log().contains(&format!("endpoint={c}")),
        "the refused endpoint is never called"
    );
}

/// A host that accepts connections and never answers: what a slow or hostile callback host
/// looks like to verve. Counts the most connections it ever had open at once.
struct Tarpit {
    addr: SocketAddr,
    most: Arc<AtomicUsize>,
}

impl Tarpit {
    fn start() -> Tarpit {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("binding the tarpit");
        let addr = listener.local_addr().unwrap();
        let open = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let (o, m) = (open, most.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let now = o.fetch_add(1, Ordering::SeqCst) + 1;
                m.fetch_max(now, Ordering::SeqCst);
                let o = o.clone();
                // Read (and never answer) until verve gives up and closes.
                std::thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    while matches!(stream.read(&mut buf), Ok(n) if n > 0) {}
                    o.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Tarpit { addr, most }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

/// A call's path, and the windows whose count lines were in the log when it arrived.
type Arrival = (String, Vec<u64>);

#[test]
fn a_host_that_never_answers_does_not_starve_the_others() {
    const TARPIT_CALLS: usize = 200;
    const INTERVAL: u64 = 2;
    let tarpit = Tarpit::start();
    // The healthy host is another loopback address, so the two hosts differ.
    let server = Server::start(
        INTERVAL,
        &[
            "--endpoint-timeout",
            "1",
            "--endpoint-allow",
            "127.0.0.1,127.0.0.2",
        ],
    );
    // What the healthy host has seen: each call's path, and the count lines already in the
    // log when it arrived (the order of events, not a stopwatch, says when it came).
    let seen: Arc<Mutex<Vec<Arrival>>> = Arc::default();
    let healthy = {
        let (seen, log_path) = (seen.clone(), server.log_path.clone());
        Receiver::start_on(Ipv4Addr::new(127, 0, 0, 2), move |req| {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            let windows = log
                .lines()
                .filter_map(common::parse_count_line)
                .map(|c| c.window_start)
                .collect();
            seen.lock().unwrap().push((req.path().to_string(), windows));
            Reply::status(200)
        })
    };
    let mut tarpit_urls = Vec::new();
    let mut healthy_url = String::new();
    let (window, ()) = server.in_one_window(|attempt| {
        let base = i64::from(attempt) * 1000;
        tarpit_urls = (0..TARPIT_CALLS)
            .map(|i| tarpit.url(&format!("/slow/{attempt}/{i}")))
            .collect();
        healthy_url = healthy.url(&format!("/ok/{attempt}"));
        let mut client = server.client();
        for (i, url) in tarpit_urls.iter().enumerate() {
            let r = client.get(&accept_with(base + i as i64, url));
            assert_eq!((r.status, r.text()), (200, "ok".into()), "{url}");
        }
        let r = client.get(&accept_with(base + 999, &healthy_url));
        assert_eq!((r.status, r.text()), (200, "ok".into()));
    });
    let healthy_path = healthy_url.rsplit_once(':').unwrap().1;
    let healthy_path = &healthy_path[healthy_path.find('/').unwrap()..];
    // The healthy host is called, and before the next window's count line is written: within
    // the window that follows, while the tarpit holds every call it may.
    let windows_before = wait_until("the healthy host's call", || {
        seen.lock()
            .unwrap()
            .iter()
            .find(|(path, _)| path == healthy_path)
            .map(|(_, windows)| windows.clone())
    });
    assert!(
        windows_before.contains(&window),
        "called after its window's count line"
    );
    assert!(
        !windows_before.contains(&(window + INTERVAL)),
        "the healthy call waited past the next window: {windows_before:?}"
    );
    server.wait_for_log("the healthy call's log line", |l| {
        endpoint_line(l, window, &healthy_url, "status=200")
    });
    // Every tarpit call ends with its own line: timed out, or dropped because its host was
    // busy for a whole window.
    let lines = wait_until("a line for every tarpit call", || {
        let lines: Vec<String> = server
            .log_lines()
            .into_iter()
            .filter(|l| l.split(' ').nth(2) == Some("endpoint") && l.contains("/slow/"))
            .collect();
        let done = tarpit_urls
            .iter()
            .all(|url| lines.iter().any(|l| endpoint_line(l, window, url, "")));
        done.then_some(lines)
    });
    for url in &tarpit_urls {
        let mine: Vec<&String> = lines
            .iter()
            .filter(|l| endpoint_line(l, window, url, ""))
            .collect();
        assert_eq!(mine.len(), 1, "one line per call: {mine:?}");
        assert!(
            mine[0].ends_with(" error=timeout") || mine[0].ends_with(" error=host-busy"),
            "{}",
            mine[0]
        );
    }
    let dropped_here = lines
        .iter()
        .filter(|l| {
            l.contains(&format!(" window_start={} ", rfc3339_secs(window)))
                && l.ends_with(" error=host-busy")
        })
        .count();
    assert!(
        dropped_here > 0,
        "200 calls cannot all be made in 2 s, 4 at a time"
    );
    // The tarpit never held more than --endpoint-host-calls (4) of verve's calls at once.
    assert!(
        tarpit.most.load(Ordering::SeqCst) <= 4,
        "{} calls to one host at once",
        tarpit.most.load(Ordering::SeqCst)
    );
    // Nothing left without a line and a count: once every window's calls are settled, the
    // metrics add up to the endpoint lines in the log.
    let page = wait_until("every call settled", || {
        let page = server.get("/metrics").text();
        page.contains("\nverve_backlog_windows 0\n").then_some(page)
    });
    let all: Vec<String> = server
        .log_lines()
        .into_iter()
        .filter(|l| l.split(' ').nth(2) == Some("endpoint"))
        .collect();
    let count = |pred: &dyn Fn(&str) -> bool| all.iter().filter(|l| pred(l)).count();
    let sample = |result: &str| -> usize {
        let prefix = format!("verve_endpoint_calls_total{{result=\"{result}\"}} ");
        page.lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {prefix} in {page}"))
    };
    assert_eq!(sample("success"), count(&|l| l.contains(" status=2")));
    assert_eq!(
        sample("dropped"),
        count(&|l| l.ends_with(" error=host-busy") || l.ends_with(" error=threads-busy"))
    );
    assert_eq!(sample("failed"), count(&|l| l.ends_with(" error=timeout")));
    assert_eq!(
        sample("success")
            + sample("http_error")
            + sample("failed")
            + sample("denied")
            + sample("dropped"),
        all.len(),
        "every call has exactly one line"
    );
}

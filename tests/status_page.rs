//! The status page (`GET /`) as a person sees it, in a real browser: verve on loopback with
//! short windows and some ids, then headless Chromium loads `http://127.0.0.1:PORT/`, runs
//! the page's script (virtual time lets its refresh fire once) and dumps the DOM, which the
//! test reads as a person reads the page: the numbers in the cards, one bar per reported
//! window with its count and a height in proportion to it, against `/metrics` and
//! `/api/verve/windows` read around the browser's visit. Then a screenshot, checked to be a
//! PNG of the size asked for.
//!
//! Chromium is Debian's `chromium` (`scripts/test.sh` installs it), or `$CHROMIUM`. Without
//! it the test fails, saying so: the page is only tested in a browser.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{parse_rfc3339_secs, temp_dir, wait_until, window_now, Server};
use regex::Regex;

/// Long enough that the browser's visit usually falls between two reports (a visit that
/// straddles one is tried again).
const INTERVAL: u64 = 5;

/// How long one browser run may take before the test gives up on it.
const BROWSER_DEADLINE: Duration = Duration::from_secs(120);

/// Chromium: `$CHROMIUM`, or the first of the usual names on `PATH`.
fn chromium() -> PathBuf {
    if let Some(path) = std::env::var_os("CHROMIUM") {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "CHROMIUM={} is not a file: it should name a Chromium-based browser",
            path.display()
        );
        return path;
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in [
        "chromium",
        "chromium-browser",
        "google-chrome",
        "google-chrome-stable",
    ] {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    panic!(
        "no Chromium found (looked for $CHROMIUM, then chromium, chromium-browser, \
         google-chrome on PATH): this test loads the status page in a real browser. Install \
         Debian's chromium package (apt-get install chromium; scripts/test.sh does) or set \
         CHROMIUM to a Chromium-based browser"
    );
}

/// Runs headless Chromium on `url` with `args`, in a profile of its own, and returns what
/// it printed. Fails the test if it does not finish within [`BROWSER_DEADLINE`].
fn browse(url: &str, args: &[&str]) -> Output {
    let exe = chromium();
    let profile = temp_dir("chromium-profile");
    let mut cmd = Command::new(&exe);
    cmd.args([
        "--headless",
        "--disable-gpu",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
    ])
    .arg(format!("--user-data-dir={}", profile.display()));
    // Chromium refuses to start as root with its sandbox.
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        cmd.arg("--no-sandbox");
    }
    let mut child = cmd
        .args(args)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", exe.display()));
    // Read both pipes on threads: a full pipe must not stall the browser.
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut stdout, &mut v);
        v
    });
    let err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut stderr, &mut v);
        v
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for chromium") {
            break status;
        }
        if started.elapsed() > BROWSER_DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = String::from_utf8_lossy(&err.join().unwrap_or_default()).into_owned();
            panic!("{} took over {BROWSER_DEADLINE:?}: {stderr}", exe.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let output = Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    };
    let _ = std::fs::remove_dir_all(&profile);
    assert!(
        output.status.success(),
        "{} {args:?} {url} failed ({}): {}",
        exe.display(),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// The DOM once the page has loaded and its refresh has run once (virtual time: no wait).
fn dump_dom(url: &str) -> String {
    let out = browse(url, &["--virtual-time-budget=6000", "--dump-dom"]);
    String::from_utf8(out.stdout).expect("the DOM is UTF-8")
}

/// A sample of the `/metrics` page.
fn metric(page: &str, name: &str) -> u64 {
    page.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in:\n{page}"))
}

/// What `/metrics` says that the page shows too.
#[derive(Debug, PartialEq, Eq)]
struct Scrape {
    windows_reported: u64,
    last_window: u64,
}

fn scrape(server: &Server) -> Scrape {
    let page = server.get("/metrics").text();
    Scrape {
        windows_reported: metric(&page, "verve_windows_reported_total"),
        last_window: metric(&page, "verve_last_window_unique_ids"),
    }
}

/// `/api/verve/windows` as window start -> count.
fn listed(server: &Server) -> BTreeMap<u64, u64> {
    let text = server.get("/api/verve/windows").text();
    let entry = Regex::new(r#"\{"window_start":"([0-9TZ:-]+)","unique_count":([0-9]+)\}"#).unwrap();
    entry
        .captures_iter(&text)
        .map(|c| {
            (
                parse_rfc3339_secs(&c[1]).expect("RFC 3339"),
                c[2].parse().unwrap(),
            )
        })
        .collect()
}

/// A number as the page writes it (`1,234`), or `None` for anything else.
fn shown_number(text: &str) -> Option<u64> {
    let digits: String = text.trim().chars().filter(|&c| c != ',').collect();
    digits.parse().ok()
}

/// The text of the element with `id` (no nested elements).
fn text_of(dom: &str, id: &str) -> String {
    let re = Regex::new(&format!(r#"id="{id}"[^>]*>([^<]*)<"#)).unwrap();
    re.captures(dom)
        .unwrap_or_else(|| panic!("no element #{id} in the DOM:\n{dom}"))[1]
        .to_string()
}

/// One bar of the chart, as the DOM has it.
#[derive(Debug)]
struct Bar {
    start: u64,
    count: u64,
    height: f64,
    title: String,
}

fn bars(dom: &str, class: &str) -> Vec<Bar> {
    let re = Regex::new(&format!(
        r#"<rect class="{class}" x="[0-9.]+" y="[0-9.]+" width="[0-9.]+" height="([0-9.]+)" data-start="([^"]+)" data-count="([0-9]+)"><title>([^<]*)</title></rect>"#
    ))
    .unwrap();
    re.captures_iter(dom)
        .map(|c| Bar {
            height: c[1].parse().unwrap(),
            start: parse_rfc3339_secs(&c[2]).expect("RFC 3339 data-start"),
            count: c[3].parse().unwrap(),
            title: c[4].to_string(),
        })
        .collect()
}

/// An attribute of the chart's `<svg>`.
fn chart_attr(dom: &str, name: &str) -> f64 {
    let re = Regex::new(&format!(r#"<svg id="chart"[^>]* {name}="([0-9.]+)""#)).unwrap();
    re.captures(dom)
        .unwrap_or_else(|| panic!("no {name} on the chart"))[1]
        .parse()
        .unwrap()
}

/// Sends `n` new distinct ids starting at `first`.
fn send(server: &Server, first: i64, n: i64) {
    let mut client = server.client();
    for id in first..first + n {
        let r = client.get(&format!("/api/verve/accept?id={id}"));
        assert_eq!((r.status, r.text()), (200, "ok".to_string()), "id {id}");
    }
}

/// Checks the page against `/metrics` and `/api/verve/windows`, read with nothing reported
/// in between; `Err` says what differs.
fn check(dom: &str, scrape: &Scrape, windows: &BTreeMap<u64, u64>) -> Result<(), String> {
    let fail = |what: String| Err::<(), String>(what);
    let last = text_of(dom, "last-count");
    if shown_number(&last) != Some(scrape.last_window) {
        return fail(format!(
            "last window shows {last:?}, /metrics says {}",
            scrape.last_window
        ));
    }
    let reported = text_of(dom, "windows-reported");
    if shown_number(&reported) != Some(scrape.windows_reported) {
        return fail(format!(
            "windows reported shows {reported:?}, /metrics says {}",
            scrape.windows_reported
        ));
    }
    let (newest, newest_count) = windows.iter().next_back().expect("windows listed");
    if shown_number(&last) != Some(*newest_count) {
        return fail(format!(
            "last window {last:?} is not the newest listed {windows:?}"
        ));
    }
    let last_start = Regex::new(r#"id="last-start" data-start="([^"]+)""#)
        .unwrap()
        .captures(dom)
        .map(|c| c[1].to_string())
        .unwrap_or_default();
    if parse_rfc3339_secs(&last_start) != Some(*newest) {
        return fail(format!(
            "the last window's start {last_start:?} is not {newest}"
        ));
    }
    // One mark per window listed (all within the chart's span in this short run), each
    // with its own count, in its tooltip too.
    let marks = bars(dom, "win");
    let drawn: BTreeMap<u64, u64> = marks.iter().map(|b| (b.start, b.count)).collect();
    if marks.len() != drawn.len() || &drawn != windows {
        return fail(format!(
            "bars {drawn:?} (of {} marks), listed {windows:?}",
            marks.len()
        ));
    }
    if chart_attr(dom, "data-windows") as usize != marks.len() {
        return fail("data-windows is not the number of bars".into());
    }
    let top = chart_attr(dom, "data-top");
    let plot = chart_attr(dom, "data-plot-height");
    for bar in &marks {
        let count_shown = bar
            .title
            .rsplit(": ")
            .next()
            .and_then(|t| t.strip_suffix(" distinct ids"))
            .and_then(shown_number);
        if count_shown != Some(bar.count) {
            return fail(format!("tooltip {:?} of a bar of {}", bar.title, bar.count));
        }
        // A bar's height is its count on the axis' scale (a window of 0 ids is a 2-unit
        // sliver, so that it is seen).
        let expected = (bar.count as f64 / top * plot).max(2.0);
        if (bar.height - expected).abs() > 0.01 {
            return fail(format!(
                "bar of {} is {} high, {expected} expected",
                bar.count, bar.height
            ));
        }
    }
    Ok(())
}

#[test]
fn the_status_page_shows_what_metrics_and_the_windows_api_say() {
    // Before anything else: a missing browser fails here, clearly.
    let exe = chromium();
    let server = Server::start(INTERVAL, &[]);
    let url = format!("http://{}/", server.addr);

    // Three windows with ids, different numbers of them.
    let mut next_id = 1;
    for n in [25, 70, 40] {
        let window = window_now(INTERVAL);
        send(&server, next_id, n);
        next_id += n;
        server.wait_for_window(window);
    }

    // A visit with no report in between: the page must agree with /metrics and the API.
    let mut last_error = String::new();
    let mut checked = None;
    for attempt in 0..10 {
        // Right after a report, to have the most time before the next one.
        let seen = scrape(&server).windows_reported;
        wait_until("the next window's report", || {
            (scrape(&server).windows_reported > seen).then_some(())
        });
        let before = scrape(&server);
        let windows = listed(&server);
        let dom = dump_dom(&url);
        let after = scrape(&server);
        if before != after {
            eprintln!("attempt {attempt}: a window was reported during the visit, again");
            continue;
        }
        match check(&dom, &before, &windows) {
            Ok(()) => {
                checked = Some((dom, windows));
                break;
            }
            Err(e) => {
                eprintln!("attempt {attempt}: {e}");
                last_error = e;
            }
        }
    }
    let Some((dom, windows)) = checked else {
        panic!("the page never agreed with /metrics: {last_error}");
    };
    // The ids sent are all in the windows shown, each counted once.
    let total: u64 = windows.values().sum();
    assert_eq!(total, 25 + 70 + 40, "{windows:?}");
    // The open window is drawn apart from the reported ones.
    assert_eq!(bars(&dom, "open").len(), 1, "one open-window bar");
    // The refresh script ran (once, in virtual time) and left a whole page.
    assert!(
        dom.contains("<body data-refreshed=\"1\">"),
        "refresh did not run"
    );
    assert_eq!(dom.matches("<main>").count(), 1);
    assert!(dom.contains("Distinct ids per window"));
    assert_eq!(text_of(&dom, "health"), "OK");

    // A screenshot: a PNG of the size asked for.
    let dir = temp_dir("screenshot");
    let png = dir.join("status.png");
    browse(
        &url,
        &[
            "--window-size=1280,1000",
            &format!("--screenshot={}", png.display()),
        ],
    );
    check_png(&png, 1280, 1000);
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!("checked with {}", exe.display());
}

/// `path` is a PNG of `width` x `height` pixels, more than a blank page's few bytes.
fn check_png(path: &Path, width: u32, height: u32) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        bytes.starts_with(b"\x89PNG\r\n\x1a\n") && bytes.get(12..16) == Some(b"IHDR"),
        "not a PNG"
    );
    let be = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap());
    assert_eq!((be(16), be(20)), (width, height), "PNG size");
    assert!(bytes.len() > 20_000, "{} bytes: a blank page?", bytes.len());
}

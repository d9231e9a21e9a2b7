//! The server under test: the `verve` binary started on `127.0.0.1:0` in a temp dir of its
//! own, its count log, `/metrics` and exit, killed on drop (its dir and log kept and shown
//! when the test failed).

use std::io::{BufRead, BufReader, Read};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use super::*;

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

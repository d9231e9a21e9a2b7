//! The processes of the fault run: redis-server with an append-only file, the verve
//! instances and nginx in front of them, each on a loopback port that stays the same across
//! restarts (nginx's upstreams and the instances' `--redis` name them), with signals to
//! stop, freeze, thaw and restart each. Every child is killed when its handle drops, so a
//! panicking run leaves nothing behind.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long a process may take to come up (listen, answer `/healthz`) or to exit on SIGTERM
/// before the run gives up on it. verve exits within 5 s of SIGTERM; the rest is slack for a
/// busy two-core machine.
pub const START_DEADLINE: Duration = Duration::from_secs(20);
pub const EXIT_DEADLINE: Duration = Duration::from_secs(10);

/// A loopback port nobody listens on now (bound once, then released).
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Sends `sig` to `child` unless it has been reaped.
pub fn signal(child: &Child, sig: i32) {
    // SAFETY: kill(2) on our own child, which is reaped only through `wait_exit` below; a
    // pid that has exited but not been reaped cannot be reused.
    unsafe { libc::kill(child.id() as i32, sig) };
}

/// Waits up to `deadline` for `child` to exit; `None` if it did not.
pub fn wait_exit(child: &mut Child, deadline: Duration) -> Option<ExitStatus> {
    let until = Instant::now() + deadline;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() >= until {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// SIGCONT (in case it is frozen), SIGKILL and reap.
fn kill_hard(child: &mut Child) {
    signal(child, libc::SIGCONT);
    let _ = child.kill();
    let _ = child.wait();
}

/// Appends stdout and stderr of a child to `path`.
fn output_to(path: &Path) -> std::io::Result<(Stdio, Stdio)> {
    let f = OpenOptions::new().create(true).append(true).open(path)?;
    Ok((Stdio::from(f.try_clone()?), Stdio::from(f)))
}

/// `GET path` on a fresh connection: the status code, or `None` on any error.
pub fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf);
    text.split(' ').nth(1)?.parse().ok()
}

/// Polls `ready` until it holds, the child exits, or [`START_DEADLINE`].
fn wait_ready(child: &mut Child, what: &str, ready: impl Fn() -> bool) -> Result<(), String> {
    let until = Instant::now() + START_DEADLINE;
    while Instant::now() < until {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("{what} exited at start: {status}"));
        }
        if ready() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(format!("{what} did not come up within {START_DEADLINE:?}"))
}

// --- Redis ----------------------------------------------------------------------------------

/// redis-server on a fixed port with an append-only file (`appendfsync everysec`) in `dir`,
/// so that a restart brings back what it had written, and `DEBUG` allowed from loopback (the
/// nemesis stalls it with `DEBUG SLEEP`).
pub struct Redis {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl Redis {
    pub fn start(dir: &Path) -> Result<Redis, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let port = free_port().map_err(|e| format!("no free port: {e}"))?;
        let mut r = Redis {
            port,
            dir: dir.to_path_buf(),
            child: None,
        };
        r.spawn()?;
        Ok(r)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts the server again (after [`Redis::stop`]): the same port, directory and file.
    pub fn spawn(&mut self) -> Result<(), String> {
        let (out, err) =
            output_to(&self.dir.join("redis.out")).map_err(|e| format!("redis.out: {e}"))?;
        let mut cmd = Command::new("redis-server");
        // Redis 7 refuses DEBUG unless allowed; Redis 6 allows it and knows no such option.
        if redis_major().is_none_or(|v| v >= 7) {
            cmd.args(["--enable-debug-command", "local"]);
        }
        let mut child = cmd
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--appendonly", "yes", "--appendfsync", "everysec"])
            .args(["--save", "", "--daemonize", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(self.dir.join("redis.log"))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("starting redis-server (apt-get install -y redis-server): {e}"))?;
        let port = self.port;
        wait_ready(&mut child, "redis-server", || {
            redis_cli(port, &["PING"]).is_some_and(|o| o.trim() == "PONG")
        })?;
        self.child = Some(child);
        Ok(())
    }

    pub fn signal(&self, sig: i32) {
        if let Some(c) = &self.child {
            signal(c, sig);
        }
    }

    /// Sends `sig` (SIGTERM: Redis fsyncs its file and exits; SIGKILL: the last second of
    /// writes may be lost) and reaps it.
    pub fn stop(&mut self, sig: i32) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        signal(&child, sig);
        let status = wait_exit(&mut child, EXIT_DEADLINE);
        if status.is_none() {
            kill_hard(&mut child);
        }
        status
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            kill_hard(c);
        }
    }
}

/// The major version of `redis-server` (`Redis server v=7.0.15 ...`).
fn redis_major() -> Option<u32> {
    let out = Command::new("redis-server")
        .arg("--version")
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let v = text.split("v=").nth(1)?;
    v.split('.').next()?.parse().ok()
}

/// Runs `redis-cli -p PORT ARGS...`; its stdout, or `None` if it failed.
pub fn redis_cli(port: u16, args: &[&str]) -> Option<String> {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

// --- verve ----------------------------------------------------------------------------------

/// One verve instance: a name, a fixed port, its own log file (kept across restarts: the
/// checker reads every count line it ever wrote), the flags it is started with.
pub struct Verve {
    pub name: String,
    pub addr: SocketAddr,
    pub log: PathBuf,
    bin: PathBuf,
    args: Vec<String>,
    out: PathBuf,
    child: Option<Child>,
}

impl Verve {
    /// Starts `bin --listen ADDR --log-file DIR/verve-NAME.log ARGS...` and waits until
    /// `/healthz` answers 200.
    pub fn start(bin: &Path, dir: &Path, name: &str, args: Vec<String>) -> Result<Verve, String> {
        let port = free_port().map_err(|e| format!("no free port: {e}"))?;
        let mut v = Verve {
            name: name.to_string(),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            log: dir.join(format!("verve-{name}.log")),
            bin: bin.to_path_buf(),
            args,
            out: dir.join(format!("verve-{name}.out")),
            child: None,
        };
        v.spawn()?;
        Ok(v)
    }

    /// Starts it again with the same port, log and flags (after a kill or a stop).
    pub fn spawn(&mut self) -> Result<(), String> {
        let (out, err) =
            output_to(&self.out).map_err(|e| format!("{}: {e}", self.out.display()))?;
        let mut cmd = Command::new(&self.bin);
        // Only the flags below: nothing from the caller's VERVE_* environment.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("VERVE_") {
                cmd.env_remove(key);
            }
        }
        let mut child = cmd
            .arg("--listen")
            .arg(self.addr.to_string())
            .arg("--log-file")
            .arg(&self.log)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", self.bin.display()))?;
        let addr = self.addr;
        wait_ready(&mut child, &format!("verve {}", self.name), || {
            http_status(addr, "/healthz") == Some(200)
        })?;
        self.child = Some(child);
        Ok(())
    }

    pub fn signal(&self, sig: i32) {
        if let Some(c) = &self.child {
            signal(c, sig);
        }
    }

    /// Sends `sig` and reaps the process: its exit status, `None` if it had to be killed
    /// after [`EXIT_DEADLINE`] (or was not running).
    pub fn stop(&mut self, sig: i32) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        signal(&child, sig);
        let status = wait_exit(&mut child, EXIT_DEADLINE);
        if status.is_none() {
            kill_hard(&mut child);
        }
        status
    }

    /// The command line, for the run's record.
    pub fn command_line(&self) -> String {
        format!(
            "{} --listen {} --log-file {} {}",
            self.bin.display(),
            self.addr,
            self.log.display(),
            self.args.join(" ")
        )
    }
}

impl Drop for Verve {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            kill_hard(c);
        }
    }
}

// --- nginx ----------------------------------------------------------------------------------

/// nginx in front of the instances: round robin, keep-alive to them, and an `X-Upstream`
/// header on every answer naming the instance(s) it tried (`$upstream_addr`: `A` or, after
/// a retry, `A, B`), which is how the load learns who answered each id.
pub struct Nginx {
    pub port: u16,
    child: Option<Child>,
}

/// nginx gives up on an instance that has not answered within this long and tries the next
/// one: a frozen (SIGSTOP) instance then costs its requests a second, not the whole freeze,
/// and the request reaches two instances (the frozen one reads it when thawed), which is
/// what deduplication across instances is for.
pub const UPSTREAM_TIMEOUT_S: u64 = 1;

impl Nginx {
    pub fn start(dir: &Path, upstreams: &[SocketAddr]) -> Result<Nginx, String> {
        let conf_dir = dir.join("nginx");
        std::fs::create_dir_all(&conf_dir).map_err(|e| format!("{}: {e}", conf_dir.display()))?;
        let port = free_port().map_err(|e| format!("no free port: {e}"))?;
        let d = conf_dir.display();
        let servers: String = upstreams
            .iter()
            .map(|a| format!("    server {a} max_fails=1 fail_timeout=1s;\n"))
            .collect();
        // SAFETY: geteuid(2) has no preconditions.
        let user = if unsafe { libc::geteuid() } == 0 {
            // As root, nginx's workers would switch to nobody, who may not enter the run's
            // directory.
            "user root;\n"
        } else {
            ""
        };
        let t = UPSTREAM_TIMEOUT_S;
        let config = format!(
            "{user}worker_processes 1;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n  access_log off;\n\
               client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
               fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n\
               scgi_temp_path {d}/scgi;\n\
               upstream verve {{\n{servers}    keepalive 32;\n  }}\n\
               server {{\n    listen 127.0.0.1:{port};\n    keepalive_requests 1000000;\n\
                 location / {{\n      proxy_pass http://verve;\n\
                   proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n\
                   proxy_connect_timeout {t}s;\n      proxy_read_timeout {t}s;\n\
                   proxy_send_timeout {t}s;\n\
                   proxy_next_upstream error timeout http_502 http_503 http_504;\n\
                   add_header X-Upstream $upstream_addr always;\n    }}\n  }}\n}}\n"
        );
        let conf = conf_dir.join("nginx.conf");
        std::fs::write(&conf, config).map_err(|e| format!("{}: {e}", conf.display()))?;
        let (out, err) =
            output_to(&dir.join("nginx.out")).map_err(|e| format!("nginx.out: {e}"))?;
        let mut child = Command::new(nginx_binary())
            .arg("-p")
            .arg(&conf_dir)
            .arg("-e")
            .arg(conf_dir.join("error.log"))
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("starting nginx (apt-get install -y nginx-light): {e}"))?;
        wait_ready(&mut child, "nginx", || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        })?;
        Ok(Nginx {
            port,
            child: Some(child),
        })
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            signal(&c, libc::SIGQUIT);
            if wait_exit(&mut c, EXIT_DEADLINE).is_none() {
                kill_hard(&mut c);
            }
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.stop();
    }
}

/// nginx lives in /usr/sbin, which a plain user's PATH may lack.
fn nginx_binary() -> &'static str {
    if Path::new("/usr/sbin/nginx").exists() {
        "/usr/sbin/nginx"
    } else {
        "nginx"
    }
}

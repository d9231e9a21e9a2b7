//! Cluster mode end to end (docs/cluster.md): real `verve` processes sharing a real
//! `redis-server` (or a 3-master Redis Cluster) on loopback, behind a real nginx where the
//! test needs a load balancer. Each test starts its own servers on free ports.
//!
//! Windows are short (`--interval 3`) and the tests wait for events (log lines, keys in
//! Redis), never for a fixed time: a slow machine makes them slower, not red. Where a test
//! needs its requests inside one window it checks the clock before and after and tries again
//! in a later window if they straddled a boundary.

mod common;

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::redis_servers::{Redis, RedisCluster};
use common::{
    encode, rfc3339_secs, temp_dir, wait_until, window_now, CountLine, Receiver, Reply, Server,
};
use verve::cluster::conn::Target;
use verve::cluster::merge::union_of_shipments;
use verve::cluster::parts;
use verve::cluster::store::Keys;
use verve::ids::partition::{partition_of, PARTITIONS};
use verve::ids::to_key;

const INTERVAL: u64 = 3;
const PREFIX: &str = "verve";

/// Three (or `n`) instances on one Redis, named `i0`, `i1`, ...
fn instances(redis_url: &str, n: usize, extra: &[&str]) -> Vec<Server> {
    (0..n)
        .map(|i| {
            let name = format!("i{i}");
            let mut args = vec!["--redis", redis_url, "--instance-id", &name];
            args.extend_from_slice(extra);
            Server::start(INTERVAL, &args)
        })
        .collect()
}

/// Count lines of window `w` in every instance's log, with the instance's index.
fn lines_for(servers: &[Server], w: u64) -> Vec<(usize, CountLine)> {
    servers
        .iter()
        .enumerate()
        .flat_map(|(i, s)| {
            s.count_lines()
                .into_iter()
                .filter(move |c| c.window_start == w)
                .map(move |c| (i, c))
        })
        .collect()
}

/// Waits for window `w`'s count line anywhere in the cluster, then for the next window's
/// (by then every instance is done with `w`), and returns every line `w` got.
fn reported(servers: &[Server], w: u64) -> Vec<(usize, CountLine)> {
    wait_until(&format!("a count line for {}", rfc3339_secs(w)), || {
        let got = lines_for(servers, w);
        (!got.is_empty()).then_some(())
    });
    wait_until(
        &format!("a count line for {}", rfc3339_secs(w + INTERVAL)),
        || (!lines_for(servers, w + INTERVAL).is_empty()).then_some(()),
    );
    lines_for(servers, w)
}

/// Runs `f` inside one window that starts after this call; tries again in a later window
/// if it straddled a boundary. Returns the window and `f`'s result.
fn in_one_window<T>(mut f: impl FnMut(u32) -> T) -> (u64, T) {
    for attempt in 0..5 {
        let start = window_now(INTERVAL);
        wait_until("the next window", || {
            (window_now(INTERVAL) > start).then_some(())
        });
        let before = window_now(INTERVAL);
        let out = f(attempt);
        if window_now(INTERVAL) == before {
            return (before, out);
        }
        eprintln!("attempt {attempt} straddled a window boundary, trying again");
    }
    panic!("5 attempts in a row straddled a window boundary");
}

/// Sends `ids` to `server` on one keep-alive connection, each answered `ok`.
fn send(server: &Server, ids: impl IntoIterator<Item = i64>, endpoint: Option<&str>) {
    let mut client = server.client();
    for id in ids {
        let target = match endpoint {
            Some(e) => format!("/api/verve/accept?id={id}&endpoint={}", encode(e)),
            None => format!("/api/verve/accept?id={id}"),
        };
        let r = client.get(&target);
        assert_eq!((r.status, r.text().as_str()), (200, "ok"), "id {id}");
    }
}

/// The same ids to every instance at once, from one thread each.
fn send_to_all(servers: &[Server], ids: &[i64], endpoint: Option<&str>) {
    std::thread::scope(|scope| {
        for s in servers {
            scope.spawn(move || send(s, ids.iter().copied(), endpoint));
        }
    });
}

/// The union of what is in Redis for window `w` so far.
fn in_redis(con: &mut dyn redis::ConnectionLike, w: u64) -> BTreeSet<i64> {
    let (union, _) = union_of_shipments(con, &Keys::new(PREFIX), w).unwrap();
    union.iter().collect()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// An nginx load balancer in front of the instances, on a free loopback port, with a
/// generated config in a temp dir; stopped on drop.
struct Nginx {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Nginx {
    fn start(backends: &[&Server]) -> Nginx {
        let dir = temp_dir("nginx");
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let servers: String = backends
            .iter()
            .map(|s| format!("    server {};\n", s.addr))
            .collect();
        let d = dir.display();
        let config = format!(
            "worker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
             events {{ worker_connections 256; }}\n\
             http {{\n  access_log off;\n\
               client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
               fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n\
               scgi_temp_path {d}/scgi;\n\
               upstream verve {{\n{servers}    keepalive 16;\n  }}\n\
               server {{\n    listen 127.0.0.1:{port};\n\
                 location / {{\n      proxy_pass http://verve;\n\
                   proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n    }}\n  }}\n}}\n"
        );
        let conf = dir.join("nginx.conf");
        std::fs::write(&conf, config).unwrap();
        let child = Command::new(nginx_binary())
            .arg("-c")
            .arg(&conf)
            .arg("-p")
            .arg(&dir)
            .args(["-g", "daemon off;"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting nginx (Debian package nginx; scripts/test.sh installs it)");
        let nginx = Nginx { child, port, dir };
        wait_until("nginx to listen", || {
            std::net::TcpStream::connect(("127.0.0.1", nginx.port)).ok()
        });
        nginx
    }

    /// One accept request through the balancer on a fresh connection.
    fn accept(&self, id: i64, endpoint: Option<&str>) {
        let addr = ([127, 0, 0, 1], self.port).into();
        let target = match endpoint {
            Some(e) => format!("/api/verve/accept?id={id}&endpoint={}", encode(e)),
            None => format!("/api/verve/accept?id={id}"),
        };
        let r = common::Client::connect(addr).get(&target);
        assert_eq!(
            (r.status, r.text().as_str()),
            (200, "ok"),
            "id {id} via nginx"
        );
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child. SIGQUIT: nginx's graceful stop of its workers.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGQUIT) };
        if wait_until_exit(&mut self.child).is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn wait_until_exit(child: &mut Child) -> Option<std::process::ExitStatus> {
    for _ in 0..500 {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

/// nginx lives in /usr/sbin, which a plain user's PATH may lack.
fn nginx_binary() -> &'static str {
    if std::path::Path::new("/usr/sbin/nginx").exists() {
        "/usr/sbin/nginx"
    } else {
        "nginx"
    }
}

/// The shared scenario: the same ids to all three instances at once, plus a spread through
/// nginx, plus one endpoint named on every instance: one count line with the exact union,
/// one callback with it.
fn three_instances_count_each_id_once(redis_url: &str) {
    let servers = instances(
        redis_url,
        3,
        &["--cluster-grace", "2", "--endpoint-allow", "127.0.0.1"],
    );
    let nginx = Nginx::start(&servers.iter().collect::<Vec<_>>());
    let receiver = Receiver::start(|_| Reply::status(200));
    let hook = receiver.url("/hook");
    let (w, expected) = in_one_window(|attempt| {
        let base = 1_000_000 * (attempt as i64 + 1);
        let shared: Vec<i64> = (base..base + 300).collect();
        send_to_all(&servers, &shared, Some(&hook));
        // A spread through the balancer: half new ids, half repeats of the shared ones.
        for id in base + 150..base + 450 {
            nginx.accept(id, Some(&hook));
        }
        450u64
    });
    let lines = reported(&servers, w);
    assert_eq!(
        lines.len(),
        1,
        "one count line in the whole cluster: {lines:?}"
    );
    assert_eq!(lines[0].1.unique_count, expected, "{lines:?}");
    // Every partition held some of the ids and was counted, and their counts add up.
    let target = Target::parse(redis_url).unwrap();
    let mut redis = verve::cluster::conn::connect(&target).unwrap();
    let keys = Keys::new(PREFIX);
    let parts: Vec<_> = (0..PARTITIONS).map(|p| keys.partition(w, p)).collect();
    let counts = parts::counts(redis.con(), &parts).unwrap();
    assert!(
        counts.iter().all(|c| c.is_some_and(|c| c > 0)),
        "{counts:?}"
    );
    assert_eq!(counts.iter().flatten().sum::<u64>(), expected, "{counts:?}");
    // One call in total, with the global count.
    let calls = receiver.wait_for_requests(1);
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0].target, format!("/hook?count={expected}"));
    for s in &servers {
        assert!(!s.log().contains("scope=local"), "{}", s.log());
    }
}

#[test]
fn three_instances_behind_nginx_count_each_id_once() {
    let redis = Redis::start();
    three_instances_count_each_id_once(&redis.url);
}

#[test]
fn three_instances_on_a_three_master_redis_cluster() {
    let cluster = RedisCluster::start();
    three_instances_count_each_id_once(&cluster.urls());
}

#[test]
fn redis_stopped_mid_window_and_back_after_it_closed_gives_the_exact_count_once() {
    let mut redis = Redis::start();
    let servers = instances(&redis.url, 3, &["--cluster-grace", "1"]);
    let (w, expected) = in_one_window(|attempt| {
        if !redis.is_running() {
            redis.restart(); // an earlier attempt straddled a boundary
        }
        let mut con = redis.connect();
        let w = window_now(INTERVAL);
        let base = 5_000_000 * (attempt as i64 + 1);
        let first: Vec<i64> = (base..base + 200).collect();
        send_to_all(&servers, &first, None);
        // Shipped during the window: the restart below loses these, and the instances must
        // ship them again.
        let wanted: BTreeSet<i64> = first.iter().copied().collect();
        wait_until("the first ids in Redis, or the next window", || {
            let there = wanted.is_subset(&in_redis(&mut con, w));
            (there || window_now(INTERVAL) != w).then_some(())
        });
        redis.stop();
        // Answered `ok` while Redis is down.
        for (i, s) in servers.iter().enumerate() {
            let i = i as i64;
            send(s, base + 100 + i * 100..base + 300 + i * 100, None);
        }
        500u64 // base .. base + 500
    });
    // Back only after the window closed (and its grace passed): empty, as a Redis without
    // persistence restarts.
    wait_until("the window and its grace to pass", || {
        (now_ms() > (w + INTERVAL + 2) * 1000).then_some(())
    });
    assert!(
        lines_for(&servers, w).is_empty(),
        "no count while Redis is down"
    );
    redis.restart();
    let lines = reported(&servers, w);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0].1.unique_count, expected);
    for s in &servers {
        assert!(!s.log().contains("scope=local"), "{}", s.log());
        let metrics = s.get("/metrics").text();
        assert!(
            !metrics.contains("verve_redis_errors_total 0\n"),
            "the outage is counted: {metrics}"
        );
    }
}

#[test]
fn an_instance_killed_mid_window_still_counts_what_it_shipped() {
    let redis = Redis::start();
    let mut servers = instances(&redis.url, 3, &["--cluster-grace", "1"]);
    let mut con = redis.connect();
    let (w, expected) = in_one_window(|attempt| {
        let w = window_now(INTERVAL);
        let base = 9_000_000 * (attempt as i64 + 1);
        for (i, s) in servers.iter().enumerate() {
            let i = i as i64;
            send(s, base + i * 100..base + i * 100 + 150, None);
        }
        // The victim's ids reach Redis with its shipment during the window.
        let victims: BTreeSet<i64> = (base + 200..base + 350).collect();
        wait_until("the victim's ids in Redis, or the next window", || {
            let there = victims.is_subset(&in_redis(&mut con, w));
            (there || window_now(INTERVAL) != w).then_some(())
        });
        350u64
    });
    // Then it dies, before its last shipment (unless the window closed meanwhile: the count
    // must be exact either way).
    if window_now(INTERVAL) != w {
        eprintln!("the window closed before the kill: its last shipment may have gone out");
    }
    servers[2].signal(libc::SIGKILL);
    servers[2].wait_exit();
    let lines = reported(&servers[..2], w);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0].1.unique_count, expected);
}

/// Keeps a made-up instance in the live set, as a live instance that never ships would be:
/// leaders then wait the whole grace period.
struct Ghost {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Ghost {
    fn start(redis_url: &str) -> Ghost {
        let stop = Arc::new(AtomicBool::new(false));
        let mut con = redis::Client::open(redis_url)
            .unwrap()
            .get_connection()
            .unwrap();
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::SeqCst) {
                let _: () = redis::cmd("ZADD")
                    .arg(Keys::new(PREFIX).live())
                    .arg(now_ms())
                    .arg("ghost")
                    .query(&mut con)
                    .unwrap();
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Ghost {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Ghost {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn a_leader_killed_before_it_reports_is_replaced_and_the_window_reported_once() {
    let redis = Redis::start();
    let mut servers = instances(&redis.url, 3, &["--cluster-grace", "3"]);
    let mut con = redis.connect();
    let _ghost = Ghost::start(&redis.url);
    let keys = Keys::new(PREFIX);
    // Two tries: the kill must land while the leader waits out the grace (3 s, against the
    // few milliseconds it takes to find and kill the leader); if a try misses, the next one
    // runs with the two instances left.
    for attempt in 0..2i64 {
        let (w, expected) = in_one_window(|again| {
            let base = 13_000_000 * (attempt * 10 + again as i64 + 1);
            for (i, s) in servers.iter().enumerate() {
                let i = i as i64;
                send(s, base + i * 50..base + i * 50 + 100, None);
            }
            50 * servers.len() as u64 + 50
        });
        // The window's leader takes the lease right after the close, then waits for the
        // ghost until the grace ends: kill it while it waits.
        let leader: String = wait_until("a leader for the window", || {
            redis::cmd("GET")
                .arg(keys.lease(w))
                .query::<Option<String>>(&mut con)
                .unwrap()
        });
        let index = servers
            .iter()
            .position(|s| {
                s.stderr().contains(&format!("instance {leader},"))
                    || s.log().contains(&format!("instance {leader},"))
            })
            .expect("the leader is one of the instances");
        servers[index].signal(libc::SIGKILL);
        servers[index].wait_exit();
        let killed = servers.remove(index);
        let done: Option<u64> = redis::cmd("GET").arg(keys.done(w)).query(&mut con).unwrap();
        if done.is_some() {
            eprintln!("the leader had reported already; trying again");
            drop(killed);
            continue;
        }
        let lines = reported(&servers, w);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert_eq!(lines[0].1.unique_count, expected);
        assert!(killed.count_lines().iter().all(|c| c.window_start != w));
        return;
    }
    panic!("the leader reported before it could be killed, twice");
}

#[test]
fn windows_pushed_off_the_backlog_are_logged_with_scope_local() {
    let mut redis = Redis::start();
    let servers = instances(&redis.url, 1, &["--cluster-backlog", "1"]);
    redis.stop();
    let s = &servers[0];
    // Three windows with ids while Redis is down: with a backlog of one, the first is pushed
    // off when the second is sealed.
    let mut sent = Vec::new();
    for k in 0..3u64 {
        let (w, n) = in_one_window(|attempt| {
            let ids = 10 + k * 10 + attempt as u64;
            let base = 20_000_000 * (k as i64 + 1) + attempt as i64 * 1000;
            send(s, base..base + ids as i64, Some("http://cb.test/hook"));
            ids
        });
        sent.push((w, n));
    }
    let (w0, n0) = sent[0];
    let line = s.wait_for_log("the first window logged locally", |l| {
        l.contains(&format!("window_start={} unique_count=", rfc3339_secs(w0)))
    });
    assert!(
        line.ends_with(&format!("unique_count={n0} scope=local")),
        "{line}"
    );
    assert!(line.contains(" WARN "), "{line}");
    s.wait_for_log("the endpoint not called with a local count", |l| {
        l.contains("endpoint=http://cb.test/hook error=cluster-count-unavailable")
    });
    // Every window pushed off is counted (the one the instance started in, empty, too).
    let local = s
        .log_lines()
        .iter()
        .filter(|l| l.ends_with(" scope=local"))
        .count();
    let metrics = s.get("/metrics").text();
    assert!(
        metrics.contains(&format!("verve_cluster_local_windows_total {local}\n")),
        "{local} local lines: {metrics}"
    );
    // One window held: the second (or, if the third closed meanwhile, the third).
    assert!(metrics.contains("verve_backlog_windows 1\n"), "{metrics}");
    // Redis back: what is held is shipped and reported with the exact count, and the third
    // window too.
    redis.restart();
    for &(w, n) in &sent[1..] {
        let line = s.wait_for_window(w);
        assert_eq!(line.unique_count, n, "{}", line.line);
    }
    let (w2, _) = sent[2];
    assert!(!s.wait_for_window(w2).line.contains("scope=local"));
}

#[test]
fn an_unreachable_redis_at_start_is_a_warning_and_the_service_serves() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("redis://127.0.0.1:{port}/");
    let s = Server::start(INTERVAL, &["--redis", &url]);
    s.accept_ok(1);
    assert!(s.stderr().contains("not reachable"), "{}", s.stderr());
}

#[test]
fn something_that_is_not_redis_is_refused_at_start() {
    // A server that answers in another protocol where Redis should be: a configuration
    // error, exit 2, said plainly (not "unreachable", which would only warn).
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let _ = std::io::Write::write_all(&mut stream, b"HTTP/1.1 400 Bad Request\r\n\r\n");
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_secs(5));
                drop(stream);
            });
        }
    });
    let out = common::command(&temp_dir("not-redis"))
        .args(["--listen", "127.0.0.1:0", "--redis"])
        .arg(format!("redis://{addr}/"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("error: --redis"), "{err}");
}

#[test]
fn ids_taken_after_the_cluster_reported_the_window_are_reported_locally() {
    // The whole cluster (one instance) stops inside a window, which it then reports at once
    // as the last instance; a new instance starts inside the same window and takes more ids.
    let redis = Redis::start();
    let mut first = instances(&redis.url, 1, &[]);
    let mut second = None;
    let (w, _) = in_one_window(|attempt| {
        let base = 30_000_000 * (attempt as i64 + 1);
        if attempt > 0 {
            first = instances(&redis.url, 1, &[]);
        }
        send(&first[0], base..base + 10, None);
        first[0].signal(libc::SIGTERM);
        first[0].wait_exit();
        let s = Server::start(INTERVAL, &["--redis", &redis.url, "--instance-id", "late"]);
        send(&s, base + 100..base + 107, None);
        second = Some(s);
    });
    let early = first[0].wait_for_window(w);
    assert_eq!(early.unique_count, 10, "{}", early.line);
    let second = second.unwrap();
    let line = second.wait_for_window(w);
    assert!(
        line.line.ends_with("unique_count=7 scope=local"),
        "{}",
        line.line
    );
    let metrics = second.get("/metrics").text();
    assert!(
        metrics.contains("verve_cluster_late_windows_total 1\n"),
        "{metrics}"
    );
}

#[test]
fn an_instance_with_another_interval_under_the_same_prefix_is_refused_at_start() {
    let redis = Redis::start();
    let running = instances(&redis.url, 1, &[]);
    running[0].accept_ok(1);
    let out = common::command(&temp_dir("other-interval"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--interval",
            "5",
            "--redis",
            &redis.url,
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("error: --interval 5:") && err.contains(&format!("--interval {INTERVAL};")),
        "both values named: {err}"
    );
    // Another prefix is another deployment, with an interval of its own.
    let other = Server::start(5, &["--redis", &redis.url, "--redis-prefix", "other"]);
    other.accept_ok(2);
}

/// What a Redis ACL user needs for verve, besides keys under its prefix: the scripts
/// (`EVALSHA`, and `SCRIPT LOAD` when Redis does not know one yet), the commands they and
/// the heartbeats run, and `INFO` (whether the server is part of a Redis Cluster). The
/// docs/cluster.md lists the same.
const ACL_COMMANDS: &[&str] = &[
    "+evalsha",
    "+script|load",
    "+info",
    "+get",
    "+set",
    "+del",
    "+exists",
    "+type",
    "+pexpire",
    "+rpush",
    "+llen",
    "+lrange",
    "+sadd",
    "+scard",
    "+sismember",
    "+sscan",
    "+zadd",
    "+zrem",
    "+zrangebyscore",
    "+zremrangebyscore",
    "+time",
];

#[test]
fn a_redis_user_with_only_the_prefix_and_the_commands_verve_needs_is_enough() {
    let redis = Redis::start();
    let mut admin = redis.connect();
    let _: () = redis::cmd("ACL")
        .arg(
            &[
                "SETUSER",
                "counter",
                "on",
                ">s3cret",
                "resetkeys",
                "~verve:*",
            ][..],
        )
        .arg(&["resetchannels", "-@all"][..])
        .arg(ACL_COMMANDS)
        .query(&mut admin)
        .unwrap();
    let url = format!("redis://counter:s3cret@127.0.0.1:{}/", redis.port);
    let servers = instances(&url, 2, &["--cluster-grace", "1"]);
    let (w, expected) = in_one_window(|attempt| {
        let base = 40_000_000 * (attempt as i64 + 1);
        send(&servers[0], base..base + 40, Some("http://cb.test/hook"));
        send(
            &servers[1],
            base + 20..base + 70,
            Some("http://cb.test/hook"),
        );
        70u64
    });
    let lines = reported(&servers, w);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0].1.unique_count, expected);
    // Redis refused nothing: no command, no key, also none inside a script.
    let denied: Vec<redis::Value> = redis::cmd("ACL").arg("LOG").query(&mut admin).unwrap();
    assert!(denied.is_empty(), "{denied:?}");
    for s in &servers {
        assert!(!s.log().contains("scope=local"), "{}", s.log());
        let metrics = s.get("/metrics").text();
        assert!(
            metrics.contains("verve_redis_errors_total 0\n"),
            "{metrics}"
        );
        // The password is never shown.
        assert!(!s.stderr().contains("s3cret") && !s.log().contains("s3cret"));
    }
}

#[test]
fn a_record_its_leader_could_not_deliver_before_it_was_killed_is_produced_by_another() {
    leader_gone_before_the_broker_acknowledged(libc::SIGKILL);
}

#[test]
fn a_record_its_leader_could_not_deliver_before_it_stopped_is_produced_by_another() {
    leader_gone_before_the_broker_acknowledged(libc::SIGTERM);
}

/// The broker is frozen while a window is reported; its leader goes (`signal`) with the
/// record still waiting for the broker. Once the broker is back, the other instance
/// produces it.
fn leader_gone_before_the_broker_acknowledged(signal: i32) {
    let redis = Redis::start();
    let mut broker = common::kafka_broker::Broker::start();
    let bootstrap = broker.bootstrap();
    let extra = ["--cluster-grace", "1", "--kafka-brokers", &bootstrap];
    let mut servers = instances(&redis.url, 2, &extra);
    wait_until("a first record delivered", || {
        servers
            .iter()
            .any(|s| !common::kafka_log::delivered(s).is_empty())
            .then_some(())
    });
    broker.freeze();
    let (w, expected) = in_one_window(|attempt| {
        let base = 77_000_000 * (attempt as i64 + 1);
        send(&servers[0], base..base + 30, None);
        send(&servers[1], base + 20..base + 50, None);
        50u64
    });
    let lines = reported(&servers, w);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0].1.unique_count, expected);
    let leader = lines[0].0;
    assert!(!common::kafka_log::delivered(&servers[leader]).contains(&w));
    servers[leader].signal(signal);
    servers[leader].wait_exit();
    let killed = servers.remove(leader);
    broker.thaw();
    let other = &servers[0];
    wait_until("the other instance to deliver the window's record", || {
        common::kafka_log::delivered(other)
            .contains(&w)
            .then_some(())
    });
    assert!(other.log().contains("producing it here"), "{}", other.log());
    let acknowledged =
        common::kafka_log::delivered(other).len() + common::kafka_log::delivered(&killed).len();
    let records = broker.read_topic("unique-requests", acknowledged);
    let record = (
        verve::report::kafka::key(w),
        verve::report::kafka::value(w, expected),
    );
    assert!(records.contains(&record), "{records:?}");
    if signal == libc::SIGTERM {
        assert!(
            killed.log().contains("left to the other instances"),
            "{}",
            killed.log()
        );
    }
    drop(killed);
}

/// `n` distinct random values of a partition (below 2^60), cut into shipments of `per`
/// values each: what an instance that took many ids would have shipped to one partition.
fn partition_load(n: usize, per: usize) -> Vec<Vec<u8>> {
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let mut values: Vec<u64> = (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x >> 4
        })
        .collect();
    values.sort_unstable();
    values.dedup();
    assert_eq!(values.len(), n, "distinct values");
    let shipments = n.div_ceil(per);
    let mut chunks: Vec<Vec<u64>> = (0..shipments).map(|_| Vec::new()).collect();
    for (i, v) in values.into_iter().enumerate() {
        chunks[i % shipments].push(v);
    }
    chunks
        .iter()
        .map(|chunk| verve::cluster::merge::serialize(&verve::ids::IdSet::from_sorted_keys(chunk)))
        .collect()
}

#[test]
fn a_partition_counter_stopped_mid_count_is_replaced_and_its_late_count_never_added() {
    // One partition of the window holds 3M ids besides what the instances took (shipped by
    // an instance that has gone since), so its count takes a while: the instance that wins
    // it is stopped (SIGSTOP) while it counts. Another instance takes the partition over once
    // the lease runs out, and the window gets one count line, exact. The stopped instance,
    // resumed, finishes its count: it is not recorded, and it writes no line.
    let redis = Redis::start();
    let servers = instances(&redis.url, 3, &["--cluster-grace", "2"]);
    let mut con = redis.connect();
    let keys = Keys::new(PREFIX);
    const HEAVY: usize = 5;
    let load = partition_load(3_000_000, 2_000);
    // Three tries: the stop must land while the heavy partition is counted.
    for attempt in 0..3i64 {
        let (w, base) = in_one_window(|again| {
            let base = 17_000_000 * (attempt * 10 + again as i64 + 1);
            for (i, s) in servers.iter().enumerate() {
                let i = i as i64;
                send(s, base + i * 100..base + i * 100 + 300, None);
            }
            let heavy = keys.partition(window_now(INTERVAL), HEAVY);
            redis::cmd("RPUSH")
                .arg(&heavy.ids)
                .arg(&load)
                .query::<u64>(&mut con)
                .unwrap();
            base
        });
        let sent = base..base + 500;
        let in_heavy = sent
            .clone()
            .filter(|&id| partition_of(to_key(id)).0 == HEAVY)
            .count() as u64;
        let expected = 500 + 3_000_000;
        let heavy = keys.partition(w, HEAVY);
        let counter: String = wait_until("an instance counting the heavy partition", || {
            redis::cmd("GET")
                .arg(&heavy.lease)
                .query::<Option<String>>(&mut con)
                .unwrap()
        });
        let index = servers
            .iter()
            .position(|s| {
                s.stderr().contains(&format!("instance {counter},"))
                    || s.log().contains(&format!("instance {counter},"))
            })
            .expect("the counter is one of the instances");
        servers[index].signal(libc::SIGSTOP);
        let counted: Option<String> = redis::cmd("GET").arg(&heavy.count).query(&mut con).unwrap();
        if counted.is_some() {
            eprintln!("the partition was counted before its counter could be stopped; again");
            servers[index].signal(libc::SIGCONT);
            continue;
        }
        let others: Vec<&Server> = (0..servers.len())
            .filter(|&i| i != index)
            .map(|i| &servers[i])
            .collect();
        let line = wait_until("the window's count line", || {
            others
                .iter()
                .flat_map(|s| s.count_lines())
                .find(|c| c.window_start == w)
        });
        assert_eq!(line.unique_count, expected);
        let recorded = parts::counts(&mut con, std::slice::from_ref(&heavy)).unwrap();
        assert_eq!(recorded, [Some(3_000_000 + in_heavy)]);
        // The stopped instance resumes and finishes its count: not recorded, no line.
        servers[index].signal(libc::SIGCONT);
        let stopped = &servers[index];
        wait_until("the resumed instance to list the window", || {
            let body = stopped.get("/api/verve/windows").body;
            let body = String::from_utf8_lossy(&body).into_owned();
            body.contains(&format!("\"{}\"", rfc3339_secs(w)))
                .then_some(())
        });
        assert_eq!(parts::counts(&mut con, &[heavy]).unwrap(), recorded);
        let lines = reported(&servers, w);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert_eq!(lines[0].1.unique_count, expected);
        return;
    }
    panic!("the heavy partition was counted before its counter could be stopped, 3 times");
}

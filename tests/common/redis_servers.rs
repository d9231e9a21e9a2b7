//! Real Redis servers for the cluster tests: a single `redis-server` and a 3-master Redis
//! Cluster, each on free loopback ports, without persistence, killed on drop. Debian's
//! `redis-server` package provides both binaries; `scripts/test.sh` installs it. Also a
//! [`Proxy`] that one instance reaches Redis through, which the test can cut: that
//! instance alone loses Redis, at the instant the test picks.

use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use super::{temp_dir, wait_until};

/// A `redis-server` of the test's own, killed on drop. It can be stopped and started again
/// on the same port, empty, as a restarted Redis without persistence comes back.
pub struct Redis {
    child: Option<Child>,
    pub port: u16,
    pub url: String,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Redis {
    pub fn start() -> Redis {
        let port = free_port();
        let mut redis = Redis {
            child: None,
            port,
            url: format!("redis://127.0.0.1:{port}/"),
        };
        redis.restart();
        redis
    }

    /// Starts the server (again) on its port and waits until it answers.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "redis-server is running already");
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "starting redis-server (Debian package redis-server; scripts/test.sh installs it)",
            );
        self.child = Some(child);
        wait_until("redis-server to answer PING", || {
            let mut con = self.try_connect()?;
            redis::cmd("PING").query::<String>(&mut con).ok()
        });
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Kills the server (its data is gone: no persistence).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn try_connect(&self) -> Option<redis::Connection> {
        redis::Client::open(self.url.as_str())
            .ok()?
            .get_connection()
            .ok()
    }

    pub fn connect(&self) -> redis::Connection {
        self.try_connect()
            .expect("connecting to the test's redis-server")
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Three `redis-server --cluster-enabled yes` on loopback, joined with
/// `redis-cli --cluster create`, killed on drop.
pub struct RedisCluster {
    nodes: Vec<Child>,
    pub ports: Vec<u16>,
    dir: PathBuf,
}

/// A port free for a cluster node: the node also listens on port + 10000 (its bus).
fn cluster_port(taken: &[u16]) -> u16 {
    wait_until("two free ports 10000 apart", || {
        let l = TcpListener::bind("127.0.0.1:0").ok()?;
        let port = l.local_addr().ok()?.port();
        let fits = port < 55_000 && !taken.contains(&port);
        let bus_free = TcpListener::bind(("127.0.0.1", port.checked_add(10_000)?)).is_ok();
        (fits && bus_free).then_some(port)
    })
}

impl RedisCluster {
    pub fn start() -> RedisCluster {
        let dir = temp_dir("redis-cluster");
        let mut ports = Vec::new();
        for _ in 0..3 {
            let port = cluster_port(&ports);
            ports.push(port);
        }
        let nodes = ports
            .iter()
            .map(|port| {
                Command::new("redis-server")
                    .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
                    .args([
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                        "--cluster-enabled",
                        "yes",
                    ])
                    .args(["--cluster-config-file", &format!("nodes-{port}.conf")])
                    .current_dir(&dir)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("starting redis-server")
            })
            .collect();
        let cluster = RedisCluster { nodes, ports, dir };
        for port in &cluster.ports {
            let url = format!("redis://127.0.0.1:{port}/");
            wait_until("a cluster node to answer PING", || {
                let mut con = redis::Client::open(url.as_str())
                    .ok()?
                    .get_connection()
                    .ok()?;
                redis::cmd("PING").query::<String>(&mut con).ok()
            });
        }
        let addrs: Vec<String> = cluster
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("running redis-cli --cluster create");
        assert!(
            out.status.success(),
            "redis-cli --cluster create: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        for port in &cluster.ports {
            let url = format!("redis://127.0.0.1:{port}/");
            wait_until("the cluster to be ok on every node", || {
                let mut con = redis::Client::open(url.as_str())
                    .ok()?
                    .get_connection()
                    .ok()?;
                let info: String = redis::cmd("CLUSTER").arg("INFO").query(&mut con).ok()?;
                info.contains("cluster_state:ok").then_some(())
            });
        }
        cluster
    }

    /// The nodes' URLs, comma-separated: verve's `--redis` for a Redis Cluster.
    pub fn urls(&self) -> String {
        self.ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}/"))
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn connect(&self) -> redis::cluster::ClusterConnection {
        let urls: Vec<String> = self
            .ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}/"))
            .collect();
        redis::cluster::ClusterClient::new(urls)
            .and_then(|c| c.get_connection())
            .expect("connecting to the test's Redis Cluster")
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            let _ = node.kill();
            let _ = node.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A TCP proxy on a free loopback port in front of a [`Redis`]: what goes through it reaches
/// the server until the test cuts it ([`Cut::cut`]): then every connection through it is
/// closed at once and new ones are closed as soon as they are accepted, as when the network
/// between one instance and Redis fails, until [`Cut::restore`]. Each accepted connection
/// opens its own to the server's port, so a server restarted on that port is reached again.
pub struct Proxy {
    pub url: String,
    port: u16,
    cut: Cut,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// The switch of a [`Proxy`]: cloned into whatever must cut it (a reporter, a thread).
#[derive(Clone, Default)]
pub struct Cut {
    cut: Arc<AtomicBool>,
    /// Both ends of every connection made through the proxy, to close them on a cut.
    open: Arc<Mutex<Vec<TcpStream>>>,
}

impl Cut {
    /// Closes every connection through the proxy and refuses new ones.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for stream in self.open.lock().unwrap().drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    /// Lets connections through again.
    pub fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }

    fn is_cut(&self) -> bool {
        self.cut.load(Ordering::SeqCst)
    }
}

impl Proxy {
    pub fn start(redis: &Redis) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let upstream = redis.port;
        let cut = Cut::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (switch, done) = (cut.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for client in listener.incoming() {
                if done.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = client else { continue };
                if switch.is_cut() {
                    continue; // dropped: closed at once
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let mut open = switch.open.lock().unwrap();
                if switch.is_cut() {
                    continue;
                }
                for (from, to) in [(&client, &server), (&server, &client)] {
                    let (mut from, mut to) = (from.try_clone().unwrap(), to.try_clone().unwrap());
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(Shutdown::Write);
                    });
                }
                open.push(client);
                open.push(server);
            }
        });
        Proxy {
            url: format!("redis://127.0.0.1:{port}/"),
            port,
            cut,
            stop,
            thread: Some(thread),
        }
    }

    /// The proxy's switch.
    pub fn switch(&self) -> Cut {
        self.cut.clone()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.cut.cut();
        // Wakes the accept loop up, so that it sees `stop`.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

//! The Redis store of cluster mode (`verve::cluster::store`) against a real `redis-server`
//! (Debian package `redis-server`, which `.ci/run` installs), started by the test on a free
//! loopback port without persistence; and against a 3-master Redis Cluster on loopback,
//! where a window's keys must share one slot (its hash tag) for the atomic shipment, the
//! lease script and the `MGET` to work.

mod common;

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use verve::cluster::store::{self, Keys, Shipment};
use verve::ids::IdSet;

/// A `redis-server` of the test's own, killed on drop.
struct Redis {
    child: Child,
    url: String,
}

impl Redis {
    fn start() -> Redis {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting redis-server (Debian package redis-server; .ci/run installs it)");
        let url = format!("redis://127.0.0.1:{port}/");
        let redis = Redis { child, url };
        common::wait_until("redis-server to answer PING", || {
            let mut con = redis.try_connect()?;
            redis::cmd("PING").query::<String>(&mut con).ok()
        });
        redis
    }

    fn try_connect(&self) -> Option<redis::Connection> {
        redis::Client::open(self.url.as_str())
            .ok()?
            .get_connection()
            .ok()
    }

    fn connect(&self) -> redis::Connection {
        self.try_connect()
            .expect("connecting to the test's redis-server")
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serialized(ids: &[i64]) -> Vec<u8> {
    let mut set = IdSet::new();
    for &id in ids {
        set.insert(id);
    }
    let mut bytes = Vec::new();
    set.to_treemap().serialize_into(&mut bytes).unwrap();
    bytes
}

fn count(bytes: &[Vec<u8>]) -> u64 {
    let sets = bytes
        .iter()
        .map(|b| IdSet::from_treemap(roaring::RoaringTreemap::deserialize_from(&b[..]).unwrap()))
        .collect();
    IdSet::union_all(sets).len()
}

const TTL: u64 = 60_000;

#[test]
fn shipments_replace_earlier_ones_and_the_union_counts_each_id_once() {
    let redis = Redis::start();
    window_round_trip(&mut redis.connect());
}

/// Ships, reads back, counts and marks one window, on any connection (single or cluster).
fn window_round_trip(con: &mut dyn redis::ConnectionLike) {
    let keys = Keys::new("verve-test");
    let w = 1_795_320_720;
    let ship =
        |con: &mut dyn redis::ConnectionLike, instance: &str, ids: &[i64], eps: &[String], last| {
            let bytes = serialized(ids);
            store::ship(
                con,
                &keys,
                &Shipment {
                    window_start: w,
                    instance,
                    ids: &bytes,
                    endpoints: eps,
                    last,
                    ttl_ms: TTL,
                },
            )
            .unwrap();
        };
    // a ships during the window, then its final, larger set; b ships once at the close.
    ship(&mut *con, "a", &[1, 2], &["http://x.test/".into()], false);
    assert!(store::shipped(&mut *con, &keys, w).unwrap().is_empty());
    ship(&mut *con, "a", &[1, 2, 3, -5], &[], true);
    ship(
        &mut *con,
        "b",
        &[3, 4, i64::MAX],
        &["http://y.test/".into(), "http://x.test/".into()],
        true,
    );
    let shipped = store::shipped(&mut *con, &keys, w).unwrap();
    assert_eq!(shipped, ["a", "b"]);
    let mut names = shipped.clone();
    names.push("c".into());
    let got = store::fetch(&mut *con, &keys, w, &names).unwrap();
    assert!(got[2].is_none(), "c shipped nothing");
    let got: Vec<Vec<u8>> = got.into_iter().flatten().collect();
    assert_eq!(count(&got), 6, "{{1, 2, 3, -5}} | {{3, 4, MAX}}");
    assert_eq!(
        store::endpoints(&mut *con, &keys, w).unwrap(),
        ["http://x.test/", "http://y.test/"]
    );
    // Every key of the window expires on its own.
    for key in [keys.ids(w, "a"), keys.shipped(w), keys.endpoints(w)] {
        let ttl: i64 = redis::cmd("PTTL").arg(&key).query(&mut *con).unwrap();
        assert!(ttl > 0 && ttl <= TTL as i64, "{key}: PTTL {ttl}");
    }
    assert_eq!(store::done(&mut *con, &keys, w).unwrap(), None);
    store::mark_done(&mut *con, &keys, w, 6, TTL).unwrap();
    assert_eq!(store::done(&mut *con, &keys, w).unwrap(), Some(6));
}

#[test]
fn a_shipment_with_thousands_of_endpoints_arrives_whole() {
    let redis = Redis::start();
    let mut con = redis.connect();
    let keys = Keys::new("verve-test");
    let endpoints: Vec<String> = (0..2_500).map(|i| format!("http://h{i}.test/")).collect();
    let ids = serialized(&[7]);
    store::ship(
        &mut con,
        &keys,
        &Shipment {
            window_start: 0,
            instance: "a",
            ids: &ids,
            endpoints: &endpoints,
            last: true,
            ttl_ms: TTL,
        },
    )
    .unwrap();
    assert_eq!(store::endpoints(&mut con, &keys, 0).unwrap().len(), 2_500);
    assert_eq!(store::shipped(&mut con, &keys, 0).unwrap(), ["a"]);
}

#[test]
fn one_leader_per_window_until_its_lease_expires() {
    let redis = Redis::start();
    let mut con = redis.connect();
    let keys = Keys::new("verve-test");
    let w = 60;
    assert!(store::try_lead(&mut con, &keys, w, "a", TTL).unwrap());
    assert!(!store::try_lead(&mut con, &keys, w, "b", TTL).unwrap());
    assert!(
        store::try_lead(&mut con, &keys, w, "a", TTL).unwrap(),
        "a renews"
    );
    assert!(!store::renew_lead(&mut con, &keys, w, "b", TTL).unwrap());
    // Another window has its own lease.
    assert!(store::try_lead(&mut con, &keys, w + 60, "b", TTL).unwrap());
    // A leader that stops renewing loses the window to a successor once the lease expires
    // (shortened here by hand instead of waiting a minute).
    let _: i64 = redis::cmd("PEXPIRE")
        .arg(keys.lease(w))
        .arg(50)
        .query(&mut con)
        .unwrap();
    common::wait_until("the lease to expire", || {
        store::try_lead(&mut con, &keys, w, "b", TTL)
            .unwrap()
            .then_some(())
    });
    assert!(!store::renew_lead(&mut con, &keys, w, "a", TTL).unwrap());
}

#[test]
fn heartbeats_name_the_live_instances() {
    let redis = Redis::start();
    let mut con = redis.connect();
    let keys = Keys::new("verve-test");
    let ttl = 3_000;
    store::heartbeat(&mut con, &keys, "a", 10_000, ttl).unwrap();
    store::heartbeat(&mut con, &keys, "b", 11_000, ttl).unwrap();
    assert_eq!(
        store::live(&mut con, &keys, 12_000, ttl).unwrap(),
        ["a", "b"]
    );
    // a falls silent; b goes on.
    store::heartbeat(&mut con, &keys, "b", 13_500, ttl).unwrap();
    assert_eq!(store::live(&mut con, &keys, 13_500, ttl).unwrap(), ["b"]);
    let size: i64 = redis::cmd("ZCARD")
        .arg(keys.live())
        .query(&mut con)
        .unwrap();
    assert_eq!(size, 1, "silent instances are removed, not just skipped");
}

/// Three `redis-server --cluster-enabled yes` on loopback, joined with
/// `redis-cli --cluster create`, killed on drop.
struct RedisCluster {
    nodes: Vec<Child>,
    ports: Vec<u16>,
    dir: PathBuf,
}

/// A port free for a cluster node: the node also listens on port + 10000 (its bus).
fn cluster_port(taken: &[u16]) -> u16 {
    common::wait_until("two free ports 10000 apart", || {
        let l = TcpListener::bind("127.0.0.1:0").ok()?;
        let port = l.local_addr().ok()?.port();
        let fits = port < 55_000 && !taken.contains(&port);
        let bus_free = TcpListener::bind(("127.0.0.1", port.checked_add(10_000)?)).is_ok();
        (fits && bus_free).then_some(port)
    })
}

impl RedisCluster {
    fn start() -> RedisCluster {
        let dir = common::temp_dir("redis-cluster");
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
            common::wait_until("a cluster node to answer PING", || {
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
            common::wait_until("the cluster to be ok on every node", || {
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

    fn connect(&self) -> redis::cluster::ClusterConnection {
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

#[test]
fn the_store_works_on_a_three_master_redis_cluster() {
    let cluster = RedisCluster::start();
    let mut con = cluster.connect();
    window_round_trip(&mut con);
    let keys = Keys::new("verve-test");
    // The lease script and the heartbeat pipeline route by their keys too.
    assert!(store::try_lead(&mut con, &keys, 120, "a", TTL).unwrap());
    assert!(!store::try_lead(&mut con, &keys, 120, "b", TTL).unwrap());
    store::heartbeat(&mut con, &keys, "a", 5_000, TTL).unwrap();
    assert_eq!(store::live(&mut con, &keys, 5_000, TTL).unwrap(), ["a"]);
    // The windows really are spread over the masters: their slots differ.
    let mut slot = |key: String| -> i64 {
        redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query(&mut con)
            .unwrap()
    };
    let slots: std::collections::HashSet<i64> = (0..20).map(|i| slot(keys.lease(60 * i))).collect();
    assert!(slots.len() > 1, "one slot for every window: {slots:?}");
    assert_eq!(slot(keys.ids(60, "a")), slot(keys.done(60)));
}

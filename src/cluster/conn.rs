//! Connecting to the `--redis` deployment: one server, or a Redis Cluster found through it.
//! Blocking, bounded by timeouts, for the cluster thread and the start-up check only.

use std::time::Duration;

use anyhow::{bail, Context};
use redis::cluster::{ClusterClient, ClusterConnection};
use redis::{ConnectionLike, ErrorKind, RedisError, ServerErrorKind};

use crate::cluster::error::Error;
use crate::cluster::keys::Keys;
use crate::cluster::keys::LAYOUT;
use crate::cluster::presence::{
    claim_interval, claim_layout, layout_in_use, Interval, Layout, LIVE_TTL,
};

/// Longest wait to connect to one node.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Longest wait for one reply. A shipment of a million random ids is ~4 MB, well under this
/// on any network Redis should be used over; a Redis that hangs longer is treated as down.
pub const IO_TIMEOUT: Duration = Duration::from_secs(3);

/// `--redis`: `redis://[USER:PASSWORD@]HOST:PORT[/DB]` (or `rediss://`; a user name for
/// a Redis ACL user, a password alone for `requirepass`), or several comma-separated seed
/// nodes of one Redis Cluster.
#[derive(Clone, PartialEq, Eq)]
pub struct Target {
    urls: Vec<String>,
}

/// As [`Target::display`] shows it: a `Debug` print (of the whole configuration, say) shows no
/// password either.
impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Target").field(&self.display()).finish()
    }
}

impl Target {
    pub fn parse(s: &str) -> Result<Target, String> {
        let urls: Vec<String> = split_urls(s)
            .into_iter()
            .map(|u| u.trim().to_owned())
            .filter(|u| !u.is_empty())
            .collect();
        if urls.is_empty() {
            return Err("no Redis URL given".into());
        }
        for url in &urls {
            // Shown masked: a URL that does not parse may still hold a password.
            redis::Client::open(url.as_str()).map_err(|e| format!("{:?}: {e}", masked(url)))?;
        }
        Ok(Target { urls })
    }

    /// The URLs without passwords, for logs.
    pub fn display(&self) -> String {
        self.urls
            .iter()
            .map(|u| match url::Url::parse(u) {
                Ok(mut parsed) if parsed.password().is_some() => {
                    let _ = parsed.set_password(Some("***"));
                    parsed.to_string()
                }
                Ok(_) => u.clone(),
                Err(_) => masked(u),
            })
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// `s` cut at each comma that starts another URL (a scheme follows it): a comma inside a
/// URL, in a password say, stays in it, so no piece of a password is ever taken for a URL of
/// its own (and shown in an error message).
fn split_urls(s: &str) -> Vec<&str> {
    const SCHEMES: [&str; 4] = ["redis://", "rediss://", "redis+unix://", "unix://"];
    let mut urls = Vec::new();
    let mut start = 0;
    for (at, _) in s.match_indices(',') {
        let next = s[at + 1..].trim_start();
        if SCHEMES.iter().any(|scheme| next.starts_with(scheme)) {
            urls.push(&s[start..at]);
            start = at + 1;
        }
    }
    urls.push(&s[start..]);
    urls
}

/// `url` with what comes before its last `@` (after the scheme) masked: the user and the
/// password of a URL that may not parse, where [`Target::display`] cannot find them.
fn masked(url: &str) -> String {
    let from = url.find("://").map_or(0, |i| i + 3);
    match url[from..].rfind('@') {
        Some(at) => format!("{}***{}", &url[..from], &url[from + at..]),
        None => url.to_owned(),
    }
}

/// A live connection to the deployment.
pub enum Redis {
    Single(redis::Connection),
    Cluster(Box<ClusterConnection>),
}

impl Redis {
    pub fn con(&mut self) -> &mut dyn ConnectionLike {
        match self {
            Redis::Single(c) => c,
            Redis::Cluster(c) => &mut **c,
        }
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, Redis::Cluster(_))
    }
}

/// Connects: the first seed node that answers says whether it is part of a Redis Cluster
/// (`INFO cluster`); a cluster is then reached through all the seeds.
pub fn connect(target: &Target) -> anyhow::Result<Redis> {
    let mut last_error = None;
    for url in &target.urls {
        match connect_one(url) {
            Ok((con, false)) => return Ok(Redis::Single(con)),
            Ok((_, true)) => return connect_cluster(target),
            Err(e) => last_error = Some(e),
        }
    }
    Err(last_error.unwrap_or_else(|| anyhow::anyhow!("no Redis URL given")))
}

fn connect_one(url: &str) -> anyhow::Result<(redis::Connection, bool)> {
    let client = redis::Client::open(url).with_context(|| format!("Redis URL {url:?}"))?;
    let mut con = client.get_connection_with_timeout(CONNECT_TIMEOUT)?;
    con.set_read_timeout(Some(IO_TIMEOUT))?;
    con.set_write_timeout(Some(IO_TIMEOUT))?;
    let info: String = match redis::cmd("INFO").arg("cluster").query(&mut con) {
        Ok(info) => info,
        // A user without INFO (an ACL without `@dangerous`): taken for a single server. A
        // Redis Cluster node then answers the start-up check with MOVED, which says so.
        Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoPerm) => String::new(),
        Err(e) => return Err(e.into()),
    };
    Ok((con, info.contains("cluster_enabled:1")))
}

fn connect_cluster(target: &Target) -> anyhow::Result<Redis> {
    let client = ClusterClient::builder(target.urls.clone())
        .connection_timeout(CONNECT_TIMEOUT)
        .response_timeout(IO_TIMEOUT)
        .build()
        .context("Redis Cluster seed nodes")?;
    let con = client
        .get_connection()
        .context("joining the Redis Cluster")?;
    Ok(Redis::Cluster(Box::new(con)))
}

/// What the start-up check found wrong.
#[derive(Debug)]
pub enum Problem {
    /// Nothing answers (yet): verve starts anyway and keeps windows in its backlog.
    Unreachable(anyhow::Error),
    /// Something answers but cannot be used (authentication, wrong database, not Redis, a
    /// cluster without all slots, a user without the commands or keys verve needs, something
    /// else under the prefix): a configuration error.
    Unusable(anyhow::Error),
    /// The instances already using `--redis-prefix` count with this other `--interval`: a
    /// configuration error.
    OtherInterval(u64),
    /// The instances already using `--redis-prefix` keep their keys in this other key layout
    /// (see [`LAYOUT`]; [`crate::cluster::presence::LAYOUT_1`] for a release that did not store
    /// its layout): a configuration error, or an upgrade that needs its own prefix.
    OtherLayout(String),
}

/// The error and its causes on one line, each part once (a `RedisError` prints the
/// `io::Error` it wraps, which is also its source), with a hint when the peer did not speak
/// Redis's protocol. Sanitized ([`crate::logging::sanitize`]): it is logged, and holds what the
/// server said.
pub fn describe(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        for part in cause.to_string().split(": ") {
            let part = part.split_whitespace().collect::<Vec<_>>().join(" ");
            if !part.is_empty() && !parts.contains(&part) {
                parts.push(part);
            }
        }
    }
    let mut out = parts.join(": ");
    let not_redis = e.chain().any(|c| {
        c.downcast_ref::<RedisError>()
            .is_some_and(|r| r.kind() == redis::ErrorKind::Parse)
    });
    if not_redis {
        out.push_str(" (the server does not answer in Redis's protocol: is this a Redis?)");
    }
    // Redis's words (and a server that is not Redis) are outside text in a log line.
    crate::logging::sanitize(&out).into_owned()
}

/// True for errors that mean "not reachable now" rather than "misconfigured".
pub fn is_transient(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause.downcast_ref::<RedisError>().is_some_and(|r| {
            r.is_io_error()
                || r.is_connection_refusal()
                || r.is_timeout()
                || r.is_connection_dropped()
                || r.kind() == redis::ErrorKind::ClusterConnectionNotFound
        }) || cause.downcast_ref::<std::io::Error>().is_some()
    })
}

/// True for errors that say the deployment cannot be used now, whatever key the command
/// touched: unreachable, timing out, not speaking Redis, loading, failing over, out of memory,
/// busy with a script, refusing this user. Every window would fail alike, so the cluster
/// thread drops the connection and windows wait in the backlog.
///
/// Anything else (a key of another type, a script error, a reply verve did not expect, a
/// code this list does not know) is taken to be about the keys the command touched: it costs
/// that window only. Erring that way is the safe side: a misjudged outage costs each window
/// a few tries and a `scope=local` count, while a misjudged bad key would stall every
/// window behind it.
pub fn is_outage(e: &RedisError) -> bool {
    if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal() {
        return true;
    }
    match e.kind() {
        ErrorKind::Server(ServerErrorKind::ResponseError | ServerErrorKind::ExecAbort) => false,
        ErrorKind::Server(_) => true,
        ErrorKind::Extension => matches!(
            e.code(),
            Some("OOM" | "BUSY" | "MISCONF" | "NOAUTH" | "WRONGPASS" | "NOREPLICAS")
        ),
        ErrorKind::UnexpectedReturnType => false,
        _ => true,
    }
}

/// The start-up check: connects, runs a write and a script the way shipping will, and
/// claims the prefix for this key layout and this `--interval` (see [`layout_in_use`],
/// [`claim_interval`], [`claim_layout`]; `key_ttl_ms` is how long the claim outlives the
/// last instance).
pub fn check(
    target: &Target,
    keys: &Keys,
    interval_secs: u64,
    key_ttl_ms: u64,
) -> Result<&'static str, Problem> {
    let classify = |e: anyhow::Error| {
        if is_transient(&e) {
            Problem::Unreachable(e)
        } else {
            Problem::Unusable(e)
        }
    };
    let mut redis = connect(target).map_err(classify)?;
    let kind = if redis.is_cluster() {
        "Redis Cluster"
    } else {
        "Redis"
    };
    // A key of its own hash slot, gone in a second: proves writes and scripts are allowed
    // (a replica, a read-only user or a disabled EVAL fail here, not at the first boundary).
    let probe: anyhow::Result<i64> =
        redis::Script::new("return redis.call('SET', KEYS[1], '1', 'PX', 1000) and 1")
            .key(keys.startup_check())
            .invoke(redis.con())
            .context("writing a test key with a script");
    if let Err(e) = probe {
        return Err(classify(e));
    }
    let store_error = |e: Error, doing: &'static str| match e {
        Error::Redis(e) => classify(anyhow::Error::new(e).context(doing)),
        e => Problem::Unusable(
            anyhow::Error::new(e).context("something other than verve writes under the prefix"),
        ),
    };
    // Read before any claim: a refused instance leaves no mark of its layout behind.
    let live_ms = LIVE_TTL.as_millis() as u64;
    match layout_in_use(redis.con(), keys, live_ms) {
        Ok(Some(theirs)) if theirs != LAYOUT => return Err(Problem::OtherLayout(theirs)),
        Ok(_) => {}
        Err(e) => return Err(store_error(e, "reading the prefix's key layout")),
    }
    match claim_interval(redis.con(), keys, interval_secs, key_ttl_ms) {
        Ok(Interval::Same) => {}
        Ok(Interval::Other(theirs)) => return Err(Problem::OtherInterval(theirs)),
        Ok(Interval::OtherLayout { layout, .. }) => return Err(Problem::OtherLayout(layout)),
        Err(e) => return Err(store_error(e, "claiming the prefix for the interval")),
    }
    match claim_layout(redis.con(), keys, key_ttl_ms) {
        Ok(Layout::Same) => Ok(kind),
        Ok(Layout::Other(theirs)) => Err(Problem::OtherLayout(theirs)),
        Err(e) => Err(store_error(e, "claiming the prefix for the key layout")),
    }
}

/// Fails unless `id` can name an instance in keys and log lines.
pub fn check_instance_id(id: &str) -> anyhow::Result<()> {
    if id.is_empty() || id.len() > 200 {
        bail!("must be 1 to 200 bytes long");
    }
    if id.chars().any(|c| c.is_whitespace() || c.is_control()) {
        bail!("must not contain spaces or control characters");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_checked_and_shown_without_passwords() {
        let t = Target::parse("redis://:s3cret@10.0.0.1:6379/2").unwrap();
        assert_eq!(t.display(), "redis://:***@10.0.0.1:6379/2");
        assert!(!format!("{t:?}").contains("s3cret"));
        let t = Target::parse(" redis://a:7000 , redis://b:7001 ").unwrap();
        assert_eq!(t.display(), "redis://a:7000,redis://b:7001");
        assert!(Target::parse("").is_err());
        // A URL that does not parse is shown without what may be its password.
        let err = Target::parse("redis://u:s3cret@h:99999").unwrap_err();
        assert!(
            err.contains("redis://***@h:99999") && !err.contains("s3cret"),
            "{err}"
        );
        let err = Target::parse("u:s3cret@h:1").unwrap_err();
        assert!(!err.contains("s3cret"), "{err}");
        assert!(Target::parse("http://x").is_err());
    }

    #[test]
    fn a_comma_in_a_password_stays_in_it_and_is_never_shown() {
        let t = Target::parse("redis://verve:se,cret@127.0.0.1:6379").unwrap();
        assert_eq!(t.urls, ["redis://verve:se,cret@127.0.0.1:6379"]);
        assert_eq!(t.display(), "redis://verve:***@127.0.0.1:6379");
        // Seed nodes are still told apart, with or without spaces.
        let t = Target::parse("redis://:p,w@10.0.0.1:7000, redis://:p,w@10.0.0.2:7000").unwrap();
        assert_eq!(t.urls.len(), 2);
        assert_eq!(
            t.display(),
            "redis://:***@10.0.0.1:7000,redis://:***@10.0.0.2:7000"
        );
        // A URL that does not parse is shown without any part of the password.
        let err = Target::parse("redis://verve:se,cret@h:notaport").unwrap_err();
        assert!(!err.contains("se,") && !err.contains("cret"), "{err}");
        assert!(err.contains("***@h:notaport"), "{err}");
    }

    #[test]
    fn acl_users_are_given_with_a_user_name() {
        let t = Target::parse("redis://verve:s3cret@127.0.0.1:6379/").unwrap();
        assert_eq!(t.display(), "redis://verve:***@127.0.0.1:6379/");
        let info = redis::Client::open("redis://verve:s3cret@127.0.0.1:6379/")
            .unwrap()
            .get_connection_info()
            .clone();
        assert_eq!(info.redis_settings().username(), Some("verve"));
        assert_eq!(info.redis_settings().password(), Some("s3cret"));
    }

    #[test]
    fn outages_are_told_from_trouble_with_a_key() {
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert!(is_outage(&RedisError::from(refused)));
        let timeout = std::io::Error::new(std::io::ErrorKind::TimedOut, "slow");
        assert!(is_outage(&RedisError::from(timeout)));
        assert!(is_outage(&RedisError::from((
            ErrorKind::Parse,
            "not Redis"
        ))));
        // A reply that is not what verve wrote: about the key it came from.
        let odd = RedisError::from((ErrorKind::UnexpectedReturnType, "odd reply"));
        assert!(!is_outage(&odd));
    }

    #[test]
    fn instance_ids_fit_keys_and_log_lines() {
        assert!(check_instance_id("web1:8080").is_ok());
        for bad in ["", "a b", "a\nb", &"x".repeat(201)] {
            assert!(check_instance_id(bad).is_err(), "{bad:?}");
        }
    }
}

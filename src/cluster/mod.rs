//! Cluster mode (docs/cluster.md): several instances behind a load balancer count
//! each id once per window by shipping their windows to one Redis (or Redis Cluster).
//!
//! The Redis side, from the bottom up:
//! - [`keys`]: what is kept where in Redis: the key layout.
//! - [`error`]: what an operation on those keys can fail with.
//! - [`presence`]: the deployment's shared keys: heartbeats, the live set, the interval and
//!   the key layout the prefix is claimed for.
//! - [`conn`]: connecting (one server, or a Redis Cluster found through it) and the
//!   start-up check.
//! - [`store`]: the Redis side of a window as a whole: endpoints, last-shipment marks, the
//!   per-window lease, the freeze and the `done` mark, each an atomic command or script.
//! - [`parts`]: the Redis side of a window's partitions: their shipments, freeze, the leases
//!   of the instances counting them, and their counts.
//! - [`merge`]: the leader's merge, the union of every shipment of a window, and the
//!   shipments' encoding.
//! - [`tally`]: counting one partition's shipments, streaming, exact, in memory bounded by
//!   its distinct values and charged to `--max-memory`.
//!
//! The cluster thread:
//! - [`settings`]: what it is told, and the periods it keeps.
//! - [`backlog`]: the sealed windows an instance holds until the cluster reported them, each
//!   in one phase.
//! - [`node`]: the thread itself, its tick and its connection, and the
//!   [`node::ClusterSink`] through which the collector hands it sealed windows.
//! - [`ship`]: cutting a window into shipments; shipping the open window and the sealed ones.
//! - `lead`: leading a window: the lease, readiness, the leader's report, the `done` mark.
//! - `handoff`: Kafka records handed over between instances ([`node::RecordHandoff`]).
//! - `done_marks`: the windows known reported, whose `done` marks go back after a connect.
//! - `orphans`: the registry of windows not reported yet, for the adoption of those whose
//!   holders are all gone; `adopt`: the adoption itself.
//! - `linger`: a stopping instance keeps the windows it handed over until Redis has them on
//!   disk, and ships them again if Redis went away meanwhile.
//! - `failure`: an outage, or trouble with one window's keys.
//!
//! The request path never touches Redis: workers record into their shards as in single
//! mode, and the cluster thread drains the open window's new ids every second and ships them
//! (the id set's compact serialization, a few bytes per id, cut into the window's
//! [partitions](crate::ids::partition), each to a list of its own), then ships the rest once
//! the window is sealed. One instance leads each window (a lease taken with `SET NX PX`),
//! waits until every live instance has shipped it or `--cluster-grace` has passed, and
//! freezes it and its partitions (from then on Redis refuses shipments of them). Every
//! instance that holds the window then counts the partitions whose leases it wins ([`parts`]),
//! so the work spreads over the cluster; the leader adds the partitions' counts, writes the
//! one count line, calls each endpoint once and marks the window done. A count runs on a
//! helper thread while the cluster thread keeps its leases and the heartbeat fresh
//! ([`merge`]).
//!
//! **A window leaves an instance's memory** only once the cluster has recorded it as
//! reported (its `done` mark, seen by this instance or written by it), or once this instance
//! has reported its own ids of it with `scope=local`. A refused re-shipment after a reconnect
//! (the window frozen or done) does not let it go: its leader may have lost Redis between the
//! freeze and the mark, and then it, or another instance once the lease ran out, reports it.
//! Every instance remembers the windows it knows were reported and writes their `done` marks
//! back after each connect, in case Redis lost them. Liveness is judged by Redis's clock
//! (`TIME`), never an instance's, so clock skew makes no live instance look dead.
//!
//! **Failure cases, and what they cost.**
//! - Redis down: windows wait in memory (at most `--cluster-backlog`) and are shipped in full
//!   when it is back; the leader then waits a grace period for the others to come back too.
//!   A window pushed off the backlog is reported by its instance alone with `scope=local`.
//! - An instance killed hard: what it shipped counts; the ids it took since its last
//!   shipment (at most [`node::SHIP_EVERY`]) are lost. Leaders stop waiting for it once its
//!   heartbeat is [`node::LIVE_TTL`] old, or at the grace.
//! - The leader killed: its lease expires after [`node::LEASE`] and another instance takes
//!   the window over, freezes it again (harmless), adds the partitions' counts and reports
//!   it.
//! - An instance killed while it counts a partition: its partition lease expires after
//!   [`node::LEASE`] and another instance counts that partition; a count is recorded once,
//!   by the lease holder, so one that finishes late is not added.
//! - Redis lost by every instance between the freeze and the mark: each keeps the window, and
//!   once Redis is back and the grace has passed, the leader (or a successor) reports it.
//! - Redis restarted empty right after a report: the instances that know the window was
//!   reported write its `done` mark back, so none reports it again with what it re-shipped.
//! - A shipment that reaches Redis after the leader froze the window (a slow instance, past
//!   the grace): refused, and its instance reports its ids alone with `scope=local`. No
//!   shipment Redis accepted is missing from the leader's read.
//! - Keys under the prefix that verve did not write (another program, another deployment):
//!   read within bounds, checked, and charged to their window alone, which is logged and
//!   then reported with `scope=local` if it cannot be used; foreign endpoints are checked as
//!   a client's would be and never called unless they pass. An instance with another
//!   `--interval` or another key layout (an earlier or later release) under the same prefix
//!   is refused at start-up.
//!
//! **Duplicates that remain possible.** The leader renews its lease (checking it still holds
//! it and the window is not done), writes the count line and queues the calls, then marks
//! the window done, all within a few milliseconds. If it dies, or stalls for longer than the
//! lease, between the renewal and the mark, a successor reports the window again: a second
//! count line and a second call to each endpoint. The second line carries the same count:
//! the window was frozen before the first read, so the successor reads the same shipments.
//! A leader that only loses Redis between the line and the mark keeps the window and marks
//! it once back. Calls the dead leader had queued but not made are lost,
//! not repeated, unless the successor makes them. Without an outage that window is a few
//! milliseconds per window; it cannot be closed without making a window that is never
//! reported possible instead, and a repeat is preferred to a gap (docs/failures.md,
//! *Cluster mode*).

mod adopt;
pub mod backlog;
pub mod conn;
mod done_marks;
pub mod error;
mod failure;
mod handoff;
pub mod keys;
mod lead;
mod linger;
pub mod merge;
pub mod node;
pub mod orphans;
pub mod parts;
pub mod presence;
pub mod settings;
pub mod ship;
pub mod store;
pub mod tally;

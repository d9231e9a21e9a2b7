//! Cluster mode (contract §5): several instances behind a load balancer count each id once
//! per window by shipping their windows to one Redis.
//!
//! Built so far: [`store`], the Redis side (key layout, shipping, heartbeats, the per-window
//! lease, the leader's reads), tested against a real `redis-server`. Not yet wired into the
//! server: the shipping thread, the leader's merge and reporting, the backlog and the
//! `--redis*` flags are the rest of issue 4.
//!
//! The shape (decided in issue 4): the request path never touches Redis. A plain thread ships
//! each instance's ids of a window as roaring's portable serialization, during the window and
//! at its close. One instance leads each window (a lease taken with `SET NX PX`), waits until
//! every live instance has shipped it or the grace period has passed, unions the bitmaps,
//! writes the one count line, calls each endpoint once and marks the window done.

pub mod store;

//! Shared helpers of the integration tests, one module per thing they help with:
//!
//! | module | what |
//! | --- | --- |
//! | `time` | the clock, window starts, RFC 3339, and [`wait_until`], the poll every wait goes through |
//! | `server` | the real `verve` binary on `127.0.0.1:0` with its own temp dir and log file ([`Server`]), its count lines |
//! | `client` | a raw HTTP/1.1 client over `std::net::TcpStream` ([`Client`]) and response parsing |
//! | `receiver` | a tiny threaded HTTP server standing in for callback endpoints ([`Receiver`]) |
//! | `redis_servers` | real `redis-server`s: a single one and a 3-master Redis Cluster |
//! | `kafka_broker` | a real Kafka-protocol broker (tansu) and a reader of its topics |
//! | `kafka_log` | what verve's log and `/metrics` say about its Kafka records |
//! | `sasl_gate` | a SASL/PLAIN gate in front of a broker |
//!
//! The items of the first four are re-exported here (`common::Server`, `common::wait_until`).
//!
//! Every wait in here is a poll with a generous deadline ([`DEADLINE`]): it only fails when
//! the awaited event never happens, never because something was slow.

// Each test binary uses a different subset of these helpers (and of the re-exports below).
#![allow(dead_code, unused_imports)]

mod client;
mod receiver;
mod server;
mod time;

pub mod kafka_broker;
pub mod kafka_log;
pub mod redis_servers;
pub mod sasl_gate;

pub use client::*;
pub use receiver::*;
pub use server::*;
pub use time::*;

use std::time::Duration;

/// How long any awaited event (a log line, an answer, an exit) may take before the test
/// fails. Generous: the machine has two cores and runs other tests at the same time.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// Pause between two looks at a polled condition.
const POLL: Duration = Duration::from_millis(10);

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_verve");

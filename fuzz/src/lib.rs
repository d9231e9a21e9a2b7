//! The invariant checks behind the fuzz targets in `fuzz/fuzz_targets/`, kept in plain
//! modules that depend on nothing but `verve` and `std`, so that the main crate's
//! `tests/fuzz_regressions.rs` can include this very file (`#[path]`, its modules with it) and
//! replay the seeds and the kept crash inputs on the stable toolchain, without libFuzzer.
//!
//! Every entry point returns `Err(description)` when an invariant is broken; a panic inside
//! verve itself propagates as a panic. The fuzz targets turn an `Err` into a panic (a crash
//! for libFuzzer); the regression test reports it with the file name.
//!
//! | module | target | entry point |
//! | --- | --- | --- |
//! | [`request`] (with `responses`, the parsers of what verve writes) | `request` | [`check_request`] |
//! | [`query`] (with `model`, the endpoint and id rules it shares with `request`) | `query` | [`check_query`] |
//! | [`state`] | `state` | [`check_state`] |
//! | [`idset`] | `idset` | [`check_idset`] |
//!
//! The modules name each other through `super::` only (never `crate::`): in the regression
//! test this file is a module, not the crate root.

/// `ensure!(condition, format...)`: returns `Err(format!(...))` from the check when the
/// condition is false. Defined before the modules, which use it.
macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+));
        }
    };
}

pub mod idset;
mod model;
pub mod query;
pub mod request;
mod responses;
pub mod state;

// The entry points, for the fuzz targets and the regression test.
pub use idset::check_idset;
pub use query::check_query;
pub use request::{check_request, split_request_input, Flags};
pub use state::check_state;

/// A fixed instant (2026-11-21T23:50:00Z): every read of a run lands in the same window.
const NOW_MS: u64 = 1_795_305_000_000;
/// Window length used by the harness, seconds.
const INTERVAL: u64 = 60;
/// The allow-list used when [`Flags::allow_list`] is set, and by the `query` target.
pub const ALLOW: [&str; 4] = ["hooks.example.com", "*.corp.test", "10.0.0.5", "[fe80::1]"];

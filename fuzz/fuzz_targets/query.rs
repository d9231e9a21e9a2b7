//! Arbitrary bytes as an accept query and as an endpoint; see `verve_fuzz::check_query`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = verve_fuzz::check_query(data) {
        panic!("query invariant broken: {e}");
    }
});

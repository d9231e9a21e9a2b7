//! A `Conn` fed the input in chunks, like the connection loop feeds it socket reads; see
//! `verve_fuzz::check_request` for the input layout and the invariants.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = verve_fuzz::check_request(data) {
        panic!("request invariant broken: {e}");
    }
});

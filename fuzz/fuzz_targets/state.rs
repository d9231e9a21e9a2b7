//! A `--state-file` from outside, its checksum made right so the fields behind it are
//! reached; see `verve_fuzz::check_state`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = verve_fuzz::check_state(data) {
        panic!("state invariant broken: {e}");
    }
});

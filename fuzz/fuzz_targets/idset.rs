//! A serialized id set from outside (a Redis shipment, a state file's set); see
//! `verve_fuzz::check_idset`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = verve_fuzz::check_idset(data) {
        panic!("id set invariant broken: {e}");
    }
});

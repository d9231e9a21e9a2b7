//! The `state` target: `--state-file` contents from outside, decoded and re-encoded.

use verve::clock::{rfc3339_secs, Windows, END_OF_RFC3339_SECS};
use verve::query::MAX_ENDPOINT_BYTES;
use verve::state::{Limits, SavedWindow};

use super::idset::MAX_IDS_PER_BYTE;
use super::INTERVAL;

/// A `--state-file` from outside. The input is the file without its last four bytes: the
/// CRC-32 is appended here, so the fuzzer gets past the checksum to the fields behind it
/// (the input as it is, with whatever checksum it happens to end in, is decoded too).
/// Checked: no panic; what `SavedWindow::decode` accepts holds verve's own fields (interval
/// 1 to 86 400 s, an aligned window start before year 10000, endpoints of at most 2048
/// bytes, an id set no larger than [`MAX_IDS_PER_BYTE`] allows) and encodes back to bytes
/// that decode to the same window; `Limits::check` and the RFC 3339 form of its start
/// never panic.
pub fn check_state(data: &[u8]) -> Result<(), String> {
    let _ = SavedWindow::decode(data);
    let mut file = data.to_vec();
    file.extend_from_slice(&crc32(data).to_le_bytes());
    let Ok(window) = SavedWindow::decode(&file) else {
        return Ok(());
    };
    ensure!(
        (1..=86_400).contains(&window.interval_secs),
        "interval {}",
        window.interval_secs
    );
    ensure!(
        window.window_start % window.interval_secs == 0,
        "window start {} not aligned",
        window.window_start
    );
    ensure!(
        window.window_start < END_OF_RFC3339_SECS,
        "window start {} after year 9999",
        window.window_start
    );
    ensure!(
        window
            .endpoints
            .iter()
            .all(|e| e.len() <= MAX_ENDPOINT_BYTES),
        "an endpoint over {MAX_ENDPOINT_BYTES} bytes"
    );
    ensure!(
        window.ids.len() <= MAX_IDS_PER_BYTE * data.len() as u64,
        "{} ids from {} bytes",
        window.ids.len(),
        data.len()
    );
    let again = window.encode().map_err(|e| format!("encode: {e}"))?;
    let back = SavedWindow::decode(&again).map_err(|e| format!("re-decode: {e:#}"))?;
    ensure!(
        back == window,
        "the window changed through encode and decode"
    );
    let _ = rfc3339_secs(window.window_start);
    // The instance's checks, with a clock at the window's start and at the epoch.
    for now_ms in [window.window_start.saturating_mul(1000), 0] {
        let limits = Limits::new(1 << 20, 10, Windows::new(INTERVAL), now_ms);
        let _ = limits.check(&window);
    }
    Ok(())
}

/// CRC-32 (IEEE), bitwise: the harness depends on `verve` and `std` only.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

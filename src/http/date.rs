//! The `Date` response header, formatted once a second by a background thread and read by
//! every response without a lock: a sequence lock over four atomic words, so a reader never
//! sees a half-written date and never blocks the writer.

use std::sync::atomic::{fence, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime};

/// `Sun, 06 Nov 1994 08:49:37 GMT` is always 29 bytes.
pub const DATE_LEN: usize = 29;

struct Cached {
    seq: AtomicU64,
    words: [AtomicU64; 4],
}

static CACHED: Cached = Cached {
    seq: AtomicU64::new(0),
    words: [
        AtomicU64::new(0),
        AtomicU64::new(0),
        AtomicU64::new(0),
        AtomicU64::new(0),
    ],
};

/// Whether the updater thread runs: set once it has been started.
static UPDATER: Mutex<bool> = Mutex::new(false);

fn store(now: SystemTime) {
    let text = httpdate::fmt_http_date(now);
    let mut bytes = [b' '; 32];
    let n = text.len().min(DATE_LEN);
    bytes[..n].copy_from_slice(&text.as_bytes()[..n]);
    // Odd sequence: a write is in progress.
    let seq = CACHED.seq.load(Ordering::Relaxed);
    CACHED.seq.store(seq + 1, Ordering::Relaxed);
    fence(Ordering::Release);
    for (i, word) in CACHED.words.iter().enumerate() {
        let chunk: [u8; 8] = bytes[i * 8..i * 8 + 8].try_into().expect("8 bytes");
        word.store(u64::from_ne_bytes(chunk), Ordering::Relaxed);
    }
    CACHED.seq.store(seq + 2, Ordering::Release);
}

/// Stores the current date and starts the once-a-second updater; later calls do nothing.
/// A thread that cannot be started is an error, as for every other thread of verve (the
/// date would freeze), and the next call tries again.
pub fn try_start() -> std::io::Result<()> {
    let mut started = UPDATER.lock().unwrap_or_else(PoisonError::into_inner);
    if *started {
        return Ok(());
    }
    store(SystemTime::now());
    std::thread::Builder::new()
        .name("verve-date".into())
        .spawn(|| loop {
            // Wake just after the next whole second so the header changes on time.
            let now = SystemTime::now();
            let into_second = now
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
            std::thread::sleep(Duration::from_nanos(
                1_000_000_000 - into_second as u64 + 1_000,
            ));
            store(SystemTime::now());
        })?;
    *started = true;
    Ok(())
}

/// [`try_start`] for tests and tools, panicking where it fails, as `std::thread::spawn`
/// does; the server uses [`try_start`].
pub fn start() {
    try_start().expect("starting the Date header thread");
}

/// The current `Date` header value.
#[inline]
pub fn now() -> [u8; DATE_LEN] {
    let mut bytes = [0u8; 32];
    loop {
        let before = CACHED.seq.load(Ordering::Acquire);
        if before & 1 == 0 {
            for (i, word) in CACHED.words.iter().enumerate() {
                bytes[i * 8..i * 8 + 8]
                    .copy_from_slice(&word.load(Ordering::Relaxed).to_ne_bytes());
            }
            fence(Ordering::Acquire);
            if CACHED.seq.load(Ordering::Relaxed) == before {
                break;
            }
        }
        std::hint::spin_loop();
    }
    let mut out = [0u8; DATE_LEN];
    out.copy_from_slice(&bytes[..DATE_LEN]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn date_is_an_http_date() {
        try_start().unwrap();
        let date = now();
        let text = std::str::from_utf8(&date).unwrap();
        assert!(text.ends_with(" GMT"), "{text}");
        let parsed = httpdate::parse_http_date(text).unwrap();
        let age = SystemTime::now().duration_since(parsed).unwrap_or_default();
        assert!(age < Duration::from_secs(60), "{text}");
    }
}

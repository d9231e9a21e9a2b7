//! Bytes per distinct id: inserts N ids (default 10 million) of one distribution into the
//! set a shard uses and prints roaring's serialized size and the growth of the process's
//! resident memory, each divided by N.
//!
//!     cargo run --release --example memory -- [random-u32|sequential|random-i64] [N]

use std::hint::black_box;

use verve::ids::BatchedIdSet;

/// Resident set size of this process, from /proc (Linux).
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// xorshift64*: deterministic, fast, good enough to spread ids.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let kind = args.next().unwrap_or_else(|| "random-u32".into());
    let n: u64 = args
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000_000);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let before = rss_bytes();
    let mut set = BatchedIdSet::new();
    for i in 0..n {
        let id = match kind.as_str() {
            "random-u32" => (rng.next() >> 32) as i64,
            "sequential" => i as i64,
            "random-i64" => rng.next() as i64,
            other => panic!("unknown distribution {other:?}"),
        };
        set.insert(id);
    }
    let set = black_box(set.into_set());
    let after = rss_bytes();
    let distinct = set.len();
    println!(
        "{kind}: {n} ids, {distinct} distinct, serialized {:.2} bytes/id, RSS +{:.2} bytes/id",
        set.serialized_size() as f64 / distinct as f64,
        after.saturating_sub(before) as f64 / distinct as f64,
    );
}

//! The id distributions the examples and `benches/ids.rs` measure, shared by `#[path]` (not
//! an example itself). The including crate must also include `rng.rs` as `crate::rng`.

// Each includer uses a part.
#![allow(dead_code)]

use crate::rng::Rng;

/// How ids are spread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dist {
    /// Uniform over the whole `i64` range (hashes, random 64-bit ids).
    RandomI64,
    /// Uniform over `0..2^32`; repeats happen (about `n^2 / 2^33` of them).
    RandomU32,
    /// `0..n`.
    Sequential,
    /// Snowflake-like ids of one 60 s window: see [`Snowflakes`].
    Snowflake,
}

impl Dist {
    pub const ALL: [Dist; 4] = [
        Dist::RandomI64,
        Dist::RandomU32,
        Dist::Sequential,
        Dist::Snowflake,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Dist::RandomI64 => "random-i64",
            Dist::RandomU32 => "random-u32",
            Dist::Sequential => "sequential",
            Dist::Snowflake => "snowflake",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Dist::RandomI64 => "random, uniform over the whole i64 range",
            Dist::RandomU32 => "random, uniform over 0..2^32",
            Dist::Sequential => "sequential 0..N",
            Dist::Snowflake => {
                "snowflake: 41-bit ms | 10-bit worker | 12-bit sequence, one 60 s window"
            }
        }
    }

    pub fn parse(name: &str) -> Option<Dist> {
        Dist::ALL.into_iter().find(|d| d.name() == name)
    }

    /// `n` ids of this distribution; the random ones from `Rng(seed)`.
    pub fn ids(self, n: u64, seed: u64) -> Ids {
        Ids {
            dist: self,
            rng: Rng(seed),
            i: 0,
            n,
            snowflakes: (self == Dist::Snowflake).then(|| Snowflakes::new(n)),
        }
    }
}

/// The ids of [`Dist::ids`].
pub struct Ids {
    dist: Dist,
    rng: Rng,
    i: u64,
    n: u64,
    snowflakes: Option<Snowflakes>,
}

impl Iterator for Ids {
    type Item = i64;

    #[inline]
    fn next(&mut self) -> Option<i64> {
        if self.i >= self.n {
            return None;
        }
        let i = self.i;
        self.i += 1;
        Some(match self.dist {
            Dist::RandomI64 => self.rng.next() as i64,
            Dist::RandomU32 => (self.rng.next() >> 32) as i64,
            Dist::Sequential => i as i64,
            Dist::Snowflake => {
                let s = self.snowflakes.as_mut().expect("made for snowflakes");
                s.id(i, &mut self.rng)
            }
        })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = (self.n - self.i) as usize;
        (left, Some(left))
    }
}

/// Milliseconds the snowflake ids' timestamps span: one 60 s window.
pub const SNOWFLAKE_SPAN_MS: u64 = 60_000;

/// The window's first timestamp: 2026-11-30T00:00:00Z in ms since Twitter's snowflake epoch
/// (2010-11-04T01:42:54.657Z), so the ids look like real ones (about 2^60).
pub const SNOWFLAKE_START_MS: u64 = 1_795_996_800_000 - 1_288_834_974_657;

const WORKERS: usize = 1024;

/// Snowflake-like ids (`timestamp_ms << 22 | worker << 12 | sequence`), `n` of them, all
/// distinct, as 1024 workers would make them during one 60 s window: the `i`-th id is made
/// at millisecond `i * 60 000 / n` of the window by a random worker, whose sequence number
/// counts the ids it made in that millisecond (from 0). So the ids arrive in time order,
/// and within a millisecond in no order.
pub struct Snowflakes {
    n: u64,
    /// Per worker: the millisecond it last made an id in, and how many it made then.
    last_ms: Vec<u64>,
    sequence: Vec<u16>,
}

impl Snowflakes {
    fn new(n: u64) -> Snowflakes {
        Snowflakes {
            n,
            last_ms: vec![u64::MAX; WORKERS],
            sequence: vec![0; WORKERS],
        }
    }

    #[inline]
    fn id(&mut self, i: u64, rng: &mut Rng) -> i64 {
        let ms = (i as u128 * SNOWFLAKE_SPAN_MS as u128 / self.n as u128) as u64;
        let mut worker = (rng.next() >> 54) as usize;
        loop {
            if self.last_ms[worker] != ms {
                self.last_ms[worker] = ms;
                self.sequence[worker] = 0;
            }
            if self.sequence[worker] < 4096 {
                break;
            }
            // This worker's sequence is spent for this millisecond (only past ~250M ids a
            // window): the next worker makes the id.
            worker = (worker + 1) % WORKERS;
        }
        let sequence = self.sequence[worker] as u64;
        self.sequence[worker] += 1;
        (((SNOWFLAKE_START_MS + ms) << 22) | ((worker as u64) << 12) | sequence) as i64
    }
}

//! The examples' deterministic id stream, shared by `#[path]` (not an example itself).

/// xorshift64*: deterministic, fast, good enough to spread ids.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

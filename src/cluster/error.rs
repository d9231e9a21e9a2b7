//! What an operation on cluster mode's keys in Redis can fail with: Redis itself, or a key
//! that holds something verve does not write there.

use redis::RedisError;

/// What a store operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Redis failed or refused the operation (unreachable, a timeout, a key of another type,
    /// a permission, ...).
    #[error(transparent)]
    Redis(#[from] RedisError),
    /// A key holds something verve does not write there.
    #[error("{key} {what}")]
    Malformed { key: String, what: &'static str },
}

pub type Result<T> = std::result::Result<T, Error>;

pub(crate) fn malformed(key: String, what: &'static str) -> Error {
    Error::Malformed { key, what }
}

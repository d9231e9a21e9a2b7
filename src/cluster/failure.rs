//! How the cluster thread treats a failed store operation: an outage makes every window wait
//! for a new connection; trouble with the keys the operation touched costs their window (or
//! the Kafka record, or the shared key) alone.

use crate::cluster::conn;
use crate::cluster::error::Error;
use crate::logging::sanitize;

/// How a store operation failed, as the cluster thread treats it.
pub enum Failure {
    /// Redis cannot be used now (see [`conn::is_outage`]): drop the connection, retry later.
    Outage(anyhow::Error),
    /// About the keys the operation touched, said on one line: charged to their window.
    Keys(String),
}

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        match e {
            Error::Redis(r) if conn::is_outage(&r) => Failure::Outage(r.into()),
            other => Failure::Keys(sanitize(&other.to_string()).into_owned()),
        }
    }
}

/// The outage in `e`, if it is one; trouble with keys is left to the caller's `Ok`.
pub fn outage_only(e: Error) -> anyhow::Result<()> {
    match Failure::from(e) {
        Failure::Outage(e) => Err(e),
        Failure::Keys(_) => Ok(()),
    }
}

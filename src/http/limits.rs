//! How many connections this process can hold: the default of `--max-connections`.
//!
//! Each open connection holds one file descriptor (its socket) and one coroutine, whose stack
//! is an anonymous mapping with a `PROT_NONE` guard page at its bottom: two entries in the
//! process's memory map. Past `RLIMIT_NOFILE` descriptors `accept` fails; past
//! `vm.max_map_count` mappings a new stack cannot be mapped. The default limit keeps clear of
//! both, with room left for everything else the process holds.

/// Descriptors kept for everything but client connections: the listener, the log file,
/// stdio, may's epoll and event descriptors, a socket per running endpoint call (up to 256),
/// name lookups, Redis and Kafka connections and librdkafka's wake-up pipes. At most half of
/// a small limit, so that a process started with a few hundred descriptors still serves.
pub const FD_RESERVE: u64 = 512;

/// Mappings kept for everything but connection stacks: the binary and its libraries, two per
/// thread (stack and guard page: may workers, up to 256 callback threads, librdkafka's
/// threads), malloc's arenas, may's pool of ready stacks for the first 1000 coroutines
/// (reused by connections, counted here so the limit never depends on it). An idle verve
/// with its pool holds about 2 100; this leaves room for every thread it may start.
pub const MAP_RESERVE: u64 = 4096;

/// Mappings per connection: the coroutine stack and its guard page, which splits the stack's
/// mapping in two.
pub const MAPS_PER_CONNECTION: u64 = 2;

/// `vm.max_map_count` when `/proc/sys/vm/max_map_count` cannot be read: the kernel's default.
pub const DEFAULT_MAX_MAP_COUNT: u64 = 65_530;

/// The process limits that bound the number of connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resources {
    /// The soft `RLIMIT_NOFILE` (`u64::MAX` when unlimited).
    pub nofile: u64,
    /// `vm.max_map_count`.
    pub max_map_count: u64,
}

impl Resources {
    /// This process's limits now.
    pub fn current() -> Resources {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes into the struct we pass and nothing else.
        let nofile = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
            if limit.rlim_cur == libc::RLIM_INFINITY {
                u64::MAX
            } else {
                limit.rlim_cur
            }
        } else {
            // Linux's default soft limit.
            1024
        };
        let max_map_count = std::fs::read_to_string("/proc/sys/vm/max_map_count")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(DEFAULT_MAX_MAP_COUNT);
        Resources {
            nofile,
            max_map_count,
        }
    }

    /// The most connections these limits allow:
    /// `min(nofile - min(FD_RESERVE, nofile / 2), (max_map_count - MAP_RESERVE) / MAPS_PER_CONNECTION)`,
    /// at least 1.
    pub fn connection_limit(&self) -> usize {
        let fds = self.nofile - FD_RESERVE.min(self.nofile / 2);
        let maps = self.max_map_count.saturating_sub(MAP_RESERVE) / MAPS_PER_CONNECTION;
        fds.min(maps).clamp(1, usize::MAX as u64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tighter_of_descriptors_and_mappings_wins() {
        // A systemd unit's LimitNOFILE=65536 with the kernel's default map count: mappings.
        let r = Resources {
            nofile: 65_536,
            max_map_count: 65_530,
        };
        assert_eq!(r.connection_limit(), (65_530 - 4096) / 2);
        // A shell's 1024 descriptors: descriptors.
        let r = Resources {
            nofile: 1024,
            max_map_count: 65_530,
        };
        assert_eq!(r.connection_limit(), 1024 - 512);
        // A small limit keeps half for connections.
        let r = Resources {
            nofile: 256,
            max_map_count: 65_530,
        };
        assert_eq!(r.connection_limit(), 128);
        // Unlimited descriptors and a raised map count.
        let r = Resources {
            nofile: u64::MAX,
            max_map_count: 1_048_576,
        };
        assert_eq!(r.connection_limit(), (1_048_576 - 4096) / 2);
        // Nothing left: still one.
        let r = Resources {
            nofile: 1,
            max_map_count: 10,
        };
        assert_eq!(r.connection_limit(), 1);
    }

    #[test]
    fn this_process_has_limits() {
        let r = Resources::current();
        assert!(r.nofile > 0 && r.max_map_count > 0, "{r:?}");
        assert!(r.connection_limit() >= 1);
    }
}

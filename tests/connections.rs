//! Connection floods (README, *Flags*: `--max-connections`): past the limit new connections wait;
//! past the descriptor limit they wait too; a connection whose coroutine cannot be started
//! (its stack cannot be mapped) is closed. In every case serving resumes once the flood
//! ends, the accept loop having survived, and `/healthz` said 503 meanwhile where it applies.

mod common;

use std::os::unix::process::CommandExt;

use common::{temp_dir, wait_until, Client, ReadEnd, Server};

/// An hour: no window closes during a test (nothing here depends on windows).
const INTERVAL: u64 = 3600;

/// The value of the unlabelled metric `name` on `page`.
fn metric(page: &str, name: &str) -> f64 {
    page.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in:\n{page}"))
}

/// What the client side can tell about a connection without blocking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    /// Nothing yet: not accepted, or not answered yet.
    Nothing,
    /// Bytes are waiting to be read.
    Answer,
    /// The server closed it (EOF or reset) with nothing to read.
    Closed,
}

fn seen(client: &Client) -> Seen {
    client.stream.set_nonblocking(true).unwrap();
    let mut byte = [0u8; 1];
    let state = match client.stream.peek(&mut byte) {
        Ok(0) => Seen::Closed,
        Ok(_) => Seen::Answer,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Seen::Nothing,
        Err(_) => Seen::Closed,
    };
    client.stream.set_nonblocking(false).unwrap();
    state
}

/// Opens `n` connections and sends an accept request on each (ids from `first_id`).
fn flood(server: &Server, n: usize, first_id: i64) -> Vec<Client> {
    (0..n)
        .map(|i| {
            let mut c = server.client();
            c.send(
                common::get_request(&format!("/api/verve/accept?id={}", first_id + i as i64))
                    .as_bytes(),
            );
            c
        })
        .collect()
}

/// Reads the answer to the request `flood` sent: `200 ok`, or `None` when the connection
/// was closed without one.
fn answer(client: &mut Client, what: &str) -> Option<()> {
    match client.try_response() {
        Ok(r) => {
            assert_eq!((r.status, r.text()), (200, "ok".to_string()), "{what}");
            Some(())
        }
        Err(ReadEnd::Closed(bytes)) => {
            assert!(bytes.is_empty(), "{what}: part of an answer: {bytes:?}");
            None
        }
        Err(e) => panic!("{what}: neither answered nor closed: {e:?}"),
    }
}

fn healthz(client: &mut Client) -> u16 {
    client.get("/healthz").status
}

/// A soft and hard resource limit, as `prlimit(2)` takes them.
fn rlimit(cur: u64, max: u64) -> libc::rlimit {
    libc::rlimit {
        rlim_cur: cur,
        rlim_max: max,
    }
}

/// Sets `pid`'s `resource` limit and returns the previous one.
fn prlimit(pid: i32, resource: libc::__rlimit_resource_t, new: libc::rlimit) -> libc::rlimit {
    let mut old = rlimit(0, 0);
    // SAFETY: prlimit reads `new` and writes `old`, both ours.
    let rc = unsafe { libc::prlimit(pid, resource, &new, &mut old) };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
    old
}

/// The process's address space now (`VmSize`), in bytes.
fn vm_size(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmSize:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmSize in:\n{status}"));
    kib * 1024
}

/// More connections than may keeps ready-made coroutine stacks for (its pool holds 1000):
/// past that, every connection needs a stack mapped afresh.
const PAST_THE_STACK_POOL: usize = 1100;

#[test]
fn a_connection_whose_coroutine_cannot_start_is_closed_and_the_accept_loop_lives_on() {
    // The default limit (from the test's descriptor limit) is far above the flood.
    let mut server = Server::start(INTERVAL, &[]);
    let mut control = server.client();
    assert_eq!(healthz(&mut control), 200);
    // No new mapping can be made from now on: a coroutine stack beyond the ready-made ones
    // cannot be mapped, as when vm.max_map_count is reached. (Mappings that exist, like
    // malloc's arenas, still serve the memory a connection needs.)
    let pid = server.pid();
    let unlimited = prlimit(
        pid,
        libc::RLIMIT_AS,
        rlimit(vm_size(pid), libc::RLIM_INFINITY),
    );
    let mut clients = flood(&server, PAST_THE_STACK_POOL, 1_000_000);
    // A connection whose coroutine could not start is closed without an answer.
    wait_until("a flood connection closed without an answer", || {
        clients
            .iter()
            .any(|c| seen(c) == Seen::Closed)
            .then_some(())
    });
    prlimit(pid, libc::RLIMIT_AS, unlimited);

    // Serving resumes: a new connection is answered (after the rest of the flood).
    server.accept_ok(1);
    let mut closed = 0;
    for (i, client) in clients.iter_mut().enumerate() {
        if answer(client, &format!("flood connection {i}")).is_none() {
            closed += 1;
        }
    }
    assert!(
        (1..PAST_THE_STACK_POOL).contains(&closed),
        "{closed} of {PAST_THE_STACK_POOL} closed"
    );
    drop(clients);
    // Each refused connection is counted, and its admission released: once the flood has
    // gone only the control connection is open. The log says so at most every 10 s, and no
    // panic message reaches stderr.
    let page = wait_until("only the control connection open", || {
        let page = control.get("/metrics").text();
        (metric(&page, "verve_open_connections") == 1.0).then_some(page)
    });
    assert_eq!(metric(&page, "verve_accept_errors_total"), closed as f64);
    let line = server.wait_for_log("the spawn failure warning", |l| {
        l.contains(" WARN ") && l.contains("starting a connection's coroutine failed ")
    });
    assert!(line.contains("failed to alloc sys stack"), "{line}");
    assert!(!server.stderr().contains("panicked"), "{}", server.stderr());
    wait_until("/healthz 200 again", || {
        (healthz(&mut control) == 200).then_some(())
    });
    server.assert_serves();
}

#[test]
fn a_flood_past_the_descriptor_limit_waits_and_is_served_as_descriptors_free_up() {
    /// Descriptors verve may open: a few dozen of its own, the rest for connections.
    const NOFILE: u64 = 128;
    const FLOOD: usize = 200;
    let mut server = Server::start_with(
        temp_dir("nofile"),
        INTERVAL,
        // Above what the descriptors allow (the default would stop at 64), so that accept
        // itself runs out.
        &["--max-connections", "100000"],
        |cmd| {
            // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
            unsafe {
                cmd.pre_exec(|| {
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &rlimit(NOFILE, NOFILE)) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        },
    );
    let mut control = server.client();
    assert_eq!(healthz(&mut control), 200);
    let mut clients: Vec<Option<Client>> = flood(&server, FLOOD, 2_000_000)
        .into_iter()
        .map(Some)
        .collect();
    // accept fails for want of descriptors: counted, and /healthz says so.
    wait_until("a failed accept", || {
        let page = control.get("/metrics").text();
        (metric(&page, "verve_accept_errors_total") >= 1.0).then_some(())
    });
    wait_until("/healthz 503 while accepting fails", || {
        (healthz(&mut control) == 503).then_some(())
    });
    // The connections that were not accepted wait: none is closed. Each one answered is read
    // and closed, which frees a descriptor for the next.
    let mut answered = 0;
    wait_until("every flood connection answered", || {
        for slot in clients.iter_mut() {
            let Some(client) = slot else { continue };
            match seen(client) {
                Seen::Nothing => {}
                Seen::Answer => {
                    let what = format!("flood connection {answered}");
                    assert!(answer(client, &what).is_some(), "{what} closed");
                    answered += 1;
                    *slot = None;
                }
                Seen::Closed => panic!("a waiting connection was closed unanswered"),
            }
        }
        (answered == FLOOD).then_some(())
    });
    let line = server.wait_for_log("the accept failure warning", |l| {
        l.contains(" WARN ") && l.contains("accepting a connection failed ")
    });
    assert!(line.contains("Too many open files"), "{line}");
    wait_until("/healthz 200 again", || {
        (healthz(&mut control) == 200).then_some(())
    });
    server.assert_serves();
}

#[test]
fn a_flood_past_max_connections_waits_and_is_served_as_connections_close() {
    const MAX: usize = 20;
    let mut server = Server::start(INTERVAL, &["--max-connections", &MAX.to_string()]);
    let mut control = server.client();
    assert_eq!(healthz(&mut control), 200);
    let held: Vec<Client> = (1..MAX).map(|_| server.client()).collect();
    // The control connection and the held ones make MAX: /healthz turns 503.
    wait_until("/healthz 503 at the limit", || {
        (healthz(&mut control) == 503).then_some(())
    });
    let mut waiting = flood(&server, 10, 3_000_000);
    let page = control.get("/metrics").text();
    assert_eq!(metric(&page, "verve_max_connections"), MAX as f64);
    assert_eq!(
        metric(&page, "verve_open_connections"),
        MAX as f64,
        "never more than the limit"
    );
    assert_eq!(
        metric(&page, "verve_accept_errors_total"),
        0.0,
        "waiting is no error"
    );
    // Connections that close make room: every waiting one is taken and answered.
    drop(held);
    for (i, client) in waiting.iter_mut().enumerate() {
        let what = format!("waiting connection {i}");
        assert!(answer(client, &what).is_some(), "{what} closed unanswered");
    }
    drop(waiting);
    wait_until("/healthz 200 below the limit", || {
        (healthz(&mut control) == 200).then_some(())
    });
    wait_until("only the control connection open", || {
        let page = control.get("/metrics").text();
        (metric(&page, "verve_open_connections") == 1.0).then_some(())
    });
    server.assert_serves();
    server.wait_for_log("the limit's warning", |l| {
        l.contains(" WARN ") && l.contains("the --max-connections limit")
    });
}

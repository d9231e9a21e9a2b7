//! Test helpers shared by the callback modules' tests: a resolver that answers what the test
//! says, a one-connection HTTP responder on loopback, and the settings the tests start from.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use ureq::unversioned::resolver::{ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::NextTimeout;

use super::{Method, Settings, DEFAULT_HOST_CALLS};
use crate::endpoints::EndpointPolicy;

/// A loopback port nobody listens on: a call to it fails at once with "connection refused".
pub fn unused_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn settings(policy: EndpointPolicy) -> Settings {
    Settings {
        method: Method::Get,
        timeout: Duration::from_secs(5),
        policy,
        queue_len: 8,
        host_calls: DEFAULT_HOST_CALLS as usize,
        threads: 4,
        patience: Duration::from_secs(60),
        journal: None,
    }
}

/// Resolves every name to `addrs`, as a hostile or careless DNS server could.
#[derive(Debug)]
pub struct FixedResolver(pub Vec<SocketAddr>);

impl Resolver for FixedResolver {
    fn resolve(
        &self,
        _uri: &ureq::http::Uri,
        _config: &ureq::config::Config,
        _timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let mut out = self.empty();
        for a in &self.0 {
            out.push(*a);
        }
        Ok(out)
    }
}

/// A one-connection HTTP responder on loopback: answers 200 to the first request, and
/// says how many connections it accepted.
pub fn responder() -> (SocketAddr, std::thread::JoinHandle<usize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let handle = std::thread::spawn(move || {
        let mut accepted = 0;
        listener.set_nonblocking(false).unwrap();
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { break };
            accepted += 1;
            let mut buf = [0u8; 4096];
            let n = stream.read(&mut buf).unwrap_or(0);
            if n == 0 || buf.starts_with(b"STOP") {
                break;
            }
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
        }
        accepted
    });
    (addr, handle)
}

pub fn stop(addr: SocketAddr) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(b"STOP").unwrap();
}

//! A tiny threaded HTTP server that stands in for callback endpoints: it records every
//! request and answers as the test says (status, delay, `Location`).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::*;

/// One request the receiver got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub method: String,
    /// Path and query, as sent.
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }
}

/// How the receiver answers one request.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    /// Pause before answering.
    pub delay: Duration,
    /// A `Location` header.
    pub location: Option<String>,
}

impl Reply {
    pub fn status(status: u16) -> Reply {
        Reply {
            status,
            delay: Duration::ZERO,
            location: None,
        }
    }
}

type Handler = dyn Fn(&Received) -> Reply + Send + Sync;

/// A tiny threaded HTTP/1.1 server that records every request (keep-alive aware) and answers
/// as its handler says.
pub struct Receiver {
    pub addr: SocketAddr,
    requests: Arc<Mutex<Vec<Received>>>,
    stop: Arc<AtomicBool>,
}

impl Receiver {
    /// Listens on `127.0.0.1:0`.
    pub fn start(handler: impl Fn(&Received) -> Reply + Send + Sync + 'static) -> Receiver {
        Self::start_on(Ipv4Addr::LOCALHOST, handler)
    }

    /// Listens on `ip:0` (any loopback address).
    pub fn start_on(
        ip: Ipv4Addr,
        handler: impl Fn(&Received) -> Reply + Send + Sync + 'static,
    ) -> Receiver {
        Receiver::start_at((ip, 0), handler)
    }

    /// [`Receiver::start_on`] at a given port (0: any free one).
    pub fn start_at(
        addr: (Ipv4Addr, u16),
        handler: impl Fn(&Received) -> Reply + Send + Sync + 'static,
    ) -> Receiver {
        let listener = TcpListener::bind(addr).expect("binding the receiver");
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let handler: Arc<Handler> = Arc::new(handler);
        {
            let (requests, stop) = (requests.clone(), stop.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let (requests, handler) = (requests.clone(), handler.clone());
                    std::thread::spawn(move || serve_receiver(stream, &requests, &*handler));
                }
            });
        }
        Receiver {
            addr,
            requests,
            stop,
        }
    }

    /// `http://<addr><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<Received> {
        self.requests.lock().unwrap().clone()
    }

    /// Waits until at least `n` requests arrived and returns them all.
    pub fn wait_for_requests(&self, n: usize) -> Vec<Received> {
        wait_until(&format!("{n} requests at the receiver"), || {
            let got = self.requests();
            (got.len() >= n).then_some(got)
        })
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
    }
}

/// Serves one receiver connection: request after request until the peer leaves.
fn serve_receiver(mut stream: TcpStream, requests: &Mutex<Vec<Received>>, handler: &Handler) {
    let _ = stream.set_read_timeout(Some(DEADLINE));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let end = loop {
            if let Some(end) = head_end(&buf) {
                break end;
            }
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let Ok(head) = std::str::from_utf8(&buf[..end]) else {
            return;
        };
        let mut lines = head.split("\r\n");
        let mut first = lines.next().unwrap_or("").split(' ');
        let method = first.next().unwrap_or("").to_string();
        let target = first.next().unwrap_or("").to_string();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
            .collect();
        let len: usize = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        while buf.len() < end + 4 + len {
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body = buf[end + 4..end + 4 + len].to_vec();
        buf.drain(..end + 4 + len);
        let received = Received {
            method,
            target,
            headers,
            body,
        };
        requests.lock().unwrap().push(received.clone());
        let reply = handler(&received);
        std::thread::sleep(reply.delay);
        let mut answer = format!(
            "HTTP/1.1 {} Test\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n",
            reply.status
        );
        if let Some(location) = &reply.location {
            answer.push_str(&format!("Location: {location}\r\n"));
        }
        answer.push_str("\r\nhi");
        if stream.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

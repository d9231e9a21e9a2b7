//! A SASL/PLAIN gate in front of a broker, for the tests of verve's SASL options: it takes
//! each client's login itself (Kafka's SaslHandshake v0-1 and SaslAuthenticate v0-1, as
//! a broker does) and, once the user and password are right, pipes the connection to the
//! broker behind it; a wrong password gets the broker's answer to one, SASL authentication
//! failed, and the connection closed. The broker must advertise the gate's port.
//!
//! It stands in for a broker's own check because tansu 0.6 cannot accept a SASL login with
//! its in-memory storage: it has no PLAIN, keeps no SCRAM users there, and has no validator
//! for OAUTHBEARER tokens. (It refuses logins for real, which tests/kafka_tls.rs also uses.)

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

const API_VERSIONS: i16 = 18;
const SASL_HANDSHAKE: i16 = 17;
const SASL_AUTHENTICATE: i16 = 36;
const UNSUPPORTED_SASL_MECHANISM: i16 = 33;
const SASL_AUTHENTICATION_FAILED: i16 = 58;

/// The gate: listening from [`SaslGate::bind`], serving from [`SaslGate::serve`].
pub struct SaslGate {
    listener: Option<TcpListener>,
    pub port: u16,
    stop: Arc<AtomicBool>,
}

impl SaslGate {
    /// Binds a free loopback port (for the broker to advertise before the gate serves).
    pub fn bind() -> SaslGate {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        SaslGate {
            listener: Some(listener),
            port,
            stop: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Lets clients that log in as `user` with `password` through to the broker on
    /// `broker_port`, each connection on threads of its own.
    pub fn serve(&mut self, broker_port: u16, user: &str, password: &str) {
        let listener = self.listener.take().expect("served once");
        let stop = self.stop.clone();
        let login = format!("{user}\0{password}");
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(client) = client else { continue };
                let login = login.clone();
                std::thread::spawn(move || {
                    if let Ok(broker) = TcpStream::connect(("127.0.0.1", broker_port)) {
                        gate(client, broker, &login);
                    }
                });
            }
        });
    }
}

impl Drop for SaslGate {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wakes the accept loop, which then sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn read_frame(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut size = [0u8; 4];
    stream.read_exact(&mut size).ok()?;
    let mut frame = vec![0u8; i32::from_be_bytes(size).max(0) as usize];
    stream.read_exact(&mut frame).ok()?;
    Some(frame)
}

fn write_frame(stream: &mut TcpStream, body: &[u8]) -> Option<()> {
    stream.write_all(&(body.len() as i32).to_be_bytes()).ok()?;
    stream.write_all(body).ok()
}

/// A request's api key, version, correlation id and body (past the v1 header: those three
/// and the client id).
fn parse_request(frame: &[u8]) -> Option<(i16, i16, [u8; 4], &[u8])> {
    let api_key = i16::from_be_bytes(frame.get(0..2)?.try_into().ok()?);
    let version = i16::from_be_bytes(frame.get(2..4)?.try_into().ok()?);
    let correlation: [u8; 4] = frame.get(4..8)?.try_into().ok()?;
    let client_id_len = i16::from_be_bytes(frame.get(8..10)?.try_into().ok()?);
    let body = frame.get(10 + client_id_len.max(0) as usize..)?;
    Some((api_key, version, correlation, body))
}

/// A Kafka STRING.
fn string(s: &str) -> Vec<u8> {
    let mut out = (s.len() as i16).to_be_bytes().to_vec();
    out.extend_from_slice(s.as_bytes());
    out
}

/// Serves one client: its ApiVersions go to the broker, its login is checked here, and
/// after a good one everything is piped both ways.
fn gate(mut client: TcpStream, mut broker: TcpStream, login: &str) {
    loop {
        let Some(frame) = read_frame(&mut client) else {
            return;
        };
        let Some((api_key, version, correlation, body)) = parse_request(&frame) else {
            return;
        };
        let mut reply = correlation.to_vec();
        match api_key {
            API_VERSIONS => {
                let answer = write_frame(&mut broker, &frame)
                    .and_then(|()| read_frame(&mut broker))
                    .and_then(|answer| write_frame(&mut client, &answer));
                if answer.is_none() {
                    return;
                }
                continue;
            }
            SASL_HANDSHAKE => {
                let mechanism = body
                    .get(2..)
                    .map(|m| String::from_utf8_lossy(m).into_owned());
                let error = if mechanism.as_deref() == Some("PLAIN") {
                    0
                } else {
                    UNSUPPORTED_SASL_MECHANISM
                };
                reply.extend_from_slice(&i16::to_be_bytes(error));
                reply.extend_from_slice(&1i32.to_be_bytes());
                reply.extend_from_slice(&string("PLAIN"));
                if write_frame(&mut client, &reply).is_none() || error != 0 {
                    return;
                }
            }
            SASL_AUTHENTICATE => {
                // PLAIN: [authzid] NUL authcid NUL password.
                let token = body.get(4..).unwrap_or_default();
                let given = String::from_utf8_lossy(token);
                let accepted = given
                    .split_once('\0')
                    .is_some_and(|(_, rest)| rest == login);
                let (error, message) = if accepted {
                    (0, None)
                } else {
                    (
                        SASL_AUTHENTICATION_FAILED,
                        Some("Authentication failed: invalid username or password"),
                    )
                };
                reply.extend_from_slice(&i16::to_be_bytes(error));
                match message {
                    Some(m) => reply.extend_from_slice(&string(m)),
                    None => reply.extend_from_slice(&(-1i16).to_be_bytes()),
                }
                reply.extend_from_slice(&0i32.to_be_bytes());
                if version >= 1 {
                    reply.extend_from_slice(&0i64.to_be_bytes());
                }
                if write_frame(&mut client, &reply).is_none() || !accepted {
                    let _ = client.shutdown(Shutdown::Both);
                    return;
                }
                break;
            }
            // Anything else before a login: a broker that requires one hangs up.
            _ => return,
        }
    }
    pipe(client, broker);
}

/// Copies bytes both ways until either side closes.
fn pipe(client: TcpStream, broker: TcpStream) {
    let (Ok(mut client_in), Ok(mut broker_in)) = (client.try_clone(), broker.try_clone()) else {
        return;
    };
    let (mut client_out, mut broker_out) = (client, broker);
    let up = std::thread::spawn(move || {
        let _ = std::io::copy(&mut client_in, &mut broker_out);
        let _ = broker_out.shutdown(Shutdown::Both);
    });
    let _ = std::io::copy(&mut broker_in, &mut client_out);
    let _ = client_out.shutdown(Shutdown::Both);
    let _ = up.join();
}

//! Kafka over TLS and with SASL: the real `verve` binary with `--kafka-option`s against a real
//! broker (tansu, see `common::kafka_broker`) that only speaks TLS, or that requires a login.
//!
//! tansu 0.6 has `--cert` and `--key` flags, but refuses them together and serves plain TCP
//! regardless, so TLS is nginx's stream module in front of it, with a certificate from a CA the test makes with `openssl`; the broker
//! advertises the TLS port, so every connection, the test's reader's too, goes through it.
//! tansu requires SASL logins when asked to, but accepts none with its in-memory storage (no
//! PLAIN, no SCRAM users kept, no OAUTHBEARER validator): it refuses verve's SCRAM login for
//! real, and the right and the wrong password are told apart by a SASL/PLAIN gate in front
//! of an open tansu (`common::sasl_gate`).
//!
//! Debian packages needed: `nginx` and `libnginx-mod-stream` (the TLS proxy), `openssl` (the
//! certificates); and tansu, as for tests/kafka.rs.
//!
//! Windows are one second long, and every wait is for an event (a log line, a record).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use common::kafka_broker::{free_port, Broker, Setup};
use common::kafka_log::{delivered, expected, lost, metric, stop};
use common::sasl_gate::SaslGate;
use common::{temp_dir, wait_until, Server};

const INTERVAL: u64 = 1;
const TOPIC: &str = "unique-requests";

/// A password that must never show in verve's log or on its stderr.
const SECRET: &str = "Hunter2-never-print-me";

/// A CA and a server certificate it signed for 127.0.0.1, and a second CA that signed
/// nothing, made with `openssl` in a temp dir.
struct Certs {
    dir: PathBuf,
}

/// The extensions of the two kinds of certificate (an `openssl` config of their own, so
/// the system's does not matter).
const OPENSSL_CONFIG: &str = "\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = verve test
[ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[server]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1
";

impl Certs {
    fn make() -> Certs {
        let dir = temp_dir("certs");
        std::fs::write(dir.join("openssl.cnf"), OPENSSL_CONFIG).unwrap();
        let new_key = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-noenc",
        ];
        for ca in ["ca", "other-ca"] {
            openssl(
                &dir,
                &[
                    &[
                        "req",
                        "-x509",
                        "-config",
                        "openssl.cnf",
                        "-extensions",
                        "ca",
                    ][..],
                    &new_key,
                    &[
                        "-keyout",
                        &format!("{ca}.key"),
                        "-out",
                        &format!("{ca}.crt"),
                    ],
                    &["-days", "2", "-subj", &format!("/CN=verve test {ca}")],
                ]
                .concat(),
            );
        }
        openssl(
            &dir,
            &[
                &["req", "-new", "-config", "openssl.cnf"][..],
                &new_key,
                &[
                    "-keyout",
                    "server.key",
                    "-out",
                    "server.csr",
                    "-subj",
                    "/CN=127.0.0.1",
                ],
            ]
            .concat(),
        );
        openssl(
            &dir,
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-set_serial",
                "1",
                "-days",
                "2",
                "-extfile",
                "openssl.cnf",
                "-extensions",
                "server",
                "-out",
                "server.crt",
            ],
        );
        Certs { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).to_str().unwrap().to_owned()
    }
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("running openssl (Debian package openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// nginx terminating TLS on `port` in front of a broker's plain port; stopped on drop.
struct TlsProxy {
    child: Child,
    dir: PathBuf,
}

/// Where Debian's `libnginx-mod-stream` puts the stream module.
const STREAM_MODULE: &str = "/usr/lib/nginx/modules/ngx_stream_module.so";

impl TlsProxy {
    fn start(port: u16, broker_port: u16, certs: &Certs) -> TlsProxy {
        assert!(
            Path::new(STREAM_MODULE).exists(),
            "{STREAM_MODULE} is missing: apt-get install -y libnginx-mod-stream"
        );
        let dir = temp_dir("tls-proxy");
        let d = dir.display();
        let config = format!(
            "load_module {STREAM_MODULE};\nworker_processes 1;\npid {d}/nginx.pid;\n\
             error_log {d}/error.log warn;\nevents {{ worker_connections 64; }}\n\
             stream {{\n  server {{\n    listen 127.0.0.1:{port} ssl;\n\
               ssl_certificate {};\n    ssl_certificate_key {};\n\
               proxy_pass 127.0.0.1:{broker_port};\n  }}\n}}\n",
            certs.path("server.crt"),
            certs.path("server.key"),
        );
        let conf = dir.join("nginx.conf");
        std::fs::write(&conf, config).unwrap();
        let nginx = if Path::new("/usr/sbin/nginx").exists() {
            "/usr/sbin/nginx"
        } else {
            "nginx"
        };
        let child = Command::new(nginx)
            .arg("-c")
            .arg(&conf)
            .arg("-p")
            .arg(&dir)
            .arg("-e")
            .arg(dir.join("error.log"))
            .args(["-g", "daemon off;"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting nginx (Debian package nginx)");
        let proxy = TlsProxy { child, dir };
        wait_until("nginx to listen", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        });
        proxy
    }
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child. SIGTERM: nginx's fast stop (a graceful one would
        // wait for the proxied connections to end).
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A broker that only speaks TLS: tansu on a plain port that it does not advertise, and the
/// proxy on the port it does. The test's reader goes through the proxy too, verifying the
/// certificate with the test's CA.
fn tls_broker(certs: &Certs) -> (Broker, TlsProxy, String) {
    let tls_port = free_port();
    let setup = Setup {
        advertised_port: Some(tls_port),
        ..Setup::default()
    };
    let mut broker = Broker::start_with(free_port(), setup);
    let proxy = TlsProxy::start(tls_port, broker.port, certs);
    let bootstrap = format!("127.0.0.1:{tls_port}");
    let ca = certs.path("ca.crt");
    broker.use_clients(
        &bootstrap,
        &[("security.protocol", "ssl"), ("ssl.ca.location", &ca)],
    );
    (broker, proxy, bootstrap)
}

/// `--kafka-option KEY=VALUE` for each pair.
fn options(pairs: &[(&str, &str)]) -> Vec<String> {
    pairs
        .iter()
        .flat_map(|(k, v)| ["--kafka-option".to_owned(), format!("{k}={v}")])
        .collect()
}

fn start(bootstrap: &str, pairs: &[(&str, &str)]) -> Server {
    let mut args = vec!["--kafka-brokers".to_owned(), bootstrap.to_owned()];
    args.extend(options(pairs));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Server::start(INTERVAL, &args)
}

/// Waits until a window's record is delivered, stops verve and checks that the topic is the
/// count log: every window once, in order.
fn every_window_arrives(broker: &Broker, server: Server) -> Server {
    server.wait_for_log("the topic created at start-up", |l| {
        l.contains(" kafka ") && l.contains(&format!("topic {TOPIC} created"))
    });
    let (busy, ()) = server.in_one_window(|attempt| {
        let base = 1000 * i64::from(attempt);
        for id in [1, 2, 3, 2, 1] {
            server.accept_ok(base + id);
        }
    });
    assert_eq!(server.wait_for_window(busy).unique_count, 3);
    wait_until("the busy window's record delivered", || {
        delivered(&server).contains(&busy).then_some(())
    });
    let (server, lines) = stop(server);
    let records = broker.read_topic(TOPIC, lines.len());
    assert_eq!(records, expected(&lines), "log:\n{}", server.log());
    assert!(lost(&server).is_empty());
    server
}

/// A broker that verve cannot use: the error is logged and counted, records wait in the
/// backlog, verve keeps serving, and nothing is delivered. Returns the `kafka` warnings.
fn refused_but_serving(server: &Server) -> Vec<String> {
    let before = server.count_lines().len();
    server.accept_ok(7);
    server.wait_for_count_lines(before + 3);
    wait_until("kafka errors counted", || {
        (metric(server, "verve_kafka_errors_total") > 0).then_some(())
    });
    assert!(metric(server, "verve_backlog_windows") > 0);
    assert!(delivered(server).is_empty(), "log:\n{}", server.log());
    assert_eq!(server.get("/healthz").status, 200);
    server.accept_ok(8);
    server
        .log_lines()
        .into_iter()
        .filter(|l| l.contains(" WARN kafka "))
        .collect()
}

#[test]
fn over_tls_with_the_certificate_verified_each_window_is_one_record() {
    let certs = Certs::make();
    let (broker, _proxy, bootstrap) = tls_broker(&certs);
    let ca = certs.path("ca.crt");
    let server = start(
        &bootstrap,
        &[("security.protocol", "ssl"), ("ssl.ca.location", &ca)],
    );
    let server = every_window_arrives(&broker, server);
    // The start-up line lists the options.
    let line = server.wait_for_log("the kafka start-up line", |l| {
        l.contains(" kafka: brokers ")
    });
    assert!(
        line.contains(&format!(
            "options security.protocol=ssl ssl.ca.location={ca}"
        )),
        "{line}"
    );
}

#[test]
fn a_certificate_from_another_ca_is_an_error_and_records_wait() {
    let certs = Certs::make();
    let (_broker, _proxy, bootstrap) = tls_broker(&certs);
    let server = start(
        &bootstrap,
        &[
            ("security.protocol", "ssl"),
            ("ssl.ca.location", &certs.path("other-ca.crt")),
        ],
    );
    let warnings = refused_but_serving(&server);
    assert!(
        warnings
            .iter()
            .any(|l| l.contains("certificate verify failed")),
        "no verification error logged:\n{}",
        server.log()
    );
}

/// The SASL/PLAIN options of a client that logs in as `verve` with `password`.
fn plain_login(password: &str) -> Vec<(&'static str, String)> {
    vec![
        ("security.protocol", "sasl_plaintext".into()),
        ("sasl.mechanism", "PLAIN".into()),
        ("sasl.username", "verve".into()),
        ("sasl.password", password.into()),
    ]
}

fn borrowed<'a>(pairs: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    pairs.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// A broker behind a SASL/PLAIN gate that lets `verve` in with `password`; the test's reader
/// logs in too.
fn sasl_broker(password: &str) -> (Broker, SaslGate) {
    let mut gate = SaslGate::bind();
    let setup = Setup {
        advertised_port: Some(gate.port),
        ..Setup::default()
    };
    let mut broker = Broker::start_with(free_port(), setup);
    gate.serve(broker.port, "verve", password);
    let login = plain_login(password);
    broker.use_clients(&format!("127.0.0.1:{}", gate.port), &borrowed(&login));
    (broker, gate)
}

#[test]
fn with_the_right_sasl_password_each_window_is_one_record() {
    let (broker, gate) = sasl_broker(SECRET);
    let login = plain_login(SECRET);
    let server = start(&format!("127.0.0.1:{}", gate.port), &borrowed(&login));
    let server = every_window_arrives(&broker, server);
    let line = server.wait_for_log("the kafka start-up line", |l| {
        l.contains(" kafka: brokers ")
    });
    assert!(
        line.contains(
            "options security.protocol=sasl_plaintext sasl.mechanism=PLAIN \
             sasl.username=verve sasl.password=***"
        ),
        "{line}"
    );
    assert!(!server.log().contains(SECRET), "{}", server.log());
    assert!(!server.stderr().contains(SECRET), "{}", server.stderr());
}

#[test]
fn a_wrong_sasl_password_is_an_error_that_never_shows_it() {
    let (_broker, gate) = sasl_broker("the-right-password");
    // The list from the environment, as the unit's environment file holds it, with
    // librdkafka's security debugging on.
    let list = format!(
        "security.protocol=sasl_plaintext,sasl.mechanism=PLAIN,sasl.username=verve,\
         sasl.password={SECRET},debug=security\\,broker"
    );
    let server = Server::start_with_env(
        temp_dir("srv"),
        INTERVAL,
        &["--kafka-brokers", &format!("127.0.0.1:{}", gate.port)],
        &[("VERVE_KAFKA_OPTION", &list)],
    );
    let warnings = refused_but_serving(&server);
    assert!(
        warnings
            .iter()
            .any(|l| l.contains("SASL authentication error")
                && l.contains("invalid username or password")),
        "no SASL error logged:\n{}",
        server.log()
    );
    let line = server.wait_for_log("the kafka start-up line", |l| {
        l.contains(" kafka: brokers ")
    });
    assert!(
        line.contains(
            "options security.protocol=sasl_plaintext sasl.mechanism=PLAIN \
             sasl.username=verve sasl.password=*** debug=security,broker"
        ),
        "{line}"
    );
    // librdkafka's debug lines, which reach the log, say what it did; none holds the password.
    assert!(
        server
            .log_lines()
            .iter()
            .any(|l| l.contains(" INFO kafka librdkafka ") && l.contains("SASL mechanism PLAIN")),
        "no librdkafka debug lines:\n{}",
        server.log()
    );
    let (server, _) = stop(server);
    assert!(!server.log().contains(SECRET), "{}", server.log());
    assert!(!server.stderr().contains(SECRET), "{}", server.stderr());
}

#[test]
fn a_broker_that_refuses_the_login_is_an_error_and_records_wait() {
    // tansu's own SASL check: it offers SCRAM-SHA-512, and knows no user.
    let broker = Broker::start_with(
        free_port(),
        Setup {
            authentication: true,
            ..Setup::default()
        },
    );
    let server = start(
        &broker.bootstrap(),
        &[
            ("security.protocol", "sasl_plaintext"),
            ("sasl.mechanism", "SCRAM-SHA-512"),
            ("sasl.username", "verve"),
            ("sasl.password", SECRET),
        ],
    );
    let warnings = refused_but_serving(&server);
    assert!(
        warnings
            .iter()
            .any(|l| l.contains("SASL authentication error")
                && l.contains("SASL SCRAM authentication failed")),
        "no SASL error logged:\n{}",
        server.log()
    );
    let (server, _) = stop(server);
    assert!(!server.log().contains(SECRET), "{}", server.log());
    assert!(!server.stderr().contains(SECRET), "{}", server.stderr());
}

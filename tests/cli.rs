//! The command line (README, *Flags*): a bad flag or value is refused at start-up with exit code
//! 2 and a message naming it, also when it comes from the environment; `--help` and
//! `--version` exit 0. `--kafka-option`s that verve or librdkafka refuse are named by their
//! key, and a secret value is never shown.

mod common;

use std::io::Read;
use std::net::{Ipv4Addr, TcpListener};
use std::process::{Output, Stdio};

use common::{command, temp_dir, wait_until};

/// Runs the binary in a temp dir with `args` and `env`, waits for it to exit (killing it if
/// it is still running after the deadline, which fails the test) and returns its output.
/// Unless `args` sets them, `--listen 127.0.0.1:0` and a log file in the temp dir are added so
/// that a binary that wrongly starts serving touches nothing shared.
fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let dir = temp_dir("cli");
    let mut cmd = command(&dir);
    if !args.contains(&"--listen") {
        cmd.args(["--listen", "127.0.0.1:0"]);
    }
    if !args.contains(&"--log-file") {
        cmd.arg("--log-file").arg(dir.join("verve.log"));
    }
    let mut child = cmd
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning verve");
    // Drain both pipes on threads so a chatty process cannot block.
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let exited = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_until(&format!("verve {args:?} to exit"), || {
            child.try_wait().expect("try_wait")
        })
    }));
    if exited.is_err() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let stdout = out.join().unwrap();
    let stderr = err.join().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let status = exited.unwrap_or_else(|_| {
        panic!(
            "verve {args:?} did not exit; stderr: {}",
            String::from_utf8_lossy(&stderr)
        )
    });
    Output {
        status,
        stdout,
        stderr,
    }
}

/// Panics unless the run exited 2 with a stderr message containing `names`.
fn refused(out: &Output, names: &str, what: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{what}: stderr {stderr}");
    assert!(
        stderr.contains(names),
        "{what}: stderr does not name {names:?}: {stderr}"
    );
    assert!(
        out.stdout.is_empty(),
        "{what}: nothing on stdout: {:?}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn bad_values_exit_2_naming_the_flag() {
    for (args, flag) in [
        (&["--interval", "0"][..], "--interval"),
        (&["--interval=-5"], "--interval"),
        (&["--interval", "abc"], "--interval"),
        (&["--listen", "nowhere"], "--listen"),
        (&["--listen", "127.0.0.1"], "--listen"),
        (&["--endpoint-method", "put"], "--endpoint-method"),
        (&["--endpoint-timeout", "0"], "--endpoint-timeout"),
        (&["--endpoint-timeout", "soon"], "--endpoint-timeout"),
        (&["--max-endpoints", "0"], "--max-endpoints"),
        (&["--max-endpoints", "many"], "--max-endpoints"),
        (&["--endpoint-host-calls", "0"], "--endpoint-host-calls"),
        (&["--max-connections", "0"], "--max-connections"),
        (&["--max-connections", "lots"], "--max-connections"),
        (&["--endpoint-allow", "10.0.0.1/8"], "--endpoint-allow"),
        (&["--idle-timeout=-1"], "--idle-timeout"),
        (&["--workers", "0"], "--workers"),
        (&["--endpoint-allow", "*."], "--endpoint-allow"),
    ] {
        refused(&run(args, &[]), flag, &format!("{args:?}"));
    }
}

#[test]
fn unknown_flag_exits_2_naming_it() {
    refused(&run(&["--bogus"], &[]), "--bogus", "--bogus");
    refused(
        &run(&["--interval", "1", "--no-such-flag", "x"], &[]),
        "--no-such-flag",
        "--no-such-flag",
    );
}

#[test]
fn unopenable_log_file_exits_2() {
    let out = run(&["--log-file", "/nonexistent-dir/x.log"], &[]);
    refused(&out, "--log-file", "unopenable log file");
}

#[test]
fn unbindable_listen_address_exits_2() {
    let taken = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = run(&["--listen", &addr], &[]);
    refused(&out, "--listen", "address in use");
}

#[test]
fn environment_values_are_checked_too() {
    let out = run(&[], &[("VERVE_INTERVAL", "0")]);
    refused(&out, "interval", "VERVE_INTERVAL=0");
    let out = run(&[], &[("VERVE_ENDPOINT_METHOD", "put")]);
    refused(&out, "endpoint-method", "VERVE_ENDPOINT_METHOD=put");
    // A flag on the command line wins over the environment.
    let out = run(&["--interval", "0"], &[("VERVE_INTERVAL", "5")]);
    refused(&out, "--interval", "flag over env");
}

#[test]
fn help_and_version_exit_0() {
    let out = run(&["--help"], &[]);
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--listen",
        "--interval",
        "--log-file",
        "--endpoint-method",
        "--endpoint-timeout",
        "--max-endpoints",
        "--endpoint-allow",
        "--endpoint-host-calls",
        "VERVE_ENDPOINT_HOST_CALLS",
        "--max-connections",
        "VERVE_MAX_CONNECTIONS",
        "RLIMIT_NOFILE",
        "vm.max_map_count",
        "--idle-timeout",
        "--workers",
        "--state-file",
        "--redis",
        "--cluster-grace",
        "--cluster-backlog",
        "--kafka-brokers",
        "--kafka-topic",
        "--kafka-backlog",
        "--kafka-option",
        "VERVE_KAFKA_OPTION",
        "VERVE_INTERVAL",
        "VERVE_KAFKA_BROKERS",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}:\n{help}");
    }
    let out = run(&["--version"], &[]);
    assert_eq!(out.status.code(), Some(0));
    let version = String::from_utf8_lossy(&out.stdout);
    assert!(
        version.contains(env!("CARGO_PKG_VERSION")),
        "--version: {version}"
    );
}

#[test]
fn environment_settings_are_used() {
    // Settings from the environment alone: the server starts, on the interval given there.
    let dir = temp_dir("cli-env");
    let log = dir.join("env.log");
    let mut child = command(&dir)
        .env("VERVE_LISTEN", "127.0.0.1:0")
        .env("VERVE_INTERVAL", "1")
        .env("VERVE_LOG_FILE", &log)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawning verve");
    let mut stdout = child.stdout.take().unwrap();
    let first = std::thread::spawn(move || {
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while stdout.read(&mut byte).unwrap_or(0) == 1 && byte[0] != b'\n' {
            line.push(byte[0]);
        }
        String::from_utf8_lossy(&line).into_owned()
    });
    let lines = std::panic::catch_unwind(|| {
        wait_until("two count lines in the env-configured log", || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let lines: Vec<String> = text
                .lines()
                .filter(|l| l.contains("unique_count="))
                .map(str::to_string)
                .collect();
            (lines.len() >= 2).then_some(lines)
        })
    });
    let _ = child.kill();
    let _ = child.wait();
    let first = first.join().unwrap();
    let lines = lines.unwrap_or_else(|_| panic!("no count lines; stdout {first:?}"));
    assert!(
        first.starts_with("verve listening on 127.0.0.1:"),
        "{first:?}"
    );
    let starts: Vec<u64> = lines
        .iter()
        .filter_map(|l| common::parse_count_line(l))
        .map(|c| c.window_start)
        .collect();
    assert_eq!(starts.len(), lines.len());
    assert_eq!(starts[1], starts[0] + 1, "a 1 s interval: {lines:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A broker address nothing listens on: the Kafka clients are made (they connect lazily), so
/// librdkafka judges the options, and nothing is ever delivered.
const NO_BROKER: [&str; 2] = ["--kafka-brokers", "127.0.0.1:1"];

/// Stands for a password: it must never reach stderr, the log or `--help`.
const SECRET: &str = "Hunter2-never-print-me";

#[test]
fn refused_kafka_options_exit_2_naming_the_key() {
    // Refused by verve: they would weaken delivery, or verve sets them.
    let out = run(
        &[&NO_BROKER[..], &["--kafka-option", "acks=1"]].concat(),
        &[],
    );
    refused(&out, "--kafka-option acks: refused", "acks=1");
    let out = run(
        &[
            &NO_BROKER[..],
            &["--kafka-option", "queue.buffering.max.ms=1000"],
        ]
        .concat(),
        &[],
    );
    refused(&out, "queue.buffering.max.ms", "queue.buffering.max.ms");
    // From the environment, where `\,` is a comma inside a value: were it split there,
    // `topic` would be refused as not KEY=VALUE before the property verve refuses.
    let list = format!(r"sasl.password={SECRET},debug=broker\,topic,enable.idempotence=false");
    let out = run(&NO_BROKER, &[("VERVE_KAFKA_OPTION", list.as_str())]);
    refused(
        &out,
        "--kafka-option enable.idempotence: refused",
        "VERVE_KAFKA_OPTION",
    );
    // Refused by librdkafka when the clients are made: an unknown property, a bad value.
    let out = run(
        &[&NO_BROKER[..], &["--kafka-option", "no.such.property=1"]].concat(),
        &[],
    );
    refused(
        &out,
        "--kafka-option no.such.property: librdkafka",
        "unknown property",
    );
    let out = run(
        &[
            &NO_BROKER[..],
            &["--kafka-option", "security.protocol=carrier_pigeon"],
        ]
        .concat(),
        &[],
    );
    refused(
        &out,
        "--kafka-option security.protocol: librdkafka",
        "bad value",
    );
    // Options without Kafka.
    let out = run(&["--kafka-option", "debug=all"], &[]);
    refused(&out, "--kafka-brokers", "no brokers");
}

#[test]
fn a_secret_value_is_never_shown() {
    // A key file that does not exist, with its password: librdkafka cannot make the client,
    // and says which option failed.
    let dir = temp_dir("cli-secret");
    let log = dir.join("verve.log");
    let log_arg = log.to_str().unwrap();
    let key_password = format!("ssl.key.password={SECRET}");
    let out = run(
        &[
            &NO_BROKER[..],
            &["--log-file", log_arg],
            &["--kafka-option", "security.protocol=ssl"],
            &["--kafka-option", "ssl.key.location=/nonexistent/verve.key"],
            &["--kafka-option", &key_password],
        ]
        .concat(),
        &[],
    );
    refused(
        &out,
        "--kafka-option ssl.key.location: librdkafka",
        "missing key file",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains(SECRET), "{stderr}");
    // The start-up line lists the options, the secret masked.
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("ssl.key.password=***"), "{text}");
    assert!(!text.contains(SECRET), "{text}");
    // A secret that is itself the bad value: a private key that is no PEM.
    let key_pem = format!("ssl.key.pem={SECRET}");
    let out = run(
        &[
            &NO_BROKER[..],
            &["--kafka-option", "security.protocol=ssl"],
            &["--kafka-option", &key_pem],
        ]
        .concat(),
        &[],
    );
    refused(&out, "--kafka-option ssl.key.pem: librdkafka", "bad PEM");
    assert!(!String::from_utf8_lossy(&out.stderr).contains(SECRET));
    // Nor in `--help`, with the list in the environment.
    let list = format!("sasl.password={SECRET}");
    let out = run(&["--help"], &[("VERVE_KAFKA_OPTION", list.as_str())]);
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("--kafka-option") && !help.contains(SECRET),
        "{help}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

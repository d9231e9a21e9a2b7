//! The shipped systemd unit, checked with systemd's own tool (Debian package `systemd`,
//! which `scripts/test.sh` installs; it does not need systemd to be running): `systemd-analyze
//! verify` accepts it, and its sandbox keeps the exposure score at 2.0 or below; the example
//! environment file's Kafka options are accepted as systemd would pass them.

use std::path::{Path, PathBuf};
use std::process::Command;

const UNIT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/verve.service");
const INSTALLED_BIN: &str = "/usr/bin/verve";

/// The unit as shipped, except that it runs the binary under test: `verify` checks that the
/// `ExecStart` program exists, and the test must not depend on an installed copy.
fn unit_for_test(tag: &str) -> PathBuf {
    let text = std::fs::read_to_string(UNIT).expect("reading scripts/verve.service");
    let exec = format!("ExecStart={INSTALLED_BIN}");
    assert!(text.contains(&exec), "the unit runs {INSTALLED_BIN}");
    let dir = std::env::temp_dir().join(format!("verve-unit-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("verve.service");
    let local = text.replace(&exec, &format!("ExecStart={}", env!("CARGO_BIN_EXE_verve")));
    std::fs::write(&path, local).unwrap();
    path
}

fn analyze(args: &[&str], unit: &Path) -> (bool, String) {
    let out = Command::new("systemd-analyze")
        .args(args)
        .arg(unit)
        .output()
        .expect("running systemd-analyze (Debian package systemd; scripts/test.sh installs it)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn the_unit_verifies() {
    let unit = unit_for_test("verify");
    let (ok, text) = analyze(&["verify"], &unit);
    assert!(ok, "systemd-analyze verify:\n{text}");
    // verify prints nothing for a clean unit; anything it prints is a finding.
    assert!(text.trim().is_empty(), "systemd-analyze verify:\n{text}");
}

#[test]
fn the_sandbox_exposure_is_at_most_2() {
    let unit = unit_for_test("security");
    let (ok, text) = analyze(&["security", "--offline=yes", "--threshold=20"], &unit);
    let line = text
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no overall exposure line:\n{text}"));
    let score: f64 = line
        .split(':')
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("cannot read the score in {line:?}"));
    assert!(ok && score <= 2.0, "exposure {score} (> 2.0):\n{text}");
}

#[test]
fn the_unit_bounds_memory_and_verve_budgets_half_of_it_for_ids() {
    let text = std::fs::read_to_string(UNIT).unwrap();
    let max = text
        .lines()
        .find_map(|l| l.strip_prefix("MemoryMax="))
        .expect("the unit sets MemoryMax=, from which verve's default --max-memory derives");
    // systemd reads K, M, G as powers of 1024, as --max-memory does.
    let bytes = verve::budget::parse_size(max).unwrap();
    assert_eq!(verve::budget::share_of(bytes), bytes / 2);
}

#[test]
fn the_environment_files_kafka_options_example_is_accepted() {
    // What systemd hands verve for the commented-out example: the value inside the single
    // quotes, as it is.
    let env =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/verve.env")).unwrap();
    let value = env
        .lines()
        .find_map(|l| l.strip_prefix("#VERVE_KAFKA_OPTION='")?.strip_suffix('\''))
        .expect("verve.env has a single-quoted VERVE_KAFKA_OPTION example");
    let config = verve::config::Config::try_load(
        ["verve", "--kafka-brokers", "kafka1.internal:9093"],
        Some(value.into()),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let kafka = config
        .kafka_settings(None)
        .expect("--kafka-brokers is given");
    let options: Vec<String> = kafka.options.iter().map(|o| o.to_string()).collect();
    assert!(
        options.contains(&"sasl.password=***".to_owned()),
        "{options:?}"
    );
    assert!(
        options.contains(&"debug=broker,security".to_owned()),
        "{options:?}"
    );
}

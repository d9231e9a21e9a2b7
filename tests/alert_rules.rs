//! The Prometheus alerting rules in `scripts/verve.rules.yml`: valid (`promtool check rules`),
//! each alert firing and not firing as its unit tests say (`promtool test rules
//! scripts/verve.rules.test.yml`), and naming only metrics that `/metrics` serves.
//!
//! Debian packages needed: `prometheus` (for `promtool`; the Prometheus server it also
//! installs is not started).

use std::path::{Path, PathBuf};
use std::process::Command;

use verve::metrics::Metrics;

fn scripts() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts")
}

/// Runs `promtool ARGS` in `scripts/` and panics with its output unless it succeeds.
fn promtool(args: &[&str]) {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(scripts())
        .output()
        .unwrap_or_else(|e| {
            panic!("running promtool ({e}): install it with `apt-get install -y prometheus`")
        });
    assert!(
        out.status.success(),
        "promtool {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn read(name: &str) -> String {
    std::fs::read_to_string(scripts().join(name)).unwrap()
}

#[test]
fn the_rules_are_valid() {
    promtool(&["check", "rules", "verve.rules.yml"]);
}

#[test]
fn each_alert_fires_and_stays_quiet_as_its_unit_tests_say() {
    promtool(&["test", "rules", "verve.rules.test.yml"]);
    // Every alert has a test, with a case in which it fires and one in which it does not.
    let rules = read("verve.rules.yml");
    let tests = read("verve.rules.test.yml");
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    assert!(alerts.len() >= 10, "{alerts:?}");
    for alert in alerts {
        let cases: Vec<&str> = tests
            .split("- eval_time: ")
            .filter(|case| case.contains(&format!("alertname: {alert}\n")))
            .collect();
        assert!(
            cases.iter().any(|c| c.contains("exp_alerts: []")),
            "{alert} has no case in which it stays quiet"
        );
        assert!(
            cases.iter().any(|c| c.contains("exp_labels:")),
            "{alert} has no case in which it fires"
        );
    }
}

#[test]
fn the_rules_name_only_metrics_that_verve_serves() {
    let page = Metrics::new(1).render(0);
    let served: Vec<&str> = page
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    // In the expressions and in the advice of the annotations alike.
    let rules = read("verve.rules.yml");
    let named: Vec<&str> = rules
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|word| word.starts_with("verve_"))
        .collect();
    assert!(named.len() >= 10, "only {named:?}");
    for word in named {
        assert!(
            served.contains(&word),
            "{word} is not on /metrics: {served:?}"
        );
    }
}

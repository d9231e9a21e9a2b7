//! The Debian package as an administrator meets it. The package is built once per run by
//! `scripts/package.sh` (cargo-deb) with the `deb-test` profile, the release profile without
//! fat LTO, so that the test pays for the packaging and not for the optimiser. Then:
//!
//! - its contents and metadata, read with `dpkg-deb`: the files, their modes and owners, the
//!   conffiles, the dependencies (computed: nothing but the C library and adduser), the
//!   maintainer scripts with the systemd steps filled in;
//! - the environment file against the flags (`verve --help`'s source): every flag listed,
//!   commented out with its default, every value one verve accepts, so that neither can drift;
//! - `verve --version` names the commit, also from a tarball without `.git`;
//! - the whole life on this machine, as root: install (the user, the directories; nothing
//!   started where systemd does not run), `systemd-analyze verify` of the installed unit, the
//!   installed binary run with the installed environment file on a loopback port answers
//!   `ok`, an upgrade keeps an edited conffile and the state, remove keeps the configuration
//!   and the data, purge leaves nothing (no file, no user, no unit);
//! - where systemd runs, install starts the service, an upgrade restarts it (and does not stop
//!   it first), remove stops it: systemd does not run in CI (no /run/systemd/system), so this
//!   runs dpkg in a mount namespace where that directory exists and `systemctl` and
//!   `deb-systemd-invoke` are stand-ins that write down their calls. Whether the real systemd
//!   then starts verve from the installed unit is not tested here.
//!
//! The tests that install change the machine (a package, a user), so they refuse to run where
//! a verve package, user or directory already exists, run one at a time, and need root: CI
//! runs the tests as root; elsewhere run this file with `sudo -E cargo test --test package`.

mod common;

// build.rs's way of finding the commit, tested on a tarball without `.git`.
#[allow(dead_code)]
#[path = "../build.rs"]
mod build_script;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use clap::CommandFactory;
use common::{temp_dir, wait_until, Client};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const ENV_FILE: &str = "/etc/verve/verve.env";
const UNIT: &str = "/usr/lib/systemd/system/verve.service";
const BIN: &str = "/usr/bin/verve";
const STATE_DIR: &str = "/var/lib/verve";
const LOG_DIR: &str = "/var/log/verve";
const STATE_FILE: &str = "/var/lib/verve/verve.state";
const LOG_FILE: &str = "/var/log/verve/verve.log";

/// How long dpkg may wait for another dpkg or apt (scripts/test.sh installing packages in
/// parallel) to release its lock.
const DPKG_LOCK_WAIT: Duration = Duration::from_secs(600);

/// The two packages of a run: the version of Cargo.toml (`-1`) and the same build as `-2`,
/// to upgrade to.
struct Packages {
    first: PathBuf,
    second: PathBuf,
}

/// Built once per run, by the first test that needs them.
fn packages() -> &'static Packages {
    static PACKAGES: OnceLock<Packages> = OnceLock::new();
    PACKAGES.get_or_init(|| {
        // Under the target directory, replaced by each run.
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("deb");
        let _ = std::fs::remove_dir_all(&out);
        std::fs::create_dir_all(&out).unwrap();
        let build = |extra: &[&str]| -> PathBuf {
            let output = Command::new(format!("{ROOT}/scripts/package.sh"))
                // --fast: light compression; --no-dbgsym: the profile has no debug symbols.
                .args(["--profile", "deb-test", "--fast", "--no-dbgsym", "--output"])
                .arg(&out)
                .args(extra)
                .current_dir(ROOT)
                .stdin(Stdio::null())
                .output()
                .expect("running scripts/package.sh");
            let text = report(&output);
            assert!(output.status.success(), "scripts/package.sh:\n{text}");
            // cargo-deb's last line on stdout is the package's path.
            let path = String::from_utf8_lossy(&output.stdout)
                .lines()
                .last()
                .map(|l| PathBuf::from(l.trim()))
                .unwrap_or_default();
            assert!(path.is_file(), "no package at {path:?}:\n{text}");
            path
        };
        let first = build(&[]);
        // The same binary, a later version: what an upgrade installs.
        let second = build(&["--no-build", "--deb-revision", "2"]);
        assert_ne!(first, second);
        Packages { first, second }
    })
}

fn report(out: &Output) -> String {
    format!(
        "{}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `program args`, asserts it succeeded, returns its stdout.
fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"));
    assert!(out.status.success(), "{program} {args:?}: {}", report(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn dpkg_deb(args: &[&str], deb: &Path) -> String {
    let mut all: Vec<&str> = args.to_vec();
    all.push(deb.to_str().expect("a UTF-8 path"));
    run("dpkg-deb", &all)
}

// --- contents and metadata ------------------------------------------------------------------

/// One entry of `dpkg-deb --contents`: `-rw-r--r-- 0/0 123 2026-12-06 19:50 ./path`.
#[derive(Debug)]
struct Entry {
    mode: String,
    owner: String,
    path: String,
}

fn contents(deb: &Path) -> Vec<Entry> {
    dpkg_deb(&["--contents"], deb)
        .lines()
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            assert!(fields.len() >= 6, "unexpected contents line {line:?}");
            Entry {
                mode: fields[0].to_owned(),
                owner: fields[1].to_owned(),
                path: fields[5].trim_start_matches('.').to_owned(),
            }
        })
        .collect()
}

/// The files (not directories) the package installs.
fn files_of(deb: &Path) -> Vec<Entry> {
    contents(deb)
        .into_iter()
        .filter(|e| !e.mode.starts_with('d'))
        .collect()
}

#[test]
fn the_package_holds_the_binary_the_unit_the_configuration_and_the_docs() {
    let deb = &packages().first;
    let files = files_of(deb);
    let expected = [
        (BIN, "-rwxr-xr-x"),
        (UNIT, "-rw-r--r--"),
        // It may hold secrets: root's alone.
        (ENV_FILE, "-rw-------"),
        ("/etc/logrotate.d/verve", "-rw-r--r--"),
        ("/usr/share/doc/verve/copyright", "-rw-r--r--"),
        ("/usr/share/doc/verve/changelog.gz", "-rw-r--r--"),
        ("/usr/share/doc/verve/README.md", "-rw-r--r--"),
    ];
    // The README's pages (docs/), beside it so that its relative links work.
    let docs = doc_pages();
    let expected: Vec<(&str, &str)> = expected
        .into_iter()
        .chain(
            docs.iter()
                .map(|(installed, _)| (installed.as_str(), "-rw-r--r--")),
        )
        .collect();
    let listed: BTreeSet<&str> = files.iter().map(|e| e.path.as_str()).collect();
    let wanted: BTreeSet<&str> = expected.iter().map(|(p, _)| *p).collect();
    assert_eq!(listed, wanted, "the package's files: {files:#?}");
    for (path, mode) in expected {
        let entry = files.iter().find(|e| e.path == path).unwrap();
        assert_eq!(entry.mode, mode, "mode of {path}");
        assert_eq!(entry.owner, "0/0", "owner of {path} (root)");
    }
    for dir in contents(deb).iter().filter(|e| e.mode.starts_with('d')) {
        assert_eq!(dir.owner, "0/0", "owner of {} (root)", dir.path);
    }

    // Every file under /etc is a conffile: dpkg keeps an operator's edits.
    let conffiles: BTreeSet<String> = control_file(deb, "conffiles")
        .lines()
        .map(|l| l.trim().to_owned())
        .filter(|l| !l.is_empty())
        .collect();
    let want: BTreeSet<String> = [ENV_FILE, "/etc/logrotate.d/verve"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(conffiles, want, "conffiles");

    // What is installed is what the repository holds.
    let tree = temp_dir("deb-tree");
    let out = Command::new("dpkg-deb")
        .arg("--extract")
        .arg(deb)
        .arg(&tree)
        .output()
        .expect("dpkg-deb --extract");
    assert!(out.status.success(), "{}", report(&out));
    let fixed = [
        (UNIT, "scripts/verve.service"),
        (ENV_FILE, "scripts/verve.env"),
        ("/etc/logrotate.d/verve", "scripts/verve.logrotate"),
        ("/usr/share/doc/verve/README.md", "README.md"),
    ];
    let pages = docs.iter().map(|(i, s)| (i.as_str(), s.as_str()));
    for (installed, source) in fixed.into_iter().chain(pages) {
        let packaged = std::fs::read(tree.join(&installed[1..])).unwrap();
        let repo = std::fs::read(Path::new(ROOT).join(source)).unwrap();
        assert!(packaged == repo, "{installed} differs from {source}");
    }
    let version = run(tree.join("usr/bin/verve").to_str().unwrap(), &["--version"]);
    assert_eq!(version.trim(), format!("verve {}", expected_version_text()));
    let _ = std::fs::remove_dir_all(tree);
}

/// The pages under docs/ that the package installs beside the README (the Markdown pages and
/// their pictures), as (installed path, path in the repository).
fn doc_pages() -> Vec<(String, String)> {
    let mut pages: Vec<(String, String)> = std::fs::read_dir(Path::new(ROOT).join("docs"))
        .expect("docs/")
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.ends_with(".md") || name.ends_with(".png"))
        .map(|name| {
            (
                format!("/usr/share/doc/verve/docs/{name}"),
                format!("docs/{name}"),
            )
        })
        .collect();
    pages.sort();
    assert!(
        pages.iter().any(|(_, s)| s == "docs/operating.md"),
        "docs/ holds the pages the README links to: {pages:?}"
    );
    pages
}

/// A file of the package's control archive (`conffiles`, `postinst`, ...).
fn control_file(deb: &Path, name: &str) -> String {
    run(
        "dpkg-deb",
        &["--info", deb.to_str().expect("a UTF-8 path"), name],
    )
}

#[test]
fn the_package_metadata_and_its_computed_dependencies() {
    let deb = &packages().first;
    let field = |name: &str| {
        dpkg_deb(&["--field"], deb)
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(": ").map(str::to_owned))
    };
    assert_eq!(field("Package").as_deref(), Some("verve"));
    assert_eq!(
        field("Version"),
        Some(format!("{}-1", env!("CARGO_PKG_VERSION")))
    );
    assert_eq!(field("Section").as_deref(), Some("net"));
    assert_eq!(field("Priority").as_deref(), Some("optional"));
    assert!(field("Maintainer").is_some_and(|m| m.contains('<')));
    // Computed by dpkg-shlibdeps from what the binary links: with the vendored OpenSSL, only
    // the C library (cargo-deb leaves out libgcc-s1, the unwinder every Rust program links,
    // which every Debian system has); and adduser, for the postinst.
    let depends = field("Depends").expect("a Depends field");
    let names: BTreeSet<&str> = depends
        .split([',', '|'])
        .filter_map(|d| d.split_whitespace().next())
        .collect();
    assert_eq!(
        names,
        BTreeSet::from(["libc6", "adduser"]),
        "Depends: {depends}"
    );
    assert!(
        depends.contains("libc6 (>= "),
        "libc6 without a version: {depends}"
    );

    // The systemd steps are in the maintainer scripts, as debhelper writes them: enabled,
    // started and stopped only where systemd runs.
    let postinst = control_file(deb, "postinst");
    let prerm = control_file(deb, "prerm");
    let postrm = control_file(deb, "postrm");
    for (name, script) in [
        ("postinst", &postinst),
        ("prerm", &prerm),
        ("postrm", &postrm),
    ] {
        assert!(!script.contains("#DEBHELPER#"), "{name} not filled in");
        assert!(script.starts_with("#!/bin/sh\n"), "{name}");
        // Every line that is not a comment is the scripts' own or cargo-deb's (which
        // replaces the token wherever it is, comments included).
        let syntax = Command::new("sh")
            .args(["-n", "-c", script])
            .output()
            .expect("sh -n");
        assert!(syntax.status.success(), "{name}: {}", report(&syntax));
    }
    assert!(
        postinst.contains("deb-systemd-helper enable 'verve.service'")
            || postinst.contains("deb-systemd-helper enable verve.service"),
        "{postinst}"
    );
    assert!(
        postinst.contains("[ -d /run/systemd/system ]"),
        "{postinst}"
    );
    assert!(postinst.contains("_dh_action=restart"), "{postinst}");
    assert!(prerm.contains("deb-systemd-invoke stop"), "{prerm}");
    assert!(postrm.contains("deb-systemd-helper purge"), "{postrm}");
}

// --- the environment file against the flags ---------------------------------------------------

/// A `VERVE_*` line of scripts/verve.env: `#VERVE_X=default` (commented out) or `VERVE_X=value`.
#[derive(Debug)]
struct Setting {
    commented: bool,
    name: String,
    value: String,
}

fn env_file_settings() -> Vec<Setting> {
    let text = std::fs::read_to_string(format!("{ROOT}/scripts/verve.env")).unwrap();
    text.lines()
        .filter_map(|line| {
            let (commented, rest) = match line.strip_prefix('#') {
                Some(rest) => (true, rest),
                None => (false, line),
            };
            let (name, value) = rest.split_once('=')?;
            let is_name = name.starts_with("VERVE_")
                && name
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
            is_name.then(|| Setting {
                commented,
                name: name.to_owned(),
                // systemd keeps what single quotes enclose as it is.
                value: value
                    .strip_prefix('\'')
                    .and_then(|v| v.strip_suffix('\''))
                    .unwrap_or(value)
                    .to_owned(),
            })
        })
        .collect()
}

/// Every flag of `verve --help`: its long name, its `VERVE_` name and its default, if any.
fn flags() -> Vec<(String, String, Option<String>)> {
    verve::config::Flags::command()
        .get_arguments()
        .filter_map(|arg| {
            let long = arg.get_long()?;
            if long == "help" || long == "version" {
                return None;
            }
            let name = format!("VERVE_{}", long.to_uppercase().replace('-', "_"));
            if let Some(env) = arg.get_env() {
                assert_eq!(env.to_str(), Some(name.as_str()), "--{long}'s variable");
            }
            let defaults: Vec<String> = arg
                .get_default_values()
                .iter()
                .map(|v| v.to_string_lossy().into_owned())
                .collect();
            let default = (!defaults.is_empty()).then(|| defaults.join(","));
            Some((long.to_owned(), name, default))
        })
        .collect()
}

#[test]
fn the_environment_file_lists_every_flag_with_its_default() {
    let settings = env_file_settings();
    let flags = flags();
    assert!(flags.len() > 10, "{flags:?}");
    let known: BTreeSet<&str> = flags.iter().map(|(_, n, _)| n.as_str()).collect();
    for s in &settings {
        assert!(
            known.contains(s.name.as_str()),
            "scripts/verve.env sets {}, which is no flag of verve --help",
            s.name
        );
    }
    for (long, name, default) in &flags {
        let commented: Vec<&Setting> = settings
            .iter()
            .filter(|s| &s.name == name && s.commented)
            .collect();
        let set = settings
            .iter()
            .filter(|s| &s.name == name && !s.commented)
            .count();
        assert!(set <= 1, "{name} is set {set} times in scripts/verve.env");
        match default {
            // The built-in default, shown as it is, once.
            Some(default) => {
                assert_eq!(
                    commented.len(),
                    1,
                    "scripts/verve.env must list --{long} once as #{name}={default}"
                );
                assert_eq!(
                    &commented[0].value, default,
                    "#{name} in scripts/verve.env does not show --{long}'s default"
                );
            }
            // No default: an example, commented out, or a setting.
            None => assert!(
                commented.len() + set >= 1,
                "scripts/verve.env does not list --{long} ({name})"
            ),
        }
    }
}

#[test]
fn every_value_in_the_environment_file_is_one_verve_accepts() {
    for s in env_file_settings() {
        // VERVE_KAFKA_OPTION is read by verve's own parser, not clap's (its escapes):
        // tests/systemd_unit.rs checks its example.
        if s.name == "VERVE_KAFKA_OPTION" {
            continue;
        }
        let long = format!(
            "--{}",
            s.name["VERVE_".len()..].to_lowercase().replace('_', "-")
        );
        let mut args = vec!["verve".to_owned(), long.clone(), s.value.clone()];
        // The flags that only mean something with another one.
        if long.starts_with("--kafka-") && long != "--kafka-brokers" {
            args.extend([
                "--kafka-brokers".to_owned(),
                "kafka1.internal:9092".to_owned(),
            ]);
        }
        if let Err(e) = verve::config::Config::try_load(args.iter(), None) {
            panic!("scripts/verve.env: {}={} is refused: {e}", s.name, s.value);
        }
    }
}

// --- the version and the commit ----------------------------------------------------------

/// `verve --version` without the program name, as build.rs makes it for this source.
fn expected_version_text() -> String {
    let commit = build_script::commit_of(Path::new(ROOT))
        .map(|c| c[..12].to_owned())
        .unwrap_or_else(|| "unknown".to_owned());
    format!("{} (commit {commit})", env!("CARGO_PKG_VERSION"))
}

#[test]
fn version_names_the_version_and_the_commit() {
    let out = run(env!("CARGO_BIN_EXE_verve"), &["--version"]);
    assert_eq!(out.trim(), format!("verve {}", expected_version_text()));
    // In a checkout, the commit is HEAD's.
    if let Some(head) = git(&["rev-parse", "HEAD"]) {
        assert!(out.contains(&head[..12]), "{out} vs HEAD {head}");
    }
}

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(ROOT)
        .args(args)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

#[test]
fn the_commit_is_known_without_git_in_a_tarball() {
    // `git archive` writes the commit into packaging/commit (export-subst): unpacked where
    // there is no .git, build.rs reads it there.
    let Some(head) = git(&["rev-parse", "HEAD"]) else {
        // Not a checkout: this source is such a tarball itself.
        assert!(build_script::commit_of(Path::new(ROOT)).is_some());
        return;
    };
    let dir = temp_dir("archive");
    let archive = Command::new("git")
        .arg("-C")
        .arg(ROOT)
        .args(["archive", "--format=tar", "HEAD", "packaging"])
        .output()
        .expect("git archive");
    assert!(archive.status.success(), "{}", report(&archive));
    let mut tar = Command::new("tar")
        .arg("-x")
        .arg("-C")
        .arg(&dir)
        .stdin(Stdio::piped())
        .spawn()
        .expect("tar");
    tar.stdin
        .take()
        .unwrap()
        .write_all(&archive.stdout)
        .unwrap();
    assert!(tar.wait().unwrap().success());
    assert!(!dir.join(".git").exists());
    assert_eq!(build_script::commit_of(&dir), Some(head.clone()));

    // A crate's tarball (`cargo package`) records it in .cargo_vcs_info.json instead.
    let krate = temp_dir("crate");
    std::fs::write(
        krate.join(".cargo_vcs_info.json"),
        format!("{{\n  \"git\": {{\n    \"sha1\": \"{head}\"\n  }},\n  \"path_in_vcs\": \"\"\n}}"),
    )
    .unwrap();
    assert_eq!(build_script::commit_of(&krate), Some(head));
    // Neither: unknown, not a wrong commit.
    let bare = temp_dir("bare");
    assert_eq!(build_script::commit_of(&bare), None);
    for d in [dir, krate, bare] {
        let _ = std::fs::remove_dir_all(d);
    }
}

// --- install, run, upgrade, remove, purge ------------------------------------------------------

/// `dpkg ARGS`, retried while another dpkg or apt holds the lock; asserts success.
fn dpkg(args: &[&str]) -> String {
    let deadline = Instant::now() + DPKG_LOCK_WAIT;
    loop {
        let out = Command::new("dpkg")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            // A conffile question must fail the test, not wait for an answer.
            .stdin(Stdio::null())
            .output()
            .expect("running dpkg");
        let text = report(&out);
        if out.status.success() {
            return text;
        }
        let locked = text.contains("lock") && text.contains("another process");
        assert!(locked && Instant::now() < deadline, "dpkg {args:?}: {text}");
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// The package's state in dpkg's database, `""` when dpkg does not know it.
fn package_status() -> String {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Status} ${Version}", "verve"])
        .output()
        .expect("dpkg-query");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn getent(db: &str, name: &str) -> Option<String> {
    let out = Command::new("getent").args([db, name]).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Processes running /usr/bin/verve (the installed binary, or its deleted remains).
fn installed_verve_processes() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| {
            let e = e.ok()?;
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let exe = std::fs::read_link(e.path().join("exe")).ok()?;
            exe.to_string_lossy().starts_with(BIN).then_some(pid)
        })
        .collect()
}

/// Everything the life test checks is gone after the purge, and must not exist before it.
fn leftovers(deb: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut paths: Vec<String> = files_of(deb).into_iter().map(|e| e.path).collect();
    paths.extend(
        [
            "/etc/verve",
            STATE_DIR,
            LOG_DIR,
            "/usr/share/doc/verve",
            "/lib/systemd/system/verve.service",
            "/etc/systemd/system/verve.service",
            "/etc/systemd/system/multi-user.target.wants/verve.service",
            "/var/lib/systemd/deb-systemd-helper-masked/verve.service",
            "/var/lib/systemd/deb-systemd-helper-enabled/verve.service.dsh-also",
            "/var/lib/systemd/deb-systemd-helper-enabled/multi-user.target.wants/verve.service",
        ]
        .map(str::to_owned),
    );
    for info in [
        "list",
        "md5sums",
        "conffiles",
        "postinst",
        "prerm",
        "postrm",
    ] {
        paths.push(format!("/var/lib/dpkg/info/verve.{info}"));
    }
    for path in paths {
        if std::fs::symlink_metadata(&path).is_ok() {
            found.push(path);
        }
    }
    if let Some(user) = getent("passwd", "verve") {
        found.push(format!("user {user}"));
    }
    if let Some(group) = getent("group", "verve") {
        found.push(format!("group {group}"));
    }
    let status = package_status();
    if !status.is_empty() && !status.starts_with("unknown ok not-installed") {
        found.push(format!("dpkg status {status}"));
    }
    found
}

/// Purges the package whatever happens to the test, so that a failed run leaves the machine
/// as it found it.
struct PurgeOnDrop;

impl Drop for PurgeOnDrop {
    fn drop(&mut self) {
        for pid in installed_verve_processes() {
            // SAFETY: kill(2) on a process this test started.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        let _ = Command::new("dpkg")
            .args(["--purge", "verve"])
            .stdin(Stdio::null())
            .output();
    }
}

/// The settings of the environment file as systemd reads them (KEY=value lines; `#` and `;`
/// start comments; single or double quotes around a whole value are removed).
fn environment_of(path: &str) -> Vec<(String, String)> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with(';'))
        .filter_map(|l| {
            let (k, v) = l.split_once('=')?;
            let v = v.trim();
            let unquoted = ['\'', '"']
                .iter()
                .find_map(|q| v.strip_prefix(*q)?.strip_suffix(*q))
                .unwrap_or(v);
            Some((k.trim().to_owned(), unquoted.to_owned()))
        })
        .collect()
}

fn id_of(db: &str, name: &str) -> u32 {
    getent(db, name)
        .and_then(|e| e.split(':').nth(2)?.parse().ok())
        .unwrap_or_else(|| panic!("no {db} entry {name}"))
}

/// The installed binary as the unit runs it: as the user verve, in /var/lib/verve, with the
/// unit's UMask=0077 and exactly the installed environment file's settings. Returns it and
/// its address.
fn start_installed() -> (Child, SocketAddr) {
    let mut command = Command::new(BIN);
    command
        .env_clear()
        .envs(environment_of(ENV_FILE))
        .current_dir(STATE_DIR)
        .uid(id_of("passwd", "verve"))
        .gid(id_of("group", "verve"));
    // SAFETY: umask(2) is async-signal-safe and touches nothing but the child's own mask.
    unsafe {
        command.pre_exec(|| {
            libc::umask(0o077);
            Ok(())
        });
    }
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting /usr/bin/verve");
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    let addr: Option<SocketAddr> = first
        .trim()
        .strip_prefix("verve listening on ")
        .and_then(|a| a.parse().ok());
    let Some(addr) = addr else {
        let _ = child.kill();
        let out = child.wait_with_output().unwrap();
        panic!(
            "the installed verve did not start: {first:?}\n{}",
            report(&out)
        )
    };
    (child, addr)
}

fn stop(mut child: Child) {
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let status = wait_until("verve to exit", || child.try_wait().unwrap());
    assert_eq!(status.code(), Some(0), "{status:?}");
}

/// Whether systemd is the running init (what the maintainer scripts check). Not in CI.
fn systemd_runs() -> bool {
    Path::new("/run/systemd/system").exists()
}

fn stop_the_service() {
    run("systemctl", &["stop", "verve.service"]);
}

fn mode_of(path: &str) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .permissions()
        .mode()
        & 0o7777
}

fn owner_of(path: &str) -> (u32, u32) {
    let m = std::fs::metadata(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    (m.uid(), m.gid())
}

/// What a test that installs the package holds: the machine to itself (the tests that install
/// run one at a time), and the purge at the end, whatever happens.
struct Machine {
    _purge: PurgeOnDrop,
    _one_at_a_time: MutexGuard<'static, ()>,
}

/// Checks that the test may install the package here: root, and no verve package, user or
/// directory that the purge would take away.
fn claim_the_machine() -> Machine {
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    // SAFETY: geteuid(2) has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test installs and purges the Debian package with dpkg and needs root (CI runs \
         the tests as root); run it with: sudo -E cargo test --test package"
    );
    let guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let before = leftovers(&packages().first);
    assert!(
        before.is_empty(),
        "this machine already has a verve package, user or directory, which the test would \
         purge; remove them first (dpkg --purge verve): {before:?}"
    );
    Machine {
        _purge: PurgeOnDrop,
        _one_at_a_time: guard,
    }
}

#[test]
fn install_run_upgrade_remove_and_purge_leave_nothing_behind() {
    let _machine = claim_the_machine();
    let Packages { first, second } = packages();

    // Install. No systemd runs here: the unit is enabled (a symlink, for the next boot) and
    // nothing is started.
    dpkg(&["--install", first.to_str().unwrap()]);
    assert!(package_status().starts_with("install ok installed"));
    let user = getent("passwd", "verve").expect("the user verve");
    let fields: Vec<&str> = user.split(':').collect();
    assert!(
        fields[2].parse::<u32>().unwrap() < 1000,
        "not a system user: {user}"
    );
    assert_eq!(fields[5], STATE_DIR, "{user}");
    assert_eq!(fields[6], "/usr/sbin/nologin", "{user}");
    assert!(getent("group", "verve").is_some(), "the group verve");
    let verve = (id_of("passwd", "verve"), id_of("group", "verve"));
    for dir in [STATE_DIR, LOG_DIR] {
        assert_eq!(mode_of(dir), 0o750, "{dir}");
        assert_eq!(owner_of(dir), verve, "{dir}");
    }
    assert_eq!(mode_of(ENV_FILE), 0o600);
    assert_eq!(owner_of(ENV_FILE), (0, 0));
    assert_eq!(mode_of(BIN), 0o755);
    assert!(
        std::fs::symlink_metadata("/etc/systemd/system/multi-user.target.wants/verve.service")
            .is_ok(),
        "the unit is not enabled"
    );
    if systemd_runs() {
        // Started by the postinst (where port 8080 is free): stopped, so that the test runs
        // the binary itself.
        stop_the_service();
    } else {
        assert_eq!(
            installed_verve_processes(),
            Vec::<u32>::new(),
            "started without systemd"
        );
    }
    let version = run(BIN, &["--version"]);
    assert_eq!(version.trim(), format!("verve {}", expected_version_text()));

    // The installed unit, as systemd would load it (the binary it names exists now).
    let verify = Command::new("systemd-analyze")
        .args(["verify", UNIT])
        .output()
        .expect("systemd-analyze (Debian package systemd)");
    let text = report(&verify);
    assert!(verify.status.success(), "systemd-analyze verify: {text}");
    assert!(
        verify.stdout.is_empty() && verify.stderr.is_empty(),
        "systemd-analyze verify: {text}"
    );
    let security = run(
        "systemd-analyze",
        &["security", "--offline=yes", "--threshold=20", UNIT],
    );
    let score: f64 = security
        .lines()
        .find_map(|l| l.split("Overall exposure level for verve.service:").nth(1))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no exposure score in:\n{security}"));
    assert!(score <= 2.0, "exposure {score}:\n{security}");

    // An operator's edit: a loopback port of the test's choosing (0: any free one).
    let mut edited = std::fs::read_to_string(ENV_FILE).unwrap();
    edited.push_str("\n# Edited by tests/package.rs.\nVERVE_LISTEN=127.0.0.1:0\n");
    std::fs::write(ENV_FILE, &edited).unwrap();

    // The installed binary with the installed configuration serves, and writes its log and
    // its state where the configuration says.
    let (child, addr) = start_installed();
    let r = Client::connect(addr).get("/api/verve/accept?id=42");
    assert_eq!((r.status, r.text()), (200, "ok".to_owned()));
    stop(child);
    for file in [STATE_FILE, LOG_FILE] {
        assert_eq!(owner_of(file), verve, "{file}");
        assert_eq!(mode_of(file) & 0o077, 0, "{file} readable by others");
    }
    let state = std::fs::read(STATE_FILE).unwrap();
    let log = std::fs::read(LOG_FILE).unwrap();

    // Upgrade: the edited conffile stays as the operator left it (no question asked: the
    // package's version of it did not change), the state and the log are untouched.
    dpkg(&["--install", second.to_str().unwrap()]);
    assert!(
        package_status().starts_with("install ok installed") && package_status().ends_with("-2"),
        "{}",
        package_status()
    );
    assert_eq!(std::fs::read_to_string(ENV_FILE).unwrap(), edited);
    assert_eq!(mode_of(ENV_FILE), 0o600);
    for leftover in [".dpkg-dist", ".dpkg-new", ".dpkg-old"] {
        assert!(
            !Path::new(&format!("{ENV_FILE}{leftover}")).exists(),
            "{leftover}"
        );
    }
    if systemd_runs() {
        // The postinst restarted the service, which saved its own state meanwhile.
        stop_the_service();
    } else {
        assert!(
            std::fs::read(STATE_FILE).unwrap() == state,
            "the state file changed"
        );
    }
    assert!(std::fs::read(LOG_FILE).unwrap() == log, "the log changed");
    // The new version resumes from the state file the old one left: id 42 is still counted,
    // in the open window (when the window has not ended since) or in the count line of the
    // window the new process reports at start (when it has).
    let (child, addr) = start_installed();
    wait_until(
        "id 42, answered before the upgrade, to be counted after it",
        || {
            let page = Client::connect(addr).get("/metrics").text();
            let open: u64 = page
                .lines()
                .find_map(|l| l.strip_prefix("verve_window_unique_ids ")?.parse().ok())
                .unwrap_or(0);
            let logged = std::fs::read_to_string(LOG_FILE)
                .unwrap_or_default()
                .split_whitespace()
                .any(|token| token == "unique_count=1");
            (open == 1 || logged).then_some(())
        },
    );
    let r = Client::connect(addr).get("/api/verve/accept?id=43");
    assert_eq!((r.status, r.text()), (200, "ok".to_owned()));
    stop(child);

    // Remove: the program and the unit go; the configuration, the state, the logs and the
    // user stay.
    dpkg(&["--remove", "verve"]);
    assert!(
        package_status().starts_with("deinstall ok config-files"),
        "{}",
        package_status()
    );
    for gone in [BIN, UNIT] {
        assert!(!Path::new(gone).exists(), "{gone} after remove");
    }
    assert_eq!(std::fs::read_to_string(ENV_FILE).unwrap(), edited);
    for kept in [STATE_FILE, LOG_FILE] {
        assert!(Path::new(kept).exists(), "{kept} after remove");
    }
    assert!(getent("passwd", "verve").is_some(), "the user after remove");

    // Purge: nothing left.
    dpkg(&["--purge", "verve"]);
    let after = leftovers(first);
    assert!(after.is_empty(), "left after purge: {after:?}");
}

/// The maintainer scripts where systemd runs, which this machine (and CI) does not have: in a
/// mount namespace of its own, `/run/systemd/system` exists and `systemctl` and
/// `deb-systemd-invoke` are stand-ins that write down how they were called. The rest is real
/// (dpkg, the user, deb-systemd-helper's enablement), and gone after the purge.
#[test]
fn where_systemd_runs_install_starts_upgrade_restarts_and_remove_stops() {
    let _machine = claim_the_machine();
    let Packages { first, second } = packages();
    let dir = temp_dir("systemd-calls");
    let calls = dir.join("calls");
    let stand_in = dir.join("stand-in");
    std::fs::write(
        &stand_in,
        format!(
            "#!/bin/sh\necho \"$(basename \"$0\") $*\" >> '{}'\n",
            calls.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&stand_in, std::fs::Permissions::from_mode(0o755)).unwrap();
    for name in ["systemctl", "deb-systemd-invoke"] {
        std::os::unix::fs::symlink(&stand_in, dir.join(name)).unwrap();
    }
    // Each step's calls follow a line that names it. dpkg is retried while another dpkg or
    // apt holds its lock, as dpkg() does.
    let script = format!(
        r#"set -e
mount --make-rprivate /
mkdir -p /run/systemd
mount -t tmpfs tmpfs /run/systemd
mkdir /run/systemd/system
mount --bind '{dir}/systemctl' /usr/bin/systemctl
mount --bind '{dir}/deb-systemd-invoke' /usr/bin/deb-systemd-invoke
step() {{
    echo "== $1" >> '{calls}'
    shift
    tries=0
    until out=$(DEBIAN_FRONTEND=noninteractive dpkg "$@" </dev/null 2>&1); do
        case $out in
        *lock*"another process"*) ;;
        *) echo "$out" >&2; exit 1 ;;
        esac
        tries=$((tries + 1))
        [ "$tries" -lt {lock_wait} ] || {{ echo "$out" >&2; exit 1; }}
        sleep 1
    done
}}
step install --install '{first}'
step upgrade --install '{second}'
step remove --remove verve
step purge --purge verve
"#,
        dir = dir.display(),
        calls = calls.display(),
        first = first.display(),
        second = second.display(),
        lock_wait = DPKG_LOCK_WAIT.as_secs(),
    );
    let out = Command::new("unshare")
        .args(["--mount", "sh", "-c", &script])
        .stdin(Stdio::null())
        .output()
        .expect("unshare (util-linux)");
    assert!(
        out.status.success(),
        "the package's life in a mount namespace where systemd seems to run (unshare \
         --mount needs CAP_SYS_ADMIN):\n{}",
        report(&out)
    );
    let text = std::fs::read_to_string(&calls).unwrap();
    let step = |name: &str| -> Vec<String> {
        text.split("== ")
            .find_map(|part| part.strip_prefix(&format!("{name}\n")))
            .unwrap_or_else(|| panic!("no step {name} in:\n{text}"))
            .lines()
            .map(str::to_owned)
            .collect()
    };
    // What each step asks of the service (deb-systemd-helper's own systemctl calls, a preset
    // and reloads, come besides), and that systemd reloads the changed unit files.
    let invoked = |name: &str| -> Vec<String> {
        step(name)
            .into_iter()
            .filter(|c| c.starts_with("deb-systemd-invoke"))
            .collect()
    };
    assert_eq!(
        invoked("install"),
        ["deb-systemd-invoke start verve.service"],
        "{text}"
    );
    // Not stopped before the new version is unpacked: restarted after it.
    assert_eq!(
        invoked("upgrade"),
        ["deb-systemd-invoke restart verve.service"],
        "{text}"
    );
    assert_eq!(
        invoked("remove"),
        ["deb-systemd-invoke stop verve.service"],
        "{text}"
    );
    assert_eq!(invoked("purge"), Vec::<String>::new(), "{text}");
    for name in ["install", "upgrade", "remove"] {
        assert!(
            step(name).iter().any(|c| c.ends_with("daemon-reload")),
            "no daemon-reload on {name}:\n{text}"
        );
    }
    let after = leftovers(first);
    assert!(after.is_empty(), "left after purge: {after:?}");
    let _ = std::fs::remove_dir_all(dir);
}

//! The text of `verve --version`: the crate's version and the commit it was built from, handed
//! to the code as `VERVE_VERSION` (`0.1.0 (commit 7d98e4c1a2b3)`), so that a binary found on a
//! machine says which source it is.
//!
//! The commit comes from the first of these that knows it:
//! 1. `VERVE_COMMIT` in the build's environment, for a build system that knows better;
//! 2. git, when the source is a git checkout of its own (not a directory inside another
//!    repository);
//! 3. `.cargo_vcs_info.json`, which `cargo package` writes into a crate's tarball;
//! 4. `packaging/commit`, which `git archive` fills in (`export-subst`, set in
//!    `packaging/.gitattributes`), so a tarball of the repository knows it without `.git`;
//!
//! and is `unknown` otherwise. tests/package.rs includes this file to test the last three.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Hex digits of the commit shown, as `git log --oneline` shows them in a large repository.
const SHORT: usize = 12;

fn main() {
    let dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=VERVE_COMMIT");
    // What a new commit or checkout changes, so that the text follows it. Only files that
    // exist: cargo would rerun this script on every build for one that does not.
    let mut watched = vec![
        dir.join(".cargo_vcs_info.json"),
        dir.join("packaging/commit"),
    ];
    if is_checkout(&dir) {
        watched.extend(git_files(&dir));
    }
    for path in watched.iter().filter(|p| p.exists()) {
        println!("cargo:rerun-if-changed={}", path.display());
    }
    let commit = std::env::var("VERVE_COMMIT")
        .ok()
        .filter(|c| !c.trim().is_empty())
        .or_else(|| commit_of(&dir))
        .map(|c| c.trim().chars().take(SHORT).collect::<String>())
        .unwrap_or_else(|| "unknown".to_owned());
    let version = std::env::var("CARGO_PKG_VERSION").expect("set by cargo");
    println!("cargo:rustc-env=VERVE_VERSION={version} (commit {commit})");
}

/// The commit of the source in `dir` (full hash), from git, `cargo package`'s record or
/// `git archive`'s substitution, in that order.
pub fn commit_of(dir: &Path) -> Option<String> {
    from_git(dir)
        .or_else(|| from_cargo_vcs_info(dir))
        .or_else(|| from_archive(dir))
}

/// `git rev-parse HEAD`, when `dir` is a checkout of its own.
fn from_git(dir: &Path) -> Option<String> {
    if !is_checkout(dir) {
        return None;
    }
    git(dir, &["rev-parse", "HEAD"]).filter(|c| is_hash(c))
}

/// Whether `dir` is the top of a git work tree: a tarball unpacked inside some other
/// repository must not take that repository's commit.
fn is_checkout(dir: &Path) -> bool {
    let top = git(dir, &["rev-parse", "--show-toplevel"]);
    match (
        top.map(|t| Path::new(&t).canonicalize()),
        dir.canonicalize(),
    ) {
        (Some(Ok(top)), Ok(dir)) => top == dir,
        _ => false,
    }
}

/// The `"sha1"` of `.cargo_vcs_info.json` (`{"git": {"sha1": "..."}, ...}`), read without a
/// JSON parser: the file is cargo's, with this one hash in it.
fn from_cargo_vcs_info(dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(dir.join(".cargo_vcs_info.json")).ok()?;
    let rest = &text[text.find("\"sha1\"")? + "\"sha1\"".len()..];
    let start = rest.find('"')? + 1;
    let hash = &rest[start..start + rest[start..].find('"')?];
    is_hash(hash).then(|| hash.to_owned())
}

/// `packaging/commit` once `git archive` has replaced its `$Format:%H$` with the hash; in a
/// checkout it still holds the placeholder, which is not a hash.
fn from_archive(dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(dir.join("packaging/commit")).ok()?;
    let hash = text.trim();
    is_hash(hash).then(|| hash.to_owned())
}

fn is_hash(s: &str) -> bool {
    s.len() >= SHORT && s.chars().all(|c| c.is_ascii_hexdigit())
}

/// The files git changes when HEAD moves: HEAD itself, the branch it names and the packed
/// refs (a worktree's HEAD and the shared refs live in different directories).
fn git_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut path_of = |name: &str| {
        if let Some(p) = git(dir, &["rev-parse", "--git-path", name]) {
            files.push(dir.join(p));
        }
    };
    path_of("HEAD");
    path_of("packed-refs");
    if let Some(branch) = git(dir, &["symbolic-ref", "-q", "HEAD"]) {
        path_of(&branch);
    }
    files
}

/// A git command's stdout, trimmed; `None` when git is missing or fails (not a checkout).
fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    (out.status.success() && !text.trim().is_empty()).then(|| text.trim().to_owned())
}

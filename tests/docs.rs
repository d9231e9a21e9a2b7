//! The documentation follows the code: the README's *Flags* table lists exactly the flags of
//! `verve --help`, each with the default `--help` gives, and every relative link in
//! README.md and docs/*.md points at a file that exists (and, into a Markdown file, at a
//! heading it has).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::BIN;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The pages that link to each other: the README and every Markdown file under docs/.
fn pages() -> Vec<PathBuf> {
    let root = Path::new(ROOT);
    let mut pages = vec![root.join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .expect("docs/")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    assert!(!docs.is_empty(), "docs/ holds the README's pages");
    pages.extend(docs);
    pages
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The lines of a Markdown text outside fenced code blocks, with their line numbers.
fn prose_lines(text: &str) -> Vec<(usize, &str)> {
    let mut fenced = false;
    let mut lines = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if !fenced {
            lines.push((i + 1, line));
        }
    }
    lines
}

/// `line` without its inline code spans (a backquoted `[a](b)` is not a link).
fn without_code(line: &str) -> String {
    line.split('`').step_by(2).collect::<Vec<_>>().join(" ")
}

/// Every flag `--help` prints (`--listen`, ..., `--help`, `--version`), with its default
/// when it shows one.
fn help_flags() -> BTreeMap<String, Option<String>> {
    let out = Command::new(BIN)
        .arg("--help")
        .env_clear()
        .output()
        .expect("running verve --help");
    assert!(out.status.success(), "verve --help: {out:?}");
    let text = String::from_utf8(out.stdout).expect("UTF-8 help");
    let mut flags = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        let trimmed = line.trim_start();
        // A flag's line: "--listen <ADDR>" or "-h, --help", indented by a few spaces.
        let flag_line = trimmed.strip_prefix("-").is_some() && line.len() - trimmed.len() <= 6;
        if flag_line {
            let name = trimmed
                .split([' ', ','])
                .find(|w| w.starts_with("--"))
                .unwrap_or_else(|| panic!("a flag line without a long flag: {line:?}"));
            current = Some(name.to_owned());
            flags.insert(name.to_owned(), None);
        } else if let (Some(flag), Some(rest)) = (&current, trimmed.strip_prefix("[default: ")) {
            let default = rest.strip_suffix(']').expect("[default: ...]");
            flags.insert(flag.clone(), Some(default.to_owned()));
        }
    }
    assert!(
        flags.contains_key("--listen"),
        "no flags found in --help:\n{text}"
    );
    flags
}

/// The README's *Flags* table: each flag of a row's first cell, with the row's default cell.
fn readme_flags() -> BTreeMap<String, String> {
    let text = read(&Path::new(ROOT).join("README.md"));
    let section = text
        .split("\n## Flags\n")
        .nth(1)
        .expect("README.md has a *Flags* section");
    let section = section.split("\n## ").next().unwrap();
    let mut flags = BTreeMap::new();
    for row in section.lines().filter(|l| l.starts_with("| `-")) {
        let cells: Vec<&str> = row.split(" | ").collect();
        let (first, default) = (cells[0], cells.get(1).copied().unwrap_or(""));
        for word in first.split('`').skip(1).step_by(2) {
            let name = word.split(' ').next().unwrap();
            assert!(name.starts_with("--"), "a flag cell with {word:?}: {row}");
            let previous = flags.insert(name.to_owned(), default.trim().to_owned());
            assert!(previous.is_none(), "{name} is in the table twice");
        }
    }
    flags
}

#[test]
fn the_readme_flags_table_lists_every_flag_of_help_and_no_other() {
    let help = help_flags();
    let table = readme_flags();
    let in_help: BTreeSet<&String> = help.keys().collect();
    let in_table: BTreeSet<&String> = table.keys().collect();
    assert_eq!(
        in_table.difference(&in_help).collect::<Vec<_>>(),
        Vec::<&&String>::new(),
        "in the README's Flags table but not in verve --help"
    );
    assert_eq!(
        in_help.difference(&in_table).collect::<Vec<_>>(),
        Vec::<&&String>::new(),
        "in verve --help but not in the README's Flags table"
    );
    // A default that --help shows is the table's default, as the table writes it.
    for (flag, default) in &help {
        if let Some(default) = default {
            let cell = &table[flag];
            assert_eq!(
                cell,
                &format!("`{default}`"),
                "the README's default for {flag} (verve --help says {default})"
            );
        }
    }
}

/// GitHub's anchor of a heading: lower case, punctuation dropped, spaces as `-`.
fn anchor_of(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// The anchors of a Markdown file's headings (a repeated heading gets `-1`, `-2`, ...).
fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut anchors = BTreeSet::new();
    for (_, line) in prose_lines(text) {
        let Some(heading) = line.strip_prefix('#') else {
            continue;
        };
        let base = anchor_of(heading.trim_start_matches('#'));
        let n = seen.entry(base.clone()).or_insert(0);
        anchors.insert(if *n == 0 {
            base.clone()
        } else {
            format!("{base}-{n}")
        });
        *n += 1;
    }
    anchors
}

/// The targets of the Markdown links and images of a text, outside code, with line numbers.
fn links(text: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    for (number, line) in prose_lines(text) {
        let line = without_code(line);
        let mut rest = line.as_str();
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            let end = after.find(')').expect("a link's closing parenthesis");
            found.push((number, after[..end].to_owned()));
            rest = &after[end..];
        }
    }
    found
}

#[test]
fn every_relative_link_of_the_readme_and_docs_points_at_something_that_exists() {
    let mut broken = Vec::new();
    let mut checked = 0;
    for page in pages() {
        let text = read(&page);
        for (line, target) in links(&text) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            checked += 1;
            let (path, anchor) = match target.split_once('#') {
                Some((path, anchor)) => (path, Some(anchor)),
                None => (target.as_str(), None),
            };
            let file = if path.is_empty() {
                page.clone()
            } else {
                page.parent().unwrap().join(path)
            };
            let here = format!("{}:{line}: {target}", page.display());
            if !file.exists() {
                broken.push(format!("{here}: no such file"));
                continue;
            }
            if let Some(anchor) = anchor {
                let is_markdown = file.extension().is_some_and(|e| e == "md");
                if !is_markdown || !anchors(&read(&file)).contains(anchor) {
                    broken.push(format!("{here}: no heading with that anchor"));
                }
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
    assert!(
        checked > 20,
        "only {checked} relative links found: is the parser right?"
    );
}

#[test]
fn the_readme_links_every_page_of_docs() {
    let readme = read(&Path::new(ROOT).join("README.md"));
    let linked: BTreeSet<String> = links(&readme).into_iter().map(|(_, t)| t).collect();
    for page in pages().iter().skip(1) {
        let name = format!("docs/{}", page.file_name().unwrap().to_str().unwrap());
        assert!(
            linked
                .iter()
                .any(|t| t == &name || t.starts_with(&format!("{name}#"))),
            "README.md does not link {name}"
        );
    }
}

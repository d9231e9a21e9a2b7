//! The log: everything goes to `--log-file` through `log` + `fern`, one line per event,
//! `<RFC 3339 UTC, ms> <LEVEL> <target> <message>`, the form of the count line example in the
//! README (*The count log*). Warnings and errors go to stderr as well, for the journal.
//!
//! The file can be reopened ([`LogFile::reopen`], on SIGHUP) so that log rotation loses no
//! line: logrotate renames the file, verve keeps appending to the renamed file (same inode)
//! until the signal, then switches to a new file at the original path. Each line is written
//! by one `write(2)` on an `O_APPEND` descriptor under the same lock the switch takes, so a
//! line lands whole in exactly one of the two files.
//!
//! **Logging never stops the service.** A line that cannot be written to the file (disk
//! full, say) goes to stderr instead; a line that cannot be written there either is dropped
//! and counted ([`write_errors`], `verve_log_write_errors_total`). Nothing here panics: fern's
//! own stderr output panics when stderr fails after a failed write, so stderr is written by
//! `StderrOutput` instead, and `eprintln!` (which panics too) is never used.
//!
//! **Text from outside is sanitized** before it is logged: free text by [`sanitize`], a
//! `key=value` token (an endpoint, an error reason) by [`token`], so that what brokers, Redis,
//! callback hosts or a state file say cannot add a line, end a token early or forge a count
//! line.
//!
//! fern's own reopen support (`reopen-1` feature) is not used: it reopens lazily on the next
//! write, from a handler it installs itself (a second signal-hook version), and when the new
//! open fails the lines written meanwhile are lost. Here the switch happens at once on the
//! main thread, and a failed open keeps the old descriptor, so lines still go somewhere.

use std::borrow::Cow;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use anyhow::Context;

/// The count line's token: no other line of the log may contain it (README, *The count log*).
const COUNT_TOKEN: &str = "unique_count=";

/// What [`sanitize`] writes instead of [`COUNT_TOKEN`]: the `=` percent-encoded, so a URL
/// still reads the same.
const COUNT_TOKEN_DEFUSED: &str = "unique_count%3D";

/// Makes text that came from outside (a broker's or Redis's error, a callback host's answer,
/// an endpoint read from a state file) safe to put in a log line: control characters
/// (newlines included) and the Unicode line and paragraph separators are written as Rust
/// escapes (`\n`, `\u{1b}`), so the text stays on its line and cannot fake one, and
/// `unique_count=` becomes `unique_count%3D`, so no line but a count line holds the token.
/// Borrowed when there is nothing to change, which is almost always.
pub fn sanitize(text: &str) -> Cow<'_, str> {
    let unsafe_char = |c: char| c.is_control() || is_line_separator(c);
    if !text.contains(unsafe_char) && !text.contains(COUNT_TOKEN) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if unsafe_char(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    // Escapes only add `\`, letters, digits and braces, so they cannot form the token; and
    // the replacement cannot form it with what follows (it holds one `u`, at its start).
    Cow::Owned(out.replace(COUNT_TOKEN, COUNT_TOKEN_DEFUSED))
}

/// Most bytes of outside text kept in one [`token`]: 2 KiB, the longest endpoint a client may
/// name (`query::MAX_ENDPOINT_BYTES`), so every endpoint that can be called is shown whole;
/// longer text (only ever from outside: Redis, a state file) is cut there and marked `...`.
pub const MAX_TOKEN_BYTES: usize = 2048;

/// Makes text that came from outside one token of a log line (`endpoint=<token>`,
/// `error=<token>`), whatever its source: an endpoint from a request, a state file or Redis,
/// or an error an HTTP or Kafka library quotes. A space is written `%20` (so a URL reads the
/// same), any other white space or control character and the Unicode line and paragraph
/// separators as a Rust escape (`\n`, `\t`, `\u{a0}`), a byte that is not UTF-8 as `\xFF`, and
/// `unique_count=` as `unique_count%3D`; past [`MAX_TOKEN_BYTES`] the text is cut and ends in
/// `...`. So the token neither ends early, nor starts a line, nor passes for a count line.
/// Borrowed when there is nothing to change (a canonical endpoint, a named reason).
pub fn token<T: AsRef<[u8]> + ?Sized>(text: &T) -> Cow<'_, str> {
    let bytes = text.as_ref();
    let unsafe_char = |c: char| c.is_whitespace() || c.is_control() || is_line_separator(c);
    if bytes.len() <= MAX_TOKEN_BYTES {
        if let Ok(text) = std::str::from_utf8(bytes) {
            if !text.contains(unsafe_char) && !text.contains(COUNT_TOKEN) {
                return Cow::Borrowed(text);
            }
        }
    }
    let mut end = bytes.len().min(MAX_TOKEN_BYTES);
    // Cut before a character, not inside one (a UTF-8 continuation byte is 0b10xxxxxx).
    while end < bytes.len() && end > 0 && bytes[end] & 0xC0 == 0x80 {
        end -= 1;
    }
    let cut = &bytes[..end];
    let mut out = String::with_capacity(cut.len() + 8);
    for chunk in cut.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                ' ' => out.push_str("%20"),
                c if unsafe_char(c) => out.extend(c.escape_default()),
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02X}"));
        }
    }
    if cut.len() < bytes.len() {
        out.push_str("...");
    }
    // As in `sanitize`: the escapes cannot form the token, nor can the replacement with
    // what follows it.
    Cow::Owned(out.replace(COUNT_TOKEN, COUNT_TOKEN_DEFUSED))
}

/// The Unicode line and paragraph separators: not control characters, but some readers
/// break lines at them.
fn is_line_separator(c: char) -> bool {
    matches!(c, '\u{2028}' | '\u{2029}')
}

/// Log lines that could be written nowhere: neither to the file nor to stderr.
static WRITE_ERRORS: AtomicU64 = AtomicU64::new(0);

/// Log lines lost since the start because no write succeeded (`verve_log_write_errors_total`).
pub fn write_errors() -> u64 {
    WRITE_ERRORS.load(Relaxed)
}

/// Writes a whole line to stderr; never panics. False when stderr failed.
fn to_stderr(line: &[u8]) -> bool {
    std::io::stderr().lock().write_all(line).is_ok()
}

/// The open log file, shared by the logger and whoever reopens it.
#[derive(Clone)]
pub struct LogFile(Arc<Shared>);

struct Shared {
    path: PathBuf,
    state: Mutex<State>,
}

struct State {
    file: File,
    /// One formatted line, reused so that a line costs no allocation once warm.
    line: Vec<u8>,
}

impl Shared {
    fn open(path: &Path) -> anyhow::Result<Arc<Shared>> {
        Ok(Arc::new(Shared {
            path: path.to_path_buf(),
            state: Mutex::new(State {
                file: open(path)?,
                line: Vec::with_capacity(256),
            }),
        }))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves at worst a half-built line buffer, which the
        // next line clears.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl LogFile {
    /// The path the file was opened at (and is reopened at).
    pub fn path(&self) -> &Path {
        &self.0.path
    }

    /// Opens the path again (creating the file when it is gone, appending otherwise) and
    /// switches every later line to the new descriptor; the first line in the new file says
    /// so. On failure the old descriptor stays in use, so no line is lost either way.
    pub fn reopen(&self) -> anyhow::Result<()> {
        let file = open(&self.0.path)?;
        let old = std::mem::replace(&mut self.0.lock().file, file);
        drop(old);
        log::info!("reopened log file {}", self.0.path.display());
        Ok(())
    }
}

/// Opens `path` for appending, creating it when missing.
fn open(path: &Path) -> anyhow::Result<File> {
    fern::log_file(path)
        .with_context(|| format!("--log-file {}: cannot open for appending", path.display()))
}

/// The fern output writing the already formatted lines to the shared file.
struct FileOutput(Arc<Shared>);

impl log::Log for FileOutput {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }

    fn log(&self, record: &log::Record) {
        let mut state = self.0.lock();
        let State { file, line } = &mut *state;
        line.clear();
        // Writing into a Vec cannot fail.
        let _ = writeln!(line, "{}", record.args());
        if file.write_all(line).is_err() {
            // Disk full, say: the line goes to stderr (the journal) instead of nowhere, and
            // if that fails too it is counted. Never a panic: the thread logging may be the
            // collector, and a dead collector would stop every report.
            let mut fallback = Vec::with_capacity(line.len() + 48);
            fallback.extend_from_slice(b"verve: not written to the log file: ");
            fallback.extend_from_slice(line);
            if !to_stderr(&fallback) {
                WRITE_ERRORS.fetch_add(1, Relaxed);
            }
        }
    }

    /// Every line is written through at once, so nothing is buffered; a flush syncs the
    /// file to disk. `--state-file` flushes after a count line, before it records the
    /// window as reported, so that a power cut cannot keep the record and lose the line.
    fn flush(&self) {
        if self.0.lock().file.sync_data().is_err() {
            WRITE_ERRORS.fetch_add(1, Relaxed);
        }
    }
}

/// Warnings and errors to stderr (the journal), replacing fern's stderr output, which
/// panics when stderr fails after a failed write. A line stderr refuses is dropped: it is in
/// the log file too, or counted there.
struct StderrOutput {
    /// One formatted line, so that it goes out in one write.
    line: Mutex<Vec<u8>>,
}

impl log::Log for StderrOutput {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }

    fn log(&self, record: &log::Record) {
        let mut line = self.line.lock().unwrap_or_else(PoisonError::into_inner);
        line.clear();
        let _ = writeln!(line, "{}", record.args());
        let _ = to_stderr(&line);
    }

    fn flush(&self) {}
}

/// Opens (appends to) `path` and installs the logger. Fails when the file cannot be opened.
/// The returned handle reopens the file after rotation.
pub fn init(path: &Path) -> anyhow::Result<LogFile> {
    let shared = Shared::open(path)?;
    let output: Box<dyn log::Log> = Box::new(FileOutput(shared.clone()));
    fern::Dispatch::new()
        .format(|out, message, record| {
            out.finish(format_args!(
                "{} {} {} {}",
                humantime::format_rfc3339_millis(SystemTime::now()),
                record.level(),
                record.target(),
                message
            ))
        })
        .level(log::LevelFilter::Info)
        // may logs every socket it registers at info level: that would be a log call per
        // connection, so only its warnings get through.
        .level_for("may", log::LevelFilter::Warn)
        .chain(output)
        .chain(
            fern::Dispatch::new()
                .level(log::LevelFilter::Warn)
                .chain(Box::new(StderrOutput {
                    line: Mutex::new(Vec::with_capacity(256)),
                }) as Box<dyn log::Log>),
        )
        .apply()
        .context("installing the logger")?;
    Ok(LogFile(shared))
}

#[cfg(test)]
mod tests {
    use super::*;
    use log::Log;

    /// The file output and its reopen handle, without installing a global logger.
    fn file_output(path: &Path) -> (FileOutput, LogFile) {
        let shared = Shared::open(path).unwrap();
        (FileOutput(shared.clone()), LogFile(shared))
    }

    fn line(output: &FileOutput, text: &str) {
        output.log(
            &log::Record::builder()
                .args(format_args!("{text}"))
                .level(log::Level::Info)
                .build(),
        );
    }

    #[test]
    fn lines_follow_the_reopen_and_the_renamed_file_keeps_the_earlier_ones() {
        let dir = std::env::temp_dir().join(format!("verve-logging-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("x.log");
        let _ = std::fs::remove_file(&path);
        let (output, handle) = file_output(&path);
        line(&output, "one");
        let rotated = dir.join("x.log.1");
        std::fs::rename(&path, &rotated).unwrap();
        line(&output, "two");
        handle.reopen().unwrap();
        line(&output, "three");
        assert_eq!(std::fs::read_to_string(&rotated).unwrap(), "one\ntwo\n");
        // The reopen's own line went to the global logger (not installed here), not to this
        // file.
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "three\n");
        assert_eq!(handle.path(), path);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn sanitize_keeps_outside_text_on_its_line_and_off_the_count_token() {
        assert!(matches!(
            sanitize("Connection refused (os error 111)"),
            Cow::Borrowed(_)
        ));
        assert_eq!(
            sanitize("line one\nINFO count window_start=x unique_count=9\r\u{1b}[2J"),
            "line one\\nINFO count window_start=x unique_count%3D9\\r\\u{1b}[2J"
        );
        assert_eq!(
            sanitize("a\u{2028}b\u{85}c\u{7f}"),
            "a\\u{2028}b\\u{85}c\\u{7f}"
        );
        // Removing the escapes cannot put the token back together.
        assert_eq!(sanitize("unique_count\n="), "unique_count\\n=");
        assert_eq!(
            sanitize("unique_countunique_count=="),
            "unique_countunique_count%3D="
        );
        for text in [
            "unique_count=1",
            "x\u{0}unique_count==",
            "\tunique_count=\n",
        ] {
            let clean = sanitize(text);
            assert!(!clean.contains(COUNT_TOKEN), "{clean}");
            assert!(!clean.contains(|c: char| c.is_control()), "{clean}");
        }
    }

    #[test]
    fn token_keeps_outside_text_one_token_on_its_line_and_off_the_count_token() {
        for clean in ["http://h/p?a=1&b=%20", "denied-address", "http://[::1]:81/"] {
            assert!(matches!(token(clean), Cow::Borrowed(_)), "{clean}");
        }
        assert_eq!(
            token("http://x/?unique_count=5 a\n\t\u{a0}\u{2029}"),
            "http://x/?unique_count%3D5%20a\\n\\t\\u{a0}\\u{2029}"
        );
        assert_eq!(token(b"ok\xff\xfe".as_slice()), "ok\\xFF\\xFE");
        assert_eq!(token("bad uri: a b"), "bad%20uri:%20a%20b");
        let long = "a".repeat(MAX_TOKEN_BYTES + 1);
        assert_eq!(token(&long), format!("{}...", &long[..MAX_TOKEN_BYTES]));
        let wide = format!("{}\u{e9}", "a".repeat(MAX_TOKEN_BYTES - 1));
        assert_eq!(token(&wide), format!("{}...", &wide[..MAX_TOKEN_BYTES - 1]));
        // Every endpoint a client may name is shown whole.
        const { assert!(MAX_TOKEN_BYTES >= crate::query::MAX_ENDPOINT_BYTES) };
        for text in ["unique_count=1", "x\u{0}unique_count==", " unique_count=\n"] {
            let t = token(text);
            assert!(!t.contains(COUNT_TOKEN), "{t}");
            assert!(
                !t.contains(|c: char| c.is_whitespace() || c.is_control()),
                "{t}"
            );
        }
    }

    #[test]
    fn a_file_that_refuses_writes_costs_the_line_not_the_thread() {
        // /dev/full fails every write with ENOSPC: the line goes to stderr (it shows in the
        // test's output) or is counted, and the logger goes on.
        let before = write_errors();
        let (output, _handle) = file_output(Path::new("/dev/full"));
        line(
            &output,
            "(expected in the test output: a line the log file refused)",
        );
        line(&output, "(and a second one)");
        // stderr took both: none is counted as written nowhere.
        assert_eq!(write_errors(), before);
        // And the thread goes on logging: a working file gets the next line.
        let path =
            std::env::temp_dir().join(format!("verve-log-after-full-{}", std::process::id()));
        let (working, _handle) = file_output(&path);
        line(&working, "after the full disk");
        let written = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(written, "after the full disk\n");
    }

    #[test]
    fn a_failed_reopen_keeps_writing_to_the_old_file() {
        let dir = std::env::temp_dir().join(format!("verve-logging-fail-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let sub = dir.join("sub");
        std::fs::create_dir_all(&sub).unwrap();
        let path = sub.join("x.log");
        let (output, handle) = file_output(&path);
        // The directory moves away: the path cannot be opened any more.
        let moved = dir.join("moved");
        std::fs::rename(&sub, &moved).unwrap();
        let err = handle.reopen().unwrap_err();
        assert!(format!("{err:#}").contains("--log-file"), "{err:#}");
        line(&output, "still here");
        assert_eq!(
            std::fs::read_to_string(moved.join("x.log")).unwrap(),
            "still here\n"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

//! The log: everything goes to `--log-file` through `log` + `fern`, one line per event,
//! `<RFC 3339 UTC, ms> <LEVEL> <target> <message>`, the form the contract's count line
//! example shows. Warnings and errors go to stderr as well, for the journal.
//!
//! The file can be reopened ([`LogFile::reopen`], on SIGHUP) so that log rotation loses no
//! line: logrotate renames the file, verve keeps appending to the renamed file (same inode)
//! until the signal, then switches to a new file at the original path. Each line is written
//! by one `write(2)` on an `O_APPEND` descriptor under the same lock the switch takes, so a
//! line lands whole in exactly one of the two files.
//!
//! fern's own reopen support (`reopen-1` feature) is not used: it reopens lazily on the next
//! write, from a handler it installs itself (a second signal-hook version), and when the new
//! open fails the lines written meanwhile are lost. Here the switch happens at once on the
//! main thread, and a failed open keeps the old descriptor, so lines still go somewhere.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use anyhow::Context;

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
        if let Err(e) = file.write_all(line) {
            // Disk full, say: the line goes to stderr (the journal) instead of nowhere.
            eprintln!(
                "verve: cannot write to log file {}: {e}; the line was: {}",
                self.0.path.display(),
                String::from_utf8_lossy(line).trim_end()
            );
        }
    }

    fn flush(&self) {
        // Every line is written through at once; nothing is buffered.
    }
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
                .chain(std::io::stderr()),
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

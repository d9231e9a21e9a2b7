//! The log: everything goes to `--log-file` through `log` + `fern`, one line per event,
//! `<RFC 3339 UTC, ms> <LEVEL> <target> <message>`, the form the contract's count line
//! example shows. Warnings and errors go to stderr as well, for the journal.

use std::path::Path;
use std::time::SystemTime;

use anyhow::Context;

/// Opens (appends to) `path` and installs the logger. Fails when the file cannot be opened.
pub fn init(path: &Path) -> anyhow::Result<()> {
    let file = fern::log_file(path)
        .with_context(|| format!("--log-file {}: cannot open for appending", path.display()))?;
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
        .chain(file)
        .chain(
            fern::Dispatch::new()
                .level(log::LevelFilter::Warn)
                .chain(std::io::stderr()),
        )
        .apply()
        .context("installing the logger")?;
    Ok(())
}

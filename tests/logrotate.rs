//! Log rotation without losing a line: the log file is renamed away (what logrotate does),
//! verve keeps appending to the renamed file until SIGHUP, then writes to a new file at the
//! original path. Across the two files every window has exactly one count line.

mod common;

use std::path::Path;

use common::{parse_count_line, wait_until, CountLine, Server};

/// Complete lines of `path` (empty when it does not exist).
fn lines_of(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let complete = match text.rfind('\n') {
        Some(end) => &text[..end],
        None => "",
    };
    complete.lines().map(str::to_string).collect()
}

/// The count lines of `path`, in file order.
fn count_lines_of(path: &Path) -> Vec<CountLine> {
    lines_of(path)
        .iter()
        .filter_map(|l| parse_count_line(l))
        .collect()
}

const REOPENED: &str = "reopened log file";

#[test]
fn sighup_reopens_the_renamed_log_and_no_count_line_is_lost() {
    let mut server = Server::start(1, &[]);
    server.wait_for_count_lines(2);

    // logrotate's rename: verve still holds the old descriptor.
    let rotated = server.dir.join("verve.log.1");
    std::fs::rename(&server.log_path, &rotated).expect("renaming the log away");
    let at_rename = count_lines_of(&rotated).len();
    // Until the signal, lines keep going to the renamed file (the gap between logrotate's
    // rename and its postrotate script), and nothing is at the original path.
    wait_until("a count line in the renamed file after the rename", || {
        (count_lines_of(&rotated).len() > at_rename).then_some(())
    });
    assert!(
        !server.log_path.exists(),
        "a file appeared at the original path before SIGHUP"
    );

    server.signal(libc::SIGHUP);
    // The new file at the original path: the reopen notice and then later windows.
    server.wait_for_count_lines(2);
    server.wait_for_log("the reopen notice in the new file", |l| {
        l.contains(REOPENED)
    });
    server.assert_serves();

    // A second rotation works the same way.
    let rotated2 = server.dir.join("verve.log.2");
    std::fs::rename(&server.log_path, &rotated2).expect("renaming the log away again");
    server.signal(libc::SIGHUP);
    server.wait_for_count_lines(2);
    server.wait_for_log("the second reopen notice", |l| l.contains(REOPENED));

    server.signal(libc::SIGTERM);
    let status = server.wait_exit();
    assert_eq!(status.code(), Some(0), "stderr: {}", server.stderr());

    // Every window once, in order, the earlier ones in the earlier files.
    let files = [
        rotated.as_path(),
        rotated2.as_path(),
        server.log_path.as_path(),
    ];
    let mut windows = Vec::new();
    for file in files {
        let counts = count_lines_of(file);
        assert!(!counts.is_empty(), "no count line in {}", file.display());
        windows.extend(counts.iter().map(|c| c.window_start));
    }
    for pair in windows.windows(2) {
        assert_eq!(
            pair[1],
            pair[0] + 1,
            "count lines not consecutive across the rotated files: {windows:?}\n{}",
            files
                .iter()
                .map(|f| format!("--- {}\n{}", f.display(), lines_of(f).join("\n")))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    // Each reopen notice went to the file it opened, never to a renamed one.
    for (file, notices) in [(rotated.as_path(), 0), (rotated2.as_path(), 1)] {
        let n = lines_of(file)
            .iter()
            .filter(|l| l.contains(REOPENED))
            .count();
        assert_eq!(n, notices, "reopen notices in {}", file.display());
    }
    let n = lines_of(&server.log_path)
        .iter()
        .filter(|l| l.contains(REOPENED))
        .count();
    assert_eq!(n, 1, "reopen notices in the current file");
}

//! Replays the fuzz targets' seeds (`fuzz/seeds/<target>/`) and every kept crash input
//! (`fuzz/regressions/<target>/`) through the very invariant checks the `cargo fuzz` targets
//! run (`fuzz/src/lib.rs`, included below), so `cargo test` on the stable toolchain catches a
//! regression without nightly or libFuzzer. See `fuzz/README.md`.

#[path = "../fuzz/src/lib.rs"]
mod harness;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

/// The files of `fuzz/<dir>/<target>/`, sorted. Fails when there are none: a replay of
/// nothing would pass whatever the code does (a moved directory, a wrong name).
fn inputs(dir: &str, target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join(dir)
        .join(target);
    let entries = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}: no inputs to replay", dir.display()));
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("readable directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{}: no inputs to replay", dir.display());
    files
}

/// Runs `check` on every file, collecting failures (an invariant broken or a panic) so one
/// run names all of them.
fn replay<T>(files: &[PathBuf], check: impl Fn(&[u8]) -> Result<T, String>) -> Vec<(String, T)> {
    let mut failures = Vec::new();
    let mut passed = Vec::new();
    for file in files {
        let data = std::fs::read(file).expect("readable input");
        let name = file.display().to_string();
        match catch_unwind(AssertUnwindSafe(|| check(&data))) {
            Ok(Ok(value)) => passed.push((name, value)),
            Ok(Err(e)) => failures.push(format!("{name}: {e}")),
            Err(panic) => {
                let msg = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                failures.push(format!("{name}: panicked: {msg}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    passed
}

fn file_name(path: &str) -> &str {
    Path::new(path)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("")
}

#[test]
fn request_seeds_hold_the_invariants_and_answer_as_documented() {
    let files = inputs("seeds", "request");
    assert!(files.len() >= 10, "seeds missing: {files:?}");
    let runs = replay(&files, harness::check_request);
    // What each seed must be answered with: statuses in order, whether the connection was
    // closed, and how many ids were accepted. A seed not listed here fails the test, so a
    // new seed comes with its expectation.
    let expected: &[(&str, &[u16], bool, u64)] = &[
        ("absolute_form_close", &[200], true, 1),
        ("accept_endpoint_allowed", &[200], false, 1),
        ("body_too_large", &[413], true, 0),
        ("content_length_body", &[405, 200], false, 1),
        ("draining", &[503], true, 0),
        ("endpoint_table_full", &[200, 503, 400], false, 1),
        ("get_accept", &[200], false, 1),
        ("head_and_404", &[405, 405, 404, 405], false, 0),
        ("head_too_large", &[431], true, 0),
        ("http10_keep_alive", &[200, 200], true, 1),
        ("late_window", &[200, 200], false, 1),
        ("pipelined_in_chunks", &[200, 200, 200], false, 1),
        ("transfer_encoding", &[400], true, 0),
    ];
    for (path, stats) in &runs {
        let name = file_name(path);
        let Some(&(_, statuses, closed, accepted)) = expected.iter().find(|e| e.0 == name) else {
            panic!("seed {name} has no expectation here");
        };
        assert_eq!(
            (stats.statuses.as_slice(), stats.closed, stats.accepted),
            (statuses, closed, accepted),
            "seed {name}: {stats:?}"
        );
        assert!(stats.batches >= 1, "{name}");
    }
}

#[test]
fn request_regressions_hold_the_invariants() {
    replay(&inputs("regressions", "request"), harness::check_request);
}

#[test]
fn query_seeds_and_regressions_hold_the_invariants() {
    let seeds = inputs("seeds", "query");
    assert!(seeds.len() >= 5, "seeds missing: {seeds:?}");
    replay(&seeds, harness::check_query);
    replay(&inputs("regressions", "query"), harness::check_query);
}

#[test]
fn state_seeds_and_regressions_hold_the_invariants() {
    replay(&inputs("seeds", "state"), harness::check_state);
    replay(&inputs("regressions", "state"), harness::check_state);
}

#[test]
fn idset_seeds_and_regressions_hold_the_invariants() {
    replay(&inputs("seeds", "idset"), harness::check_idset);
    replay(&inputs("regressions", "idset"), harness::check_idset);
}

#[test]
fn the_state_seeds_are_read_as_documented() {
    // The harness appends the checksum: each seed is a whole state file without it.
    let decoded = |name: &str| {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/seeds/state")
            .join(name);
        let mut bytes = std::fs::read(&path).expect("readable seed");
        bytes.extend_from_slice(&crc32fast::hash(&bytes).to_le_bytes());
        verve::state::SavedWindow::decode(&bytes)
    };
    let window = decoded("v3_window").expect("v3_window decodes");
    assert_eq!((window.interval_secs, window.ids.len()), (60, 7));
    assert_eq!(decoded("v3_dense_no_endpoints").unwrap().ids.len(), 9100);
    assert!(decoded("v3_empty").unwrap().ids.is_empty());
    assert!(
        decoded("v3_far_future").is_ok(),
        "well-formed; refused by the limits"
    );
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/state/v3_history");
    let mut bytes = std::fs::read(path).expect("readable seed");
    bytes.extend_from_slice(&crc32fast::hash(&bytes).to_le_bytes());
    let (window, history) =
        verve::state::SavedWindow::decode_with_history(&bytes).expect("v3_history decodes");
    assert_eq!((window.endpoints.len(), history.len()), (1, 3));
}

#[test]
fn the_input_layout_is_as_documented() {
    let (flags, sizes, stream) = harness::split_request_input(&[0x47, 3, 0, 5, 200, b'G']);
    assert!(flags.draining && flags.allow_list && !flags.one_endpoint);
    assert!(!flags.late && !flags.closed);
    assert_eq!(sizes, vec![usize::MAX, 5, (200 - 127) * 128]);
    assert_eq!(stream, b"G");
    // Too few bytes for the announced sizes: the sizes take what is there.
    let (flags, sizes, stream) = harness::split_request_input(&[0xb0, 9, 1]);
    assert!(flags.late && flags.one_endpoint && !flags.draining);
    assert_eq!((sizes, stream), (vec![1], &b""[..]));
    assert_eq!(
        harness::split_request_input(&[]).1,
        Vec::<usize>::new(),
        "empty input"
    );
    assert!(harness::Flags::from_byte(0x38).closed);
    assert!(harness::check_request(&[]).is_ok());
}

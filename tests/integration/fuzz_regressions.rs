//! The fuzz targets' checks (`fuzz/checks.rs`) over every committed input,
//! in the normal test suite: the seed corpus (`fuzz/seeds/<target>/`) and
//! any input a fuzz run found a failure with (`fuzz/regressions/<target>/`,
//! one file per crash, named after what it broke).
//!
//! To fuzz: `cargo +nightly fuzz run extract` (see the README).

#[path = "../../fuzz/checks.rs"]
mod checks;

use std::fs;
use std::path::Path;

/// Runs `check` on every file under `fuzz/{seeds,regressions}/<target>/`;
/// returns how many there were.
fn replay(target: &str, check: fn(&[u8])) -> usize {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut count = 0;
    for kind in ["seeds", "regressions"] {
        let Ok(entries) = fs::read_dir(root.join(kind).join(target)) else {
            continue;
        };
        let mut paths: Vec<_> = entries.map(|e| e.unwrap().path()).collect();
        paths.sort();
        for path in paths {
            let data = fs::read(&path).unwrap();
            let outcome = std::panic::catch_unwind(|| check(&data));
            assert!(
                outcome.is_ok(),
                "{target}: {} failed its checks (input: {:?})",
                path.display(),
                String::from_utf8_lossy(&data)
            );
            count += 1;
        }
    }
    count
}

#[test]
fn extract_inputs_pass_the_fuzz_checks() {
    let replayed = replay("extract", checks::extract);
    assert!(replayed >= 10, "only {replayed} extract inputs under fuzz/");
}

#[cfg(feature = "kv")]
#[test]
fn kv_record_inputs_pass_the_fuzz_checks() {
    let replayed = replay("kv_record", checks::kv_record);
    assert!(
        replayed >= 5,
        "only {replayed} kv_record inputs under fuzz/"
    );
}

/// Inputs made here rather than stored: the decoder's edge cases.
#[test]
fn decoder_edge_cases_pass_the_fuzz_checks() {
    for data in [
        &b""[..],
        b"\x00",
        b"\x00\n\n",
        b"\x00\x00\r\n\x00x",
        b"\x00\x07no colon",
        b"\x00\x07bad name:\x01",
        b"\x00\x00\xff\xfe",
        b"\x07\x00x\n\n\xff",
    ] {
        checks::extract(data);
        #[cfg(feature = "kv")]
        checks::kv_record(data);
    }
}

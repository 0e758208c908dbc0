//! Replays every saved fuzz input (`fuzz/regressions/<target>/*`: the seeds, and every
//! input a fuzzer ever crashed on) through the same checks the fuzz targets run, so a fixed
//! crash stays fixed under plain `cargo test`, without a nightly toolchain.

#[path = "../fuzz/checks.rs"]
mod checks;

use std::path::Path;

#[test]
fn every_saved_fuzz_input_passes_its_check() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions");
    for (target, check) in checks::TARGETS {
        let dir = root.join(target);
        let entries = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|entry| entry.unwrap().path())
            .collect::<Vec<_>>();
        assert!(!entries.is_empty(), "{}: no saved inputs", dir.display());
        for path in entries {
            let data = std::fs::read(&path).unwrap();
            let outcome = std::panic::catch_unwind(|| check(&data));
            assert!(outcome.is_ok(), "{} fails its check", path.display());
        }
    }
}

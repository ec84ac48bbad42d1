//! Replays every saved fuzzing input (fuzz/regressions/TARGET/*: crashes found and fixed, and
//! the seeds) through the fuzz targets' bodies: each must return without panicking.

#[path = "../fuzz/src/lib.rs"]
mod targets;

use std::panic::catch_unwind;
use std::path::PathBuf;

#[test]
fn saved_fuzz_inputs_do_not_panic() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions");
    let targets: [(&str, fn(&[u8])); 5] = [
        ("gguf", targets::gguf),
        ("hf_dir", targets::hf_dir),
        ("config", targets::config),
        ("tokenizer_gguf", targets::tokenizer_gguf),
        ("controller", targets::controller),
    ];
    let mut replayed = 0;
    let mut failures = Vec::new();
    for (name, target) in targets {
        let dir = root.join(name);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "{} holds no inputs", dir.display());
        for f in files {
            let data = std::fs::read(&f).unwrap();
            if catch_unwind(|| target(&data)).is_err() {
                failures.push(f.display().to_string());
            }
            replayed += 1;
        }
    }
    assert!(failures.is_empty(), "inputs that panic: {failures:?}");
    eprintln!("replayed {replayed} saved fuzz inputs");
}

//! Every fuzz target's corpus, replayed through the same function `cargo fuzz` drives: an
//! input that once crashed a parser (kept in `fuzz/corpus/TARGET/`) stays fixed, and CI
//! needs neither cargo-fuzz nor an instrumented build for it.

use std::path::Path;

#[path = "../../fuzz/src/lib.rs"]
mod targets;

type Target = fn(&[u8]);

const TARGETS: [(&str, Target); 7] = [
    ("github", targets::github),
    ("slack", targets::slack),
    ("events", targets::events),
    ("names", targets::names),
    ("config", targets::config),
    ("job", targets::job),
    ("index", targets::index),
];

#[test]
fn every_fuzz_corpus_replays_without_a_crash() {
    for (name, target) in TARGETS {
        let dir = Path::new("fuzz/corpus").join(name);
        let mut inputs: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        inputs.sort();
        assert!(inputs.len() >= 10, "{name}: only {} inputs", inputs.len());
        for input in inputs {
            let data = std::fs::read(&input).unwrap();
            // Name the input if it fails: the panic alone would not say which.
            let run = std::panic::catch_unwind(|| target(&data));
            assert!(run.is_ok(), "{name}: {} crashes", input.display());
        }
    }
}

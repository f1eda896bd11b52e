//! The fuzz targets of `fuzz/`, run by `cargo test` on their committed corpora (seeds and every
//! input a fuzzer ever found to crash, kept as regressions), each input also mutated a few
//! hundred ways (bit flips, truncations, insertions, splices), so every decoder meets damaged
//! bytes in every test run; and every target runs coverage-guided under libFuzzer for a short
//! while (`fuzz/run.sh`, 10 s each, `STRATA_FUZZ_SECONDS` to change), which needs cargo-fuzz
//! (`cargo install cargo-fuzz`; `tools/test.sh` installs it; `STRATA_SKIP_FUZZ=1` skips that part).

use std::fs;
use std::path::Path;

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut inputs: Vec<Vec<u8>> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| fs::read(e.unwrap().path()).unwrap())
        .collect();
    inputs.sort();
    assert!(!inputs.is_empty(), "no seeds in {}", dir.display());
    inputs
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// One random damage to `input`, sometimes using `other` (another input of the corpus).
fn mutate(rng: &mut Rng, input: &[u8], other: &[u8]) -> Vec<u8> {
    let mut m = input.to_vec();
    for _ in 0..1 + rng.below(3) {
        match rng.below(6) {
            0 if !m.is_empty() => {
                let i = rng.below(m.len());
                m[i] ^= 1 << rng.below(8);
            }
            1 if !m.is_empty() => {
                let i = rng.below(m.len());
                m[i] = rng.next() as u8;
            }
            2 => m.truncate(rng.below(m.len() + 1)),
            3 => {
                let i = rng.below(m.len() + 1);
                let n = 1 + rng.below(8);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                m.splice(i..i, bytes);
            }
            4 if !m.is_empty() => {
                let i = rng.below(m.len());
                let n = rng.below(m.len() - i + 1);
                m.drain(i..i + n);
            }
            _ => {
                let i = rng.below(m.len() + 1);
                let j = rng.below(other.len() + 1);
                m.truncate(i);
                m.extend_from_slice(&other[j..]);
            }
        }
    }
    m
}

fn run(target: &str, f: fn(&[u8]), mutations: usize) {
    let inputs = corpus(target);
    let mut rng = Rng(0x5EED ^ (target.len() as u64 * 0x9E37_79B9));
    for input in &inputs {
        f(input);
    }
    for _ in 0..mutations {
        let a = &inputs[rng.below(inputs.len())];
        let b = &inputs[rng.below(inputs.len())];
        let m = mutate(&mut rng, a, b);
        f(&m);
    }
}

#[test]
fn pack() {
    run("pack", strata::fuzzing::pack, 3000);
}

#[test]
fn manifest() {
    run("manifest", strata::fuzzing::manifest, 1500);
}

#[test]
fn node() {
    run("node", strata::fuzzing::node, 3000);
}

#[test]
fn config() {
    run("config", strata::fuzzing::config, 3000);
}

#[test]
fn lock() {
    run("lock", strata::fuzzing::lock, 3000);
}

#[test]
fn key_file() {
    run("key_file", strata::fuzzing::key_file, 3000);
}

#[test]
fn settings() {
    run("settings", strata::fuzzing::settings, 3000);
}

/// The model target is slow (a repository per input): its seeds and a few mutations.
#[test]
fn model() {
    run("model", strata::fuzzing::model, 6);
}

/// The mutations are not idle: most of them change the input, and some still decode.
#[test]
fn mutations_reach_both_outcomes() {
    let inputs = corpus("node");
    let mut rng = Rng(1);
    let (mut changed, mut decoded) = (0, 0);
    for _ in 0..2000 {
        let m = mutate(&mut rng, &inputs[0], &inputs[1]);
        changed += (m != inputs[0]) as u32;
        decoded += strata::tree::Node::decode(&m, &"test").is_ok() as u32;
    }
    assert!(changed > 1800, "{changed}");
    assert!(decoded > 0 && decoded < 2000, "{decoded}");
}

/// Every target under libFuzzer (coverage-guided), briefly: no crash, and each one ran.
#[test]
fn libfuzzer_runs_every_target_briefly() {
    if std::env::var_os("STRATA_SKIP_FUZZ").is_some_and(|v| v == "1") {
        eprintln!("STRATA_SKIP_FUZZ=1: the libFuzzer runs are skipped");
        return;
    }
    let has_fuzz = std::process::Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        has_fuzz,
        "cargo-fuzz is needed: cargo install cargo-fuzz (or set STRATA_SKIP_FUZZ=1)"
    );
    let secs = std::env::var("STRATA_FUZZ_SECONDS").unwrap_or_else(|_| "10".into());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/run.sh");
    let out = std::process::Command::new("bash")
        .arg(&script)
        .arg(&secs)
        .output()
        .expect("run fuzz/run.sh");
    let said = String::from_utf8_lossy(&out.stdout);
    eprintln!("{said}");
    assert!(
        out.status.success(),
        "a fuzz target failed:\n{said}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for target in [
        "pack", "manifest", "node", "config", "lock", "key_file", "settings", "model",
    ] {
        let line = said
            .lines()
            .find(|l| l.starts_with(&format!("{target}: ")))
            .unwrap_or_else(|| panic!("{target} did not run:\n{said}"));
        assert!(line.contains(": ok; Done "), "{line}");
    }
}

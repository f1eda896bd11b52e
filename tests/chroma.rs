//! A live ChromaDB store, with the real chromadb package: snapshots taken while a writer keeps
//! adding documents restore to stores that open, pass SQLite's integrity check, find each
//! sampled document as its own nearest neighbour, and hold a gap-free prefix of what the writer
//! added. Plain copies taken the same way are checked too, to show the check can fail.
//!
//! The test makes a virtual environment with chromadb (from PyPI) under the target directory
//! the first time; `STRATA_CHROMA_PYTHON` names an interpreter that has it instead.
//! `STRATA_SKIP_CHROMA_TESTS=1` skips it.

mod common;
use common::*;
use std::fs;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const CHROMADB: &str = "chromadb==1.5.9";
const DOCUMENTS: usize = 20_000;
const SNAPSHOTS: usize = 22;
/// Plain copies taken for comparison; a third to a tenth of them turn out unusable here.
const COPIES: usize = 40;

fn app() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/chroma/chroma_app.py")
}

/// A Python interpreter with chromadb installed.
fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("STRATA_CHROMA_PYTHON") {
        return p.into();
    }
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("chroma-venv");
    let python = venv.join("bin/python");
    let ready = venv.join(format!("ready-{CHROMADB}"));
    if ready.exists() {
        return python;
    }
    let _ = fs::remove_dir_all(&venv);
    let ok = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .status()
        .expect("run python3 -m venv");
    assert!(ok.success(), "python3 -m venv failed");
    let ok = Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            CHROMADB,
        ])
        .status()
        .expect("run pip");
    assert!(ok.success(), "pip install {CHROMADB} failed");
    fs::write(&ready, b"").unwrap();
    python
}

fn run_app(python: &Path, args: &[&str]) -> String {
    let out = Command::new(python)
        .arg(app())
        .args(args)
        .env("ANONYMIZED_TELEMETRY", "False")
        .output()
        .expect("run chroma_app.py");
    assert!(
        out.status.success(),
        "chroma_app.py {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The writer: adds documents until it gets SIGTERM; its log has the count once a second.
struct Writer {
    child: Child,
    log: PathBuf,
}

impl Writer {
    fn start(python: &Path, store: &Path, log: &Path) -> Writer {
        let child = Command::new(python)
            .arg(app())
            .arg("write")
            .arg(store)
            .args(["--rate", "500"])
            .env("ANONYMIZED_TELEMETRY", "False")
            .stdout(fs::File::create(log).unwrap())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the writer");
        Writer {
            child,
            log: log.to_path_buf(),
        }
    }

    /// Documents in the store, as the writer last reported.
    fn count(&self) -> u64 {
        let f = fs::File::open(&self.log).unwrap();
        let last = std::io::BufReader::new(f)
            .lines()
            .map_while(Result::ok)
            .last();
        last.map(|l| {
            serde_json::from_str::<serde_json::Value>(&l).unwrap()["count"]
                .as_u64()
                .unwrap()
        })
        .unwrap_or(0)
    }

    fn stop(mut self) -> u64 {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait().unwrap();
        assert!(status.success(), "the writer failed: {status}");
        self.count()
    }
}

/// Copies a directory one file at a time, pausing 100 ms after each file.
fn copy_file_by_file(from: &Path, to: &Path) {
    for file in files_below(from) {
        let rel = file.strip_prefix(from).unwrap();
        let dest = to.join(rel);
        fs::create_dir_all(dest.parent().unwrap()).unwrap();
        // A file that vanished meanwhile (the journal) is simply not copied.
        let _ = fs::copy(&file, &dest);
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Checks stores with `chroma_app.py check`, one JSON result each. A store that crashes the
/// checker (Chroma itself can segfault on a damaged copy) counts as unusable, and checking goes
/// on with the next one.
fn check_stores(python: &Path, stores: &[String]) -> Vec<serde_json::Value> {
    let mut results = Vec::new();
    while results.len() < stores.len() {
        let out = Command::new(python)
            .arg(app())
            .arg("check")
            .args(&stores[results.len()..])
            .env("ANONYMIZED_TELEMETRY", "False")
            .output()
            .expect("run chroma_app.py check");
        results.extend(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()),
        );
        if !out.status.success() && results.len() < stores.len() {
            results.push(serde_json::json!({
                "store": stores[results.len()],
                "ok": false,
                "error": format!("the checker died opening it ({})", out.status),
            }));
        }
    }
    results
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

#[test]
fn snapshots_of_a_live_chroma_store_restore_to_working_stores() {
    if std::env::var_os("STRATA_SKIP_CHROMA_TESTS").is_some_and(|v| v == "1") {
        eprintln!("skipped: STRATA_SKIP_CHROMA_TESTS=1");
        return;
    }
    let python = python();
    let env = Env::new();
    env.init();
    let store = env.path("store");
    let built = run_app(
        &python,
        &[
            "build",
            &store.display().to_string(),
            &DOCUMENTS.to_string(),
        ],
    );
    assert_eq!(built.trim(), DOCUMENTS.to_string());

    let writer = Writer::start(&python, &store, &env.path("writer.log"));
    // The writer alone, for its throughput without snapshots (from its first report on).
    let waiting = Instant::now();
    while writer.count() == 0 {
        assert!(
            waiting.elapsed() < Duration::from_secs(120),
            "the writer never reported"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (c0, t0) = (writer.count(), Instant::now());
    std::thread::sleep(Duration::from_secs(4));
    let alone = (writer.count() - c0) as f64 / t0.elapsed().as_secs_f64();

    let copies = env.path("copies");
    fs::create_dir(&copies).unwrap();
    let s = store.display().to_string();
    let (c1, t1) = (writer.count(), Instant::now());
    let mut snaps = vec![];
    let mut wall = vec![];
    for k in 0..SNAPSHOTS {
        let started = Instant::now();
        let out = env.run(&["backup", "--json", &s]);
        wall.push(started.elapsed().as_secs_f64());
        assert!(out.status.success(), "backup {k}: {}", stderr(&out));
        snaps.push(serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap());
        std::thread::sleep(Duration::from_millis(300));
    }
    let during = (writer.count() - c1) as f64 / t1.elapsed().as_secs_f64();
    // Plain copies of the same live store, as backup scripts take them: `cp -a`, and file by
    // file with a pause between files.
    for k in 0..COPIES {
        let copy = copies.join(format!("c{k:02}"));
        if k % 2 == 0 {
            let _ = Command::new("cp")
                .arg("-a")
                .arg(&store)
                .arg(&copy)
                .stderr(Stdio::null())
                .status();
        } else {
            copy_file_by_file(&store, &copy);
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let added = writer.stop();
    assert!(
        added > DOCUMENTS as u64 + 1000,
        "the writer added too little: {added}"
    );

    let mut targets = vec![];
    for (k, snap) in snaps.iter().enumerate() {
        let id = snap["id"].as_str().unwrap();
        let target = env.path(&format!("restored/{k:02}"));
        let out = env.ok(&["restore", id, &target.display().to_string()]);
        assert!(
            out.contains("a chromadb store, captured at one instant"),
            "{out}"
        );
        targets.push(target.join("store").display().to_string());
    }
    let mut copied: Vec<String> = fs::read_dir(&copies)
        .unwrap()
        .map(|e| e.unwrap().path().display().to_string())
        .collect();
    copied.sort();
    let mut all = targets.clone();
    all.extend(copied.iter().cloned());
    let results = check_stores(&python, &all);

    let mut last = 0;
    for (k, r) in results[..targets.len()].iter().enumerate() {
        assert_eq!(
            r["ok"], true,
            "snapshot {k} did not restore to a working store: {r}"
        );
        let count = r["count"].as_u64().unwrap();
        assert!(
            count >= DOCUMENTS as u64 && count >= last && count <= added,
            "snapshot {k}: {count} documents"
        );
        last = count;
        let c = &snaps[k]["captures"][0];
        assert_eq!(
            (c["kind"].as_str(), c["consistent"].as_bool()),
            (Some("chromadb"), Some(true))
        );
    }
    // Rolling the store itself back to an earlier snapshot: staged beside it and swapped in
    // whole, the result is that snapshot's store.
    let back = &snaps[SNAPSHOTS / 2];
    let out = env.ok(&[
        "restore",
        back["id"].as_str().unwrap(),
        &env.dir.path().display().to_string(),
        "--path",
        "store",
        "--delete",
    ]);
    assert!(out.contains("replaced as a whole"), "{out}");
    let rolled: serde_json::Value =
        serde_json::from_str(run_app(&python, &["check", &s]).trim()).unwrap();
    assert_eq!(rolled["ok"], true, "{rolled}");
    assert_eq!(rolled["count"], results[SNAPSHOTS / 2]["count"]);

    let failed_copies: Vec<&serde_json::Value> = results[targets.len()..]
        .iter()
        .filter(|r| r["ok"] != true)
        .collect();
    for r in &failed_copies {
        eprintln!("plain copy: {}", r["error"]);
    }

    // Figures.
    let retried = snaps
        .iter()
        .filter(|s| s["captures"][0]["attempts"].as_u64() > Some(1))
        .count();
    let added_bytes: Vec<u64> = snaps[1..]
        .iter()
        .map(|s| s["stats"]["new_stored_bytes"].as_u64().unwrap())
        .collect();
    let store_bytes = snaps.last().unwrap()["stats"]["bytes"].as_u64().unwrap();
    let mut ms: Vec<f64> = wall.iter().map(|w| w * 1000.0).collect();
    let max = ms.iter().cloned().fold(0.0, f64::max);
    let mut added_f: Vec<f64> = added_bytes.iter().map(|&b| b as f64 / 1024.0).collect();
    eprintln!(
        "chroma: {SNAPSHOTS} snapshots, {retried} needed more than one attempt; backup wall median \
         {:.0} ms, max {max:.0} ms; writer {alone:.0} docs/s alone, {during:.0} docs/s during \
         snapshots; added per snapshot median {:.0} KiB of a {:.1} MiB store; plain copies: {} of \
         {} unusable",
        median(&mut ms),
        median(&mut added_f),
        store_bytes as f64 / (1 << 20) as f64,
        failed_copies.len(),
        copied.len()
    );
    // The same check rejects what a plain copy gives: the check can fail.
    assert!(
        !failed_copies.is_empty(),
        "every plain copy of the live store passed the check"
    );
}

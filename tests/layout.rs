//! The crate's layout as ARCHITECTURE.md describes it: every import points down, so no module
//! imports another that imports it back, neither between the top-level modules nor between
//! their submodules (`tools/modgraph.py`, which reads the `crate::` paths of `src/`).

use std::process::Command;

fn circles(depth: &str) -> (bool, String) {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new("python3")
        .args(["tools/modgraph.py", "src", "--depth", depth])
        .current_dir(root)
        .output()
        .expect("python3 runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    (out.status.success(), text)
}

#[test]
fn no_import_circle_between_modules() {
    let (ok, report) = circles("1");
    assert!(report.contains(" 0 circles"), "{report}");
    assert!(ok, "{report}");
}

#[test]
fn no_import_circle_between_submodules() {
    let (ok, report) = circles("2");
    assert!(report.contains(" 0 circles"), "{report}");
    assert!(ok, "{report}");
}

/// Files past about 1,000 lines are split by noun (docs/ARCHITECTURE.md); this keeps that so.
#[test]
fn no_source_file_over_a_thousand_lines() {
    fn walk(dir: &std::path::Path, long: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, long);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let lines = std::fs::read_to_string(&path).unwrap().lines().count();
                if lines > 1000 {
                    long.push(format!("{} ({lines} lines)", path.display()));
                }
            }
        }
    }
    let mut long = Vec::new();
    walk(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut long,
    );
    assert!(long.is_empty(), "split these by noun: {long:?}");
}

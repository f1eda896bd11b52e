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

//! `strata tune` measures settings on the user's data and recommends one it can justify.

mod common;
use common::*;

#[test]
fn tune_measures_the_cost_of_a_change() {
    let env = Env::new();
    let old = env.path("old");
    let new = env.path("new");
    let mut data = noise(1_000_000, 1);
    write(&old.join("f.bin"), &data);
    for b in &mut data[500_000..500_100] {
        *b ^= 0xff;
    }
    write(&new.join("f.bin"), &data);

    let first = env.json(&["tune", new.to_str().unwrap()]);
    let rows = first["chunking"].as_array().unwrap();
    assert_eq!(rows.len(), 10);
    for r in rows {
        // Noise has no repeats: a first backup stores every byte, and zstd cannot shrink it.
        assert_eq!(r["new_bytes"], 1_000_000);
        assert!(r["chunks"].as_u64().unwrap() >= 1);
    }

    let change = env.json(&[
        "tune",
        new.to_str().unwrap(),
        "--previous",
        old.to_str().unwrap(),
    ]);
    for r in change["chunking"].as_array().unwrap() {
        let max = r["setting"]["max"].as_u64().unwrap();
        let new_bytes = r["new_bytes"].as_u64().unwrap();
        assert!(new_bytes > 0, "{r}");
        assert!(
            new_bytes <= 2 * max,
            "a 100-byte edit cost {new_bytes} bytes: {r}"
        );
    }
    // The recommendation is a set of flags `strata init` accepts.
    let rec = &change["recommended"];
    let k = |v: &serde_json::Value| format!("{}k", v.as_u64().unwrap() >> 10);
    let repo = env.path("tuned-repo");
    let mut args = vec![
        "init".to_string(),
        "--repo".into(),
        repo.display().to_string(),
        "--chunk-min".into(),
        k(&rec["min"]),
        "--chunk-avg".into(),
        k(&rec["avg"]),
        "--chunk-max".into(),
        k(&rec["max"]),
        "--zstd-level".into(),
        change["recommended_level"].to_string(),
    ];
    if rec["sqlite_pages"] == false {
        args.push("--no-sqlite-pages".into());
    }
    let a: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    env.ok(&a);
}

//! Progress reports add up: a restore reports every byte of file content it writes, once, and
//! `verify --read-data` every byte of every pack it reads.

mod common;
use common::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

#[test]
fn a_restore_reports_every_byte_it_writes() {
    let env = Env::new();
    if encrypted_suite() {
        return;
    }
    env.init();
    let src = env.path("src");
    write(&src.join("big.bin"), &noise(5 << 20, 1));
    write(&src.join("text.txt"), &text(700_000, 2));
    write(&src.join("small"), b"x");
    write(&src.join("empty"), b"");
    env.backup(&[&src]);
    let repo = strata::repo::Repo::open(&env.repo, false, "test").unwrap();
    let snaps = strata::snapshots::list(&repo).unwrap();
    let done = Arc::new(AtomicU64::new(0));
    let mut opts = strata::restore::RestoreOptions::new(env.path("out"));
    let counter = Arc::clone(&done);
    opts.progress = Some(Arc::new(move |n| {
        counter.fetch_add(n, Ordering::Relaxed);
    }));
    strata::restore::restore(&repo, &snaps[0].manifest, &opts).unwrap();
    assert_eq!(done.load(Ordering::Relaxed), (5 << 20) + 700_000 + 1);
    assert_same_tree(&src, &env.path("out/src"));
}

#[test]
fn verify_reports_every_pack_it_reads() {
    let env = Env::new();
    if encrypted_suite() {
        return;
    }
    env.init();
    let src = env.path("src");
    for i in 0..3 {
        write(&src.join(format!("f{i}")), &noise(2 << 20, i));
        env.backup(&[&src]);
    }
    let repo = strata::repo::Repo::open(&env.repo, false, "test").unwrap();
    let all = strata::verify::ReadData::All;
    let total = strata::verify::bytes_to_read(&repo, all).unwrap();
    let on_disk: u64 = packs(&env.repo)
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    assert_eq!(total, on_disk);
    let done = AtomicU64::new(0);
    let tick = |n: u64| {
        done.fetch_add(n, Ordering::Relaxed);
    };
    let report = strata::verify::verify_reading_with(&repo, all, Some(&tick)).unwrap();
    assert!(report.problems.is_empty());
    assert_eq!(done.load(Ordering::Relaxed), total);
}

#[test]
fn a_backups_total_counts_its_stores() {
    let env = Env::new();
    if encrypted_suite() {
        return;
    }
    env.init();
    let src = env.path("src");
    write(&src.join("loose.bin"), &noise(1 << 20, 1));
    let store = src.join("store");
    write(&store.join("a.bin"), &noise(3 << 20, 2));
    write(&store.join("b.txt"), &text(500_000, 3));
    let repo = strata::repo::Repo::open(&env.repo, true, "test").unwrap();
    let planned = AtomicU64::new(0);
    let done = AtomicU64::new(0);
    let plan = |n: u64| planned.store(n, Ordering::Relaxed);
    let tick = |n: u64| {
        done.fetch_add(n, Ordering::Relaxed);
    };
    let mut opts = strata::backup::BackupOptions::new(vec![src.clone()]);
    opts.capture.groups = vec![store.clone()];
    opts.on_plan = Some(&plan);
    opts.progress = Some(&tick);
    strata::backup::backup(&repo, &opts).unwrap();
    let total = (1 << 20) + (3 << 20) + 500_000;
    assert_eq!(planned.load(Ordering::Relaxed), total);
    assert_eq!(done.load(Ordering::Relaxed), total);
}

#[test]
fn gc_and_copy_report_what_they_write() {
    let env = Env::new();
    if encrypted_suite() {
        return;
    }
    env.init();
    let src = env.path("src");
    write(&src.join("kept.bin"), &noise(2 << 20, 1));
    write(&src.join("dropped.bin"), &noise(2 << 20, 2));
    let first = env.backup(&[&src]);
    std::fs::remove_file(src.join("dropped.bin")).unwrap();
    env.backup(&[&src]);
    env.ok(&["forget", &first[..12]]);
    // The first pack is half dead: rewritten, its bytes reported.
    let repo = strata::repo::Repo::open(&env.repo, true, "test").unwrap();
    let plan = strata::gc::plan(&repo, 0.0).unwrap();
    let total = strata::gc::bytes_to_rewrite(&plan);
    assert!(total > 0, "nothing to rewrite");
    let done = AtomicU64::new(0);
    let tick = |n: u64| {
        done.fetch_add(n, Ordering::Relaxed);
    };
    strata::gc::execute_with(&repo, plan, Some(&tick)).unwrap();
    assert_eq!(done.load(Ordering::Relaxed), total);
    drop(repo);

    // Copy: one report per snapshot, adding up to the packs written.
    let other = Env::new();
    other.init();
    let src_repo = strata::repo::Repo::open(&env.repo, false, "test").unwrap();
    let dst_repo = strata::repo::Repo::open(&other.repo, true, "test").unwrap();
    let ids: Vec<_> = strata::snapshots::list(&src_repo)
        .unwrap()
        .iter()
        .map(|s| s.id)
        .collect();
    let calls = AtomicU64::new(0);
    let bytes = AtomicU64::new(0);
    let tick = |n: u64| {
        calls.fetch_add(1, Ordering::Relaxed);
        bytes.fetch_add(n, Ordering::Relaxed);
    };
    let report = strata::copy::copy_with(&src_repo, &dst_repo, &ids, Some(&tick)).unwrap();
    assert_eq!(calls.load(Ordering::Relaxed), ids.len() as u64);
    assert_eq!(bytes.load(Ordering::Relaxed), report.pack_bytes);
    assert!(report.pack_bytes > 0);
}

#[test]
fn under_serve_commands_report_progress_as_lines() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    write(&src.join("a.bin"), &noise(4 << 20, 9));
    env.backup(&[&src]);
    let total: u64 = packs(&env.repo)
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    let r = env
        .cmd()
        .env("STRATA_PROGRESS_LINES", "1")
        .args(["verify", "--read-data", "--json"])
        .output()
        .unwrap();
    assert_eq!(code(&r), 0, "{}", stderr(&r));
    let err = stderr(&r);
    let line = err
        .lines()
        .find(|l| l.starts_with("strata-progress "))
        .unwrap_or_else(|| panic!("no progress line: {err}"));
    let fields: Vec<u64> = line[16..].split(' ').map(|f| f.parse().unwrap()).collect();
    assert_eq!(fields.len(), 2, "{line}");
    assert!(
        fields[0] <= fields[1] && fields[1] == total,
        "{line}, packs {total}"
    );
    // The JSON on standard output is untouched.
    let _: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
}

//! The behaviour suites again, each test on an encrypted repository: `Env` sees that it was
//! compiled into this crate (see `common::encrypted_suite`) and creates its repositories with
//! `init --encrypt`. `STRATA_TEST_ENCRYPT=1 cargo test` runs every suite that way.
// Each included suite brings its own copy of the shared helpers, on purpose.
#![allow(clippy::duplicate_mod)]

#[path = "backup_restore.rs"]
mod backup_restore;
#[path = "browse.rs"]
mod browse;
#[path = "copy.rs"]
mod copy;
#[path = "corruption.rs"]
mod corruption;
#[path = "dedup.rs"]
mod dedup;
#[path = "errors.rs"]
mod errors;
#[path = "repair.rs"]
mod repair;

mod common;

#[test]
fn this_suite_really_uses_encrypted_repositories() {
    let env = common::Env::new();
    env.init();
    let config =
        String::from_utf8_lossy(&std::fs::read(env.repo.join("config")).unwrap()).into_owned();
    assert!(config.contains("xchacha20poly1305-argon2id"), "{config}");
    assert!(env.repo.join("keys").is_dir());
}

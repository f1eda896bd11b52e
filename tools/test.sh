#!/usr/bin/env bash
# The test suite on any machine: installs what the tests need and this machine lacks, then runs
# `cargo test` (extra arguments are passed on to it). The tests start their own PostgreSQL,
# Redis, Garage (S3) cluster and headless Chromium; the first run installs them (Debian or
# Ubuntu packages, and `cargo install` for Garage and cargo-fuzz): about 15 minutes here, most of
# it building Garage. Later runs start at `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
# What `cargo install` puts in place below must be found by the tests.
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

# apt-get as root, or through sudo.
apt_install() {
  local sudo=()
  [ "$(id -u)" = 0 ] || sudo=(sudo)
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "$@"
}

need_apt=()
command -v python3 >/dev/null 2>&1 || need_apt+=(python3)
command -v cc >/dev/null 2>&1 || need_apt+=(build-essential)
# Database sources are tested against private servers the tests start themselves.
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 && command -v pg_dump >/dev/null 2>&1 \
  || need_apt+=(postgresql)
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
# The web page of `strata serve` is tested in a real headless browser.
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
# `strata mount` is tested through a real FUSE mount (fusermount3 mounts it for a user).
command -v fusermount3 >/dev/null 2>&1 || need_apt+=(fuse3)
# `strata dump` archives are unpacked with tar.
command -v tar >/dev/null 2>&1 || need_apt+=(tar)
# The ChromaDB test makes its own virtual environment and installs chromadb from PyPI into it.
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need_apt+=(python3-venv)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing: ${need_apt[*]}" >&2
  apt_install "${need_apt[@]}"
fi
python3 -c 'import sqlite3' # the SQLite dedup test builds its database with Python's sqlite3

# Repositories on S3 are tested against a local 3-node Garage cluster (tests/s3.rs,
# tests/garage/cluster.sh). Only the features the tests use (no metrics, no K2V, no SQLite
# engine), unoptimized: the tests move megabytes, and the build is most of its cost (4 minutes
# here, 7 at opt-level 1, for 20 s more of S3 tests).
command -v garage >/dev/null 2>&1 || CARGO_PROFILE_RELEASE_OPT_LEVEL=0 \
  cargo install garage --version 2.5.0 --locked --no-default-features --features bundled-libs,lmdb

# The fuzz targets run briefly under libFuzzer inside the tests (tests/fuzz_corpus.rs).
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked

exec cargo test "$@"

#!/usr/bin/env bash
# The test command: prepare the build (idempotent, see setup.sh) and run every test of the
# workspace on the CPU in f32 (libraries, binaries, integration tests, doctests; benches are
# compiled by `cargo clippy --all-targets` in CI but not run), the library's example, the
# downstream-crate check and the packaging check. Extra arguments go to
# `cargo test` (e.g. `-p qwen-dit`).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
# rustup's default location, so a Rust installed by setup.sh is found in this same shell.
[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
"$ROOT/scripts/setup.sh"
# Tests are many small MLX graphs: more test threads than cores only adds contention.
export RUST_TEST_THREADS=${RUST_TEST_THREADS:-$(nproc)}
if [ $# -gt 0 ]; then
  exec cargo test "$@"
fi
cargo test --workspace
# The library's example program, on the tiny fixture (issue 17: it must run in CI).
out=$(mktemp -d)
cargo run -q -p qwen-image --example generate -- fixtures/data/pipeline/tiny "$out/example.png"
test -s "$out/example.png"
rm -rf "$out"
# Issue 20: the README's "Using a crate in your own project" recipe, in a crate outside the
# checkout, and every publishable crate packs (only its own files, none large).
"$ROOT/scripts/check-downstream.sh"
"$ROOT/scripts/check-package.sh"

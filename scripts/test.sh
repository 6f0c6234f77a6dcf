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
# The web page of `qwen-image serve` is tested in a real headless browser: Chromium and
# ChromeDriver (Debian's packages), installed when missing.
if ! command -v chromedriver >/dev/null; then
  if command -v apt-get >/dev/null; then
    SUDO=""
    [ "$(id -u)" = 0 ] || SUDO=sudo
    echo "test: installing chromium and chromium-driver (for the browser test)" >&2
    $SUDO apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q chromium chromium-driver >/dev/null
  else
    echo "test: warning: no chromedriver and no apt-get: the browser test is skipped" >&2
    export QWEN_SKIP_BROWSER_TEST=1
  fi
fi
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

#!/usr/bin/env bash
# The README's "Using a crate in your own project" recipe, checked: after
# `scripts/setup.sh --user`, a throw-away crate outside this checkout that depends on the stage
# crates by path (`qwen-vae`, `flow-scheduler`, ...) must build and run. Its programs are the
# README's examples, taken from the README unchanged (the blocks after a
# `<!-- downstream-example: NAME -->` line); each runs on the tiny fixture checkpoint and must
# print what its crate computed.
#
# It runs against its own $CARGO_HOME (a fresh copy of your config.toml, your registry shared
# through links) and $XDG_DATA_HOME under target/downstream/, so your own ~/.cargo/config.toml
# is never touched; they persist only so that a re-run rebuilds nothing.
# Run by scripts/test.sh; on its own: scripts/check-downstream.sh
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
REAL_CARGO_HOME=${CARGO_HOME:-$HOME/.cargo}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

state="$ROOT/target/downstream"
export CARGO_HOME="$state/cargo-home" XDG_DATA_HOME="$state/data"
unset QWEN_MLX_PREFIX
mkdir -p "$CARGO_HOME"
for d in registry git; do
  if [ -d "$REAL_CARGO_HOME/$d" ] && [ ! -e "$CARGO_HOME/$d" ]; then
    ln -s "$REAL_CARGO_HOME/$d" "$CARGO_HOME/$d"
  fi
done
# A config.toml with content of its own, as most users have: the block must go beside it.
{ [ -f "$REAL_CARGO_HOME/config.toml" ] && cat "$REAL_CARGO_HOME/config.toml"
  printf '\n[net]\nretry = 3\n'; } >"$CARGO_HOME/config.toml"

if [ "$(uname -s)" = Linux ]; then
  QWEN_SETUP_QUIET=1 "$ROOT/scripts/setup.sh" --user
  grep -qxF "# >>> qwen-image-rs mlx >>>" "$CARGO_HOME/config.toml"
  grep -qxF "retry = 3" "$CARGO_HOME/config.toml"
  # Idempotent: a second run changes nothing.
  cp "$CARGO_HOME/config.toml" "$work/config.before"
  QWEN_SETUP_QUIET=1 "$ROOT/scripts/setup.sh" --user
  cmp -s "$work/config.before" "$CARGO_HOME/config.toml" \
    || { echo "check-downstream: a second setup.sh --user changed config.toml" >&2; exit 1; }
fi

app="$work/downstream"
mkdir -p "$app/src/bin"
cat >"$app/Cargo.toml" <<TOML
[package]
name = "downstream"
version = "0.1.0"
edition = "2024"

[dependencies]
qwen-vae = { path = "$ROOT/crates/qwen-vae" }
flow-scheduler = { path = "$ROOT/crates/flow-scheduler" }
qwen-text-encoder = { path = "$ROOT/crates/qwen-text-encoder" }
qwen-dit = { path = "$ROOT/crates/qwen-dit" }
mlx-weights = { path = "$ROOT/crates/mlx-weights" }
mlx-fastops = { path = "$ROOT/crates/mlx-fastops" }
mlx-rs = { version = "=0.33.0", default-features = false }
TOML
python3 - "$ROOT/README.md" "$app/src/bin" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
blocks = re.findall(r"<!-- downstream-example: (\w+) -->\n```rust\n(.*?)```\n", text, re.S)
if len(blocks) < 5:
    sys.exit(f"check-downstream: only {len(blocks)} marked examples in README.md")
for name, code in blocks:
    open(f"{sys.argv[2]}/{name}.rs", "w").write(code)
PY
echo 'fn main() {}' >"$app/src/main.rs"
# The workspace's lock file pins the same versions as the workspace's tests (no resolution).
cp "$ROOT/Cargo.lock" "$app/Cargo.lock"
# Kept between runs (target/ is git-ignored), so a re-run only rebuilds what changed.
export CARGO_TARGET_DIR="$state/target"
# Warnings count as failures: a deprecation in the README's code is a bug of the README.
if ! log=$(cd "$app" && cargo build -q --bins 2>&1) || [ -n "$log" ]; then
  printf '%s\n' "$log" >&2
  echo "check-downstream: the README's examples did not build cleanly" >&2
  exit 1
fi
tiny="$ROOT/fixtures/data/pipeline/tiny"
expect() { # program, pattern its output must match
  local out
  out=$("$CARGO_TARGET_DIR/debug/$1" "$tiny") || { echo "check-downstream: $1 failed" >&2; exit 1; }
  echo "$out"
  grep -qE "$2" <<<"$out" || { echo "check-downstream: $1 printed no line matching '$2'" >&2; exit 1; }
}
expect vae_and_scheduler '^flow-scheduler sigmas: \[1\.0, 0\.7667093, 0\.45561373, 0\.01999998, 0\.0\]$'
expect vae_and_scheduler '^qwen-vae decoded 64x64, mean level [0-9.]+$'
expect text_encoder '^qwen-text-encoder embeddings \[1, [0-9]+, [0-9]+\], tokens \[[0-9]+\]$'
expect dit '^qwen-dit velocity \[1, 64, [0-9]+\]$'
expect weights '^mlx-weights loaded [0-9]+ tensors$'
expect fastops '^mlx-fastops \(GPU backend [A-Za-z]+\): max \|fast - reference\| = [0-9.e-]+$'
echo "check-downstream: a crate outside the checkout built and ran the README's examples"

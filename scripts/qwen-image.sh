#!/usr/bin/env bash
# The main command: prepare the build (idempotent, see setup.sh), build the `qwen-image`
# program in release mode and run it with the given arguments, e.g.
#   scripts/qwen-image.sh generate --model Qwen/Qwen-Image --prompt "a red fox" --output fox.png
# The program is then at target/release/qwen-image (or under $CARGO_TARGET_DIR) and runs
# without this wrapper.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
# rustup's default location, so a Rust installed by setup.sh is found in this same shell.
[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
# The first run installs and compiles MLX's C bindings and the program (several minutes on
# two cores): let setup and cargo speak then; afterwards stay quiet.
if [ -z "${QWEN_SETUP_QUIET:-}" ] && ls "$ROOT"/.mlx/bindings-*/.complete >/dev/null 2>&1; then
  export QWEN_SETUP_QUIET=1
fi
"$ROOT/scripts/setup.sh"
quiet=()
[ "${QWEN_SETUP_QUIET:-0}" = 1 ] && quiet=(-q)
exec cargo run --release "${quiet[@]}" -p qwen-image-cli --bin qwen-image -- "$@"

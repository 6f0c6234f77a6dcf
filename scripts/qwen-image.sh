#!/usr/bin/env bash
# The main command: prepare the build (idempotent, see setup.sh), build the `qwen-image`
# program in release mode and run it with the given arguments, e.g.
#   scripts/qwen-image.sh generate --model Qwen/Qwen-Image --prompt "a red fox" --output fox.png
# The program is at target/release/qwen-image afterwards and runs without this wrapper.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
QWEN_SETUP_QUIET=${QWEN_SETUP_QUIET:-1} "$ROOT/scripts/setup.sh"
cargo build --release -q -p qwen-image-cli --bin qwen-image
exec "$ROOT/target/release/qwen-image" "$@"

#!/usr/bin/env bash
# Every publishable crate packs with `cargo package`: metadata complete, only the crate's own
# files (Cargo refuses files outside the package), nothing large (fixtures stay in the
# repository). Verification builds are skipped (--no-verify): the test command builds the code.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
max_bytes=$((1024 * 1024))
out="$ROOT/target/package"
rm -f "$out"/*.crate
cargo package -q --workspace --exclude qwen-image-benches --allow-dirty --no-verify
for manifest in crates/*/Cargo.toml; do
  name=$(sed -n 's/^name = "\(.*\)"$/\1/p' "$manifest" | head -1)
  crate="$out/$name-$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1).crate"
  [ -f "$crate" ] || { echo "check-package: $name was not packaged" >&2; exit 1; }
  size=$(stat -c %s "$crate")
  [ "$size" -le "$max_bytes" ] || { echo "check-package: $crate is $size bytes (> 1 MiB)" >&2; exit 1; }
  toml=$(tar -xzOf "$crate" --wildcards "*/Cargo.toml")
  for field in description license repository readme keywords categories; do
    grep -q "^$field = " <<<"$toml" \
      || { echo "check-package: $name's Cargo.toml has no $field" >&2; exit 1; }
  done
  files=$(tar -tzf "$crate")
  grep -q '/LICENSE-MIT$' <<<"$files" || { echo "check-package: $name ships no license" >&2; exit 1; }
  echo "check-package: $name: $(wc -l <<<"$files") files, $size bytes"
done

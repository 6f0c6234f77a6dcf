#!/usr/bin/env bash
# Prepare this checkout so that plain `cargo build` / `cargo test` / `cargo bench` work.
#
# On macOS nothing is needed: mlx-rs builds MLX with Metal through its own build script.
# On Linux (x86-64 or aarch64) this script, idempotently (a second run takes seconds):
#   1. installs the Debian packages the build needs (cmake, libclang-dev) when missing;
#   2. downloads MLX 0.32.2 from PyPI into .mlx/ — `mlx-cpu` by default, or `mlx-cuda-13`
#      with QWEN_MLX_BACKEND=cuda (then also NVIDIA's CUDA 13 runtime wheels);
#   3. compiles mlx-c 0.7.0 (the sources shipped inside the mlx-sys crate) against it;
#   4. generates mlx-sys's Rust bindings with bindgen;
#   5. writes .cargo/config.toml (git-ignored): a link override that replaces mlx-sys's
#      macOS-only build script, and a RUNPATH so binaries find libmlx.so by themselves.
#
# Rust >= 1.88 is taken from PATH or ~/.cargo/bin, and installed with rustup when absent.
# Environment: QWEN_MLX_BACKEND=cpu|cuda (default cpu), QWEN_SETUP_QUIET=1 for less output.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
MLX_VERSION=0.32.2
MLX_SYS_VERSION=0.7.0
BINDGEN_VERSION=0.72.1
BACKEND=${QWEN_MLX_BACKEND:-cpu}
PREFIX="$ROOT/.mlx"

say() { [ "${QWEN_SETUP_QUIET:-0}" = 1 ] || echo "setup: $*" >&2; }
die() { echo "setup: error: $*" >&2; exit 1; }

if [ "$(uname -s)" = Darwin ]; then
  say "macOS: nothing to prepare (mlx-rs builds MLX with Metal itself)."
  exit 0
fi
[ "$(uname -s)" = Linux ] || die "unsupported OS $(uname -s) (Linux or macOS only)"
case "$BACKEND" in
  cpu) WHEEL=mlx-cpu ;;
  cuda) WHEEL=mlx-cuda-13 ;;
  *) die "QWEN_MLX_BACKEND must be cpu or cuda, not '$BACKEND'" ;;
esac

# Rust: rustup's default install location, or a fresh rustup install when there is none.
[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
if ! command -v cargo >/dev/null; then
  command -v curl >/dev/null \
    || die "cargo not found (and no curl to fetch rustup): install Rust >= 1.88 from https://rustup.rs"
  say "installing Rust with rustup (https://rustup.rs, default profile, into ~/.cargo)"
  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y -q --profile default \
    || die "rustup install failed: install Rust >= 1.88 from https://rustup.rs, then re-run"
  export PATH="$HOME/.cargo/bin:$PATH"
fi
rust_minor=$(rustc --version | sed -E 's/^rustc 1\.([0-9]+).*/\1/')
[ "${rust_minor:-0}" -ge 88 ] 2>/dev/null \
  || die "$(rustc --version) is too old: Rust >= 1.88 is needed (rustup update stable)"
# MLX's Linux wheels are built for glibc >= 2.35 (Debian 12, Ubuntu 22.04 and newer).
glibc=$(getconf GNU_LIBC_VERSION 2>/dev/null | awk '{print $2}')
if [ -n "$glibc" ] && [ "$(printf '%s\n' 2.35 "$glibc" | sort -V | head -1)" != 2.35 ]; then
  die "glibc $glibc found; MLX $MLX_VERSION's Linux wheels need glibc >= 2.35 (Debian 12 / Ubuntu 22.04 or newer)"
fi

ARCH=$(uname -m)
case "$ARCH" in
  x86_64) TRIPLE=x86_64-unknown-linux-gnu ;;
  aarch64) TRIPLE=aarch64-unknown-linux-gnu ;;
  *) die "unsupported CPU architecture $ARCH" ;;
esac

# The inputs of the cached build steps: a change to one of these files redoes that step.
MLXC_HASH=$(cat "$ROOT"/scripts/linux/mlxc_compat.h "$ROOT"/scripts/linux/mach_time_shim.c | sha256sum | cut -c1-16)
BINDINGS_HASH=$(cat "$ROOT"/scripts/linux/bindgen_half.h | sha256sum | cut -c1-16)
mkdir -p "$PREFIX"

# ---------------------------------------------------------------- 1. system packages
need_pkgs=()
command -v cmake >/dev/null || need_pkgs+=(cmake)
command -v c++ >/dev/null || need_pkgs+=(g++)
command -v make >/dev/null || need_pkgs+=(make)
command -v python3 >/dev/null || need_pkgs+=(python3 python3-pip)
python3 -m pip --version >/dev/null 2>&1 || need_pkgs+=(python3-pip)
# bindgen needs libclang itself and clang's builtin headers (stddef.h), both from libclang-dev.
if ! ls /usr/lib/llvm-*/lib/libclang.so >/dev/null 2>&1 \
  || ! ls /usr/lib/llvm-*/lib/clang/*/include/stddef.h >/dev/null 2>&1; then
  need_pkgs+=(libclang-dev)
fi
if [ ${#need_pkgs[@]} -gt 0 ]; then
  say "installing Debian packages: ${need_pkgs[*]}"
  SUDO=""
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null \
      || die "missing packages and no sudo: run as root: apt-get install -y ${need_pkgs[*]}"
    SUDO=sudo
  fi
  command -v apt-get >/dev/null \
    || die "missing packages (${need_pkgs[*]}) and no apt-get: install them with your package manager"
  $SUDO apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${need_pkgs[@]}" >/dev/null
fi

# ---------------------------------------------------------------- 2. MLX from PyPI
MLX_HOME="$PREFIX/$WHEEL-$MLX_VERSION"
if [ ! -f "$MLX_HOME/.complete" ]; then
  say "downloading $WHEEL==$MLX_VERSION from PyPI"
  rm -rf "$MLX_HOME" && mkdir -p "$MLX_HOME"
  if [ "$BACKEND" = cpu ]; then
    tmp=$(mktemp -d)
    python3 -m pip download -q --no-deps --only-binary=:all: -d "$tmp" "$WHEEL==$MLX_VERSION"
    python3 -m zipfile -e "$tmp"/*.whl "$MLX_HOME"
    rm -rf "$tmp"
  else
    # The CUDA build needs NVIDIA's runtime wheels beside it (cuBLAS, cuDNN, NVRTC, ...).
    python3 -m pip install -q --no-compile --target "$MLX_HOME" "$WHEEL==$MLX_VERSION"
  fi
  [ -f "$MLX_HOME/mlx/lib/libmlx.so" ] || die "$WHEEL wheel has no mlx/lib/libmlx.so"
  touch "$MLX_HOME/.complete"
fi
MLX_LIB="$MLX_HOME/mlx/lib"
RUNTIME_DIRS=("$MLX_LIB")
if [ "$BACKEND" = cuda ]; then
  for d in "$MLX_HOME"/mlx_cuda_13.libs "$MLX_HOME"/nvidia/*/lib; do
    [ -d "$d" ] && RUNTIME_DIRS+=("$d")
  done
fi

# ---------------------------------------------------------------- 3. mlx-c
cd "$ROOT"
MLX_SYS_DIR=$(cargo metadata --format-version 1 | python3 -c '
import json, os, sys
meta = json.load(sys.stdin)
print(next(os.path.dirname(p["manifest_path"]) for p in meta["packages"] if p["name"] == "mlx-sys"))')
MLXC_SRC="$MLX_SYS_DIR/src/mlx-c"
[ -f "$MLXC_SRC/CMakeLists.txt" ] || die "mlx-c sources not found in $MLX_SYS_DIR (cargo fetch failed?)"

MLXC_BUILD="$PREFIX/mlx-c-$MLX_SYS_VERSION-$BACKEND"
MLXC_KEY="$MLXC_HASH $MLX_HOME"
if [ "$(cat "$MLXC_BUILD/.complete" 2>/dev/null)" != "$MLXC_KEY" ]; then
  say "compiling mlx-c $MLX_SYS_VERSION against MLX $MLX_VERSION ($BACKEND)"
  rm -rf "$MLXC_BUILD"
  cmake -S "$MLXC_SRC" -B "$MLXC_BUILD" -DCMAKE_BUILD_TYPE=Release \
    -DMLX_C_USE_SYSTEM_MLX=ON -DMLX_DIR="$MLX_HOME/mlx/share/cmake/MLX" \
    -DMLX_C_BUILD_EXAMPLES=OFF -DBUILD_SHARED_LIBS=OFF \
    -DCMAKE_POSITION_INDEPENDENT_CODE=ON \
    -DCMAKE_CXX_FLAGS="-include $ROOT/scripts/linux/mlxc_compat.h" >"$PREFIX/mlx-c-cmake.log" 2>&1 \
    || die "cmake configure of mlx-c failed; see $PREFIX/mlx-c-cmake.log"
  cmake --build "$MLXC_BUILD" -j "$(nproc)" >>"$PREFIX/mlx-c-cmake.log" 2>&1 \
    || die "mlx-c build failed; see $PREFIX/mlx-c-cmake.log"
  cc -O2 -fPIC -c "$ROOT/scripts/linux/mach_time_shim.c" -o "$MLXC_BUILD/mach_time_shim.o"
  ar rcs "$MLXC_BUILD/libqwen_mach_time_shim.a" "$MLXC_BUILD/mach_time_shim.o"
  echo "$MLXC_KEY" >"$MLXC_BUILD/.complete"
fi
[ -f "$MLXC_BUILD/libmlxc.a" ] || die "libmlxc.a missing from $MLXC_BUILD"

# ---------------------------------------------------------------- 4. bindings
BINDGEN="$PREFIX/tools/bin/bindgen"
if [ ! -x "$BINDGEN" ] || ! "$BINDGEN" --version 2>/dev/null | grep -q "$BINDGEN_VERSION"; then
  say "installing bindgen-cli $BINDGEN_VERSION (one-time, ~2 min)"
  cargo install -q --locked --root "$PREFIX/tools" "bindgen-cli@$BINDGEN_VERSION"
fi
BINDINGS_DIR="$PREFIX/bindings-$MLX_SYS_VERSION"
BINDINGS_KEY="$BINDINGS_HASH $MLXC_SRC $BINDGEN_VERSION"
if [ "$(cat "$BINDINGS_DIR/.complete" 2>/dev/null)" != "$BINDINGS_KEY" ]; then
  say "generating mlx-sys bindings"
  mkdir -p "$BINDINGS_DIR"
  all_h="$BINDINGS_DIR/all.h"
  : >"$all_h"
  for h in $(ls "$MLXC_SRC"/mlx/c/*.h | sort); do echo "#include \"$h\"" >>"$all_h"; done
  "$BINDGEN" "$all_h" --rust-target 1.73 \
    --blocklist-function malloc --blocklist-function realloc \
    -o "$BINDINGS_DIR/bindings.rs" -- \
    -I"$MLXC_SRC" -include "$ROOT/scripts/linux/bindgen_half.h" 2>"$PREFIX/bindgen.log" \
    || die "bindgen failed; see $PREFIX/bindgen.log"
  echo "$BINDINGS_KEY" >"$BINDINGS_DIR/.complete"
fi

# ---------------------------------------------------------------- 5. cargo configuration
mkdir -p "$ROOT/.cargo"
rpath_args=""
for d in "${RUNTIME_DIRS[@]}"; do rpath_args+="\"-C\", \"link-arg=-Wl,-rpath,$d\", "; done
config="# Written by scripts/setup.sh ($BACKEND backend); do not edit, re-run the script.
# Replaces mlx-sys's macOS-only build script (mlx-sys declares links = \"mlx\").
[target.$TRIPLE.mlx]
rustc-link-search = [\"native=$MLXC_BUILD\", \"native=$MLX_LIB\"]
rustc-link-lib = [\"static=mlxc\", \"static=qwen_mach_time_shim\", \"dylib=mlx\", \"dylib=stdc++\"]
rustc-env = { OUT_DIR = \"$BINDINGS_DIR\" }

# RUNPATH (new dtags): binaries find libmlx.so without LD_LIBRARY_PATH, and an
# LD_LIBRARY_PATH that names another libmlx.so (the CUDA build) still wins.
[target.$TRIPLE]
rustflags = [\"-C\", \"link-arg=-Wl,--enable-new-dtags\", $rpath_args]

# Doctests are linked by rustdoc, which reads rustdocflags instead.
[build]
rustdocflags = [\"-C\", \"link-arg=-Wl,--enable-new-dtags\", $rpath_args]

[env]
QWEN_IMAGE_MLX_BACKEND = \"$BACKEND\"
QWEN_IMAGE_MLX_VERSION = \"$MLX_VERSION\"
"
printf '%s' "$config" >"$ROOT/.cargo/config.toml.tmp"
if cmp -s "$ROOT/.cargo/config.toml.tmp" "$ROOT/.cargo/config.toml"; then
  rm "$ROOT/.cargo/config.toml.tmp"
else
  mv "$ROOT/.cargo/config.toml.tmp" "$ROOT/.cargo/config.toml"
  say "wrote .cargo/config.toml ($BACKEND backend)"
fi
say "ready: MLX $MLX_VERSION ($BACKEND) for $TRIPLE"

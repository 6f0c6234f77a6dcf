#!/usr/bin/env bash
# Prepare this checkout so that plain `cargo build` / `cargo test` / `cargo bench` work, and
# (with --user) make MLX available to any Cargo project of this user.
#
# On macOS nothing is needed: mlx-rs builds MLX with Metal through its own build script.
# On Linux (x86-64 or aarch64) this script, idempotently (a second run takes seconds):
#   1. installs the Debian packages the build needs (cmake, libclang-dev) when missing;
#   2. downloads MLX 0.32.2 from PyPI into .mlx/ — `mlx-cpu` by default, or `mlx-cuda-13`
#      with QWEN_MLX_BACKEND=cuda (then also NVIDIA's CUDA 13 runtime wheels);
#   3. compiles mlx-c 0.7.0 (the sources shipped inside the mlx-sys crate) against it;
#   4. generates mlx-sys's Rust bindings with bindgen;
#   5. writes .cargo/config.toml (git-ignored): a link override that replaces mlx-sys's
#      macOS-only build script, and a RUNPATH so binaries find libmlx.so by themselves;
#   and installs MLX's launcher for multi-GPU runs as .mlx/bin/mlx.launch.
#
# Usage: scripts/setup.sh [--user | --print-config | --remove-user | --help]
#   --user          also copy the built MLX, mlx-c and bindings to a per-user directory
#                   (${XDG_DATA_HOME:-~/.local/share}/qwen-image-rs, or $QWEN_MLX_PREFIX) and
#                   add the same override, pointing there, to $CARGO_HOME/config.toml (default
#                   ~/.cargo) between marker lines; prints what it added and how to remove it.
#   --print-config  do the per-user copy, but only print the snippet for a project's own
#                   .cargo/config.toml instead of touching $CARGO_HOME.
#   --remove-user   delete the marked block from $CARGO_HOME/config.toml and the per-user copy.
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

MODE=checkout
case "${1:-}" in
  "") ;;
  --user) MODE=user ;;
  --print-config) MODE=print ;;
  --remove-user) MODE=remove ;;
  -h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; exit 0 ;;
  *) die "unknown argument '$1' (try --help)" ;;
esac
[ $# -le 1 ] || die "one argument at most (try --help)"
CARGO_CONFIG="${CARGO_HOME:-$HOME/.cargo}/config.toml"
USER_ROOT="${QWEN_MLX_PREFIX:-${XDG_DATA_HOME:-$HOME/.local/share}/qwen-image-rs}"
BEGIN_MARK="# >>> qwen-image-rs mlx >>>"
END_MARK="# <<< qwen-image-rs mlx <<<"

if [ "$(uname -s)" = Darwin ]; then
  say "macOS: nothing to prepare (mlx-rs builds MLX with Metal itself, in any project)."
  exit 0
fi

# The marked block in $CARGO_HOME/config.toml: everything from BEGIN_MARK to END_MARK.
strip_block() { # file -> stdout without the block
  [ -f "$1" ] || return 0
  awk -v b="$BEGIN_MARK" -v e="$END_MARK" '$0==b{skip=1;next} $0==e{skip=0;next} !skip' "$1"
}
if [ "$MODE" = remove ]; then
  if [ -f "$CARGO_CONFIG" ] && grep -qxF "$BEGIN_MARK" "$CARGO_CONFIG"; then
    strip_block "$CARGO_CONFIG" >"$CARGO_CONFIG.tmp.$$" && mv "$CARGO_CONFIG.tmp.$$" "$CARGO_CONFIG"
    say "removed the qwen-image-rs block from $CARGO_CONFIG"
  else
    say "no qwen-image-rs block in $CARGO_CONFIG"
  fi
  if [ -d "$USER_ROOT" ]; then rm -rf "$USER_ROOT" && say "removed $USER_ROOT"; fi
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
# MLX's launcher for multi-GPU / multi-machine runs (`mlx.launch`, pure Python in the `mlx`
# wheel, ~0.7 MB): unpacked beside the library it loads, run through a wrapper script.
LAUNCH="$PREFIX/bin/mlx.launch"
if [ ! -f "$MLX_HOME/.launcher" ] || [ ! -x "$LAUNCH" ]; then
  say "installing mlx.launch (the mlx==$MLX_VERSION wheel's launcher)"
  tmp=$(mktemp -d)
  python3 -m pip download -q --no-deps --only-binary=:all: -d "$tmp" "mlx==$MLX_VERSION" \
    || die "downloading the mlx==$MLX_VERSION wheel (for mlx.launch) failed"
  python3 -m zipfile -e "$tmp"/mlx-*.whl "$MLX_HOME"
  rm -rf "$tmp"
  mkdir -p "$PREFIX/bin"
  {
    echo '#!/bin/sh'
    echo "# MLX's launcher (mlx.launch of the mlx==$MLX_VERSION wheel), written by scripts/setup.sh:"
    echo "#   $LAUNCH -n 2 --backend nccl -- target/release/qwen-image generate ..."
    echo "PYTHONPATH=\"$MLX_HOME\${PYTHONPATH:+:\$PYTHONPATH}\" exec python3 -c 'import sys; from mlx._distributed_utils.launch import main; sys.argv[0] = \"mlx.launch\"; sys.exit(main())' \"\$@\""
  } >"$LAUNCH"
  chmod +x "$LAUNCH"
  touch "$MLX_HOME/.launcher"
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
meta=$(cargo metadata --format-version 1) \
  || die "'cargo metadata' failed (above): the mlx-c sources come from the mlx-sys crate"
MLX_SYS_DIR=$(printf '%s' "$meta" | python3 -c '
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
BINDINGS_KEY="$BINDINGS_HASH mlx-sys-$MLX_SYS_VERSION $BINDGEN_VERSION"
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
# The two tables that make mlx-sys build and its users run: a link override (it replaces
# mlx-sys's macOS-only build script; mlx-sys declares links = "mlx") and a RUNPATH.
# set_rpath sets RPATH_ARGS (the flags' TOML array) from the runtime library dirs, libmlx.so's
# first; link_tables prints both tables from the mlx-c dir, the bindings dir and libmlx.so's dir.
set_rpath() {
  local rpath_args="" d
  for d in "$@"; do rpath_args+="\"-C\", \"link-arg=-Wl,-rpath,$d\", "; done
  RPATH_ARGS="[\"-C\", \"link-arg=-Wl,--enable-new-dtags\", $rpath_args]"
}
link_tables() {
  local mlxc=$1 bindings=$2
  printf '%s\n' "[target.$TRIPLE.mlx]" \
    "rustc-link-search = [\"native=$mlxc\", \"native=$3\"]" \
    "rustc-link-lib = [\"static=mlxc\", \"static=qwen_mach_time_shim\", \"dylib=mlx\", \"dylib=stdc++\"]" \
    "rustc-env = { OUT_DIR = \"$bindings\" }" \
    "" \
    "# RUNPATH (new dtags): binaries find libmlx.so without LD_LIBRARY_PATH, and an" \
    "# LD_LIBRARY_PATH that names another libmlx.so (the CUDA build) still wins." \
    "[target.$TRIPLE]" \
    "rustflags = $RPATH_ARGS"
}

# Writes $2 from the text $1 unless it already holds exactly that (no needless rebuilds).
write_if_changed() {
  printf '%s' "$1" >"$2.tmp.$$"
  if cmp -s "$2.tmp.$$" "$2"; then rm "$2.tmp.$$"; return 1; fi
  mv "$2.tmp.$$" "$2"
}

mkdir -p "$ROOT/.cargo"
set_rpath "${RUNTIME_DIRS[@]}"
config="# Written by scripts/setup.sh ($BACKEND backend); do not edit, re-run the script.
$(link_tables "$MLXC_BUILD" "$BINDINGS_DIR" "$MLX_LIB")

# Doctests are linked by rustdoc, which reads rustdocflags instead.
[build]
rustdocflags = $RPATH_ARGS

[env]
QWEN_IMAGE_MLX_BACKEND = \"$BACKEND\"
QWEN_IMAGE_MLX_VERSION = \"$MLX_VERSION\"
"
if write_if_changed "$config" "$ROOT/.cargo/config.toml"; then
  say "wrote .cargo/config.toml ($BACKEND backend)"
fi
if [ "$MODE" = checkout ]; then
  if grep -qxF "$BEGIN_MARK" "$CARGO_CONFIG" 2>/dev/null \
    && ! grep -qF "MLX $MLX_VERSION ($BACKEND)" "$CARGO_CONFIG"; then
    say "warning: $CARGO_CONFIG holds a qwen-image-rs block for another MLX build; cargo joins" \
      "both link overrides here: re-run 'scripts/setup.sh --user' with this backend"
  fi
  say "ready: MLX $MLX_VERSION ($BACKEND) for $TRIPLE"
  exit 0
fi

# ---------------------------------------------------------------- 6. per-user install (--user)
# A copy outside the checkout, so that deleting or moving the checkout breaks nothing.
UHOME="$USER_ROOT/mlx-$MLX_VERSION-$BACKEND"
UKEY="$MLXC_KEY | $BINDINGS_KEY"
if [ "$(cat "$UHOME/.complete" 2>/dev/null)" != "$UKEY" ]; then
  say "copying MLX, mlx-c and the bindings to $UHOME"
  staging="$UHOME.partial.$$"
  rm -rf "$staging" && mkdir -p "$staging/mlx-c" "$staging/bindings"
  cp -a "$MLX_HOME" "$staging/wheel"
  cp "$MLXC_BUILD/libmlxc.a" "$MLXC_BUILD/libqwen_mach_time_shim.a" "$staging/mlx-c/"
  cp "$BINDINGS_DIR/bindings.rs" "$staging/bindings/"
  echo "$UKEY" >"$staging/.complete"
  rm -rf "$UHOME" && mv "$staging" "$UHOME"
fi
USER_RUNTIME=()
for d in "${RUNTIME_DIRS[@]}"; do USER_RUNTIME+=("$UHOME/wheel/${d#"$MLX_HOME"/}"); done
set_rpath "${USER_RUNTIME[@]}"

block="$BEGIN_MARK
# Added by qwen-image-rs scripts/setup.sh --user: MLX $MLX_VERSION ($BACKEND) for mlx-sys $MLX_SYS_VERSION
# (mlx-rs 0.33), so that any project depending on mlx-rs builds on this machine.
# To remove: scripts/setup.sh --remove-user (or delete these lines and $USER_ROOT).
$(link_tables "$UHOME/mlx-c" "$UHOME/bindings" "${USER_RUNTIME[0]}")"
if [ "$MODE" = print ]; then
  printf '%s\n\n%s\n%s\n%s\n' "# For a project's .cargo/config.toml (MLX installed in $UHOME):" \
    "$(link_tables "$UHOME/mlx-c" "$UHOME/bindings" "${USER_RUNTIME[0]}")" \
    "# Doctests are linked by rustdoc, which reads rustdocflags instead." \
    "[build]"$'\n'"rustdocflags = $RPATH_ARGS"
  exit 0
fi

# The block goes at the end of $CARGO_HOME/config.toml (replacing an earlier one). TOML does
# not allow a table twice: when the file already has [target.<triple>] the block cannot be
# added and the merge is left to the user; an existing [build] table only loses doctest flags.
mkdir -p "$(dirname "$CARGO_CONFIG")"
rest=$(strip_block "$CARGO_CONFIG")
tables=$(printf '%s' "$rest" | python3 -c '
import sys
try:
    import tomllib
except ImportError:  # Python 3.10: the copy pip vendors
    from pip._vendor import tomli as tomllib
try:
    doc = tomllib.loads(sys.stdin.read())
except Exception as e:
    print("invalid", str(e).replace("\n", " "))
    sys.exit()
target = doc.get("target", {}).get(sys.argv[1])
if target is not None:
    print("target")
if "build" in doc:
    print("build", "rustdocflags" in doc["build"])
' "$TRIPLE")
case "$tables" in
  invalid*) die "$CARGO_CONFIG is not valid TOML (${tables#invalid }); fix it first" ;;
  *target*)
    echo "setup: $CARGO_CONFIG already has a [target.$TRIPLE] table, and TOML allows a table" \
      "once: nothing was changed. Add the rustflags line below to that table (joining it with" \
      "any rustflags there) and paste the [target.$TRIPLE.mlx] table anywhere; or use a" \
      "project's own .cargo/config.toml (scripts/setup.sh --print-config):" >&2
    link_tables "$UHOME/mlx-c" "$UHOME/bindings" "${USER_RUNTIME[0]}" >&2
    exit 1 ;;
esac
if [ -z "$tables" ]; then
  block+="

# Doctests are linked by rustdoc, which reads rustdocflags instead.
[build]
rustdocflags = $RPATH_ARGS"
else
  say "note: $CARGO_CONFIG has its own [build] table, so doctests of your crates need" \
    "rustdocflags = $RPATH_ARGS in it (binaries and tests are covered)"
fi
block+="
$END_MARK"
new="$rest"
[ -n "$new" ] && new+=$'\n\n'
new+="$block"$'\n'
if write_if_changed "$new" "$CARGO_CONFIG"; then
  say "added to $CARGO_CONFIG:"
  [ "${QWEN_SETUP_QUIET:-0}" = 1 ] || printf '%s\n' "$block" >&2
  say "to undo: scripts/setup.sh --remove-user"
else
  say "$CARGO_CONFIG already up to date (block between '$BEGIN_MARK' and '$END_MARK')"
fi
say "ready: any Cargo project of $(id -un) can depend on mlx-rs 0.33 / the qwen-image-rs crates" \
  "(MLX $MLX_VERSION, $BACKEND, in $UHOME)"

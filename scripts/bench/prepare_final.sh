#!/bin/bash
# Builds the carry folder for scripts/bench/final_gpu.sh, on the build machine, from the
# repository root: .device-final/ = MLX's CUDA build (copied from .device-mlx/, made by
# ../shared/tools/mlx-cuda/prepare.sh) + the stripped qwen-image, dit_step and pipeline_full
# executables. Checks that it fits the 64 MiB carry limit together with .whl/.
#   CARGO_TARGET_DIR=target-<you> bash scripts/bench/prepare_final.sh
set -euo pipefail
DEST=.device-final
[ -f .device-mlx/libmlx.so.xz ] || { echo "run ../shared/tools/mlx-cuda/prepare.sh first"; exit 1; }
rm -rf "$DEST"
mkdir -p "$DEST/bin"
cp .device-mlx/libmlx.so.xz .device-mlx/mlx-cuda-rest.tar.xz .device-mlx/activate.sh "$DEST/"
grep -qx "/$DEST/" .git/info/exclude 2>/dev/null || echo "/$DEST/" >>.git/info/exclude
DEST=$DEST ../shared/tools/mlx-cuda/collect.sh bench -p qwen-image-benches
DEST=$DEST ../shared/tools/mlx-cuda/collect.sh build -p qwen-image-cli --bin qwen-image
DEST=$DEST ../shared/tools/mlx-cuda/collect.sh test -p mlx-fastops --test gpu
# Only what final_gpu.sh runs; debug info stripped (line tables make them 20-50 MB each).
find "$DEST/bin" -type f ! -name 'qwen-image' ! -name 'dit_step-*' ! -name 'pipeline_full-*' ! -name 'gpu-*' -delete
strip "$DEST"/bin/*
ls -la "$DEST/bin"
total=$(du -cb "$DEST" .whl | tail -1 | cut -f1)
echo "carry $DEST + .whl: $((total / 1048576)) MiB (limit 64)"
[ "$total" -lt $((64 * 1048576)) ] || { echo "too large"; exit 1; }

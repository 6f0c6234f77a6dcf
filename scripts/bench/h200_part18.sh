#!/bin/bash
# H200 measurements, part 18: issue 12's Lightning recipe side by side in ONE device command
# (one machine, back to back; the 20B model is built once per process, so ours ends before
# diffusers starts). From the repository root with .device-mlx (bin/pipeline_full-*) and .whl
# (diffusers wheels) carried:
#   ours:      the whole 1024² Lightning image (8 steps, CFG off, bf16, the pipeline's default
#              activation budget), text encode + denoise + decode, in three processes (two
#              runs each, the second warm);
#   diffusers: 0.42.1's QwenImagePipeline with the same recipe, eager and compiled
#              (compile_repeated_blocks), after a warm-up call each.
set -uo pipefail
source "$(dirname "$0")/lib.sh" h200-part18
source "$D/activate.sh" >/dev/null
export MLX_PTX_CACHE_DIR="$OUT/ptx"
lightning_processes 3
rm -rf "$OUT/ptx"
install_diffusers
diffusers_lightning 300
stamp "done"
# The device returns at most eight files: everything packed into one.
tar -C "$OUT" -cJf /tmp/logs.tar.xz . && find "$OUT" -type f -delete && mv /tmp/logs.tar.xz "$OUT/"

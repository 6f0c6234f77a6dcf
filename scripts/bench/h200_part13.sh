#!/bin/bash
# H200 measurements, part 13: the whole edit side by side in one command on one machine —
# ours (`pipeline_full --edit`, 1024² picture → 1024², 40 true-CFG steps, second of 2 runs),
# then diffusers 0.42.1's QwenImageEditPipeline eager and compiled (`diffusers_pipeline.py
# --edit`, random full-size weights, one timed call after a warm-up call each) and its vision
# tower. From the repository root with .device-mlx (bin/pipeline_full-*) and .whl carried.
set -uo pipefail
source "$(dirname "$0")/lib.sh" h200-part13
(
  source "$D/activate.sh" >/dev/null
  export MLX_PTX_CACHE_DIR="$OUT/ptx"
  ours_edit_full 200
)
install_diffusers
diffusers_edit_full 330
stamp "done"

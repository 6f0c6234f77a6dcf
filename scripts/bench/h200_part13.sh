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
  stamp "ours: whole edit, 1024², 40 steps"
  timeout 200 "$(bin pipeline_full)" --edit --size 1024 --steps 40 --runs 2 \
    --json "$OUT/edit_full.json" >"$OUT/edit_full.log" 2>&1
  grep -E "^## run 2|^\| (text encode|VAE|denoise|encode \+|total)" "$OUT/edit_full.log" | tail -9
)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl
stamp "diffusers: whole edit, eager and compiled; vision tower"
PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 timeout 330 python3 scripts/bench/diffusers_pipeline.py \
  --edit --json "$OUT/diffusers_edit_full.json" 2>&1 | grep -vi warning \
  | tee "$OUT/diffusers_edit_full.log" | tail -12
stamp "done"

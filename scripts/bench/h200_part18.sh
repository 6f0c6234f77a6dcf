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
for p in 1 2 3; do
  stamp "ours: Lightning, process $p"
  timeout 150 "$(bin pipeline_full)" --size 1024 --steps 8 --lightning --runs 2 \
    --json "$OUT/light_$p.json" >"$OUT/light_$p.log" 2>&1
  grep -E "^\| (text encode|VAE decode|denoise, all|encode \+)|^steps:" "$OUT/light_$p.log" | tail -5
done
rm -rf "$OUT/ptx"
install_diffusers
stamp "diffusers: Lightning, eager and compiled"
PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 timeout 300 python3 scripts/bench/diffusers_pipeline.py \
  --lightning-only --json "$OUT/diffusers_lightning.json" 2>&1 | grep -vi warning \
  | tee "$OUT/diffusers_lightning.log" | tail -8
stamp "done"
# The device returns at most eight files: everything packed into one.
tar -C "$OUT" -cJf /tmp/logs.tar.xz . && find "$OUT" -type f -delete && mv /tmp/logs.tar.xz "$OUT/"

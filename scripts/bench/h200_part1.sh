#!/bin/bash
# H200 measurements, part 1 of 2 (one device command, ~6 min), from the repository root with
# .device-mlx carried (MLX's CUDA build + bin/{dit_step-*, pipeline_full-*, gpu_fallback-*}):
#   A. the fused kernels' self-check: its cost per kernel, a broken kernel falling back;
#   B. one true-CFG DiT step (full-size random bf16, 32 text tokens) at 512² / 1024² / 1328²:
#      as the pipeline runs it (two passes, the second ordered after the first, pipelined)
#      and with the passes left to interleave, time and peak memory; a profile at 1024²;
#   C. whole images with random full-size weights: 1024², 20 true-CFG steps; and the
#      Lightning recipe (8 steps, CFG off) with a random rank-64 LoRA merged at load.
# Logs and JSON go to $OUT; MLX's compiled-kernel cache too ($OUT/ptx, to carry onwards).
set -uo pipefail
source "$(dirname "$0")/lib.sh" h200-part1
source "$D/activate.sh" >/dev/null
export MLX_PTX_CACHE_DIR="$OUT/ptx"
mkdir -p "$MLX_PTX_CACHE_DIR"

stamp "A. self-check"
timeout 120 "$(bin gpu_fallback)" 2>&1 | tee "$OUT/fallback.log"

stamp "B. DiT step"
timeout 300 "$(bin dit_step)" --sizes 512,1024,1328 --iters 5 --pipelined --interleaved \
  --no-batched --no-reference --profile 1024 --json "$OUT/dit_bf16.json" 2>&1 | tee "$OUT/dit_bf16.log"

stamp "C. whole images"
timeout 150 "$(bin pipeline_full)" --size 1024 --steps 20 --runs 1 --json "$OUT/pipe_cfg.json" \
  2>&1 | tee "$OUT/pipe_cfg.log"
timeout 150 "$(bin pipeline_full)" --size 1024 --steps 8 --runs 1 --lightning --lora-rank 64 \
  --json "$OUT/pipe_lightning.json" 2>&1 | tee "$OUT/pipe_lightning.log"
stamp "done"
echo "===== summary ====="
grep -A12 '^## one true-CFG step' "$OUT/dit_bf16.log" | grep '|'
grep -hE "total|peak|merge|LoRA|denoise|decode" "$OUT"/pipe_*.log | head -30

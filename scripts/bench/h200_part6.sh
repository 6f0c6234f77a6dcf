#!/bin/bash
# H200 measurements, part 6 (one device command, ~4 min), ours only, from the repository root
# with .device-mlx carried (bin/{gpu-*, dit_step-*, pipeline_full-*}):
#   A. the joint_qkv_heads and linear kernels against their references (f32/bf16/f16);
#   B. one true-CFG DiT step at 1024² / 512² / 1328² as the pipeline runs it, and the same with
#      the linear or the joint_qkv_heads kernel switched off (same process), profile at 1024²;
#   C. the whole 1024² Lightning image (8 steps, CFG off), without a LoRA and with a random
#      rank-64 LoRA read from a file (merge time, load peak), 2 runs each (the second warm).
# Part 7 runs diffusers on the same machine kind right after (scripts/bench/h200_part7.sh).
set -uo pipefail
source "$(dirname "$0")/lib.sh" h200-part6
source "$D/activate.sh" >/dev/null
export MLX_PTX_CACHE_DIR="$OUT/ptx"
mkdir -p "$MLX_PTX_CACHE_DIR"

stamp "A. kernel tests"
timeout 120 "$(bin gpu)" joint 2>&1 | tee "$OUT/gpu_joint.log" | grep -E "FAIL|linear|cases" | tail -30

stamp "B. DiT step"
timeout 240 "$(bin dit_step)" --sizes ${SIZES:-1024,512,1328} --iters 5 --pipelined \
  --no-batched --no-reference --without-kernel linear --without-kernel joint_qkv_heads \
  --profile 1024 --json "$OUT/dit_bf16.json" >"$OUT/dit_bf16.log" 2>&1
grep -A18 '^## one true-CFG step' "$OUT/dit_bf16.log" | grep '|'
grep -E "img_mod|joint_qkv|Q/K/V as one|out proj|measured forward" "$OUT/dit_bf16.log"

stamp "C. Lightning"
lightning_runs
stamp "done"

#!/bin/bash
# H200 measurements, part 5 (one device command, ~6 min): the fused Q/K/V projections and the
# fused joint q/k-norm + RoPE + concatenation kernel (mlx_fastops::joint_qkv_heads), from the
# repository root with .device-mlx carried (bin/{gpu-*, dit_step-*, pipeline_full-*}):
#   A. the kernel against its reference on the GPU (f32/bf16/f16, four shapes, a must-fail
#      probe);
#   B. one true-CFG DiT step at 512² / 1024² / 1328² as the pipeline runs it, profile at 1024²;
#   C. the whole 1024² Lightning image (8 steps, CFG off), 2 runs (the second warm).
set -uo pipefail
source "$(dirname "$0")/lib.sh" h200-part5
source "$D/activate.sh" >/dev/null
export MLX_PTX_CACHE_DIR="$OUT/ptx"
mkdir -p "$MLX_PTX_CACHE_DIR"

stamp "A. joint_qkv_heads kernel tests"
timeout 120 "$(bin gpu)" joint 2>&1 | tee "$OUT/gpu_joint.log" | tail -40

stamp "B. DiT step"
timeout 300 "$(bin dit_step)" --sizes ${SIZES:-1024,512,1328} --iters 5 --pipelined \
  --no-batched --no-reference --profile 1024 --json "$OUT/dit_bf16.json" >"$OUT/dit_bf16.log" 2>&1
grep -A12 '^## one true-CFG step' "$OUT/dit_bf16.log" | grep '|'

stamp "C. Lightning"
timeout 150 "$(bin pipeline_full)" --size 1024 --steps 8 --lightning --runs 2 \
  --json "$OUT/light.json" >"$OUT/light.log" 2>&1
grep -E "^## run 2|^\| (build transformer|text encode|VAE|denoise|encode \+)|^steps:" "$OUT/light.log" | tail -9
stamp "done"

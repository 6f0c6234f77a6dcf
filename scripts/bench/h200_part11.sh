#!/bin/bash
# H200 measurements, part 11: after attention stopped being split into query chunks where
# cuDNN's fused kernel runs (it holds no score matrix; the chunks' gathers cost 78 ms per
# edit step), and a sweep of MLX's CUDA-graph batching (MLX_MAX_OPS_PER_BUFFER /
# MLX_MAX_MB_PER_BUFFER: ops and MB per CUDA graph, 100 / 1000 by default on sm_90) for the
# GPU idle time the kernel-time profile shows (part 10). From the repository root with
# .device-mlx (bin/{dit_step-*, pipeline_full-*, gpu-*}) carried.
set -uo pipefail
source "$(dirname "$0")/lib.sh" h200-part11
source "$D/activate.sh" >/dev/null
export MLX_PTX_CACHE_DIR="$OUT/ptx"
stamp "fastops GPU tests"
timeout 150 "$(bin gpu)" >"$OUT/gpu_tests.log" 2>&1; echo "rc $?"
grep -E 'FAIL|fused attention|sdpa whole|gpu tests:' "$OUT/gpu_tests.log"
stamp "edit step"
timeout 120 "$(bin dit_step)" --sizes 1024 --edit-pictures 1 --txt 1400 --iters 5 --pipelined \
  --no-batched --no-reference --profile 0 >"$OUT/edit.log" 2>&1
grep -A5 '^## one true-CFG step' "$OUT/edit.log" | grep '|'
for cfg in "100 1000" "50 1000" "200 1000" "400 4000" "1000 10000"; do
  set -- $cfg
  stamp "1024² step, MLX_MAX_OPS_PER_BUFFER=$1 MLX_MAX_MB_PER_BUFFER=$2"
  MLX_MAX_OPS_PER_BUFFER=$1 MLX_MAX_MB_PER_BUFFER=$2 timeout 100 "$(bin dit_step)" --sizes 1024 \
    --iters 5 --pipelined --no-batched --no-reference --profile 0 >"$OUT/t2i_$1_$2.log" 2>&1
  grep -A5 '^## one true-CFG step' "$OUT/t2i_$1_$2.log" | grep '1024'
done
stamp "1024² step without CUDA graphs"
MLX_USE_CUDA_GRAPHS=0 timeout 100 "$(bin dit_step)" --sizes 1024 --iters 5 --pipelined \
  --no-batched --no-reference --profile 0 >"$OUT/t2i_nographs.log" 2>&1
grep -A5 '^## one true-CFG step' "$OUT/t2i_nographs.log" | grep '1024'
stamp "done"

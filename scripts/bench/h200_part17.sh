#!/bin/bash
# H200 measurements, part 17: the fused dequantization kernel (mlx_fastops::dequantize).
# Its GPU tests, then the 8- and 4-bit DiT's 1024² true-CFG step (pipelined) with the kernel
# and without it (MLX's dequantize, same process), unbounded and with 1.5 / 3 GiB activation
# budgets; the bf16 step in the same command for the ratio. From the repository root with
# .device-mlx (bin/{gpu-*, dit_step-*}) carried; logs packed into $OUT/logs.tar.xz.
set -uo pipefail
source "$(dirname "$0")/lib.sh" h200-part17
source "$D/activate.sh" >/dev/null
export MLX_PTX_CACHE_DIR="$OUT/ptx"
stamp "dequantize GPU tests"
timeout 120 "$(bin gpu)" dequantize >"$OUT/gpu_dequantize.log" 2>&1; echo "rc $?"
grep -E 'FAIL|gpu tests:' "$OUT/gpu_dequantize.log"; grep -c '^ok' "$OUT/gpu_dequantize.log"
for q in 8 4 bf16; do
  args=(--quantize $q --without-kernel dequantize)
  [ $q = bf16 ] && args=()
  stamp "DiT $q"
  timeout 170 "$(bin dit_step)" "${args[@]}" --sizes 1024 --iters 5 --pipelined \
    --activation-budget-gib 1.5,3 --no-batched --no-reference --profile 0 \
    --json "$OUT/dit_$q.json" >"$OUT/dit_$q.log" 2>&1
  grep -E 'active memory|warning' "$OUT/dit_$q.log" | head -3
  grep -A8 '^## one true-CFG step' "$OUT/dit_$q.log" | grep '1024'
done
stamp "done"
(cd "$OUT" && tar cJf logs.tar.xz *.log *.json && rm -f *.log *.json && rm -rf ptx)

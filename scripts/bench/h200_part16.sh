#!/bin/bash
# H200 measurements, part 16: what the activation budget costs the bf16, 8-bit and 4-bit DiT
# (1024² true-CFG step, pipelined; each precision in one process: no budget, then budgets of
# 1.5, 3 and 6 GiB above the resident weights), from the repository root with .device-mlx
# (bin/dit_step-*) carried.
set -uo pipefail
source "$(dirname "$0")/lib.sh" h200-part16
source "$D/activate.sh" >/dev/null
export MLX_PTX_CACHE_DIR="$OUT/ptx"
for q in bf16 8 4; do
  args=()
  [ $q != bf16 ] && args=(--quantize $q)
  stamp "DiT $q: budgets"
  timeout 170 "$(bin dit_step)" "${args[@]}" --sizes 1024 --iters 5 --pipelined \
    --activation-budget-gib 1.5,3,6 --no-batched --no-reference --profile 0 \
    --json "$OUT/dit_$q.json" >"$OUT/dit_$q.log" 2>&1
  grep -E 'active memory|host time per step' "$OUT/dit_$q.log"
  grep -A8 '^## one true-CFG step' "$OUT/dit_$q.log" | grep '1024'
done
stamp "done"

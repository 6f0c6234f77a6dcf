#!/bin/bash
# H200 measurements, part 7: the final side by side of this session, ours then diffusers on
# one machine in two back-to-back device commands (the 20B model is built once per process;
# both frameworks cannot hold it at once), from the repository root with .device-mlx
# (bin/{dit_step-*, pipeline_full-*}) and .whl (diffusers wheels) carried:
#   WHO=ours:      one true-CFG DiT step at 1024² / 512² / 1328² (pipelined, as the pipeline
#                  runs it); the whole 1024² Lightning image (8 steps, CFG off) without a
#                  LoRA and with a random rank-64 LoRA read from a file (merge time, load peak);
#   WHO=diffusers: diffusers 0.42.1's step with compile_repeated_blocks at the same sizes;
#                  its Lightning image, eager and compiled.
set -uo pipefail
source "$(dirname "$0")/lib.sh" h200-part7
if [ "${WHO:-ours}" = ours ]; then
  source "$D/activate.sh" >/dev/null
  export MLX_PTX_CACHE_DIR="$OUT/ptx"
  stamp "ours: DiT step"
  timeout 200 "$(bin dit_step)" --sizes 1024,512,1328 --iters 5 --pipelined --no-batched \
    --no-reference --profile 0 --json "$OUT/dit_bf16.json" >"$OUT/dit_bf16.log" 2>&1
  grep -A10 '^## one true-CFG step' "$OUT/dit_bf16.log" | grep '|'
  stamp "ours: Lightning"
  lightning_runs
else
  install_diffusers
  stamp "diffusers: compiled step"
  PYTHONPATH=/tmp/site timeout 330 python3 scripts/bench/diffusers_step.py \
    --sizes 1024,512,1328 --iters 5 --no-batched --eager-skip --compile \
    --json "$OUT/diffusers_compiled.json" >"$OUT/diffusers_compiled.log" 2>&1
  grep -vi warning "$OUT/diffusers_compiled.log" | tail -12
  diffusers_lightning 220
fi
stamp "done"

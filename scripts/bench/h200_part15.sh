#!/bin/bash
# H200 measurements, part 15: the timestep modulation computed for a window of 8 steps at a
# time (the modulation weights read once per window instead of once per step); ours then
# diffusers on one machine in two back-to-back device commands, from the repository root with
# .device-mlx (bin/{dit_step-*, pipeline_full-*}) and .whl (diffusers wheels) carried:
#   WHO=ours:      the true-CFG step at 1024² / 512² / 1328², pipelined, with the windows and
#                  with each step's own modulation (same process); the whole 1024² Lightning
#                  image in three processes; the 8- and 4-bit DiT at 1024² with the pipeline's
#                  activation budget (1.5 GiB above the resident weights).
#   WHO=diffusers: diffusers 0.42.1's Lightning image, eager and compiled; its compiled
#                  step at 1024².
set -uo pipefail
source "$(dirname "$0")/lib.sh" h200-part15
if [ "${WHO:-ours}" = ours ]; then
  source "$D/activate.sh" >/dev/null
  export MLX_PTX_CACHE_DIR="$OUT/ptx"
  stamp "ours: DiT step, modulation windows against per step"
  timeout 240 "$(bin dit_step)" --sizes 1024,512,1328 --iters 5 --pipelined \
    --modulation-per-step --no-batched --no-reference --profile 0 \
    --json "$OUT/dit_bf16.json" >"$OUT/dit_bf16.log" 2>&1
  grep -E 'host time per step' "$OUT/dit_bf16.log"
  grep -A12 '^## one true-CFG step' "$OUT/dit_bf16.log" | grep '|'
  lightning_processes 3
  for bits in 8 4; do
    stamp "ours: $bits-bit DiT, activation budget 1.5 GiB"
    timeout 200 "$(bin dit_step)" --quantize $bits --sizes 1024 --iters 5 --pipelined \
      --activation-budget-gib 1.5 --no-batched --no-reference --profile 0 \
      --json "$OUT/dit_q$bits.json" >"$OUT/dit_q$bits.log" 2>&1
    grep -E 'active memory|memory limit|host time per step' "$OUT/dit_q$bits.log"
    grep -A6 '^## one true-CFG step' "$OUT/dit_q$bits.log" | grep '|'
  done
else
  install_diffusers
  diffusers_lightning 240
  stamp "diffusers: compiled step at 1024²"
  PYTHONPATH=/tmp/site timeout 240 python3 scripts/bench/diffusers_step.py \
    --sizes 1024 --iters 5 --no-batched --eager-skip --compile \
    --json "$OUT/diffusers_compiled.json" >"$OUT/diffusers_compiled.log" 2>&1
  grep -vi warning "$OUT/diffusers_compiled.log" | tail -8
fi
stamp "done"

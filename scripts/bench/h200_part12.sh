#!/bin/bash
# H200 measurements, part 12: the side by side after attention stopped being split into
# query chunks where cuDNN's fused kernel runs; ours then diffusers on one machine in two
# back-to-back device commands, from the repository root with .device-mlx
# (bin/{dit_step-*, pipeline_full-*, gpu-*}) and .whl (diffusers wheels) carried:
#   WHO=ours:      the attention GPU tests; one true-CFG edit step (1024² + one 1024² picture,
#                  1400 text tokens) and a 1024² text-to-image step (host time per step
#                  printed), both pipelined; the whole 1024² Lightning image; the whole edit,
#                  1024², 40 true-CFG steps.
#   WHO=diffusers: diffusers 0.42.1's edit step, eager and compile_repeated_blocks.
set -uo pipefail
source "$(dirname "$0")/lib.sh" h200-part12
if [ "${WHO:-ours}" = ours ]; then
  source "$D/activate.sh" >/dev/null
  export MLX_PTX_CACHE_DIR="$OUT/ptx"
  stamp "attention GPU tests"
  timeout 100 "$(bin gpu)" attention >"$OUT/gpu_attention.log" 2>&1; echo "rc $?"
  grep -E 'ok|FAIL|gpu tests:' "$OUT/gpu_attention.log"
  for case in edit t2i; do
    args=(--sizes 1024 --iters 5 --pipelined --no-batched --no-reference --profile 0)
    [ $case = edit ] && args+=(--edit-pictures 1 --txt 1400)
    stamp "ours: $case step"
    timeout 120 "$(bin dit_step)" "${args[@]}" --json "$OUT/step_$case.json" >"$OUT/step_$case.log" 2>&1
    grep -E 'host time per step' "$OUT/step_$case.log"
    grep -A5 '^## one true-CFG step' "$OUT/step_$case.log" | grep '1024'
  done
  stamp "ours: Lightning"
  timeout 150 "$(bin pipeline_full)" --size 1024 --steps 8 --lightning --runs 2 \
    --json "$OUT/light_none.json" >"$OUT/light_none.log" 2>&1
  grep -E "^## run 2|^\| (text encode|VAE|denoise|encode \+)|^steps:" "$OUT/light_none.log" | tail -8
  ours_edit_full 250
else
  install_diffusers
  diffusers_edit_step
fi
stamp "done"

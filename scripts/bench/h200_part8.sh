#!/bin/bash
# H200 measurements, part 8 (issue 14, Qwen-Image-Edit): from the repository root with
# .device-mlx (bin/{dit_step-*, pipeline_full-*}) and .whl (diffusers wheels) carried, ours and
# diffusers in two back-to-back device commands on one machine:
#   WHO=ours:      one true-CFG edit step at 1024² with one 1024² reference picture (the DiT
#                  sees 4096 noise + 4096 picture tokens and 1400 text tokens: the Edit
#                  prompt with a 1024² picture is ~1369 image-pad tokens + the prompt), pipelined
#                  as the pipeline runs it; the whole 1024² edit (random full-size weights incl.
#                  the vision tower, 40 true-CFG steps) with pipeline_full --edit, 2 runs;
#   WHO=diffusers: diffusers 0.42.1's edit step at the same shapes, eager and with
#                  compile_repeated_blocks;
#   WHO=diffusers-edit: diffusers' whole edit (QwenImageEditPipeline, random full-size
#                  weights, 40 true-CFG steps), eager and compiled, and its vision tower.
set -uo pipefail
source "$(dirname "$0")/lib.sh" h200-part8
if [ "${WHO:-ours}" = ours ]; then
  source "$D/activate.sh" >/dev/null
  export MLX_PTX_CACHE_DIR="$OUT/ptx"
  stamp "ours: edit step"
  timeout 200 "$(bin dit_step)" --sizes 1024 --txt 1400 --edit-pictures 1 --iters 5 --pipelined \
    --no-batched --no-reference --profile 0 --json "$OUT/edit_step.json" >"$OUT/edit_step.log" 2>&1
  grep -A6 '^## one true-CFG step' "$OUT/edit_step.log" | grep '|'
  ours_edit_full 330
elif [ "$WHO" = diffusers-edit ]; then
  install_diffusers
  diffusers_edit_full 550
else
  install_diffusers
  diffusers_edit_step
fi
stamp "done"

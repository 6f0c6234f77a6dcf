#!/bin/bash
# H200 measurements, part 20: what running the two CFG passes in one evaluation costs. One
# command, two processes of `dit_step` (bf16, 32 text tokens, random weights): the pipelined
# true-CFG step as the pipeline runs it (one evaluation per step, the negative pass ordered
# after the positive one), with an evaluation after each pass, and a CFG-off step (one
# forward), same process; also the pipeline's default 1.5 GiB activation budget row. From the
# repository root with .device-mlx (bin/dit_step-*) carried.
set -uo pipefail
source "$(dirname "$0")/lib.sh" h200-part20
source "$D/activate.sh" >/dev/null
export MLX_PTX_CACHE_DIR="$OUT/ptx"
for run in "1024,512,1328" "1024"; do
  stamp "ours: dit_step at $run"
  tag=${run//,/_}
  timeout 200 "$(bin dit_step)" --sizes "$run" --iters 5 --pipelined --pass-variants \
    --activation-budget-gib 1.5 --no-batched --no-reference --profile 0 \
    --json "$OUT/dit_$tag.json" >"$OUT/dit_$tag.log" 2>&1
  grep -E 'host time per step' "$OUT/dit_$tag.log"
  grep -A14 '^## one true-CFG step' "$OUT/dit_$tag.log" | grep '|'
done
rm -rf "$OUT/ptx"
stamp "done"

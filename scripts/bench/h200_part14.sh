#!/bin/bash
# H200 measurements, part 14: is the 1024² step waiting on the host? The pipelined step with
# the main thread's on-CPU time inside async_eval (where MLX encodes the ops, and sleeps while
# more than ten command buffers are in flight), and the CFG passes as one batch of 2 (half
# the ops to encode). From the repository root with .device-mlx (bin/dit_step-*) carried.
set -uo pipefail
source "$(dirname "$0")/lib.sh" h200-part14
source "$D/activate.sh" >/dev/null
export MLX_PTX_CACHE_DIR="$OUT/ptx"
stamp "1024² step: pipelined, plain, batched"
timeout 150 "$(bin dit_step)" --sizes 1024 --iters 5 --pipelined --no-reference --profile 0 \
  >"$OUT/t2i.log" 2>&1
grep -E 'host time' "$OUT/t2i.log"
grep -A6 '^## one true-CFG step' "$OUT/t2i.log" | grep '1024'
stamp "done"

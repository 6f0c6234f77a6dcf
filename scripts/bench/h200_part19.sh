#!/bin/bash
# H200 measurements, part 19: what the activation budget costs the Lightning image (1024², 8
# steps, CFG off, bf16; text encode + denoise + decode), one machine, one command: the
# pipeline's default budget (Auto: 1.5 GiB above the weights), 3 GiB, and 100 GiB (no bound in
# effect), two rounds of one process each, three runs per process (the first compiles
# kernels). From the repository root with .device-mlx (bin/pipeline_full-*) carried.
set -uo pipefail
source "$(dirname "$0")/lib.sh" h200-part19
source "$D/activate.sh" >/dev/null
export MLX_PTX_CACHE_DIR="$OUT/ptx"
for round in 1 2; do
  for b in auto 3 100; do
    args=()
    [ $b = auto ] || args=(--activation-budget-gib $b)
    stamp "ours: Lightning, budget $b, round $round"
    timeout 100 "$(bin pipeline_full)" --size 1024 --steps 8 --lightning --runs 3 "${args[@]}" \
      --json "$OUT/light_${b}_$round.json" >"$OUT/light_${b}_$round.log" 2>&1
    grep -E "^total .* wall|^steps:" "$OUT/light_${b}_$round.log" | tail -4
  done
done
rm -rf "$OUT/ptx"
stamp "done"
tar -C "$OUT" -cJf /tmp/logs.tar.xz . && find "$OUT" -type f -delete && mv /tmp/logs.tar.xz "$OUT/"

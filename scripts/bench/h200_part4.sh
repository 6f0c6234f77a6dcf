#!/bin/bash
# H200, part 4 (one device command, ~2 min): the activation bound's cost on CFG-off steps —
# 1024² Lightning (8 steps, CFG off), second (warm) run of each process, with MLX's memory
# limit at resident + 1.5 / 3 / 6 GiB and effectively unbounded (1000 GiB).
set -uo pipefail
OUT=${OUT:-/tmp/h200-part4}
mkdir -p "$OUT"
D=.device-mlx
P=$(ls "$D"/bin/pipeline_full-* | head -1)
source "$D/activate.sh" >/dev/null
export MLX_PTX_CACHE_DIR="$OUT/ptx"
for b in 1000 6 3 1.5; do
  timeout 100 "$P" --size 1024 --steps 8 --lightning --runs 2 --activation-budget-gib $b \
    >"$OUT/light_$b.log" 2>&1
  echo "--- budget $b GiB"
  grep -E "^\| (denoise|encode \+)|^steps:" "$OUT/light_$b.log" | tail -4
done

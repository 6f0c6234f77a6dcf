#!/bin/bash
# H200 measurements, part 21: MLX's CUDA graph size. MLX 0.32.2 records the kernels of an
# evaluation into CUDA graphs of at most MLX_MAX_OPS_PER_BUFFER nodes (default 20) and keeps
# MLX_CUDA_GRAPH_CACHE_SIZE (default 100) instantiated graphs; ~1,450 kernels per forward make
# ~73 graph launches per forward at the default. One command, one `dit_step` process per
# setting (bf16, 1024², 32 text tokens): one true-CFG step at a time, pipelined, and pipelined
# with the pipeline's default 1.5 GiB activation budget. From the repository root with
# .device-mlx (bin/dit_step-*) carried.
set -uo pipefail
source "$(dirname "$0")/lib.sh" h200-part21
source "$D/activate.sh" >/dev/null
export MLX_PTX_CACHE_DIR="$OUT/ptx"
for setting in "default" "40" "80" "160" "250" "80 1000"; do
  read -r ops cache <<<"$setting"
  envs=()
  [ "$ops" = default ] || envs+=(MLX_MAX_OPS_PER_BUFFER=$ops)
  [ -n "${cache:-}" ] && envs+=(MLX_CUDA_GRAPH_CACHE_SIZE=$cache)
  tag=${setting// /_}
  stamp "ours: dit_step 1024², ops per graph $ops, graph cache ${cache:-default}"
  env "${envs[@]}" timeout 100 "$(bin dit_step)" --sizes 1024 --iters 5 --pipelined \
    --activation-budget-gib 1.5 --no-batched --no-reference --profile 0 \
    --json "$OUT/dit_$tag.json" >"$OUT/dit_$tag.log" 2>&1
  grep -E 'host time per step' "$OUT/dit_$tag.log"
  grep -A8 '^## one true-CFG step' "$OUT/dit_$tag.log" | grep '^| 1024'
done
rm -rf "$OUT/ptx"
stamp "done"
tar -C "$OUT" -cJf /tmp/logs.tar.xz . && find "$OUT" -type f -delete && mv /tmp/logs.tar.xz "$OUT/"

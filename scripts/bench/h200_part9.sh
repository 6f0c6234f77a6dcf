#!/bin/bash
# H200 measurements, part 9 (what the GPU itself spends on the few-row GEMMs and attention;
# the Lightning image after moving the 8-bit conversion onto the GPU), from the repository
# root with .device-mlx (bin/{shapes-*, pipeline_full-*, dit_step-*}) carried:
#   1. Nsight Compute kernel times (kernels serialised, no launch gaps) of `benches/shapes.rs`
#      and `scripts/bench/torch_shapes.py` at 32 text rows and a 4128-token sequence: which
#      cuBLAS / cuDNN kernels each framework picks and how long each runs on the GPU.
#   2. The whole 1024² Lightning image (8 steps, CFG off), no LoRA.
#   3. One true-CFG DiT step at 1024² (pipelined).
set -uo pipefail
source "$(dirname "$0")/lib.sh" h200-part9
source "$D/activate.sh" >/dev/null
export MLX_PTX_CACHE_DIR="$OUT/ptx"
kernels() { python3 scripts/bench/ncu_kernels.py "$1"; }
NCU="ncu --clock-control none --metrics gpu__time_duration.sum --csv --print-units base"
stamp "ncu: ours"
timeout 200 $NCU --log-file "$OUT/ncu_mlx.csv" "$(bin shapes)" --rows 32 --seqs 4128 \
  >"$OUT/ncu_mlx.stdout" 2>&1 || tail -3 "$OUT/ncu_mlx.stdout"
kernels "$OUT/ncu_mlx.csv"
stamp "ncu: torch"
timeout 200 $NCU --log-file "$OUT/ncu_torch.csv" python3 scripts/bench/torch_shapes.py \
  --rows 32 --seqs 4128 >"$OUT/ncu_torch.stdout" 2>&1 || tail -3 "$OUT/ncu_torch.stdout"
kernels "$OUT/ncu_torch.csv"
stamp "ours: Lightning"
timeout 150 "$(bin pipeline_full)" --size 1024 --steps 8 --lightning --runs 2 \
  --json "$OUT/light_none.json" >"$OUT/light_none.log" 2>&1
grep -E "^## run 2|^\| (build transformer|text encode|VAE|denoise|encode \+)|^steps:" \
  "$OUT/light_none.log" | tail -9
stamp "ours: DiT step"
timeout 150 "$(bin dit_step)" --sizes 1024 --iters 5 --pipelined --no-batched \
  --no-reference --profile 0 >"$OUT/dit_bf16.log" 2>&1
grep -A6 '^## one true-CFG step' "$OUT/dit_bf16.log" | grep '|'
stamp "done"

#!/bin/bash
# 2×H200 (device kind nvidia-h200-x2), one command (~4 min), from the repository root with
# .device-mlx carried (MLX's CUDA build + bin/pipeline_full-*): a whole 1024² image (20
# true-CFG steps, full-size random bf16 weights) on one GPU, then CFG-parallel on two GPUs
# over NCCL and over ring, each rank started with the environment `mlx.launch` writes
# (nccl: NCCL_HOST_IP, NCCL_PORT, MLX_WORLD_SIZE, MLX_RANK, CUDA_VISIBLE_DEVICES; ring:
# MLX_HOSTFILE, MLX_RANK). Rank 0 prints the step times and the collectives' times.
set -uo pipefail
OUT=${OUT:-/tmp/h200x2}
mkdir -p "$OUT"
D=.device-mlx
P=$(ls "$D"/bin/pipeline_full-* | head -1)
source "$D/activate.sh" >/dev/null
nvidia-smi --query-gpu=index,name,memory.total --format=csv | tee "$OUT/machine.txt"
nvidia-smi topo -m >>"$OUT/machine.txt" 2>&1
args=(--size 1024 --steps 20 --runs 1)
echo "== one GPU"
CUDA_VISIBLE_DEVICES=0 timeout 150 "$P" "${args[@]}" >"$OUT/single.log" 2>&1
grep -E "^\| (denoise|encode \+|VAE decode|text encode)|^steps:" "$OUT/single.log"
echo "== CFG-parallel over NCCL"
for r in 0 1; do
  NCCL_HOST_IP=127.0.0.1 NCCL_PORT=12345 MLX_WORLD_SIZE=2 MLX_RANK=$r CUDA_VISIBLE_DEVICES=$r \
    timeout 200 "$P" "${args[@]}" >"$OUT/nccl_r$r.log" 2>&1 &
done
wait
grep -E "^distributed|^all-gather|^\| (denoise|encode \+|VAE decode|text encode)|^steps:" "$OUT/nccl_r0.log"
tail -3 "$OUT/nccl_r1.log"
echo "== CFG-parallel over ring"
echo '[["127.0.0.1:34500"],["127.0.0.1:34501"]]' >"$OUT/hosts.json"
for r in 0 1; do
  MLX_HOSTFILE="$OUT/hosts.json" MLX_RANK=$r CUDA_VISIBLE_DEVICES=$r \
    timeout 200 "$P" "${args[@]}" >"$OUT/ring_r$r.log" 2>&1 &
done
wait
grep -E "^distributed|^all-gather|^\| (denoise|encode \+|VAE decode|text encode)|^steps:" "$OUT/ring_r0.log"
tail -3 "$OUT/ring_r1.log"

#!/bin/bash
# The side-by-side of docs/speed.md, run on the GPU machine from the repository root: our DiT
# step (benches/dit_step.rs, built here and collected into .device-mlx/bin), then diffusers
# eager (+ a torch.profiler breakdown and isolated cuBLAS/SDPA pieces), then diffusers with
# compile_repeated_blocks, each in its own process (the 20B model takes ~41 GB: the two
# frameworks cannot hold it at once). Logs and JSON go to $OUT.
#
# Prepare (on the build machine, from the repository root):
#   CARGO_TARGET_DIR=target-speed ../shared/tools/mlx-cuda/collect.sh bench -p qwen-image-benches
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp --platform manylinux2014_x86_64 -d .whl \
#       diffusers==0.42.1 importlib_metadata zipp
# Carry [".device-mlx", ".whl"]. Environment knobs: SIZES, ITERS, MLX_ARGS, COMPILE_SIZES,
# SKIP_MLX=1, SKIP_EAGER=1, SKIP_COMPILE=1.
set -uo pipefail
OUT=${OUT:-/tmp/speed-out}
mkdir -p "$OUT"
SIZES=${SIZES:-512,1024,1328}
ITERS=${ITERS:-5}
COMPILE_SIZES=${COMPILE_SIZES:-$SIZES}

{
  date -u
  nvidia-smi
  nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,clocks.mem,power.draw,power.limit,temperature.gpu --format=csv
  echo "nsys: $(command -v nsys || echo absent)  ncu: $(command -v ncu || echo absent)"
  python3 -c 'import torch, transformers; print("torch", torch.__version__, "cuda", torch.version.cuda, "transformers", transformers.__version__)'
  uname -a
} >"$OUT/machine.txt" 2>&1
head -30 "$OUT/machine.txt"

if [ "${SKIP_MLX:-0}" != 1 ]; then
  bin=$(ls .device-mlx/bin/dit_step-* 2>/dev/null | head -1)
  [ -n "$bin" ] || { echo "no .device-mlx/bin/dit_step-* (run collect.sh)"; exit 1; }
  (
    source .device-mlx/activate.sh
    timeout 180 "$bin" --sizes "$SIZES" --iters "$ITERS" --profile 1024 --json "$OUT/mlx.json" ${MLX_ARGS:-}
  ) 2>&1 | tee "$OUT/mlx.log"
fi

python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1

if [ "${SKIP_EAGER:-0}" != 1 ]; then
  timeout 150 python3 scripts/bench/diffusers_step.py --sizes "$SIZES" --iters "$ITERS" \
    --profile 1024 --json "$OUT/diffusers_eager.json" 2>&1 | tee "$OUT/diffusers_eager.log"
fi
if [ "${SKIP_COMPILE:-0}" != 1 ]; then
  timeout 240 python3 scripts/bench/diffusers_step.py --sizes "$COMPILE_SIZES" --iters "$ITERS" \
    --no-batched --eager-skip --compile --profile 1024 --json "$OUT/diffusers_compiled.json" 2>&1 \
    | tee "$OUT/diffusers_compiled.log"
fi

echo; echo "===== summary ====="
grep -A12 '^## one true-CFG step' "$OUT"/mlx.log "$OUT"/diffusers_*.log 2>/dev/null | grep '|' | cut -c1-200

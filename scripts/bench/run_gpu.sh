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
# SKIP_MLX=1, SKIP_EAGER=1, SKIP_COMPILE=1, NCU=1 (Nsight Compute kernel-time breakdown of
# our 1024² step, summarised by scripts/bench/ncu_summary.py).
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

if [ "${NCU:-0}" = 1 ]; then
  # Pure kernel time of one 1024² step (ncu serialises kernels): 1 and 2 layers, differenced.
  bin=$(ls .device-mlx/bin/dit_step-* | head -1)
  for l in 1 2; do
    (
      source .device-mlx/activate.sh >/dev/null
      timeout 150 ncu --clock-control none --metrics gpu__time_duration.sum --csv --print-units base \
        --log-file "$OUT/ncu_L$l.csv" "$bin" --layers $l --sizes 1024 --warmup 1 --iters 2 \
        --no-batched --no-reference --profile 0 >"$OUT/ncu_L$l.stdout" 2>&1
    ) || echo "ncu L$l failed: $(tail -3 "$OUT/ncu_L$l.stdout")"
  done
  wall=$(grep -m1 -o '^ 1024² 2×B=1 *fused *median *[0-9.]*' "$OUT/mlx.log" 2>/dev/null | awk '{print $NF}')
  python3 scripts/bench/ncu_summary.py "$OUT/ncu_L1.csv" "$OUT/ncu_L2.csv" ${wall:+--wall-ms $wall} \
    2>&1 | tee "$OUT/ncu_summary.md"
  xz -T0 -9 "$OUT"/ncu_L*.csv 2>/dev/null; rm -f "$OUT"/ncu_L*.stdout
fi
[ "${SKIP_EAGER:-0}" = 1 ] && [ "${SKIP_COMPILE:-0}" = 1 ] && { grep -A14 '^## one true-CFG step' "$OUT/mlx.log"; exit 0; }

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
grep -A16 '^## one true-CFG step' "$OUT"/mlx.log "$OUT"/diffusers_*.log 2>/dev/null | grep '|' | cut -c1-200

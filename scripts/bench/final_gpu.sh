#!/bin/bash
# The final H100 measurement, in ONE device command, from the repository root:
#   (a) `qwen-image info` (must report the cuda backend);
#   (b) the DiT-step side-by-side of docs/speed.md: ours (benches/dit_step.rs, as run 3:
#       --pipelined) then diffusers eager through scripts/bench/run_gpu.sh (compile skipped);
#   (c) the whole pipeline with random full-size weights (benches/pipeline_full.rs): 1024²,
#       20 steps, true CFG, bf16, per-phase time and peak memory;
# then a short summary, printed last. Every log goes to $OUT. Expected ~4 min on an H100
# (run 3 of docs/speed.md: ours ~1 min, diffusers eager ~1.5 min; pipeline_full ~1 min);
# the timeouts below cap it at ~9 min.
#
# Prepare (build machine, repository root): `CARGO_TARGET_DIR=target-<you> bash
# scripts/bench/prepare_final.sh` builds .device-final/ (MLX's CUDA build from .device-mlx/ +
# the stripped qwen-image, dit_step and pipeline_full executables) and checks that it stays
# under the 64 MiB carry limit together with .whl/ (the diffusers wheels, see run_gpu.sh).
# Run: carry [".device-final", ".whl"], command `OUT=$OUT bash scripts/bench/final_gpu.sh`.
# Knobs: SIZES (dit_step and diffusers, default 512,1024,1328), ITERS (5), MLX_ARGS
# (dit_step, default --pipelined), PIPE_ARGS (pipeline_full, default --size 1024 --steps 20
# --runs 2), SKIP_EAGER=1, SKIP_PIPE=1.
set -uo pipefail
OUT=${OUT:-/tmp/final-out}
D=${DEVICE_DIR:-.device-final}
mkdir -p "$OUT"
t_start=$(date +%s)
export SIZES=${SIZES:-512,1024,1328} ITERS=${ITERS:-5}
MLX_ARGS=${MLX_ARGS:---pipelined}
PIPE_ARGS=${PIPE_ARGS:---size 1024 --steps 20 --runs 2}
stamp() { echo "[$(date -u +%H:%M:%S), +$(($(date +%s) - t_start)) s] $*"; }

bin_of() { ls "$D"/bin/"$1"-* 2>/dev/null | head -1; }
qi="$D/bin/qwen-image"
dit=$(bin_of dit_step)
pipe=$(bin_of pipeline_full)
for b in "$qi" "$dit" "$pipe"; do
  [ -n "$b" ] && [ -x "$b" ] || { echo "missing binary in $D/bin (qwen-image, dit_step-*, pipeline_full-*): run the Prepare steps"; exit 1; }
done

# (a) Runtime: unpacks MLX's CUDA build once, then asks our binary which backend it runs on.
stamp "(a) qwen-image info"
(
  source "$D/activate.sh"
  "$qi" info
) >"$OUT/info.txt" 2>&1
cat "$OUT/info.txt"
grep -qi cuda "$OUT/info.txt" || echo "WARNING: qwen-image info does not report the cuda backend (a CPU libmlx.so was loaded?)"

# (b1) Our DiT step (the same arguments as run_gpu.sh, plus MLX_ARGS).
stamp "(b) dit_step (ours): sizes $SIZES, $ITERS iters, $MLX_ARGS"
(
  source "$D/activate.sh" >/dev/null
  # shellcheck disable=SC2086
  timeout 180 "$dit" --sizes "$SIZES" --iters "$ITERS" --profile 1024 --json "$OUT/mlx.json" $MLX_ARGS
) 2>&1 | tee "$OUT/mlx.log"

# (c) The whole pipeline, before diffusers so that the headline result is in even if the
# reference side runs long.
if [ "${SKIP_PIPE:-0}" != 1 ]; then
  stamp "(c) pipeline_full: $PIPE_ARGS"
  (
    source "$D/activate.sh" >/dev/null
    # shellcheck disable=SC2086
    timeout 180 "$pipe" $PIPE_ARGS --json "$OUT/pipeline_full.json"
  ) 2>&1 | tee "$OUT/pipeline_full.log"
fi

# (b2) diffusers eager at the same sizes (run_gpu.sh writes machine.txt, installs the wheels,
# runs diffusers_step.py and prints its own summary of mlx.log + diffusers_eager.log).
if [ "${SKIP_EAGER:-0}" != 1 ]; then
  stamp "(b) diffusers eager via run_gpu.sh (compile skipped)"
  SKIP_MLX=1 SKIP_COMPILE=1 OUT="$OUT" bash scripts/bench/run_gpu.sh 2>&1 | tee "$OUT/run_gpu.log"
fi

{
  echo
  echo "=================== final summary ==================="
  grep -m3 -iE 'backend|device|memory' "$OUT/info.txt"
  echo
  echo "## DiT, one true-CFG step (ms, median of $ITERS): ours vs diffusers eager"
  python3 - "$OUT" <<'PY'
import json, os, sys
out = sys.argv[1]
def load(name):
    p = os.path.join(out, name)
    try:
        with open(p) as f:
            return json.load(f)
    except (OSError, ValueError):
        return []
ours = load("mlx.json")
ref = load("diffusers_eager.json")
def pick(rows, size, mode, kernels=None):
    for r in rows:
        if r["size"] == size and r["mode"] == mode and (kernels is None or r.get("kernels") == kernels):
            return r["median_ms"]
    return None
fmt = lambda v: "-" if v is None else f"{v:.1f}"
print("| size | ours 2×B=1 | ours pipelined | ours B=2 | diffusers eager 2×B=1 | eager B=2 | eager / ours |")
print("|---|---|---|---|---|---|---|")
for size in sorted({r["size"] for r in ours + ref}):
    a = pick(ours, size, "2×B=1", "fused")
    p = pick(ours, size, "2×B=1 pipelined", "fused")
    b = pick(ours, size, "B=2", "fused")
    e = pick(ref, size, "eager 2×B=1")
    e2 = pick(ref, size, "eager B=2")
    ratio = f"{e / a:.2f}×" if a and e else "-"
    print(f"| {size}² | {fmt(a)} | {fmt(p)} | {fmt(b)} | {fmt(e)} | {fmt(e2)} | {ratio} |")
PY
  echo
  sed -n '/^## pipeline_full summary/,/^$/p' "$OUT/pipeline_full.log" 2>/dev/null
  grep -E '^steps:|^total' "$OUT/pipeline_full.log" 2>/dev/null | tail -2
  echo
  stamp "done; logs in $OUT"
} 2>&1 | tee "$OUT/summary.md"

# (d) The fused-kernel GPU tests of mlx-fastops (all kernels, f32/bf16/f16), in the time left
# under the device's 600 s limit; their verdict is printed after the summary.
gpu_test=$(bin_of gpu)
if [ -n "$gpu_test" ]; then
  left=$((570 - ($(date +%s) - t_start)))
  if [ "$left" -gt 30 ]; then
    stamp "(d) mlx-fastops GPU tests (timeout ${left} s)"
    (
      source "$D/activate.sh" >/dev/null
      timeout "$left" "$gpu_test"
    ) >"$OUT/fastops_gpu.log" 2>&1
    rc=$?
    echo "fastops GPU tests (exit $rc; 124 = cut by the time limit):"
    grep -E '^(mlx-fastops gpu tests|gpu tests:)' "$OUT/fastops_gpu.log"
    grep -iE 'FAIL' "$OUT/fastops_gpu.log" | head -5
  fi
fi

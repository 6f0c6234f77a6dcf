# Shared start of the H200 measurement scripts (sourced, from the repository root on the GPU
# machine): $OUT (default /tmp/$1), $D (the carried .device-mlx), `bin NAME` (the collected
# executable NAME-*), `stamp TEXT` (elapsed seconds and TEXT), and $OUT/machine.txt (date, GPU).
OUT=${OUT:-/tmp/$1}
mkdir -p "$OUT"
D=.device-mlx
bin() { ls "$D"/bin/"$1"-* 2>/dev/null | head -1; }
t0=$(date +%s)
stamp() { echo "== [+$(($(date +%s) - t0)) s] $*"; }
{
  date -u
  nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv
} | tee "$OUT/machine.txt"

# The whole 1024² Lightning image (8 steps, CFG off) with pipeline_full, 2 runs (the second
# warm), without a LoRA and with a random rank-64 LoRA read from a file (merge time, load
# peak): logs and JSON to $OUT/light_{none,rank64}.*, the second run's rows printed.
lightning_runs() {
  local lora
  for lora in none rank64; do
    local args=()
    [ $lora = rank64 ] && args=(--lora-rank 64 --lora-file)
    timeout 150 "$(bin pipeline_full)" --size 1024 --steps 8 --lightning --runs 2 "${args[@]}" \
      --json "$OUT/light_$lora.json" >"$OUT/light_$lora.log" 2>&1
    echo "--- lightning, LoRA: $lora"
    grep -E "^## run 2|^\| (build transformer|text encode|VAE|denoise|encode \+)|^steps:" \
      "$OUT/light_$lora.log" | tail -9
  done
}

# The whole 1024² Lightning image (8 steps, CFG off, default budget) in $1 processes back to
# back, 2 runs each (the second warm): $OUT/light_<p>.{log,json}, each process's rows printed.
lightning_processes() {
  local p
  for p in $(seq "$1"); do
    stamp "ours: Lightning, process $p"
    timeout 150 "$(bin pipeline_full)" --size 1024 --steps 8 --lightning --runs 2 \
      --json "$OUT/light_$p.json" >"$OUT/light_$p.log" 2>&1
    grep -E "^\| (text encode|VAE decode|denoise, all|encode \+)|^steps:" "$OUT/light_$p.log" | tail -5
  done
}

# The carried diffusers wheels (.whl) installed into /tmp/site (use PYTHONPATH=/tmp/site).
install_diffusers() {
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
}

# diffusers' Lightning image (1024², 8 steps, CFG off), eager and compiled, within $1 seconds:
# $OUT/diffusers_lightning.{log,json}, its last lines printed.
diffusers_lightning() {
  stamp "diffusers: Lightning"
  PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 timeout "$1" python3 scripts/bench/diffusers_pipeline.py \
    --lightning-only --json "$OUT/diffusers_lightning.json" 2>&1 | grep -vi warning \
    | tee "$OUT/diffusers_lightning.log" | tail -8
}

# Our whole edit, 1024² picture → 1024², 40 true-CFG steps (pipeline_full --edit, 2 runs):
# $OUT/edit_full.{log,json}, the second run's rows printed.
ours_edit_full() {
  stamp "ours: whole edit, 1024², 40 steps"
  timeout "${1:-250}" "$(bin pipeline_full)" --edit --size 1024 --steps 40 --runs 2 \
    --json "$OUT/edit_full.json" >"$OUT/edit_full.log" 2>&1
  grep -E "^## run 2|^\| (build|text encode|VAE|denoise|encode \+|total)|^steps:" \
    "$OUT/edit_full.log" | tail -14
}

# diffusers' true-CFG edit step (1024² + one 1024² picture, 1400 text tokens), eager and
# compile_repeated_blocks: $OUT/diffusers_edit.{log,json}.
diffusers_edit_step() {
  stamp "diffusers: edit step, eager and compiled"
  PYTHONPATH=/tmp/site timeout 450 python3 scripts/bench/diffusers_step.py \
    --sizes 1024 --txt 1400 --edit-pictures 1 --iters 5 --no-batched --compile \
    --json "$OUT/diffusers_edit.json" >"$OUT/diffusers_edit.log" 2>&1
  grep -vi warning "$OUT/diffusers_edit.log" | tail -8
}

# diffusers' whole edit (QwenImageEditPipeline, 40 true-CFG steps), eager and compiled, and
# its vision tower: $OUT/diffusers_edit_full.{log,json}.
diffusers_edit_full() {
  stamp "diffusers: whole edit, eager and compiled; vision tower"
  PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 timeout "${1:-550}" python3 \
    scripts/bench/diffusers_pipeline.py --edit --json "$OUT/diffusers_edit_full.json" 2>&1 \
    | grep -vi warning | tee "$OUT/diffusers_edit_full.log" | tail -12
}

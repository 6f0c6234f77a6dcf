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

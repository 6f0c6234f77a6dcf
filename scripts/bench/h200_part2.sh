#!/bin/bash
# H200 measurements, part 2 of 2 (one device command, ~8 min), from the repository root with
# .device-mlx (bin/{dit_step-*, qwen-image, vae_timing-*}) and .whl (diffusers wheels) carried:
#   Q. the quantized DiT: 1024² true-CFG step at 8 and 4 bits (dequantize + GEMM for image
#      tokens, the default) and at 8 bits through MLX's quantized_matmul everywhere; MLX's
#      compiled-kernel cache in $PTX (carry $OUT/ptx of part 1 there to skip the compile);
#   M. the bf16 step with MLX's memory limit at weights + 2 GiB (three sizes), and whole
#      images with an activation budget (1024², 20 steps; 2048², 4 steps, tiled decode);
#   V. the VAE: decode and encode at 1024² (bf16);
#   S. `qwen-image serve` against `qwen-image generate` for the same request (the tiny
#      fixture on the GPU, 1024², 8 steps, CFG off: what the server saves is the load);
#   E. diffusers 0.42.1 at 1024²: eager and compile_repeated_blocks, same machine, same run.
set -uo pipefail
source "$(dirname "$0")/lib.sh" h200-part2
source "$D/activate.sh" >/dev/null
export MLX_PTX_CACHE_DIR=${PTX:-$OUT/ptx}
mkdir -p "$MLX_PTX_CACHE_DIR"
echo "kernel cache: $MLX_PTX_CACHE_DIR ($(ls "$MLX_PTX_CACHE_DIR" | wc -l) files)"

stamp "Q. quantized DiT"
q="--sizes 1024 --iters 5 --pipelined --no-batched --no-reference --profile 0"
for bits in 8 4; do
  s=$(date +%s)
  timeout 150 "$(bin dit_step)" $q --quantize $bits --json "$OUT/dit_q$bits.json" 2>&1 | tee "$OUT/dit_q$bits.log"
  echo "q$bits wall $(($(date +%s) - s)) s"
done
QWEN_DIT_DEQUANTIZE_MIN_ROWS=1000000000 timeout 150 "$(bin dit_step)" $q --quantize 8 \
  --json "$OUT/dit_q8_qmm.json" 2>&1 | tee "$OUT/dit_q8_qmm.log"
echo "kernel cache now: $(ls "$MLX_PTX_CACHE_DIR" | wc -l) files"

stamp "M. activations bounded through MLX's memory limit (weights 38.1 GiB + 2)"
timeout 200 "$(bin dit_step)" --sizes 512,1024,1328 --iters 5 --pipelined --no-batched --no-reference \
  --profile 0 --memory-limit-gib 40.1 --json "$OUT/dit_limit.json" 2>&1 | tee "$OUT/dit_limit.log"
timeout 150 "$(bin pipeline_full)" --size 1024 --steps 20 --runs 1 --activation-budget-gib 1.5 \
  --json "$OUT/pipe_budget.json" 2>&1 | tee "$OUT/pipe_budget.log"
timeout 150 "$(bin pipeline_full)" --size 2048 --steps 4 --runs 1 --activation-budget-gib 1.5 \
  --json "$OUT/pipe_2048.json" 2>&1 | tee "$OUT/pipe_2048.log"

stamp "V. VAE"
timeout 90 "$D/bin/vae_timing" bf16 5 2>&1 | tee "$OUT/vae.log"

stamp "S. serve vs CLI (tiny fixture, 1024², 8 steps, CFG off)"
qi="$D/bin/qwen-image"
req=(--prompt "a red fox" --width 1024 --height 1024 --steps 8 --true-cfg-scale 1 --seed 1)
for i in 1 2; do
  s=$(date +%s%N)
  "$qi" generate --model fixtures/data/pipeline/tiny "${req[@]}" --output "$OUT/cli$i.png" >/dev/null 2>"$OUT/cli$i.err"
  echo "cli run $i: $(( ($(date +%s%N) - s) / 1000000 )) ms"
done
"$qi" serve --model fixtures/data/pipeline/tiny --port 0 >"$OUT/serve.out" 2>"$OUT/serve.err" &
spid=$!
for _ in $(seq 100); do grep -q listening "$OUT/serve.out" 2>/dev/null && break; sleep 0.1; done
url=$(sed -n 's/listening on //p' "$OUT/serve.out")
body='{"prompt": "a red fox", "size": "1024x1024", "steps": 8, "true_cfg_scale": 1, "seed": 1}'
for i in 1 2 3 4; do
  s=$(date +%s%N)
  curl -s "$url/v1/images/generations" -H 'Content-Type: application/json' -d "$body" -o "$OUT/serve$i.json"
  echo "serve request $i: $(( ($(date +%s%N) - s) / 1000000 )) ms"
done
kill $spid

stamp "E. diffusers 1024²"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 timeout 270 python3 scripts/bench/diffusers_step.py \
  --sizes 1024 --iters 5 --no-batched --compile --json "$OUT/diffusers.json" 2>&1 | tee "$OUT/diffusers.log"
stamp "done"
echo "===== summary ====="
grep -h '^| 1024' "$OUT"/dit_q*.log "$OUT/diffusers.log"
grep -h '^| ' "$OUT/dit_limit.log"
grep -hE "^\| (denoise|VAE decode|encode \+)" "$OUT"/pipe_*.log
grep -hE "decode|encode" "$OUT/vae.log" | head

#!/bin/bash
# H200 measurements, part 3 (one device command, ~8 min): whole-pipeline rows of issues 12 and
# 13, ours and diffusers on the same run, from the repository root with .device-mlx
# (bin/pipeline_full-*) and .whl (diffusers wheels) carried:
#   ours: 1024² Lightning (8 steps, CFG off) without a LoRA and with a random rank-64 LoRA read
#         from a file (load time and peak); 1024² img2img at strength 0.6, 20 true-CFG steps;
#   diffusers: the same Lightning image eager and compiled, the same img2img, a VAE encode.
set -uo pipefail
OUT=${OUT:-/tmp/h200-part3}
mkdir -p "$OUT"
D=.device-mlx
P=$(ls "$D"/bin/pipeline_full-* | head -1)
t0=$(date +%s)
stamp() { echo "== [+$(($(date +%s) - t0)) s] $*"; }
(
  source "$D/activate.sh" >/dev/null
  export MLX_PTX_CACHE_DIR="$OUT/ptx"
  stamp "ours: Lightning, no LoRA (2 runs: the second is warm)"
  timeout 150 "$P" --size 1024 --steps 8 --lightning --runs 2 >"$OUT/light.log" 2>&1
  stamp "ours: Lightning + rank-64 LoRA from a file (2 runs)"
  timeout 150 "$P" --size 1024 --steps 8 --lightning --runs 2 --lora-rank 64 --lora-file \
    >"$OUT/light_lora.log" 2>&1
  stamp "ours: img2img 0.6, 20 true-CFG steps (2 runs)"
  timeout 150 "$P" --size 1024 --steps 20 --runs 2 --img2img 0.6 >"$OUT/img2img.log" 2>&1
)
for f in light light_lora img2img; do
  echo "--- $f"
  grep -E "^## run 2|^\| (build transformer|text encode|VAE|denoise|encode \+)|^steps:" "$OUT/$f.log" | tail -9
done
stamp "diffusers"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 timeout 300 python3 scripts/bench/diffusers_pipeline.py \
  --json "$OUT/diffusers_pipeline.json" 2>&1 | grep -v Warning | tee "$OUT/diffusers_pipeline.log"
stamp "done"

set -uo pipefail
source scripts/bench/lib.sh h200-part8b
( source "$D/activate.sh" >/dev/null
  export MLX_PTX_CACHE_DIR="$OUT/ptx"
  stamp "ours: profile at 1448² (8190 image tokens) + 1400 text"
  timeout 200 "$(bin dit_step)" --sizes 1448 --txt 1400 --iters 3 --no-batched --no-reference \
    --profile 1448 >"$OUT/prof_ours.log" 2>&1
  grep -v "^$" "$OUT/prof_ours.log" | tail -40
  stamp "ours: whole edit, budget scaled"
  timeout 200 "$(bin pipeline_full)" --edit --size 1024 --steps 40 --runs 1 \
    --json "$OUT/edit_full2.json" >"$OUT/edit_full2.log" 2>&1
  grep -E "^steps:|denoise|peak" "$OUT/edit_full2.log" | tail -5 )
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
stamp "diffusers: profile"
PYTHONPATH=/tmp/site timeout 200 python3 scripts/bench/diffusers_step.py --sizes 1448 --txt 1400 --iters 3 \
  --no-batched --profile 1448 >"$OUT/prof_diffusers.log" 2>&1
grep -vi warning "$OUT/prof_diffusers.log" | tail -40
stamp done

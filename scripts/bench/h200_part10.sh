#!/bin/bash
# H200 measurements, part 10: pure kernel time of one DiT step (Nsight Compute serialises
# kernels; a 1-layer and a 2-layer model differenced, scripts/bench/ncu_summary.py) at 1024²
# text-to-image (32 text tokens) and at the edit shape (1024² + one 1024² picture, 1400 text
# tokens), against the wall time of the same step; and the attention kernel each framework
# runs at 9500 tokens. From the repository root with .device-mlx (bin/{dit_step-*, shapes-*})
# carried.
set -uo pipefail
source "$(dirname "$0")/lib.sh" h200-part10
source "$D/activate.sh" >/dev/null
export MLX_PTX_CACHE_DIR="$OUT/ptx"
NCU="ncu --clock-control none --metrics gpu__time_duration.sum --csv --print-units base"
for case in t2i edit; do
  args=(--sizes 1024 --no-batched --no-reference --profile 0)
  [ $case = edit ] && args+=(--edit-pictures 1 --txt 1400)
  stamp "wall: $case"
  timeout 120 "$(bin dit_step)" "${args[@]}" --iters 5 --pipelined >"$OUT/wall_$case.log" 2>&1
  grep -A5 '^## one true-CFG step' "$OUT/wall_$case.log" | grep '|'
  wall=$(grep -E '^\| 1024² \| 2×B=1 \|' "$OUT/wall_$case.log" | awk -F'|' '{print $5}' | tr -d ' ')
  for l in 1 2; do
    timeout 120 $NCU --log-file "$OUT/ncu_${case}_L$l.csv" "$(bin dit_step)" "${args[@]}" \
      --layers $l --warmup 1 --iters 2 >"$OUT/ncu_${case}_L$l.stdout" 2>&1 \
      || echo "ncu $case L$l failed: $(tail -3 "$OUT/ncu_${case}_L$l.stdout")"
  done
  stamp "kernel time: $case (wall of the plain step: $wall ms)"
  python3 scripts/bench/ncu_summary.py "$OUT/ncu_${case}_L1.csv" "$OUT/ncu_${case}_L2.csv" \
    ${wall:+--wall-ms $wall} 2>&1 | tee "$OUT/ncu_summary_$case.md"
  xz -T0 -9 "$OUT"/ncu_${case}_L*.csv; rm -f "$OUT"/ncu_${case}_L*.stdout
done
stamp "attention kernels at 9500 tokens"
timeout 100 $NCU -k regex:'sdpa|flash|fmha' --log-file "$OUT/ncu_sdpa_mlx.csv" "$(bin shapes)" \
  --rows 32 --seqs 9500 >/dev/null 2>&1
timeout 100 $NCU -k regex:'sdpa|flash|fmha' --log-file "$OUT/ncu_sdpa_torch.csv" \
  python3 scripts/bench/torch_shapes.py --rows 32 --seqs 9500 >/dev/null 2>&1
for f in mlx torch; do
  echo "-- $f"
  python3 scripts/bench/ncu_kernels.py "$OUT/ncu_sdpa_$f.csv"
done
stamp "done"

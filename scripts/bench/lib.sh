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

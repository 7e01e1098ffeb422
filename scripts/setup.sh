#!/usr/bin/env bash
# Create or reuse the project's virtualenv and install janus-forge into it (sourced by
# scripts/repro.sh and scripts/test.sh). Reinstalls only when pyproject.toml or the torch
# pair changes. Override the torch pair for another CUDA setup with JANUS_FORGE_TORCH.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV="${JANUS_FORGE_VENV:-.venv}"
TORCH="${JANUS_FORGE_TORCH:-torch==2.14.1 torchvision==0.29.1}"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV" >&2
  "$PY" -m venv "$VENV"
fi
stamp="$(cat pyproject.toml; echo "$TORCH")"
stamp="$(printf '%s' "$stamp" | sha256sum | cut -c1-16)"
if [ "$(cat "$VENV/.janus-forge-installed" 2>/dev/null)" != "$stamp" ]; then
  echo "setup: installing $TORCH, then janus-forge (a few minutes the first time)" >&2
  "$VENV/bin/python" -m pip install -q --upgrade pip
  # torch first, as a matching pair: a bare `torch` would pull a multi-GB CUDA build
  "$VENV/bin/python" -m pip install -q $TORCH
  NO_ALBUMENTATIONS_UPDATE=1 "$VENV/bin/python" -m pip install -q -e ".[test]"
  echo "$stamp" > "$VENV/.janus-forge-installed"
fi
export PATH="$PWD/$VENV/bin:$PATH"
export NO_ALBUMENTATIONS_UPDATE=1 RAY_USAGE_STATS_ENABLED=0 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

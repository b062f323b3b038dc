#!/usr/bin/env bash
# Create ./.venv with losam-peft installed (editable) and its test tools. Safe to run again.
# torch is pinned to 2.13.0 first: on this project's CPU machines that wheel is on disk (an unpinned
# torch would pull a multi-GB CUDA build); elsewhere pip fetches the 2.13.0 wheel for your platform.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "torch==${LOSAM_TORCH_VERSION:-2.13.0}"
.venv/bin/python -m pip install --quiet -e ".[dev,app]"
.venv/bin/python -c "import losam_peft, torch; print('losam-peft', losam_peft.__version__, '| torch', torch.__version__)"

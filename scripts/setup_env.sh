#!/usr/bin/env bash
# Create .venv/ at the repository root and install llm-shearing with its pinned stack into it.
# Re-running is cheap: nothing is installed again unless setup.py or the constraints changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
stamp=.venv/.llmshearing-installed
wanted=$(cat setup.py scripts/constraints.txt | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$wanted" ]; then
  exit 0
fi
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -c scripts/constraints.txt -e '.[dev]'
echo "$wanted" > "$stamp"

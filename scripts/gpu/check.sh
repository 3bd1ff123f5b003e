#!/usr/bin/env bash
# The GPU path in one command (scripts/gpu/check.py, run as the module scripts.gpu.check, says what it checks); summary and logs go to $OUT or --output-dir.
#   scripts/gpu/check.sh [--output-dir DIR]            on a GPU machine, with the wheels of scripts/gpu/build_wheels.sh in .whl/
#   scripts/gpu/check.sh --dry-run --output-dir DIR    toy sizes on the CPU, with .venv/
set -euo pipefail
cd "$(dirname "$0")/../.."
if [[ " $* " == *" --dry-run "* ]]; then
    PYTHON=${PYTHON:-.venv/bin/python}
else
    PYTHON=${PYTHON:-python3}
    if [[ -d .whl ]]; then
        # The pinned stack over the machine's own torch, then this package itself (for its entry points).
        SITE=$(mktemp -d /tmp/gpu-check-site.XXXXXX)
        "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE/stack" .whl/*.whl
        export PYTHONPATH=$SITE/stack
        "$PYTHON" -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir --target "$SITE/project" .
        export PYTHONPATH=$SITE/project:$SITE/stack
    fi
fi
export PYTHONUNBUFFERED=1
exec "$PYTHON" -m scripts.gpu.check "$@"

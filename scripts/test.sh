#!/usr/bin/env bash
# Install the environment if needed, then run the test suite (CPU only).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
exec .venv/bin/python -m pytest tests "$@"

#!/usr/bin/env bash
# Install the environment if needed, then run the pruning pipeline end to end on the built-in toy setup.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
exec .venv/bin/llmshearing demo "$@"

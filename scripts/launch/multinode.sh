#!/usr/bin/env bash
# Launch one node's share of a multi-node FSDP run with Composer's launcher. Run it on every node:
#
#   NNODES=4 NODE_RANK=0 MASTER_ADDR=node0 bash scripts/launch/multinode.sh yamls/pruning/llama2_7b_to_2.7b.yaml \
#       variables.model_path=/models/Llama-2-7b-hf variables.data_local=/data/redpajama
#
# NNODES (default 1), NODE_RANK (default 0), MASTER_ADDR (default localhost), MASTER_PORT (default 29500),
# GPUS_PER_NODE (default: all visible GPUs). Everything after the YAML is a key=value override.
set -euo pipefail
cd "$(dirname "$0")/../.."
: "${NNODES:=1}" "${NODE_RANK:=0}" "${MASTER_ADDR:=localhost}" "${MASTER_PORT:=29500}"
: "${GPUS_PER_NODE:=$(nvidia-smi --list-gpus | wc -l)}"
exec .venv/bin/composer \
  --nproc "$GPUS_PER_NODE" \
  --world_size "$((NNODES * GPUS_PER_NODE))" \
  --node_rank "$NODE_RANK" \
  --master_addr "$MASTER_ADDR" \
  --master_port "$MASTER_PORT" \
  train.py "$@"

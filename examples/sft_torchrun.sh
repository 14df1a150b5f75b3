#!/usr/bin/env bash
# SFT with torchrun + DeepSpeed ZeRO-2: one node by default, several through the usual variables.
#   bash examples/sft_torchrun.sh recipes/omr_7b_sft.yaml data.train_files=[/data/sft] [key=value ...]
#   NNODES=4 NODE_RANK=0 MASTER_ADDR=10.0.0.1 bash examples/sft_torchrun.sh recipes/omr_7b_sft.yaml ...
set -euo pipefail

RECIPE=${1:?usage: sft_torchrun.sh RECIPE.yaml [key=value ...]}
shift
NPROC_PER_NODE=${NPROC_PER_NODE:-8}
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-29500}
export WANDB_MODE=${WANDB_MODE:-online}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-8}

launch=(
  --nproc_per_node "$NPROC_PER_NODE"
  --nnodes "$NNODES"
  --node_rank "$NODE_RANK"
  --master_addr "$MASTER_ADDR"
  --master_port "$MASTER_PORT"
)

torchrun "${launch[@]}" -m mmr.sft.train --config "$RECIPE" "$@"

#!/usr/bin/env bash
# GSPO (n=16 vLLM rollouts per prompt) on one node of 8 GPUs with mmr's reward and LLM judge.
#   bash examples/gspo_n16.sh [verl.key=value ...]
set -euo pipefail

MODEL=${MODEL:-runs/omr_7b_sft/final}            # SFT output (HF folder)
DATA_DIR=${DATA_DIR:-data/rl}                     # from `mmr rl prepare`
OUT_DIR=${OUT_DIR:-runs/omr_7b_gspo_8gpu}
RECIPE=${RECIPE:-recipes/omr_7b_gspo.yaml}        # OpenMMReasoner's 64-GPU recipe ...
# LLM judge (OpenAI-compatible, e.g. `vllm serve Qwen/Qwen3-235B-A22B-Instruct-2507 --served-model-name judge`)
export USE_LLM_JUDGE=${USE_LLM_JUDGE:-False}
export OPENAI_BASE_URL=${OPENAI_BASE_URL:-http://127.0.0.1:8000/v1}
export OPENAI_MODEL_NAME=${OPENAI_MODEL_NAME:-judge}
export OPENAI_API_KEY=${OPENAI_API_KEY:-EMPTY}   # from the environment only; never in a recipe

paths=(
  "verl.actor_rollout_ref.model.path=$MODEL"
  "verl.data.train_files=$DATA_DIR/train.parquet"
  "verl.data.val_files=$DATA_DIR/val.parquet"
  "verl.trainer.default_local_dir=$OUT_DIR/checkpoints"
)
# ... on one node: every algorithm number stays OpenMMReasoner's; only the scale changes,
# 32 prompts x n=16 = 512 responses per step (OpenMMReasoner: 128 x 16 on 64 GPUs), still
# one mini-batch per step.
cluster=(
  "verl.trainer.nnodes=1"
  "verl.trainer.n_gpus_per_node=${GPUS:-8}"
  "verl.data.train_batch_size=32"
  "verl.actor_rollout_ref.actor.ppo_mini_batch_size=32"
  "verl.trainer.experiment_name=omr_7b_gspo_8gpu"
)

python -m mmr.rl.train --config "$RECIPE" "${paths[@]}" "${cluster[@]}" "$@"

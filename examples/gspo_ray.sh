#!/usr/bin/env bash
# Submit the GSPO recipe to an existing Ray cluster (start it first on every node:
#   head:    ray start --head --port 6379
#   workers: ray start --address HEAD_IP:6379
# then run this on any machine that reaches the head's dashboard port).
#   RAY_ADDRESS=http://HEAD_IP:8265 NNODES=8 bash examples/gspo_ray.sh [verl.key=value ...]
set -euo pipefail

RAY_ADDRESS=${RAY_ADDRESS:-http://127.0.0.1:8265}
NNODES=${NNODES:-8}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
MODEL=${MODEL:-runs/omr_7b_sft/final}             # on shared storage, seen by every node
DATA_DIR=${DATA_DIR:-data/rl}
OUT_DIR=${OUT_DIR:-runs/omr_7b_gspo}
RECIPE=${RECIPE:-recipes/omr_7b_gspo.yaml}

# Judge settings travel in the runtime env; the key comes from this shell's environment.
runtime_env=$(python - <<PY
import json, os
env = {k: os.environ[k] for k in ("USE_LLM_JUDGE", "OPENAI_BASE_URL", "OPENAI_MODEL_NAME",
                                  "OPENAI_API_KEY", "WANDB_API_KEY") if k in os.environ}
print(json.dumps({"working_dir": ".", "excludes": [".venv", "runs", "data"], "env_vars": env}))
PY
)

overrides=(
  "verl.actor_rollout_ref.model.path=$MODEL"
  "verl.data.train_files=$DATA_DIR/train.parquet"
  "verl.data.val_files=$DATA_DIR/val.parquet"
  "verl.trainer.default_local_dir=$OUT_DIR/checkpoints"
  "verl.trainer.nnodes=$NNODES"
  "verl.trainer.n_gpus_per_node=$GPUS_PER_NODE"
)

ray job submit --address "$RAY_ADDRESS" --runtime-env-json "$runtime_env" -- \
  python -m mmr.rl.train --config "$RECIPE" "${overrides[@]}" "$@"

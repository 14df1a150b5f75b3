#!/usr/bin/env bash
# Submit the GSPO recipe to an existing Ray cluster (start it first on every node:
#   head:    ray start --head --port 6379
#   workers: ray start --address HEAD_IP:6379
# then run this on any machine that reaches the head's dashboard port; with Ray's token auth
# on, that machine needs the cluster's token too: RAY_AUTH_MODE=token, RAY_AUTH_TOKEN_PATH).
#   RAY_ADDRESS=http://HEAD_IP:8265 NNODES=8 MODEL=/shared/runs/omr_7b_sft/final \
#     DATA_DIR=/shared/data/rl OUT_DIR=/shared/runs/omr_7b_gspo bash examples/gspo_ray.sh [verl.key=value ...]
# The job runs in Ray's temporary copy of this repo (the upload excludes runs/ and data/), so
# the model, data and output folders are absolute paths on storage every node sees.
# API keys never go into the job's runtime env (`ray job list` and the dashboard show it to
# anyone with access): export OPENAI_API_KEY / WANDB_API_KEY on every node before `ray start`,
# or write them as NAME=value lines into a file on shared storage and name it in
# MMR_SECRETS_FILE; mmr reads it in each process at startup (mmr/env_secrets.py).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."                 # the repo: the job's working_dir

RAY_ADDRESS=${RAY_ADDRESS:-http://127.0.0.1:8265}
NNODES=${NNODES:-8}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
MODEL=${MODEL:-}                                       # SFT output (HF folder), shared storage
DATA_DIR=${DATA_DIR:-}                                 # from `mmr rl prepare`, shared storage
OUT_DIR=${OUT_DIR:-}                                   # checkpoints, shared storage
MMR_SECRETS_FILE=${MMR_SECRETS_FILE:-}                 # optional: NAME=value lines, shared storage
RECIPE=${RECIPE:-recipes/omr_7b_gspo.yaml}             # in this repo (uploaded) or absolute

for var in MODEL DATA_DIR OUT_DIR MMR_SECRETS_FILE; do
  value=${!var}
  [[ -z $value && $var == MMR_SECRETS_FILE ]] && continue
  if [[ $value != /* ]]; then
    echo "gspo_ray.sh: $var must be an absolute path on storage every Ray node sees" \
      "(got '${value}'): the job runs in Ray's temporary copy of this folder" >&2
    exit 2
  fi
done
for key in OPENAI_API_KEY WANDB_API_KEY; do
  if [[ -n ${!key:-} ]]; then
    echo "gspo_ray.sh: $key is not sent with the job (its runtime env is public): export it on" \
      "every node before \`ray start\`, or put it in the file MMR_SECRETS_FILE names" >&2
  fi
done

# Only settings that are not secret travel in the runtime env.
runtime_env=$(MMR_SECRETS_FILE=$MMR_SECRETS_FILE python - <<'PY'
import json, os
names = ("USE_LLM_JUDGE", "OPENAI_BASE_URL", "OPENAI_MODEL_NAME", "MMR_SECRETS_FILE", "WANDB_MODE")
env = {k: os.environ[k] for k in names if os.environ.get(k)}
excludes = [".git", ".venv", ".venv-rl", ".venv-uv", "runs", "data", "wandb", "__pycache__"]
print(json.dumps({"working_dir": ".", "excludes": excludes, "env_vars": env}))
PY
)

paths=(
  "verl.actor_rollout_ref.model.path=$MODEL"
  "verl.data.train_files=$DATA_DIR/train.parquet"
  "verl.data.val_files=$DATA_DIR/val.parquet"
  "verl.trainer.default_local_dir=$OUT_DIR/checkpoints"
)
# The job's driver joins the running cluster, whose resources `ray start` set: ray.init
# refuses num_cpus / num_gpus there (a local recipe such as recipes/demo/*.yaml sets them).
cluster=(
  "verl.trainer.nnodes=$NNODES"
  "verl.trainer.n_gpus_per_node=$GPUS_PER_NODE"
  "verl.ray_kwargs.ray_init.num_cpus=null"
  "verl.ray_kwargs.ray_init.+num_gpus=null"
)

ray job submit --address "$RAY_ADDRESS" --runtime-env-json "$runtime_env" -- \
  python -m mmr.rl.train --config "$RECIPE" "${paths[@]}" "${cluster[@]}" "$@"

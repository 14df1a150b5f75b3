#!/usr/bin/env bash
# Benchmarks with lmms-eval (OpenMMReasoner's evaluation suite), vLLM backend, LLM judge.
#   bash examples/eval.sh CHECKPOINT [TASKS] [extra lmms-eval flags ...]
# Without lmms-eval installed it runs `mmr eval` on a Sample file instead (DATA=...).
set -euo pipefail

CHECKPOINT=${1:?usage: bash examples/eval.sh CHECKPOINT [TASKS] [lmms-eval flags ...]}
# OpenMMReasoner's image tasks (its README's list; text tasks: gpqa_diamond_thinking,aime_agg8).
OMR_TASKS="mmmu_reasoning_reward,wemath_testmini_thinking,mmmu_pro_vision_cot_reward,mmmu_pro_standard_cot_reward,mathvista_testmini_cot_reward,mathvision_reason_testmini_reward,mathvision_reason_test_reward,mathverse_testmini_reward,logicvista_thinking,dynamath,charxiv_val_descriptive_cot,charxiv_val_reasoning_cot"
TASKS=${2:-$OMR_TASKS}
shift $(( $# >= 2 ? 2 : 1 ))
OUT_DIR=${OUT_DIR:-runs/eval/$(basename "$CHECKPOINT")}
TP=${TP:-1}                                  # tensor parallel size per vLLM engine
MAX_NEW_TOKENS=${MAX_NEW_TOKENS:-28696}      # OpenMMReasoner's max response length
DATA=${DATA:-}                               # mmr eval fallback: a Sample .parquet/.jsonl
# LLM judge (OpenAI-compatible, e.g. `vllm serve Qwen/Qwen3-235B-A22B-Instruct-2507 --served-model-name judge`)
export USE_LLM_JUDGE=${USE_LLM_JUDGE:-True}
export OPENAI_BASE_URL=${OPENAI_BASE_URL:-http://127.0.0.1:8000/v1}
export OPENAI_MODEL_NAME=${OPENAI_MODEL_NAME:-judge}
export OPENAI_API_KEY=${OPENAI_API_KEY:-EMPTY}   # from the environment only

if ! python -c "import lmms_eval" 2>/dev/null; then
  echo "lmms-eval is not installed (pip install lmms-eval): running mmr eval instead." >&2
  [[ -n "$DATA" ]] || { echo "set DATA=FILE (a Sample parquet/jsonl) for mmr eval" >&2; exit 2; }
  exec mmr eval --model "$CHECKPOINT" --data "$DATA" --max-new-tokens "$MAX_NEW_TOKENS" \
    --output "$OUT_DIR" "$@"
fi

model_args=(
  "model=$CHECKPOINT"
  "tensor_parallel_size=$TP"
  "gpu_memory_utilization=0.8"
  "max_model_len=32768"
)
gen_kwargs=(
  "max_new_tokens=$MAX_NEW_TOKENS"
  "temperature=0"
)

python -m lmms_eval \
  --model vllm \
  --model_args "$(IFS=,; echo "${model_args[*]}")" \
  --gen_kwargs "$(IFS=,; echo "${gen_kwargs[*]}")" \
  --tasks "$TASKS" \
  --batch_size 64 \
  --log_samples \
  --output_path "$OUT_DIR" \
  "$@"

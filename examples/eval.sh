#!/usr/bin/env bash
# Benchmarks with lmms-eval (OpenMMReasoner's evaluation suite), vLLM backend, LLM judge.
#   bash examples/eval.sh CHECKPOINT [TASKS] [extra lmms-eval flags ...]
# Tasks: by default lmms-eval's own "reasoning" ports of OpenMMReasoner's image benchmarks
# (in lmms-eval since 0.6; names checked against lmms-eval 0.7.2: pip install lmms-eval==0.7.2).
# For OpenMMReasoner's exact task files, point OMR_TASKS_DIR at its task folder; it is passed
# as --include_path and the default list becomes OpenMMReasoner's names:
#   git clone https://github.com/EvolvingLMMs-Lab/OpenMMReasoner
#   OMR_TASKS_DIR=$PWD/OpenMMReasoner/lmms_eval_tasks bash examples/eval.sh CHECKPOINT
# MMR_TASKS=1 adds mmr's own task folder (mmr/eval/lmms_tasks: the same image benchmarks,
# prompted as mmr trains and scored by mmr.rewards, the RL reward) and runs all of it:
#   MMR_TASKS=1 bash examples/eval.sh CHECKPOINT [mmr_mathvista_testmini,...]
# Each task keeps its own generation settings (49,152 new tokens; temperature 1 where a task
# samples repeatedly); GEN_KWARGS=... overrides them all, only when set.
# Without lmms-eval installed it runs `mmr eval` on a Sample file instead (DATA=...).
# tests/examples/test_eval_sh.py checks both task lists against the recorded listings.
set -euo pipefail

CHECKPOINT=${1:?usage: bash examples/eval.sh CHECKPOINT [TASKS] [lmms-eval flags ...]}
# Upstream lmms-eval's tasks (text ones: gpqa_diamond_reasoning,aime24_agg8_reasoning,aime25_agg8_reasoning).
UPSTREAM_TASKS="mmmu_val_reasoning,wemath_testmini_reasoning,mmmu_pro_vision_cot_reasoning,mmmu_pro_standard_cot_reasoning,mathvista_testmini_cot_reasoning,mathvision_reason_testmini_reasoning,mathvision_reason_test_reasoning,mathverse_testmini_reasoning,logicvista_reasoning,dynamath_reasoning,charxiv_val_descriptive_cot,charxiv_val_reasoning_cot"
# OpenMMReasoner's task folder, its README's list (text tasks: gpqa_diamond_thinking,aime_agg8).
OMR_TASKS="mmmu_reasoning_reward,wemath_testmini_thinking,mmmu_pro_vision_cot_reward,mmmu_pro_standard_cot_reward,mathvista_testmini_cot_reward,mathvision_reason_testmini_reward,mathvision_reason_test_reward,mathverse_testmini_reward,logicvista_thinking,dynamath,charxiv_val_descriptive_cot,charxiv_val_reasoning_cot"
# mmr's task folder (mmr/eval/lmms_tasks), all its tasks as one group.
MMR_TASK_LIST="mmr_reasoning"
OMR_TASKS_DIR=${OMR_TASKS_DIR:-}             # OpenMMReasoner's lmms_eval_tasks folder, or empty
MMR_TASKS=${MMR_TASKS:-}                     # 1: mmr's own task folder
if [[ -n "$MMR_TASKS" ]]; then DEFAULT_TASKS=$MMR_TASK_LIST
elif [[ -n "$OMR_TASKS_DIR" ]]; then DEFAULT_TASKS=$OMR_TASKS
else DEFAULT_TASKS=$UPSTREAM_TASKS; fi
TASKS=${2:-$DEFAULT_TASKS}
shift $(( $# >= 2 ? 2 : 1 ))
OUT_DIR=${OUT_DIR:-runs/eval/$(basename "$CHECKPOINT")}
TP=${TP:-1}                                  # tensor parallel size per vLLM engine
DP=${DP:-1}                                  # vLLM data-parallel engines (OpenMMReasoner: 8)
GEN_KWARGS=${GEN_KWARGS:-}                   # e.g. max_new_tokens=28696,temperature=0; empty: the tasks'
MAX_NEW_TOKENS=${MAX_NEW_TOKENS:-28696}      # mmr eval fallback only: OpenMMReasoner's RL response length
DATA=${DATA:-}                               # mmr eval fallback: a Sample .parquet/.jsonl
# LLM judge (OpenAI-compatible, e.g. `vllm serve Qwen/Qwen3-235B-A22B-Instruct-2507 --served-model-name judge`)
export USE_LLM_JUDGE=${USE_LLM_JUDGE:-True}
export OPENAI_BASE_URL=${OPENAI_BASE_URL:-http://127.0.0.1:8000/v1}
export OPENAI_MODEL_NAME=${OPENAI_MODEL_NAME:-judge}
export OPENAI_API_KEY=${OPENAI_API_KEY:-EMPTY}   # from the environment only
export VLLM_WORKER_MULTIPROC_METHOD=${VLLM_WORKER_MULTIPROC_METHOD:-spawn}

if ! python -c "import lmms_eval" 2>/dev/null; then
  echo "lmms-eval is not installed (pip install lmms-eval==0.7.2): running mmr eval instead." >&2
  [[ -n "$DATA" ]] || { echo "set DATA=FILE (a Sample parquet/jsonl) for mmr eval" >&2; exit 2; }
  exec mmr eval --model "$CHECKPOINT" --data "$DATA" --max-new-tokens "$MAX_NEW_TOKENS" \
    --output "$OUT_DIR" "$@"
fi

model_args=(
  "model=$CHECKPOINT"
  "tensor_parallel_size=$TP"
  "data_parallel_size=$DP"
  "gpu_memory_utilization=0.7"
  "disable_log_stats=True"
)
extra=()
if [[ -n "$OMR_TASKS_DIR" ]]; then
  [[ -d "$OMR_TASKS_DIR" ]] || { echo "OMR_TASKS_DIR=$OMR_TASKS_DIR is not a folder" >&2; exit 2; }
  # Its utils import `lmms_eval_tasks.<task>`: the folder's parent must be importable.
  export PYTHONPATH="$(cd "$OMR_TASKS_DIR/.." && pwd)${PYTHONPATH:+:$PYTHONPATH}"
  extra+=(--include_path "$OMR_TASKS_DIR")
fi
[[ -z "$MMR_TASKS" ]] || extra+=(--include_path "$(python -m mmr.eval.lmms_tasks)")
[[ -z "$GEN_KWARGS" ]] || extra+=(--gen_kwargs "$GEN_KWARGS")

python -m lmms_eval \
  --model vllm \
  --model_args "$(IFS=,; echo "${model_args[*]}")" \
  --tasks "$TASKS" \
  --batch_size 256 \
  --log_samples \
  --output_path "$OUT_DIR" \
  ${extra[@]+"${extra[@]}"} \
  "$@"

"""Evaluation: generate answers with vLLM or HF, score them with `mmr.rewards`, report.

    mmr eval --model runs/demo/sft/final --data runs/demo/tasks_test.parquet --output runs/eval

`mmr.eval.generate` turns Samples into chat prompts and samples `n` responses each (vLLM
when installed, else HF `generate`); `mmr.eval.report` scores them with the very scorer
training uses (`mmr.rewards.score_batch`, never a scorer of its own), writes the
generations JSONL and the accuracy table per `data_source`; `mmr.eval.cli` is the command.
"""

from mmr.eval.cli import evaluate, main
from mmr.eval.report import accuracy_table, format_table, score_generations

__all__ = ["accuracy_table", "evaluate", "format_table", "main", "score_generations"]

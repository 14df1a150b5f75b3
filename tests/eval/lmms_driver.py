"""Runs lmms-eval's own evaluator on mmr's task folder; tests/eval/test_lmms_tasks.py starts it
in a subprocess (lmms-eval patches filelock and ssl process-wide when it evaluates).

    python tests/eval/lmms_driver.py SPEC.json OUT.json

SPEC: `include` (task folders), `task`, `models` ({label: model_args} for lmms-eval's
`qwen2_5_vl` class) and `replay` ({doc_id: response}, served by a replay model so the scoring
path also sees right answers). OUT: the folders' task index, the function keys of each YAML
as lmms-eval's loader resolves them (`configs`), and per label the logged samples (doc_id,
response, acc, format) and lmms-eval's aggregated acc and format.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from lmms_eval import evaluator
from lmms_eval.api.instance import GenerationResult
from lmms_eval.api.model import lmms
from lmms_eval.tasks import TaskManager
from lmms_eval.utils import load_yaml_config


class Replay(lmms):
    """Answers each request with the response given for its doc; generates nothing."""

    is_simple = False

    def __init__(self, responses: dict[int, str]) -> None:
        super().__init__()
        self.responses = responses

    def generate_until(self, requests: list[Any]) -> list[GenerationResult]:
        return [GenerationResult(text=self.responses[r.doc_id]) for r in requests]

    def loglikelihood(self, requests: list[Any]) -> list[Any]:
        raise NotImplementedError("generation tasks only")

    def generate_until_multi_round(self, requests: list[Any]) -> list[Any]:
        raise NotImplementedError("generation tasks only")


def run(task: str, manager: TaskManager, model: Any, model_args: str | None) -> dict[str, Any]:
    out = evaluator.simple_evaluate(model=model, model_args=model_args, tasks=[task],
                                    batch_size=1, device="cpu", log_samples=True,
                                    task_manager=manager)  # fmt: skip
    samples = [
        {"doc_id": s["doc_id"], "response": s["resps"][0][0], "acc": s["acc"],
         "format": s["format"]}
        for s in out["samples"][task]
    ]  # fmt: skip
    metrics = out["results"][task]
    return {"samples": sorted(samples, key=lambda s: s["doc_id"]),
            "acc": metrics["acc,none"], "format": metrics["format,none"]}  # fmt: skip


def main(spec_path: str, out_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    manager = TaskManager("WARNING", include_path=spec["include"], include_defaults=False)
    result: dict[str, Any] = {"index": manager.all_tasks, "configs": {}}
    for folder in spec["include"]:
        for path in sorted(Path(folder).glob("*.yaml")):
            config = load_yaml_config(str(path), mode="full")  # includes and !function resolved
            result["configs"][path.name] = sorted(k for k, v in config.items() if callable(v))
    for label, model_args in spec["models"].items():
        result[label] = run(spec["task"], manager, "qwen2_5_vl", model_args)
    replay = {int(k): v for k, v in spec["replay"].items()}
    result["replay"] = run(spec["task"], manager, Replay(replay), None)
    Path(out_path).write_text(json.dumps(result))


if __name__ == "__main__":
    main(*sys.argv[1:])

"""Difficulty: a small served model answers each question `num_samples` times (4); the
share of answers that match the ground truth is the sample's pass rate (`pass_rate`,
MMFineReason's `qwen3vl_4b_pass_rate`).

    mmr data difficulty --config recipes/data/mfr.yaml --input DIR/selected --output DIR

The model, sampling and `num_samples` come from `select.difficulty`, which select's
difficulty filter also uses to rate samples that have no pass rate yet. Answers are
checked with mmr.rewards (mmr.data.pipeline.verify). A question any of whose requests
keeps failing, or one of whose answers the judge (when enabled) could not decide, is set
aside as failed (DIR/failed/difficulty/), never given a pass rate from fewer answers than
asked.
"""

from __future__ import annotations

import os
from typing import Any

from mmr.data.pipeline.client import load_prompt, make_client, render, user_message
from mmr.data.pipeline.config import DifficultyConfig, PipelineConfig
from mmr.data.pipeline.runner import ShardLog, run_sample_stage
from mmr.data.pipeline.verify import ask_and_check, check_judge
from mmr.data.schema import Sample

__all__ = ["rate_samples", "run_difficulty"]


def rate_samples(samples: list[Sample], cfg: DifficultyConfig, log: ShardLog) -> list[Sample]:
    """Give a pass rate to samples without one (all with `recompute`); return the samples
    that have one, in order (failed ones are in `log.failed`)."""
    todo = [s for s in samples if cfg.recompute or s.pass_rate is None]
    if not todo:
        return samples
    client = make_client(cfg.client, "select.difficulty.client")
    template = load_prompt("difficulty", cfg.prompt_file)
    n = cfg.num_samples
    requests = [
        user_message(s, render(template, question=s.question)) for s in todo for _ in range(n)
    ]
    truths = [(s.question, s.answer) for s in todo for _ in range(n)]
    results, verdicts = ask_and_check(client, requests, truths, cfg.verify, log)
    # Counted by position, not id: an input may repeat an id (one question, two images).
    correct = [0] * len(todo)
    unjudged = [0] * len(todo)
    for i, (ok, reason) in verdicts.items():
        correct[i // n] += ok
        unjudged[i // n] += reason == "judge_fallback"
    failed = set()
    for q, sample in enumerate(todo):
        errors = [r for r in results[q * n : (q + 1) * n] if r.error is not None]
        if errors:
            failed.add(id(sample))
            log.fail(sample, f"difficulty_{errors[0].error}", errors[0].detail)
            continue
        if unjudged[q]:  # an answer left unchecked would make the question look harder
            failed.add(id(sample))
            log.fail(sample, "difficulty_judge_fallback", f"{unjudged[q]} of {n} answers")
            continue
        sample.pass_rate = correct[q] / n
        sample.meta["pass_rate_model"] = cfg.client.model
        log.info("rated")
    log.info("answers_requested", len(requests))
    return [s for s in samples if id(s) not in failed]


def difficulty_shard(
    samples: list[Sample], log: ShardLog, *, cfg: DifficultyConfig
) -> list[Sample]:
    """The stage's `process`: rate every sample, keep all that got a pass rate."""
    return rate_samples(samples, cfg, log)


def run_difficulty(
    cfg: PipelineConfig,
    input_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    quiet: bool = False,
) -> dict[str, Any]:
    """Rate `input_path` into OUT/difficulty; returns the report."""
    section = cfg.select.difficulty
    check_judge(section.verify, "select.difficulty.verify.judge")
    return run_sample_stage(
        "difficulty",
        "difficulty",
        difficulty_shard,
        section,
        cfg,
        input_path,
        out_dir,
        overwrite=overwrite,
        quiet=quiet,
    )

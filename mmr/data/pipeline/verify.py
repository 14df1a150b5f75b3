"""Answer checking for the pipeline: one call into `mmr.rewards` for a batch of responses.

Distill (each reasoning path), select (the correctness filter) and difficulty (each small-
model answer) all check answers here, so the data is judged by the same rules as the
RL reward. Inside a pool worker math-verify runs in-process (`workers=0`; the worker's
main thread can use its signal-based timeouts), elsewhere in mmr.rewards' worker pool.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mmr.data.pipeline.config import VerifyConfig
from mmr.data.pipeline.runner import in_worker
from mmr.rewards.config import AccuracyConfig, RewardConfig

__all__ = ["check_answers", "reward_config"]


def reward_config(cfg: VerifyConfig) -> RewardConfig:
    """The mmr.rewards config that checks answers as `cfg` says."""
    workers = 0 if in_worker() else AccuracyConfig().workers
    return RewardConfig(
        accuracy=AccuracyConfig(math_verify=cfg.math_verify, workers=workers),
        judge=cfg.judge,
    )


def check_answers(
    items: Sequence[tuple[str, str, str]], cfg: VerifyConfig
) -> list[tuple[bool, str]]:
    """(correct, reason) for each (question, response, gold); reason is "" when correct,
    else one of no_answer, verify_timeout, wrong_answer."""
    if not items:
        return []
    from mmr.rewards import score_batch  # the reward stack loads only when answers are checked

    batch: list[dict[str, Any]] = [
        {"question": q, "response": r, "ground_truth": g} for q, r, g in items
    ]
    out = []
    for row in score_batch(batch, reward_config(cfg)):
        if row["accuracy"] >= 1.0:
            out.append((True, ""))
        elif row["extracted_answer"] is None:
            out.append((False, "no_answer"))
        elif row["decided_by"] == "timeout":
            out.append((False, "verify_timeout"))
        else:
            out.append((False, "wrong_answer"))
    return out

"""Answer checking for the pipeline: one call into `mmr.rewards` for a batch of responses.

Distill (each reasoning path), select (the correctness filter) and difficulty (each small-
model answer) all check answers here, so the data is judged by the same rules as the
RL reward. Inside a pool worker math-verify runs in-process (`workers=0`; the worker's
main thread can use its signal-based timeouts), elsewhere in mmr.rewards' worker pool.

The LLM judge (`verify.judge`, off by default) decides what the rules and math-verify
could not confirm. When it fails (down, hung, garbage replies) mmr.rewards keeps the rule
result, so the answer counts as not verified; such items get the reason `judge_fallback`
(not `wrong_answer`) and are counted, as are the items the judge decided. A judge that
is enabled without an endpoint is a StageError before the stage starts (`check_judge`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mmr.data.pipeline.client import ChatClient, ChatResult, Messages
from mmr.data.pipeline.config import VerifyConfig
from mmr.data.pipeline.runner import ShardLog, StageError, in_worker
from mmr.rewards.config import AccuracyConfig, RewardConfig

__all__ = ["answer_part", "ask_and_check", "check_answers", "check_judge", "reward_config"]

_CLOSE = "</think>"
# ask_and_check verifies replies in batches of at least this many (the last may be smaller):
# one check per reply spent more on each call's set-up than on the answers (distill, 2,000
# replies arriving one at a time: 1,387 calls, 0.5 s of the stage's main thread).
_CHECK_BATCH = 32


def reward_config(cfg: VerifyConfig) -> RewardConfig:
    """The mmr.rewards config that checks answers as `cfg` says."""
    workers = 0 if in_worker() else AccuracyConfig().workers
    return RewardConfig(
        accuracy=AccuracyConfig(math_verify=cfg.math_verify, workers=workers),
        judge=cfg.judge,
    )


def check_judge(cfg: VerifyConfig, key: str) -> None:
    """Raise StageError when the judge at config key `key` is on but has no endpoint."""
    if cfg.judge.is_enabled() and not cfg.judge.resolved_base_url():
        raise StageError(
            f"{key} is enabled but has no endpoint: set {key}.base_url "
            "(e.g. http://localhost:8000/v1) or OPENAI_BASE_URL"
        )


def answer_part(response: str) -> str:
    """The part of a response that mmr.rewards reads the final answer from: from the last
    `</think>` on (the whole response when it has none). The thinking, most of a long CoT,
    is not sent: scoring it (the format part, unused here) cost 5x the answer check."""
    close = response.rfind(_CLOSE)
    return response[close:] if close > 0 else response


def check_answers(
    items: Sequence[tuple[str, str, str]], cfg: VerifyConfig, log: ShardLog | None = None
) -> list[tuple[bool, str]]:
    """(correct, reason) for each (question, response, gold); reason is "" when correct,
    else one of no_answer, judge_fallback, verify_timeout, wrong_answer. With `log`, the
    judge's work is counted: `info/judged` (verdicts) and `info/judge_fallback`."""
    if not items:
        return []
    from mmr.rewards import score_batch  # the reward stack loads only when answers are checked

    batch: list[dict[str, Any]] = [
        {"question": q, "response": answer_part(r), "ground_truth": g} for q, r, g in items
    ]
    out = []
    for row in score_batch(batch, reward_config(cfg)):
        if log is not None:
            if row["judge"] is not None:
                log.info("judged")
            if row["judge_fallback"]:
                log.info("judge_fallback")
        if row["accuracy"] >= 1.0:
            out.append((True, ""))
        elif row["extracted_answer"] is None:
            out.append((False, "no_answer"))
        elif row["judge_fallback"]:
            out.append((False, "judge_fallback"))
        elif row["decided_by"] == "timeout":
            out.append((False, "verify_timeout"))
        else:
            out.append((False, "wrong_answer"))
    return out


def ask_and_check(
    client: ChatClient,
    requests: Sequence[Messages],
    truths: Sequence[tuple[str, str]],
    cfg: VerifyConfig,
    log: ShardLog | None = None,
) -> tuple[list[ChatResult], dict[int, tuple[bool, str]]]:
    """Send `requests` and check each reply against its request's (question, gold) in
    `truths` (check_answers) while the later replies are still in flight: every result in
    order, and the verdict of each request that was answered, by index."""
    results: list[ChatResult] = [ChatResult(error="missing")] * len(requests)
    verdicts: dict[int, tuple[bool, str]] = {}
    for arrived in client.stream(requests, batch=_CHECK_BATCH):
        answered = []
        for i, result in arrived:
            results[i] = result
            if result.error is None:
                answered.append(i)
        items = [(truths[i][0], results[i].text or "", truths[i][1]) for i in answered]
        verdicts.update(zip(answered, check_answers(items, cfg, log)))
    return results, verdicts

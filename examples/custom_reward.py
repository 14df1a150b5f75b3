"""A custom reward for mmr (and plain verl): mmr's composite plus a brevity bonus.

The signature is verl's, so this file works as `reward.function` in mmr and as
`reward.custom_reward_function` in verl:

    mmr reward score --input rollouts.jsonl --output scored.jsonl \\
        function=examples/custom_reward.py:brevity_reward
    mmr reward score ... function=examples/custom_reward.py:brevity_reward plugin.mode=add \\
        plugin.weight=0.5 plugin.kwargs.target_words=200

Return a float, or a dict with `score` plus named parts (each part is logged; a part named
`accuracy`, `format` or `length` replaces mmr's). If the function raises or returns None or
NaN, that rollout's plug-in score is 0 and the error is logged once, so a bug here cannot
stop a training run.
"""

from __future__ import annotations

from typing import Any

from mmr.rewards import compute_score


def brevity_reward(
    data_source: str,
    solution_str: str,
    ground_truth: str,
    extra_info: dict | None = None,
    target_words: int = 400,
    **kwargs: Any,
) -> dict[str, float]:
    """mmr's score, plus up to 0.1 for a correct answer that stays under `target_words`."""
    base = compute_score(data_source, solution_str, ground_truth, extra_info)
    words = len(solution_str.split())
    brevity = 0.1 * max(0.0, 1.0 - words / target_words) if base["accuracy"] == 1.0 else 0.0
    return {"score": base["score"] + brevity, "brevity": brevity, "words": float(words)}

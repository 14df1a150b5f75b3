"""mmr's reward: accuracy (rules -> math-verify -> optional LLM judge), format, length.

    from mmr.rewards import compute_score, score_batch, RewardConfig
    compute_score("math", "<think>...</think> \\boxed{1/2}", "0.5")    # verl's signature
    score_batch([{"response": ..., "ground_truth": ..., "group": uid}], RewardConfig())

`compute_score` is a drop-in `reward.custom_reward_function` for plain verl (`path:
pkg://mmr.rewards`, `name: compute_score`; `reward_kwargs.config`: a RewardConfig mapping);
`score_batch` is what the local RL engine, `mmr eval` and `mmr reward score` call; under
verl, mmr's bridge scores each trajectory with `compute_score` and `add_group_length` adds
the group term once a rollout group is complete (mmr/rl/reward.py). Importing this
package starts nothing and imports no torch: the
math-verify workers start on first use and stop at exit (or `shutdown()`).
"""

from mmr.rewards.accuracy import extract_final_answer, relaxed_match
from mmr.rewards.compose import (
    RewardScorer,
    compute_score,
    get_scorer,
    score_batch,
    shutdown,
    summarize,
)
from mmr.rewards.config import RewardConfig
from mmr.rewards.format import score_format

__all__ = [
    "RewardConfig",
    "RewardScorer",
    "compute_score",
    "extract_final_answer",
    "get_scorer",
    "relaxed_match",
    "score_batch",
    "score_format",
    "shutdown",
    "summarize",
]

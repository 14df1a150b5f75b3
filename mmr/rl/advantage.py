"""GRPO advantages in which a group whose rewards are all equal gets exactly 0.

verl's `compute_grpo_outcome_advantage` normalises each response's score by its group's
float32 mean and std (+ 1e-6). For a group of equal scores that are not exact binary
fractions (0.1 = format only, the commonest all-wrong group), the float32 mean differs
from the scores by an ulp, the std is ~1e-8, and every response gets an advantage of
about -0.0074 instead of 0: an all-wrong group pushes its responses down, which GRPO
means it not to. This is verl's estimator with that case made exact: rows of a group (of
two or more) whose scores are all equal get advantage 0; every other row is verl's own
result, bit for bit. A group of one keeps verl's rule (its score is its advantage).

Used by `mmr rl local` for `algorithm.adv_estimator: grpo`, and registered with verl as
`mmr_grpo` (verl's `register_adv_est`), the name mmr's verl recipes set. Importing this
module registers it: mmr's verl plugin does, in every process, and so does
`mmr.rl.reward`, which verl's trainer imports for mmr's sampler.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

NAME = "mmr_grpo"

__all__ = ["NAME", "equal_groups", "grpo_advantages", "register"]


def grpo_advantages(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: np.ndarray,
    epsilon: float = 1e-6,
    norm_adv_by_std_in_grpo: bool = True,
    config: Any = None,
    **_: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """verl's GRPO outcome advantages (and returns), exactly 0 on all-equal groups.
    Called by verl with `config` = the algorithm section (its `norm_adv_by_std_in_grpo`)."""
    from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage

    if config is not None:
        norm_adv_by_std_in_grpo = config.get("norm_adv_by_std_in_grpo", norm_adv_by_std_in_grpo)
    advantages, returns = compute_grpo_outcome_advantage(
        token_level_rewards=token_level_rewards,
        response_mask=response_mask,
        index=index,
        epsilon=epsilon,
        norm_adv_by_std_in_grpo=norm_adv_by_std_in_grpo,
    )
    flat = torch.as_tensor(equal_groups(token_level_rewards.sum(dim=-1), index))
    advantages[flat.to(advantages.device)] = 0.0
    returns[flat.to(returns.device)] = 0.0
    return advantages, returns


def equal_groups(scores: torch.Tensor, index: np.ndarray) -> np.ndarray:
    """Rows in a group of two or more whose scores are all exactly equal."""
    keys = list(index)
    by_group: dict[Any, list[float]] = {}
    for key, value in zip(keys, scores.detach().cpu().tolist()):
        by_group.setdefault(key, []).append(value)
    flat = {k for k, v in by_group.items() if len(v) > 1 and min(v) == max(v)}
    return np.array([k in flat for k in keys], dtype=bool)


def register() -> str:
    """Register `grpo_advantages` with verl as `mmr_grpo` (idempotent); returns that name."""
    from verl.trainer.ppo.core_algos import register_adv_est

    register_adv_est(NAME)(grpo_advantages)
    return NAME

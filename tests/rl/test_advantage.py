"""`mmr_grpo`: verl's GRPO advantages with an all-equal group at exactly 0, on both engines."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmr.rl import advantage


def _rewards(scores: list[float], length: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    mask = torch.ones(len(scores), length, dtype=torch.long)
    token = torch.zeros(len(scores), length)
    token[:, -1] = torch.tensor(scores)
    return token, mask


def test_an_all_equal_group_gets_exactly_zero_where_verl_leaves_an_ulp_over_epsilon():
    from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage

    # Group a: all wrong with format (0.1 each, not a binary fraction); b: a real spread;
    # c: all 1.0; d: a group of one (verl's rule: its score).
    scores = [0.1] * 8 + [1.0, 0.1, 0.1, 1.0] + [1.0] * 4 + [0.7]
    index = np.array(["a"] * 8 + ["b"] * 4 + ["c"] * 4 + ["d"], dtype=object)
    token, mask = _rewards(scores)
    theirs, _ = compute_grpo_outcome_advantage(token, mask, index)
    ours, returns = advantage.grpo_advantages(token, mask, index)
    assert theirs[:8].abs().max() > 1e-3  # the bug: ~-0.0074 on every all-wrong response
    assert torch.equal(ours[:8], torch.zeros_like(ours[:8]))
    assert torch.equal(ours[12:16], torch.zeros_like(ours[12:16]))
    assert torch.equal(ours[8:12], theirs[8:12]) and torch.equal(ours[16:], theirs[16:])
    assert torch.equal(returns, ours)


@pytest.mark.parametrize("norm", [True, False])
def test_verl_dispatches_mmr_grpo_by_name_with_the_algorithm_config(norm):
    """What verl's trainer calls for `algorithm.adv_estimator: mmr_grpo`."""
    from verl import DataProto
    from verl.trainer.config import AlgoConfig
    from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage
    from verl.trainer.ppo.ray_trainer import compute_advantage

    advantage.register()
    advantage.register()  # idempotent: the plugin and mmr.rl.reward both register
    scores = [0.1, 0.1, 0.1, 0.1, 1.0, 0.0, 0.1, 1.0]
    index = np.array(["a"] * 4 + ["b"] * 4, dtype=object)
    token, mask = _rewards(scores)
    data = DataProto.from_dict(
        tensors={"token_level_rewards": token, "response_mask": mask},
        non_tensors={"uid": index},
    )
    config = AlgoConfig(adv_estimator=advantage.NAME, norm_adv_by_std_in_grpo=norm)
    out = compute_advantage(data, adv_estimator=advantage.NAME, config=config)
    expected, _ = compute_grpo_outcome_advantage(token, mask, index, norm_adv_by_std_in_grpo=norm)
    assert torch.equal(out.batch["advantages"][:4], torch.zeros(4, 3))
    assert torch.equal(out.batch["advantages"][4:], expected[4:])


def test_the_local_engine_uses_it():
    from mmr.rl import local

    scores = torch.tensor([0.1, 0.1, 0.1, 1.0, 0.0, 1.0])
    mask = torch.ones(6, 2, dtype=torch.long)
    adv = local.compute_advantages(scores, mask, ["a", "a", "a", "b", "b", "b"], True)
    assert torch.equal(adv[:3], torch.zeros(3, 2)) and adv[3:].abs().min() > 0.5

"""The verl reward manager on hand-built verl batches: mmr's reward, every part reported."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer
from verl import DataProto

from mmr.rl.reward import EXTRA_KEYS, MMRRewardManager, compute_score

RESPONSES = [
    ("<think>2 and 2 make 4.</think>\\boxed{4}", "4"),  # right, well formed
    ("The answer is 5", "4"),  # wrong, no think block
    ("<think>half</think>\\boxed{\\frac{1}{2}}", "0.5"),  # right via math-verify
]


def _batch(tokenizer, pad_to: int = 24) -> DataProto:
    """A verl batch: left-padded prompts, right-padded responses, as verl's rollout lays it out."""
    prompt = tokenizer("<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n")["input_ids"]
    rows, masks, responses = [], [], []
    for text, _ in RESPONSES:
        ids = tokenizer(text)["input_ids"][:pad_to]
        resp = ids + [tokenizer.pad_token_id] * (pad_to - len(ids))
        responses.append(resp)
        rows.append(prompt + resp)
        masks.append([1] * len(prompt) + [1] * len(ids) + [0] * (pad_to - len(ids)))
    return DataProto.from_dict(
        tensors={
            "prompts": torch.tensor([prompt] * len(RESPONSES)),
            "responses": torch.tensor(responses),
            "input_ids": torch.tensor(rows),
            "attention_mask": torch.tensor(masks),
        },
        non_tensors={
            "data_source": np.array(["t"] * len(RESPONSES), dtype=object),
            "reward_model": np.array(
                [{"ground_truth": gold, "style": "rule"} for _, gold in RESPONSES], dtype=object
            ),
            "extra_info": np.array([{"question": "q"}] * len(RESPONSES), dtype=object),
            "uid": np.array(["g0"] * len(RESPONSES), dtype=object),
        },
    )


@pytest.fixture(scope="module")
def manager(tiny_qwen2_5_vl):
    tokenizer = AutoTokenizer.from_pretrained(tiny_qwen2_5_vl)
    return MMRRewardManager(config=None, tokenizer=tokenizer, compute_score=compute_score)


def test_run_single_scores_each_trajectory_with_every_part(manager):
    data = _batch(manager.tokenizer)
    outs = [manager.loop.run_until_complete(manager.run_single(data[i : i + 1]))
            for i in range(len(data))]  # fmt: skip
    scores = [o["reward_score"] for o in outs]
    assert scores[0] == pytest.approx(1.0)
    assert scores[1] == pytest.approx(0.0)
    assert scores[2] == pytest.approx(1.0)
    for out in outs:
        assert tuple(out["reward_extra_info"]) == EXTRA_KEYS
        assert out["reward_extra_info"]["errors"] == 0.0
    assert outs[1]["reward_extra_info"]["format"] == 0.0


def test_rewards_land_on_each_responses_last_token(manager):
    data = _batch(manager.tokenizer)
    scores = [1.0, 0.0, 0.5]
    rm = MMRRewardManager.assemble_rm_scores(data, scores)
    prompt_len = data.batch["prompts"].shape[1]
    for i, score in enumerate(scores):
        last = int(data.batch["attention_mask"][i, prompt_len:].sum()) - 1
        assert rm[i, last] == score
        assert rm[i].sum() == score  # nowhere else


def test_a_reward_that_raises_scores_zero_and_is_counted(manager):
    def broken(**_):
        raise RuntimeError("plug-in bug")

    failing = MMRRewardManager(config=None, tokenizer=manager.tokenizer, compute_score=broken)
    out = failing.loop.run_until_complete(failing.run_single(_batch(manager.tokenizer)[0:1]))
    assert out["reward_score"] == 0.0 and out["reward_extra_info"]["errors"] == 1.0

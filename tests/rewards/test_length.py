"""Length: DAPO-style budget penalty, Kimi k1.5 group term, token counting."""

from __future__ import annotations

import pytest

from mmr.rewards import RewardConfig, score_batch
from mmr.rewards.length import (
    TOKENS_APPROX,
    TOKENS_GIVEN,
    budget_penalty,
    count_tokens,
    group_length_rewards,
    length_parts,
)


@pytest.mark.parametrize(
    "tokens,expected",
    [(0, 0.0), (100, 0.0), (150, -0.5), (175, -0.75), (200, -1.0), (10_000, -1.0)],
)
def test_budget_penalty(tokens: int, expected: float) -> None:
    assert budget_penalty(tokens, budget_tokens=100, max_tokens=200) == pytest.approx(expected)


def test_group_term_prefers_short_correct_answers() -> None:
    out = group_length_rewards([100, 200, 300], [True, True, True])
    assert out == pytest.approx([0.5, 0.0, -0.5])


def test_group_term_never_rewards_short_wrong_answers() -> None:
    out = group_length_rewards([100, 200, 300], [False, False, False])
    assert out == pytest.approx([0.0, 0.0, -0.5])
    mixed = group_length_rewards([100, 300], [False, True])
    assert mixed[0] == 0.0 and mixed[1] == pytest.approx(-0.5)


def test_group_term_is_zero_for_equal_lengths_or_one_member() -> None:
    assert group_length_rewards([50, 50], [True, False]) == [0.0, 0.0]
    assert group_length_rewards([50], [True]) == [0.0]
    assert group_length_rewards([], []) == []


def test_length_parts_modes_and_groups() -> None:
    tokens, correct = [100, 300, 100, 300], [True, True, True, True]
    groups = ["a", "a", "b", "b"]
    assert length_parts("none", tokens, correct, groups, 150, 250) == [0.0] * 4
    assert length_parts("budget", tokens, correct, groups, 150, 250) == [0.0, -1.0, 0.0, -1.0]
    assert length_parts("group", tokens, correct, groups, 150, 250) == [0.5, -0.5, 0.5, -0.5]
    assert length_parts("both", tokens, correct, groups, 150, 250) == [0.5, -1.5, 0.5, -1.5]
    # groups are kept apart: a lone member of group "c" gets no group term
    assert length_parts("group", [100, 300, 999], [True] * 3, ["a", "a", "c"], 0, 1) == [
        0.5,
        -0.5,
        0.0,
    ]


def test_count_tokens_sources() -> None:
    assert count_tokens("abcdefgh", given=3) == (3, TOKENS_GIVEN)
    assert count_tokens("abcdefgh", given=None, chars_per_token=4) == (2, TOKENS_APPROX)
    assert count_tokens("abcdefgh", given="bad")[1] == TOKENS_APPROX

    class Tok:
        def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
            return list(range(len(text.split())))

    assert count_tokens("a b c", tokenizer=Tok()) == (3, "tokenizer")


def test_score_batch_uses_groups_and_given_token_counts() -> None:
    cfg = RewardConfig()
    cfg.length.mode = "group"
    cfg.length.weight = 0.2
    ok = r"<think>t</think> \boxed{4}"
    items = [
        {"response": ok, "ground_truth": "4", "group": "g", "response_tokens": 100},
        {"response": ok, "ground_truth": "4", "group": "g", "response_tokens": 300},
        {"response": r"<think>t</think> \boxed{5}", "ground_truth": "4", "group": "g",
         "response_tokens": 50},
    ]  # fmt: skip
    rows = score_batch(items, cfg)
    assert [r["tokens_source"] for r in rows] == [TOKENS_GIVEN] * 3
    # lo=50, hi=300: correct 100 -> 0.5-0.2=0.3, correct 300 -> -0.5, wrong 50 -> min(0,0.5)=0
    assert [r["length"] for r in rows] == pytest.approx([0.3, -0.5, 0.0])
    assert rows[0]["score"] == pytest.approx(0.9 + 0.1 + 0.2 * 0.3)
    assert rows[2]["score"] == pytest.approx(0.1)

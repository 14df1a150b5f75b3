"""Format: one closed thinking block, then a boxed or tagged final answer."""

from __future__ import annotations

import pytest

from mmr.rewards.format import score_format

FORMAT = [
    (r"<think>work</think> \boxed{3}", 1.0),
    ("<think>work</think>\n<answer>3</answer>", 1.0),
    (r"<think>work</think> The answer is \boxed{\frac{1}{2}}.", 1.0),
    ("<think>\nmulti\nline\n</think>\n\n<answer>\nB\n</answer>", 1.0),
    ("<think>work</think> The answer is 3.", 0.0),  # no boxed / answer tag
    (r"<think>work \boxed{3}</think>", 0.0),  # the answer only inside the thinking
    (r"\boxed{3}", 0.0),  # no thinking
    (r"<think>work \boxed{3}", 0.0),  # never closed
    (r"</think> \boxed{3}", 0.0),  # closed, never opened
    (r"</think><think> \boxed{3}", 0.0),  # wrong order
    (r"<think>a</think><think>b</think> \boxed{3}", 0.0),  # two blocks
    (r"<think>a <think> b</think> \boxed{3}", 0.0),  # nested open
    ("<think>a</think><answer></answer>", 0.0),  # empty answer
    ("", 0.0),
]


@pytest.mark.parametrize("response,expected", FORMAT)
def test_score_format(response: str, expected: float) -> None:
    assert score_format("src", response, "3") == expected


def test_score_format_tolerates_non_strings() -> None:
    assert score_format(solution_str=None) == 0.0  # type: ignore[arg-type]

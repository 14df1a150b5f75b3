"""Format part: 1 when the response thinks once, closes the thinking, then answers.

Exactly one `<think>` and one `</think>`, in that order, and after `</think>` a final
answer in `\\boxed{...}` or `<answer>...</answer>`; anything else is 0.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["score_format"]

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{.*\}", re.S)
_ANSWER = re.compile(r"<answer>.*?\S.*?</answer>", re.S | re.I)


def score_format(
    data_source: str | None = None,
    solution_str: str = "",
    ground_truth: Any = None,
    extra_info: dict | None = None,
    **kwargs: Any,
) -> float:
    """verl's signature; only `solution_str` matters."""
    text = solution_str if isinstance(solution_str, str) else ""
    if text.count("<think>") != 1 or text.count("</think>") != 1:
        return 0.0
    opened, closed = text.index("<think>"), text.index("</think>")
    if closed < opened:
        return 0.0
    tail = text[closed + len("</think>") :]
    return 1.0 if _BOXED.search(tail) or _ANSWER.search(tail) else 0.0

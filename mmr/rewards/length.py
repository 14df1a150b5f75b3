"""Length part: the overthinking penalty (`length.mode: none | budget | group | both`).

- budget: 0 up to `budget_tokens`, then linear down to -1 at `max_tokens` and below that
  stays -1. This is DAPO's soft overlong punishment (its "overlong buffer" is
  `max_tokens - budget_tokens`); it applies to every response, right or wrong.
- group: Kimi k1.5's length reward inside a rollout group (same prompt). With the
  group's shortest and longest response lengths `lo`, `hi`:
  `lam = 0.5 - (len - lo) / (hi - lo)`; a correct response gets `lam` (shorter is
  better), a wrong one gets `min(0, lam)`, so a wrong answer never gains from being short.
  All lengths equal (or a group of one): 0.
- both: the sum of the two.

OpenMMReasoner's article describes an overthinking penalty but its public code has none;
this design is mmr's (see ARCHITECTURE.md §6).

Token counts come from the row's `response_tokens`, else from a tokenizer
(`length.tokenizer`), else `ceil(characters / length.chars_per_token)`; `count_tokens`
says which one it used.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from typing import Any

__all__ = ["budget_penalty", "count_tokens", "group_length_rewards", "length_parts"]

TOKENS_GIVEN = "response_tokens"
TOKENS_TOKENIZER = "tokenizer"
TOKENS_APPROX = "approx: characters / chars_per_token"


def budget_penalty(tokens: int, budget_tokens: int, max_tokens: int) -> float:
    """0 within the budget, then linear to -1 at `max_tokens` (DAPO's soft overlong penalty)."""
    if tokens <= budget_tokens:
        return 0.0
    if tokens >= max_tokens:
        return -1.0
    return -(tokens - budget_tokens) / (max_tokens - budget_tokens)


def group_length_rewards(lengths: Sequence[int], correct: Sequence[bool]) -> list[float]:
    """Kimi k1.5's group-relative length reward for one rollout group."""
    if not lengths:
        return []
    lo, hi = min(lengths), max(lengths)
    if hi == lo:
        return [0.0] * len(lengths)
    out = []
    for n, ok in zip(lengths, correct):
        lam = 0.5 - (n - lo) / (hi - lo)
        out.append(lam if ok else min(0.0, lam))
    return out


def count_tokens(
    text: str, given: Any = None, tokenizer: Any = None, chars_per_token: float = 4.0
) -> tuple[int, str]:
    """(token count, where it came from): the given count, the tokenizer, or an estimate."""
    if given is not None:
        try:
            value = int(given)
            if value >= 0:
                return value, TOKENS_GIVEN
        except (TypeError, ValueError):
            pass
    if tokenizer is not None:
        return len(tokenizer.encode(text, add_special_tokens=False)), TOKENS_TOKENIZER
    return math.ceil(len(text or "") / chars_per_token), TOKENS_APPROX


def length_parts(
    mode: str,
    tokens: Sequence[int],
    correct: Sequence[bool],
    groups: Sequence[Hashable],
    budget_tokens: int,
    max_tokens: int,
) -> list[float]:
    """The length part of every row of a batch; rows with equal `groups` form a group."""
    n = len(tokens)
    out = [0.0] * n
    if mode == "none":
        return out
    if mode in ("budget", "both"):
        for i in range(n):
            out[i] += budget_penalty(tokens[i], budget_tokens, max_tokens)
    if mode in ("group", "both"):
        members: dict[Hashable, list[int]] = {}
        for i, g in enumerate(groups):
            members.setdefault(g, []).append(i)
        for idx in members.values():
            rewards = group_length_rewards([tokens[i] for i in idx], [correct[i] for i in idx])
            for i, r in zip(idx, rewards):
                out[i] += r
    return out

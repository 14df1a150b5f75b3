"""Small statistics for held-out comparisons: the exact sign test, Wilson intervals, a
trailing mean. Pure functions on counts and lists (no scipy: it is not a dependency)."""

from __future__ import annotations

import math
from collections.abc import Sequence


def sign_test_p(k: int, n: int) -> float:
    """Two-sided exact sign test: P(a split at least as uneven as k of n | no difference)."""
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(k, n - k) + 1)) / 2**n
    return min(1.0, 2 * tail)


Z95 = 1.959963984540054  # the standard normal's 97.5% quantile


def wilson_interval(p: float, n: int, z: float = Z95) -> list[float]:
    """The Wilson score interval [low, high] of a proportion `p` seen on `n` trials (95% by
    default): unlike p +- z*se it stays inside [0, 1] and is not empty at p = 0 or 1."""
    if n <= 0:
        return [0.0, 1.0]
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [round(max(0.0, centre - half), 4), round(min(1.0, centre + half), 4)]


def smoothed(values: Sequence[float | None], window: int) -> list[float | None]:
    """Trailing mean over the last `window` values (fewer at the start; None skipped)."""
    out: list[float | None] = []
    for i in range(len(values)):
        seen = [v for v in values[max(0, i - window + 1) : i + 1] if v is not None]
        out.append(sum(seen) / len(seen) if seen else None)
    return out

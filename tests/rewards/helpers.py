"""Worker functions for VerifyPool tests (module level, so worker processes can import them)."""

from __future__ import annotations

import signal
import time

from mmr.rewards.verify import VerifyResult


def hang_on_request(
    pred: str, gold: str, parse_s: int, verify_s: int, explain: bool
) -> VerifyResult:
    """Equal strings are correct; "hang" blocks SIGALRM and sleeps, like a long C call."""
    if pred == "hang":
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
        time.sleep(60)
    return VerifyResult(pred == gold)


def echo_or_fail(text: str) -> str:
    """For `VerifyPool.map`: "boom" raises, "hang" sleeps past any limit, else echoes."""
    if text == "boom":
        raise ValueError("boom")
    if text == "hang":
        time.sleep(60)
    return text

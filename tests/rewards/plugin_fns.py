"""Plug-in reward functions for the tests (loaded as `tests.rewards.plugin_fns:NAME`)."""

from __future__ import annotations

import math


def constant(data_source, solution_str, ground_truth, extra_info=None, value=0.25, **kwargs):
    return value


def with_parts(data_source, solution_str, ground_truth, extra_info=None, **kwargs):
    return {"score": 0.5, "brevity": 0.2, "accuracy": 0.0}


def flaky(data_source, solution_str, ground_truth, extra_info=None, **kwargs):
    """Fails in different ways depending on the ground truth."""
    if ground_truth == "raise":
        raise RuntimeError(f"boom on {solution_str[:10]}")
    if ground_truth == "nan":
        return math.nan
    if ground_truth == "none":
        return None
    if ground_truth == "nodict":
        return {"value": 1.0}
    return 1.0


def hostile(data_source, solution_str, ground_truth, extra_info=None, **kwargs):
    """Misbehaves as the ground truth says (for the supervised-worker tests)."""
    import os
    import sys
    import time

    if ground_truth == "exit":
        os._exit(3)  # the worker process dies
    if ground_truth == "sysexit":
        sys.exit(2)
    if ground_truth == "hang":
        time.sleep(3600)
    if ground_truth == "inf":
        return math.inf
    if ground_truth == "text":
        return "great"
    if ground_truth == "raise":
        raise ValueError("bad plug-in")
    return 1.0

"""Plug-in reward functions: `path/to/file.py:fn` or `package.module:fn`, verl's signature.

    fn(data_source, solution_str, ground_truth, extra_info=None, **kwargs) -> float | dict

A dict has `score` plus named parts. Any verl reward function works here unchanged.
A plug-in runs for every rollout, so its failures are contained: if it raises, or returns
None, NaN or something without a score, that rollout's plug-in score is 0, its error is
counted, and the traceback is logged once per distinct error (same exception type at the
same line), not once per rollout.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import math
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["PluginRunner", "load_function"]

log = logging.getLogger(__name__)

RewardFn = Callable[..., Any]


def load_function(spec: str) -> RewardFn:
    """Import `path/to/file.py:fn` or `package.module:fn`; errors say what to fix."""
    target, sep, name = spec.rpartition(":")
    if not sep or not target or not name:
        raise ValueError(
            f"reward function {spec!r} must look like path/to/file.py:fn or package.module:fn"
        )
    if target.endswith(".py") or os.sep in target or "/" in target:
        path = Path(target).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"reward function file {path} does not exist (from {spec!r})")
        module_name = f"mmr_reward_plugin_{abs(hash(str(path.resolve())))}"
        loader_spec = importlib.util.spec_from_file_location(module_name, path)
        if loader_spec is None or loader_spec.loader is None:
            raise ImportError(f"cannot load {path} as a Python module (from {spec!r})")
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[module_name] = module  # lets pickling and dataclasses find it
        loader_spec.loader.exec_module(module)
    else:
        module = importlib.import_module(target)
    fn = getattr(module, name, None)
    if not callable(fn):
        raise AttributeError(f"{target} has no function {name!r} (from {spec!r})")
    return fn


class PluginRunner:
    """Calls a plug-in with containment: a bad result is 0 plus one logged traceback."""

    def __init__(self, fn: RewardFn, kwargs: dict[str, Any] | None = None, name: str = "") -> None:
        self.fn = fn
        self.kwargs = dict(kwargs or {})
        self.name = name or getattr(fn, "__name__", "plugin")
        self.errors = 0
        self._seen: set[tuple[str, str, int]] = set()

    def __call__(
        self, data_source: Any, solution_str: str, ground_truth: Any, extra_info: Any
    ) -> tuple[float, dict[str, float], str | None]:
        """(score, extra numeric parts, error message or None) for one rollout."""
        try:
            result = self.fn(
                data_source=data_source,
                solution_str=solution_str,
                ground_truth=ground_truth,
                extra_info=extra_info,
                **self.kwargs,
            )
            score, parts = _as_score(result)
        except Exception as err:
            self.errors += 1
            self._log_once(err)
            return 0.0, {}, f"plugin {self.name}: {type(err).__name__}: {str(err)[:200]}"
        return score, parts, None

    def _log_once(self, err: Exception) -> None:
        frames = traceback.extract_tb(err.__traceback__)
        where = (frames[-1].filename, frames[-1].lineno) if frames else ("?", 0)
        key = (type(err).__name__, *where)
        if key not in self._seen:
            self._seen.add(key)
            log.error(
                "reward plug-in %s failed; this rollout scores 0 (logged once per distinct "
                "error):\n%s",
                self.name,
                "".join(traceback.format_exception(type(err), err, err.__traceback__)),
            )


class PluginResultError(ValueError):
    """A plug-in returned something that is not a finite score."""


def _as_score(result: Any) -> tuple[float, dict[str, float]]:
    parts: dict[str, float] = {}
    if isinstance(result, dict):
        if "score" not in result:
            raise PluginResultError(f"returned a dict without 'score' (keys: {sorted(result)})")
        for key, value in result.items():
            if key != "score" and isinstance(value, (int, float)) and not isinstance(value, bool):
                parts[str(key)] = float(value)
        result = result["score"]
    if result is None or not isinstance(result, (int, float)):
        if result is not None and hasattr(result, "item"):  # numpy / torch scalars
            result = result.item()
        else:
            raise PluginResultError(f"returned {result!r}, not a number")
    score = float(result)
    if not math.isfinite(score):
        raise PluginResultError(f"returned a non-finite score ({score})")
    return score, parts

"""Plug-in reward functions: `path/to/file.py:fn` or `package.module:fn`, verl's signature.

    fn(data_source, solution_str, ground_truth, extra_info=None, **kwargs) -> float | dict

A dict has `score` plus named parts. Any verl reward function works here unchanged.
A plug-in runs for every rollout, so its failures are contained: if it raises (SystemExit
included), returns None, NaN, inf or something without a score, exits its process
(`os._exit`) or runs past `plugin.timeout_s`, that rollout's plug-in score is 0, its error
is counted, and the traceback is logged once per distinct error (same exception type at
the same line), not once per rollout. Plug-ins run supervised, in worker processes of the
same kind of pool as math-verify (`mmr.rewards.verify.VerifyPool`: a stuck or dead worker
is killed and replaced), so a batch always finishes in bounded time; `plugin.workers: 0`
runs them in this process instead, for debugging (no timeout there).
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

__all__ = ["PluginRunner", "call_plugin", "load_function"]

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


# An outcome of one call: (score, parts, None) or (0.0, {}, (message, error key, traceback)).
Outcome = tuple[float, dict[str, float], tuple[str, tuple, str] | None]

_LOADED: dict[str, RewardFn] = {}  # per process: a worker loads each plug-in once


def preload_plugin(spec: str) -> None:
    """Import a plug-in into this worker before it takes work (its import is not timed)."""
    _LOADED.setdefault(spec, load_function(spec))


def call_plugin(
    spec: str | RewardFn, kwargs: dict[str, Any], data_source: Any, solution_str: str,
    ground_truth: Any, extra_info: Any,
) -> Outcome:  # fmt: skip
    """One contained call (module level: it runs in the plug-in workers)."""
    try:
        if callable(spec):
            fn = spec
        else:
            fn = _LOADED.get(spec) or _LOADED.setdefault(spec, load_function(spec))
        result = fn(data_source=data_source, solution_str=solution_str,
                    ground_truth=ground_truth, extra_info=extra_info, **kwargs)  # fmt: skip
        score, parts = _as_score(result)
    except (Exception, SystemExit) as err:  # SystemExit: a plug-in may not end its worker
        frames = traceback.extract_tb(err.__traceback__)
        where = (frames[-1].filename, frames[-1].lineno) if frames else ("?", 0)
        text = "".join(traceback.format_exception(type(err), err, err.__traceback__))
        message = f"{type(err).__name__}: {str(err)[:200]}"
        return 0.0, {}, (message, (type(err).__name__, *where), text)
    return score, parts, None


class PluginRunner:
    """Calls a plug-in with containment: a bad result is 0 plus one logged traceback.

    `spec` is what `load_function` takes (the workers load it themselves); `fn`, when given,
    is the already loaded function, called in this process when `workers` is 0.
    """

    def __init__(
        self,
        spec: str,
        kwargs: dict[str, Any] | None = None,
        *,
        workers: int = 1,
        timeout_s: float = 5.0,
        fn: RewardFn | None = None,
    ) -> None:
        self.spec = spec
        self.fn = fn or load_function(spec)  # fails here, by name, before any worker starts
        self.kwargs = dict(kwargs or {})
        self.name = spec
        self.workers = workers
        self.timeout_s = timeout_s
        self.errors = 0
        self._seen: set[tuple] = set()
        self._pool: Any = None

    def __call__(
        self, data_source: Any, solution_str: str, ground_truth: Any, extra_info: Any
    ) -> tuple[float, dict[str, float], str | None]:
        """(score, extra numeric parts, error message or None) for one rollout."""
        return self.score_many([(data_source, solution_str, ground_truth, extra_info)])[0]

    def score_many(
        self, items: list[tuple[Any, str, Any, Any]]
    ) -> list[tuple[float, dict[str, float], str | None]]:
        """`__call__` for many rollouts: in the supervised workers, or in this process."""
        if self.workers == 0:
            outcomes = [call_plugin(self.fn, self.kwargs, *item) for item in items]
        else:
            tasks = [(self.spec, self.kwargs, *item) for item in items]
            outcomes = self._get_pool().map(call_plugin, tasks, failed=self._failed)
        out = []
        for score, parts, err in outcomes:
            if err is None:
                out.append((score, parts, None))
                continue
            message, key, text = err
            self.errors += 1
            if key not in self._seen:
                self._seen.add(key)
                log.error(
                    "reward plug-in %s failed; this rollout scores 0 (logged once per distinct "
                    "error):\n%s", self.name, text or message,
                )  # fmt: skip
            out.append((0.0, {}, f"plugin {self.name}: {message}"))
        return out

    def _failed(self, status: str) -> Outcome:
        # the pool's verdict on a call that timed out or whose worker died (os._exit)
        if status == "timeout":
            message = f"timeout: ran past plugin.timeout_s={self.timeout_s:g} s; worker replaced"
        else:
            message = status.replace("math-verify worker", "plug-in worker")
        return 0.0, {}, (message, ("pool", status.split(":")[0]), "")

    def _get_pool(self) -> Any:
        if self._pool is None:
            from mmr.rewards.verify import VerifyPool

            # The plug-in is imported as each worker starts (heavy imports such as torch
            # must not count against plugin.timeout_s), then each call is timed.
            self._pool = VerifyPool(
                num_workers=self.workers,
                hard_timeout_s=self.timeout_s,
                work_fn=call_plugin,
                initializer=(preload_plugin, (self.spec,)),
            )
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None


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

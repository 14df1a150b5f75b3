"""LLM judge: asks an OpenAI-compatible chat endpoint whether an answer matches the gold.

Used only for what the rules and math-verify could not confirm. Endpoint, model and key
come from `OPENAI_BASE_URL`, `OPENAI_MODEL_NAME`, `OPENAI_API_KEY` (OpenMMReasoner's
names) unless the config names them; `USE_LLM_JUDGE=True` turns it on.

Requests go through mmr's one client (`mmr.llm.client`, on openai's AsyncOpenAI) on one
event loop in a background thread, so any caller (a verl worker thread, an asyncio
program, the CLI) can use it, and the HTTP connections are reused across batches. At most
`concurrency` requests are in flight; each has a wall-clock timeout and `retries` retries
with exponential backoff; a reply without a clear verdict is retried like an HTTP error.
A verdict is cached by (question, gold, extracted answer): within a group of 16 rollouts
many answers repeat.

The judge never decides what training does when it fails: a request that errors, times
out, answers 5xx or a reply without a clear verdict returns None and the caller keeps the
rule result (a "judge fallback"). After `failure_threshold` failures in a row the judge is
considered down for `cooldown_s` and items fall back at once, so a dead or hung server
costs about one timeout per batch, not one per item. The API key is sent only in the
Authorization header; it is never logged, printed or written, and an error body that
echoes it is logged redacted.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import json
import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from mmr.llm import client as llm
from mmr.rewards.accuracy import QA
from mmr.rewards.config import JudgeConfig

__all__ = ["Judge", "JudgeUnavailable", "load_prompt", "parse_verdict"]

log = logging.getLogger(__name__)

_POSITIVE = {"correct", "yes", "true", "1", "right", "equivalent", "same", "match", "matches"}
_NEGATIVE = {
    "incorrect", "no", "false", "0", "wrong", "not correct", "not equivalent", "different",
    "not the same", "mismatch",
}  # fmt: skip
_WORDS = re.compile(
    r"\b(not correct|not equivalent|not the same|incorrect|correct|yes|no|true|false|wrong|"
    r"right|equivalent|mismatch)\b"
)
_THINK = re.compile(r"<think>.*?</think>", re.S | re.I)
_JSON_KEYS = (
    "verdict",
    "judgement",
    "judgment",
    "correct",
    "is_correct",
    "result",
    "score",
    "answer",
)


class JudgeUnavailable(RuntimeError):
    """The judge is enabled but has no endpoint."""


def load_prompt(path: str | None = None) -> str:
    """The judge prompt: the config's file, else the packaged one."""
    return llm.load_prompt("mmr.rewards", "judge", path)


def render_prompt(template: str, qa: QA) -> str:
    # str.replace, not str.format: LaTeX answers are full of braces.
    return (
        template.replace("{question}", qa.question or "(not given)")
        .replace("{ground_truth}", qa.gold)
        .replace("{answer}", qa.answer or "")
    )


def parse_verdict(reply: Any) -> bool | None:
    """True/False from a judge reply (a word, 1/0, yes/no, JSON), None when unclear."""
    if not isinstance(reply, str):
        return None
    text = _THINK.sub(" ", reply).strip().lower()
    if not text:
        return None
    start, end = text.find("{"), text.rfind("}")
    if 0 <= start < end:
        try:
            obj = json.loads(text[start : end + 1])
        except ValueError:
            obj = None
        if isinstance(obj, dict):
            for key in _JSON_KEYS:
                if key in obj:
                    return _value_verdict(obj[key])
    bare = text.strip(" \t\n.!*\"'`[]()")
    if bare in _POSITIVE:
        return True
    if bare in _NEGATIVE:
        return False
    verdicts = {m in _POSITIVE for m in _WORDS.findall(text)}
    return verdicts.pop() if len(verdicts) == 1 else None


def _value_verdict(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return True if value == 1 else False if value == 0 else None
    if isinstance(value, str):
        return parse_verdict(value)
    return None


class Judge:
    """Async, cached, bounded LLM judge with a synchronous `judge_many` front."""

    def __init__(self, cfg: JudgeConfig) -> None:
        self.cfg = cfg
        self.base_url = cfg.resolved_base_url()
        if not self.base_url:
            raise JudgeUnavailable(
                "the LLM judge is enabled but has no endpoint: set OPENAI_BASE_URL "
                "(e.g. http://host:8000/v1) or judge.base_url"
            )
        self.model = cfg.resolved_model()
        self.template = load_prompt(cfg.prompt_file)
        self.endpoint = llm.Endpoint.of(cfg, base_url=self.base_url, model=self.model)
        self._cache: OrderedDict[QA, bool] = OrderedDict()
        self._failures_in_row = 0
        self._down_until = 0.0
        self._logged: set[str] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._llm: llm.Client | None = None
        self._start_lock = threading.Lock()
        self.cache_hits = 0

    def __repr__(self) -> str:  # never show the key
        return f"Judge(base_url={self.base_url!r}, model={self.model!r})"

    @property
    def requests(self) -> int:
        """HTTP requests sent, retries included."""
        return self._llm.requests if self._llm is not None else 0

    # -- public -------------------------------------------------------------------------

    def judge_many(self, items: Sequence[QA]) -> list[bool | None]:
        """Verdicts for extracted answers; None where the judge failed."""
        keys = [QA(qa.question or "", str(qa.gold), qa.answer) for qa in items]
        todo = []
        for key in dict.fromkeys(keys):
            if key in self._cache:
                self._cache.move_to_end(key)
                self.cache_hits += 1
            else:
                todo.append(key)
        fresh: dict[QA, bool | None] = {}
        if todo:
            future = asyncio.run_coroutine_threadsafe(self._judge_all(todo), self._ensure_loop())
            try:
                fresh = future.result(timeout=self._deadline())
            except (
                concurrent.futures.TimeoutError
            ):  # the backstop: per-request timeouts should come first
                future.cancel()
                self._log_once("deadline", "judge batch passed its deadline; rest falls back")
        out: list[bool | None] = []
        for key in keys:
            out.append(self._cache[key] if key in self._cache else fresh.get(key))
        return out

    def close(self) -> None:
        if self._loop is None:
            return
        loop, self._loop = self._loop, None
        if self._llm is not None:
            # Closing is best effort: the process may be exiting.
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self._llm.aclose(), loop).result(timeout=5)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=5)

    # -- internals ----------------------------------------------------------------------

    def _deadline(self) -> float:
        cfg = self.cfg
        backoff = sum(cfg.backoff_s * 2**i for i in range(cfg.retries))
        return (cfg.retries + 1) * cfg.timeout_s + backoff + 5.0

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        with self._start_lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                self._thread = threading.Thread(
                    target=loop.run_forever, name="mmr-judge", daemon=True
                )
                self._thread.start()
                asyncio.run_coroutine_threadsafe(self._setup(), loop).result()
                self._loop = loop
                # Close the HTTP client at exit too (a judge nobody closed would otherwise
                # leave aiohttp warning "Unclosed client session" as the process ends).
                atexit.register(self.close)
            return self._loop

    async def _setup(self) -> None:
        # Made on the judge's loop: the client's connections belong to it.
        self._llm = llm.Client(self.endpoint)

    async def _judge_all(self, keys: list[QA]) -> dict:
        verdicts = await asyncio.gather(*(self._judge_one(k) for k in keys))
        return dict(zip(keys, verdicts))

    async def _judge_one(self, key: QA) -> bool | None:
        assert self._llm is not None
        messages = [{"role": "user", "content": render_prompt(self.template, key)}]
        result = await self._llm.chat(
            messages,
            _verdict,
            proceed=self._is_up,
            on_failure=self._note_failure,
            temperature=0.0,
            max_tokens=self.cfg.max_tokens,
        )
        if result.error is not None:
            return None
        self._failures_in_row = 0
        self._remember(key, result.value)
        return result.value

    def _is_up(self) -> bool:
        return time.monotonic() >= self._down_until

    def _note_failure(self, reason: str, detail: str) -> None:
        self._failures_in_row += 1
        self._log_once(
            reason, f"LLM judge request failed ({reason}: {detail}); using the rule result"
        )
        if self._failures_in_row >= self.cfg.failure_threshold:
            self._down_until = time.monotonic() + self.cfg.cooldown_s
            self._failures_in_row = 0
            self._log_once(
                "down",
                f"LLM judge at {self.base_url} failed {self.cfg.failure_threshold} times in a "
                f"row; skipping it for {self.cfg.cooldown_s} s at a time",
            )

    def _remember(self, key: QA, verdict: bool) -> None:
        self._cache[key] = verdict
        while len(self._cache) > self.cfg.cache_size:
            self._cache.popitem(last=False)

    def _log_once(self, kind: str, message: str) -> None:
        if kind not in self._logged:
            self._logged.add(kind)
            log.warning(message)


def _verdict(reply: str) -> bool:
    """The verdict of a reply; a reply without one is retried like a failed request."""
    verdict = parse_verdict(reply)
    if verdict is None:
        raise llm.MalformedReply(f"reply without a clear verdict: {reply[:80]!r}")
    return verdict

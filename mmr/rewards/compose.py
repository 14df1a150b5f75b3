"""The composite reward: `score = w_accuracy*accuracy + w_format*format + w_length*length`.

Weights default to OpenMMReasoner's 0.9 / 0.1; `length.weight` is set per recipe.
`score_batch` scores many rollouts at once, in stages, so each stage can be parallel:

1. per row: final-answer extraction, the format part, the relaxed rules (in the worker
   processes, chunked, for batches of at least `accuracy.chunk_size` rows; in-process for
   smaller ones, where a round trip would cost more than the work);
2. what the rules leave undecided goes to math-verify in the workers, each distinct
   (answer, gold) pair once;
3. what is still not confirmed goes to the LLM judge, if enabled (async, concurrent);
4. the length part, which needs the whole rollout group (rows with the same `group`);
5. the plug-in, if `function` is set (replace the total, or add to it).

Stage 4's group-relative term is the only part that needs the whole group. Where rows
are scored one at a time (verl's reward loop, `compute_score`), `add_group_length` adds
it afterwards, once the group is complete, and gives the `score` and `length` that
`score_batch` gives the same rows scored together.

Every row gets the same keys: `score`, `accuracy`, `format`, `length`, `judge` (None when
the judge gave no verdict), `judge_fallback` (the judge failed and the rule result
stood), `extracted_answer`, `decided_by`, `error`
(None or a message), `response_tokens`, `tokens_source`, and with a plug-in `plugin`,
`plugin_error` and the plug-in's own parts. A row never raises: bad input becomes `error` and a 0 score.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from omegaconf import OmegaConf

from mmr.config import config_from_dict, load_config, parse_overrides
from mmr.rewards.accuracy import QA, Decision, extract_final_answer, relaxed_match
from mmr.rewards.config import RewardConfig
from mmr.rewards.format import score_format
from mmr.rewards.length import count_tokens, length_parts
from mmr.rewards.plugins import PluginRunner
from mmr.rewards.verify import VerifyPool, VerifyResult

__all__ = [
    "VERL_KEYS",
    "RewardScorer",
    "add_group_length",
    "compute_score",
    "get_scorer",
    "score_batch",
    "shutdown",
    "summarize",
]

log = logging.getLogger(__name__)

PARTS = ("accuracy", "format", "length")
_UNDECIDED = Decision(None)


@dataclass
class _Row:
    """Working state of one rollout while the stages run."""

    response: str
    qa: QA  # its answer is set once the rules have extracted it
    data_source: Any
    extra_info: Any
    group: Any
    given_tokens: Any
    decision: Decision = _UNDECIDED
    correct: bool = False
    decided_by: str = ""
    judge: float | None = None
    judge_fallback: bool = False
    error: str | None = None
    format: float = 0.0


class RewardScorer:
    """Scores batches with one config; owns (shared) math-verify workers and the judge."""

    def __init__(self, cfg: RewardConfig | None = None) -> None:
        self.cfg = cfg or RewardConfig()
        self.judge_enabled = self.cfg.judge.is_enabled()
        self._judge: Any = None
        self._tokenizer: Any = None
        self._plugin: PluginRunner | None = None
        if self.cfg.function:
            plugin = self.cfg.plugin
            self._plugin = PluginRunner(self.cfg.function, plugin.kwargs,
                                        workers=plugin.workers, timeout_s=plugin.timeout_s)  # fmt: skip

    # -- the batch ----------------------------------------------------------------------

    def score_batch(self, items: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Score rollouts; each item has `response`, `ground_truth` and optional fields."""
        rows = [self._prepare(i, item) for i, item in enumerate(items)]
        self._run_rules(rows)
        self._run_math_verify(rows)
        if self.judge_enabled:
            self._run_judge(rows)
        tokens, sources = self._count_tokens(rows)
        lengths = length_parts(
            self.cfg.length.mode,
            tokens,
            [r.correct for r in rows],
            [r.group for r in rows],
            self.cfg.length.budget_tokens,
            self.cfg.length.max_tokens,
        )
        plugin = [None] * len(rows)
        if self._plugin is not None:
            plugin = self._plugin.score_many(
                [(r.data_source, r.response, r.qa.gold, r.extra_info) for r in rows]
            )
        return [
            self._finish(row, length, n, src, result)
            for row, length, n, src, result in zip(rows, lengths, tokens, sources, plugin)
        ]

    def _prepare(self, index: int, item: Mapping[str, Any]) -> _Row:
        if not isinstance(item, Mapping):
            item = {}
        extra = item.get("extra_info")
        question = item.get("question")
        if question is None and isinstance(extra, Mapping):
            question = extra.get("question")
        question = question if isinstance(question, str) else ""
        group = item.get("group")
        row = _Row(
            response=item.get("response") if isinstance(item.get("response"), str) else "",
            qa=QA(question, _as_text(item.get("ground_truth"))),
            data_source=item.get("data_source"),
            extra_info=extra,
            group=group_key(group, index),
            given_tokens=item.get("response_tokens"),
        )
        missing = [k for k in ("response", "ground_truth") if item.get(k) is None]
        if missing:
            row.error = f"missing field(s): {', '.join(missing)}"
            row.decided_by = "error"
        return row

    def _run_rules(self, rows: list[_Row]) -> None:
        todo = [r for r in rows if r.error is None]
        tasks = [(r.response, r.qa) for r in todo]
        acc = self.cfg.accuracy
        if acc.workers == 0 or len(tasks) < acc.chunk_size:
            results: list[Any] = [rule_stage(*task) for task in tasks]
        else:
            results = _get_pool(acc).map(rule_stage, tasks, failed=lambda status: status)
        for row, result in zip(todo, results):
            if isinstance(result, str):  # the worker timed out or raised on this row
                row.error = f"rules: {result}"
                row.decided_by = "timeout" if result == "timeout" else "error"
                continue
            row.format, answer, how, row.decision = result
            row.qa = replace(row.qa, answer=answer)
            if answer is None:
                row.decided_by = f"no answer ({how})"
            elif row.decision.correct is not None:
                row.correct = row.decision.correct
                row.decided_by = row.decision.rule

    def _run_math_verify(self, rows: list[_Row]) -> None:
        acc = self.cfg.accuracy
        todo = [r for r in rows if r.qa.answer is not None and r.decision.correct is None]
        if not acc.math_verify:
            for r in todo:
                r.decided_by = "rules: undecided"
            return
        send = []
        for r in todo:
            if len(r.qa.answer) > acc.max_answer_chars or len(r.qa.gold) > acc.max_answer_chars:
                r.decided_by = f"skipped: longer than {acc.max_answer_chars} chars"
            else:
                send.append(r)
        # Rollouts of one prompt repeat their answers: each distinct pair is verified once.
        unique = list(dict.fromkeys((r.qa.answer, r.qa.gold) for r in send))
        verdicts = dict(zip(unique, verify_pairs(unique, acc)))
        for r in send:
            result = verdicts[(r.qa.answer, r.qa.gold)]
            r.correct = result.correct
            r.decided_by = "math_verify" if result.status == "ok" else result.status
            if result.status != "ok":
                r.error = f"math-verify: {result.status}"

    def _run_judge(self, rows: list[_Row]) -> None:
        todo = [
            r
            for r in rows
            if r.qa.answer is not None and not r.correct and r.decision.correct is None
        ]
        if not todo:
            return
        judge = self._get_judge()
        if judge is None:
            verdicts: list[bool | None] = [None] * len(todo)
        else:
            verdicts = judge.judge_many([r.qa for r in todo])
        for r, verdict in zip(todo, verdicts):
            if verdict is None:
                r.judge_fallback = True
                continue
            r.judge = 1.0 if verdict else 0.0
            r.correct = verdict
            r.decided_by = "judge"

    def _count_tokens(self, rows: list[_Row]) -> tuple[list[int], list[str]]:
        cfg = self.cfg.length
        tokenizer = self._get_tokenizer() if cfg.mode != "none" else None
        counted = [
            count_tokens(r.response, r.given_tokens, tokenizer, cfg.chars_per_token) for r in rows
        ]
        return [c[0] for c in counted], [c[1] for c in counted]

    def _finish(
        self, row: _Row, length: float, tokens: int, source: str, plugin: Any = None
    ) -> dict[str, Any]:
        w = self.cfg.weights
        out: dict[str, Any] = {
            "score": 0.0,
            "accuracy": 1.0 if row.correct else 0.0,
            "format": row.format,
            "length": float(length),
            "judge": row.judge,
            "judge_fallback": row.judge_fallback,
            "extracted_answer": row.qa.answer,
            "decided_by": row.decided_by,
            "error": row.error,
            "response_tokens": tokens,
            "tokens_source": source,
        }
        if plugin is not None:
            plugin_score, parts, err = plugin
            out.update(parts)  # a plug-in part named like an mmr part replaces it
            out["plugin"] = plugin_score
            out["plugin_error"] = err is not None
            if err is not None:
                out["error"] = err if out["error"] is None else f"{out['error']}; {err}"
        total = (
            w.accuracy * out["accuracy"]
            + w.format * out["format"]
            + self.cfg.length.weight * out["length"]
        )
        if self._plugin is not None:
            if self.cfg.plugin.mode == "replace":
                total = out["plugin"]
            else:
                total += self.cfg.plugin.weight * out["plugin"]
        out["score"] = float(total)
        return out

    # -- lazily built helpers ------------------------------------------------------------

    def _get_judge(self) -> Any:
        if self._judge is None:
            from mmr.rewards.judge import Judge, JudgeUnavailable

            try:
                self._judge = Judge(self.cfg.judge)
            except JudgeUnavailable as err:
                log.warning("%s; every judged item falls back to the rule result", err)
                self._judge = False
        return self._judge or None

    def _get_tokenizer(self) -> Any:
        if self._tokenizer is None and self.cfg.length.tokenizer:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.cfg.length.tokenizer)
        return self._tokenizer

    @property
    def plugin_errors(self) -> int:
        return self._plugin.errors if self._plugin is not None else 0

    def close(self) -> None:
        if self._judge:
            self._judge.close()
        self._judge = None
        if self._plugin is not None:
            self._plugin.close()


def group_key(group: Any, index: int) -> Hashable:
    """The key that puts row `index` in its rollout group: a row without a `group` is its
    own group; a list or mapping id (JSON input may hold any value) is keyed by its JSON
    text."""
    if group is None:
        return ("__row__", index)
    try:
        hash(group)
    except TypeError:
        return ("__json__", json.dumps(group, sort_keys=True, default=str))
    return group


def _as_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):  # verl datasets sometimes hold a list of golds
        return str(value[0]) if len(value) == 1 else ", ".join(map(str, value))
    return str(value)


# ---------------------------------------------------------------------------------------
# Shared pools and scorers: RL calls score_batch every step, so nothing is rebuilt per call.

_LOCK = threading.Lock()
_POOLS: dict[tuple, VerifyPool] = {}
_SCORERS: dict[str, RewardScorer] = {}


def rule_stage(response: str, qa: QA) -> tuple[float, str | None, str, Decision]:
    """Stage 1 of one row (module level: it runs in the workers): format part, final answer,
    how it was found, and the relaxed rules' decision (undecided when there is no answer)."""
    fmt = score_format(solution_str=response)
    answer, how = extract_final_answer(response)
    decision = _UNDECIDED if answer is None else relaxed_match(answer, qa.gold, qa.question)
    return fmt, answer, how, decision


def _get_pool(acc: Any) -> VerifyPool:
    """The shared worker pool for these accuracy settings (started on first use)."""
    key = (
        max(1, acc.workers),
        acc.hard_timeout_s,
        acc.parse_timeout_s,
        acc.verify_timeout_s,
        acc.chunk_size,
    )
    with _LOCK:
        pool = _POOLS.get(key)
        if pool is None:
            pool = _POOLS[key] = VerifyPool(*key)
    return pool


def verify_pairs(
    pairs: list[tuple[str, str]], acc: Any, explain: bool = False
) -> list[VerifyResult]:
    """math-verify verdicts through the shared worker pool (in-process when workers=0)."""
    if not pairs:
        return []
    if acc.workers == 0 and threading.current_thread() is threading.main_thread():
        from mmr.rewards.verify import run_pair

        return [
            run_pair(p, g, acc.parse_timeout_s, acc.verify_timeout_s, explain) for p, g in pairs
        ]
    return _get_pool(acc).verify_many(pairs, explain=explain)


def get_scorer(cfg: RewardConfig | None = None) -> RewardScorer:
    """The cached scorer for a config (equal configs share one)."""
    cfg = cfg or RewardConfig()
    # The judge's environment variables are part of what the config means.
    judge = (cfg.judge.is_enabled(), cfg.judge.resolved_base_url(), cfg.judge.resolved_model())
    # dataclasses.asdict, not config_to_dict: this runs once per rollout on verl's reward
    # workers, and OmegaConf's structured round trip costs ~3 ms a call (~100x).
    key = json.dumps([asdict(cfg), judge], sort_keys=True, default=str)
    with _LOCK:
        scorer = _SCORERS.get(key)
        if scorer is None:
            scorer = _SCORERS[key] = RewardScorer(cfg)
    return scorer


def score_batch(
    items: Sequence[Mapping[str, Any]], config: RewardConfig | None = None
) -> list[dict[str, Any]]:
    """Score many rollouts (see the module docstring for the row keys)."""
    return get_scorer(config).score_batch(items)


# verl stacks each key over the batch and takes the key list from the first rollout, so
# every call returns exactly these keys, plus `judge` when the config turns the judge on
# (plug-in parts stay in score_batch's rows). `acc` (the accuracy part, 0 or 1) and `pred`
# (the extracted answer, "" when there is none) are the keys verl's validation metrics
# read: `acc` is its core accuracy, `pred` the vote of its majority-vote (`maj@n`) metrics.
VERL_KEYS = ("score", "acc", "pred", *PARTS, "judge_fallback")
_CONFIGS: dict[tuple, RewardConfig] = {}


def compute_score(
    data_source: Any,
    solution_str: str,
    ground_truth: Any,
    extra_info: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """verl's reward-function signature: one rollout, `score` plus every part.

    Safe to call from verl's worker threads (math-verify runs in worker processes). The
    config comes from `config=` (a RewardConfig, the nested mapping of one, or a YAML
    path) and `overrides=` (a list of `key=value`), both settable through verl's
    `reward.custom_reward_function.reward_kwargs` (`mmr rl train` sets `config` there), else
    from the `MMR_REWARD_CONFIG` environment variable, else defaults.
    A single rollout has no group, so the `group` length term is 0 here: `score_batch`
    or `add_group_length` (what mmr's verl bridge calls once a group is complete) adds it.
    Returns `VERL_KEYS`, and `judge` (1, 0, or None without a verdict) when the judge is on.
    """
    info = extra_info if isinstance(extra_info, Mapping) else {}
    item = {
        "response": solution_str,
        "ground_truth": ground_truth,
        "question": kwargs.get("question", info.get("question")),
        "data_source": data_source,
        "extra_info": extra_info,
        "response_tokens": kwargs.get("response_tokens", info.get("response_tokens")),
    }
    cfg = _resolve_config(kwargs.get("config"), kwargs.get("overrides"))
    row = score_batch([item], cfg)[0]
    given = {"acc": row["accuracy"], "pred": row["extracted_answer"] or "",
             "judge_fallback": float(row["judge_fallback"])}  # fmt: skip
    out = {key: given[key] if key in given else row[key] for key in VERL_KEYS}
    if cfg.judge.is_enabled():
        out["judge"] = row["judge"]
    return out


def add_group_length(
    rows: Sequence[Mapping[str, Any]],
    groups: Sequence[Hashable],
    config: RewardConfig | None = None,
) -> list[dict[str, Any]]:
    """Rows scored one at a time, plus the group-relative length term of their groups.

    Each row needs `score`, `length`, `accuracy` and `response_tokens` as the one-row
    scoring reported them; rows with equal `groups` entries form a rollout group. Returns
    copies whose `length` and `score` are what `score_batch` gives the same rollouts
    scored together with these groups (`length.mode: group|both`; other modes have no
    group term and the rows come back unchanged). "Correct" is `accuracy == 1`, as
    `score_batch` sets it, unless a plug-in replaces the `accuracy` part.
    """
    cfg = config or RewardConfig()
    out = [dict(row) for row in rows]
    if cfg.length.mode not in ("group", "both"):
        return out
    terms = length_parts(
        "group",
        [int(row["response_tokens"]) for row in out],
        [float(row["accuracy"]) == 1.0 for row in out],
        groups,
        cfg.length.budget_tokens,
        cfg.length.max_tokens,
    )
    # As in RewardScorer._finish: the length part is in the total unless a plug-in replaces it.
    in_total = not (cfg.function and cfg.plugin.mode == "replace")
    for row, term in zip(out, terms):
        row["length"] = float(row["length"]) + term
        if in_total:
            row["score"] = float(row["score"]) + cfg.length.weight * term
    return out


def _resolve_config(config: Any, overrides: Any) -> RewardConfig:
    if isinstance(config, RewardConfig):
        return config
    if isinstance(overrides, str):
        overrides = [overrides]
    overrides = tuple(overrides or ())
    if isinstance(config, Mapping):  # verl hands a nested DictConfig over as it is
        # Called once per rollout: the key is the mapping as given (a DictConfig resolved,
        # OmegaConf's cheap path); OmegaConf.create runs only on a miss.
        given = (
            OmegaConf.to_container(config, resolve=True)
            if OmegaConf.is_config(config)
            else dict(config)
        )
        key: tuple = ("mapping", json.dumps(given, sort_keys=True, default=str), overrides)
        if key not in _CONFIGS:  # interpolations in a plain mapping resolved here
            plain = OmegaConf.to_container(OmegaConf.create(given), resolve=True)
            merged = OmegaConf.merge(plain, parse_overrides(overrides))
            _CONFIGS[key] = config_from_dict(RewardConfig, merged, "compute_score's config=")
        return _CONFIGS[key]
    path = config or os.environ.get("MMR_REWARD_CONFIG") or None
    key = (path, overrides)
    if key not in _CONFIGS:
        _CONFIGS[key] = load_config(RewardConfig, path, list(overrides))
    return _CONFIGS[key]


def shutdown() -> None:
    """Stop the math-verify workers and judge clients (also done at exit)."""
    with _LOCK:
        pools, scorers = list(_POOLS.values()), list(_SCORERS.values())
        _POOLS.clear()
        _SCORERS.clear()
    for scorer in scorers:
        scorer.close()
    for pool in pools:
        pool.close()


def summarize(rows: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Counts and means of a scored batch (what the CLI prints and RL logs)."""
    rows = list(rows)
    n = len(rows)
    out: dict[str, Any] = {"rows": n}
    for key in ("score", *PARTS):
        values = [float(r[key]) for r in rows if r.get(key) is not None]
        out[f"mean_{key}"] = sum(values) / len(values) if values else 0.0
    judged = [r["judge"] for r in rows if r.get("judge") is not None]
    out["judged"] = len(judged)
    out["judge_fallback"] = sum(bool(r.get("judge_fallback")) for r in rows)
    out["errors"] = sum(r.get("error") is not None for r in rows)
    out["timeouts"] = sum(r.get("decided_by") == "timeout" for r in rows)
    out["no_answer"] = sum(r.get("extracted_answer") is None for r in rows)
    if "plugin" in (rows[0] if rows else {}):
        out["plugin_errors"] = sum(bool(r.get("plugin_error")) for r in rows)
    return out

"""Scoring and the accuracy table: `mmr.rewards` decides, this file only counts.

    records = score_generations(items, RewardConfig())      # items: response + ground truth
    table = accuracy_table(records)                         # {data_source: {...}, "all": {...}}
    print(format_table(table))

A record is one response with its question id, data_source, ground truth, the reward's
parts (`score`, `accuracy`, `format`, `extracted_answer`, `decided_by`, ...) and its token
count. The table has, per `data_source` and for `all`: questions, responses, accuracy
(mean over responses), pass@n (a question counts when any of its n responses is right),
format, mean response tokens, truncated and no-answer shares, judge fallbacks, errors, and
top_answer: the share of answers that equal the most common extracted answer (`all`: the
mean of the sources', weighted by responses). A top_answer near 1 on a source whose gold
answers vary is a model that answers one constant (a collapsed policy), whatever its
accuracy: on a source with k balanced answers that constant scores 1/k.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from mmr.rewards import RewardConfig, score_batch, summarize

__all__ = ["accuracy_table", "format_table", "score_generations", "write_report"]

REWARD_KEYS = ("score", "accuracy", "format", "length", "judge", "judge_fallback",
               "extracted_answer", "decided_by", "error")  # fmt: skip
COLUMNS = ("questions", "responses", "accuracy", "pass@n", "format", "mean_response_tokens",
           "truncated", "no_answer", "judge_fallback", "errors", "top_answer")  # fmt: skip


def score_generations(
    items: Sequence[Mapping[str, Any]], reward_cfg: RewardConfig | None = None
) -> list[dict[str, Any]]:
    """Score responses with `mmr.rewards.score_batch`; return one record per item.

    Each item has `response` and `ground_truth`, and optionally `id`, `data_source`,
    `question`, `response_tokens` and `truncated`; all of them are kept in the record.
    """
    rows = score_batch(
        [
            {"response": it.get("response"), "ground_truth": it.get("ground_truth"),
             "question": it.get("question"), "data_source": it.get("data_source"),
             "extra_info": {"id": it.get("id"), "question": it.get("question")},
             "response_tokens": it.get("response_tokens")}
            for it in items
        ],
        reward_cfg or RewardConfig(),
    )  # fmt: skip
    out = []
    for item, row in zip(items, rows):
        record = {**item, **{k: row.get(k) for k in REWARD_KEYS}}
        record["response_tokens"] = row.get("response_tokens")
        out.append(record)
    return out


def _row(records: list[Mapping[str, Any]]) -> dict[str, Any]:
    s = summarize(records)
    by_question: dict[Any, bool] = defaultdict(bool)
    for r in records:
        by_question[r.get("id")] |= bool(r["accuracy"])
    n = len(records)
    return {
        "questions": len(by_question),
        "responses": n,
        "accuracy": s["mean_accuracy"],
        "pass@n": sum(by_question.values()) / max(len(by_question), 1),
        "format": s["mean_format"],
        "mean_response_tokens": sum(r["response_tokens"] or 0 for r in records) / max(n, 1),
        "truncated": sum(bool(r.get("truncated")) for r in records) / max(n, 1),
        "no_answer": s["no_answer"] / max(n, 1),
        "judge_fallback": s["judge_fallback"],
        "errors": s["errors"],
        "top_answer": top_answer_share(records),
    }


def top_answer_share(records: Sequence[Mapping[str, Any]]) -> float:
    """The share of records whose extracted answer is the most common one (no answer counts
    as an answer of its own, so a model that never answers is collapsed too)."""
    answers = Counter(str(r.get("extracted_answer")).strip() for r in records)
    return answers.most_common(1)[0][1] / len(records) if records else 0.0


def accuracy_table(records: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """One row per `data_source` (sorted) and an `all` row over every record."""
    records = list(records)
    groups: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for r in records:
        groups[str(r.get("data_source") or "unknown")].append(r)
    table = {source: _row(groups[source]) for source in sorted(groups)}
    table["all"] = _row(records)
    # One constant across sources says nothing; the sources' shares, weighted, do.
    table["all"]["top_answer"] = sum(
        row["top_answer"] * row["responses"] for row in table.values() if row is not table["all"]
    ) / max(len(records), 1)
    return table


def format_table(table: Mapping[str, Mapping[str, Any]]) -> str:
    """The table as Markdown (what `mmr eval` prints and writes to accuracy.md)."""
    lines = ["| data_source | " + " | ".join(COLUMNS) + " |",
             "|---" * (len(COLUMNS) + 1) + "|"]  # fmt: skip
    for source, row in table.items():
        cells = [f"{row[c]:.3f}" if isinstance(row[c], float) else str(row[c]) for c in COLUMNS]
        lines.append(f"| {source} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(
    out_dir: str | Path, records: Sequence[Mapping[str, Any]], table: Mapping[str, Any],
    meta: Mapping[str, Any],
) -> Path:  # fmt: skip
    """OUT/generations.jsonl (one scored response a line), OUT/accuracy.json
    (`meta` and the table) and OUT/accuracy.md; returns OUT."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "generations.jsonl").open("w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, default=str) + "\n")
    (out / "accuracy.json").write_text(json.dumps({**meta, "table": table}, indent=2))
    (out / "accuracy.md").write_text(format_table(table) + "\n")
    return out

"""`mmr reward`: score a JSONL file of rollouts, or explain how one response is scored.

    mmr reward score --input rollouts.jsonl --output scored.jsonl [--config r.yaml] [k=v ...]
    mmr reward explain --response "<think>..</think> \\boxed{1/2}" --ground-truth 0.5

`score` reads rows with `response`, `ground_truth` and optional `question`,
`data_source`, `extra_info`, `group` (rollout group id) and `response_tokens`; it writes
each row back with `score`, `accuracy`, `format`, `length`, `judge`, `extracted_answer`,
`error` and the other row keys of mmr/rewards/compose.py, then prints a summary. It exits
0 when rows were scored (even if some had errors) and 2 for an unreadable input or a bad
config. `explain` prints each step: the extracted answer, which rule decided, math-verify's
parse of both sides, the judge's verdict, each part and the weighted total.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mmr.config import ConfigError, load_config
from mmr.rewards.config import RewardConfig

__all__ = ["main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmr reward", description="Score responses with the mmr reward."
    )
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    score = sub.add_parser("score", help="score a JSONL file of rollouts")
    score.add_argument("--input", required=True, help="JSONL rows: response, ground_truth, ...")
    score.add_argument("--output", required=True, help="JSONL file to write the scored rows to")
    score.add_argument(
        "--batch-rows",
        type=int,
        default=4096,
        help="rows scored at once (whole rollout groups; progress is shown per batch)",
    )
    _add_config_args(score)
    explain = sub.add_parser("explain", help="show each step of scoring one response")
    explain.add_argument("--response", required=True, help="the model's response text")
    explain.add_argument("--ground-truth", required=True, help="the gold answer")
    explain.add_argument("--question", default=None, help="the question (for option letters)")
    explain.add_argument(
        "--response-tokens", type=int, default=None, help="response length in tokens"
    )
    _add_config_args(explain)
    return parser


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, help="reward config YAML (RewardConfig schema)")
    p.add_argument("overrides", nargs="*", help="config overrides such as judge.enabled=true")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = load_config(RewardConfig, args.config, args.overrides)
    except ConfigError as err:
        print(f"mmr reward: bad config: {err}", file=sys.stderr)
        return 2
    from mmr.rewards.compose import get_scorer

    try:
        scorer = get_scorer(cfg)
    except (ImportError, OSError, AttributeError, ValueError) as err:
        print(f"mmr reward: bad config: cannot load reward.function: {err}", file=sys.stderr)
        return 2
    if args.action == "score":
        return _score(args, scorer)
    return _explain(args, scorer)


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{number} is not valid JSON ({err.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{number} is not a JSON object")
            rows.append(row)
    return rows


def group_batches(rows: Sequence[dict[str, Any]], size: int) -> list[list[int]]:
    """Row indices in batches of about `size` rows that never split a rollout group (rows
    with equal `group`; rows without one stand alone), so the group length term sees each
    group whole. Groups keep the order of their first row."""
    from mmr.rewards.compose import group_key  # the grouping score_batch uses

    groups: dict[Any, list[int]] = {}
    for i, row in enumerate(rows):
        groups.setdefault(group_key(row.get("group"), i), []).append(i)
    batches: list[list[int]] = [[]]
    for members in groups.values():
        if batches[-1] and len(batches[-1]) + len(members) > size:
            batches.append([])
        batches[-1].extend(members)
    return [b for b in batches if b]


def _score(args: argparse.Namespace, scorer: Any) -> int:
    from tqdm import tqdm

    from mmr.rewards.compose import summarize

    try:
        rows = _read_jsonl(Path(args.input))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        print(f"mmr reward score: cannot read the input: {err}", file=sys.stderr)
        return 2
    if args.batch_rows < 1:
        print("mmr reward score: --batch-rows must be >= 1", file=sys.stderr)
        return 2
    scored: list[Any] = [None] * len(rows)
    with tqdm(total=len(rows), desc="score", unit="rows", dynamic_ncols=True) as bar:
        for batch in group_batches(rows, args.batch_rows):
            for i, result in zip(batch, scorer.score_batch([rows[i] for i in batch])):
                scored[i] = result
            bar.update(len(batch))
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as f:
        for row, result in zip(rows, scored):
            f.write(json.dumps({**row, **result}, ensure_ascii=False) + "\n")
    summary = summarize(scored)
    sources = sorted({r["tokens_source"] for r in scored})
    print(f"mmr reward score: {summary['rows']} rows -> {out}")
    print(
        "  mean  score {mean_score:.4f}  accuracy {mean_accuracy:.4f}  format {mean_format:.4f}"
        "  length {mean_length:.4f}".format(**summary)
    )
    print(
        "  counts  errors {errors}  timeouts {timeouts}  no answer {no_answer}  judged {judged}"
        "  judge fallbacks {judge_fallback}".format(**summary)
        + (f"  plugin errors {summary['plugin_errors']}" if "plugin_errors" in summary else "")
    )
    if scorer.cfg.length.mode != "none":
        print(f"  token counts from: {', '.join(sources)}")
    return 0


def _explain(args: argparse.Namespace, scorer: Any) -> int:
    from mmr.rewards.accuracy import extract_final_answer, relaxed_match
    from mmr.rewards.compose import verify_pairs

    cfg = scorer.cfg
    answer, how = extract_final_answer(args.response)
    print(f"extracted answer : {answer!r} ({how})")
    if answer is not None:
        decision = relaxed_match(answer, args.ground_truth, args.question)
        verdict = {True: "match", False: "no match", None: "undecided"}[decision.correct]
        print(f"relaxed rules    : {verdict}" + (f" ({decision.rule})" if decision.rule else ""))
        if cfg.accuracy.math_verify:
            mv = verify_pairs([(answer, args.ground_truth)], cfg.accuracy, explain=True)[0]
            print(f"math-verify parse: answer {mv.parsed_answer}  gold {mv.parsed_gold}")
            needed = "" if decision.correct is None else " (not needed: the rules decided)"
            print(
                f"math-verify      : {'equal' if mv.correct else 'not equal'} [{mv.status}]{needed}"
            )
    row = scorer.score_batch(
        [
            {
                "response": args.response,
                "ground_truth": args.ground_truth,
                "question": args.question,
                "response_tokens": args.response_tokens,
            }
        ]
    )[0]
    if not scorer.judge_enabled:
        judge = "not enabled (judge.enabled=true or USE_LLM_JUDGE=True)"
    elif row["judge"] is not None:
        judge = "correct" if row["judge"] else "incorrect"
    elif row["judge_fallback"]:
        judge = "no verdict (request failed; rule result kept)"
    else:
        judge = "not asked (rules or math-verify decided)"
    print(f"LLM judge        : {judge}")
    print(f"decided by       : {row['decided_by']}")
    w = cfg.weights
    print(f"accuracy         : {row['accuracy']:.4f}  x {w.accuracy}")
    print(f"format           : {row['format']:.4f}  x {w.format}")
    print(
        f"length           : {row['length']:.4f}  x {cfg.length.weight}  (mode {cfg.length.mode}, "
        f"{row['response_tokens']} tokens from {row['tokens_source']})"
    )
    if "plugin" in row:
        print(f"plugin           : {row['plugin']:.4f}  ({cfg.plugin.mode}, {cfg.function})")
    if row["error"]:
        print(f"error            : {row['error']}")
    print(f"score            : {row['score']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

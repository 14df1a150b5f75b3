"""`mmr reward score` and `mmr reward explain`, through `main(argv)` and `python -m`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mmr.rewards.cli import main

ROOT = Path(__file__).resolve().parents[2]
ROWS = [
    {"response": r"<think>t</think> \boxed{\frac{1}{2}}", "ground_truth": "0.5", "group": "a"},
    {"response": r"<think>t</think> \boxed{3}", "ground_truth": "0.5", "group": "a",
     "extra_info": {"id": 7}, "data_source": "math"},
    {"response": "The answer is (B).", "ground_truth": "B", "question": "Pick:\nA. x\nB. y"},
    {"ground_truth": "1"},
]  # fmt: skip
OUT_KEYS = {"score", "accuracy", "format", "length", "judge", "extracted_answer", "error"}


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_score_writes_input_plus_parts_and_a_summary(tmp_path, capsys) -> None:
    src, out = _write(tmp_path / "in.jsonl", ROWS), tmp_path / "sub" / "out.jsonl"
    assert main(["score", "--input", str(src), "--output", str(out), "length.mode=budget"]) == 0
    scored = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(scored) == 4
    for row, original in zip(scored, ROWS):
        assert set(row) >= OUT_KEYS
        assert {k: row[k] for k in original} == original  # the input is kept as is
    assert [r["accuracy"] for r in scored] == [1.0, 0.0, 1.0, 0.0]
    assert scored[3]["error"] and scored[0]["error"] is None and scored[0]["judge"] is None
    printed = capsys.readouterr().out
    assert "4 rows" in printed and "errors 1" in printed and "judge fallbacks 0" in printed
    assert "token counts from: approx" in printed  # says which approximation it used


def test_group_batches_never_split_a_group() -> None:
    from mmr.rewards.cli import group_batches

    rows = [{"group": g} for g in ["a", "b", "a", None, "c", "b", "c", "c", None]]
    batches = group_batches(rows, size=3)
    assert sorted(i for b in batches for i in b) == list(range(len(rows)))
    for batch in batches:
        groups = {rows[i]["group"] for i in batch} - {None}
        assert all(rows[j]["group"] not in groups for b in batches if b is not batch for j in b)
    assert batches == [[0, 2], [1, 5, 3], [4, 6, 7], [8]]  # groups whole, in first-row order
    assert group_batches(rows, size=100) == [[0, 2, 1, 5, 3, 4, 6, 7, 8]]
    # Ids that score_batch groups together (1 == 1.0) stay in one batch.
    assert group_batches([{"group": 1}, {"group": "x"}, {"group": 1.0}], size=1) == [[0, 2], [1]]


def test_score_in_batches_equals_one_batch(tmp_path) -> None:
    # Rows of a group far apart in the file, a group term that needs the whole group.
    rows = [
        {"response": "<think>" + "w " * n + rf"</think> \boxed{{{a}}}", "ground_truth": "4",
         "group": g, "response_tokens": n}
        for n, a, g in [(10, 4, "x"), (50, 4, "y"), (30, 4, "x"), (20, 5, "y"), (70, 4, "x"),
                        (40, 4, "z"), (25, 4, "y")]
    ]  # fmt: skip
    src = _write(tmp_path / "in.jsonl", rows)
    outs = []
    for size in ("1", "4096"):
        out = tmp_path / f"out{size}.jsonl"
        args = ["score", "--input", str(src), "--output", str(out), "--batch-rows", size]
        assert main([*args, "length.mode=group", "length.weight=0.5"]) == 0
        outs.append([json.loads(line) for line in out.read_text().splitlines()])
    assert outs[0] == outs[1]
    assert len({r["length"] for r in outs[0]}) > 2  # the group term did something


@pytest.mark.parametrize(
    "content,args",
    [(None, []), ("{not json\n", []), ('["a list"]\n', []),
     ('{"response": "x", "ground_truth": "1"}\n', ["weights.acuracy=1"]),
     ('{"response": "x", "ground_truth": "1"}\n', ["length.mode=sometimes"]),
     ('{"response": "x", "ground_truth": "1"}\n', ["function=/no/such/file.py:fn"])],
    ids=["missing", "bad-json", "not-object", "unknown-key", "bad-choice", "bad-function"],
)  # fmt: skip
def test_score_exit_2_for_bad_input_or_config(tmp_path, capsys, content, args) -> None:
    src = tmp_path / "in.jsonl"
    if content is not None:
        src.write_text(content)
    code = main(["score", "--input", str(src), "--output", str(tmp_path / "o.jsonl"), *args])
    assert code == 2
    assert "mmr reward" in capsys.readouterr().err


def test_score_with_config_file(tmp_path, capsys) -> None:
    cfg = tmp_path / "reward.yaml"
    cfg.write_text("weights:\n  accuracy: 1.0\n  format: 0.0\n")
    src, out = _write(tmp_path / "in.jsonl", ROWS[:1]), tmp_path / "out.jsonl"
    assert main(["score", "--input", str(src), "--output", str(out), "--config", str(cfg)]) == 0
    assert json.loads(out.read_text())["score"] == 1.0


def test_explain_prints_every_step(capsys) -> None:
    code = main(["explain", "--response", r"<think>t</think> \boxed{x^2-1}",
                 "--ground-truth", "(x-1)(x+1)", "length.mode=budget"])  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    for needle in ("extracted answer : 'x^2-1' (boxed)", "relaxed rules    : undecided",
                   "math-verify parse: answer [x**2 - 1", "math-verify      : equal",
                   "LLM judge        : not enabled", "decided by       : math_verify",
                   "accuracy         : 1.0000  x 0.9", "format           : 1.0000  x 0.1",
                   "length           : 0.0000", "score            : 1.0000"):  # fmt: skip
        assert needle in out, out


def test_explain_shows_the_answers_of_a_hedge(capsys) -> None:
    code = main(["explain", "--response", r"<think>t</think> \boxed{3} or \boxed{4}",
                 "--ground-truth", "4"])  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    assert "extracted answer : '3, 4' (boxed: 2 different answers)" in out, out
    assert "decided by       : rule:hedge" in out and "accuracy         : 0.0000" in out


def test_explain_with_choices_and_judge(judge, capsys) -> None:
    judge.script = lambda prompt: "INCORRECT"
    code = main(["explain", "--response", "<think>t</think> <answer>y</answer>",
                 "--ground-truth", "B", "--question", "Pick:\nA. x\nB. y"])  # fmt: skip
    assert code == 0
    assert "relaxed rules    : match (rule:choice)" in capsys.readouterr().out
    code = main(["explain", "--response", r"<think>t</think> \boxed{two}",
                 "--ground-truth", "2", "judge.enabled=true"])  # fmt: skip
    assert "LLM judge        : incorrect" in capsys.readouterr().out


def test_help_and_module_entry_point() -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = subprocess.run(
        [sys.executable, "-m", "mmr.rewards.cli", "score", "--help"],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    assert out.returncode == 0 and "--input" in out.stdout

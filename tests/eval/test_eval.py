"""`mmr eval` on CPU: scoring through mmr.rewards, the table, the files, and real HF generation
with a tiny model (whose accuracy is whatever it is: the teacher test pins the scoring)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mmr.data.io import write_samples
from mmr.data.synthetic import KINDS, generate_tasks, teacher_response
from mmr.eval import accuracy_table, format_table, score_generations
from mmr.eval.cli import main
from mmr.eval.generate import resolve_backend, resolve_temperature
from mmr.rewards import RewardConfig

FAST = RewardConfig()
FAST.accuracy.workers = 0  # math-verify in this thread: no worker start-up


def _items(samples, responses):
    return [
        {"id": s.id, "data_source": s.source, "question": s.question, "ground_truth": s.answer,
         "response": r, "response_tokens": 10}
        for s, r in zip(samples, responses)
    ]  # fmt: skip


def test_teacher_responses_score_one_and_wrong_ones_zero() -> None:
    samples = generate_tasks(2 * len(KINDS), split="test")
    right = score_generations(_items(samples, [teacher_response(s) for s in samples]), FAST)
    wrong = score_generations(
        _items(samples, ["<think>no idea</think> \\boxed{99}"] * len(samples)), FAST
    )
    table = accuracy_table(right + wrong)
    kinds = {f"synthetic/{k}" for k in KINDS}
    assert set(table) == kinds | {"all"}
    for source in kinds:
        row = table[source]
        assert (row["questions"], row["responses"]) == (2, 4)
        assert row["accuracy"] == 0.5 and row["pass@n"] == 1.0 and row["format"] == 1.0
    assert accuracy_table(right)["all"]["accuracy"] == 1.0
    assert all(r["decided_by"] and r["extracted_answer"] is not None for r in right)
    assert format_table(table).splitlines()[0].startswith("| data_source | questions")


def test_top_answer_shows_a_model_that_answers_one_constant() -> None:
    # 8 count tasks with answers 1-4, twice each: a collapsed model answers "2" to every one
    # and still scores 1/4; a model that reads the image answers each its own.
    samples = [s for s in generate_tasks(80, split="test", kinds=["count"], levels=[1])]
    by_answer = {a: [s for s in samples if s.answer == a][:2] for a in "1234"}
    samples = [s for pair in by_answer.values() for s in pair]
    constant = score_generations(_items(samples, ["<think>two</think> \\boxed{2}"] * 8), FAST)
    reading = score_generations(_items(samples, [teacher_response(s) for s in samples]), FAST)
    collapsed, varied = accuracy_table(constant), accuracy_table(reading)
    assert collapsed["synthetic/count"]["top_answer"] == 1.0
    assert collapsed["synthetic/count"]["accuracy"] == 0.25
    assert varied["synthetic/count"]["top_answer"] == 0.25
    # `all` weighs each source's share by its responses, never one constant across sources.
    colour = generate_tasks(4, split="test", kinds=["colour"], levels=[1])
    mixed = constant + score_generations(_items(colour, ["\\boxed{2}"] * 4), FAST)
    assert accuracy_table(mixed)["all"]["top_answer"] == 1.0
    assert accuracy_table(reading + constant)["all"]["top_answer"] == (0.25 * 8 + 8) / 16
    assert "top_answer" in format_table(collapsed).splitlines()[0]


def test_backend_and_temperature_rules() -> None:
    assert resolve_backend("hf") == "hf"
    with pytest.raises(ValueError, match="backend"):
        resolve_backend("tgi")
    assert resolve_temperature(1, None) == 0.0 and resolve_temperature(4, None) == 1.0
    assert resolve_temperature(1, 0.7) == 0.7


def test_mmr_eval_tiny_model_hf(tiny_qwen2_5_vl: Path, tmp_path: Path, capsys) -> None:
    data = tmp_path / "test.parquet"
    write_samples(data, generate_tasks(4, split="test"))
    out = tmp_path / "eval"
    argv = ["--model", str(tiny_qwen2_5_vl), "--data", str(data), "--backend", "hf",
            "--n", "2", "--max-new-tokens", "6", "--output", str(out), "accuracy.workers=0"]  # fmt: skip
    assert main(argv) == 0
    lines = [json.loads(x) for x in (out / "generations.jsonl").read_text().splitlines()]
    assert len(lines) == 8
    assert {"id", "response", "accuracy", "format", "extracted_answer", "response_tokens"} <= set(
        lines[0]
    )
    assert all(0 <= r["response_tokens"] <= 6 for r in lines)
    report = json.loads((out / "accuracy.json").read_text())
    assert report["backend"] == "hf" and report["n"] == 2 and report["temperature"] == 1.0
    assert report["table"]["all"]["responses"] == 8 and report["table"]["all"]["questions"] == 4
    assert 0.0 <= report["table"]["all"]["accuracy"] <= 1.0
    assert "| all |" in (out / "accuracy.md").read_text()
    assert "| synthetic/count |" in capsys.readouterr().out


def test_mmr_eval_bad_input_exits_2(tmp_path: Path) -> None:
    argv = ["--model", str(tmp_path), "--data", str(tmp_path / "missing.jsonl")]
    assert main(argv) == 2
    assert main([*argv, "accuracy.nope=1"]) == 2

"""Accuracy: answer extraction, relaxed rules, math-verify in workers, pathological inputs."""

from __future__ import annotations

import time

import pytest

from mmr.rewards import score_batch
from mmr.rewards.accuracy import (
    extract_final_answer,
    normalize_answer,
    parse_choices,
    relaxed_match,
)
from mmr.rewards.config import RewardConfig
from mmr.rewards.verify import VerifyPool
from tests.rewards.helpers import echo_or_fail, hang_on_request

T = "<think>reasoning</think> "

EXTRACT = [
    (T + r"So \boxed{42}.", "42", "boxed"),
    (T + r"\boxed{\frac{1}{2}}", r"\frac{1}{2}", "boxed"),
    (T + r"\boxed{\left\{ 1, 2 \right\}}", r"\left\{ 1, 2 \right\}", "boxed"),
    (T + r"\boxed{a_{n}=2^{n}}", r"a_{n}=2^{n}", "boxed"),
    # a hedge keeps every answer (scored 0 against a gold of one part: tests/rewards/test_hacks.py)
    (T + r"\boxed{A} or \boxed{B}", "A, B", "boxed: 2 different answers"),
    (T + r"\boxed{4} so \boxed{4}", "4", "boxed"),
    (T + r"\boxed {7}", "7", "boxed"),
    (T + r"\fbox{9}", "9", "boxed"),
    (T + r"\boxed{3} and then \boxed{4", "3", "boxed"),  # truncated last box: the one before
    (T + "<answer>12 cm</answer>", "12 cm", "answer tag"),
    (T + r"<answer>The value is \boxed{5}</answer>", "5", "boxed"),
    (T + "<answer>1</answer> <answer>2</answer>", "1, 2", "answer tag: 2 different answers"),
    (T + "The answer is 17.", "17", "answer is"),
    (T + "Final answer: **C**", "C", "final answer statement"),
    (T + r"\boxed{5} in the working. Final answer: $7$", "7", "final answer statement"),
    (T + "Answer: The largest n is 34", "34", "answer is"),
    (T + "answer = x+1\nmore text", "x+1", "answer is"),
    ("No thinking tags, just \\boxed{8}", "8", "boxed"),
    (r"<think>the answer is \boxed{3}</think> I am not sure.", None, ""),
    (r"<think>\boxed{3} never closed", None, ""),
    (T, None, ""),
    ("", None, ""),
    (r"<think>a</think> \boxed{1} <think>b</think> \boxed{2}", "2", "boxed"),
]


@pytest.mark.parametrize("response,answer,how", EXTRACT)
def test_extract_final_answer(response: str, answer: str | None, how: str) -> None:
    got, got_how = extract_final_answer(response)
    assert got == answer
    if answer is not None:
        assert got_how == how


MATCH = [
    # (prediction, gold, question, expected: True / False / None = undecided)
    ("42", "42", None, True),
    (" 42 ", "42", None, True),
    ("Paris", "paris", None, True),
    (r"\text{Paris}", "Paris", None, True),
    (r"\mathrm{cos}", "cos", None, True),
    (r"\dfrac{1}{2}", r"\frac{1}{2}", None, True),
    (r"\tfrac12", r"\frac12", None, True),
    (r"\frac{1}{2}", "0.5", None, True),
    ("1/2", "0.5", None, True),
    ("0.50", "0.5", None, True),
    ("3.0", "3", None, True),
    ("1,234", "1234", None, True),
    ("1,234,567.50", "1234567.5", None, True),
    ("12 cm", "12", None, True),
    (r"12\text{ cm}", "12", None, True),
    ("5 apples", "5", None, False),  # a label is not a unit: only real units are stripped
    ("12cm", "12", None, True),
    (r"30^\circ", "30", None, True),
    (r"30^{\circ}", "30°", None, True),
    ("30 degrees", "30", None, True),
    (r"50\%", "50", None, True),
    ("50%", "0.5", None, True),
    (r"\$12.50", "12.5", None, True),
    ("$12$", "12", None, True),
    ("x = 5", "5", None, True),
    ("-3", "-3", None, True),
    ("1e3", "1000", None, True),
    ("3.1415926", "3.14159265", None, True),
    ("(1, 2]", "(1,2]", None, True),
    ("41", "42", None, False),
    ("0.51", "0.5", None, False),
    ("-3", "3", None, False),
    ("2x", "2", None, None),  # an expression, not a number with a unit
    (r"x^2+2x+1", "(x+1)^2", None, None),
    # multiple choice
    ("B", "B", None, True),
    ("(B)", "B", None, True),
    ("B.", "B", None, True),
    ("B. 12", "B", None, True),
    (r"\text{B}", "B", None, True),
    ("option b", "B", None, True),
    ("(C)", "B", None, False),
    ("12", "B", "What is it?\nA. 10\nB. 12\nC. 14", True),
    ("14", "B", "What is it?\nA. 10\nB. 12\nC. 14", False),
    ("B", "12", "What is it?\nA. 10\nB. 12\nC. 14", True),
    ("C", "12", "What is it?\nA. 10\nB. 12\nC. 14", False),
    ("blue", "C", "Which color? (A) red (B) green (C) blue (D) white", True),
    ("(D)", "C", "Which color? (A) red (B) green (C) blue (D) white", False),
    ("", "3", None, False),
]


@pytest.mark.parametrize("pred,gold,question,expected", MATCH)
def test_relaxed_match(pred: str, gold: str, question: str | None, expected: bool | None) -> None:
    assert relaxed_match(pred, gold, question).correct is expected


def test_parse_choices_forms() -> None:
    assert parse_choices("Q?\nA. one\nB) two\n(C) three") == {"A": "one", "B": "two", "C": "three"}
    assert parse_choices("Pick (A) 3 cm (B) 4 cm") == {"A": "3 cm", "B": "4 cm"}
    assert parse_choices("How many apples?") == {}
    assert parse_choices(None) == {}


def test_normalize_answer_strips_wrappers() -> None:
    assert normalize_answer(r"\text{\textbf{B}}") == "b"
    assert normalize_answer(r"\left( 1, 2 \right)") == "( 1, 2 )"


# End to end through score_batch: rules first, then math-verify in the worker processes.
END_TO_END = [
    (r"\boxed{\frac{2}{4}}", "0.5", 1.0),
    (r"\boxed{x^2+2x+1}", "(x+1)^2", 1.0),
    (r"\boxed{2\sqrt{2}}", r"\sqrt{8}", 1.0),
    (r"\boxed{(x-1)(x+1)}", "x^2-1", 1.0),
    (r"\boxed{[1, 2)}", r"x \in [1,2)", 1.0),
    (r"\boxed{\pi}", r"3.14159265358979", 1.0),
    (r"\boxed{\{1,2,3\}}", r"\{3,2,1\}", 1.0),
    (r"\boxed{x=3}", "3", 1.0),
    (r"\boxed{\sqrt{2}/2}", r"\frac{\sqrt{2}}{2}", 1.0),
    (r"\boxed{x^2+1}", "(x+1)^2", 0.0),
    (r"\boxed{(1,2)}", "[1,2]", 0.0),
    (r"\boxed{\frac{1}{3}}", "0.5", 0.0),
    (r"\boxed{C}", "B", 0.0),
    ("I do not know.", "4", 0.0),
]


def test_accuracy_end_to_end_table() -> None:
    items = [{"response": T + r, "ground_truth": g} for r, g, _ in END_TO_END]
    rows = score_batch(items)
    got = [(row["extracted_answer"], row["accuracy"], row["decided_by"]) for row in rows]
    assert [row["accuracy"] for row in rows] == [e for _, _, e in END_TO_END], got
    assert rows[1]["decided_by"] == "math_verify"
    assert rows[0]["decided_by"] == "rule:number"
    assert rows[-1]["decided_by"].startswith("no answer")


def test_answer_only_in_thinking_scores_zero() -> None:
    rows = score_batch([{"response": r"<think>\boxed{4}</think> hmm", "ground_truth": "4"}])
    assert rows[0]["accuracy"] == 0.0 and rows[0]["extracted_answer"] is None


PATHOLOGICAL = [
    "9" * 50_000,  # a 50,000-digit number
    r"\frac{1}{" * 300 + "2" + "}" * 300,  # 300 nested fractions
    "9^{9^{9^{9}}}",
    "+".join(f"x^{{{i}}}" for i in range(3000)),  # a 3,000-term sum
]


def test_pathological_inputs_are_bounded() -> None:
    cfg = RewardConfig()
    cfg.accuracy.parse_timeout_s = 1
    cfg.accuracy.verify_timeout_s = 1
    cfg.accuracy.max_answer_chars = 100_000  # let them all reach math-verify
    items = [{"response": T + rf"\boxed{{{p}}}", "ground_truth": "1"} for p in PATHOLOGICAL]
    start = time.monotonic()
    rows = score_batch(items, cfg)
    elapsed = time.monotonic() - start
    assert [r["accuracy"] for r in rows] == [0.0] * len(PATHOLOGICAL)
    assert elapsed < 8, f"pathological batch took {elapsed:.1f} s"
    assert any(r["decided_by"] == "timeout" for r in rows)


def test_overlong_answer_skips_math_verify() -> None:
    rows = score_batch([{"response": T + rf"\boxed{{{'x+' * 600}1}}", "ground_truth": "1"}])
    assert rows[0]["accuracy"] == 0.0
    assert rows[0]["decided_by"].startswith("skipped")


def test_hard_timeout_kills_a_stuck_worker_and_keeps_the_rest() -> None:
    # `hang_on_request` ignores SIGALRM on "hang", like a long C call math-verify cannot stop.
    with VerifyPool(num_workers=1, hard_timeout_s=0.5, work_fn=hang_on_request) as pool:
        pairs = [("1", "1"), ("hang", "1"), ("2", "2"), ("3", "4")]
        start = time.monotonic()
        results = pool.verify_many(pairs)
        assert time.monotonic() - start < 5
        assert [r.status for r in results] == ["ok", "timeout", "ok", "ok"]
        assert [r.correct for r in results] == [True, False, True, False]
        assert pool.timeouts == 1
        # the replacement worker serves the next call
        assert pool.verify_many([("5", "5")])[0].correct


def test_hard_timeout_counts_from_the_item_not_the_workers_warm_up() -> None:
    # A new worker warms math-verify up (~1 s) before its first chunk; a hard timeout
    # shorter than that must not kill it for the warm-up.
    with VerifyPool(num_workers=1, hard_timeout_s=0.3) as pool:
        results = pool.verify_many([("1", "1"), ("2", "3")])
        assert [(r.correct, r.status) for r in results] == [(True, "ok"), (False, "ok")]
        assert pool.timeouts == 0


def test_pool_map_contains_items_that_raise_or_hang() -> None:
    with VerifyPool(num_workers=1, hard_timeout_s=0.5) as pool:
        tasks = [("a",), ("boom",), ("hang",), ("b",)]
        out = pool.map(echo_or_fail, tasks, failed=lambda status: f"failed: {status}")
        assert out == ["a", "failed: error: ValueError: boom", "failed: timeout", "b"]
        assert pool.map(echo_or_fail, [("c",)], failed=str) == ["c"]


@pytest.mark.parametrize(
    "text",
    ["9" * 100_000, " " * 50_000 + "1", "answer is " + " " * 20_000, "(A) " * 20_000, "{" * 50_000],
)
def test_rules_stay_linear_on_long_inputs(text: str) -> None:
    start = time.monotonic()
    extract_final_answer(T + text)
    relaxed_match(text, text[:-1] + "x", question=text)
    assert time.monotonic() - start < 1.0

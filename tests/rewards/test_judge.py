"""LLM judge against a real local HTTP server: verdicts, cache, failures, bounds, secrets."""

from __future__ import annotations

import logging
import time

import pytest

from mmr.rewards import RewardConfig, RewardScorer
from mmr.rewards.accuracy import QA
from mmr.rewards.judge import Judge, load_prompt, parse_verdict, render_prompt
from tests.fake_openai import FakeJudgeServer, student_answer

T = "<think>t</think> "

VERDICTS = [
    ("CORRECT", True),
    ("INCORRECT", False),
    ("correct.", True),
    ("**Incorrect**", False),
    ("Yes", True),
    ("no", False),
    ("1", True),
    ("0", False),
    ("True", True),
    ("false", False),
    ('{"verdict": "correct"}', True),
    ('{"correct": false}', False),
    ('{"score": 1}', True),
    ('```json\n{"judgement": "no"}\n```', False),
    ("<think>hmm, is it correct? no wait</think>CORRECT", True),
    ("The student's answer is not correct.", False),
    ("The answer is equivalent to the reference.", True),
    ("banana", None),
    ("", None),
    ("correct or incorrect, hard to say", None),
    ('{"verdict": "maybe"}', None),
    ('{"score": 0.5}', None),
    (None, None),
    (42, None),
]


@pytest.mark.parametrize("reply,expected", VERDICTS)
def test_parse_verdict(reply: object, expected: bool | None) -> None:
    assert parse_verdict(reply) is expected


def test_prompt_is_packaged_and_keeps_latex_braces() -> None:
    prompt = render_prompt(load_prompt(), QA("Q {x}?", r"\frac{1}{2}", "{0.5}"))
    assert r"\frac{1}{2}" in prompt and "{0.5}" in prompt and "Q {x}?" in prompt


def _cfg(**judge: object) -> RewardConfig:
    cfg = RewardConfig()
    cfg.judge.enabled = True
    cfg.judge.timeout_s = 2.0
    cfg.judge.retries = 1
    cfg.judge.backoff_s = 0.01
    for key, value in judge.items():
        setattr(cfg.judge, key, value)
    return cfg


def _item(answer: str, gold: str = "2", question: str = "How many?") -> dict:
    return {"response": T + rf"\boxed{{{answer}}}", "ground_truth": gold, "question": question}


def _score(cfg: RewardConfig, items: list[dict]) -> tuple[list[dict], RewardScorer]:
    scorer = RewardScorer(cfg)
    try:
        return scorer.score_batch(items), scorer
    finally:
        scorer.close()


def test_judge_decides_what_rules_cannot(judge: FakeJudgeServer) -> None:
    judge.script = lambda p: "CORRECT" if student_answer(p) == "two" else "INCORRECT"
    rows, _ = _score(_cfg(), [_item("two"), _item("three"), _item("2"), _item("5")])
    assert [r["accuracy"] for r in rows] == [1.0, 0.0, 1.0, 0.0]
    assert [r["judge"] for r in rows] == [1.0, 0.0, None, None]
    assert rows[0]["decided_by"] == "judge" and rows[2]["decided_by"] == "rule:exact"
    # the rules decided "2" (match) and "5" (a plain-number mismatch): no request for them
    assert sorted(student_answer(r["body"]["messages"][0]["content"]) for r in judge.requests) == [
        "three",
        "two",
    ]
    assert judge.requests[0]["path"] == "/v1/chat/completions"
    assert judge.requests[0]["body"]["model"] == "judge"


def test_use_llm_judge_env_turns_it_on(judge: FakeJudgeServer, monkeypatch) -> None:
    monkeypatch.setenv("USE_LLM_JUDGE", "True")
    rows, _ = _score(RewardConfig(), [_item("two")])
    assert rows[0]["judge"] == 1.0
    monkeypatch.setenv("USE_LLM_JUDGE", "false")
    rows, _ = _score(RewardConfig(), [_item("two")])
    assert rows[0]["judge"] is None and not rows[0]["judge_fallback"]


def test_cache_by_question_gold_answer(judge: FakeJudgeServer) -> None:
    scorer = RewardScorer(_cfg())
    try:
        group = [_item("two") for _ in range(16)] + [_item("two", question="Other?")]
        rows = scorer.score_batch(group)
        assert all(r["judge"] == 1.0 for r in rows)
        assert len(judge.requests) == 2  # 16 identical answers -> one request
        scorer.score_batch([_item("two")])
        assert len(judge.requests) == 2  # cached across batches
    finally:
        scorer.close()


@pytest.mark.parametrize(
    "action",
    [("status", 500), ("status", 429), ("garbage", b"<html>oops</html>"),
     ("garbage", b'{"choices": []}'), "banana", ("drop", None)],
    ids=["500", "429", "html", "no-choices", "no-verdict", "dropped"],
)  # fmt: skip
def test_failures_fall_back_to_the_rule_result(judge: FakeJudgeServer, action: object) -> None:
    judge.script = lambda p: action
    rows, _scorer = _score(_cfg(retries=2), [_item("two"), _item("2")])
    assert rows[0]["accuracy"] == 0.0 and rows[0]["judge"] is None
    assert rows[0]["judge_fallback"] is True and rows[1]["judge_fallback"] is False
    assert len(judge.requests) == 3  # one try + two retries


def test_slow_server_times_out_and_falls_back(judge: FakeJudgeServer) -> None:
    judge.script = lambda p: ("sleep", 30.0)
    start = time.monotonic()
    rows, _ = _score(_cfg(timeout_s=0.3, retries=1), [_item("two"), _item("three")])
    # Two tries of 0.3 s; waiting for the reply would take 30 s. The bound leaves room for
    # a loaded 2-core machine (this is a stall check, not a speed test).
    assert time.monotonic() - start < 10.0
    assert all(r["judge_fallback"] for r in rows)


def test_server_down_falls_back_quickly(judge: FakeJudgeServer) -> None:
    cfg = _cfg(base_url="http://127.0.0.1:9/v1", retries=3)  # nothing listens on port 9
    start = time.monotonic()
    rows, _ = _score(cfg, [_item(f"x{i}") for i in range(50)])
    assert time.monotonic() - start < 3.0
    assert all(r["judge_fallback"] and r["accuracy"] == 0.0 for r in rows)


def test_hung_server_marks_the_judge_down_instead_of_stalling(judge: FakeJudgeServer) -> None:
    judge.script = lambda p: ("sleep", 60.0)
    cfg = _cfg(timeout_s=0.3, retries=2, concurrency=8, failure_threshold=8, cooldown_s=60)
    start = time.monotonic()
    rows, _ = _score(cfg, [_item(f"y{i}") for i in range(200)])
    # 200 items x 3 tries x 0.3 s / 8 would be 22 s; the breaker opens after one wave
    # (~0.3 s; the bound leaves room for a loaded machine, far below the stall)
    assert time.monotonic() - start < 8.0
    assert sum(r["judge_fallback"] for r in rows) == 200


def test_concurrency_is_bounded_and_used(judge: FakeJudgeServer) -> None:
    judge.latency_s = 0.1
    client = Judge(_cfg(concurrency=8).judge)
    try:
        client.judge_many([QA("warm", "up", "call")])  # connect and start the loop first
        start = time.monotonic()
        verdicts = client.judge_many([QA("q", "2", f"z{i}") for i in range(40)])
        elapsed = time.monotonic() - start
    finally:
        client.close()
    assert verdicts == [True] * 40
    assert 4 <= judge.max_in_flight <= 8
    assert elapsed < 1.5  # 5 waves of 0.1 s; one at a time would take 4 s


def test_api_key_is_sent_but_never_logged_or_written(
    judge: FakeJudgeServer, monkeypatch, caplog, tmp_path, capsys
) -> None:
    from mmr.rewards.cli import main

    secret = "sk-test-SECRET-0123456789"
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    judge.script = lambda p: ("status", 500)  # failures are what get logged
    caplog.set_level(logging.DEBUG)
    src = tmp_path / "in.jsonl"
    src.write_text('{"response": "<think>t</think> \\\\boxed{two}", "ground_truth": "2"}\n')
    out = tmp_path / "out.jsonl"
    code = main(["score", "--input", str(src), "--output", str(out), "judge.enabled=true",
                 "judge.retries=0", "judge.timeout_s=2"])  # fmt: skip
    assert code == 0
    assert judge.requests[-1]["headers"]["Authorization"] == f"Bearer {secret}"
    printed = capsys.readouterr()
    for text in (caplog.text, out.read_text(), printed.out, printed.err):
        assert secret not in text
    assert "judge fallbacks 1" in printed.out
    assert secret not in repr(Judge(_cfg().judge))


def test_an_error_body_echoing_the_key_is_logged_redacted(
    judge: FakeJudgeServer, monkeypatch, caplog
) -> None:
    secret = "sk-test-SECRET-0123456789"
    monkeypatch.setenv("OPENAI_API_KEY", secret)

    def auth() -> str:
        return judge.requests[-1]["headers"]["Authorization"]

    judge.script = lambda p: ("status", 500, f"proxy error for Authorization: {auth()}")
    caplog.set_level(logging.DEBUG)
    client = Judge(_cfg(retries=0).judge)
    try:
        assert client.judge_many([QA("q", "2", "two")]) == [None]
    finally:
        client.close()
    assert auth() == f"Bearer {secret}"
    assert "proxy error for Authorization: Bearer [redacted]" in caplog.text
    assert secret not in caplog.text


def test_httpx_client_when_aiohttp_is_missing(judge: FakeJudgeServer, monkeypatch) -> None:
    monkeypatch.setitem(__import__("sys").modules, "aiohttp", None)  # import fails
    judge.script = lambda p: "INCORRECT" if student_answer(p) == "three" else ("status", 500)
    client = Judge(_cfg(retries=0).judge)
    try:
        assert client.judge_many([QA("q", "2", "three"), QA("q", "2", "four")]) == [False, None]
        assert client._llm is not None and client._llm.transport == "httpx"
    finally:
        client.close()


def test_a_judge_left_open_is_closed_at_exit(judge: FakeJudgeServer) -> None:
    # A process that scores with the judge and exits without closing it (what verl's
    # reward workers do) must not end with aiohttp's "Unclosed client session" warning.
    import os
    import subprocess
    import sys

    judge.script = lambda p: "CORRECT"
    code = (
        "from mmr.rewards import RewardConfig, RewardScorer\n"
        "cfg = RewardConfig(); cfg.judge.enabled = True; cfg.judge.timeout_s = 2.0\n"
        "rows = RewardScorer(cfg).score_batch([{'response': '<think>t</think> \\\\boxed{two}',"
        " 'ground_truth': '2', 'question': 'How many?'}])\n"
        "assert rows[0]['judge'] == 1.0, rows\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ}, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "Unclosed" not in done.stderr, done.stderr

"""The demo's rule teacher behind mmr's one local server, asked by the pipeline's client:
known tasks get the rule teacher's trace (with `--max-rechecks`, its verbose variant),
anything else a 404 the client reports."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import urllib.request

import pytest

from mmr.data.io import read_samples
from mmr.data.pipeline.client import ChatClient, user_message
from mmr.data.pipeline.config import ClientConfig
from mmr.data.synthetic import recheck_count, teacher_response, write_synthetic
from mmr.data.teacher_server import RuleTeacher
from mmr.llm.server import OpenAIServer


def test_rule_teacher_answers_known_tasks_and_404s_the_rest(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    tasks = list(read_samples(write_synthetic(tmp_path / "tasks.parquet", 3, with_response=False)))
    others = list(
        read_samples(write_synthetic(tmp_path / "other.parquet", 1, seed=7, split="test"))
    )
    teacher = RuleTeacher([tmp_path / "tasks.parquet"])
    server = OpenAIServer(teacher).start()
    try:
        client = ChatClient(ClientConfig(api_base=server.base_url, retries=0))
        asked = [*tasks, others[0]]
        results = client.chat_many([user_message(s, s.question) for s in asked])
        with urllib.request.urlopen(server.base_url + "/models", timeout=5) as response:
            models = json.load(response)
    finally:
        server.stop()
    assert [r.text for r in results[:3]] == [teacher_response(s) for s in tasks]
    assert results[3].error == "http_404" and "not a task" in results[3].detail
    assert (teacher.served, teacher.unknown) == (3, 1)
    assert models["object"] == "list" and models["data"]


def test_max_rechecks_on_the_command_line_reaches_the_traces(tmp_path, monkeypatch):
    # `python -m mmr.data.teacher_server --max-rechecks 3` as a user starts it, asked over HTTP.
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    tasks = list(read_samples(write_synthetic(tmp_path / "t.parquet", 12, with_response=False)))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-u", "-m", "mmr.data.teacher_server", "--tasks",
           str(tmp_path / "t.parquet"), "--port", str(port), "--max-rechecks", "3"]  # fmt: skip
    server = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        assert "rule teacher for 12 tasks" in server.stdout.readline()
        client = ChatClient(ClientConfig(api_base=f"http://127.0.0.1:{port}/v1", retries=0))
        results = client.chat_many([user_message(s, s.question) for s in tasks])
    finally:
        server.terminate()
        server.wait(timeout=10)
    texts = [r.text for r in results]
    assert texts == [teacher_response(s, max_rechecks=3) for s in tasks]
    assert {recheck_count(s.meta, 3) for s in tasks} != {0}  # some traces carry re-checks
    assert [t.split("</think>")[1] for t in texts] == [
        teacher_response(s).split("</think>")[1] for s in tasks
    ]
    with pytest.raises(ValueError, match="max_rechecks"):
        RuleTeacher([tmp_path / "t.parquet"], max_rechecks=-1)
    with pytest.raises(ValueError, match="skip_lookup"):
        RuleTeacher([tmp_path / "t.parquet"], skip_lookup=2.0)
    teacher = RuleTeacher([tmp_path / "t.parquet"], skip_lookup=1.0)
    short = [teacher({"messages": user_message(s, s.question)}) for s in tasks]
    assert short == [teacher_response(s, skip_lookup=1.0) for s in tasks]
    assert sum(a != b for a, b in zip(short, texts)) >= 1  # the option-letter tasks' traces


def test_rule_judge_answers_mmrs_judge_through_its_real_client():
    # The demo's stand-in for GSPO's LLM judge: mmr.rewards' Judge (HTTP, retries, verdict
    # parsing) against RuleJudge served on 127.0.0.1, and compute_score with it on.
    from mmr.data.teacher_server import RuleJudge
    from mmr.llm.server import OpenAIServer
    from mmr.rewards import RewardConfig, score_batch
    from mmr.rewards.accuracy import QA
    from mmr.rewards.config import JudgeConfig
    from mmr.rewards.judge import Judge

    question = "<image>Which colour is the largest circle?\nA. red\nB. blue\nC. green\nD. grey"
    judge = RuleJudge()
    server = OpenAIServer(judge).start()
    cfg = JudgeConfig(enabled=True, base_url=server.base_url, model="rule-judge", retries=0)
    client = Judge(cfg)
    try:
        verdicts = client.judge_many([
            QA(question, "C", "green"),  # the option's text for its letter
            QA(question, "C", "Option C."),
            QA(question, "C", "B"),
            QA(question, "C", "blue"),
            QA("How many red shapes are there?", "3", "three"),
            QA("How many red shapes are there?", "3", "2"),
        ])  # fmt: skip
        # Not its prompt (another template, a plain chat): HTTP 400, not a guess.
        with urllib.request.urlopen(_chat(server.base_url, "Is 3 the same as three?")) as reply:
            pytest.fail(f"answered {reply.read()!r}")
    except urllib.error.HTTPError as err:
        assert err.code == 400
    finally:
        client.close()
    assert verdicts == [True, True, False, False, True, False]
    assert (judge.requests, judge.correct) == (6, 3)
    # In the reward: what the rules could not decide (math-verify could not confirm it)
    # goes to the judge; what they decided (a wrong letter) does not.
    rewards = RewardConfig(judge=cfg)
    asked = [("the green one", "C", question), ("the blue one", "C", question),
             ("three", "3", "How many red shapes are there?"), ("B", "C", question)]  # fmt: skip
    try:
        rows = score_batch(
            [{"response": rf"<think>so</think>\boxed{{{answer}}}", "ground_truth": gold,
              "question": q} for answer, gold, q in asked], rewards)  # fmt: skip
    finally:
        server.stop()
    assert [r["accuracy"] for r in rows] == [1.0, 0.0, 1.0, 0.0]
    assert [r["judge"] for r in rows] == [1.0, 0.0, 1.0, None]
    assert [r["decided_by"] for r in rows] == ["judge", "judge", "judge", "rule:choice"]
    assert not any(r["judge_fallback"] for r in rows)
    assert judge.requests == 6 + 3


def _chat(base_url: str, text: str) -> urllib.request.Request:
    body = {"model": "rule-judge", "messages": [{"role": "user", "content": text}]}
    return urllib.request.Request(
        base_url + "/chat/completions", data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"})  # fmt: skip

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

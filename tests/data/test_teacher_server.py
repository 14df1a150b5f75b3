"""The demo's rule teacher behind mmr's one local server, asked by the pipeline's client:
known tasks get the rule teacher's trace, anything else a 404 the client reports."""

from __future__ import annotations

import json
import urllib.request

from mmr.data.io import read_samples
from mmr.data.pipeline.client import ChatClient, user_message
from mmr.data.pipeline.config import ClientConfig
from mmr.data.synthetic import teacher_response, write_synthetic
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

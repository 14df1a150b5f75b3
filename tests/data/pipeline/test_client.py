"""The OpenAI-compatible client against a real local server: order, concurrency, retries,
failures reported (never raised), reasoning folded back into <think>."""

from __future__ import annotations

import pytest

from mmr.data.pipeline.client import ChatClient, MalformedReply, user_message
from mmr.data.pipeline.config import ClientConfig
from mmr.data.schema import Sample
from tests.fake_openai import image_count, prompt_text


def _client(server, **kw) -> ChatClient:
    cfg = ClientConfig(api_base=server.base_url, model="teacher", backoff_s=0.01, **kw)
    return ChatClient(cfg)


def _ask(text: str):
    return [{"role": "user", "content": text}]


def test_replies_in_order_with_bounded_concurrency(server):
    server.latency_s = 0.05
    server.script = lambda body: "echo " + prompt_text(body)
    results = _client(server, concurrency=4).chat_many([_ask(f"q{i}") for i in range(16)])
    assert [r.text for r in results] == [f"echo q{i}" for i in range(16)]
    assert server.max_in_flight <= 4
    body = server.bodies[0]
    assert body["model"] == "teacher" and body["max_tokens"] == 16384


def test_replicas_share_the_requests_each_with_its_own_bound(server):
    from mmr.llm.server import OpenAIServer

    replica = OpenAIServer(lambda body: "replica " + prompt_text(body)).start()
    try:
        server.latency_s = replica.latency_s = 0.05
        server.script = lambda body: "echo " + prompt_text(body)
        client = _client(server, concurrency=3, api_bases=[replica.base_url])
        results = client.chat_many([_ask(f"q{i}") for i in range(12)])
    finally:
        replica.stop()
    # Dealt in turn, answered in order, at most `concurrency` in flight at each endpoint.
    assert [r.text for r in results] == [
        f"{'echo' if i % 2 == 0 else 'replica'} q{i}" for i in range(12)
    ]
    assert len(server.requests) == len(replica.requests) == 6
    assert server.max_in_flight <= 3 and replica.max_in_flight <= 3
    assert replica.max_in_flight + server.max_in_flight > 3  # both served at once


def test_failures_are_retried_then_reported(server):
    calls: dict[str, int] = {}

    def script(body):
        q = prompt_text(body)
        calls[q] = calls.get(q, 0) + 1
        if q == "flaky" and calls[q] < 3:
            return ("status", 503)
        return {
            "down": ("status", 500),
            "garbage": ("garbage", b"<html>"),
            "drop": ("drop", None),
            "slow": ("sleep", 2.0),
        }.get(q, "fine")

    server.script = script
    prompts = ["flaky", "down", "garbage", "drop", "slow", "ok"]
    results = _client(server, retries=2, timeout_s=0.5).chat_many([_ask(p) for p in prompts])
    by = dict(zip(prompts, results))
    assert by["flaky"].text == "fine" and calls["flaky"] == 3
    assert by["down"].error == "http_500" and calls["down"] == 3
    assert by["garbage"].error == "malformed_reply"
    assert by["drop"].error == "connection"
    assert by["slow"].error == "timeout"
    assert by["ok"].text == "fine" and by["ok"].error is None


def test_parse_rejections_are_retried(server):
    replies = iter(["nonsense", "42"])
    server.script = lambda body: next(replies)

    def parse(text):
        if not text.isdigit():
            raise MalformedReply("no number")
        return int(text)

    (result,) = _client(server, retries=1).chat_many([_ask("n?")], parse=parse)
    assert result.value == 42 and len(server.requests) == 2


def test_reasoning_content_becomes_think(server):
    server.script = lambda body: ("reasoning", "step 1", "\\boxed{3}")
    (result,) = _client(server).chat_many([_ask("q")])
    assert result.text == "<think>step 1</think>\n\\boxed{3}"


def test_images_go_where_placeholders_stand(server, png):
    sample = Sample("a", "s", "left <image> right <image>", "1", images=[png, png])
    content = user_message(sample, sample.question)[0]["content"]
    assert [p["type"] for p in content] == ["text", "image_url", "text", "image_url"]
    assert content[1]["image_url"]["url"].startswith("data:image/png;base64,")
    server.script = lambda body: str(image_count(body))
    (result,) = _client(server).chat_many([user_message(sample, "no placeholders")])
    assert result.text == "2"


def test_no_endpoint_is_a_clear_error():
    with pytest.raises(ValueError, match="api_base"):
        ChatClient(ClientConfig(), name="distill.cot.client")

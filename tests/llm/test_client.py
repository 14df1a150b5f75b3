"""mmr's one OpenAI-compatible client against its one local server: one short reason per
kind of failure, a retry policy the caller can stop, and secrets kept out of what is kept."""

from __future__ import annotations

import asyncio

import pytest

from mmr.llm import Client, Endpoint, MalformedReply, endpoint_fault, redact
from tests.fake_openai import FakeOpenAIServer, prompt_text

SECRET = "sk-test-SECRET-0123456789abcdef"


@pytest.fixture(scope="module")
def server():
    server = FakeOpenAIServer().start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _fresh(server, monkeypatch):
    server.reset()
    monkeypatch.setenv("MMR_TEST_KEY", SECRET)


def _chat(server, messages, **kw):
    endpoint = Endpoint(server.base_url, "m", api_key_env="MMR_TEST_KEY", timeout_s=1.0,
                        retries=kw.pop("retries", 0), backoff_s=0.01)  # fmt: skip

    async def run():
        async with Client(endpoint) as client:
            return await client.chat(messages, **kw), client.requests

    return asyncio.run(run())


def _ask(text):
    return [{"role": "user", "content": text}]


def test_redact_removes_the_key_and_bearer_tokens():
    text = f'{{"echo": "Authorization: Bearer {SECRET}", "key": "{SECRET}", "x": "bearer abc.d-e"}}'
    clean = redact(text, [SECRET])
    assert SECRET not in clean and "abc.d-e" not in clean
    assert clean.count("[redacted]") == 3
    assert redact("no secrets here", [""]) == "no secrets here"


def test_an_error_body_that_echoes_the_key_is_redacted(server):
    # Some gateways answer an error with the request they got, headers included.
    def echo(body):
        auth = server.requests[-1]["headers"]["Authorization"]
        return ("status", 500, f"upstream failed for Authorization: {auth} (key {SECRET})")

    server.script = echo
    (result, requests) = _chat(server, _ask("q"), retries=1)
    assert server.requests[-1]["headers"]["Authorization"] == f"Bearer {SECRET}"  # it was sent
    assert result.error == "http_500" and requests == 2
    assert SECRET not in result.detail and "[redacted]" in result.detail
    assert "upstream failed" in result.detail


def test_a_key_cut_by_the_detail_limit_leaves_no_prefix(server):
    # Redacting after cutting would leave the key's first characters at the cut.
    server.script = lambda body: ("status", 502, "x" * 170 + SECRET)
    (result, _) = _chat(server, _ask("q"))
    assert SECRET[:8] not in result.detail


def test_proceed_stops_retries_and_failures_are_heard(server):
    server.script = lambda body: ("status", 503)
    heard = []
    (result, requests) = _chat(server, _ask("q"), retries=5, proceed=lambda: len(heard) < 2,
                               on_failure=lambda reason, detail: heard.append(reason))  # fmt: skip
    assert heard == ["http_503", "http_503"] and requests == 2
    assert result.error == "skipped"


def test_parse_rejections_are_malformed_replies_and_body_fields_are_sent(server):
    server.script = lambda body: "echo " + prompt_text(body)

    def parse(text):
        raise MalformedReply(f"not a number: {text}")

    (result, requests) = _chat(server, _ask("q"), parse=parse, retries=1, temperature=0.0,
                               chat_template_kwargs={"enable_thinking": False})  # fmt: skip
    assert result.error == "malformed_reply" and "echo q" in result.detail and requests == 2
    body = server.bodies[0]
    assert body["model"] == "m" and body["temperature"] == 0.0
    assert body["chat_template_kwargs"] == {"enable_thinking": False}


def test_a_dropped_connection_is_not_a_timeout(server):
    # openai's aiohttp transport reports a connection the server closed as a timeout.
    server.script = lambda body: ("drop", None)
    (result, _) = _chat(server, _ask("q"))
    assert result.error == "connection"
    server.script = lambda body: ("sleep", 3.0)
    (result, _) = _chat(server, _ask("q"))
    assert result.error == "timeout"


def test_endpoint_faults_are_the_endpoints_not_the_requests():
    # What ChatClient fails over to another replica: an endpoint down, slow or overloaded.
    for reason in ("connection", "timeout", "http_500", "http_503", "http_429"):
        assert endpoint_fault(reason), reason
    for reason in (None, "malformed_reply", "http_400", "http_404", "skipped"):
        assert not endpoint_fault(reason), reason

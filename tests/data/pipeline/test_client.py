"""The OpenAI-compatible client against real local servers: order, concurrency, retries,
failures reported (never raised), reasoning folded back into <think>, replicas balanced by
load with failover, and a circuit breaker that rests a replica that is down."""

from __future__ import annotations

import contextlib
import logging
import socket
import time

import pytest

from mmr.config import ConfigError
from mmr.data.pipeline.client import ChatClient, MalformedReply, user_message
from mmr.data.pipeline.config import ClientConfig
from mmr.data.schema import Sample
from mmr.llm.server import OpenAIServer
from tests.fake_openai import image_count, prompt_text


def _client(server, **kw) -> ChatClient:
    kw = {"api_base": server.base_url, "model": "teacher", "backoff_s": 0.01, **kw}
    return ChatClient(ClientConfig(**kw))


def _ask(text: str):
    return [{"role": "user", "content": text}]


def _echo(body) -> str:
    return "echo " + prompt_text(body)


def _number(text: str) -> int:
    if not text.isdigit():
        raise MalformedReply("no number")
    return int(text)


@contextlib.contextmanager
def _replica(script, latency_s: float = 0.0):
    """A second server of the same model, beside the session's `server`."""
    replica = OpenAIServer(script).start()
    replica.latency_s = latency_s
    try:
        yield replica
    finally:
        replica.stop()


def _nobody_listens() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def test_replies_in_order_with_bounded_concurrency(server):
    server.latency_s = 0.05
    server.script = lambda body: "echo " + prompt_text(body)
    client = _client(server, concurrency=4)
    results = client.chat_many([_ask(f"q{i}") for i in range(16)])
    assert [r.text for r in results] == [f"echo q{i}" for i in range(16)]
    assert server.max_in_flight <= 4
    assert [(s.served, s.failovers) for s in client.stats] == [(16, 0)]
    body = server.bodies[0]
    assert body["model"] == "teacher" and body["max_tokens"] == 16384


def test_replicas_share_the_requests_by_load_each_with_its_own_bound(server, caplog):
    server.script, server.latency_s = _echo, 0.2  # a slow replica
    with _replica(_echo, latency_s=0.01) as fast, caplog.at_level(logging.INFO):
        client = _client(server, concurrency=2, api_bases=[fast.base_url])
        results = client.chat_many([_ask(f"q{i}") for i in range(40)])
    # Answered in order; the fast replica took the next request whenever it had a free
    # slot, so it served most (the slow one about 6 in the time), each within its bound.
    assert [r.text for r in results] == [f"echo q{i}" for i in range(40)]
    slow, quick = len(server.requests), len(fast.requests)
    assert slow + quick == 40 and slow >= 2 and quick > 2 * slow
    assert [(s.served, s.failovers) for s in client.stats] == [(slow, 0), (quick, 0)]
    assert server.max_in_flight <= 2 and fast.max_in_flight <= 2
    assert server.max_in_flight + fast.max_in_flight > 2  # both served at once
    (line,) = [r.getMessage() for r in caplog.records if r.name == "mmr.data.pipeline.client"]
    assert f"{server.base_url} served {slow} (0 failed over, breaker opened 0x)" in line
    assert f"{fast.base_url} served {quick} (0 failed over, breaker opened 0x)" in line


@pytest.mark.parametrize("down", ["refused", "http_503", "http_429"])
def test_a_replica_that_is_down_fails_over_to_the_other(server, down):
    server.script = _echo
    status = 429 if down == "http_429" else 503
    with _replica(lambda body: ("status", status)) as sick:
        first = _nobody_listens() if down == "refused" else sick.base_url
        # Failover alone: no breaker resting the replica that is down (tests below).
        client = _client(server, api_base=first, api_bases=[server.base_url], concurrency=2,
                         retries=1, breaker_failures=0)  # fmt: skip
        results = client.chat_many([_ask(f"q{i}") for i in range(20)])
    # Every request answered, by the replica that is up, each asked there once.
    assert [r.text for r in results] == [f"echo q{i}" for i in range(20)]
    assert len(server.requests) == 20
    dead, alive = client.stats
    assert dead.served == 0 and dead.failovers >= 2  # it took at least one per slot
    assert (alive.served, alive.failovers) == (20, 0)
    if down != "refused":  # each request it failed had its retries there first
        assert len(sick.requests) == 2 * dead.failovers


def test_a_request_every_replica_fails_is_reported_once_redacted(server, monkeypatch, caplog):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret-123")
    server.script = lambda body: ("status", 503, "overloaded, key sk-secret-123")
    with _replica(server.script) as other, caplog.at_level(logging.INFO):
        client = _client(server, api_bases=[other.base_url], concurrency=2, retries=1,
                         breaker_failures=0)  # fmt: skip
        results = client.chat_many([_ask(f"q{i}") for i in range(6)])
    # Tried at both replicas (each with its retries), then failed as a single endpoint fails.
    assert [r.error for r in results] == ["http_503"] * 6
    assert all("overloaded" in r.detail and "sk-secret" not in r.detail for r in results)
    assert len(server.requests) == len(other.requests) == 6 * 2
    assert sum(s.failovers for s in client.stats) == sum(s.served for s in client.stats) == 6
    assert "sk-secret" not in caplog.text


@pytest.mark.parametrize(
    "bad, reason", [("nonsense", "malformed_reply"), (("status", 400), "http_400")]
)
def test_a_bad_reply_is_not_sent_to_another_replica(server, bad, reason):
    server.script = lambda body: "42"
    with _replica(lambda body: bad) as wrong:
        client = _client(server, api_bases=[wrong.base_url], concurrency=2, retries=1)
        results = client.chat_many([_ask(f"q{i}") for i in range(8)], parse=_number)
    # The request's fault, not the endpoint's: it would fail at any replica.
    failed = [r for r in results if r.error]
    assert len(failed) >= 2 and {r.error for r in failed} == {reason}
    assert all(r.value == 42 for r in results if not r.error)
    assert [(s.served, s.failovers) for s in client.stats] == [
        (8 - len(failed), 0),
        (len(failed), 0),
    ]
    assert len(server.requests) == 8 - len(failed)  # none asked again at the good replica
    assert len(wrong.requests) == 2 * len(failed)


@pytest.mark.parametrize("down", ["refused", "http_503"])
def test_the_breaker_rests_a_dead_replica_across_calls(server, down):
    server.script = _echo
    with _replica(lambda body: ("status", 503)) as sick:
        first = _nobody_listens() if down == "refused" else sick.base_url
        cfg = {"api_base": first, "api_bases": [server.base_url], "concurrency": 2,
               "retries": 2, "breaker_failures": 2}  # fmt: skip
        client = _client(server, **cfg)
        results = client.chat_many([_ask(f"q{i}") for i in range(40)])
        asked_sick = len(sick.requests)
        # The next shard's call, with a client of its own as a stage makes: the breaker
        # is still open (30 s), so the dead replica is not found dead again.
        again = _client(server, **cfg)
        later = again.chat_many([_ask(f"r{i}") for i in range(10)])
    assert [r.text for r in results] == [f"echo q{i}" for i in range(40)]
    assert [r.text for r in later] == [f"echo r{i}" for i in range(10)]
    assert len(server.requests) == 50
    # Its two slots' first attempts (and at most one retry, sent before the second
    # failure came back) opened it, which cut their retries short: not 40 x (1 + 2).
    dead, alive = client.stats
    assert (dead.served, dead.failovers, dead.opened) == (0, 2, 1)
    assert (alive.served, alive.opened) == (40, 0)
    if down == "http_503":
        assert 2 <= asked_sick <= 3 and len(sick.requests) == asked_sick
    assert [(s.served, s.failovers, s.opened) for s in again.stats] == [(0, 0, 0), (10, 0, 0)]


def test_a_hanging_replica_costs_one_timeout_not_every_retry(server):
    server.script = _echo
    with _replica(lambda body: ("sleep", 5.0)) as hung:
        client = _client(hung, api_bases=[server.base_url], concurrency=2, retries=2,
                         timeout_s=1.0, breaker_failures=2)  # fmt: skip
        results = client.chat_many([_ask(f"q{i}") for i in range(10)])
    assert [r.text for r in results] == [f"echo q{i}" for i in range(10)]
    # Its two requests timed out once each (one may have sent a retry before the other's
    # timeout opened the breaker) and went to the other replica: about 1 s, where their
    # retries there would have taken 3 x 1 s. (Counted, not timed: on a loaded machine a
    # call's time says little; timeout_s is not shorter for the same reason, or the good
    # replica would miss it too.)
    assert 2 <= len(hung.requests) <= 3
    assert [(s.failovers, s.opened) for s in client.stats] == [(2, 1), (0, 0)]


def test_a_probe_after_the_cooldown_closes_the_breaker(server):
    server.script, server.latency_s = _echo, 0.05  # busy long enough for two cooldowns
    seen: list[float] = []

    def recovering(body):  # down for its first 3 requests, then up
        seen.append(time.monotonic())
        return ("status", 503) if len(seen) <= 3 else _echo(body)

    with _replica(recovering) as sick:
        # One slot each, no retries: one request at a time, one attempt each, at the replica.
        client = _client(sick, api_bases=[server.base_url], concurrency=1, retries=0,
                         breaker_failures=2, breaker_cooldown_s=0.3)  # fmt: skip
        results = client.chat_many([_ask(f"q{i}") for i in range(30)])
    assert [r.text for r in results] == [f"echo q{i}" for i in range(30)]
    # Two faults opened it; after 0.3 s one request probed it and failed (opened again);
    # after another 0.3 s the next probe was answered, and it served the rest with the other.
    sick_stats, alive = client.stats
    assert (sick_stats.opened, sick_stats.failovers) == (2, 3)
    assert seen[2] - seen[1] >= 0.3 and seen[3] - seen[2] >= 0.3
    assert sick_stats.served == len(seen) - 3 >= 1
    assert sick_stats.served + alive.served == 30 == sick_stats.served + len(server.requests)


def test_requests_every_replica_leaves_down_fail_after_one_probe_each(server, caplog):
    server.script = lambda body: ("status", 503, "first is down")
    with _replica(lambda body: ("status", 503, "second is down")) as other:
        client = _client(server, api_bases=[other.base_url], concurrency=2, retries=1,
                         breaker_failures=2, breaker_cooldown_s=0.2)  # fmt: skip
        start = time.monotonic()
        results = client.chat_many([_ask(f"q{i}") for i in range(20)])
        elapsed = time.monotonic() - start
    # Each opened, rested 0.2 s, failed its probe: no request is left that a replica might
    # answer, so every one is reported with the reason it would have met - not one request
    # per cooldown, nor every request tried at each replica with its retries.
    assert {r.error for r in results} == {"http_503"}
    assert all("is down" in r.detail for r in results)
    assert 0.2 <= elapsed < 10  # a cooldown waited; no hang (10 s: a loaded machine)
    for replica in (server, other):  # 2 (or 3) opening it, then one probe: not ~20
        assert 3 <= len(replica.requests) <= 4
    assert [s.opened for s in client.stats] == [2, 2]
    assert sum(s.served for s in client.stats) == 20
    assert "endpoint faults of 2 requests in a row (last: http_503)" in caplog.text


def test_one_poison_request_does_not_rest_a_healthy_replica(server):
    # A request that fails wherever it goes (here HTTP 500 for "poison"), alone at low
    # traffic: its retries are endpoint faults in a row at each replica, but of one request,
    # so no breaker opens and the requests after it still go to both replicas at once.
    def script(body):
        return ("status", 500, "poisoned") if prompt_text(body) == "poison" else _echo(body)

    server.script, server.latency_s = script, 0.05
    with _replica(script, latency_s=0.05) as other:
        client = _client(server, api_bases=[other.base_url], concurrency=1, retries=3,
                         breaker_failures=2)  # fmt: skip
        results = client.chat_many([_ask("poison"), *[_ask(f"q{i}") for i in range(8)]])
    assert results[0].error == "http_500" and "poisoned" in results[0].detail
    assert [r.text for r in results[1:]] == [f"echo q{i}" for i in range(8)]
    assert [s.opened for s in client.stats] == [0, 0]
    # 4 attempts at each replica (1 + 3 retries) for the poison; both served the others.
    assert all(s.served >= 2 for s in client.stats), client.stats
    asked = [prompt_text(b) for b in server.bodies] + [prompt_text(b) for b in other.bodies]
    assert asked.count("poison") == 8


def test_faults_of_different_requests_open_it():
    from mmr.data.pipeline.client import Breaker

    breaker, first, second = Breaker(), object(), object()
    assert not any(breaker.fault(2, 30.0, None, first) for _ in range(5))  # retries: once
    assert breaker.failures == 1 and breaker.open_until is None
    assert breaker.fault(2, 30.0, None, second)  # a second request: open
    breaker.close()
    assert breaker.failures == 0 and not breaker.culprits


def test_breaker_keys_are_checked():
    assert ClientConfig(breaker_failures=0).breaker_failures == 0  # 0: off
    with pytest.raises(ConfigError, match=r"'client.breaker_failures' must be >= 0"):
        ClientConfig(breaker_failures=-1)
    with pytest.raises(ConfigError, match=r"'client.breaker_cooldown_s' must be > 0"):
        ClientConfig(breaker_cooldown_s=0)


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
    (result,) = _client(server, retries=1).chat_many([_ask("n?")], parse=_number)
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


@pytest.mark.parametrize("replicas", [1, 2])
def test_stream_yields_each_result_once_as_it_arrives(server, replicas):
    # Request i is answered after i * 40 ms: the first replies come back while the last
    # requests are still at the server, each exactly once, through one endpoint or two.
    def script(body):
        i = int(prompt_text(body)[1:])
        time.sleep(0.04 * i)
        return f"echo q{i}"

    server.script = script
    with _replica(script) as other:
        bases = [other.base_url] if replicas == 2 else []
        client = _client(server, concurrency=8, api_bases=bases)
        start, seen, arrivals = time.monotonic(), [], []
        for batch in client.stream([_ask(f"q{i}") for i in range(8)]):
            seen += batch
            arrivals.append(time.monotonic() - start)
    assert sorted(i for i, _ in seen) == list(range(8))
    assert all(result.text == f"echo q{i}" for i, result in seen)
    assert len(arrivals) >= 3 and arrivals[0] < 0.2 <= arrivals[-1]
    assert sum(s.served for s in client.stats) == 8


def test_stream_batches_hold_at_least_batch_results_but_the_last(server):
    server.script, server.latency_s = _echo, 0.01
    batches = list(
        _client(server, concurrency=4).stream([_ask(f"q{i}") for i in range(10)], batch=3)
    )
    assert sorted(i for got in batches for i, _ in got) == list(range(10))
    assert all(len(got) >= 3 for got in batches[:-1]) and batches[-1]


def test_stream_raises_what_the_requests_raised(server, monkeypatch):
    # chat_many reports every request failure as a result; what raises is a bug in the
    # requests' thread (made here by replacing its event loop's coroutine), and it must
    # reach the caller rather than leave it waiting for results that never come.
    async def broken(self, *args):
        raise RuntimeError("a bug in the request loop")

    monkeypatch.setattr(ChatClient, "_run", broken)
    with pytest.raises(RuntimeError, match="a bug in the request loop"):
        for _ in _client(server).stream([_ask("q0"), _ask("q1")]):
            pass

"""`engine: ray_llm` with a stage's own reply parser: LLM clean (its JSON verdict, parsed
in the Ray actor and retried there when malformed) run once with engine openai and once
through ray.data.llm, against the same scripted local server, keeps and drops the same
rows and counts the same failures. The Ray run is what a user gets from `executor: local`
(num_proc 1) with `engine: ray_llm`: chat_many starts a local Ray instance of its own.
Replicas: balanced by load (a slow replica serves fewer), and a request a replica failed as
down runs again at the other, in the same job."""

from __future__ import annotations

import json
import os
from pathlib import Path
from unittest import mock

import pyarrow.dataset as ds
import pytest

from mmr.data.io import write_samples
from mmr.data.pipeline import ray_executor
from mmr.data.pipeline.clean import run_clean
from mmr.data.pipeline.client import ChatClient
from mmr.data.pipeline.config import ClientConfig, PipelineConfig
from mmr.data.schema import Sample
from mmr.llm.server import OpenAIServer
from tests.data.pipeline.test_clean import llm_clean_rows
from tests.fake_openai import prompt_text

pytest.importorskip("ray")

KEY_ENV, KEY = "MMR_RAY_LLM_TEST_KEY", "sk-ray-llm-test-0123456789"
RUN_DEPENDENT = ("elapsed_s", "rows_per_s", "output")  # what may differ between two runs


def cleaner(body: dict) -> object:
    text = prompt_text(body).split("Question:")[1].split("Reference answer:")[0]
    if "Zeichne" in text:
        return json.dumps({"suitable": False, "reason": "drawing task", "question": ""})
    if "求" in text:  # the verdict after reasoning the server returns apart
        verdict = {"suitable": True, "reason": "ok", "question": "Find <image> x."}
        return ("reasoning", "translate it", json.dumps(verdict))
    if "broken" in text:
        return "I think it is fine."  # no JSON: unparsable every time, retried, then failed
    if "lost" in text:  # parses, but the rewrite lost the image placeholder
        return json.dumps({"suitable": True, "reason": "", "question": "no placeholder"})
    if "down" in text:  # an error page that echoes the request's key
        return ("status", 503, f"overloaded; you sent Authorization: Bearer {KEY}")
    return json.dumps({"suitable": True, "reason": "ok", "question": "Just reason: 2+2?"})


def _run(tmp_path: Path, server, engine: str) -> tuple[dict, Path]:
    cfg = PipelineConfig(shard_rows=4)  # two shards: two chat_many calls on one instance
    cfg.clean.llm.enabled = True
    client = cfg.clean.llm.client
    client.api_base, client.api_key_env, client.engine = server.base_url, KEY_ENV, engine
    client.backoff_s, client.retries, client.timeout_s = 0.01, 1, 30
    out = tmp_path / engine
    report = run_clean(cfg, tmp_path / "in.parquet", out, quiet=True)
    return {k: v for k, v in report.items() if k not in RUN_DEPENDENT}, out


def _rows(folder: Path) -> list[dict]:
    return ds.dataset(folder, format="parquet").to_table().to_pylist()


def test_llm_clean_through_ray_llm_matches_openai(tmp_path, server, png, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)  # a new local instance, not a cluster
    rows = [*llm_clean_rows(png), Sample("en2", "s", "(3 points) 3+3? answer only", "6")]
    write_samples(tmp_path / "in.parquet", rows)
    with mock.patch.dict(os.environ, {KEY_ENV: KEY}):
        server.script = cleaner
        expected, local = _run(tmp_path, server, "openai")
        asked = len(server.requests)
        server.reset()
        server.script = cleaner
        try:
            report, on_ray = _run(tmp_path, server, "ray_llm")
        finally:
            ray_executor.shutdown()
    assert report == expected
    for folder in ("cleaned", "failed/clean"):
        assert _rows(on_ray / folder) == _rows(local / folder), folder
    kept = {r["id"]: r for r in _rows(on_ray / "cleaned")}
    assert sorted(kept) == ["en", "en2", "zh"]
    assert kept["zh"]["question"] == "Find <image> x."
    assert report["filters"] == {"llm": {"unsuitable": 1}}
    assert report["examples"]["dropped/llm/unsuitable"] == ["draw: drawing task"]
    assert report["failed_reasons"] == {"cleaner_http_503": 1, "cleaner_malformed_reply": 2}
    assert sorted(r["id"] for r in _rows(on_ray / "failed" / "clean")) == ["bad", "down", "lost"]
    # The same policy: 7 requests, each of the 3 failing ones retried once; the key sent in
    # the header and redacted from everything written.
    assert len(server.requests) == asked == 7 + 3
    assert server.requests[0]["headers"]["authorization"] == f"Bearer {KEY}"
    # ...sent by Ray's HTTP stage (aiohttp's own agent), not by the openai engine's client.
    assert all("aiohttp" in r["headers"]["user-agent"] for r in server.requests)
    for path in on_ray.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path
    assert "Bearer [redacted]" in json.dumps(report["examples"])


def test_requests_a_down_replica_failed_run_again_at_another(server, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)  # a new local instance, not a cluster
    # q5 fails at both replicas; every other request is answered by the good one.
    # (Both fail it with the same body: its result is the failure of whichever it met last,
    # and which actor takes q5's batch first is Ray Data's choice.)
    server.script = lambda body: (
        ("status", 503, "replica down") if prompt_text(body) == "q5" else "ok"
    )
    sick = OpenAIServer(lambda body: ("status", 503, "replica down")).start()
    # The breaker off: failover alone (test_a_dead_replica_is_rested_by_its_breaker).
    cfg = ClientConfig(api_base=sick.base_url, api_bases=[server.base_url], engine="ray_llm",
                       retries=1, backoff_s=0.01, timeout_s=30, concurrency=2,
                       breaker_failures=0)  # fmt: skip
    requests = [[{"role": "user", "content": f"q{i}"}] for i in range(12)]
    client = ChatClient(cfg)
    try:
        results = client.chat_many(requests)
    finally:
        sick.stop()
        ray_executor.shutdown()
    assert [r.text for r in results[:5] + results[6:]] == ["ok"] * 11
    assert results[5].error == "http_503" and "replica down" in results[5].detail
    # Each request at most once per replica (the sick one: with its retry), in one job:
    # what the sick replica was sent went on to the good one.
    at_sick, at_good = _asked(sick), _asked(server)
    assert sorted(set(at_sick)) == sorted(set(at_sick) & set(at_good))
    assert all(at_sick.count(q) == 2 for q in set(at_sick)) and at_good.count("q5") == 2
    assert sorted(set(at_good)) == sorted(f"q{i}" for i in range(12)) and len(at_good) == 13
    # The good replica gave every answer; q5's failure ends at whichever it tried last. Each
    # request that met the sick one was handed on once (q5 maybe from the good one).
    sick_stats, good_stats = client.stats
    assert sick_stats.served <= 1 and sick_stats.served + good_stats.served == 12
    assert sick_stats.failovers + good_stats.failovers == len(set(at_sick))
    assert good_stats.failovers == sick_stats.served


def test_a_slow_replica_serves_fewer_requests(server, monkeypatch):
    # Balanced by load: each replica's actor takes the next batch when it finished one, so
    # the one replying in 0.02 s serves most of what the one taking 1 s would have.
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    server.script, server.latency_s = (lambda body: "fast"), 0.02
    slow = OpenAIServer(lambda body: "slow").start()
    slow.latency_s = 1.0
    cfg = ClientConfig(api_base=slow.base_url, api_bases=[server.base_url], engine="ray_llm",
                       concurrency=2, timeout_s=30)  # fmt: skip
    client = ChatClient(cfg)
    try:
        results = client.chat_many([[{"role": "user", "content": f"q{i}"}] for i in range(60)])
    finally:
        slow.stop()
        ray_executor.shutdown()
    assert all(r.error is None for r in results)
    served = {"slow": 0, "fast": 0}
    for r in results:
        served[r.text] += 1
    # Dealt in turn it would be 30 and 30. Seen (slow at 0.5 s): 14 and 46; the fast one's
    # pace is Ray Data's per-batch overhead (a batch is 2 requests here), not its 0.02 s.
    assert 2 * served["slow"] < served["fast"], served
    assert [s.served for s in client.stats] == [served["slow"], served["fast"]]
    assert len(slow.requests) == served["slow"] and len(server.requests) == served["fast"]


def _ask_beside_sick(server, n: int, **kw) -> tuple[ChatClient, list, OpenAIServer]:
    """`n` requests through engine ray_llm to a replica that answers every attempt with a
    503 and to the session's `server`; returns the client, the results and the sick one."""
    sick = OpenAIServer(lambda body: ("status", 503, "replica down")).start()
    cfg = ClientConfig(api_base=sick.base_url, api_bases=[server.base_url], engine="ray_llm",
                       timeout_s=30, concurrency=2, breaker_failures=2, **kw)  # fmt: skip
    client = ChatClient(cfg)
    try:
        results = client.chat_many([[{"role": "user", "content": f"q{i}"}] for i in range(n)])
    finally:
        sick.stop()
        ray_executor.shutdown()
    return client, results, sick


def test_a_dead_replica_is_rested_by_its_breaker(server, monkeypatch):
    # A replica failing every attempt: after faults of 2 requests its breaker opens, and
    # the requests its actor takes go to the good replica at once instead of paying 4
    # attempts there each (retries=3). Every request is answered, by the good one.
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    server.script = lambda body: "ok"
    client, results, sick = _ask_beside_sick(
        server, 40, retries=3, backoff_s=0.05, breaker_cooldown_s=60
    )
    assert [r.text for r in results] == ["ok"] * 40
    sick_stats, good_stats = client.stats
    assert sick_stats.opened == 1 and sick_stats.served == 0 and good_stats.served == 40
    # Seen: the first batch's 2 requests, one attempt each (their faults opened it and cut
    # their retries), then nothing: without the breaker, each request its actor took
    # (about half) would have cost 4 attempts there before failing over.
    assert len(sick.requests) <= 4 and sick_stats.failovers <= 2


def test_every_replica_down_ends_after_one_probe_each(server, monkeypatch):
    # Both replicas down: each breaker opens, each is probed once after its cooldown, and
    # the requests still waiting fail with the probe's reason instead of waiting for more.
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    server.script = lambda body: ("status", 503, "down too")
    client, results, sick = _ask_beside_sick(
        server, 30, retries=1, backoff_s=0.01, breaker_cooldown_s=0.5
    )
    assert all(r.error == "http_503" for r in results)
    # Without breakers: 30 requests x 2 replicas x 2 attempts = 120. Seen: 12. Each of the
    # two actors keeps its own breakers: each opens, and each probe fails, once per actor.
    assert len(sick.requests) + len(server.requests) < 40
    assert all(1 <= s.opened <= 4 for s in client.stats)


def _asked(replica: OpenAIServer) -> list[str]:
    return sorted(prompt_text(body) for body in replica.bodies)

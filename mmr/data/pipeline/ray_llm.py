"""`engine: ray_llm`: a pipeline model's chat requests as a Ray Data job through
`ray.data.llm`'s HTTP processor (what `mmr.data.pipeline.client.ChatClient` calls).

    results = chat_many(endpoints, [messages, ...], [parse, ...], body)   # one ChatResult each

The requests become one dataset and one Ray Data job: `ray.data.llm.build_processor` builds
an HTTP processor from an `HttpRequestProcessorConfig` whose request stage is a pool of one
actor per endpoint, placed anywhere on the cluster, sending with Ray's request code (JSON
body, headers, response read). Several endpoints serving one model are balanced by load,
by Ray Data's own scheduling: each actor sends to its endpoint (the i-th actor started to
the i-th endpoint) and takes the next batch of `concurrency` requests when one of its two
batches in flight is done, so a fast endpoint's actor takes more batches than a slow one's.
A request its endpoint failed with an endpoint fault (`connection`, `timeout`, HTTP 5xx or
429: `mmr.llm.client.endpoint_fault`) is sent by the same actor to the other endpoints in
turn, and reported failed (the same ChatResult, its last failure, as engine openai gives)
only when each has failed it. With several endpoints each actor keeps a circuit breaker per
endpoint, by engine openai's rules (`breaker_failures`, `breaker_cooldown_s`; the client
module docstring): endpoint faults of that many different requests open it, which cuts their
retries; no request goes there until the cooldown is over, then one probes it; a request
whose endpoints all rest waits for a cooldown to end, and one that only endpoints whose
probe failed are left for fails with the probe's failure. So a dead endpoint's actor sends
its batches on to the others at once rather than each request paying its retries there.
The breakers live as long as the actor (one job: one shard's calls), per actor. The job runs
on the Ray cluster this process is connected to (a shard task's, under `executor: ray`),
else the one RAY_ADDRESS names, else a new local instance. Each call (one per shard and
model) is one job: a few seconds to start its actors, small next to a shard of teacher
requests, large for a handful of fast ones. Each result row says which endpoint served it
and which failed it before (`ChatClient.stats`, as engine openai fills them).

What mmr changes, and why:
- Ray's HTTP stage gives up on a whole batch (the job fails) when one request keeps failing,
  and retries only 408/429/502-504 and connection errors. Its request UDF (`HttpRequestUDF`,
  internal to ray.llm: ray is pinned) is subclassed and put in the built processor's stage,
  so that each row goes through `mmr.llm.client.Client.chat` with Ray's code as the transport
  (one attempt each, Ray's own retries off): the same retry policy, `concurrency` bound
  (requests in flight per endpoint), timeout, reply parsing (`parse` runs in the actor, so
  a malformed reply is retried), error classification and redaction as the local client.
  A request that keeps failing is that row's ChatResult error, counted by the stage.
- The session it opens (`session_factory`) shares one connection pool per actor, and turns
  an HTTP error status into `StatusError` with the (redacted) body.
- Ray's `qps` is not set: it paces the sends within one batch only; the bound here is the
  requests in flight, as with the local client.
"""

from __future__ import annotations

import asyncio
import contextvars
import copy
import json
import logging
import os
import time
import uuid
from collections.abc import Sequence
from typing import Any

import ray
from ray.llm._internal.batch.stages.http_request_stage import HttpRequestUDF

from mmr.data.pipeline import ray_executor
from mmr.data.pipeline.client import Breaker, ask_under_breaker
from mmr.llm.client import ChatResult, Client, Endpoint, Parse, StatusError, endpoint_fault

__all__ = ["chat_many"]

log = logging.getLogger(__name__)
Messages = list[dict[str, Any]]
# The failure of the attempt running in this task, as aiohttp saw it (Ray's stage keeps
# only the exception's type name; rows run in tasks of their own, attempts one by one).
_ATTEMPT: contextvars.ContextVar[dict[str, BaseException]] = contextvars.ContextVar("attempt")
RESULT_COLUMNS = ("i", "text", "error", "detail", "served_by", "failed_at", "opened")
_WAIT_S = 0.05  # a request whose endpoints all rest looks again this often


class MMRRequestUDF(HttpRequestUDF):
    """Ray's HTTP request UDF, one row at a time through mmr's client policy, sending to
    its actor's endpoint and failing over to the others."""

    def __init__(
        self, *args: Any, endpoints: list[Endpoint], parsers: list, body: dict, dealer: str,
        breaker: tuple[int, float], **kwargs: Any,
    ):  # fmt: skip
        super().__init__(*args, **kwargs)
        self.endpoints, self.parsers, self.body = endpoints, parsers, body
        # Each endpoint's circuit breaker as this actor sees it (breaker_failures, cooldown;
        # off with one endpoint, as with engine openai), and those whose probe failed.
        self.breaker = (breaker[0] if len(endpoints) > 1 else 0, breaker[1])
        self.breakers = [Breaker() for _ in endpoints]
        self.down: dict[int, ChatResult] = {}
        # This actor's endpoint: the dealer hands 0, 1, 2, ... to the actors as they start.
        self.home = ray.get(ray.get_actor(dealer).next.remote()) % len(endpoints)
        self.session_factory = self.session
        self.clients: dict[int, Client] = {}  # made on the actor's event loop, when needed
        self._connector: Any = None

    def __del__(self) -> None:  # Ray Data deletes the UDF when its actor pool shuts down
        if self._connector is not None and not self._connector.closed:
            self._connector.close()  # closes its sockets now; nothing left to await

    async def udf(self, batch: list[dict[str, Any]]) -> Any:
        jobs = [self._row(row) for row in batch]
        for row, result in zip(batch, await asyncio.gather(*jobs)):
            yield {self.IDX_IN_BATCH_COLUMN: row[self.IDX_IN_BATCH_COLUMN], **result}

    async def _row(self, row: dict[str, Any]) -> dict[str, Any]:
        messages, parse = json.loads(row["payload"]), self.parsers[row["i"]]
        n = len(self.endpoints)
        order = [(self.home + step) % n for step in range(n)]
        failed: list[int] = []  # endpoints that failed it with an endpoint fault, in turn
        opened: list[int] = []  # endpoints whose breaker its failure opened
        while True:
            untried = [e for e in order if e not in failed]
            if not untried:  # each failed it: the last failure is its result
                served = failed.pop()
                break
            if all(e in self.down for e in untried):  # each left failed a probe in this job
                served = untried[0]
                result = self.down[served]
                break
            picked = self._take(untried)
            if picked is None:  # every one left is resting: wait for a cooldown to end
                await asyncio.sleep(_WAIT_S)
                continue
            served, probe = picked
            result, opened_here = await self._ask(served, probe, messages, parse)
            opened += [served] * opened_here
            if result.error is None or not endpoint_fault(result.error):
                break
            failed.append(served)
        return {"text": result.text, "error": result.error, "detail": result.detail,
                "served_by": served, "failed_at": json.dumps(failed),
                "opened": json.dumps(opened)}  # fmt: skip

    def _take(self, untried: list[int]) -> tuple[int, object | None] | None:
        """The first of `untried` (in this actor's order) whose breaker lets a request in,
        with its probe token when it is the probe after a cooldown; None when all rest."""
        now = time.monotonic()
        for e in untried:
            breaker = self.breakers[e]
            if breaker.open_until is None:
                return e, None
            if breaker.probe is None and now >= breaker.open_until:
                breaker.probe = object()
                return e, breaker.probe
        return None

    async def _ask(
        self, e: int, probe: object | None, messages: Any, parse: Parse | None
    ) -> tuple[ChatResult, bool]:
        """One request at endpoint `e` under its breaker (`ask_under_breaker`, as engine
        openai asks): (its result, whether its failure opened the breaker)."""
        got = await ask_under_breaker(
            self._client(e), self.breakers[e], self.breaker, probe, messages, parse, self.body
        )
        if got.result.error is None or not endpoint_fault(got.result.error):
            self.down.pop(e, None)
        elif got.probe_failed:  # the breaker opened again
            self.down[e] = got.result
        return got.result, got.opened

    def _client(self, e: int) -> Client:
        if e not in self.clients:
            endpoint = self.endpoints[e]
            sender = copy.copy(self)  # Ray's request code, sending to this endpoint's URL
            sender.url = endpoint.base_url.rstrip("/") + "/chat/completions"
            sender.json_headers = dict(self.json_headers)
            key = os.environ.get(endpoint.api_key_env)  # read on the node
            if key:
                sender.json_headers["Authorization"] = f"Bearer {key}"
            self.clients[e] = Client(endpoint, post=lambda payload: _post(sender, payload))
        return self.clients[e]

    def session(self) -> Any:
        import aiohttp

        if self._connector is None:  # each endpoint's `concurrency`, per host
            limit = self.endpoints[0].concurrency
            self._connector = aiohttp.TCPConnector(
                limit=limit * len(self.endpoints), limit_per_host=limit
            )
        trace = aiohttp.TraceConfig()
        trace.on_request_exception.append(_note_failure)
        return aiohttp.ClientSession(
            connector=self._connector,
            connector_owner=False,  # one pool for the actor, not one per request
            raise_for_status=_raise_for_status,
            trace_configs=[trace],
        )


async def _post(sender: HttpRequestUDF, payload: dict[str, Any]) -> Any:
    """One attempt through Ray's request code, to `sender`'s URL; raises what aiohttp raised."""
    failure: dict[str, BaseException] = {}
    _ATTEMPT.set(failure)  # this attempt's task only (wait_for runs it in its own)
    row = {sender.IDX_IN_BATCH_COLUMN: 0, "payload": payload}
    try:
        (out,) = [out async for out in HttpRequestUDF.udf(sender, [row])]
    except RuntimeError:  # Ray's "reached maximum retries": the cause was kept above
        if "error" in failure:
            raise failure["error"] from None
        raise ConnectionError("no reply (ray.data.llm's HTTP stage gave up)") from None
    return out["http_response"]


async def _raise_for_status(response: Any) -> None:
    if response.status >= 400:
        raise StatusError(response.status, await response.text())


async def _note_failure(session: Any, context: Any, params: Any) -> None:
    failure = _ATTEMPT.get(None)
    if failure is not None:
        failure["error"] = params.exception


@ray.remote
class _Dealer:
    """Hands out 0, 1, 2, ...: each request actor's endpoint, in the order they start."""

    def __init__(self) -> None:
        self.count = 0

    def next(self) -> int:
        self.count += 1
        return self.count - 1


def chat_many(
    endpoints: Sequence[Endpoint],
    requests: Sequence[Messages],
    parsers: Sequence[Parse | None],
    body: dict[str, Any],
    stats: list[Any] | None = None,
    breaker: tuple[int, float] = (0, 30.0),
) -> list[ChatResult]:
    """One ChatResult per request, in order, from one Ray Data job over every endpoint
    (see the module docstring). `stats`: one EndpointStats per endpoint, filled in.
    `breaker`: (breaker_failures, breaker_cooldown_s) of the client config; 0: none."""
    from ray.data import ActorPoolStrategy
    from ray.data.llm import HttpRequestProcessorConfig, build_processor

    ray_executor.connect(os.environ.get("RAY_ADDRESS"))
    ray.data.DataContext.get_current().enable_progress_bars = False
    dealer_name = f"mmr-ray-llm-dealer-{uuid.uuid4().hex}"
    dealer = _Dealer.options(name=dealer_name, num_cpus=0).remote()
    n = len(endpoints)
    config = HttpRequestProcessorConfig(
        url=endpoints[0].base_url,  # each actor sends to its own endpoint (MMRRequestUDF)
        batch_size=max(1, endpoints[0].concurrency),
        concurrency=n,
        max_retries=0,  # mmr's policy retries (see the module docstring)
        base_retry_wait_time_in_s=0,
        # Placed anywhere, even beside shard tasks holding every CPU: it waits on HTTP.
        http_request_stage={"num_cpus": 0},
    )
    zero_cpu = {"num_cpus": 0}
    processor = build_processor(
        config,
        preprocess=lambda row: {"i": row["i"], "payload": row["payload"]},
        postprocess=lambda row: {k: row[k] for k in RESULT_COLUMNS},
        preprocess_map_kwargs=zero_cpu,
        postprocess_map_kwargs=zero_cpu,
    )
    stage = processor.get_stage_by_name("HttpRequestStage")
    stage.fn = MMRRequestUDF
    stage.fn_constructor_kwargs = {
        **stage.fn_constructor_kwargs,
        "endpoints": list(endpoints),
        "parsers": list(parsers),
        "body": body,
        "dealer": dealer_name,
        "breaker": breaker,
    }
    # One actor per endpoint, each with two batches in flight at most: the next batch goes
    # to the actor that finished one, so a slow endpoint takes fewer.
    stage.map_batches_kwargs["compute"] = ActorPoolStrategy(size=n, max_tasks_in_flight_per_actor=2)
    rows = [{"i": i, "payload": json.dumps(messages)} for i, messages in enumerate(requests)]
    results: list[ChatResult | None] = [None] * len(requests)
    try:
        for row in processor(ray.data.from_items(rows)).iter_rows():
            i = row["i"]
            text, parse = row["text"], parsers[i]
            value = parse(text) if (parse is not None and row["error"] is None) else text
            results[i] = ChatResult(
                text=text, value=value, error=row["error"], detail=row["detail"]
            )
            if stats is not None:
                stats[row["served_by"]].served += 1
                for e in json.loads(row["failed_at"]):
                    stats[e].failovers += 1
                for e in json.loads(row["opened"]):
                    stats[e].opened += 1
    finally:
        ray.kill(dealer)
    missing = [i for i, r in enumerate(results) if r is None]
    if missing:  # Ray Data returns every row or raises; a gap would be a bug here
        raise RuntimeError(f"ray.data.llm returned no row for requests {missing[:5]}")
    return results  # type: ignore[return-value]

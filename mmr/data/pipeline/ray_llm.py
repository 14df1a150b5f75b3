"""`engine: ray_llm`: a pipeline model's chat requests as a Ray Data job through
`ray.data.llm`'s HTTP processor (what `mmr.data.pipeline.client.ChatClient` calls).

    results = chat_many(endpoints, [messages, ...], [parse, ...], body)   # one ChatResult each

The requests become a dataset; each endpoint gets a processor that
`ray.data.llm.build_processor` builds from an `HttpRequestProcessorConfig`: one actor per
endpoint, placed anywhere on the cluster, sending with Ray's request code (JSON body,
headers, response read). Several endpoints serving one model are dealt the requests in
turn before the job starts, not by load as engine openai balances them: each endpoint's
processor is a pipeline of its own over its own rows (Ray Data cannot feed two pipelines
from one stream), and one processor over every endpoint would need its actor to send to
several URLs, where Ray's request code sends to the one it was built with. So failover is
by passes, not within a job: when the job is done, the requests an endpoint failed with an
endpoint fault (`connection`, `timeout`, HTTP 5xx or 429: `mmr.llm.client.endpoint_fault`)
and that have an endpoint they have not tried are dealt to such endpoints, in turn, and run
again as another job; and so on until none is left (at most one pass per endpoint). Only
then is a request reported failed, with the same ChatResult (its last failure) as engine
openai gives. A dead endpoint still takes its share of the first pass, each request with
all its retries, and there is no circuit breaker: each pass is dealt before it starts. The
jobs run on the Ray cluster this process is connected to (a shard task's, under `executor:
ray`), else the one RAY_ADDRESS names, else a new local instance. Each call (one per shard
and model) is one job, plus one per failover pass: a few seconds each to start its actors,
small next to a shard of teacher requests, large for a handful of fast ones.

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
import json
import logging
import os
from collections.abc import Sequence
from typing import Any

from ray.llm._internal.batch.stages.http_request_stage import HttpRequestUDF

from mmr.data.pipeline import ray_executor
from mmr.llm.client import ChatResult, Client, Endpoint, Parse, StatusError, endpoint_fault

__all__ = ["chat_many"]

log = logging.getLogger(__name__)
Messages = list[dict[str, Any]]
# The failure of the attempt running in this task, as aiohttp saw it (Ray's stage keeps
# only the exception's type name; rows run in tasks of their own, attempts one by one).
_ATTEMPT: contextvars.ContextVar[dict[str, BaseException]] = contextvars.ContextVar("attempt")


class MMRRequestUDF(HttpRequestUDF):
    """Ray's HTTP request UDF, one row at a time through mmr's client policy."""

    def __init__(self, *args: Any, endpoint: Endpoint, parsers: list, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.endpoint, self.parsers = endpoint, parsers
        self.session_factory = self.session
        self.client: Client | None = None  # made on the actor's event loop
        self._connector: Any = None

    def __del__(self) -> None:  # Ray Data deletes the UDF when its actor pool shuts down
        if self._connector is not None and not self._connector.closed:
            self._connector.close()  # closes its sockets now; nothing left to await

    async def udf(self, batch: list[dict[str, Any]]) -> Any:
        if self.client is None:
            self.client = Client(self.endpoint, post=self._post)
            key = os.environ.get(self.endpoint.api_key_env)  # read on the node
            if key:
                self.json_headers["Authorization"] = f"Bearer {key}"
        jobs = [self._row(row) for row in batch]
        for row, result in zip(batch, await asyncio.gather(*jobs)):
            yield {self.IDX_IN_BATCH_COLUMN: row[self.IDX_IN_BATCH_COLUMN], **result}

    async def _row(self, row: dict[str, Any]) -> dict[str, Any]:
        body = json.loads(row["payload"])
        messages = body.pop("messages")
        result = await self.client.chat(messages, self.parsers[row["i"]], **body)
        return {"text": result.text, "error": result.error, "detail": result.detail}

    async def _post(self, payload: dict[str, Any]) -> Any:
        """One attempt through Ray's request code; raises what aiohttp raised."""
        failure: dict[str, BaseException] = {}
        _ATTEMPT.set(failure)  # this attempt's task only (wait_for runs it in its own)
        row = {self.IDX_IN_BATCH_COLUMN: 0, "payload": payload}
        try:
            (out,) = [out async for out in HttpRequestUDF.udf(self, [row])]
        except RuntimeError:  # Ray's "reached maximum retries": the cause was kept above
            if "error" in failure:
                raise failure["error"] from None
            raise ConnectionError("no reply (ray.data.llm's HTTP stage gave up)") from None
        return out["http_response"]

    def session(self) -> Any:
        import aiohttp

        if self._connector is None:
            limit = self.endpoint.concurrency
            self._connector = aiohttp.TCPConnector(limit=limit, limit_per_host=limit)
        trace = aiohttp.TraceConfig()
        trace.on_request_exception.append(_note_failure)
        return aiohttp.ClientSession(
            connector=self._connector,
            connector_owner=False,  # one pool for the actor, not one per request
            raise_for_status=_raise_for_status,
            trace_configs=[trace],
        )


async def _raise_for_status(response: Any) -> None:
    if response.status >= 400:
        raise StatusError(response.status, await response.text())


async def _note_failure(session: Any, context: Any, params: Any) -> None:
    failure = _ATTEMPT.get(None)
    if failure is not None:
        failure["error"] = params.exception


def chat_many(
    endpoints: Sequence[Endpoint],
    requests: Sequence[Messages],
    parsers: Sequence[Parse | None],
    body: dict[str, Any],
) -> list[ChatResult]:
    """One ChatResult per request, in order. Request `i` goes to endpoint `i % n` first;
    then, pass after pass, those an endpoint fault failed go to endpoints they have not
    tried, each pass one more job."""
    import ray

    ray_executor.connect(os.environ.get("RAY_ADDRESS"))
    ray.data.DataContext.get_current().enable_progress_bars = False
    results: list[ChatResult | None] = [None] * len(requests)
    tried: list[set[int]] = [set() for _ in requests]
    dealt = {i: i % len(endpoints) for i in range(len(requests))}
    while dealt:
        for i, result in _job(endpoints, dealt, requests, parsers, body).items():
            results[i] = result
            tried[i].add(dealt[i])
        dealt = _failover(results, tried, len(endpoints))  # type: ignore[arg-type]
        if dealt:
            log.info("failover pass: %d requests to replicas they have not tried", len(dealt))
    return results  # type: ignore[return-value]


def _failover(results: list[ChatResult], tried: list[set[int]], n: int) -> dict[int, int]:
    """The next pass: each request an endpoint fault failed (`endpoint_fault`), dealt in
    turn to the endpoints it has not tried; none when every one has failed it."""
    dealt: dict[int, int] = {}
    for i, result in enumerate(results):
        untried = [e for e in range(n) if e not in tried[i]]
        if untried and endpoint_fault(result.error):
            dealt[i] = untried[len(dealt) % len(untried)]
    return dealt


def _job(
    endpoints: Sequence[Endpoint],
    dealt: dict[int, int],
    requests: Sequence[Messages],
    parsers: Sequence[Parse | None],
    body: dict[str, Any],
) -> dict[int, ChatResult]:
    """One Ray Data job: request `i` sent to endpoint `dealt[i]`; its ChatResult by `i`."""
    import ray
    from ray.data.llm import HttpRequestProcessorConfig, build_processor

    outputs = []
    for e, endpoint in enumerate(endpoints):
        rows = [
            {"i": i, "payload": json.dumps({"messages": requests[i], **body})}
            for i, to in dealt.items()
            if to == e
        ]
        if not rows:
            continue
        config = HttpRequestProcessorConfig(
            url=endpoint.base_url.rstrip("/") + "/chat/completions",
            batch_size=max(1, endpoint.concurrency),
            concurrency=1,  # one actor per endpoint: its event loop holds `concurrency` requests
            max_retries=0,  # mmr's policy retries (see the module docstring)
            base_retry_wait_time_in_s=0,
            # Placed anywhere, even beside shard tasks holding every CPU: it waits on HTTP.
            http_request_stage={"num_cpus": 0},
        )
        zero_cpu = {"num_cpus": 0}
        processor = build_processor(
            config,
            preprocess=lambda row: {"i": row["i"], "payload": row["payload"]},
            postprocess=lambda row: {k: row[k] for k in ("i", "text", "error", "detail")},
            preprocess_map_kwargs=zero_cpu,
            postprocess_map_kwargs=zero_cpu,
        )
        stage = processor.get_stage_by_name("HttpRequestStage")
        stage.fn = MMRRequestUDF
        stage.fn_constructor_kwargs = {
            **stage.fn_constructor_kwargs,
            "endpoint": endpoint,
            "parsers": list(parsers),
        }
        outputs.append(processor(ray.data.from_items(rows)))
    dataset = outputs[0].union(*outputs[1:]) if len(outputs) > 1 else outputs[0]
    results: dict[int, ChatResult] = {}
    for row in dataset.iter_rows():
        i = row["i"]
        text, parse = row["text"], parsers[i]
        value = parse(text) if (parse is not None and row["error"] is None) else text
        results[i] = ChatResult(text=text, value=value, error=row["error"], detail=row["detail"])
    missing = sorted(set(dealt) - set(results))
    if missing:  # Ray Data returns every row or raises; a gap would be a bug here
        raise RuntimeError(f"ray.data.llm returned no row for requests {missing[:5]}")
    return results

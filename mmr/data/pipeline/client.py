"""The pipeline's models - teacher, captioner, cleaner, the small difficulty model (vLLM or
SGLang servers, `/v1/chat/completions`) - asked through mmr's one client, `mmr.llm.client`.

    client = ChatClient(cfg.distill.cot.client)
    results = client.chat_many([messages, ...], parse=check_reply)   # one ChatResult each

A call sends its requests concurrently (at most `concurrency` in flight), each with a
wall-clock `timeout_s` and `retries` retries with exponential backoff. `parse` checks a
reply and may raise `MalformedReply`, which is retried like an HTTP error. A request that
keeps failing gives a ChatResult with `error` set (a short reason such as `http_500`,
`timeout`, `malformed_reply`, `connection`) and a redacted `detail`; it never raises, so a
stage marks that sample failed and goes on. Reasoning returned apart from the content is
put back as `<think>...</think>`.

`api_base` and `api_bases` are replicas of one model, balanced by load: each takes the next
request whenever one of its `concurrency` slots is free, so a fast replica serves more than
a slow one. A request whose attempts at one replica ended in an error that blames the
endpoint (`connection`, `timeout`, HTTP 5xx or 429: `mmr.llm.client.endpoint_fault`) is
sent to one that has not failed it yet, and reported failed only when none is left; a
reply `parse` rejects or another 4xx is the request's fault and is not sent elsewhere.

A replica that keeps failing is rested by a circuit breaker: endpoint faults of
`breaker_failures` different requests in a row (any reply resets the count; a request's
retries there count once, so one poison request, which fails wherever it goes, cannot rest a
healthy replica however many retries it has) open it, and
its requests in flight stop retrying there and fail over at once. No request goes to it for
`breaker_cooldown_s`; then one request probes it: a reply closes the breaker, an endpoint
fault opens it again. So a dead replica costs a few attempts, and a hanging one about one
`timeout_s`, not each request's `timeout_s x (retries + 1)`. No request is lost to a breaker:
while every replica it may still go to is open, it waits for the first cooldown to end. A
failed probe fails the waiting requests too: one for which each replica has either failed
it or failed a probe in this call is reported failed, with that probe's reason. So with
every replica down a call ends after about one cooldown and one probe each, rather than
failing one request per cooldown. The breakers live as long as the process (one per replica
URL), not one call: stages make a ChatClient and call `chat_many` once per shard, and a
replica found dead in one shard should not be found dead again, at the same cost, in each
of the next. With one endpoint there is nowhere to fail over to, and nothing changes: no
breaker.

`ChatClient.stats` says what each replica did in the last call (also logged at INFO when
there are several). With `engine: ray_llm` the same requests, with the same retry policy
and results, go out as a Ray Data job through `ray.data.llm` (`mmr.data.pipeline.ray_llm`):
one actor per replica, balanced by load by Ray Data's scheduling (a batch of `concurrency`
requests to the actor that finished one), a request a replica failed with an endpoint fault
sent to the others in turn, each actor with breakers of its own by the rules above; `stats`
says what each served, failed over and how often its breakers opened.
With `engine: vllm` there is no endpoint: the model runs in vLLM engines in a Ray Data job
(`mmr.data.pipeline.ray_vllm`), with the same results and failure reasons.

What this module adds to `mmr.llm`: the config section, the request defaults (sampling
settings, `extra_body`), a synchronous front, the balancing over replicas, and the messages
a Sample becomes.

The API key is read from the environment variable `api_key_env` names, sent only in the
Authorization header, and never logged.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import concurrent.futures
import contextlib
import logging
import os
import queue
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from mmr.data.pipeline.config import ClientConfig
from mmr.data.pipeline.runner import StageError
from mmr.data.schema import IMAGE_PLACEHOLDER, Sample
from mmr.llm import client as llm
from mmr.llm.client import ChatResult, MalformedReply, Parse

__all__ = [
    "Breaker",
    "ChatClient",
    "ChatResult",
    "EndpointStats",
    "Guarded",
    "MalformedReply",
    "ask_under_breaker",
    "load_prompt",
    "make_client",
    "render",
    "reset_breakers",
    "user_message",
]

log = logging.getLogger(__name__)
Messages = list[dict[str, Any]]
_MAGIC = ((b"\x89PNG", "png"), (b"\xff\xd8\xff", "jpeg"), (b"GIF8", "gif"), (b"BM", "bmp"))


def load_prompt(name: str, path: str | None = None) -> str:
    """A prompt template: the file at `path`, else the packaged prompts/<name>.txt."""
    return llm.load_prompt("mmr.data.pipeline", name, path)


def render(template: str, **fields: str) -> str:
    """Fill `{name}` fields; str.replace, not str.format, because LaTeX is full of braces."""
    for key, value in fields.items():
        template = template.replace("{" + key + "}", value)
    return template


def _image_part(data: bytes) -> dict[str, Any]:
    mime = next((kind for magic, kind in _MAGIC if data.startswith(magic)), None)
    if mime is None:
        mime = "webp" if data[8:12] == b"WEBP" else "png"
    url = f"data:image/{mime};base64,{base64.b64encode(data).decode('ascii')}"
    return {"type": "image_url", "image_url": {"url": url}}


def user_message(sample: Sample, text: str, *, with_images: bool = True) -> Messages:
    """One user turn: the sample's images (where its `<image>` placeholders stand, else
    first) and `text`, which should hold the question with its placeholders."""
    images = sample.images if with_images else []
    chunks = text.split(IMAGE_PLACEHOLDER)
    if len(chunks) - 1 != len(images):  # no placeholders: images go before the text
        content = [_image_part(im) for im in images]
        content.append({"type": "text", "text": text.replace(IMAGE_PLACEHOLDER, "")})
    else:
        content = [{"type": "text", "text": chunks[0]}] if chunks[0] else []
        for image, chunk in zip(images, chunks[1:]):
            content.append(_image_part(image))
            if chunk:
                content.append({"type": "text", "text": chunk})
    return [{"role": "user", "content": content}]


@dataclass
class EndpointStats:
    """What one replica did in a ChatClient's last `chat_many`."""

    base_url: str  # without user:password@ or a query, which could hold a secret
    served: int = 0  # requests whose result it gave back, failures included
    failovers: int = 0  # requests it failed as unreachable or unhealthy, sent to another
    opened: int = 0  # times its circuit breaker opened (faults in a row, or a failed probe)


@dataclass
class Breaker:
    """One replica's circuit breaker (engine openai, several replicas; see the module)."""

    open_until: float | None = None  # open: no new request before this time.monotonic()
    probe: object | None = None  # once the cooldown is over: the one request trying it
    # The requests that met an endpoint fault here since it last answered (kept alive, so a
    # token is never reused while counted).
    culprits: set[object] = field(default_factory=set)

    @property
    def failures(self) -> int:
        """Requests in a row that met an endpoint fault at this replica."""
        return len(self.culprits)

    def admits(self, probe: object | None) -> bool:
        """Whether a request (holding `probe` if it is the probe) may make an attempt."""
        return self.open_until is None or (probe is not None and probe is self.probe)

    def close(self) -> None:
        """The replica answered: requests flow again."""
        self.open_until, self.probe = None, None
        self.culprits.clear()

    def fault(
        self, threshold: int, cooldown_s: float, probe: object | None, request: object
    ) -> bool:
        """Count an endpoint fault of `request` (a token alive while it runs here: its
        retries count once); True when it opens the breaker: the `threshold`-th request in
        a row while closed, or the probe's. Late faults of requests sent before it opened
        do not extend the cooldown."""
        probing = probe is not None and probe is self.probe
        if request in self.culprits and not probing:
            return False  # a retry of a request already counted
        self.culprits.add(request)
        if threshold and (probing or (self.open_until is None and self.failures >= threshold)):
            self.open_until, self.probe = time.monotonic() + cooldown_s, None
            return True
        return False


# Per process and replica URL, not per ChatClient: stages make one client per shard.
_BREAKERS: dict[str, Breaker] = {}


def reset_breakers() -> None:
    """Forget what every replica's breaker learnt (tests; a process that knows better)."""
    _BREAKERS.clear()


def _public(url: str) -> str:
    """`url` as it may be logged: no user:password@, no query (an `?api-key=`)."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))


class ChatClient:
    """Bounded, retrying requests to one OpenAI-compatible endpoint or several replicas."""

    def __init__(self, cfg: ClientConfig, *, name: str = "client") -> None:
        self.cfg = cfg
        base = cfg.api_base or os.environ.get("OPENAI_BASE_URL")
        if cfg.engine == "vllm":  # no endpoint: the engines load `model` (ray_vllm)
            base = f"vllm://{cfg.model}"
        if not base:
            raise ValueError(
                f"{name} has no endpoint: set its api_base (e.g. http://localhost:8000/v1) "
                "or OPENAI_BASE_URL"
            )
        self.url = base.rstrip("/") + "/chat/completions"
        self.endpoint = llm.Endpoint.of(cfg, base_url=base, model=cfg.model)
        # The replicas of the model, balanced by load (see `_Balance`).
        self.endpoints = [self.endpoint]
        self.endpoints += [llm.Endpoint.of(cfg, base_url=b, model=cfg.model) for b in cfg.api_bases]
        self.stats: list[EndpointStats] = []  # per replica, of the last chat_many

    def __repr__(self) -> str:  # never show the key
        return f"ChatClient(url={self.url!r}, model={self.cfg.model!r})"

    def chat_many(
        self,
        requests: Sequence[Messages],
        parse: Parse | Sequence[Parse] | None = None,
        *,
        on_result: Callable[[int, ChatResult], None] | None = None,
        **body: Any,
    ) -> list[ChatResult]:
        """One ChatResult per request, in order. `parse` is one function for all replies
        or one per request; `body` overrides request fields. `on_result(i, result)` is
        called as each request's final result arrives (in the calling thread's event loop;
        with `engine: ray_llm`, for all of them when the job ends)."""
        self.stats = []
        if not requests:
            return []
        parsers = list(parse) if isinstance(parse, Sequence) else [parse] * len(requests)
        cfg = self.cfg
        body = {
            "temperature": cfg.temperature,
            "top_p": cfg.top_p,
            "max_tokens": cfg.max_tokens,
            **cfg.extra_body,
            **body,
        }
        if cfg.engine == "openai":
            return asyncio.run(self._run(requests, parsers, body, on_result or _ignore))
        # A Ray Data job: every result when it ends.
        self.stats = [EndpointStats(_public(e.base_url)) for e in self.endpoints]
        if cfg.engine == "vllm":
            from mmr.data.pipeline import ray_vllm

            results = ray_vllm.chat_many(cfg, requests, parsers, body, self.stats)
        else:
            from mmr.data.pipeline import ray_llm

            breaker = (cfg.breaker_failures, cfg.breaker_cooldown_s)
            results = ray_llm.chat_many(
                self.endpoints, requests, parsers, body, self.stats, breaker=breaker
            )
        if on_result is not None:
            for i, result in enumerate(results):
                on_result(i, result)
        return results

    def stream(
        self,
        requests: Sequence[Messages],
        parse: Parse | Sequence[Parse] | None = None,
        *,
        batch: int = 1,
        **body: Any,
    ) -> Iterator[list[tuple[int, ChatResult]]]:
        """chat_many's results as they arrive: each item is the (index, result) pairs that
        arrived since the last one, at least `batch` of them (fewer only at the end), so
        the caller works on replies (checks answers) while the rest are in flight. The
        requests run in a thread of their own; the caller's work stays in the calling
        thread (math-verify's timeouts need the main thread). Every request is yielded
        exactly once; an exception in the requests is raised here. Leaving the loop early
        waits for the requests in flight."""
        arrived: queue.SimpleQueue[tuple[int, ChatResult] | None] = queue.SimpleQueue()

        def send() -> None:
            try:
                self.chat_many(requests, parse, on_result=lambda i, r: arrived.put((i, r)), **body)
            finally:
                arrived.put(None)

        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="mmr-chat") as pool:
            sent = pool.submit(send)
            done = False
            while not done:
                got = []
                item = arrived.get()  # block for `batch`, then take what else is there
                while item is not None:
                    got.append(item)
                    if len(got) >= batch and arrived.empty():
                        break
                    item = arrived.get()
                done = item is None
                if got:
                    yield got
            sent.result()

    async def _run(
        self,
        requests: Sequence[Messages],
        parsers: list[Parse | None],
        body: dict,
        on_result: Callable[[int, ChatResult], None],
    ) -> list[ChatResult]:
        # One client per endpoint and call: its connections (and its `concurrency` bound)
        # belong to that endpoint and this call's event loop.
        self.stats = [EndpointStats(_public(e.base_url)) for e in self.endpoints]
        async with contextlib.AsyncExitStack() as stack:
            clients = [await stack.enter_async_context(llm.Client(e)) for e in self.endpoints]
            # One endpoint: every request at once under the client's semaphore, which
            # lends a request's slot to another while it backs off before a retry.
            if len(clients) == 1:

                async def one(i: int) -> ChatResult:
                    result = await clients[0].chat(requests[i], parsers[i], **body)
                    on_result(i, result)
                    return result

                results = list(await asyncio.gather(*(one(i) for i in range(len(requests)))))
                self.stats[0].served = len(results)
                return results
            if self.cfg.breaker_failures:
                breakers = [_BREAKERS.setdefault(e.base_url, Breaker()) for e in self.endpoints]
            else:  # off: breakers of this call alone, which never open
                breakers = [Breaker() for _ in self.endpoints]
            balance = _Balance(
                clients, requests, parsers, body, self.stats, breakers, self.cfg, on_result
            )
            results = await balance.run()
        log.info(
            "%d requests to %s: %s",
            len(requests),
            self.cfg.model,
            ", ".join(
                f"{s.base_url} served {s.served} ({s.failovers} failed over, "
                f"breaker opened {s.opened}x)"
                for s in self.stats
            ),
        )
        return results


@dataclass
class Guarded:
    """What `ask_under_breaker` gives back."""

    result: ChatResult  # the request's result (cut short: its last failure there)
    opened: bool  # one of its failures opened the breaker (or opened it again: a probe)
    probe_failed: bool  # it was the probe and met an endpoint fault
    cut: bool  # the breaker opened and cut its retries short


async def ask_under_breaker(
    client: llm.Client,
    breaker: Breaker,
    policy: tuple[int, float],
    probe: object | None,
    messages: Messages,
    parse: Parse | None,
    body: dict[str, Any],
) -> Guarded:
    """One request at one replica under its circuit breaker, `policy` being
    (breaker_failures, breaker_cooldown_s): every attempt is counted by the breaker, a reply
    closes it, and none is made while it is open (a request is taken only where it admits
    one, with nothing awaited before the first attempt, so a cut comes after a failed
    attempt). Engine openai's `_Balance` and engine ray_llm's request actors both ask
    through it."""
    threshold, cooldown_s = policy
    last, request = ["", ""], object()  # request: this one at this replica, for the count
    opened = probe_failed = False

    def on_failure(reason: str, detail: str) -> None:
        nonlocal opened, probe_failed
        last[:] = reason, detail
        if not llm.endpoint_fault(reason):
            breaker.close()  # it answered (a reply `parse` rejects, a 4xx): it is up
            return
        probe_failed = probe is not None and probe is breaker.probe
        if breaker.fault(threshold, cooldown_s, probe, request):
            opened = True

    result = await client.chat(
        messages, parse, proceed=lambda: breaker.admits(probe), on_failure=on_failure, **body
    )
    if result.error is None:
        breaker.close()
    cut = result.error == "skipped"
    if cut:  # the breaker opened: its last failure here is the request's
        result = ChatResult(error=last[0], detail=last[1])
    return Guarded(result, opened, probe_failed, cut)


def _ignore(i: int, result: ChatResult) -> None:
    """chat_many's `on_result` when none is given."""


async def _wait(changed: asyncio.Condition, timeout_s: float | None) -> None:
    """Wait (holding `changed`) until woken, or `timeout_s` at most: a cooldown that ends
    wakes nobody."""
    if timeout_s is None:
        await changed.wait()
        return
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(changed.wait(), timeout_s)


class _Balance:
    """Each request through one of `clients`, replicas of one model, pulled by load:
    `concurrency` workers per endpoint, each taking the next request when its last one is
    done, so a replica's share follows its speed. A request an endpoint failed as
    unreachable or unhealthy goes back to be taken first by one that has not failed it.
    A worker takes nothing while its replica's breaker is open, and only the probe once
    the cooldown is over (the rules are in the module docstring).

    A worker holds its slot through the client's retries and their backoff: a replica that
    is failing takes fewer new requests meanwhile, which is the point."""

    def __init__(
        self,
        clients: list[llm.Client],
        requests: Sequence[Messages],
        parsers: list[Parse | None],
        body: dict,
        stats: list[EndpointStats],
        breakers: list[Breaker],
        cfg: ClientConfig,
        on_result: Callable[[int, ChatResult], None],
    ) -> None:
        self.clients, self.requests, self.parsers, self.body = clients, requests, parsers, body
        self.stats, self.breakers, self.cfg, self.on_result = stats, breakers, cfg, on_result
        self.results: list[ChatResult | None] = [None] * len(requests)
        self.fresh = collections.deque(range(len(requests)))
        self.handed_on: list[int] = []  # failed over, waiting for a replica not failing them
        self.tried: list[set[int]] = [set() for _ in requests]
        self.down: set[int] = set()  # replicas whose probe failed in this call, still open
        self.changed = asyncio.Condition()
        self.left = len(requests)
        for breaker in breakers:  # a probe of a call cut short (an exception) never returns
            breaker.probe = None

    async def run(self) -> list[ChatResult]:
        workers = [
            asyncio.ensure_future(self._worker(k))
            for k, client in enumerate(self.clients)
            for _ in range(client.endpoint.concurrency)
        ]
        try:
            await asyncio.gather(*workers)
        finally:  # a worker that raised (a bug) must not leave the others waiting
            for task in workers:
                task.cancel()
        return self.results  # type: ignore[return-value]

    async def _worker(self, k: int) -> None:
        while True:
            async with self.changed:
                # Nothing to take now, but a request in flight elsewhere may fail over here,
                # or this replica's cooldown may end.
                while (taken := self._take(k)) is None:
                    if self.left == 0:
                        return
                    await _wait(self.changed, self._cooldown_left(k))
            i, probe = taken
            self.tried[i].add(k)
            result, probe_failed, cut = await self._ask(k, i, probe)
            async with self.changed:
                self._settle(k, i, result, probe_failed, cut)
                self.changed.notify_all()

    def _take(self, k: int) -> tuple[int, object | None] | None:
        """The next request for replica `k` with its probe token (None: not the probe), or
        None: nothing for it, or its breaker is open (or half-open with a probe out)."""
        breaker = self.breakers[k]
        if breaker.open_until is not None and (
            breaker.probe is not None or time.monotonic() < breaker.open_until
        ):
            return None
        i = next((j for j in self.handed_on if k not in self.tried[j]), None)
        if i is not None:
            self.handed_on.remove(i)
        elif self.fresh:
            i = self.fresh.popleft()
        else:
            return None
        if breaker.open_until is None:
            return i, None
        breaker.probe = object()
        return i, breaker.probe

    def _cooldown_left(self, k: int) -> float | None:
        breaker = self.breakers[k]
        if breaker.open_until is None or breaker.probe is not None:
            return None
        left = breaker.open_until - time.monotonic()
        return left if left > 0 else None  # over: only a request handed on can wake it

    async def _ask(self, k: int, i: int, probe: object | None) -> tuple[ChatResult, bool, bool]:
        """Request `i` at replica `k` under its breaker (`ask_under_breaker`): (its result,
        whether it was the probe and failed, whether the breaker cut its retries short)."""
        cfg = self.cfg
        got = await ask_under_breaker(
            self.clients[k], self.breakers[k], (cfg.breaker_failures, cfg.breaker_cooldown_s),
            probe, self.requests[i], self.parsers[i], self.body,
        )  # fmt: skip
        if got.opened:
            self.stats[k].opened += 1
            if not got.probe_failed:  # opened from closed (a failed probe opens it again)
                log.warning(
                    "%s: endpoint faults of %d requests in a row (last: %s); no requests "
                    "for %s s",
                    self.stats[k].base_url, self.breakers[k].failures, got.result.error,
                    cfg.breaker_cooldown_s,
                )  # fmt: skip
        return got.result, got.probe_failed, got.cut

    def _settle(self, k: int, i: int, result: ChatResult, probe_failed: bool, cut: bool) -> None:
        """Request `i`'s result from replica `k`: final, or handed on to another replica."""
        if probe_failed:
            self.down.add(k)
        elif self.breakers[k].open_until is None:
            self.down.discard(k)
        if (cut or llm.endpoint_fault(result.error)) and not self._hopeless(i):
            self.stats[k].failovers += 1
            self.handed_on.append(i)
        else:
            self._finish(k, i, result)
        if not probe_failed:
            return
        # Replica k is still down: so is every request waiting that only it could answer.
        waiting, self.handed_on = self.handed_on, []
        if len(self.down) == len(self.clients):
            waiting += self.fresh
            self.fresh.clear()
        for j in waiting:
            if self._hopeless(j):
                self._finish(k, j, ChatResult(error=result.error, detail=result.detail))
            else:
                self.handed_on.append(j)

    def _hopeless(self, i: int) -> bool:
        """Whether every replica has failed request `i` or failed a probe in this call."""
        return len(self.tried[i] | self.down) == len(self.clients)

    def _finish(self, k: int, i: int, result: ChatResult) -> None:
        self.stats[k].served += 1
        self.results[i], self.left = result, self.left - 1
        self.on_result(i, result)


def make_client(cfg: ClientConfig, name: str) -> ChatClient:
    """A ChatClient for the config section `name`, or a StageError naming what is missing."""
    try:
        return ChatClient(cfg, name=name)
    except ValueError as err:
        raise StageError(str(err)) from None

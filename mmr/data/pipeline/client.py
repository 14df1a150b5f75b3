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
`ChatClient.stats` says what each replica did in the last call (also logged at INFO when
there are several). With `engine: ray_llm` the same requests, with the same retry policy
and results, go out as a Ray Data job through `ray.data.llm` (`mmr.data.pipeline.ray_llm`),
dealt to the replicas in turn before the job starts and not failed over.

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
import contextlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from mmr.data.pipeline.config import ClientConfig
from mmr.data.pipeline.runner import StageError
from mmr.data.schema import IMAGE_PLACEHOLDER, Sample
from mmr.llm import client as llm
from mmr.llm.client import ChatResult, MalformedReply, Parse

__all__ = [
    "ChatClient",
    "ChatResult",
    "EndpointStats",
    "MalformedReply",
    "load_prompt",
    "make_client",
    "render",
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


def _public(url: str) -> str:
    """`url` as it may be logged: no user:password@, no query (an `?api-key=`)."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))


class ChatClient:
    """Bounded, retrying requests to one OpenAI-compatible endpoint or several replicas."""

    def __init__(self, cfg: ClientConfig, *, name: str = "client") -> None:
        self.cfg = cfg
        base = cfg.api_base or os.environ.get("OPENAI_BASE_URL")
        if not base:
            raise ValueError(
                f"{name} has no endpoint: set its api_base (e.g. http://localhost:8000/v1) "
                "or OPENAI_BASE_URL"
            )
        self.url = base.rstrip("/") + "/chat/completions"
        self.endpoint = llm.Endpoint.of(cfg, base_url=base, model=cfg.model)
        # The replicas of the model, balanced by load (see `_balance`).
        self.endpoints = [self.endpoint]
        self.endpoints += [llm.Endpoint.of(cfg, base_url=b, model=cfg.model) for b in cfg.api_bases]
        self.stats: list[EndpointStats] = []  # per replica, of the last chat_many (engine openai)

    def __repr__(self) -> str:  # never show the key
        return f"ChatClient(url={self.url!r}, model={self.cfg.model!r})"

    def chat_many(
        self,
        requests: Sequence[Messages],
        parse: Parse | Sequence[Parse] | None = None,
        **body: Any,
    ) -> list[ChatResult]:
        """One ChatResult per request, in order. `parse` is one function for all replies
        or one per request; `body` overrides request fields."""
        self.stats = []  # engine ray_llm keeps none
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
        if cfg.engine == "ray_llm":
            from mmr.data.pipeline import ray_llm

            return ray_llm.chat_many(self.endpoints, requests, parsers, body)
        return asyncio.run(self._run(requests, parsers, body))

    async def _run(
        self, requests: Sequence[Messages], parsers: list[Parse | None], body: dict
    ) -> list[ChatResult]:
        # One client per endpoint and call: its connections (and its `concurrency` bound)
        # belong to that endpoint and this call's event loop.
        self.stats = [EndpointStats(_public(e.base_url)) for e in self.endpoints]
        async with contextlib.AsyncExitStack() as stack:
            clients = [await stack.enter_async_context(llm.Client(e)) for e in self.endpoints]
            # One endpoint: every request at once under the client's semaphore, which
            # lends a request's slot to another while it backs off before a retry.
            if len(clients) == 1:
                jobs = [clients[0].chat(m, p, **body) for m, p in zip(requests, parsers)]
                results = list(await asyncio.gather(*jobs))
                self.stats[0].served = len(results)
                return results
            results = await _balance(clients, requests, parsers, body, self.stats)
        log.info(
            "%d requests to %s: %s",
            len(requests),
            self.cfg.model,
            ", ".join(
                f"{s.base_url} served {s.served} ({s.failovers} failed over)" for s in self.stats
            ),
        )
        return results


async def _balance(
    clients: list[llm.Client],
    requests: Sequence[Messages],
    parsers: list[Parse | None],
    body: dict,
    stats: list[EndpointStats],
) -> list[ChatResult]:
    """Each request through one of `clients`, replicas of one model, pulled by load:
    `concurrency` workers per endpoint, each taking the next request when its last one is
    done, so a replica's share follows its speed. A request an endpoint failed as
    unreachable or unhealthy goes back to be taken first by one that has not failed it.

    A worker holds its slot through the client's retries and their backoff: a replica that
    is failing takes fewer new requests meanwhile, which is the point."""
    results: list[ChatResult | None] = [None] * len(requests)
    fresh = collections.deque(range(len(requests)))
    handed_on: list[int] = []  # failed over, waiting for an endpoint that has not failed them
    tried: list[set[int]] = [set() for _ in requests]
    changed = asyncio.Condition()
    left = len(requests)

    def take(k: int) -> int | None:
        for j, i in enumerate(handed_on):
            if k not in tried[i]:
                return handed_on.pop(j)
        return fresh.popleft() if fresh else None

    async def worker(k: int) -> None:
        nonlocal left
        while True:
            async with changed:
                # Nothing to take now, but a request in flight elsewhere may fail over here.
                while (i := take(k)) is None:
                    if left == 0:
                        return
                    await changed.wait()
            tried[i].add(k)
            result = await clients[k].chat(requests[i], parsers[i], **body)
            async with changed:
                if llm.endpoint_fault(result.error) and len(tried[i]) < len(clients):
                    stats[k].failovers += 1
                    handed_on.append(i)
                else:
                    stats[k].served += 1
                    results[i], left = result, left - 1
                changed.notify_all()

    workers = [
        asyncio.ensure_future(worker(k))
        for k, client in enumerate(clients)
        for _ in range(client.endpoint.concurrency)
    ]
    try:
        await asyncio.gather(*workers)
    finally:  # a worker that raised (a bug) must not leave the others waiting
        for task in workers:
            task.cancel()
    return results  # type: ignore[return-value]


def make_client(cfg: ClientConfig, name: str) -> ChatClient:
    """A ChatClient for the config section `name`, or a StageError naming what is missing."""
    try:
        return ChatClient(cfg, name=name)
    except ValueError as err:
        raise StageError(str(err)) from None

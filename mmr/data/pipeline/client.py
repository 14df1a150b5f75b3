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
put back as `<think>...</think>`. Requests are dealt in turn to `api_base` and `api_bases`
(replicas of one model), `concurrency` in flight at each. With `engine: ray_llm` the same
requests, with the same policy and results, go out as a Ray Data job through `ray.data.llm`
(`mmr.data.pipeline.ray_llm`). What this module adds to `mmr.llm`: the config section,
the request defaults (sampling settings, `extra_body`), a synchronous front, and the
messages a Sample becomes.

The API key is read from the environment variable `api_key_env` names, sent only in the
Authorization header, and never logged.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
from collections.abc import Sequence
from typing import Any

from mmr.data.pipeline.config import ClientConfig
from mmr.data.pipeline.runner import StageError
from mmr.data.schema import IMAGE_PLACEHOLDER, Sample
from mmr.llm import client as llm
from mmr.llm.client import ChatResult, MalformedReply, Parse

__all__ = [
    "ChatClient",
    "ChatResult",
    "MalformedReply",
    "load_prompt",
    "make_client",
    "render",
    "user_message",
]

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


class ChatClient:
    """Bounded, retrying requests to one OpenAI-compatible endpoint."""

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
        # The replicas of the model: each request is sent to one in turn.
        self.endpoints = [self.endpoint]
        self.endpoints += [llm.Endpoint.of(cfg, base_url=b, model=cfg.model) for b in cfg.api_bases]

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
        # belong to that endpoint and this call's event loop. Request i goes to endpoint
        # i mod n, as engine ray_llm deals them.
        async with contextlib.AsyncExitStack() as stack:
            clients = [await stack.enter_async_context(llm.Client(e)) for e in self.endpoints]
            jobs = [
                clients[i % len(clients)].chat(m, p, **body)
                for i, (m, p) in enumerate(zip(requests, parsers))
            ]
            return list(await asyncio.gather(*jobs))


def make_client(cfg: ClientConfig, name: str) -> ChatClient:
    """A ChatClient for the config section `name`, or a StageError naming what is missing."""
    try:
        return ChatClient(cfg, name=name)
    except ValueError as err:
        raise StageError(str(err)) from None

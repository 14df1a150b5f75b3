"""OpenAI-compatible chat client for the pipeline's models: teacher, captioner, cleaner,
the small difficulty model (vLLM or SGLang servers, `/v1/chat/completions`).

    client = ChatClient(cfg.distill.cot.client)
    results = client.chat_many([messages, ...], parse=check_reply)   # one ChatResult each

A call sends its requests concurrently (at most `concurrency` in flight, aiohttp), each
with a wall-clock `timeout_s` and `retries` retries with exponential backoff. `parse`
checks a reply and may raise `MalformedReply`, which is retried like an HTTP error: a
server that answers garbage gets the same chances as one that fails. A request that
keeps failing gives a ChatResult with `error` set (a short reason such as `http_500`,
`timeout`, `malformed_reply`, `connection`) and `detail`; it never raises, so a stage
marks that sample failed and goes on. Thinking models served with a reasoning parser
return the reasoning apart from the content; it is put back as `<think>...</think>`.

The API key is read from the environment variable `api_key_env` names, sent only in the
Authorization header, and never logged.
"""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

from mmr.data.pipeline.config import ClientConfig
from mmr.data.pipeline.runner import StageError
from mmr.data.schema import IMAGE_PLACEHOLDER, Sample

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
Parse = Callable[[str], Any]  # checks a reply; raises MalformedReply to have it retried
_MAGIC = ((b"\x89PNG", "png"), (b"\xff\xd8\xff", "jpeg"), (b"GIF8", "gif"), (b"BM", "bmp"))


class MalformedReply(ValueError):
    """A reply that arrived but cannot be used (raised by a `parse` function)."""


@dataclass
class ChatResult:
    """One request's outcome: `text` and `value` (what `parse` returned), or `error`."""

    text: str | None = None
    value: Any = None
    error: str | None = None  # short reason, counted in reports: http_500, timeout, ...
    detail: str = ""  # the last failure's message, kept as a report example


def load_prompt(name: str, path: str | None = None) -> str:
    """A prompt template: the file at `path`, else the packaged prompts/<name>.txt."""
    if path:
        with open(path, encoding="utf-8") as f:
            return f.read()
    return resources.files("mmr.data.pipeline").joinpath(f"prompts/{name}.txt").read_text("utf-8")


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


def _reply_text(reply: Any) -> str:
    try:
        message = reply["choices"][0]["message"]
        content = message.get("content") or ""
        reasoning = message.get("reasoning_content") or message.get("reasoning")
    except (KeyError, IndexError, TypeError, AttributeError):
        raise MalformedReply(f"not a chat completion: {str(reply)[:120]}") from None
    if not isinstance(content, str):
        raise MalformedReply("message content is not text")
    if reasoning and "<think>" not in content:
        return f"<think>{reasoning}</think>\n{content.lstrip()}"
    return content


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
        self._key = os.environ.get(cfg.api_key_env) or "EMPTY"

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
        return asyncio.run(self._run(requests, parsers, body))

    async def _run(
        self, requests: Sequence[Messages], parsers: list[Parse | None], body: dict
    ) -> list[ChatResult]:
        import aiohttp  # imported on use: most stages never talk to a model

        cfg = self.cfg
        sem = asyncio.Semaphore(cfg.concurrency)
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=cfg.concurrency),
            headers={"Authorization": f"Bearer {self._key}"},
        ) as session:
            jobs = [self._one(session, sem, m, p, body) for m, p in zip(requests, parsers)]
            return await asyncio.gather(*jobs)

    async def _one(
        self,
        session: Any,
        sem: asyncio.Semaphore,
        messages: Messages,
        parse: Parse | None,
        overrides: dict,
    ) -> ChatResult:
        cfg = self.cfg
        body = {
            "model": cfg.model,
            "messages": messages,
            "temperature": cfg.temperature,
            "top_p": cfg.top_p,
            "max_tokens": cfg.max_tokens,
            **cfg.extra_body,
            **overrides,
        }
        error, detail = "", ""
        for attempt in range(cfg.retries + 1):
            async with sem:
                try:
                    reply = await asyncio.wait_for(self._post(session, body), cfg.timeout_s)
                    text = _reply_text(reply)
                    return ChatResult(text=text, value=parse(text) if parse else text)
                except Exception as err:  # every failure is retried, then reported
                    error, detail = _classify(err, cfg.timeout_s)
            if attempt < cfg.retries:
                await asyncio.sleep(cfg.backoff_s * 2**attempt)
        return ChatResult(error=error, detail=detail)

    async def _post(self, session: Any, body: dict) -> Any:
        async with session.post(self.url, json=body) as response:
            if response.status >= 400:
                raise _HTTPError(response.status, (await response.text())[:200])
            return await response.json(content_type=None)


def make_client(cfg: ClientConfig, name: str) -> ChatClient:
    """A ChatClient for the config section `name`, or a StageError naming what is missing."""
    try:
        return ChatClient(cfg, name=name)
    except ValueError as err:
        raise StageError(str(err)) from None


class _HTTPError(Exception):
    def __init__(self, status: int, text: str) -> None:
        super().__init__(f"HTTP {status}: {text}")
        self.status = status


def _classify(err: Exception, timeout_s: float) -> tuple[str, str]:
    """(short reason for the report, message) of a failed attempt."""
    if isinstance(err, _HTTPError):
        return f"http_{err.status}", str(err)
    if isinstance(err, asyncio.TimeoutError):
        return "timeout", f"no reply within {timeout_s} s"
    if isinstance(err, MalformedReply):
        return "malformed_reply", str(err)
    if isinstance(err, ValueError):  # a body that is not JSON
        return "malformed_reply", f"{type(err).__name__}: {err}"[:200]
    return "connection", f"{type(err).__name__}: {err}"[:200]

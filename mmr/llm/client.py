"""One OpenAI-compatible chat client for every model mmr asks: the data pipeline's
teacher, captioner, cleaner and difficulty model (`mmr.data.pipeline.client.ChatClient`)
and the reward's LLM judge (`mmr.rewards.judge.Judge`) are thin layers on it.

    endpoint = Endpoint("http://localhost:8000/v1", "judge", concurrency=64, timeout_s=30)
    async with Client(endpoint) as client:                 # inside one event loop
        result = await client.chat(messages, parse=check, temperature=0.0)  # never raises

It is the `openai` package's AsyncOpenAI: its HTTP client and connection pool (on
aiohttp when aiohttp is installed: httpx's pool slows down with many requests in flight,
7-10 s instead of about 2 s for 1,024 requests at concurrency 64 in benchmarks/rewards.py),
its auth header, timeout and error types. A request is its `post` of the body as given
(`_create` says why not `chat.completions.create`). Its own retries are off
(`max_retries=0`): mmr retries in one place, here, with one policy that also covers what
openai's retries cannot see - a wall-clock deadline per request, a reply that `parse`
rejects (MalformedReply: a server that answers garbage gets the same chances as one that
fails), and a caller that must count every failed attempt or stop retrying (the judge's
cool-down). A second retry layer under this one would multiply the attempts and hide
failures from the caller.

A request that keeps failing returns a ChatResult with `error`, one short reason
(`http_500`, `timeout`, `connection`, `malformed_reply`) that reports count, and `detail`,
the last failure's message kept as an example. The API key is read from the environment
variable `api_key_env` names (or from the secrets file `MMR_SECRETS_FILE` names, see
`mmr.env_secrets`) and sent only in the Authorization header; `detail` is
redacted (the key's value and any `Bearer ...` token), because an endpoint's error page
may echo the request, and details travel into reports, manifests and logs.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from importlib import resources
from typing import Any

from mmr.env_secrets import load_secrets

__all__ = [
    "ChatResult",
    "Client",
    "Endpoint",
    "MalformedReply",
    "StatusError",
    "classify",
    "endpoint_fault",
    "load_prompt",
    "redact",
    "reply_text",
]

Messages = list[dict[str, Any]]
Parse = Callable[[str], Any]  # checks a reply; raises MalformedReply to have it retried
Post = Callable[[dict[str, Any]], Awaitable[Any]]  # sends one request body, returns its JSON
_BEARER = re.compile(r"\bbearer\s+[^\s\"',;}]+", re.I)
REDACTED = "[redacted]"


class MalformedReply(ValueError):
    """A reply that arrived but cannot be used (raised by a `parse` function)."""


class StatusError(Exception):
    """An HTTP error status, raised by a transport other than openai's (`Client(post=...)`)."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}")
        self.status, self.body = status, body


@dataclass
class ChatResult:
    """One request's outcome: `text` and `value` (what `parse` returned), or `error`."""

    text: str | None = None
    value: Any = None
    error: str | None = None  # short reason, counted in reports: http_500, timeout, ...
    detail: str = ""  # the last failure's message (redacted), kept as a report example


@dataclass(frozen=True)
class Endpoint:
    """Where a client sends requests and how hard it tries."""

    base_url: str  # e.g. http://localhost:8000/v1
    model: str  # the served model name
    api_key_env: str = "OPENAI_API_KEY"  # environment variable holding the key (never stored)
    concurrency: int = 32  # requests in flight at once
    timeout_s: float = 60.0  # wall-clock limit of one request
    retries: int = 2  # extra attempts after a failed one
    backoff_s: float = 1.0  # first retry delay; doubles each retry

    @classmethod
    def of(cls, cfg: Any, *, base_url: str, model: str) -> Endpoint:
        """From a config section with these same fields (the judge's, a pipeline model's)."""
        names = ("api_key_env", "concurrency", "timeout_s", "retries", "backoff_s")
        return cls(base_url=base_url, model=model, **{k: getattr(cfg, k) for k in names})


def load_prompt(package: str, name: str, path: str | None = None) -> str:
    """A prompt template: the file at `path`, else `package`'s prompts/<name>.txt."""
    if path:
        with open(path, encoding="utf-8") as f:
            return f.read()
    return resources.files(package).joinpath(f"prompts/{name}.txt").read_text("utf-8")


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` without the values of `secrets` and without any `Bearer <token>`."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, REDACTED)
    return _BEARER.sub("Bearer " + REDACTED, text)


def reply_text(completion: Any) -> str:
    """The assistant's text from a chat completion's JSON; reasoning a server returned
    apart (vLLM/SGLang reasoning parsers) is put back in front as `<think>...</think>`,
    where mmr expects it."""
    try:
        message = completion["choices"][0]["message"]
        content = message.get("content") or ""
        reasoning = message.get("reasoning_content") or message.get("reasoning")
    except (AttributeError, IndexError, KeyError, TypeError):
        raise MalformedReply(f"not a chat completion: {str(completion)[:120]}") from None
    if not isinstance(content, str):
        raise MalformedReply("message content is not text")
    if isinstance(reasoning, str) and reasoning and "<think>" not in content:
        return f"<think>{reasoning}</think>\n{content.lstrip()}"
    return content


def classify(err: BaseException, timeout_s: float, secrets: Iterable[str] = ()) -> tuple[str, str]:
    """(short reason for reports, redacted message) of a failed attempt."""
    import openai

    if isinstance(err, openai.APIStatusError):
        status = err.status_code
        reason, message = f"http_{status}", f"HTTP {status}: {_body(err.response)}"
    elif isinstance(err, StatusError):
        reason, message = f"http_{err.status}", f"HTTP {err.status}: {err.body}"
    elif isinstance(err, asyncio.TimeoutError) or (
        isinstance(err, openai.APITimeoutError) and _timed_out(err)
    ):
        return "timeout", f"no reply within {timeout_s} s"
    elif isinstance(err, MalformedReply):
        reason, message = "malformed_reply", str(err)
    elif isinstance(err, (ValueError, openai.APIResponseValidationError)):  # not JSON
        reason, message = "malformed_reply", f"{type(err).__name__}: {err}"
    else:  # refused, reset or dropped connections (openai.APIConnectionError and others)
        root = _first_cause(err)  # openai says only "Connection error." or "timed out"
        message = f"{type(err).__name__}: {err}"
        if root is not err:
            message += f" ({type(root).__name__}: {root})"
        reason = "connection"
    # Redact before cutting: a cut through the key would leave its first part behind.
    return reason, redact(message, secrets)[:200]


def endpoint_fault(reason: str | None) -> bool:
    """Whether a failure `classify` named says the endpoint is unreachable or unhealthy
    (refused or dropped connections, no reply in time, HTTP 5xx or 429), so another replica
    of the model may answer: a reply `parse` rejects or a 4xx would fail there too."""
    if reason in ("connection", "timeout", "http_429"):
        return True
    return reason is not None and reason.startswith("http_5")


def _first_cause(err: BaseException) -> BaseException:
    while err.__cause__ is not None:
        err = err.__cause__
    return err


def _timed_out(err: BaseException) -> bool:
    """Whether the first cause of an openai timeout is a timeout: its aiohttp transport
    maps a refused or closed connection to httpx's ConnectTimeout too."""
    root = _first_cause(err)
    return isinstance(root, TimeoutError) or "Timeout" in type(root).__name__


def _body(response: Any) -> str:
    try:
        return response.text
    except Exception:  # a body that was never read
        return ""


def _http_client(concurrency: int, timeout_s: float) -> tuple[Any, str]:
    """openai's aiohttp-backed HTTP client when aiohttp imports, else its httpx one."""
    import openai

    try:
        import httpx2 as httpx  # what openai >= 3 is built on
    except ImportError:
        import httpx
    kw = {
        "timeout": timeout_s,
        "limits": httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
    }
    try:
        import aiohttp  # noqa: F401  (the transport needs it; ray brings it)

        return openai.DefaultAioHttpClient(**kw), "aiohttp"
    except (ImportError, RuntimeError, AttributeError):  # no aiohttp, or an openai without it
        return openai.DefaultAsyncHttpxClient(**kw), "httpx"


class Client:
    """Bounded, retrying chat requests to one endpoint, on the event loop that made it.

    `post` replaces openai's transport: it sends one request body and returns the reply's
    JSON, raising StatusError for an HTTP error (`mmr.data.pipeline.ray_llm` sends through Ray's)."""

    def __init__(self, endpoint: Endpoint, *, post: Post | None = None) -> None:
        self.endpoint = endpoint
        load_secrets()  # the key from $MMR_SECRETS_FILE where the environment lacks it
        key = os.environ.get(endpoint.api_key_env) or ""
        self._secrets = (key,) if key else ()
        self._post, self._openai = post, None
        if post is None:
            import openai  # imported on use: most of mmr never talks to a model

            self.http_client, self.transport = _http_client(
                endpoint.concurrency, endpoint.timeout_s
            )
            self._openai = openai.AsyncOpenAI(
                base_url=endpoint.base_url,
                api_key=key or "EMPTY",
                max_retries=0,  # retried below, with the caller's policy (see the docstring)
                timeout=endpoint.timeout_s,
                http_client=self.http_client,
            )
        self._sem = asyncio.Semaphore(endpoint.concurrency)
        self.requests = 0  # HTTP requests sent, retries included

    def __repr__(self) -> str:  # never show the key
        return f"Client(base_url={self.endpoint.base_url!r}, model={self.endpoint.model!r})"

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._openai is not None:
            await self._openai.close()

    def redact(self, text: str) -> str:
        return redact(text, self._secrets)

    async def chat(
        self,
        messages: Messages,
        parse: Parse | None = None,
        *,
        proceed: Callable[[], bool] | None = None,
        on_failure: Callable[[str, str], None] | None = None,
        **body: Any,
    ) -> ChatResult:
        """One request with up to `retries` retries; `body` fields go into the request as
        they are. `proceed()` is asked before each attempt (False: give up now, error
        `skipped`); `on_failure(reason, detail)` hears about each failed attempt."""
        ep = self.endpoint
        reason, detail = "", ""
        for attempt in range(ep.retries + 1):
            if proceed is not None and not proceed():  # asked before the backoff, too
                return ChatResult(error="skipped", detail=detail or "the caller stopped asking")
            if attempt:
                await asyncio.sleep(ep.backoff_s * 2 ** (attempt - 1))
            async with self._sem:
                if proceed is not None and not proceed():  # it changed while this one waited
                    return ChatResult(error="skipped", detail=detail or "the caller stopped")
                try:
                    self.requests += 1
                    completion = await asyncio.wait_for(self._create(messages, body), ep.timeout_s)
                    text = reply_text(completion)
                    return ChatResult(text=text, value=parse(text) if parse else text)
                except Exception as err:  # every failure is retried, then reported
                    reason, detail = classify(err, ep.timeout_s, self._secrets)
            if on_failure is not None:
                on_failure(reason, detail)
        return ChatResult(error=reason, detail=detail)

    async def _create(self, messages: Messages, body: dict[str, Any]) -> Any:
        # AsyncOpenAI's own `post` (its documented way to send any body), not
        # `chat.completions.create`: the body goes out as given (sampling settings and a
        # server's own keys such as chat_template_kwargs, with no check against openai's
        # schema), and the reply comes back as parsed JSON. create() walks every message
        # through its type transforms and builds a pydantic model of the reply: at 64 in
        # flight that CPU work took the judge benchmark from 2.1 s to 3.5 s.
        payload = {"model": self.endpoint.model, "messages": messages, **body}
        if self._post is not None:
            return await self._post(payload)
        return await self._openai.post("/chat/completions", cast_to=object, body=payload)

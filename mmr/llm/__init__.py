"""The shared floor for talking to OpenAI-compatible servers, below `mmr.data` and
`mmr.rewards` (neither imports the other for it): `client` is the one chat client,
`server` the one local server that tests, benchmarks and the demo's teacher answer from.
Importing it is cheap: `openai` is imported when a client is made."""

from mmr.llm.client import (
    ChatResult,
    Client,
    Endpoint,
    MalformedReply,
    classify,
    endpoint_fault,
    load_prompt,
    redact,
    reply_text,
)

__all__ = [
    "ChatResult",
    "Client",
    "Endpoint",
    "MalformedReply",
    "classify",
    "endpoint_fault",
    "load_prompt",
    "redact",
    "reply_text",
]

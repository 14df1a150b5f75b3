"""The tests' view of mmr's one local OpenAI-compatible server (`mmr.llm.server`).

Tests (data pipeline, rewards, RL) start it in-process and point mmr's clients at
`server.base_url`; `server.script` decides each reply (the actions are listed in
`mmr.llm.server`). `FakeOpenAIServer().script` gets each request's JSON body and answers
"ok" by default; `FakeJudgeServer().script` gets the text of the last message (what a
judge reads) and answers CORRECT. Both record `requests` (path, headers, body) and
`bodies`, and the most requests held at once (`max_in_flight`).
"""

from __future__ import annotations

from typing import Any

# mmr's client imports openai when it is first used, which takes a second or more on a
# busy machine; tests that time a client (a dead judge must fall back within seconds)
# time the client, not that import.
import openai  # noqa: F401

from mmr.llm.server import OpenAIServer, prompt_text

__all__ = [
    "FakeJudgeServer",
    "FakeOpenAIServer",
    "answer_between",
    "image_count",
    "prompt_text",
    "student_answer",
]

FakeOpenAIServer = OpenAIServer


class FakeJudgeServer(OpenAIServer):
    """The server with a judge's defaults: scripts read the prompt, replies are CORRECT."""

    def __init__(self) -> None:
        super().__init__(reply="CORRECT", view=prompt_text)


def image_count(body: dict[str, Any]) -> int:
    content = body["messages"][-1]["content"]
    return 0 if isinstance(content, str) else sum(p["type"] == "image_url" for p in content)


def answer_between(prompt: str, start: str, end: str) -> str:
    """The text between two markers of the prompt (e.g. the student's answer)."""
    i = prompt.find(start)
    j = prompt.find(end, i + len(start))
    return prompt[i + len(start) : j].strip() if i >= 0 and j >= 0 else ""


def student_answer(prompt: str) -> str:
    """The answer a judge prompt asks about (mmr's judge template)."""
    return answer_between(prompt, "Student's final answer:", "Decide whether")

"""Hand-made samples and a scripted arithmetic teacher for the pipeline tests."""

from __future__ import annotations

import re
from typing import Any

from mmr.data.schema import Sample
from tests.fake_openai import prompt_text

WORDS = [f"w{i}" for i in range(400)]


def long_think(n_words: int = 250, offset: int = 0) -> str:
    """`n_words` words with no repeated 50-gram."""
    return " ".join(WORDS[(offset + i) % len(WORDS)] for i in range(n_words))


def sample(i: int, *, response: str | None = None, answer: str = "7", **kw: Any) -> Sample:
    if response is None:
        response = f"<think>{long_think(250, i)}</think>\n<answer>{answer}</answer>"
    kw.setdefault("caption", long_think(120, i + 7))
    return Sample(
        id=f"s{i:03d}",
        source=kw.pop("source", "unit"),
        question=f"Q{i}: what?",
        answer=answer,
        response=response,
        **kw,
    )


def arithmetic(n: int) -> list[Sample]:
    """`n` questions "Q<i>: What is a + b?" with their sums, no responses."""
    return [
        Sample(
            id=f"q{i:03d}",
            source="arith",
            question=f"Q{i}: What is {i} + {i % 7}?",
            answer=str(i + i % 7),
        )
        for i in range(n)
    ]


_Q = re.compile(r"Q(\d+): What is (\d+) \+ (\d+)\?")


def parse_question(body: dict[str, Any]) -> tuple[int, int]:
    """(question number, correct sum) from a request."""
    m = _Q.search(prompt_text(body))
    assert m, prompt_text(body)
    return int(m.group(1)), int(m.group(2)) + int(m.group(3))


def solution(total: int | str) -> str:
    return f"<think>I add the two numbers carefully.</think>\n<answer>{total}</answer>"

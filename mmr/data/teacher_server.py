"""A local OpenAI-compatible teacher that answers synthetic tasks with the rule teacher.

    python -m mmr.data.teacher_server --tasks runs/demo/tasks_train.parquet --port 8000
    mmr data run --config recipes/data/demo.yaml --step all --input runs/demo/tasks_train.parquet \
        --output runs/demo/data distill.cot.client.api_base=http://127.0.0.1:8000/v1

The demo's distill stage runs its real client code (HTTP, concurrency, retries, parsing)
against this server instead of a 235B model. The server knows the tasks it was started
with (Sample files written by `mmr.data.synthetic`, whose `meta` describes each scene) and
recognises a request by its image's pixels and its question text; it answers with
`mmr.data.synthetic.teacher_response`, a correct `<think>` trace ending in `\\boxed{}`
(`--max-rechecks N`: with 0..N redundant re-checking sentences in it, the count a hash of
the task, so verbosity varies independently of correctness).
A task it does not know gets HTTP 404 (the client counts it as failed), never a guess.

`RuleJudge` is the demo's stand-in for the LLM judge of GSPO's reward (`mmr.rewards.judge`,
asked about the answers the rules could not confirm): it reads mmr's judge prompt (the
problem, the reference answer, the student's final answer) and replies CORRECT or INCORRECT
by the rules that prompt states and a synthetic task needs: the same option given as its
letter or as its text ("red" or "the red one" for "C" where option C is red), numbers as
digits or words, case, spacing, a `\\boxed{}` or a trailing full stop. A request that is not
that prompt gets HTTP 400.

The HTTP side is mmr's one local server, the one the tests use; this module is the script
that answers its requests: `OpenAIServer(RuleTeacher(task_files)).start()`.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import re
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from mmr.data.io import read_samples
from mmr.data.schema import IMAGE_PLACEHOLDER
from mmr.data.synthetic import (
    SKIP_FORMS,
    check_max_rechecks,
    check_skip_lookup,
    teacher_response,
)
from mmr.llm.server import OpenAIServer

__all__ = ["RuleJudge", "RuleTeacher", "pixel_key"]


def pixel_key(data: bytes) -> str:
    """A hash of an image's RGB pixels: the same for any lossless re-encoding of it."""
    with Image.open(io.BytesIO(data)) as image:
        rgb = image.convert("RGB")
        return hashlib.sha1(repr(rgb.size).encode() + rgb.tobytes()).hexdigest()


def _request_parts(body: dict[str, Any]) -> tuple[str, list[bytes]]:
    """The last user message's text and decoded images."""
    content = body["messages"][-1]["content"]
    if isinstance(content, str):
        return content, []
    text, images = "", []
    for part in content:
        if part.get("type") == "text":
            text += part.get("text", "")
        elif part.get("type") == "image_url":
            url = part["image_url"]["url"]
            images.append(base64.b64decode(url.split(",", 1)[1]))
    return text, images


class RuleTeacher:
    """The server's script: a request's JSON body -> the rule teacher's trace, or an error."""

    def __init__(
        self,
        task_files: Iterable[str | Path],
        max_rechecks: int = 0,
        skip_lookup: float = 0.0,
        skip_form: str = "lookup",
    ) -> None:
        check_max_rechecks(max_rechecks)
        check_skip_lookup(skip_lookup, skip_form)
        self.max_rechecks = max_rechecks
        self.skip_lookup, self.skip_form = skip_lookup, skip_form
        self.tasks: dict[str, list[tuple[str, dict[str, Any]]]] = {}
        for file in task_files:
            for sample in read_samples(file):
                if sample.images and "kind" in sample.meta:
                    question = sample.question.replace(IMAGE_PLACEHOLDER, "").strip()
                    self.tasks.setdefault(pixel_key(sample.images[0]), []).append(
                        (question, sample.meta)
                    )
        self.lock = threading.Lock()
        self.served = 0
        self.unknown = 0

    def __call__(self, body: dict[str, Any]) -> Any:
        try:
            reply = self.answer(body)
        except (ValueError, KeyError, TypeError, IndexError, OSError) as err:
            return ("status", 400, f"bad request: {err}")
        with self.lock:
            self.served += reply is not None
            self.unknown += reply is None
        return reply if reply is not None else ("status", 404, "not a task this teacher was given")

    def answer(self, body: dict[str, Any]) -> str | None:
        """The rule teacher's trace for the task in the request, or None if unknown."""
        text, images = _request_parts(body)
        if not images:
            return None
        for question, meta in self.tasks.get(pixel_key(images[0]), []):
            if question in " ".join(text.split()) or question in text:
                return teacher_response(
                    meta,
                    max_rechecks=self.max_rechecks,
                    skip_lookup=self.skip_lookup,
                    skip_form=self.skip_form,
                )
        return None


_NUMBERS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
_NUMBER_WORDS = {word: str(i) for i, word in enumerate(_NUMBERS)}


def same_answer(question: str, gold: str, answer: str) -> bool:
    """Whether `answer` means `gold` for `question`: mmr's own answer rules
    (`mmr.rewards.accuracy`: a boxed answer's content, an option's letter or text, numbers,
    LaTeX and case) after a number word is made its digits; where they cannot decide, an
    answer naming exactly one option's text ("the red one") is that option."""
    from mmr.rewards.accuracy import (
        extract_final_answer,
        normalize_answer,
        parse_choices,
        relaxed_match,
    )

    boxed, _ = extract_final_answer(answer)  # a `\\boxed{}` answer: its content
    spelled = normalize_answer(boxed if boxed is not None else answer)
    decision = relaxed_match(_NUMBER_WORDS.get(spelled, spelled), gold, question)
    if decision.correct is not None:
        return decision.correct
    named = [letter for letter, text in parse_choices(question).items()
             if re.search(rf"\b{re.escape(normalize_answer(text))}\b", spelled)]  # fmt: skip
    return len(named) == 1 and relaxed_match(named[0], gold, question).correct is True


class RuleJudge:
    """The server's script for judge requests: mmr's judge prompt -> CORRECT or INCORRECT.
    `requests` and `correct` count what it was asked and what it accepted."""

    def __init__(self, prompt_file: str | None = None) -> None:
        from mmr.rewards.judge import load_prompt

        template = load_prompt(prompt_file)
        fields = ("{question}", "{ground_truth}", "{answer}")
        if any(template.count(f) != 1 for f in fields):
            raise ValueError("the judge prompt needs {question}, {ground_truth}, {answer} once")
        head, rest = template.split(fields[0])
        mid1, rest = rest.split(fields[1])
        mid2, tail = rest.split(fields[2])
        self.pattern = re.compile(
            "".join([re.escape(head), "(.*)", re.escape(mid1), "(.*)", re.escape(mid2), "(.*)",
                     re.escape(tail)]), re.S)  # fmt: skip
        self.lock = threading.Lock()
        self.requests = 0
        self.correct = 0

    def __call__(self, body: dict[str, Any]) -> Any:
        try:
            text, _ = _request_parts(body)
        except (KeyError, TypeError, IndexError, ValueError) as err:
            return ("status", 400, f"bad request: {err}")
        found = self.pattern.fullmatch(text)
        if found is None:
            return ("status", 400, "not mmr's judge prompt")
        question, gold, answer = found.groups()
        verdict = same_answer(question, gold, answer)
        with self.lock:
            self.requests += 1
            self.correct += verdict
        return "CORRECT" if verdict else "INCORRECT"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve the rule teacher over the OpenAI API.")
    parser.add_argument("--tasks", nargs="+", required=True, help="synthetic task files")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--latency-s", type=float, default=0.0,
                        help="delay every reply (a model's latency, for throughput benchmarks)")  # fmt: skip
    parser.add_argument("--max-rechecks", type=int, default=0,
                        help="0..N redundant re-checks per trace, by a hash of the task (0: none)")  # fmt: skip
    parser.add_argument("--skip-lookup", type=float, default=0.0,
                        help="share of option-letter traces that name the letter without "
                             "reading the options out, by a hash of the task (0: none)")  # fmt: skip
    parser.add_argument("--skip-form", default="lookup", choices=SKIP_FORMS,
                        help="what a skipped trace leaves out: the lookup, or every step")  # fmt: skip
    args = parser.parse_args(argv)
    teacher = RuleTeacher(args.tasks, max_rechecks=args.max_rechecks,
                          skip_lookup=args.skip_lookup, skip_form=args.skip_form)  # fmt: skip
    server = OpenAIServer(teacher, host=args.host, port=args.port)
    server.latency_s = args.latency_s
    print(f"rule teacher for {sum(map(len, teacher.tasks.values()))} tasks at {server.base_url}")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        server.server_close()


if __name__ == "__main__":
    main()

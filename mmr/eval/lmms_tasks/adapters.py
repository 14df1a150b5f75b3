"""The benchmarks of mmr's lmms-eval folder: where each dataset keeps its question, images and
gold answer, and the task functions built on them (utils.py exports them under the names
the YAMLs use; lmms-eval loads utils.py by file path, where a dataclass cannot be defined).

Each benchmark's functions:

- `doc_to_messages`: the chat turn `mmr.data.chat` builds for training (images first, or at
  `<image>` placeholders; mmr's instruction after the question), with the PIL images in it;
- `doc_to_visual` / `doc_to_text`: the same images and text, for lmms-eval's simple models;
- `doc_to_target`: the gold answer (a letter for multiple choice);
- `process_results`: the responses scored by `mmr.rewards.score_batch`, the reward that RL
  trains on (final-answer extraction, rules, math-verify; the LLM judge only when
  USE_LLM_JUDGE or the config turns it on), reported as `acc` and `format`.

MMR_REWARD_CONFIG names a RewardConfig YAML (what `mmr eval --reward-config` takes); unset,
the defaults. Field names are the Hugging Face datasets' that lmms-eval 0.7.3's tasks read.
"""

from __future__ import annotations

import ast
import io
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

from PIL import Image

from mmr.data.chat import user_content
from mmr.data.schema import IMAGE_PLACEHOLDER
from mmr.data.synthetic import INSTRUCTION
from mmr.rewards import RewardConfig, score_batch

MC_INSTRUCTION = "Answer with the option's letter."  # as mmr.data.synthetic's MC questions
Doc = Mapping[str, Any]


@dataclass(frozen=True)
class Benchmark:
    """Where one benchmark's rows keep what a prompt and its score need."""

    question: Callable[[Doc], str]  # question text, options included
    images: Callable[[Doc], list[Any]]  # PIL images or encoded bytes, in prompt order
    gold: Callable[[Doc], str]  # the answer a response is scored against
    instruction: bool = True  # append mmr's INSTRUCTION (a Sample's question has it)


def letter(i: int) -> str:
    return chr(ord("A") + i)


def with_options(question: str, options: list[str]) -> str:
    """The question, then `A. ...` lines and the letter instruction (none without options)."""
    if not options:
        return question
    lines = [f"{letter(i)}. {option}" for i, option in enumerate(options)]
    return "\n".join([question, *lines, MC_INSTRUCTION])


def field(name: str) -> Callable[[Doc], str]:
    return lambda doc: str(doc[name])


def image(name: str) -> Callable[[Doc], list[Any]]:
    """One image column; a missing or empty one (MathVerse's text-only rows) is no image."""
    return lambda doc: [doc[name]] if doc.get(name) not in (None, "") else []


def mathvista_gold(doc: Doc) -> str:
    # Multiple choice stores the option's text; the question lists the options as letters.
    if doc.get("question_type") == "multi_choice" and doc.get("choices"):
        return letter(list(doc["choices"]).index(doc["answer"]))
    return str(doc["answer"])


_MMMU_IMAGE = re.compile(r"<image (\d+)>")


def mmmu_text(doc: Doc) -> str:
    options = ast.literal_eval(doc["options"]) if doc["question_type"] == "multiple-choice" else []
    return with_options(doc["question"], options)


def mmmu_question(doc: Doc) -> str:
    # `<image k>` (in the question or an option) becomes mmr's `<image>` placeholder.
    return _MMMU_IMAGE.sub(IMAGE_PLACEHOLDER, mmmu_text(doc))


def mmmu_images(doc: Doc) -> list[Any]:
    return [doc[f"image_{k}"] for k in _MMMU_IMAGE.findall(mmmu_text(doc))]


def charxiv_reasoning_question(doc: Doc) -> str:
    # CharXiv's own answer instructions per question source, as lmms-eval words them.
    from lmms_eval.tasks.charxiv.reasoning.utils import charxiv_reasoning_doc_to_text_cot

    return charxiv_reasoning_doc_to_text_cot(doc)


def sample_images(doc: Doc) -> list[Any]:
    return list(doc.get("images") or [])


BENCHMARKS: dict[str, Benchmark] = {
    "mathvista": Benchmark(field("query"), image("decoded_image"), mathvista_gold),
    "mathverse": Benchmark(field("query_cot"), image("image"), field("answer")),
    "mathvision": Benchmark(
        lambda d: with_options(d["question"], list(d.get("options") or [])),
        image("decoded_image"),
        field("answer"),
    ),
    "wemath": Benchmark(
        lambda d: f"{d['question']}\n{d['option']}", image("image_path"), field("answer")
    ),
    "logicvista": Benchmark(field("question"), image("image"), field("answer")),
    "dynamath": Benchmark(field("question"), image("decoded_image"), field("ground_truth")),
    "mmmu": Benchmark(mmmu_question, mmmu_images, field("answer")),
    "charxiv_reasoning": Benchmark(
        charxiv_reasoning_question, image("image"), field("reasoning_a")
    ),
    # Rows of lmms-eval's CharXiv process_docs: four descriptive questions per chart.
    "charxiv_descriptive": Benchmark(
        field("descriptive_q"), image("image"), field("descriptive_a")
    ),
    # A parquet/JSONL of mmr Samples (mmr.data.io's columns): the question is the prompt.
    "sample": Benchmark(field("question"), sample_images, field("answer"), instruction=False),
}


def prompt(name: str, doc: Doc) -> str:
    """The user text, `<image>` placeholders included where the benchmark has them."""
    b = BENCHMARKS[name]
    text = b.question(doc).strip()
    return f"{text}\n{INSTRUCTION}" if b.instruction else text


def visuals(name: str, doc: Doc) -> list[Image.Image]:
    out = []
    for img in BENCHMARKS[name].images(doc):
        if isinstance(img, bytes | bytearray):
            img = Image.open(io.BytesIO(img))
        out.append(img.convert("RGB"))
    return out


def messages(name: str, doc: Doc, system_prompt: str | None = None) -> list[dict[str, Any]]:
    """lmms-eval's chat messages: mmr's user turn with each image part given its image."""
    images = visuals(name, doc)
    content = user_content(prompt(name, doc), len(images))
    parts = iter(p for p in content if p["type"] == "image")
    for part, img in zip(parts, images):
        part["url"] = img
    turns = [{"role": "user", "content": content}]
    if system_prompt:
        turns.insert(0, {"role": "system", "content": [{"type": "text", "text": system_prompt}]})
    return turns


@cache
def reward_config() -> RewardConfig:
    from mmr.config import load_config

    return load_config(RewardConfig, os.environ.get("MMR_REWARD_CONFIG") or None)


def score(name: str, doc: Doc, results: list[str]) -> dict[str, float]:
    """Mean accuracy and format over a doc's responses (`repeats` gives several)."""
    question = prompt(name, doc)
    rows = score_batch(
        [{"response": r, "ground_truth": BENCHMARKS[name].gold(doc), "question": question,
          "data_source": name, "extra_info": {"question": question}} for r in results],
        reward_config(),
    )  # fmt: skip
    n = max(len(rows), 1)
    return {
        "acc": sum(r["accuracy"] for r in rows) / n,
        "format": sum(r["format"] for r in rows) / n,
    }


def task_functions(name: str) -> dict[str, Callable[..., Any]]:
    """`<name>_doc_to_messages`, ..., `<name>_process_results` for one benchmark."""

    def doc_to_messages(doc: Doc, lmms_eval_specific_kwargs: dict | None = None) -> list[dict]:
        return messages(name, doc, (lmms_eval_specific_kwargs or {}).get("system_prompt"))

    def doc_to_visual(doc: Doc) -> list[Image.Image]:
        return visuals(name, doc)

    def doc_to_text(doc: Doc, lmms_eval_specific_kwargs: dict | None = None) -> str:
        # Simple models place the images themselves: the text without placeholders.
        return prompt(name, doc).replace(IMAGE_PLACEHOLDER, "").strip()

    def doc_to_target(doc: Doc) -> str:
        return BENCHMARKS[name].gold(doc)

    def process_results(doc: Doc, results: list[str]) -> dict[str, float]:
        return score(name, doc, results)

    return {f"{name}_{fn.__name__}": fn for fn in
            (doc_to_messages, doc_to_visual, doc_to_text, doc_to_target, process_results)}  # fmt: skip


def all_task_functions() -> dict[str, Callable[..., Any]]:
    """Every benchmark's task functions, by the names the YAMLs use."""
    return {k: v for name in BENCHMARKS for k, v in task_functions(name).items()}

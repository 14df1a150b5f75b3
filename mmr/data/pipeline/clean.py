"""Stage 2, clean: images made safe to train on, questions cleaned of noise.

    mmr data run --config recipes/data/mfr.yaml --step clean --input DIR/collected --output DIR

Images (MMFineReason's image cleaning): a sample with an image PIL cannot fully decode is
dropped (`dropped/image/corrupt_image`); an image whose longest edge is over
`max_image_size` (2048) is scaled down, aspect kept; any mode other than RGB is converted
(transparent pixels onto white). Untouched images keep their bytes; changed ones are
re-encoded as JPEG (quality 95) if they were JPEG, else PNG.

Text rules (`rules`): URLs, broken characters (U+FFFD, control and zero-width characters),
leading question numbers ("3.", "Question 4:", "(2) ", "第3题") and score notes ("(5 points)",
"（10分）") are removed from the question; the original goes to meta["original_question"].

LLM cleaning (`llm.enabled`, prompt prompts/clean.txt): the cleaner translates to English,
rewrites answer-only instructions to ask for reasoning, and judges suitability; its reply
is a JSON object `{"suitable", "reason", "question"}`. Unsuitable samples are dropped
(`dropped/llm/unsuitable`); a reply that is not such an object, or that changes the number
of `<image>` placeholders, is retried, and a sample whose requests keep failing goes to
DIR/failed/clean/.
"""

from __future__ import annotations

import functools
import io
import json
import os
import re
from typing import Any

from PIL import Image

from mmr.data.io import check_image
from mmr.data.pipeline.client import MalformedReply, load_prompt, make_client, render, user_message
from mmr.data.pipeline.config import CleanConfig, LLMCleanConfig, PipelineConfig
from mmr.data.pipeline.runner import ShardLog, run_sample_stage
from mmr.data.schema import MalformedRow, Sample, count_placeholders

__all__ = [
    "clean_image",
    "clean_shard",
    "clean_text",
    "llm_clean",
    "parse_cleaner_reply",
    "run_clean",
]

_URL = re.compile(r"(?:https?://|www\.)[^\s)\]>，。]+", re.I)
_BROKEN = re.compile("[\ufffd\x00-\x08\x0b\x0c\x0e-\x1f\x7f\u200b-\u200d\u2060\ufeff]")
_NUMBERING = re.compile(
    r"^\s*(?:(?:question|problem|exercise|example|q)\s*\d{1,3}\s*[.:：)]|\(\d{1,3}\)(?=\s)"
    r"|\d{1,3}[.、．)](?=\s)|第\s*\d{1,3}\s*题\s*[.:：、]?)\s*",
    re.I,
)
_SCORE = re.compile(
    r"[(（\[【]\s*(?:本(?:小|大)?题\s*)?(?:满分\s*)?(?:共\s*)?\d+(?:\.\d+)?\s*"
    r"(?:points?|pts?|marks?|分)\s*[)）\]】]",
    re.I,
)
_SPACES = re.compile(r"[ \t]{2,}")


def clean_text(text: str) -> str:
    """The rule-based noise removal (see the module docstring)."""
    text = _BROKEN.sub("", text)
    text = _URL.sub("", text)
    text = _SCORE.sub("", text)
    text = _NUMBERING.sub("", text, count=1)
    return _SPACES.sub(" ", text).strip()


def clean_image(data: bytes, max_size: int) -> tuple[bytes, list[str]]:
    """(bytes, changes) for one image; raises MalformedRow("corrupt_image") if unreadable."""
    check_image(data)
    with Image.open(io.BytesIO(data)) as image:
        fmt = image.format
        changes = []
        if image.mode != "RGB":
            rgba = image.convert("RGBA")
            image = Image.new("RGB", rgba.size, (255, 255, 255))
            image.paste(rgba, mask=rgba.getchannel("A"))
            changes.append("rgb")
        if max(image.size) > max_size:
            scale = max_size / max(image.size)
            size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
            image = image.resize(size, Image.Resampling.LANCZOS)
            changes.append("resized")
        if not changes:
            return data, []
        buf = io.BytesIO()
        if fmt == "JPEG":
            image.save(buf, format="JPEG", quality=95)
        else:
            image.save(buf, format="PNG")
        return buf.getvalue(), changes


def parse_cleaner_reply(text: str, placeholders: int) -> dict[str, Any]:
    """The cleaner's JSON verdict; MalformedReply (retried) when it is not usable."""
    tail = text.rsplit("</think>", 1)[-1]
    start, end = tail.find("{"), tail.rfind("}")
    try:
        reply = json.loads(tail[start : end + 1]) if 0 <= start < end else None
    except json.JSONDecodeError:
        reply = None
    if not isinstance(reply, dict) or not isinstance(reply.get("suitable"), bool):
        raise MalformedReply(f"no JSON verdict in the reply: {text[:120]!r}")
    question = reply.get("question")
    if reply["suitable"] and (not isinstance(question, str) or not question.strip()):
        raise MalformedReply("suitable, but no rewritten question")
    if reply["suitable"] and count_placeholders(question) != placeholders:
        raise MalformedReply("the rewritten question changed the <image> placeholders")
    return reply


def llm_clean(samples: list[Sample], cfg: LLMCleanConfig, log: ShardLog) -> list[Sample]:
    """Translate/refine each question and drop unsuitable ones; failures are set aside."""
    if not samples:
        return samples
    client = make_client(cfg.client, "clean.llm.client")
    template = load_prompt("clean", cfg.prompt_file)
    requests = [
        user_message(s, render(template, question=s.question, answer=s.answer)) for s in samples
    ]
    parsers = [
        functools.partial(parse_cleaner_reply, placeholders=count_placeholders(s.question))
        for s in samples
    ]
    results = client.chat_many(requests, parse=parsers)
    kept = []
    for sample, result in zip(samples, results):
        if result.error is not None:
            log.fail(sample, f"cleaner_{result.error}", result.detail)
        elif not result.value["suitable"]:
            log.drop(sample, "llm", "unsuitable", str(result.value.get("reason", ""))[:200])
        else:
            if result.value["question"] != sample.question:
                sample.meta.setdefault("original_question", sample.question)
                sample.question = result.value["question"]
                log.info("llm_rewritten")
            kept.append(sample)
    return kept


def _clean_images(sample: Sample, max_size: int, log: ShardLog) -> bool:
    images = []
    for i, data in enumerate(sample.images):
        try:
            data, changes = clean_image(data, max_size)
        except MalformedRow as err:
            log.drop(sample, "image", "corrupt_image", f"image {i}: {err}")
            return False
        for change in changes:
            log.info(f"image_{change}")
        images.append(data)
    sample.images = images
    return True


def clean_shard(samples: list[Sample], log: ShardLog, *, cfg: CleanConfig) -> list[Sample]:
    """The stage's `process`: images, text rules, then the LLM cleaner."""
    kept = []
    for sample in samples:
        if not _clean_images(sample, cfg.max_image_size, log):
            continue
        if cfg.rules:
            cleaned = clean_text(sample.question)
            if cleaned != sample.question:
                sample.meta.setdefault("original_question", sample.question)
                sample.question = cleaned
                log.info("text_cleaned")
            if not cleaned and not sample.images:
                log.drop(sample, "text", "empty_question")
                continue
        kept.append(sample)
    return llm_clean(kept, cfg.llm, log) if cfg.llm.enabled else kept


def run_clean(
    cfg: PipelineConfig,
    input_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    quiet: bool = False,
) -> dict[str, Any]:
    """Clean `input_path` into OUT/cleaned; returns the report."""
    return run_sample_stage(
        "clean",
        "cleaned",
        clean_shard,
        cfg.clean,
        cfg,
        input_path,
        out_dir,
        overwrite=overwrite,
        quiet=quiet,
    )

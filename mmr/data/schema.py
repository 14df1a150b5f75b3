"""The Sample record, mmr's own parquet schema, and the mappings to and from external formats.

A Sample is one question with its images, gold answer and (optionally) a teacher's
chain-of-thought. Every data stage reads and writes Samples; `mmr.data.io` streams them.

Image placeholders. `question` refers to images with the literal `<image>` placeholder.
Either the question holds exactly `len(images)` placeholders, and image i goes where
placeholder i stands, or it holds none, and all images go before the text (the layout of
MMFineReason and of most single-image sets). Any other count is malformed
(`placeholder_mismatch`).

Answer policy (SFT data that carries no answer field). The gold answer is taken, in order:
1. from the record's `answer` (or `ground_truth`) field;
2. from the response's final answer, read exactly as the reward reads it
   (`mmr.rewards.accuracy.extract_final_answer`: after the last `</think>`, the boxed
   answer, a final-answer statement after it, an `<answer>` tag, an "answer is" phrase);
   a response with several different final answers is ambiguous (`ambiguous_answer`);
3. otherwise the row is malformed (`missing_answer`) and is skipped by the reader.
`meta["answer_from"]` records which rule gave the answer ("field", "boxed", "answer_tag",
"answer_phrase").

Mappings are pure functions. Readers of external rows return `(Sample, raw_images)`, where
the Sample's `images` is still empty and `raw_images` lists each image in order as encoded
bytes or as a reference string (a path relative to the data folder, an absolute or
`file://` path, or a `data:` URL); `mmr.data.io` turns references into bytes. A row that
cannot be mapped raises `MalformedRow(reason, message)`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

IMAGE_PLACEHOLDER = "<image>"

RawImage = bytes | str  # encoded bytes, or a reference the reader resolves to bytes


class MalformedRow(ValueError):
    """A row that cannot become a Sample; `reason` is the key it is counted under."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class Sample:
    """One training/evaluation record. Field names map to MMFineReason's (see below)."""

    id: str  # unique within a source; derived from the content when the input has none
    source: str  # originating dataset (MMFineReason `source`, else the file's stem)
    question: str  # user prompt; `<image>` placeholders per the module docstring
    answer: str  # gold final answer (short: a number, a letter, an expression)
    images: list[bytes] = field(default_factory=list)  # encoded PNG/JPEG/..., never re-encoded
    response: str | None = None  # teacher CoT: `<think>…</think>` + final answer
    caption: str | None = None  # dense image description
    pass_rate: float | None = None  # a small model's pass rate on the question, 0..1
    meta: dict[str, Any] = field(default_factory=dict)  # JSON-serialisable extras


# ---------------------------------------------------------------------------------------
# Field helpers: every mapping converts and checks values the same way.


def count_placeholders(text: str) -> int:
    """Number of `<image>` placeholders in `text`."""
    return text.count(IMAGE_PLACEHOLDER)


def check_sample(sample: Sample) -> Sample:
    """Raise MalformedRow unless the sample has a question, an answer and consistent images."""
    if not isinstance(sample.question, str) or not (sample.question.strip() or sample.images):
        raise MalformedRow("missing_question", "question is empty or missing")
    if not isinstance(sample.answer, str) or not sample.answer.strip():
        raise MalformedRow("missing_answer", "answer is empty or missing")
    n = count_placeholders(sample.question)
    if n and n != len(sample.images):
        raise MalformedRow(
            "placeholder_mismatch",
            f"question has {n} {IMAGE_PLACEHOLDER} placeholders but the row has "
            f"{len(sample.images)} images",
        )
    return sample


def make_id(*parts: str | bytes | None) -> str:
    """A stable id from content, for inputs that carry none."""
    h = hashlib.sha1()
    for part in parts:
        if isinstance(part, str):
            part = part.encode("utf-8")
        h.update(hashlib.sha1(part or b"").digest())
    return h.hexdigest()[:16]


def _id(value: Any, *content: RawImage | None) -> str:
    if value is None or value == "":
        return make_id(*content)
    return str(value)


def _text(value: Any, reason: str, name: str, *, allow_empty: bool = False) -> str:
    # Answers are often numbers in JSON; a string is what every stage compares.
    if isinstance(value, bool) or value is None:
        raise MalformedRow(reason, f"{name} is missing or not text")
    if isinstance(value, int | float):
        return str(value)
    if not isinstance(value, str) or not (allow_empty or value.strip()):
        raise MalformedRow(reason, f"{name} is empty or not text")
    return value


def _opt_text(value: Any, name: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise MalformedRow("bad_field", f"{name} must be text or null, got {type(value).__name__}")


def _opt_float(value: Any, name: str) -> float | None:
    if value is None:
        return None
    try:
        if isinstance(value, bool):
            raise TypeError
        number = float(value)
    except (TypeError, ValueError):
        raise MalformedRow("bad_field", f"{name} must be a number, got {value!r:.40}") from None
    return None if math.isnan(number) else number


def _meta(value: Any) -> dict[str, Any]:
    if value is None or value == "":
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise MalformedRow("bad_field", f"meta is not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise MalformedRow("bad_field", f"meta must be a JSON object, got {type(value).__name__}")
    return dict(value)


def json_default(value: Any) -> Any:
    """`default=` for json.dumps: bytes become base64 text, other non-JSON values str()."""
    # Unknown source columns may hold bytes or dates; keep them readable rather than fail.
    if isinstance(value, bytes | bytearray):
        return base64.b64encode(value).decode("ascii")
    return str(value)


def meta_to_json(meta: dict[str, Any]) -> str:
    """Serialise `meta` (bytes become base64 text, other non-JSON values their str())."""
    return json.dumps(meta, ensure_ascii=False, default=json_default)


def _image_value(value: Any, name: str) -> list[RawImage]:
    """One image cell -> raw images: bytes, a path, HF's {"bytes", "path"} struct, or a list."""
    if value is None:
        return []
    if isinstance(value, bytes | bytearray):
        return [bytes(value)] if value else []
    if isinstance(value, str):
        return [value] if value else []
    if isinstance(value, dict):
        if value.get("bytes"):
            return [bytes(value["bytes"])]
        path = value.get("path") or value.get("url")
        if isinstance(path, str) and path:
            return [path]
        return []
    if isinstance(value, list | tuple):
        return [raw for item in value for raw in _image_value(item, name)]
    raise MalformedRow("bad_field", f"{name} has an unreadable type {type(value).__name__}")


# ---------------------------------------------------------------------------------------
# Answer extraction (the policy in the module docstring).

_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


def extract_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{…}` in `text` (braces balanced), or None."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 0, start + len("\\boxed")
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j].strip() or None
    return None


# The reward's "how" -> meta["answer_from"].
_ANSWER_FROM = {"boxed": "boxed", "answer tag": "answer_tag"}


def _answer_with_policy(record: dict[str, Any], response: str | None) -> tuple[str, str]:
    for key in ("answer", "ground_truth"):
        if record.get(key) not in (None, ""):
            return _text(record[key], "missing_answer", key), "field"
    # One answer policy: the gold is read from a response exactly as the reward reads the
    # answer it scores (imported here: the reward stack loads only when it is needed).
    from mmr.rewards.accuracy import extract_final_answer

    answer, how = extract_final_answer(response) if response else (None, "no response")
    if answer is None:
        raise MalformedRow("missing_answer", f"no answer field and no final answer ({how})")
    if "different answers" in how:
        raise MalformedRow("ambiguous_answer", f"no answer field and {how}: {answer[:80]!r}")
    return answer, _ANSWER_FROM.get(how, "answer_phrase")


# ---------------------------------------------------------------------------------------
# mmr's own rows: parquet (images as bytes) and plain JSONL (images as relative paths).

SAMPLE_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("question", pa.string(), nullable=False),
        pa.field("answer", pa.string(), nullable=False),
        pa.field("images", pa.list_(pa.binary()), nullable=False),
        pa.field("response", pa.string()),
        pa.field("caption", pa.string()),
        pa.field("pass_rate", pa.float64()),
        pa.field("meta", pa.string()),  # JSON object
    ]
)
SAMPLE_FIELDS = tuple(SAMPLE_SCHEMA.names)


def sample_from_mmr(
    row: dict[str, Any], *, default_source: str = ""
) -> tuple[Sample, list[RawImage]]:
    """mmr row (parquet or JSONL) -> Sample. Field map: identity; unknown keys go to meta."""
    extras = {k: v for k, v in row.items() if k not in SAMPLE_FIELDS}
    raw_images = _image_value(row.get("images"), "images")
    question = _text(row.get("question"), "missing_question", "question", allow_empty=True)
    answer = _text(row.get("answer"), "missing_answer", "answer")
    response = _opt_text(row.get("response"), "response")
    sample = Sample(
        id=_id(row.get("id"), question, answer, response, *raw_images),
        source=str(row.get("source") or default_source),
        question=question,
        answer=answer,
        response=response,
        caption=_opt_text(row.get("caption"), "caption"),
        pass_rate=_opt_float(row.get("pass_rate"), "pass_rate"),
        meta={**extras, **_meta(row.get("meta"))},
    )
    return sample, raw_images


def to_row(sample: Sample) -> dict[str, Any]:
    """Sample -> a row of SAMPLE_SCHEMA (mmr parquet)."""
    return {
        "id": sample.id,
        "source": sample.source,
        "question": sample.question,
        "answer": sample.answer,
        "images": list(sample.images),
        "response": sample.response,
        "caption": sample.caption,
        "pass_rate": sample.pass_rate,
        "meta": meta_to_json(sample.meta),
    }


def from_row(row: dict[str, Any]) -> Sample:
    """A row of SAMPLE_SCHEMA -> Sample (images must be inline bytes)."""
    sample, raw_images = sample_from_mmr(row)
    if any(not isinstance(raw, bytes) for raw in raw_images):
        raise MalformedRow("bad_field", "mmr parquet rows hold image bytes, not paths")
    sample.images = list(raw_images)
    return sample


def sample_to_jsonl(sample: Sample, image_paths: list[str]) -> dict[str, Any]:
    """Sample -> plain JSONL record; `image_paths` are where its images were saved."""
    row = to_row(sample)
    row["images"] = list(image_paths)
    row["meta"] = sample.meta
    return row


# ---------------------------------------------------------------------------------------
# MMFineReason (HF parquet release). Field map, MMFineReason column -> Sample:
#   source -> source             id -> id                     question -> question
#   answer -> answer             image -> images (one image; bytes or {"bytes","path"})
#   qwen3vl_235b_thinking_response -> response
#   qwen3vl_235b_instruct_caption  -> caption
#   qwen3vl_4b_pass_rate           -> pass_rate
#   original_question, original_answer, is_consistent, consistency_analysis -> meta[same name]
#   any other column -> meta[same name]

MMFINEREASON_META = (
    "original_question",
    "original_answer",
    "is_consistent",
    "consistency_analysis",
)
MMFINEREASON_COLUMNS = (  # in the order its README lists them
    "source",
    "id",
    "original_question",
    "original_answer",
    "image",
    "question",
    "answer",
    "qwen3vl_235b_instruct_caption",
    "qwen3vl_235b_thinking_response",
    "qwen3vl_4b_pass_rate",
    "is_consistent",
    "consistency_analysis",
)

_HF_IMAGE = pa.struct([pa.field("bytes", pa.binary()), pa.field("path", pa.string())])
_MFR_TYPES = {"image": _HF_IMAGE, "qwen3vl_4b_pass_rate": pa.float64(), "is_consistent": pa.bool_()}
_HF_DTYPES = {pa.string(): "string", pa.float64(): "float64", pa.bool_(): "bool"}


def _mmfinereason_schema() -> pa.Schema:
    fields = [pa.field(c, _MFR_TYPES.get(c, pa.string())) for c in MMFINEREASON_COLUMNS]
    # HF `datasets` reads this metadata and decodes `image` as an Image feature.
    features = {
        f.name: {"_type": "Image"}
        if f.name == "image"
        else {"dtype": _HF_DTYPES[f.type], "_type": "Value"}
        for f in fields
    }
    hf = json.dumps({"info": {"features": features}})
    return pa.schema(fields, metadata={"huggingface": hf})


MMFINEREASON_SCHEMA = _mmfinereason_schema()


def sample_from_mmfinereason(
    row: dict[str, Any], *, default_source: str = ""
) -> tuple[Sample, list[RawImage]]:
    """MMFineReason row -> Sample, per the field map above."""
    raw_images = _image_value(row.get("image"), "image")
    question = _text(row.get("question"), "missing_question", "question", allow_empty=True)
    answer = _text(row.get("answer"), "missing_answer", "answer")
    response = _opt_text(row.get("qwen3vl_235b_thinking_response"), "response")
    meta = {k: v for k, v in row.items() if k not in MMFINEREASON_COLUMNS}
    meta |= {k: row[k] for k in MMFINEREASON_META if row.get(k) is not None}
    sample = Sample(
        id=_id(row.get("id"), question, answer, response, *raw_images),
        source=str(row.get("source") or default_source),
        question=question,
        answer=answer,
        response=response,
        caption=_opt_text(row.get("qwen3vl_235b_instruct_caption"), "caption"),
        pass_rate=_opt_float(row.get("qwen3vl_4b_pass_rate"), "qwen3vl_4b_pass_rate"),
        meta=meta,
    )
    return sample, raw_images


def sample_to_mmfinereason(sample: Sample) -> dict[str, Any]:
    """Sample -> MMFineReason row (the field map reversed). Meta keys outside it are dropped.

    MMFineReason holds one image per row: a sample with more raises MalformedRow("multi_image").
    """
    if len(sample.images) > 1:
        raise MalformedRow("multi_image", f"{len(sample.images)} images; MMFineReason holds one")
    meta = sample.meta
    return {
        "source": sample.source,
        "id": sample.id,
        "original_question": _str_or_none(meta.get("original_question")),
        "original_answer": _str_or_none(meta.get("original_answer")),
        "image": {"bytes": sample.images[0], "path": None} if sample.images else None,
        "question": sample.question,
        "answer": sample.answer,
        "qwen3vl_235b_instruct_caption": sample.caption,
        "qwen3vl_235b_thinking_response": sample.response,
        "qwen3vl_4b_pass_rate": sample.pass_rate,
        "is_consistent": meta.get("is_consistent"),
        "consistency_analysis": _str_or_none(meta.get("consistency_analysis")),
    }


def _str_or_none(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return meta_to_json(value)


# ---------------------------------------------------------------------------------------
# OpenMMReasoner SFT (lmms-engine chat records). One record:
#   {"id": ..., "messages": [
#       {"role": "system", "content": [{"type": "text", "text": ...}]},          (optional)
#       {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "a.jpg"}},
#                                    {"type": "text", "text": question}]},
#       {"role": "assistant", "content": [{"type": "text", "text": "<think>…</think>…"}]}]}
# Variants read: `conversations` for `messages`; ShareGPT turns {"from": "human"|"gpt",
# "value": str}; string content; parts {"type": "image", "image"|"image_url"|"path"|"url": …};
# top-level `image`/`images` (LLaVA style, placeholders in the text).
# Field map: user text parts, concatenated -> question (image parts after text become
# `<image>` placeholders, leading image parts do not); image parts -> images (paths relative
# to the data folder); assistant text -> response; answer per the answer policy; system
# text -> meta["system"];
# `source`/`data_source` -> source, other top-level keys -> meta. One user turn and at most
# one assistant turn; more is `multi_turn`.

_ROLES = {
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "system": "system",
}
_OMR_KEYS = (  # top-level keys the mapping reads; any other key goes to meta
    "id",
    "messages",
    "conversations",
    "answer",
    "ground_truth",
    "source",
    "data_source",
    "image",
    "images",
)


def _part_image(part: dict[str, Any]) -> RawImage | None:
    """The image a content part names, or None for a bare `{"type": "image"}` marker (the
    image then comes from the record's `images` column, in order)."""
    for key in ("image_url", "image", "path", "url"):
        value = part.get(key)
        if isinstance(value, dict):
            value = value.get("url") or value.get("bytes") or value.get("path")
        if isinstance(value, str | bytes) and value:
            return value
    return None


def _content_parts(content: Any) -> list[tuple[str, Any]]:
    """Message content -> [("text", str) | ("image", RawImage)]."""
    if isinstance(content, str):
        return [("text", content)]
    if not isinstance(content, list):
        raise MalformedRow("bad_field", f"message content has type {type(content).__name__}")
    parts = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            parts.append(("text", part.get("text") or ""))
        elif kind in ("image_url", "image"):
            parts.append(("image", _part_image(part)))
        else:
            raise MalformedRow("unsupported_content", f"content part of type {kind!r}")
    return parts


def _question_from_parts(parts: list[tuple[str, Any]]) -> tuple[str, list[RawImage]]:
    images = [value for kind, value in parts if kind == "image"]
    kinds = [kind for kind, _ in parts]
    leading = kinds.index("text") if "text" in kinds else len(kinds)
    # Parts are concatenated as they are: Qwen's chat template puts no separator between them.
    if all(kind == "text" for kind in kinds[leading:]):  # images first: no placeholders
        return "".join(v for k, v in parts if k == "text"), images
    pieces = [IMAGE_PLACEHOLDER if kind == "image" else value for kind, value in parts]
    return "".join(pieces), images


def _turns(record: dict[str, Any]) -> dict[str, list[list[tuple[str, Any]]]]:
    turns = record.get("messages", record.get("conversations"))
    if not isinstance(turns, list):
        raise MalformedRow("missing_question", "no `messages` or `conversations` list")
    by_role: dict[str, list[list[tuple[str, Any]]]] = {"system": [], "user": [], "assistant": []}
    for turn in turns:
        if not isinstance(turn, dict):
            raise MalformedRow("bad_field", f"a turn is {type(turn).__name__}, not an object")
        role = _ROLES.get(turn.get("role") or turn.get("from"))
        if role is None:
            raise MalformedRow("bad_field", f"unknown role in turn {turn!r:.80}")
        content = turn.get("content", turn.get("value"))
        by_role[role].append(_content_parts(content))
    return by_role


def _turn_text(parts: list[tuple[str, Any]], role: str) -> str:
    if any(kind != "text" for kind, _ in parts):
        raise MalformedRow("unsupported_content", f"image in a {role} turn")
    return "".join(value for _, value in parts)


def sample_from_omr(
    record: dict[str, Any], *, default_source: str = ""
) -> tuple[Sample, list[RawImage]]:
    """OpenMMReasoner/lmms-engine SFT record -> Sample, per the field map above."""
    turns = _turns(record)
    if not turns["user"]:
        raise MalformedRow("missing_question", "no user turn")
    if len(turns["user"]) > 1 or len(turns["assistant"]) > 1:
        n_user, n_assistant = len(turns["user"]), len(turns["assistant"])
        raise MalformedRow(
            "multi_turn", f"{n_user} user and {n_assistant} assistant turns; a Sample has one each"
        )
    question, part_images = _question_from_parts(turns["user"][0])
    column = _image_value(record.get("images", record.get("image")), "images")
    markers = sum(image is None for image in part_images)
    if markers:  # bare image parts: the `images` column holds their images, in order
        if markers != len(column):
            raise MalformedRow(
                "bad_field",
                f"{markers} image part(s) without a path but {len(column)} image(s) in the "
                "`images` column",
            )
        fill = iter(column)
        images = [next(fill) if image is None else image for image in part_images]
    else:
        images = column + part_images
    response = _turn_text(turns["assistant"][0], "assistant") if turns["assistant"] else None
    answer, answer_from = _answer_with_policy(record, response)
    meta = {k: v for k, v in record.items() if k not in _OMR_KEYS}
    if turns["system"]:
        meta["system"] = "\n".join(_turn_text(t, "system") for t in turns["system"])
    meta["answer_from"] = answer_from
    sample = Sample(
        id=_id(record.get("id"), question, answer, response, *images),
        source=str(record.get("source") or record.get("data_source") or default_source),
        question=question,
        answer=answer,
        response=response,
        meta=meta,
    )
    return sample, images


def sample_to_omr(sample: Sample, image_paths: list[str]) -> dict[str, Any]:
    """Sample -> OpenMMReasoner SFT record (lmms-engine `messages`), images as given paths."""
    image_parts = [{"type": "image_url", "image_url": {"url": p}} for p in image_paths]
    chunks = sample.question.split(IMAGE_PLACEHOLDER)
    if len(chunks) > 1:  # interleave images where the placeholders stood
        user = [{"type": "text", "text": chunks[0]}] if chunks[0] else []
        for part, chunk in zip(image_parts, chunks[1:]):
            user += [part] + ([{"type": "text", "text": chunk}] if chunk else [])
    else:
        user = [*image_parts, {"type": "text", "text": sample.question}]
    messages = []
    if sample.meta.get("system"):
        messages.append(
            {"role": "system", "content": [{"type": "text", "text": sample.meta["system"]}]}
        )
    messages.append({"role": "user", "content": user})
    if sample.response is not None:
        messages.append(
            {"role": "assistant", "content": [{"type": "text", "text": sample.response}]}
        )
    return {"id": sample.id, "source": sample.source, "answer": sample.answer, "messages": messages}

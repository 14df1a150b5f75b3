"""Sample -> chat messages -> model inputs with labels, through the model's own processor.

The processor's chat template renders the conversation and the processor expands each
`<|image_pad|>` into as many tokens as the image has merged patches, so the ids here are
exactly what the model sees at inference. Two rules that training gets wrong easily:

* Labels: only assistant tokens are trained on (each assistant turn's content and its
  closing `<|im_end|>`); system, user, image and role-header tokens get -100. The spans
  are found in the token ids (`<|im_start|>` + a role header that reads "assistant"),
  so any template of the Qwen chat format works, not only ones with generation markers.
* Image-safe truncation: a sequence over `max_length` is dropped (`truncation="drop"`,
  the default: a cut chain of thought teaches the model to stop mid-thought), or cut
  (`truncation="cut"`) at a point that is never inside an image span
  (`<|vision_start|>` ... `<|vision_end|>`): images after the cut are removed from
  `pixel_values` and `image_grid_thw` too, so image tokens and image features always
  match. Both outcomes are counted in `ChatStats`.

    stats = ChatStats()
    item = tokenize_sample(sample, processor, max_length=4096, stats=stats)
    if item is not None: ... item.input_ids, item.labels, item.pixel_values ...
"""

from __future__ import annotations

import io
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError

from mmr.data.schema import Sample

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
IMAGE_PLACEHOLDER = "<image>"
TRUNCATION_MODES = ("drop", "cut")


@dataclass
class TokenizedSample:
    """Model inputs for one sample; sequence tensors are 1-D of the same length."""

    input_ids: torch.Tensor
    labels: torch.Tensor
    attention_mask: torch.Tensor
    mm_token_type_ids: torch.Tensor | None = None  # 0 text, 1 image, 2 video (rope index)
    pixel_values: torch.Tensor | None = None  # (patches of all images, patch_dim)
    image_grid_thw: torch.Tensor | None = None  # (num_images, 3)
    sample_id: str = ""
    truncated_tokens: int = 0  # tokens removed by `truncation="cut"`

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def num_images(self) -> int:
        return 0 if self.image_grid_thw is None else int(self.image_grid_thw.shape[0])

    @property
    def num_label_tokens(self) -> int:
        return int((self.labels != IGNORE_INDEX).sum())


@dataclass
class ChatStats:
    """What happened to each sample: `kept`, `cut`, and skips by reason."""

    kept: int = 0
    cut: int = 0
    cut_tokens: int = 0
    skipped: Counter = field(default_factory=Counter)

    def skip(self, reason: str, sample_id: str, detail: str = "") -> None:
        if reason not in self.skipped:  # log each reason once, count every occurrence
            logger.warning("skipping sample %r: %s %s", sample_id, reason, detail)
        self.skipped[reason] += 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "kept": self.kept,
            "cut": self.cut,
            "cut_tokens": self.cut_tokens,
            "skipped": dict(self.skipped),
        }


def build_messages(
    sample: Sample, *, system_prompt: str | None = None, with_response: bool = True
) -> list[dict[str, Any]]:
    """Chat messages for a sample; images go where the question has `<image>` placeholders.

    A question without placeholders gets its images before the text (how Qwen-VL data
    is usually laid out). The assistant turn is the response (chain of thought and final
    answer) when the sample has one, else the bare answer.
    """
    messages: list[dict[str, Any]] = []
    if system_prompt:
        messages.append({"role": "system", "content": [{"type": "text", "text": system_prompt}]})
    messages.append({"role": "user", "content": user_content(sample.question, len(sample.images))})
    if with_response:
        reply = sample.response if sample.response else sample.answer
        messages.append({"role": "assistant", "content": [{"type": "text", "text": reply}]})
    return messages


def user_content(question: str, n_images: int) -> list[dict[str, Any]]:
    """The user turn's parts: `{"type": "image"}` where the images go, text between them.
    Shared with lmms-eval's task functions (mmr/eval/lmms_tasks/utils.py)."""
    n_placeholders = question.count(IMAGE_PLACEHOLDER)
    if n_placeholders == 0:
        parts: list[dict[str, Any]] = [{"type": "image"} for _ in range(n_images)]
        return [*parts, {"type": "text", "text": question}]
    if n_placeholders != n_images:
        raise ValueError(
            f"question has {n_placeholders} {IMAGE_PLACEHOLDER} placeholders "
            f"but the sample has {n_images} images"
        )
    parts = []
    for i, chunk in enumerate(question.split(IMAGE_PLACEHOLDER)):
        if i > 0:
            parts.append({"type": "image"})
        if chunk.strip():
            parts.append({"type": "text", "text": chunk})
    return parts


def decode_images(sample: Sample) -> list[Image.Image]:
    """The sample's encoded images as RGB PIL images (raises OSError/ValueError if corrupt)."""
    out = []
    for data in sample.images:
        with Image.open(io.BytesIO(data)) as img:
            out.append(img.convert("RGB"))
    return out


def tokenize_sample(
    sample: Sample,
    processor: Any,
    *,
    max_length: int | None = None,
    truncation: str = "drop",
    system_prompt: str | None = None,
    stats: ChatStats | None = None,
) -> TokenizedSample | None:
    """Tokenize one sample for training; None when it is skipped (counted in `stats`)."""
    if truncation not in TRUNCATION_MODES:
        raise ValueError(f"truncation must be one of {TRUNCATION_MODES}, got {truncation!r}")
    stats = stats if stats is not None else ChatStats()
    if not (sample.response or sample.answer):
        stats.skip("no_target", sample.id, "(neither response nor answer)")
        return None
    try:
        messages = build_messages(sample, system_prompt=system_prompt)
        images = decode_images(sample)
    except (OSError, ValueError, UnidentifiedImageError) as err:
        stats.skip("bad_input", sample.id, f"({err})")
        return None
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    try:
        encoded = processor(text=[text], images=images or None, return_tensors="pt")
    except (OSError, ValueError) as err:  # e.g. an image the processor cannot resize
        stats.skip("processor_error", sample.id, f"({err})")
        return None

    input_ids = encoded["input_ids"][0]
    item = TokenizedSample(
        input_ids=input_ids,
        labels=torch.where(assistant_mask(input_ids, processor.tokenizer), input_ids, IGNORE_INDEX),
        attention_mask=encoded["attention_mask"][0],
        mm_token_type_ids=_first_row(encoded.get("mm_token_type_ids")),
        pixel_values=encoded.get("pixel_values"),
        image_grid_thw=encoded.get("image_grid_thw"),
        sample_id=sample.id,
    )
    if max_length is not None and len(item) > max_length:
        if truncation == "drop":
            stats.skip("too_long", sample.id, f"({len(item)} > {max_length} tokens)")
            return None
        item = cut_image_safe(item, max_length, processor.tokenizer)
        if item.num_label_tokens == 0:
            stats.skip("too_long_no_target", sample.id, "(nothing to train on after the cut)")
            return None
        stats.cut += 1
        stats.cut_tokens += item.truncated_tokens
    stats.kept += 1
    return item


def _first_row(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else torch.as_tensor(t)[0]


def assistant_mask(input_ids: torch.Tensor, tokenizer: Any) -> torch.Tensor:
    """True on the tokens of every assistant turn's content and its closing `<|im_end|>`."""
    im_start = tokenizer.convert_tokens_to_ids("<|im_start|>")
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    ids = input_ids.tolist()
    mask = torch.zeros(len(ids), dtype=torch.bool)
    i = 0
    while i < len(ids):
        if ids[i] != im_start:
            i += 1
            continue
        # The role header runs from after <|im_start|> to the first newline.
        header_end = i + 1
        while header_end < len(ids) and "\n" not in tokenizer.decode(ids[i + 1 : header_end + 1]):
            header_end += 1
        role = tokenizer.decode(ids[i + 1 : header_end + 1]).strip()
        end = header_end + 1
        while end < len(ids) and ids[end] != im_end:
            end += 1
        if role == "assistant":
            mask[header_end + 1 : end + 1] = True  # content + <|im_end|> (if present)
        i = end + 1
    return mask


def image_spans(input_ids: torch.Tensor, tokenizer: Any) -> list[tuple[int, int]]:
    """(start, end) index pairs, inclusive, of every `<|vision_start|>`..`<|vision_end|>`."""
    start_id = tokenizer.convert_tokens_to_ids("<|vision_start|>")
    end_id = tokenizer.convert_tokens_to_ids("<|vision_end|>")
    starts = (input_ids == start_id).nonzero().flatten().tolist()
    ends = (input_ids == end_id).nonzero().flatten().tolist()
    if len(starts) != len(ends) or any(s >= e for s, e in zip(starts, ends)):
        raise ValueError("unbalanced <|vision_start|>/<|vision_end|> tokens")
    return list(zip(starts, ends))


def cut_image_safe(item: TokenizedSample, max_length: int, tokenizer: Any) -> TokenizedSample:
    """Cut to at most `max_length` tokens, never inside an image span.

    If the limit falls inside an image span, the cut moves to just before that span's
    `<|vision_start|>`; the features of every image at or after the cut are removed too.
    """
    cut = max_length
    spans = image_spans(item.input_ids, tokenizer)
    for start, end in spans:
        if start < cut <= end:
            cut = start
    kept_images = sum(1 for _, end in spans if end < cut)
    pixel_values, grid = item.pixel_values, item.image_grid_thw
    if grid is not None:
        grid = grid[:kept_images]
        pixel_values = pixel_values[: int(grid.prod(dim=-1).sum())] if kept_images else None
        if kept_images == 0:
            grid = None
    mm = item.mm_token_type_ids
    return TokenizedSample(
        input_ids=item.input_ids[:cut],
        labels=item.labels[:cut],
        attention_mask=item.attention_mask[:cut],
        mm_token_type_ids=None if mm is None else mm[:cut],
        pixel_values=pixel_values,
        image_grid_thw=grid,
        sample_id=item.sample_id,
        truncated_tokens=item.truncated_tokens + len(item) - cut,
    )

"""Stage 4, select: keep the samples whose reasoning is complete, varied and correct.

    mmr data run --config recipes/data/mfr.yaml --step select --input distilled/ --output DIR

Filters, in order (each drop is counted under its filter and reason in reports/select.json):

- content:     a response or caption holding `[ERROR]`; a response under 200 words; a
               caption under 100 words (MMFineReason's numbers, set in the recipe).
- structure:   exactly one `<think>` before exactly one `</think>`, then a final answer
               (`<answer>...</answer>`, `\\boxed{}` or either); sources listed in
               `no_answer_check_sources` skip the final-answer check.
- templated:   a run of `ngram_n` words (50) that occurs `ngram_freq` times (3) or more
               inside one response: templated or looping CoT.
- correctness: the final answer matches the ground truth (mmr.rewards: relaxed rules,
               math-verify, optional judge).
- difficulty:  with `threshold` set, keep pass rate <= threshold (0.0: MMFineReason-123K;
               0.75 with 4 samples, i.e. pass rate != 1: MMFineReason-586K). Samples without
               a stored pass rate are rated by the difficulty model first (needs its server).

The first three are pure string work; with `num_proc` workers each takes whole shards.
The templated check hashes every n-gram with a rolling polynomial hash over word hashes
(numpy, wrapping uint64 arithmetic), so a 2,000-word response costs a few array passes,
not 2,000 tuple hashes; a repeated hash is confirmed on the words themselves.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable
from typing import Any

import numpy as np

from mmr.data.pipeline.config import (
    ContentFilterConfig,
    PipelineConfig,
    SelectConfig,
    StructureFilterConfig,
    TemplateFilterConfig,
)
from mmr.data.pipeline.runner import ShardLog, run_sample_stage
from mmr.data.pipeline.verify import check_answers
from mmr.data.schema import Sample, extract_boxed

__all__ = [
    "check_content",
    "check_structure",
    "count_words",
    "find_repeated_ngram",
    "run_select",
    "select_filter",
    "select_shard",
]

Verdict = tuple[str, str] | None  # (reason, detail) when the sample is dropped


def check_content(sample: Sample, cfg: ContentFilterConfig) -> Verdict:
    """Drop error replies and too-short responses or captions."""
    response = sample.response or ""
    keyword = cfg.error_keyword
    if keyword and (keyword in response or keyword in (sample.caption or "")):
        return "error_keyword", keyword
    words = count_words(response)
    if words < cfg.min_response_words:
        return "short_response", f"{words} words < {cfg.min_response_words}"
    if cfg.min_caption_words > 0:
        caption_words = count_words(sample.caption) if sample.caption else 0
        if caption_words < cfg.min_caption_words:
            reason = "short_caption" if sample.caption else "no_caption"
            return reason, f"{caption_words} words < {cfg.min_caption_words}"
    return None


def check_structure(sample: Sample, cfg: StructureFilterConfig) -> Verdict:
    """One closed `<think>` block, then a final answer in the configured form."""
    response = sample.response or ""
    opens, closes = response.count("<think>"), response.count("</think>")
    if opens == 0:
        return "missing_think", "no <think>"
    if closes == 0:
        return "unclosed_think", "no </think>"
    if opens > 1 or closes > 1:
        return "multiple_think", f"{opens} <think>, {closes} </think>"
    close = response.index("</think>")
    if response.index("<think>") > close:
        return "unclosed_think", "</think> before <think>"
    if sample.source in cfg.no_answer_check_sources:
        return None
    tail = response[close + len("</think>") :]
    if cfg.answer_format != "boxed" and _tagged_answer(tail):
        return None
    if cfg.answer_format != "answer_tag" and extract_boxed(tail):
        return None
    return "no_final_answer", f"no {cfg.answer_format} final answer after </think>"


def _tagged_answer(tail: str) -> bool:
    start = tail.find("<answer>")
    end = tail.find("</answer>", start + 8) if start >= 0 else -1
    return end >= 0 and bool(tail[start + 8 : end].strip())


# Words are runs of non-whitespace, as str.split() sees them. They are found and hashed
# on the UTF-8 bytes with numpy: str.split() plus hash() per word cost ~150 us for a
# 1,500-word response, the numpy pass a third of that. Below U+0080 str.split() splits on
# bytes 9-13 and 28-32; its wider whitespace (U+0085, U+00A0, U+2000-U+200A, U+3000, ...)
# has UTF-8 forms starting with these byte pairs, and text holding one of those takes the
# exact str.split() path.
_WIDE_SPACE = re.compile("[\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]")
_WIDE_LEADS = (b"\xc2\x85", b"\xc2\xa0", b"\xe1\x9a", b"\xe2\x80", b"\xe2\x81", b"\xe3\x80")
# Polynomial hashes mod 2**64 (numpy's uint64 arithmetic wraps). Odd bases are invertible,
# so the hash of a span, shifted back by the inverse powers, does not depend on where the
# span starts. One base hashes bytes into words, the other words into n-grams.
_BYTE_BASE, _WORD_BASE = 0xC2B2AE3D27D4EB4F, 0x9E3779B97F4A7C15
_POWERS: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def _powers(base: int, length: int) -> tuple[np.ndarray, np.ndarray]:
    """(base**i, base**-i) mod 2**64 for i < length, grown on demand and cached."""
    cached = _POWERS.get(base)
    if cached is None or len(cached[0]) < length:
        size = max(length, 2 * len(cached[0]) if cached else 4096)
        pairs = []
        for b in (base, pow(base, -1, 1 << 64)):
            with np.errstate(over="ignore"):
                p = np.cumprod(np.full(size - 1, b, dtype=np.uint64), dtype=np.uint64)
            pairs.append(np.concatenate([np.ones(1, dtype=np.uint64), p]))
        cached = _POWERS[base] = (pairs[0], pairs[1])
    return cached[0][:length], cached[1][:length]


def _utf8(text: str) -> np.ndarray | None:
    """The text's UTF-8 bytes, or None when it holds whitespace wider than one byte."""
    raw = text.encode("utf-8")
    wide = not text.isascii() and any(lead in raw for lead in _WIDE_LEADS)
    if wide and _WIDE_SPACE.search(text):
        return None
    return np.frombuffer(raw, dtype=np.uint8)


def _edges(data: np.ndarray) -> np.ndarray:
    """Positions where words start and end, alternating (start, end, start, ...)."""
    space = np.ones(len(data) + 2, dtype=bool)  # padded: text starts and ends in a space
    space[1:-1] = (data == 32) | ((data - np.uint8(9)) <= 4) | ((data - np.uint8(28)) <= 3)
    return np.flatnonzero(space[1:] != space[:-1])  # on bools: 3x faster than on int8


def count_words(text: str) -> int:
    """len(text.split()), without building the list of words."""
    data = _utf8(text)
    return len(text.split()) if data is None else len(_edges(data)) // 2


def _word_hashes(text: str) -> np.ndarray:
    data = _utf8(text)
    if data is None:
        words = text.split()
        return np.fromiter(map(hash, words), dtype=np.int64, count=len(words)).view(np.uint64)
    edges = _edges(data)
    starts, ends = edges[0::2], edges[1::2]
    powers, inv_powers = _powers(_BYTE_BASE, len(data) + 1)
    with np.errstate(over="ignore"):
        prefix = np.zeros(len(data) + 1, dtype=np.uint64)
        np.cumsum((data + np.uint64(1)) * powers[: len(data)], dtype=np.uint64, out=prefix[1:])
        return (prefix[ends] - prefix[starts]) * inv_powers[starts]


def find_repeated_ngram(text: str, n: int, freq: int) -> str | None:
    """The first `n`-word sequence occurring `freq` or more times in `text` (overlaps
    count), or None."""
    ids = _word_hashes(text)
    windows = len(ids) - n + 1
    if windows < freq:
        return None
    powers, inv_powers = _powers(_WORD_BASE, len(ids))
    with np.errstate(over="ignore"):
        prefix = np.zeros(len(ids) + 1, dtype=np.uint64)
        np.cumsum(ids * powers, dtype=np.uint64, out=prefix[1:])
        hashes = (prefix[n:] - prefix[:-n]) * inv_powers[:windows]
    ordered = np.sort(hashes)
    repeats = ordered[freq - 1 :] == ordered[: len(ordered) - freq + 1]
    if not repeats.any():
        return None
    words = text.split()  # rare: a hash repeats; confirm it on the words themselves
    for value in np.unique(ordered[: len(ordered) - freq + 1][repeats]):
        starts = np.flatnonzero(hashes == value)
        first = words[starts[0] : starts[0] + n]
        if sum(words[s : s + n] == first for s in starts) >= freq:
            return " ".join(first)
    return None


def check_templated(sample: Sample, cfg: TemplateFilterConfig) -> Verdict:
    """Drop a response in which one n-gram repeats `ngram_freq` times."""
    found = find_repeated_ngram(sample.response or "", cfg.ngram_n, cfg.ngram_freq)
    if found is None:
        return None
    return "repeated_ngram", f"{cfg.ngram_n}-gram x{cfg.ngram_freq}+: {found[:80]}..."


def _rule_filters(cfg: SelectConfig) -> list[tuple[str, Callable[[Sample], Verdict]]]:
    filters: list[tuple[str, Callable[[Sample], Verdict]]] = []
    if cfg.content.enabled:
        filters.append(("content", functools.partial(check_content, cfg=cfg.content)))
    if cfg.structure.enabled:
        filters.append(("structure", functools.partial(check_structure, cfg=cfg.structure)))
    if cfg.templated.enabled:
        filters.append(("templated", functools.partial(check_templated, cfg=cfg.templated)))
    return filters


def select_filter(samples: list[Sample], cfg: SelectConfig, log: ShardLog) -> list[Sample]:
    """The CPU filters (content, structure, templated, correctness) over one batch."""
    kept = []
    filters = _rule_filters(cfg)
    for sample in samples:
        for name, check in filters:
            verdict = check(sample)
            if verdict is not None:
                log.drop(sample, name, *verdict)
                break
        else:
            kept.append(sample)
    if cfg.correctness.enabled and kept:
        items = [(s.question, s.response or "", s.answer) for s in kept]
        verdicts = check_answers(items, cfg.correctness.verify)
        survivors = []
        for sample, (correct, reason) in zip(kept, verdicts):
            if correct:
                survivors.append(sample)
            else:
                log.drop(sample, "correctness", reason, f"gold {sample.answer[:40]!r}")
        kept = survivors
    return kept


def select_shard(samples: list[Sample], log: ShardLog, *, cfg: SelectConfig) -> list[Sample]:
    """One shard through every filter (the stage's `process`)."""
    kept = select_filter(samples, cfg, log)
    threshold = cfg.difficulty.threshold
    if threshold is None or not kept:
        return kept
    from mmr.data.pipeline.difficulty import rate_samples

    kept = rate_samples(kept, cfg.difficulty, log)
    out = []
    for sample in kept:
        if sample.pass_rate is not None and sample.pass_rate <= threshold:
            out.append(sample)
        else:
            log.drop(
                sample, "difficulty", "too_easy", f"pass rate {sample.pass_rate} > {threshold}"
            )
    return out


def run_select(
    cfg: PipelineConfig,
    input_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    quiet: bool = False,
) -> dict[str, Any]:
    """Select from `input_path` into OUT/selected; returns the report."""
    return run_sample_stage(
        "select",
        "selected",
        select_shard,
        cfg.select,
        cfg,
        input_path,
        out_dir,
        overwrite=overwrite,
        quiet=quiet,
    )

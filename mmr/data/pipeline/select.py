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
Word counts and the templated check run over a shard's responses at once: they are joined
into blocks of about 64 KB of UTF-8 and every word and n-gram is hashed with a rolling
polynomial hash (numpy, wrapping uint64 arithmetic), a few array passes per block, not
2,000 tuple hashes per response. A hash repeated inside one response is confirmed on its
words (`find_repeated_ngram`), so the verdicts are exact. The correctness filter sends
only each response's final-answer part to mmr.rewards (`verify.answer_part`).
"""

from __future__ import annotations

import os
import re
from collections import Counter
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
from mmr.data.pipeline.verify import check_answers, check_judge
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


def check_content(
    sample: Sample,
    cfg: ContentFilterConfig,
    *,
    words: int | None = None,
    caption_words: int | None = None,
) -> Verdict:
    """Drop error replies and too-short responses or captions (`words`, `caption_words`:
    the counts when already known)."""
    response = sample.response or ""
    keyword = cfg.error_keyword
    if keyword and (keyword in response or keyword in (sample.caption or "")):
        return "error_keyword", keyword
    words = count_words(response) if words is None else words
    if words < cfg.min_response_words:
        return "short_response", f"{words} words < {cfg.min_response_words}"
    if cfg.min_caption_words > 0:
        if caption_words is None:
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
    close = response.rfind("</think>")  # the only one: found from the end, where it stands
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


def _utf8_bytes(text: str) -> bytes | None:
    """The text's UTF-8 bytes, or None when it holds whitespace wider than one byte."""
    raw = text.encode("utf-8")
    wide = not text.isascii() and any(lead in raw for lead in _WIDE_LEADS)
    if wide and _WIDE_SPACE.search(text):
        return None
    return raw


def _utf8(text: str) -> np.ndarray | None:
    raw = _utf8_bytes(text)
    return None if raw is None else np.frombuffer(raw, dtype=np.uint8)


def _spaces(data: np.ndarray) -> np.ndarray:
    """Which bytes are whitespace. Comparisons, not a lookup table: numpy would index with
    8-byte copies of the bytes (2x slower)."""
    return (data == 32) | ((data - np.uint8(9)) <= 4) | ((data - np.uint8(28)) <= 3)


def _edges(space: np.ndarray) -> np.ndarray:
    """Positions where words start and end, alternating (start, end, start, ...)."""
    padded = np.ones(len(space) + 2, dtype=bool)  # the text starts and ends in a space
    padded[1:-1] = space
    return np.flatnonzero(padded[1:] != padded[:-1])  # on bools: 3x faster than on int8


def count_words(text: str) -> int:
    """len(text.split()), without building the list of words."""
    data = _utf8(text)
    return len(text.split()) if data is None else len(_edges(_spaces(data))) // 2


def _word_hashes_at(data: np.ndarray, space: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """The hash of each word starting at `starts`, the same wherever the word stands: the
    sum of its bytes times base**(offset from the text start), shifted back by the inverse
    power of its start. Spaces are zeroed, so a sum may run on to the next word's start.
    (A NUL byte adds nothing either: a rare false candidate at most, which the word check
    clears.)"""
    if not len(starts):
        return np.zeros(0, dtype=np.uint64)
    powers, inv_powers = _powers(_BYTE_BASE, len(data))
    weighted = np.empty(len(data), dtype=np.uint64)
    with np.errstate(over="ignore"):
        # uint8 x uint64 into the output: numpy widens the bytes in small buffers.
        np.multiply(data * ~space, powers, out=weighted)
        return np.add.reduceat(weighted, starts) * inv_powers[starts]


def _ngram_hashes(ids: np.ndarray, n: int) -> np.ndarray:
    """The hash of each run of `n` consecutive word hashes, the same wherever it stands."""
    windows = len(ids) - n + 1
    powers, inv_powers = _powers(_WORD_BASE, len(ids))
    with np.errstate(over="ignore"):
        prefix = np.zeros(len(ids) + 1, dtype=np.uint64)
        np.cumsum(ids * powers, dtype=np.uint64, out=prefix[1:])
        return (prefix[n:] - prefix[:-n]) * inv_powers[:windows]


def _word_hashes(text: str) -> np.ndarray:
    data = _utf8(text)
    if data is None:
        words = text.split()
        return np.fromiter(map(hash, words), dtype=np.int64, count=len(words)).view(np.uint64)
    space = _spaces(data)
    return _word_hashes_at(data, space, _edges(space)[0::2])


def _repeated(hashes: np.ndarray, freq: int) -> np.ndarray:
    """The hash values that occur `freq` or more times."""
    if len(hashes) < freq:
        return hashes[:0]
    ordered = np.sort(hashes)
    repeats = ordered[freq - 1 :] == ordered[: len(ordered) - freq + 1]
    return np.unique(ordered[: len(ordered) - freq + 1][repeats])


def find_repeated_ngram(text: str, n: int, freq: int) -> str | None:
    """The first `n`-word sequence (by where it starts) occurring `freq` or more times in
    `text` (overlaps count), or None."""
    ids = _word_hashes(text)
    if len(ids) - n + 1 < freq:
        return None
    hashes = _ngram_hashes(ids, n)
    candidates = _repeated(hashes, freq)
    if not len(candidates):
        return None
    words = text.split()  # rare: a hash repeats; confirm it on the words themselves
    first = None
    for value in candidates:  # in hash order: the earliest start wins, not the lowest hash
        starts = np.flatnonzero(hashes == value).tolist()
        # Grouped by the words themselves: a hash collision must not hide a true repeat.
        grams = Counter(tuple(words[s : s + n]) for s in starts)
        found = next((s for s in starts if grams[tuple(words[s : s + n])] >= freq), None)
        if found is not None and (first is None or found < first):
            first = found
    return None if first is None else " ".join(words[first : first + n])


# ---------------------------------------------------------------------------------------
# A shard's texts at once: word counts and templated candidates in a few array passes.

_BLOCK_BYTES = 1 << 16  # UTF-8 bytes hashed at once: the uint64 work arrays stay in cache
_ROW_SALT = np.uint64(0xD6E8FEB86659FD93)  # odd: keeps equal n-grams of two rows apart


def _text_stats(texts: list[str], ngram: tuple[int, int] | None) -> tuple[np.ndarray, np.ndarray]:
    """(len(text.split()) of each text, whether an n-gram hash repeats `freq` times inside
    it) for `ngram` = (n, freq), else no flags. Flagged texts are a superset of those
    `find_repeated_ngram` finds: it confirms them one by one."""
    words = np.zeros(len(texts), dtype=np.int64)
    flagged = np.zeros(len(texts), dtype=bool)
    rows: list[int] = []
    block: list[bytes] = []
    size = 0
    for i, text in enumerate(texts):
        raw = _utf8_bytes(text)
        if raw is None:  # wider whitespace: the exact str.split() path, confirmed one by one
            words[i], flagged[i] = len(text.split()), ngram is not None
            continue
        rows.append(i)
        block.append(raw)
        size += len(raw) + 1
        if size >= _BLOCK_BYTES:
            _block_stats(rows, block, ngram, words, flagged)
            rows, block, size = [], [], 0
    if rows:
        _block_stats(rows, block, ngram, words, flagged)
    return words, flagged


def _block_stats(
    rows: list[int],
    block: list[bytes],
    ngram: tuple[int, int] | None,
    words: np.ndarray,
    flagged: np.ndarray,
) -> None:
    """Fill `words` and `flagged` at `rows` from their texts' bytes, joined by spaces."""
    lengths = np.fromiter(map(len, block), dtype=np.int64, count=len(block))
    row_start = np.zeros(len(block), dtype=np.int64)
    np.cumsum(lengths[:-1] + 1, out=row_start[1:])
    data = np.frombuffer(b" ".join(block), dtype=np.uint8)
    space = _spaces(data)
    starts = _edges(space)[0::2]
    first_word = np.searchsorted(starts, row_start)  # words never cross the joining spaces
    counts = np.diff(first_word, append=len(starts))
    where = np.asarray(rows)
    words[where] = counts
    if ngram is None:
        return
    n, freq = ngram
    if len(starts) < n:
        return
    hashes = _ngram_hashes(_word_hashes_at(data, space, starts), n)
    owner = np.repeat(np.arange(len(block), dtype=np.uint64), counts)  # the row of each word
    first = owner[: len(hashes)]
    inside = first == owner[n - 1 :]  # windows that do not cross into the next row
    with np.errstate(over="ignore"):
        keys = hashes[inside] + first[inside] * _ROW_SALT
    candidates = _repeated(keys, freq)
    if len(candidates):
        at = np.minimum(np.searchsorted(candidates, keys), len(candidates) - 1)
        hit = first[inside][candidates[at] == keys].astype(np.int64)
        flagged[where[hit]] = True


def check_templated(sample: Sample, cfg: TemplateFilterConfig) -> Verdict:
    """Drop a response in which one n-gram repeats `ngram_freq` times."""
    found = find_repeated_ngram(sample.response or "", cfg.ngram_n, cfg.ngram_freq)
    if found is None:
        return None
    return "repeated_ngram", f"{cfg.ngram_n}-gram x{cfg.ngram_freq}+: {found[:80]}..."


def _rule_verdicts(samples: list[Sample], cfg: SelectConfig) -> list[tuple[str, str, str] | None]:
    """(filter, reason, detail) of the first rule filter that drops each sample, or None."""
    content, structure, templated = cfg.content, cfg.structure, cfg.templated
    words = caption_words = flagged = None
    if content.enabled or templated.enabled:
        ngram = (templated.ngram_n, templated.ngram_freq) if templated.enabled else None
        words, flagged = _text_stats([s.response or "" for s in samples], ngram)
    if content.enabled and content.min_caption_words > 0:
        caption_words, _ = _text_stats([s.caption or "" for s in samples], None)
    out: list[tuple[str, str, str] | None] = []
    for i, sample in enumerate(samples):
        verdict, name = None, ""
        if content.enabled:
            counts = {"words": int(words[i])}
            if caption_words is not None:
                counts["caption_words"] = int(caption_words[i])
            verdict, name = check_content(sample, content, **counts), "content"
        if verdict is None and structure.enabled:
            verdict, name = check_structure(sample, structure), "structure"
        if verdict is None and templated.enabled and flagged[i]:
            verdict, name = check_templated(sample, templated), "templated"
        out.append(None if verdict is None else (name, *verdict))
    return out


def select_filter(samples: list[Sample], cfg: SelectConfig, log: ShardLog) -> list[Sample]:
    """The CPU filters (content, structure, templated, correctness) over one batch."""
    kept = []
    for sample, dropped in zip(samples, _rule_verdicts(samples, cfg)):
        if dropped is None:
            kept.append(sample)
        else:
            log.drop(sample, *dropped)
    if cfg.correctness.enabled and kept:
        items = [(s.question, s.response or "", s.answer) for s in kept]
        verdicts = check_answers(items, cfg.correctness.verify, log)
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
    if cfg.select.correctness.enabled:
        check_judge(cfg.select.correctness.verify, "select.correctness.verify.judge")
    if cfg.select.difficulty.threshold is not None:
        check_judge(cfg.select.difficulty.verify, "select.difficulty.verify.judge")
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

"""Stage 3, distill: teacher reasoning paths and dense captions from served models.

    mmr data run --config recipes/data/omr.yaml --step distill --input DIR/cleaned --output DIR

For each sample (per shard, requests concurrent through mmr.data.pipeline.client):

1. caption (`distill.caption.enabled`): a sample with images and no caption gets one from
   the caption model (MMFineReason: Qwen3-VL-235B-A22B-Instruct, structured and dense).
2. CoT: a sample with no response (or every sample when `skip_existing` is off) is sent
   `k` times to the teacher (MMFineReason: Qwen3-VL-235B-A22B-Thinking; OpenMMReasoner:
   several paths per question). The teacher sees the images and the question, never the
   caption, so its reasoning reads the image rather than a text shortcut.
3. verify: each path's final answer is checked against the ground truth with mmr.rewards
   (judge optional), as the replies arrive, while later requests are in flight; only
   verified paths are kept, at most `keep_per_question`, each as its own Sample (id
   `<id>-<path>` when k > 1, meta `path` and `teacher`).

Counts: `dropped/verify/<reason>` when no path of a question was right (`judge_fallback`
when the judge, enabled, could not decide the first); `failed/...` when every request for
it failed (the sample goes to DIR/failed/distill/); `info/paths_*`, `info/judged` and
`info/judge_fallback` (paths).
"""

from __future__ import annotations

import copy
import os
from typing import Any

from mmr.data.pipeline.client import load_prompt, make_client, render, user_message
from mmr.data.pipeline.config import CaptionConfig, CotConfig, DistillConfig, PipelineConfig
from mmr.data.pipeline.runner import ShardLog, run_sample_stage
from mmr.data.pipeline.verify import ask_and_check, check_judge
from mmr.data.schema import Sample

__all__ = ["caption_samples", "distill_samples", "distill_shard", "run_distill"]


def caption_samples(samples: list[Sample], cfg: CaptionConfig, log: ShardLog) -> list[Sample]:
    """Caption the samples that have images and no caption; return those not failed."""
    todo = [s for s in samples if s.images and not s.caption]
    if not todo:
        return samples
    client = make_client(cfg.client, "distill.caption.client")
    prompt = load_prompt("caption", cfg.prompt_file)
    results = client.chat_many([user_message(s, prompt) for s in todo])
    failed = set()
    for sample, result in zip(todo, results):
        if result.error is None and result.text and result.text.strip():
            sample.caption = result.text.strip()
            log.info("captioned")
        else:
            failed.add(id(sample))
            log.fail(sample, f"caption_{result.error or 'empty'}", result.detail)
    return [s for s in samples if id(s) not in failed]


def _paths_of(
    sample: Sample, texts: list[str], verdicts: list[tuple[bool, str]], cfg: CotConfig
) -> list[Sample]:
    """The verified paths of one question as Samples."""
    good = [text for text, (ok, _) in zip(texts, verdicts) if ok]
    if cfg.keep_per_question is not None:
        good = good[: cfg.keep_per_question]
    out = []
    for j, text in enumerate(good):
        path = copy.copy(sample)
        path.meta = {**sample.meta, "path": j, "teacher": cfg.client.model}
        path.response = text
        path.id = sample.id if cfg.k == 1 else f"{sample.id}-{j}"
        out.append(path)
    return out


def distill_samples(samples: list[Sample], cfg: DistillConfig, log: ShardLog) -> list[Sample]:
    """Teacher paths for the samples that need them, verified; others pass unchanged."""
    cot = cfg.cot
    todo = [s for s in samples if cot.enabled and not (cot.skip_existing and s.response)]
    log.info("kept_existing_response", len(samples) - len(todo))
    if not todo:
        return samples
    client = make_client(cot.client, "distill.cot.client")
    template = load_prompt("distill", cot.prompt_file)
    k = cot.k
    requests = [
        user_message(s, render(template, question=s.question)) for s in todo for _ in range(k)
    ]
    truths = [(s.question, s.answer) for s in todo for _ in range(k)]
    results, verdict_of = ask_and_check(client, requests, truths, cfg.verify, log)
    log.info("paths_requested", len(requests))
    log.info("paths_failed", len(requests) - len(verdict_of))
    log.info("paths_verified", sum(ok for ok, _ in verdict_of.values()))
    expanded: dict[int, list[Sample]] = {}
    for q, sample in enumerate(todo):
        span = range(q * k, (q + 1) * k)
        got = [i for i in span if i in verdict_of]
        if not got:
            first = results[q * k]
            log.fail(sample, f"teacher_{first.error}", first.detail)
            expanded[id(sample)] = []
            continue
        texts = [results[i].text or "" for i in got]
        paths = _paths_of(sample, texts, [verdict_of[i] for i in got], cot)
        if not paths:
            log.drop(sample, "verify", verdict_of[got[0]][1], f"none of {len(got)} paths right")
        expanded[id(sample)] = paths
    out: list[Sample] = []
    for sample in samples:
        out.extend(expanded.get(id(sample), [sample]))
    return out


def distill_shard(samples: list[Sample], log: ShardLog, *, cfg: DistillConfig) -> list[Sample]:
    """The stage's `process`: captions, then verified reasoning paths."""
    if cfg.caption.enabled:
        samples = caption_samples(samples, cfg.caption, log)
    return distill_samples(samples, cfg, log)


def run_distill(
    cfg: PipelineConfig,
    input_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    quiet: bool = False,
) -> dict[str, Any]:
    """Distill `input_path` into OUT/distilled; returns the report."""
    if cfg.distill.cot.enabled:
        check_judge(cfg.distill.verify, "distill.verify.judge")
    return run_sample_stage(
        "distill",
        "distilled",
        distill_shard,
        cfg.distill,
        cfg,
        input_path,
        out_dir,
        overwrite=overwrite,
        quiet=quiet,
    )

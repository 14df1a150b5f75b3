"""Curated Samples -> verl's RL parquet (train and validation splits).

    mmr rl prepare --input curated.parquet --output data/rl [--val-fraction 0.01]

Each row is what verl's `RLHFDataset` reads: `prompt` (chat messages whose text holds one
`<image>` placeholder per image, the convention verl's multimodal dataset expands),
`images` (a list of `{"bytes": ...}`), `data_source`, `ability`, `reward_model`
(`{"style": "rule", "ground_truth": answer}`: what verl hands the reward function) and
`extra_info` (question text for the LLM judge, sample id, index). Rows that cannot be
rewarded (no answer) or not shown (no usable image where the question has a placeholder)
are skipped and counted; corrupt images are caught by the reader.

The split is by a hash of the sample id, so it does not depend on file order and the
same sample always lands in the same split.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from mmr.data.io import ReadStats, read_samples
from mmr.data.schema import IMAGE_PLACEHOLDER, Sample

logger = logging.getLogger(__name__)

ROWS_PER_GROUP = 1024


def sample_to_verl_row(sample: Sample, index: int, instruction: str | None = None) -> dict:
    """One verl RL row; the question gets `<image>` placeholders if it has none."""
    question = sample.question
    if sample.images and IMAGE_PLACEHOLDER not in question:
        question = IMAGE_PLACEHOLDER * len(sample.images) + question
    text = f"{question}\n{instruction}" if instruction else question
    return {
        "data_source": sample.source or "mmr",
        "prompt": [{"role": "user", "content": text}],
        "images": [{"bytes": data} for data in sample.images],
        "ability": sample.meta.get("ability", "visual_reasoning"),
        "reward_model": {"style": "rule", "ground_truth": sample.answer},
        "extra_info": {
            "index": index,
            "id": sample.id,
            # The judge sees the question without placeholders.
            "question": sample.question.replace(IMAGE_PLACEHOLDER, "").strip(),
        },
    }


def is_validation(sample_id: str, val_fraction: float) -> bool:
    digest = hashlib.sha256(sample_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < val_fraction


def prepare(
    input_path: str | Path,
    output_dir: str | Path,
    *,
    val_fraction: float = 0.01,
    instruction: str | None = None,
    fmt: str = "auto",
) -> dict[str, Any]:
    """Write `train.parquet` and `val.parquet`; return the report (also `prepare_report.json`)."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    read_stats = ReadStats()
    skipped: Counter[str] = Counter()
    counts = {"train": 0, "val": 0}
    buffers: dict[str, list[dict]] = {"train": [], "val": []}
    writers: dict[str, pq.ParquetWriter | None] = {"train": None, "val": None}
    try:
        samples = read_samples(input_path, fmt=fmt, stats=read_stats)
        for index, sample in enumerate(tqdm(samples, desc="prepare", unit="sample")):
            reason = _unusable(sample)
            if reason:
                skipped[reason] += 1
                continue
            split = "val" if is_validation(sample.id, val_fraction) else "train"
            buffers[split].append(sample_to_verl_row(sample, index, instruction))
            counts[split] += 1
            if len(buffers[split]) >= ROWS_PER_GROUP:
                writers[split] = _flush(buffers[split], writers[split], out / f".{split}.tmp")
        for split in ("train", "val"):
            writers[split] = _flush(buffers[split], writers[split], out / f".{split}.tmp")
    finally:
        for w in writers.values():
            if w is not None:
                w.close()
    for split in ("train", "val"):
        tmp = out / f".{split}.tmp"
        if not tmp.exists():  # an empty split still gets its file (never a stale earlier one)
            logger.warning("mmr rl prepare: the %s split is empty (%s)", split, out)
            pq.write_table(VERL_SCHEMA.empty_table(), tmp)
        tmp.replace(out / f"{split}.parquet")
    report = {"written": counts, "skipped": dict(skipped), "read": read_stats.as_dict()}
    (out / "prepare_report.json").write_text(json.dumps(report, indent=2))
    return report


def _unusable(sample: Sample) -> str | None:
    if not str(sample.answer or "").strip():
        return "missing_answer"
    if IMAGE_PLACEHOLDER in sample.question and sample.question.count(IMAGE_PLACEHOLDER) != len(
        sample.images
    ):
        return "image_placeholder_mismatch"
    return None


def _flush(
    rows: list[dict], writer: pq.ParquetWriter | None, path: Path
) -> pq.ParquetWriter | None:
    if not rows:
        return writer
    table = pa.Table.from_pylist(rows, schema=VERL_SCHEMA)
    if writer is None:
        writer = pq.ParquetWriter(path, VERL_SCHEMA)
    writer.write_table(table)
    rows.clear()
    return writer


VERL_SCHEMA = pa.schema(
    [
        ("data_source", pa.string()),
        ("prompt", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
        ("images", pa.list_(pa.struct([("bytes", pa.binary())]))),
        ("ability", pa.string()),
        ("reward_model", pa.struct([("style", pa.string()), ("ground_truth", pa.string())])),
        (
            "extra_info",
            pa.struct([("index", pa.int64()), ("id", pa.string()), ("question", pa.string())]),
        ),
    ]
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="mmr rl prepare", description="Curated Samples -> verl RL parquet."
    )
    parser.add_argument("--input", required=True, help="Sample parquet/JSONL file or folder")
    parser.add_argument("--output", required=True, help="folder for train.parquet / val.parquet")
    parser.add_argument("--val-fraction", type=float, default=0.01, help="share held out (0.01)")
    parser.add_argument("--instruction", default=None, help="text appended to every question")
    parser.add_argument("--format", default="auto", help="input format (auto, mmr, mmfinereason…)")
    args = parser.parse_args(argv)
    try:
        report = prepare(
            args.input,
            args.output,
            val_fraction=args.val_fraction,
            instruction=args.instruction,
            fmt=args.format,
        )
    except (FileNotFoundError, ValueError) as err:
        print(f"mmr rl prepare: {err}")
        return 2
    print(json.dumps(report, indent=2))
    return 0

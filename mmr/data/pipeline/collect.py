"""Stage 1, collect: raw rows from local files, image folders or HF `datasets`, as Samples.

    mmr data run --config recipes/data/mfr.yaml --step collect --output DIR [--input FILE]

Sources, read in this order and streamed (never loaded whole):
- `collect.paths` (or `--input`, which replaces them): parquet, JSONL or JSON files or
  folders of them, in the MMFineReason schema, OpenMMReasoner's SFT records or mmr's own
  rows (`format: auto` tells them apart per file, mmr.data.io);
- an image folder: a folder with `metadata.jsonl`, one row per sample naming its image(s)
  in `file_name` (the HF imagefolder layout) or `images`, plus question/answer fields;
- `collect.dataset_id`: a dataset id on the HF hub or a local dataset folder, read with
  `datasets.load_dataset(..., streaming=True)`, images kept as encoded bytes.

`subsets` keeps only those `source` values (MMFineReason's subsets: BMMR, Euclid30K, ...)
and `max_samples` caps the rows per source. Rows left out or unreadable are counted in the
report's `read` section. Images are not decoded here: clean checks them.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from mmr.config import config_to_dict
from mmr.data.io import ReadStats, read_samples
from mmr.data.pipeline.config import CollectConfig, PipelineConfig
from mmr.data.pipeline.runner import ShardLog, fingerprint, run_stage
from mmr.data.schema import (
    MalformedRow,
    Sample,
    check_sample,
    sample_from_mmfinereason,
    sample_from_mmr,
    sample_from_omr,
)

__all__ = ["collect_samples", "run_collect"]

_IMAGE_FOLDER_META = "metadata.jsonl"


def _from_record(record: dict[str, Any], fmt: str, source: str, root: Path) -> Sample:
    """One raw record (HF or image-folder row) -> Sample, images as bytes."""
    if fmt == "auto":
        keys = set(record)
        if keys & {"messages", "conversations"}:
            fmt = "omr_sft"
        elif "images" not in keys and keys & {"image", "qwen3vl_235b_thinking_response"}:
            fmt = "mmfinereason"
        else:
            fmt = "mmr"
    mapping = {"omr_sft": sample_from_omr, "mmfinereason": sample_from_mmfinereason}
    sample, raw_images = mapping.get(fmt, sample_from_mmr)(record, default_source=source)
    for raw in raw_images:
        if isinstance(raw, str):
            path = Path(raw.removeprefix("file://"))
            try:
                raw = (path if path.is_absolute() else root / path).read_bytes()
            except OSError as err:
                raise MalformedRow("missing_image", f"image {raw!r}: {err.strerror}") from None
        sample.images.append(raw)
    return check_sample(sample)


def _records(
    rows: Iterable[dict[str, Any]], fmt: str, source: str, root: Path, stats: ReadStats
) -> Iterator[Sample]:
    for n, row in enumerate(rows):
        stats.read += 1
        try:
            sample = _from_record(dict(row), fmt, source, root)
        except MalformedRow as err:
            stats.skip(err.reason, f"{source} row {n}: {err}")
            continue
        stats.kept += 1
        yield sample


def _image_folder(folder: Path, fmt: str, stats: ReadStats) -> Iterator[Sample]:
    def rows() -> Iterator[dict[str, Any]]:
        with open(folder / _IMAGE_FOLDER_META, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    row = json.loads(line)
                    if "file_name" in row:
                        row["images"] = row.pop("file_name")
                    yield row

    return _records(rows(), fmt, folder.name, folder, stats)


def _hf_dataset(cfg: CollectConfig, stats: ReadStats) -> Iterator[Sample]:
    import datasets  # optional: only this source needs it

    ds = datasets.load_dataset(
        cfg.dataset_id, split=cfg.split, streaming=True, cache_dir=cfg.cache_dir
    )
    features = ds.features or {}
    for name, feature in features.items():  # keep encoded bytes: no decode, no re-encode
        if isinstance(feature, datasets.Image):
            ds = ds.cast_column(name, datasets.Image(decode=False))
    root = Path(cfg.image_root or ".")
    yield from _records(ds, cfg.format, Path(cfg.dataset_id).name, root, stats)


def _limited(samples: Iterator[Sample], cfg: CollectConfig, stats: ReadStats) -> Iterator[Sample]:
    """Apply `subsets` and `max_samples`; rows left out are counted as read, not kept."""
    wanted, per_source = set(cfg.subsets), Counter()
    for sample in samples:
        if wanted and sample.source not in wanted:
            stats.kept -= 1
            stats.skip("not_in_subsets", f"{sample.id} (source {sample.source})")
            continue
        if cfg.max_samples is not None and per_source[sample.source] >= cfg.max_samples:
            stats.kept -= 1
            stats.skip("over_max_samples", f"{sample.id} (source {sample.source})")
            continue
        per_source[sample.source] += 1
        yield sample
        full = cfg.max_samples is not None and len(per_source) == len(wanted)
        if wanted and full and min(per_source.values()) >= cfg.max_samples:
            return  # every subset is full: stop reading


def collect_samples(cfg: CollectConfig, stats: ReadStats) -> Iterator[Sample]:
    """Every source of `cfg` as one stream of Samples (see the module docstring)."""

    def sources() -> Iterator[Sample]:
        for path in map(Path, cfg.paths):
            if path.is_dir() and (path / _IMAGE_FOLDER_META).is_file():
                yield from _image_folder(path, cfg.format, stats)
            else:
                root = cfg.image_root
                yield from read_samples(
                    path, fmt=cfg.format, image_root=root, stats=stats, validate_images=False
                )
        if cfg.dataset_id:
            yield from _hf_dataset(cfg, stats)

    if not cfg.paths and not cfg.dataset_id:
        raise ValueError("collect has no source: give --input, collect.paths or collect.dataset_id")
    return _limited(sources(), cfg, stats)


def _keep_all(samples: list[Sample], log: ShardLog) -> list[Sample]:
    return samples


def run_collect(
    cfg: PipelineConfig,
    out_dir: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    quiet: bool = False,
) -> dict[str, Any]:
    """Collect the configured sources into OUT/collected; returns the report."""
    stats = ReadStats()
    samples = collect_samples(cfg.collect, stats)
    identity = [
        (str(Path(p).resolve()), Path(p).stat().st_mtime_ns if Path(p).exists() else None)
        for p in cfg.collect.paths
    ]
    config = config_to_dict(cfg.collect)
    key = fingerprint(sources=identity, config=config, shard_rows=cfg.shard_rows)
    return run_stage(
        "collect",
        "collected",
        out_dir,
        samples,
        _keep_all,
        key=key,
        shard_rows=cfg.shard_rows,
        num_proc=1,  # nothing to compute: the reading is the work
        overwrite=overwrite,
        read_stats=stats,
        quiet=quiet,
    )

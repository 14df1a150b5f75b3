"""Stage 1, collect: raw rows from local files, image folders or HF `datasets`, as Samples.

    mmr data run --config recipes/data/mfr.yaml --step collect --output DIR [--input FILE]

Sources, read in this order and streamed (never loaded whole):
- `collect.paths` (or `--input`, which replaces them): parquet, JSONL or JSON files or
  folders of them, in the MMFineReason schema, OpenMMReasoner's SFT records or mmr's own
  rows (`format: auto` tells them apart per file, mmr.data.io);
- an image folder: a folder with `metadata.jsonl`, one row per sample naming its image(s)
  in `file_name` (the HF imagefolder layout) or `images`, plus question/answer fields;
- `collect.dataset_id`: a dataset id on the HF hub, a local dataset folder (parquet/JSON
  files, read with `datasets.load_dataset(..., streaming=True)`) or a folder written by
  `save_to_disk` (memory-mapped by `datasets.load_from_disk`, then streamed; a saved
  DatasetDict is read at `split`, a saved Dataset whole).
  Images are kept as encoded bytes (`decode(False)`, nested image lists included);
  relative image paths resolve against `image_root`, else the local dataset folder.

`subsets` keeps only those `source` values (MMFineReason's subsets: BMMR, Euclid30K, ...)
and `max_samples` caps the rows per source. Rows left out or unreadable are counted in the
report's `read` section, and so are data files that cannot be read (empty, corrupt: named
in `read.skipped_files`, mmr.data.io). Images are not decoded here: clean checks them.

Errors name what is wrong and stop the stage (exit 2 from the CLI): a dataset that cannot
be loaded, a split it lacks, a column the format needs (`question`, `answer`, `messages`)
or that `subsets` needs (`source`), and a subset no row belongs to. Sources whose
`source` values can be listed without reading rows (parquet files, `save_to_disk`
folders) are checked before anything is written; the others when the stream ends.
"""

from __future__ import annotations

import functools
import json
import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import pyarrow.parquet as pq

from mmr.config import config_to_dict
from mmr.data.io import ReadStats, detect_format, parquet_files, read_samples
from mmr.data.pipeline.config import CollectConfig, PipelineConfig
from mmr.data.pipeline.runner import ShardLog, StageError, fingerprint, ray_section, run_stage
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
_SAVED_MARKERS = ("state.json", "dataset_dict.json")  # what Dataset(Dict).save_to_disk writes
# Columns each format cannot do without (omr_sft takes either of its two).
_NEEDED = {
    "omr_sft": [("messages", "conversations")],
    "mmfinereason": [("question",), ("answer",)],
    "mmr": [("question",), ("answer",)],
}
_SOURCE_COLUMNS = {"omr_sft": ("source", "data_source")}  # others: ("source",)


def _detect_format(keys: Iterable[str], fmt: str) -> str:
    """The format of rows with these keys (`fmt` unless it is "auto"; "jsonl" is "mmr")."""
    if fmt != "auto":
        return "mmr" if fmt == "jsonl" else fmt
    return detect_format(keys)


def _check_columns(columns: Iterable[str], cfg: CollectConfig, where: str) -> None:
    """Raise StageError naming a column the rows' format, or `subsets`, needs and lacks."""
    columns = list(columns)
    fmt = _detect_format(columns, cfg.format)
    have = ", ".join(columns) or "none"
    for options in _NEEDED[fmt]:
        if not set(options) & set(columns):
            name = " or ".join(repr(o) for o in options)
            raise StageError(
                f"{where} has no column {name}, which the {fmt} format needs (columns: {have})"
            )
    sources = _SOURCE_COLUMNS.get(fmt, ("source",))
    if cfg.subsets and not set(sources) & set(columns):
        raise StageError(
            f"collect.subsets keeps rows by their {sources[0]!r} column, which {where} does "
            f"not have (columns: {have}); remove collect.subsets or choose another source"
        )


def _from_record(record: dict[str, Any], fmt: str, source: str, root: Path) -> Sample:
    """One raw record (HF or image-folder row) -> Sample, images as bytes."""
    fmt = _detect_format(record, fmt)
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


# ---------------------------------------------------------------------------------------
# HF `datasets`


def _local_dataset(cfg: CollectConfig) -> Path | None:
    """The local folder `dataset_id` names, None for a hub id; a missing path is an error."""
    name = str(cfg.dataset_id)
    path = Path(name).expanduser()
    if path.exists():
        return path
    # A hub id is "owner/name" or "name"; anything else can only be a mistyped path.
    if name.startswith(("/", ".", "~")) or name.count("/") > 1:
        raise StageError(f"collect.dataset_id {name!r}: no such local folder")
    return None


def _saved_split(path: Path, split: str) -> Any:
    """The split of a `save_to_disk` folder as a memory-mapped `datasets.Dataset`."""
    import datasets

    saved = datasets.load_from_disk(str(path))
    if isinstance(saved, datasets.DatasetDict):
        if split not in saved:
            raise StageError(f"collect.split {split!r}: {path} has the splits {', '.join(saved)}")
        saved = saved[split]
    return saved


def _open_hf_dataset(cfg: CollectConfig) -> tuple[Any, Path | None, set[str] | None]:
    """(the dataset as a stream of raw rows, its local folder, its `source` values when
    they can be listed without reading the rows)."""
    try:
        import datasets  # optional: only this source needs it
    except ImportError:
        raise StageError(
            "collect.dataset_id needs the `datasets` package (pip install 'mmr[data]')"
        ) from None
    local = _local_dataset(cfg)
    where = f"collect.dataset_id {cfg.dataset_id!r} (split {cfg.split!r})"
    sources = None
    try:
        if local is not None and any((local / m).is_file() for m in _SAVED_MARKERS):
            saved = _saved_split(local, cfg.split)
            _check_columns(saved.column_names, cfg, where)
            if cfg.subsets:
                sources = _listed_sources(saved.column_names, cfg, saved.unique, local.name)
            stream = saved.to_iterable_dataset()
        else:
            name = str(local or cfg.dataset_id)
            stream = datasets.load_dataset(
                name, split=cfg.split, streaming=True, cache_dir=cfg.cache_dir
            )
            if stream.features:
                _check_columns(stream.features, cfg, where)
    except StageError:
        raise
    except Exception as err:  # datasets raises many types (hub down, bad split, bad files)
        raise StageError(f"{where} cannot be loaded: {type(err).__name__}: {err}") from None
    # Encoded bytes, never decoded images: nothing is decoded here or re-encoded later.
    return stream.decode(False), local, sources


def _hf_rows(stream: Any, cfg: CollectConfig) -> Iterator[dict[str, Any]]:
    """The rows; columns are checked on the first one when the features were not known."""
    where = f"collect.dataset_id {cfg.dataset_id!r} (split {cfg.split!r})"
    checked = bool(getattr(stream, "features", None))
    for row in stream:
        if not checked:
            _check_columns(row, cfg, where)
            checked = True
        yield row


def _hf_dataset(
    stream: Any, local: Path | None, cfg: CollectConfig, stats: ReadStats
) -> Iterator[Sample]:
    root = Path(cfg.image_root) if cfg.image_root else local or Path(".")
    source = Path(str(cfg.dataset_id)).name
    yield from _records(_hf_rows(stream, cfg), cfg.format, source, root, stats)


# ---------------------------------------------------------------------------------------
# Subsets and max_samples


def _parquet_files(path: Path) -> list[Path] | None:
    """The parquet files read at `path`, or None when it is read otherwise (an image
    folder, JSON rows)."""
    if path.is_dir() and (path / _IMAGE_FOLDER_META).is_file():
        return None
    return parquet_files(path)


def _parquet_sources(path: Path, cfg: CollectConfig) -> set[str] | None:
    """The `source` values of the parquet rows at `path` (one column read), or None."""
    files = _parquet_files(path)
    if files is None:
        return None
    found: set[str] = set()
    for file in files:
        unique = functools.partial(_distinct, file)
        listed = _listed_sources(pq.read_schema(file).names, cfg, unique, file.stem)
        if listed is None:
            return None
        found |= listed
    return found


def _distinct(file: Path, column: str) -> list[Any]:
    return pc.unique(pq.read_table(file, columns=[column])[column]).to_pylist()


def _listed_sources(
    columns: list[str], cfg: CollectConfig, unique: Callable[[str], list[Any]], default: str
) -> set[str] | None:
    """The `source` values of rows with these columns, from one column's distinct values
    (`unique`), or None when more than one column decides them."""
    candidates = _SOURCE_COLUMNS.get(_detect_format(columns, cfg.format), ("source",))
    present = [c for c in candidates if c in columns]
    if len(present) > 1:  # OpenMMReasoner rows with both `source` and `data_source`
        return None
    values = unique(present[0]) if present else [None]
    found = {str(v) for v in values if v not in (None, "")}
    if any(v in (None, "") for v in values):
        found.add(default)  # rows without a source get the file's (or folder's) name
    return found


def _check_subsets(wanted: Iterable[str], available: set[str]) -> None:
    """Raise StageError naming the subsets that no row belongs to."""
    missing = [s for s in wanted if s not in available]
    if missing:
        seen = sorted(available)
        listed = ", ".join(seen[:30]) + (f", ... ({len(seen)} in all)" if len(seen) > 30 else "")
        raise StageError(
            f"collect.subsets: no row has the source {', '.join(map(repr, missing))} "
            f"(the sources hold: {listed or 'no rows'})"
        )


def _limited(samples: Iterator[Sample], cfg: CollectConfig, stats: ReadStats) -> Iterator[Sample]:
    """Apply `subsets` and `max_samples`; rows left out are counted as read, not kept.
    A subset that no row belongs to is an error once the stream ends."""
    wanted, per_source, seen = set(cfg.subsets), Counter(), set()
    for sample in samples:
        seen.add(sample.source)
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
    _check_subsets(cfg.subsets, seen)


def collect_samples(cfg: CollectConfig, stats: ReadStats) -> Iterator[Sample]:
    """Every source of `cfg` as one stream of Samples (see the module docstring).

    Opening the sources checks what can be checked before reading (a dataset that does
    not load, missing columns, unknown subsets): those raise StageError here."""
    if not cfg.paths and not cfg.dataset_id:
        raise ValueError("collect has no source: give --input, collect.paths or collect.dataset_id")
    known: set[str] | None = set()
    for path in map(Path, cfg.paths):
        if not path.exists():
            raise FileNotFoundError(f"collect.paths: no such file or folder: {path}")
        for file in _parquet_files(path) or []:
            _check_columns(pq.read_schema(file).names, cfg, f"collect.paths file {file}")
        if cfg.subsets and known is not None:
            found = _parquet_sources(path, cfg)
            known = None if found is None else known | found
    hf = _open_hf_dataset(cfg) if cfg.dataset_id else None
    if cfg.subsets and known is not None and (hf is None or hf[2] is not None):
        _check_subsets(cfg.subsets, known | (hf[2] if hf else set()))
    # Opened now, read lazily: a path with no readable file fails before the stage starts.
    readers = [
        _image_folder(path, cfg.format, stats)
        if path.is_dir() and (path / _IMAGE_FOLDER_META).is_file()
        else read_samples(
            path, fmt=cfg.format, image_root=cfg.image_root, stats=stats, validate_images=False
        )
        for path in map(Path, cfg.paths)
    ]

    def sources() -> Iterator[Sample]:
        for reader in readers:
            yield from reader
        if hf is not None:
            yield from _hf_dataset(hf[0], hf[1], cfg, stats)

    return _limited(sources(), cfg, stats)


def _keep_all(samples: list[Sample], log: ShardLog) -> list[Sample]:
    return samples


def _identity(path: str | os.PathLike[str]) -> tuple[str, int | None]:
    p = Path(path)
    return str(p.resolve()), p.stat().st_mtime_ns if p.exists() else None


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
    identity = [_identity(p) for p in cfg.collect.paths]
    if cfg.collect.dataset_id and Path(cfg.collect.dataset_id).expanduser().exists():
        identity.append(_identity(Path(cfg.collect.dataset_id).expanduser()))
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
        ray=ray_section(cfg),  # on a cluster: the nodes write the shards
    )
